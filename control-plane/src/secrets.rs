//! The cluster's secrets key: 32 random bytes in the replicated trust,
//! which seal each secret's value (XChaCha20-Poly1305, as the store's
//! values are sealed) before its command is written. So a secret is in
//! the clear in no log entry, snapshot, event or reply, even a snapshot
//! sent to a follower; servers open it only to hand it to the nodes whose
//! tasks name it. A cluster made before secrets gets its key with its
//! first secret (`Command::SetSecretsKey`, first one wins).

use chacha20poly1305::aead::{KeyInit, OsRng};
use chacha20poly1305::XChaCha20Poly1305;

use crate::store::seal::{open_with, seal_with};

/// A new key, hex.
pub fn new_key() -> String {
    hex::encode(XChaCha20Poly1305::generate_key(&mut OsRng))
}

fn cipher(key: &str) -> Option<XChaCha20Poly1305> {
    let key: [u8; 32] = hex::decode(key).ok()?.try_into().ok()?;
    Some(XChaCha20Poly1305::new(&key.into()))
}

/// `plain` sealed with `key` (hex), as hex; none for a key that is not one.
pub fn seal(key: &str, plain: &[u8]) -> Option<String> {
    Some(hex::encode(seal_with(&cipher(key)?, plain)))
}

/// The value `sealed` (hex) holds; none unless `key` sealed it.
pub fn open(key: &str, sealed: &str) -> Option<Vec<u8>> {
    open_with(&cipher(key)?, &hex::decode(sealed).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_with_its_key_only() {
        let (key, other) = (new_key(), new_key());
        let sealed = seal(&key, b"hunter2").unwrap();
        assert!(!sealed.contains(&hex::encode(b"hunter2")));
        assert_eq!(open(&key, &sealed).as_deref(), Some(&b"hunter2"[..]));
        assert_eq!(open(&other, &sealed), None);
        assert_eq!(open(&key, "zz"), None);
        assert_eq!(seal("short", b"x"), None);
        assert_ne!(seal(&key, b"x"), seal(&key, b"x"), "a fresh nonce each time");
    }
}
