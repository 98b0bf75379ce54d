//! The servers' side of trust: a new cluster's root, certificates for
//! the nodes that join with a token, and users' credentials.
//!
//! ```text
//! --bootstrap ─▶ Founding: cluster id, root, join secrets, this server's
//!                credentials, the first admin's (DATA_DIR/admin.conf);
//!                the replicated part is written by InitTrust
//! Join(token, csr) ─▶ leader: token checked against the state ─▶ issue()
//! ```

use std::time::Duration;

use berth_proto::pki::{Ca, Credentials, JoinToken, PkiError, Role};
use serde::{Deserialize, Serialize};

use crate::node::OpError;
use crate::state::{Access, Trust, User};

/// The user bootstrap makes, with all rights.
pub const ADMIN: &str = "admin";
/// How long a user's credential is valid.
pub const USER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A new id for a node: 16 hex digits.
pub fn new_node_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// What the bootstrap server makes before anything else exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Founding {
    pub trust: Trust,
    pub admin: User,
    /// This server's own id in its certificate.
    pub server_id: String,
}

/// A new cluster: its root and secrets, this server's credentials and the
/// first admin's.
pub fn found(validity: Duration) -> Result<(Founding, Credentials, Credentials), PkiError> {
    let cluster = format!("{:032x}", rand::random::<u128>());
    let ca = Ca::new(&cluster)?;
    let digest = ca.digest();
    let server_id = new_node_id();
    let server = ca.credentials(&cluster, Role::Server, &server_id, validity, &ca.cert)?;
    let admin = ca.credentials(&cluster, Role::User, ADMIN, USER_VALIDITY, &ca.cert)?;
    let admin_user = User { name: ADMIN.into(), access: Access::Admin, fingerprint: admin.identity()?.fingerprint };
    let trust = Trust {
        cluster,
        roots: vec![ca.cert.clone()],
        ca,
        worker_secret: JoinToken::new(&digest).secret,
        server_secret: JoinToken::new(&digest).secret,
        validity_secs: validity.as_secs(),
    };
    Ok((Founding { trust, admin: admin_user, server_id }, server, admin))
}

/// A node's certificate, as the Join call answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub node_id: String,
    pub role: String,
    pub chain: String,
    pub roots: String,
}

/// Checks `token` against the cluster's secrets and signs `csr` for a new
/// node of the role the token is for, which must be `want`.
pub fn admit(trust: Option<&Trust>, token: &str, csr: &str, want: &str) -> Result<Joined, OpError> {
    let trust =
        trust.ok_or_else(|| OpError::Unavailable("the cluster's identity is not set up yet; try again".into()))?;
    let offered: JoinToken =
        token.parse().map_err(|e: berth_proto::pki::TokenError| OpError::Invalid(e.to_string()))?;
    if offered.digest != trust.ca.digest() {
        return Err(OpError::Refused(
            "the join token is for another cluster (its CA digest is not this cluster's root)".into(),
        ));
    }
    let secret = |s: &str| JoinToken { digest: offered.digest.clone(), secret: s.to_owned() };
    let role = if secret(&trust.worker_secret).accepts(&offered) {
        Role::Worker
    } else if secret(&trust.server_secret).accepts(&offered) {
        Role::Server
    } else {
        return Err(OpError::Refused(
            "the join token is not valid: it is wrong or was rotated; \
             get the current one with `berthctl cluster join-token worker` (or server)"
                .into(),
        ));
    };
    if want != role.as_str() {
        return Err(OpError::Refused(format!(
            "this is a {role} join token; a {want} joins with the {want} token (`berthctl cluster join-token {want}`)"
        )));
    }
    let node_id = new_node_id();
    let issued = trust
        .ca
        .issue(csr, &trust.cluster, role, &node_id, Duration::from_secs(trust.validity_secs))
        .map_err(|e| OpError::Invalid(format!("csr: {e}")))?;
    Ok(Joined { node_id, role: role.to_string(), chain: issued.chain, roots: trust.roots_pem() })
}

/// Signs a user's request; the user is recorded separately (AddUser).
pub fn sign_user(trust: &Trust, name: &str, csr: &str) -> Result<(String, String), OpError> {
    let issued = trust
        .ca
        .issue(csr, &trust.cluster, Role::User, name, USER_VALIDITY)
        .map_err(|e| OpError::Invalid(format!("csr: {e}")))?;
    Ok((issued.chain, issued.fingerprint))
}

#[cfg(test)]
mod tests {
    use berth_proto::pki::Request;

    use super::*;

    #[test]
    fn a_token_admits_a_node_of_its_role_and_nothing_else_does() {
        let (founding, server, admin) = found(Duration::from_secs(3600)).unwrap();
        let trust = &founding.trust;
        assert_eq!(server.identity().unwrap().role, Role::Server);
        assert_eq!(admin.identity().unwrap().fingerprint, founding.admin.fingerprint);
        let digest = trust.ca.digest();
        let token = |secret: &str| JoinToken { digest: digest.clone(), secret: secret.into() }.to_string();
        let csr = Request::new().unwrap().csr;
        let worker = admit(Some(trust), &token(&trust.worker_secret), &csr, "worker").unwrap();
        assert_eq!(worker.role, "worker");
        let creds = Credentials { key: String::new(), chain: worker.chain.clone(), roots: worker.roots.clone() };
        let id = creds.identity().unwrap();
        assert_eq!(
            (id.role, id.name.as_str(), id.cluster.as_str()),
            (Role::Worker, worker.node_id.as_str(), trust.cluster.as_str())
        );
        assert_eq!(admit(Some(trust), &token(&trust.server_secret), &csr, "server").unwrap().role, "server");
        let err = admit(Some(trust), &token(&trust.worker_secret), &csr, "server");
        assert!(matches!(err, Err(OpError::Refused(m)) if m.contains("this is a worker join token")));
        // Wrong, rotated, for another cluster, malformed, or too early.
        let wrong = JoinToken::new(&digest).to_string();
        assert!(
            matches!(admit(Some(trust), &wrong, &csr, "worker"), Err(OpError::Refused(m)) if m.contains("wrong or was rotated"))
        );
        let other = JoinToken::new(&"ab".repeat(32)).to_string();
        assert!(
            matches!(admit(Some(trust), &other, &csr, "worker"), Err(OpError::Refused(m)) if m.contains("another cluster"))
        );
        assert!(matches!(admit(Some(trust), "", &csr, "worker"), Err(OpError::Invalid(m)) if m.contains("BERTH-1-")));
        assert!(
            matches!(admit(Some(trust), &token(&trust.worker_secret), "junk", "worker"), Err(OpError::Invalid(m)) if m.starts_with("csr:"))
        );
        assert!(matches!(admit(None, &wrong, &csr, "worker"), Err(OpError::Unavailable(_))));
    }
}
