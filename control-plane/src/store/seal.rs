//! Encryption at rest: every log entry and snapshot the store writes is
//! sealed with the server's data key (XChaCha20-Poly1305, a random 24-byte
//! nonce per value), as Swarm encrypts its Raft log. They hold the
//! cluster's root key, join secrets and every service's environment, so a
//! copied `raft.sled` (a backup, a disk image, a volume snapshot) gives
//! none of it without the key.
//!
//! The key lives beside the store, in `DATA_DIR/store.key` (0600, in the
//! 0700 data dir), as Swarm keeps its data key with the node's TLS key:
//! what it protects against is the store travelling without its key.
//! Each server has its own key; snapshots cross the wire in the clear,
//! inside the servers' mutual TLS. The key file is JSON with a version, so
//! a key kept sealed by another key (`--autolock`) can come later.
//!
//! Sealed value: `nonce (24) || ciphertext || tag (16)`. A value that does
//! not open names the file, since the likely cause is a key from another
//! data dir.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

/// The key's file, in the data dir.
pub const KEY_FILE: &str = "store.key";
const NONCE: usize = 24;

/// What `store.key` holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    /// The data key, hex.
    key: String,
}

/// Seals and opens the store's values with one data key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Arc<XChaCha20Poly1305>,
    path: PathBuf,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({})", self.path.display())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{what} does not open with {key}: not sealed with this data dir's key (was store.key replaced?)")]
pub struct Unsealable {
    pub what: String,
    pub key: String,
}

impl Sealer {
    /// The key of the data dir at `dir`, if it has one.
    pub fn load(dir: &Path) -> io::Result<Option<Self>> {
        let path = dir.join(KEY_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
        let file: KeyFile = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if file.version != 1 {
            return Err(bad(format!("key file version {} is newer than this build's 1", file.version)));
        }
        let key =
            decode_hex(&file.key).filter(|k| k.len() == 32).ok_or_else(|| bad("key: expected 64 hex digits".into()))?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|e| bad(e.to_string()))?;
        Ok(Some(Self { cipher: Arc::new(cipher), path }))
    }

    /// Makes a new key for the data dir at `dir` and keeps it there (owner only).
    pub fn make(dir: &Path) -> io::Result<Self> {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let file = KeyFile { version: 1, key: key.iter().map(|b| format!("{b:02x}")).collect() };
        let path = dir.join(KEY_FILE);
        berth_proto::pki::write_private(&path, &serde_json::to_vec(&file)?)?;
        Ok(Self { cipher: Arc::new(XChaCha20Poly1305::new(&key)), path })
    }

    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encrypting into a Vec fails only when it cannot grow.
        let sealed = self.cipher.encrypt(&nonce, plain).unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plain value; `what` names it in the error.
    pub fn open(&self, sealed: &[u8], what: impl FnOnce() -> String) -> Result<Vec<u8>, Unsealable> {
        let fail = || Unsealable { what: what(), key: self.path.display().to_string() };
        if sealed.len() < NONCE {
            return Err(fail());
        }
        let (nonce, body) = sealed.split_at(NONCE);
        self.cipher.decrypt(XNonce::from_slice(nonce), body).map_err(|_| fail())
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_with_its_key_and_shows_nothing_of_itself() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::make(dir.path()).unwrap();
        let plain = br#"{"env":{"PASSWORD":"hunter2"}}"#;
        let sealed = sealer.seal(plain);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_ne!(sealer.seal(plain), sealed, "a fresh nonce each time");
        assert_eq!(sealer.open(&sealed, || "x".into()).unwrap(), plain);
        // The same key after a restart.
        let again = Sealer::load(dir.path()).unwrap().unwrap();
        assert_eq!(again.open(&sealed, || "x".into()).unwrap(), plain);
        // Another data dir's key, a flipped bit, a short value: refused by name.
        let other = Sealer::make(tempfile::tempdir().unwrap().path()).unwrap();
        let e = other.open(&sealed, || "log entry 7".into()).unwrap_err().to_string();
        assert!(e.starts_with("log entry 7 does not open with") && e.contains("store.key"), "{e}");
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(sealer.open(&flipped, String::new).is_err());
        assert!(sealer.open(b"short", String::new).is_err());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_bad_key_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Sealer::load(dir.path()).unwrap().is_none());
        for (text, why) in [
            (r#"{"version":1,"key":"abc"}"#, "expected 64 hex digits"),
            (r#"{"version":2,"key":""}"#, "version 2 is newer"),
            ("garbage", "expected value"),
        ] {
            std::fs::write(dir.path().join(KEY_FILE), text).unwrap();
            let e = Sealer::load(dir.path()).unwrap_err().to_string();
            assert!(e.contains("store.key") && e.contains(why), "{e}");
        }
    }
}
