//! Images: pulling them from a registry or an OCI layout, and the
//! content-addressed layer store every container on the node shares.
//!
//! ```text
//! ImageRef ──Source::resolve──▶ manifest + config ──▶ for each layer:
//!     Store::ensure_layer ─lock(layer)─▶ Source::layer (digest checked)
//!                         ─unpack (diff id checked)─▶ layers/sha256/<hex>/
//! Store::record ──▶ images.json (reference → manifest, config, layers)
//! ```

mod config;
mod reference;
mod source;
mod store;
mod unpack;

pub use berth_proto::registries::{self, Registries};
pub use config::ImageConfig;
pub use reference::{BadReference, ImageRef};
pub use store::{Image, Store};
pub use unpack::{unpack, UnpackError, Unpacked};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    Reference(BadReference),
    #[error("pulling {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("digest mismatch: expected {expected}, got {actual} (corrupted or tampered blob)")]
    Digest { expected: String, actual: String },
    #[error("{0}")]
    NotFound(String),
    #[error("invalid image: {0}")]
    BadImage(String),
    #[error("unpacking layer {layer}: {error}")]
    Unpack { layer: String, error: UnpackError },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("image {0:?} is not in the local store; pull it first")]
    NotPulled(String),
    #[error("image {image} is used by container {container}; remove the container first")]
    InUse { image: String, container: String },
}

impl From<BadReference> for PullError {
    fn from(e: BadReference) -> Self {
        Self::Reference(e)
    }
}

impl PullError {
    /// A registry's error as Docker says it: what is missing, or what to
    /// change (and where) when HTTPS meets plain HTTP; else the chain.
    fn registry(reference: &oci_client::Reference, err: oci_client::errors::OciDistributionError, file: &str) -> Self {
        use oci_client::errors::{OciDistributionError as E, OciErrorCode};
        let (image, host) = (reference.whole(), reference.resolve_registry().to_owned());
        let chain = crate::error_chain(&err);
        let message = match &err {
            E::RegistryError { envelope, .. } => {
                let said: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| if e.message.is_empty() { format!("{:?}", e.code) } else { e.message.clone() })
                    .collect();
                let missing = envelope
                    .errors
                    .iter()
                    .any(|e| matches!(e.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown));
                if missing {
                    return Self::NotFound(format!("image {image} not found: {}", said.join("; ")));
                }
                said.join("; ")
            }
            // The image is there, not for this platform (Docker: "no matching manifest").
            E::ImageManifestNotFoundError(m) => format!("no matching manifest for {}: {m}", source::host_platform()),
            E::DigestError(e) => format!("{e} (corrupted or tampered blob)"),
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
                format!("{chain} (unauthorized: give the registry's username and password in {file})")
            }
            _ if chain.contains("InvalidContentType") || chain.contains("corrupt message") => format!(
                "registry {host} answered HTTPS with plain HTTP; if it serves only HTTP, add a [[registry]] \
                 entry to {file} with host = \"{host}\" and insecure = true"
            ),
            E::ServerError { code: 400, message, .. } if message.contains("HTTPS") => {
                if registries::is_loopback(&host) {
                    format!(
                        "registry {host} serves HTTPS, and a registry on loopback is plain HTTP unless {file} \
                         lists it with insecure = false"
                    )
                } else {
                    format!("registry {host} serves HTTPS, but {file} lists it with insecure = true: remove that line")
                }
            }
            _ => chain,
        };
        Self::Registry { reference: image, message }
    }

    /// Said for a pull of `image`: as it is when it names the image, else
    /// with the image named first.
    pub fn about(&self, image: &impl std::fmt::Display) -> String {
        let (said, image) = (self.to_string(), image.to_string());
        if said.contains(&image) {
            said
        } else {
            format!("pulling {image}: {said}")
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.display().to_string(), error: source }
    }

    fn join(err: tokio::task::JoinError) -> Self {
        Self::Io { path: "blocking task".into(), error: std::io::Error::other(err) }
    }
}
