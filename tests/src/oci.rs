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
    /// The `config` section of the image config (Entrypoint, Cmd, Env, …).
    pub config: serde_json::Value,
}

impl Image {
    pub fn new(layers: Vec<Blob>) -> Self {
        Self { layers, config: serde_json::json!({ "Env": ["PATH=/bin"], "Cmd": ["sh"] }) }
    }

    /// One gzip layer of busybox.
    pub fn busybox() -> Result<Self> {
        Ok(Self::new(vec![blob(Tar::busybox()?.finish()?, Compression::Gzip)?]))
    }

    pub fn config_blob(&self) -> Vec<u8> {
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": self.config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .unwrap_or_default()
    }

    pub fn manifest(&self) -> Vec<u8> {
        let config = self.config_blob();
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|l| serde_json::json!({ "mediaType": l.media_type, "digest": sha256(&l.data), "size": l.data.len() }))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len() },
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

    /// Pushes to a plain-HTTP registry as `registry/repo:tag`.
    pub async fn push(&self, registry: &str, repo: &str, tag: &str) -> Result<()> {
        use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() });
        let reference: oci_client::Reference = format!("{registry}/{repo}:{tag}").parse()?;
        let layers: Vec<ImageLayer> =
            self.layers.iter().map(|l| ImageLayer::new(l.data.clone(), l.media_type.clone(), None)).collect();
        let config = Config::new(self.config_blob(), "application/vnd.oci.image.config.v1+json".into(), None);
        let manifest: oci_client::manifest::OciImageManifest = serde_json::from_slice(&self.manifest())?;
        client
            .push(&reference, &layers, config, &oci_client::secrets::RegistryAuth::Anonymous, Some(manifest))
            .await
            .with_context(|| format!("pushing {reference}"))?;
        Ok(())
    }
}
