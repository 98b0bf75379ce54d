//! Where an image's manifest, config and layer blobs come from: a registry
//! (through oci-client) or a local OCI layout directory. Both hand the store
//! the same things, and every blob they hand over has had its digest checked.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_client::client::current_platform_resolver;
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::Registries;
use super::{ImageRef, PullError};

/// A resolved image: its platform manifest, that manifest's digest, and the
/// raw config blob.
#[derive(Debug)]
pub struct Resolved {
    pub manifest: OciImageManifest,
    pub digest: String,
    pub config: Vec<u8>,
}

pub enum Source {
    /// `file`: the registries file, named in messages.
    Registry {
        client: Client,
        reference: Reference,
        auth: RegistryAuth,
        file: String,
    },
    Layout {
        dir: PathBuf,
        tag: Option<String>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registry { reference, .. } => write!(f, "Source::Registry({})", reference.whole()),
            Self::Layout { dir, tag } => write!(f, "Source::Layout({}, {tag:?})", dir.display()),
        }
    }
}

impl Source {
    pub fn new(image: &ImageRef, registries: &Registries) -> Result<Self, PullError> {
        Ok(match image {
            ImageRef::Registry(reference) => {
                let (client, auth) = registries
                    .client(reference.resolve_registry())
                    .map_err(|message| PullError::Registry { reference: reference.whole(), message })?;
                Self::Registry { client, reference: reference.clone(), auth, file: registries.file() }
            }
            ImageRef::Layout { path, tag } => Self::Layout { dir: path.clone(), tag: tag.clone() },
        })
    }

    pub async fn resolve(&self) -> Result<Resolved, PullError> {
        match self {
            Self::Registry { client, reference, auth, file } => {
                let (manifest, digest, config) = client
                    .pull_manifest_and_config(reference, auth)
                    .await
                    .map_err(|e| PullError::registry(reference, e, file))?;
                Ok(Resolved { manifest, digest, config: config.into_bytes() })
            }
            Self::Layout { dir, tag } => {
                let (dir, tag) = (dir.clone(), tag.clone());
                tokio::task::spawn_blocking(move || resolve_layout(&dir, tag.as_deref()))
                    .await
                    .map_err(PullError::join)?
            }
        }
    }

    /// A file holding the layer's verified blob: downloaded into `scratch`
    /// from a registry, or the layout's own blob file in place.
    pub async fn layer(&self, layer: &OciDescriptor, scratch: &Path) -> Result<PathBuf, PullError> {
        match self {
            Self::Registry { client, reference, file: registries, .. } => {
                let path = scratch.join("blob");
                let file = tokio::fs::File::create(&path).await.map_err(|e| PullError::io(&path, e))?;
                client.pull_blob(reference, layer, file).await.map_err(|e| match e {
                    // Writing here failed (a full disk), not the registry.
                    oci_client::errors::OciDistributionError::IoError(e) => PullError::io(&path, e),
                    e => PullError::registry(reference, e, registries),
                })?;
                Ok(path)
            }
            Self::Layout { dir, .. } => {
                let path = blob_path(dir, &layer.digest)?;
                let digest = layer.digest.clone();
                let checked = path.clone();
                tokio::task::spawn_blocking(move || verify_file(&checked, &digest))
                    .await
                    .map_err(PullError::join)??;
                Ok(path)
            }
        }
    }
}

/// The hex part of a sha256 digest, refused unless it is exactly that (a
/// digest becomes a file name, so nothing else may pass).
pub fn digest_hex(digest: &str) -> Result<&str, PullError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(hex)
        }
        _ => Err(PullError::BadImage(format!("digest {digest:?} is not sha256:<64 lowercase hex digits>"))),
    }
}

pub fn sha256_of(data: &[u8]) -> String {
    digest_string(Sha256::digest(data))
}

/// `sha256:<hex>` of a finished hash.
pub fn digest_string(hash: impl AsRef<[u8]>) -> String {
    format!("sha256:{}", hex::encode(hash))
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, PullError> {
    Ok(dir.join("blobs/sha256").join(digest_hex(digest)?))
}

fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, PullError> {
    let path = blob_path(dir, digest)?;
    let data = std::fs::read(&path).map_err(|e| PullError::io(&path, e))?;
    check_digest(digest, &sha256_of(&data))?;
    Ok(data)
}

fn verify_file(path: &Path, digest: &str) -> Result<(), PullError> {
    let mut file = std::fs::File::open(path).map_err(|e| PullError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| PullError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    check_digest(digest, &digest_string(hasher.finalize()))
}

fn check_digest(expected: &str, actual: &str) -> Result<(), PullError> {
    if expected == actual {
        Ok(())
    } else {
        Err(PullError::Digest { expected: expected.to_owned(), actual: actual.to_owned() })
    }
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn resolve_layout(dir: &Path, tag: Option<&str>) -> Result<Resolved, PullError> {
    let index_path = dir.join("index.json");
    let index = std::fs::read(&index_path).map_err(|e| PullError::io(&index_path, e))?;
    let index: OciImageIndex =
        serde_json::from_slice(&index).map_err(|e| PullError::BadImage(format!("{}: {e}", index_path.display())))?;
    let entry = match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|m| m.annotations.as_ref().and_then(|a| a.get(REF_NAME)).is_some_and(|t| t == tag))
            .ok_or_else(|| PullError::NotFound(format!("no image tagged {tag:?} in {}", index_path.display())))?,
        None => match index.manifests.as_slice() {
            [one] => one,
            [] => return Err(PullError::NotFound(format!("{} lists no image", index_path.display()))),
            _ => {
                return Err(PullError::NotFound(format!(
                    "{} lists several images; name one with oci:PATH:TAG",
                    index_path.display()
                )))
            }
        },
    };
    let mut digest = entry.digest.clone();
    let mut data = read_blob(dir, &digest)?;
    let parse = |data: &[u8]| {
        serde_json::from_slice::<OciManifest>(data).map_err(|e| PullError::BadImage(format!("manifest {digest}: {e}")))
    };
    let manifest = match parse(&data)? {
        OciManifest::Image(m) => m,
        OciManifest::ImageIndex(platforms) => {
            digest = current_platform_resolver(&platforms.manifests)
                .ok_or_else(|| PullError::NotFound(format!("no {} image in the index", host_platform())))?;
            data = read_blob(dir, &digest)?;
            match serde_json::from_slice::<OciManifest>(&data) {
                Ok(OciManifest::Image(m)) => m,
                _ => return Err(PullError::BadImage(format!("{digest} is not an image manifest"))),
            }
        }
    };
    let config = read_blob(dir, &manifest.config.digest)?;
    Ok(Resolved { manifest, digest, config })
}

/// This host's platform as image indexes name it (Go's names: amd64, arm64).
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}
