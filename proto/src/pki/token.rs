//! Join tokens, in the spirit of Swarm's: `BERTH-1-<digest>-<secret>`.
//! The digest (SHA-256 of the cluster's root certificate, hex) lets a
//! joining node trust the server it reaches before it trusts anything
//! else; the secret authorises the join, one for workers and one for
//! servers. Whoever holds a token can join: it is a password.

use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "BERTH-1-";
const SECRET_LEN: usize = 32;
/// Letters and digits without look-alikes (base32 as in RFC 4648, lowercase).
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the root certificate, 64 hex digits.
    pub digest: String,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken").field("digest", &self.digest).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("join token is not valid: {0}; expected BERTH-1-<64 hex digits>-<32 letters and digits>, as `berthctl cluster join-token` prints it")]
pub struct TokenError(&'static str);

impl JoinToken {
    /// A new token for the root whose digest is `digest`.
    pub fn new(digest: &str) -> Self {
        let secret = (0..SECRET_LEN).map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char).collect();
        JoinToken { digest: digest.to_owned(), secret }
    }

    /// Whether `offered` is this token's secret; takes the same time
    /// wherever the two differ.
    pub fn accepts(&self, offered: &JoinToken) -> bool {
        let (a, b) = (self.secret.as_bytes(), offered.secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}-{}", self.digest, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        let rest = s.trim().strip_prefix(PREFIX).ok_or(TokenError("it does not start with BERTH-1-"))?;
        let (digest, secret) = rest.split_once('-').ok_or(TokenError("it has no secret"))?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(TokenError("its CA digest is not 64 lowercase hex digits"));
        }
        if secret.len() != SECRET_LEN || !secret.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err(TokenError("its secret is not 32 letters and digits"));
        }
        Ok(JoinToken { digest: digest.to_owned(), secret: secret.to_owned() })
    }
}
