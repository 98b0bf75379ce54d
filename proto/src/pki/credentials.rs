//! What a node or a user holds: its private key, its certificate chain,
//! and the roots it trusts. A node keeps them in `DATA_DIR/tls/`, so a
//! restart needs no token.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rcgen::{CertificateParams, KeyPair};

use super::{certificates, Identity, PkiError};

const KEY: &str = "node.key";
const CHAIN: &str = "node.crt";
const ROOTS: &str = "ca.crt";

/// A private key, its certificate chain (PEM, leaf first) and the trusted roots (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub key: String,
    pub chain: String,
    pub roots: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("identity", &self.identity().ok()).finish_non_exhaustive()
    }
}

/// A key pair made here and the certificate request for it; the key
/// never leaves the process that made it.
#[derive(Clone)]
pub struct Request {
    pub key: String,
    pub csr: String,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request { .. }")
    }
}

impl Request {
    pub fn new() -> Result<Self, PkiError> {
        let sign = |e: rcgen::Error| PkiError::Sign(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign)?;
        let csr = CertificateParams::default().serialize_request(&key).map_err(sign)?.pem().map_err(sign)?;
        Ok(Request { key: key.serialize_pem(), csr })
    }

    /// The credentials once the authority has answered with `chain` and `roots`.
    pub fn complete(self, chain: String, roots: String) -> Result<Credentials, PkiError> {
        let creds = Credentials { key: self.key, chain, roots };
        creds.identity()?;
        certificates(&creds.roots)?;
        Ok(creds)
    }
}

impl Credentials {
    /// Who the certificate names.
    pub fn identity(&self) -> Result<Identity, PkiError> {
        let chain = certificates(&self.chain)?;
        Identity::from_der(&chain[0])
    }

    /// Loads `dir/node.key`, `node.crt` and `ca.crt`; None if the dir has none.
    pub fn load(dir: &Path) -> io::Result<Option<Self>> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name));
        let key = match read(KEY) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let creds = Credentials { key, chain: read(CHAIN)?, roots: read(ROOTS)? };
        creds
            .identity()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", dir.join(CHAIN).display())))?;
        Ok(Some(creds))
    }

    /// Writes them to `dir` (made 0700), each file replaced whole and
    /// durably; the key is never readable by others, not even briefly.
    /// The key goes last: a dir with a key has a whole set.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        write_private(&dir.join(CHAIN), self.chain.as_bytes())?;
        write_private(&dir.join(ROOTS), self.roots.as_bytes())?;
        write_private(&dir.join(KEY), self.key.as_bytes())
    }
}

/// Replaces `path` with `data`, readable by its owner only (never by
/// others, not even briefly), whole and durably: temp file, fsync, rename,
/// fsync of the directory.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
