//! Small OCI images built by the tests themselves, with Debian's static
//! busybox as the payload: written as an OCI layout, or pushed to a real
//! registry. Layers are plain tar, gzip or zstd; whiteouts and opaque
//! markers are ordinary entries, as image builders write them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "hostname", "id", "ps", "touch", "rm", "mkdir", "sed", "head", "tail", "wc",
    "yes", "dd", "true", "false", "env", "kill", "grep", "seq", "printf", "test", "cut", "tr", "stat", "readlink",
    "whoami", "nslookup", "wget", "nc", "httpd", "mount", "find", "tee", "date", "uname",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct Blob {
    pub data: Vec<u8>,
    pub media_type: String,
    pub diff_id: String,
}

/// A tar being written entry by entry.
pub struct Tar(tar::Builder<Vec<u8>>);

impl std::fmt::Debug for Tar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tar")
    }
}

impl Default for Tar {
    fn default() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }
}

impl Tar {
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        let _ = self.0.append_data(&mut h, path, &[][..]);
        self
    }

    /// A directory of `mode` owned by `uid` and `gid`.
    pub fn dir_owned(mut self, path: &str, mode: u32, (uid, gid): (u64, u64)) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        let _ = self.0.append_data(&mut h, path, &[][..]);
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        let _ = self.0.append_data(&mut h, path, data);
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        let _ = self.0.append_link(&mut h, path, target);
        self
    }

    /// An entry whose name is written raw, so hostile names (`../x`) pass.
    pub fn raw_file(mut self, name: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        let _ = self.0.append(&h, data);
        self
    }

    /// Programs of this host (such as Debian's `redis-server`) and the
    /// shared libraries `ldd` says they load, each at its own path: a real
    /// application for an image, no test code of ours.
    pub fn host_programs(mut self, paths: &[&str]) -> Result<Self> {
        let mut files = std::collections::BTreeSet::new();
        for path in paths {
            let out = std::process::Command::new("ldd").arg(path).output().with_context(|| format!("ldd {path}"))?;
            anyhow::ensure!(out.status.success(), "ldd {path}: {}", String::from_utf8_lossy(&out.stderr));
            files.insert((*path).to_owned());
            let text = String::from_utf8_lossy(&out.stdout);
            files.extend(
                text.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(str::to_owned)),
            );
        }
        let mut dirs = std::collections::BTreeSet::new();
        for file in files {
            let data = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
            let inside = file.trim_start_matches('/');
            for (i, _) in inside.match_indices('/') {
                if dirs.insert(inside[..=i].to_owned()) {
                    self = self.dir(&inside[..=i]);
                }
            }
            self = self.file(inside, 0o755, &data);
        }
        Ok(self)
    }

    pub fn finish(self) -> Result<Vec<u8>> {
        Ok(self.0.into_inner()?)
    }

    /// A root filesystem with busybox and its applets, passwd and group.
    pub fn busybox() -> Result<Self> {
        let busybox = std::fs::read(BUSYBOX).context("reading /bin/busybox (Debian busybox-static)")?;
        let mut t = Self::default();
        for d in ["bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/", "home/", "home/app/"] {
            t = t.dir(d);
        }
        t = t.file("bin/busybox", 0o755, &busybox);
        for applet in APPLETS {
            t = t.symlink(&format!("bin/{applet}"), "/bin/busybox");
        }
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
        let group = "root:x:0:\napp:x:1000:\nstaff:x:50:app\n";
        Ok(t.file("etc/passwd", 0o644, passwd.as_bytes()).file("etc/group", 0o644, group.as_bytes()))
    }
}

/// This host's architecture as OCI platforms name it (Go's names): the
/// busybox in test images is the host's own.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn blob(tar: Vec<u8>, compression: Compression) -> Result<Blob> {
    let diff_id = sha256(&tar);
    let (data, media_type) = match compression {
        Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar)?;
            (gz.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        Compression::Zstd => (
            ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    };
    Ok(Blob { data, media_type: media_type.into(), diff_id })
}

#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Blob>,
    /// The platform's architecture, as Go names it (amd64, arm64).
    pub architecture: String,
    /// The `config` section of the image config (Entrypoint, Cmd, Env, …).
    pub config: serde_json::Value,
}

impl Image {
    pub fn new(layers: Vec<Blob>) -> Self {
        Self {
            layers,
            architecture: host_architecture().into(),
            config: serde_json::json!({ "Env": ["PATH=/bin"], "Cmd": ["sh"] }),
        }
    }

    /// One gzip layer of busybox.
    pub fn busybox() -> Result<Self> {
        Ok(Self::new(vec![blob(Tar::busybox()?.finish()?, Compression::Gzip)?]))
    }

    /// busybox, and in a second layer each of tests/payload/NAME.c built
    /// static with gcc as `/bin/NAME`: `udp-echo` (busybox has no UDP
    /// server), `syscalls` (what seccomp denies) and `stamp` (when it ran,
    /// to the nanosecond, which busybox's date cannot say).
    pub fn busybox_with_payloads() -> Result<Self> {
        let payload = Path::new(env!("CARGO_MANIFEST_DIR")).join("payload");
        let dir = tempfile::tempdir()?;
        let mut tar = Tar::default().dir("bin/");
        for name in ["udp-echo", "syscalls", "stamp"] {
            let (source, out) = (payload.join(format!("{name}.c")), dir.path().join(name));
            let built =
                std::process::Command::new("gcc").args(["-static", "-O2", "-o"]).arg(&out).arg(&source).status()?;
            anyhow::ensure!(built.success(), "gcc -static {} failed (is libc6-dev installed?)", source.display());
            tar = tar.file(&format!("bin/{name}"), 0o755, &std::fs::read(&out)?);
        }
        let mut image = Self::busybox()?;
        image.layers.push(blob(tar.finish()?, Compression::Gzip)?);
        Ok(image)
    }

    pub fn config_blob(&self) -> Vec<u8> {
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": self.config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .unwrap_or_default()
    }

    /// The OCI image manifest.
    pub fn manifest(&self) -> Vec<u8> {
        self.manifest_in(Format::Oci)
    }

    pub fn manifest_in(&self, format: Format) -> Vec<u8> {
        let config = self.config_blob();
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|l| {
                let media_type = match (format, l.media_type.as_str()) {
                    (Format::Docker, "application/vnd.oci.image.layer.v1.tar+gzip") => DOCKER_LAYER,
                    (_, other) => other,
                };
                serde_json::json!({ "mediaType": media_type, "digest": sha256(&l.data), "size": l.data.len() })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": format.manifest_type(),
            "config": { "mediaType": format.config_type(), "digest": sha256(&config), "size": config.len() },
            "layers": layers,
        }))
        .unwrap_or_default()
    }

    /// Writes an OCI image layout at `dir` holding this image as `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        let manifest = self.manifest();
        let mut all = vec![manifest.clone(), self.config_blob()];
        all.extend(self.layers.iter().map(|l| l.data.clone()));
        for data in &all {
            std::fs::write(blobs.join(&sha256(data)["sha256:".len()..]), data)?;
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(&manifest),
                "size": manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }

    /// Pushes to a plain-HTTP registry as `registry/repo:tag`, with an OCI manifest.
    pub async fn push(&self, registry: &str, repo: &str, tag: &str) -> Result<()> {
        Push::anonymous(registry, repo).image(self, tag, Format::Oci).await.map(|_| ())
    }
}

/// The two manifest formats registries serve: OCI, and Docker's schema 2
/// (with its manifest list for indexes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

impl Format {
    fn manifest_type(self) -> &'static str {
        match self {
            Self::Oci => "application/vnd.oci.image.manifest.v1+json",
            Self::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }

    fn config_type(self) -> &'static str {
        match self {
            Self::Oci => "application/vnd.oci.image.config.v1+json",
            Self::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }

    fn index_type(self) -> &'static str {
        match self {
            Self::Oci => "application/vnd.oci.image.index.v1+json",
            Self::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }
}

/// Pushes blobs and manifests to one repository of a plain-HTTP registry,
/// as `docker push` would, with or without credentials.
pub struct Push {
    client: oci_client::Client,
    registry: String,
    repo: String,
    auth: oci_client::secrets::RegistryAuth,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Push({}/{})", self.registry, self.repo)
    }
}

impl Push {
    pub fn anonymous(registry: &str, repo: &str) -> Self {
        Self::new(registry, repo, oci_client::secrets::RegistryAuth::Anonymous)
    }

    pub fn with_password(registry: &str, repo: &str, user: &str, password: &str) -> Self {
        Self::new(registry, repo, oci_client::secrets::RegistryAuth::Basic(user.into(), password.into()))
    }

    fn new(registry: &str, repo: &str, auth: oci_client::secrets::RegistryAuth) -> Self {
        use oci_client::client::{ClientConfig, ClientProtocol};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() });
        Self { client, registry: registry.into(), repo: repo.into(), auth }
    }

    /// Pushes the image's blobs and its manifest, tagged `tag` (a tag, or
    /// `@sha256:…` to push by digest only). Returns the manifest's digest
    /// and size.
    pub async fn image(&self, image: &Image, tag: &str, format: Format) -> Result<(String, usize)> {
        let reference = self.reference(tag)?;
        self.client
            .auth(&reference, &self.auth, oci_client::RegistryOperation::Push)
            .await
            .with_context(|| format!("logging in to {}", self.registry))?;
        let mut blobs = vec![image.config_blob()];
        blobs.extend(image.layers.iter().map(|l| l.data.clone()));
        for data in blobs {
            let digest = sha256(&data);
            self.client.push_blob(&reference, data, &digest).await.with_context(|| format!("pushing blob {digest}"))?;
        }
        let manifest = image.manifest_in(format);
        self.manifest(tag, manifest, format.manifest_type()).await
    }

    /// Pushes each image by digest and then an index over them, tagged
    /// `tag`, with each image's architecture as its platform.
    pub async fn index(&self, images: &[&Image], tag: &str, format: Format) -> Result<(String, usize)> {
        let mut manifests = Vec::new();
        for image in images {
            let digest = sha256(&image.manifest_in(format));
            let (digest, size) = self.image(image, &format!("@{digest}"), format).await?;
            manifests.push(serde_json::json!({
                "mediaType": format.manifest_type(),
                "digest": digest,
                "size": size,
                "platform": { "architecture": image.architecture, "os": "linux" },
            }));
        }
        let index = serde_json::json!({ "schemaVersion": 2, "mediaType": format.index_type(), "manifests": manifests });
        self.manifest(tag, serde_json::to_vec(&index)?, format.index_type()).await
    }

    async fn manifest(&self, tag: &str, body: Vec<u8>, media_type: &str) -> Result<(String, usize)> {
        let reference = self.reference(tag)?;
        let (digest, size) = (sha256(&body), body.len());
        self.client
            .push_manifest_raw(&reference, body, http::HeaderValue::from_str(media_type)?)
            .await
            .with_context(|| format!("pushing the manifest of {reference}"))?;
        Ok((digest, size))
    }

    fn reference(&self, tag: &str) -> Result<oci_client::Reference> {
        let sep = if tag.starts_with('@') { "" } else { ":" };
        Ok(format!("{}/{}{sep}{tag}", self.registry, self.repo).parse()?)
    }
}
