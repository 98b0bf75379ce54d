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
/// A renewal's new set is staged here whole, then moved into place.
const NEXT: &str = "next";
/// Written last into `NEXT`: the staged set is complete.
const STAGED: &str = "complete";

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
        if dir.exists() {
            roll_forward(dir)?;
        }
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

    /// Writes them to `dir` (made 0700) so that a crash at any point
    /// leaves either the old set or the new one, never a key with another
    /// key's certificate: the set is staged whole in `dir/next/`, marked
    /// complete, then moved into place (and a load finishes a move a crash
    /// interrupted). The key is never readable by others, not even briefly.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let private_dir = |d: &Path| std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d);
        private_dir(dir)?;
        let next = dir.join(NEXT);
        if next.exists() {
            std::fs::remove_dir_all(&next)?;
        }
        private_dir(&next)?;
        write_private(&next.join(CHAIN), self.chain.as_bytes())?;
        write_private(&next.join(ROOTS), self.roots.as_bytes())?;
        write_private(&next.join(KEY), self.key.as_bytes())?;
        write_private(&next.join(STAGED), b"")?;
        roll_forward(dir)
    }
}

/// Moves a completely staged set into place; drops an incomplete one.
fn roll_forward(dir: &Path) -> io::Result<()> {
    let next = dir.join(NEXT);
    if !next.exists() {
        return Ok(());
    }
    if next.join(STAGED).exists() {
        for name in [CHAIN, ROOTS, KEY] {
            if next.join(name).exists() {
                std::fs::rename(next.join(name), dir.join(name))?;
            }
        }
        std::fs::File::open(dir)?.sync_all()?;
    }
    std::fs::remove_dir_all(&next)
}

/// Makes `dir` (and any missing parent) readable by its owner only, and
/// takes those rights from everyone else on an existing one: a data dir
/// holds keys, the cluster's state and image layers (whose setuid files
/// must not be reachable by other users of the host).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
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
