//! The cluster's trust: who is who, proven by certificates from the
//! cluster's own certificate authority.
//!
//! ```text
//! bootstrap ─▶ Ca (root key pair + self-signed certificate, cluster id)
//! node      ─▶ Request (key pair made on the node, never sent) ─csr─▶ Ca::issue ─▶ certificate
//!              naming the node: CN = node id, O = cluster id, OU = role
//! joining   ─▶ JoinToken: digest of the root (pins it) + secret (authorises)
//! ```
//!
//! A certificate's subject is the identity every handler authorises by
//! (`Identity::from_der`); the TLS handshake has already checked that a
//! trusted root signed it and that it has not expired. Roles are in the
//! certificate so that a server that has not yet replicated anything (a
//! joining one) can still tell a server from a worker; users' rights are
//! in the replicated state too, so that removing a user takes effect at once.

mod ca;
mod credentials;
mod token;

pub use ca::{Ca, Issued};
pub use credentials::{private_dir, write_private, Credentials, Request};
pub use token::{JoinToken, TokenError};

use std::fmt;

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a node's certificate is valid unless configured otherwise.
pub const DEFAULT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

/// The DNS name in every server's certificate: clients check that the
/// other end of a connection to a server is one.
pub const SERVER_NAME: &str = "berth-server";
/// The DNS name in every worker's certificate (servers reach agents' logs).
pub const WORKER_NAME: &str = "berth-worker";

/// What a certificate makes its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A berth-server: Raft, forwarding, signing.
    Server,
    /// A berth-agent's node.
    Worker,
    /// A person or a program using the cluster API; what it may do is
    /// the user's access, kept in the replicated state.
    User,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Worker => "worker",
            Role::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Role::Server, Role::Worker, Role::User].into_iter().find(|r| r.as_str() == s)
    }

    /// The DNS name its certificates carry, for roles that serve.
    pub const fn dns_name(self) -> Option<&'static str> {
        match self {
            Role::Server => Some(SERVER_NAME),
            Role::Worker => Some(WORKER_NAME),
            Role::User => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cluster: String,
    pub role: Role,
    /// A node's id, or a user's name.
    pub name: String,
    /// SHA-256 of the certificate (hex): tells one certificate of a name
    /// from another, so a replaced or removed one can be refused.
    pub fingerprint: String,
    /// When it starts to be valid, in seconds since the Unix epoch.
    pub not_before: i64,
    /// When it expires, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The distinguished name of the root that signed it (roots' names are
    /// unique: see `Ca::new`), as `Ca::name` writes it.
    pub issuer: String,
}

/// A certificate that is not one of this cluster's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    #[error("not a certificate berth can read: {0}")]
    Unreadable(String),
    #[error("the certificate names no {0}")]
    Missing(&'static str),
    #[error("the certificate's role {0:?} is not server, worker or user")]
    BadRole(String),
    #[error("cannot make or sign a certificate: {0}")]
    Sign(String),
    #[error("no PEM {0} found")]
    Pem(&'static str),
    #[error("TLS: {0}")]
    Tls(String),
}

impl Identity {
    /// Reads the subject of a DER certificate (already verified by TLS).
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Unreadable(e.to_string()))?;
        let subject = cert.subject();
        let first = |value: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>, what: &'static str| {
            value.and_then(|a| a.as_str().ok()).map(str::to_owned).ok_or(PkiError::Missing(what))
        };
        let name = first(subject.iter_common_name().next(), "common name (node id or user)")?;
        let cluster = first(subject.iter_organization().next(), "organization (cluster id)")?;
        let role = first(subject.iter_organizational_unit().next(), "organizational unit (role)")?;
        let role = Role::parse(&role).ok_or(PkiError::BadRole(role))?;
        Ok(Identity {
            cluster,
            role,
            name,
            fingerprint: fingerprint(der),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            issuer: cert.issuer().to_string(),
        })
    }

    /// When this certificate should be renewed (Unix seconds): once two
    /// thirds of the life it was issued with have passed, as Swarm and
    /// kubelet do, which leaves a third of it for retries.
    pub fn renew_at(&self) -> i64 {
        let issued = self.not_before + ca::SKEW.as_secs() as i64;
        issued + (self.not_after - issued).max(0) * 2 / 3
    }
}

/// The distinguished name of the certificate `der`, as `Identity::issuer` writes names.
pub fn subject(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Unreadable(e.to_string()))?;
    Ok(cert.subject().to_string())
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// SHA-256 of DER bytes, in hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// The fingerprint of the first certificate in `pem` (a root's digest, as
/// join tokens pin it); empty if there is none.
pub fn digest(pem: &str) -> String {
    certificates(pem).ok().and_then(|c| c.first().map(|d| fingerprint(d))).unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER certificates in a PEM text, in order.
pub fn certificates(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Unreadable(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::Pem("certificate"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
