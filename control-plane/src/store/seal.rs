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
//! inside the servers' mutual TLS.
//!
//! With autolock on (`berthctl cluster autolock on`), the key file holds
//! the data key sealed by the cluster's unlock key ([`UnlockKey`], kept in
//! the replicated state, sealed in turn), so a server's disk alone opens
//! nothing: a restarted server waits, locked, for `berthctl cluster
//! unlock`. Each server reseals its own key file when the state's unlock
//! key changes.
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

/// What `store.key` holds: the data key in the clear, or sealed by the
/// unlock key (hex both).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

/// The cluster's unlock key: it seals each server's data key when
/// autolock is on. Shown to people as `BERTH-UNLOCK-1-<64 hex digits>`.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKey([u8; 32]);

const UNLOCK_PREFIX: &str = "BERTH-UNLOCK-1-";

impl UnlockKey {
    pub fn generate() -> Self {
        Self(XChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    /// Parses what `Display` shows; None for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.trim().strip_prefix(UNLOCK_PREFIX)?;
        Some(Self(hex::decode(hex).ok()?.try_into().ok()?))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// `plain` sealed with this key (a backup of an autolocked cluster).
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        seal_with(&self.cipher(), plain)
    }

    /// What [`Self::seal`] sealed; None if it was sealed with another key
    /// or damaged.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.cipher(), sealed)
    }
}

impl std::fmt::Display for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{UNLOCK_PREFIX}{}", hex::encode(self.0))
    }
}

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(..)")
    }
}

/// Seals and opens the store's values with one data key.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
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

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0} is locked (autolock): it opens only with the cluster's unlock key")]
    Locked(String),
    #[error(
        "that unlock key does not open {0}: this server's store key is sealed with another (an older one, if the \
         key was rotated or autolock turned off while this server was down)"
    )]
    WrongKey(String),
}

pub(crate) fn seal_with(cipher: &XChaCha20Poly1305, plain: &[u8]) -> Vec<u8> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    // Encrypting into a Vec fails only when it cannot grow.
    let sealed = cipher.encrypt(&nonce, plain).unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

pub(crate) fn open_with(cipher: &XChaCha20Poly1305, sealed: &[u8]) -> Option<Vec<u8>> {
    let (nonce, body) = (sealed.get(..NONCE)?, sealed.get(NONCE..)?);
    cipher.decrypt(XNonce::from_slice(nonce), body).ok()
}

/// Whether the key file of the data dir at `dir` is sealed (autolock).
pub fn locked(dir: &Path) -> io::Result<bool> {
    Ok(read_file(dir)?.is_some_and(|f| f.sealed.is_some()))
}

fn read_file(dir: &Path) -> io::Result<Option<KeyFile>> {
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
    if file.key.is_some() == file.sealed.is_some() {
        return Err(bad("expected one of key and sealed".into()));
    }
    Ok(Some(file))
}

impl Sealer {
    /// The key of the data dir at `dir`, if it has one; a sealed one opens
    /// only with `unlock`.
    pub fn load(dir: &Path, unlock: Option<&UnlockKey>) -> Result<Option<Self>, KeyError> {
        let path = dir.join(KEY_FILE);
        let Some(file) = read_file(dir)? else { return Ok(None) };
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
        let key = match (file.key, file.sealed, unlock) {
            (Some(key), _, _) => hex::decode(&key).map_err(|_| bad("key: expected 64 hex digits"))?,
            (_, Some(_), None) => return Err(KeyError::Locked(path.display().to_string())),
            (_, Some(sealed), Some(unlock)) => {
                let sealed = hex::decode(&sealed).map_err(|_| bad("sealed: expected hex digits"))?;
                open_with(&unlock.cipher(), &sealed).ok_or_else(|| KeyError::WrongKey(path.display().to_string()))?
            }
            (None, None, _) => return Err(bad("no key").into()),
        };
        let key: [u8; 32] = key.try_into().map_err(|_| bad("key: expected 64 hex digits"))?;
        Ok(Some(Self::new(key, path)))
    }

    fn new(key: [u8; 32], path: PathBuf) -> Self {
        Self { key, cipher: Arc::new(XChaCha20Poly1305::new(&key.into())), path }
    }

    /// Makes a new key for the data dir at `dir` and keeps it there (owner only).
    pub fn make(dir: &Path) -> io::Result<Self> {
        let sealer = Self::new(XChaCha20Poly1305::generate_key(&mut OsRng).into(), dir.join(KEY_FILE));
        sealer.save(None)?;
        Ok(sealer)
    }

    /// Writes the key file again: sealed by `unlock`, or in the clear.
    pub fn save(&self, unlock: Option<&UnlockKey>) -> io::Result<()> {
        let file = match unlock {
            None => KeyFile { version: 1, key: Some(hex::encode(self.key)), sealed: None },
            Some(u) => KeyFile { version: 1, key: None, sealed: Some(hex::encode(seal_with(&u.cipher(), &self.key))) },
        };
        berth_proto::pki::write_private(&self.path, &serde_json::to_vec(&file)?)
    }

    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        seal_with(&self.cipher, plain)
    }

    /// The plain value; `what` names it in the error.
    pub fn open(&self, sealed: &[u8], what: impl FnOnce() -> String) -> Result<Vec<u8>, Unsealable> {
        open_with(&self.cipher, sealed).ok_or_else(|| Unsealable { what: what(), key: self.path.display().to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_key_opens_only_with_the_unlock_key_and_reseals_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::make(dir.path()).unwrap();
        let value = sealer.seal(b"secret");
        let unlock = UnlockKey::generate();
        assert_eq!(UnlockKey::parse(&unlock.to_string()), Some(unlock.clone()));
        assert!(unlock.to_string().starts_with("BERTH-UNLOCK-1-") && unlock.to_string().len() == 15 + 64);
        assert_eq!(UnlockKey::parse("BERTH-UNLOCK-1-00"), None);
        sealer.save(Some(&unlock)).unwrap();
        assert!(locked(dir.path()).unwrap());
        let text = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        assert!(!text.contains(&hex::encode(sealer.key)), "the data key is not in the clear");
        let e = Sealer::load(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("is locked (autolock)"), "{e}");
        let e = Sealer::load(dir.path(), Some(&UnlockKey::generate())).unwrap_err().to_string();
        assert!(e.contains("that unlock key does not open"), "{e}");
        let opened = Sealer::load(dir.path(), Some(&unlock)).unwrap().unwrap();
        assert_eq!(opened.open(&value, String::new).unwrap(), b"secret");
        // Autolock off: in the clear again, and no unlock key needed.
        opened.save(None).unwrap();
        assert!(!locked(dir.path()).unwrap());
        assert_eq!(Sealer::load(dir.path(), None).unwrap().unwrap().open(&value, String::new).unwrap(), b"secret");
    }

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
        let again = Sealer::load(dir.path(), None).unwrap().unwrap();
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
        assert!(Sealer::load(dir.path(), None).unwrap().is_none());
        for (text, why) in [
            (r#"{"version":1,"key":"abc"}"#, "expected 64 hex digits"),
            (r#"{"version":2,"key":""}"#, "version 2 is newer"),
            (r#"{"version":1}"#, "expected one of key and sealed"),
            ("garbage", "expected value"),
        ] {
            std::fs::write(dir.path().join(KEY_FILE), text).unwrap();
            let e = Sealer::load(dir.path(), None).unwrap_err().to_string();
            assert!(e.contains("store.key") && e.contains(why), "{e}");
        }
    }
}
