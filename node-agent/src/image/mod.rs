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
mod registries;
mod source;
mod store;
mod unpack;

pub use config::ImageConfig;
pub use reference::{BadReference, ImageRef};
pub use registries::Registries;
pub use store::{Image, Store};
pub use unpack::{unpack, UnpackError, Unpacked};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    Reference(BadReference),
    #[error("registry error for {reference}: {message}")]
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
    fn registry(reference: &oci_client::Reference, err: oci_client::errors::OciDistributionError) -> Self {
        use oci_client::errors::OciDistributionError as E;
        let message = match &err {
            E::DigestError(e) => format!("{e} (corrupted or tampered blob)"),
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => format!(
                "{} (unauthorized: give the registry's username and password in the registries file)",
                crate::error_chain(&err)
            ),
            E::ImageManifestNotFoundError(_) => {
                format!("{} (this host is {})", crate::error_chain(&err), source::host_platform())
            }
            _ => crate::error_chain(&err),
        };
        Self::Registry { reference: reference.whole(), message }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.display().to_string(), error: source }
    }

    fn join(err: tokio::task::JoinError) -> Self {
        Self::Io { path: "blocking task".into(), error: std::io::Error::other(err) }
    }
}
