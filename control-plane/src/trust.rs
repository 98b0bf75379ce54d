//! The servers' side of trust: a new cluster's root, certificates for
//! the nodes that join with a token, and users' credentials.
//!
//! ```text
//! --bootstrap ─▶ Founding: cluster id, root, join secrets, this server's
//!                credentials, the first admin's (DATA_DIR/admin.conf);
//!                the replicated part is written by InitTrust
//! Join(token, csr) ─▶ leader: token checked against the state ─▶ issue()
//! Renew(csr)       ─▶ leader: the caller's certificate names who it is ─▶ issue()
//! RotateCa(csr)    ─▶ a new root, cross-signed by the old ─▶ RotateCa command
//! ```

use std::time::Duration;

use berth_proto::pki::{Ca, Credentials, JoinToken, PkiError, Role};
use serde::{Deserialize, Serialize};

use crate::node::OpError;
use crate::state::{Access, Rotation, Trust, User};

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
    let admin_user =
        User { name: ADMIN.into(), access: Access::Admin, fingerprint: admin.identity()?.fingerprint, renewed: None };
    let trust = Trust {
        cluster,
        roots: vec![ca.cert.clone()],
        ca,
        worker_secret: JoinToken::new(&digest).secret,
        server_secret: JoinToken::new(&digest).secret,
        validity_secs: validity.as_secs(),
        cross: None,
        holders: Default::default(),
        autolock: None,
        secrets_key: Some(crate::secrets::new_key()),
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

impl From<Joined> for berth_proto::pb::agent::JoinReply {
    fn from(j: Joined) -> Self {
        Self { node_id: j.node_id, role: j.role, certificate_chain: j.chain, roots: j.roots }
    }
}

/// Checks `token` against the cluster's secrets and signs `csr` for a new
/// node of the role the token is for, which must be `want`.
pub fn admit(trust: Option<&Trust>, token: &str, csr: &str, want: &str) -> Result<Joined, OpError> {
    let trust =
        trust.ok_or_else(|| OpError::Unavailable("the cluster's identity is not set up yet; try again".into()))?;
    let offered: JoinToken =
        token.parse().map_err(|e: berth_proto::pki::TokenError| OpError::Invalid(e.to_string()))?;
    if offered.digest != trust.ca.digest() && trust.roots.iter().any(|r| berth_proto::pki::digest(r) == offered.digest)
    {
        return Err(OpError::Refused(
            "the join token names the cluster's old root: the CA was rotated since; \
             get the current token with `berthctl cluster join-token worker` (or server)"
                .into(),
        ));
    }
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
    issue(trust, csr, role, &node_id)
}

fn issue(trust: &Trust, csr: &str, role: Role, name: &str) -> Result<Joined, OpError> {
    let issued = trust
        .issue(csr, role, name, Duration::from_secs(trust.validity_secs))
        .map_err(|e| OpError::Invalid(format!("csr: {e}")))?;
    Ok(Joined { node_id: name.to_owned(), role: role.to_string(), chain: issued.chain, roots: trust.roots_pem() })
}

/// A new certificate for a node that holds a valid one: the same name
/// and role, from the signing root. A worker must still be a node of the
/// cluster (`known`): a removed node's certificate is not renewed.
pub fn renew(trust: Option<&Trust>, name: &str, role: Role, known: bool, csr: &str) -> Result<Joined, OpError> {
    let trust =
        trust.ok_or_else(|| OpError::Unavailable("the cluster's identity is not set up yet; try again".into()))?;
    match role {
        Role::User => {
            return Err(OpError::Refused("users renew their credential with `berthctl user add` (as an admin)".into()))
        }
        Role::Worker if !known => {
            return Err(OpError::Refused(format!(
                "node {name} is not a node of this cluster (it was removed): join again with a worker token"
            )))
        }
        _ => {}
    }
    issue(trust, csr, role, name)
}

/// Signs a user's request; the user is recorded separately (AddUser).
pub fn sign_user(trust: &Trust, name: &str, csr: &str) -> Result<(String, String), OpError> {
    let issued =
        trust.issue(csr, Role::User, name, USER_VALIDITY).map_err(|e| OpError::Invalid(format!("csr: {e}")))?;
    Ok((issued.chain, issued.fingerprint))
}

/// A rotation away from `trust`'s signing root, asked by `user`, whose new
/// certificate (for `csr`) comes from the new root: the command, and the
/// user's chain and roots as they will be once it is applied.
pub fn rotation(trust: &Trust, user: &str, csr: &str) -> Result<(Rotation, String, String), OpError> {
    let internal = |e: PkiError| OpError::Internal(e.to_string());
    let ca = Ca::new(&trust.cluster).map_err(internal)?;
    let cross = trust.ca.cross_sign(&ca).map_err(internal)?;
    let next = Trust {
        ca: ca.clone(),
        cross: Some(cross.clone()),
        roots: [vec![ca.cert.clone()], trust.roots.clone()].concat(),
        ..trust.clone()
    };
    let (chain, fingerprint) = sign_user(&next, user, csr)?;
    let rotation = Rotation { ca, cross, after: trust.ca.digest(), user: user.to_owned(), fingerprint };
    Ok((rotation, chain, next.roots_pem()))
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

    #[test]
    fn autolock_changes_only_from_the_key_it_was_decided_on() {
        use crate::state::{apply, Command, Rejection, Response, State};
        let (founding, _, _) = found(Duration::from_secs(3600)).unwrap();
        let mut state = State::default();
        let set = |key: Option<&str>, previous: Option<&str>| Command::SetAutolock {
            key: key.map(Into::into),
            previous: previous.map(Into::into),
        };
        assert_eq!(apply(&mut state, &set(Some("a"), None)), Response::Rejected(Rejection::NoTrust));
        let cmd = Command::InitTrust { trust: Box::new(founding.trust.clone()), admin: founding.admin.clone() };
        assert_eq!(apply(&mut state, &cmd), Response::Done);
        assert_eq!(apply(&mut state, &set(Some("a"), None)), Response::Done);
        // Two admins decided on "off" at once: the second is told, and "a" stays.
        assert_eq!(apply(&mut state, &set(Some("b"), None)), Response::Rejected(Rejection::AutolockChanged));
        assert_eq!(state.trust.as_ref().and_then(|t| t.autolock.as_deref()), Some("a"));
        assert_eq!(apply(&mut state, &set(None, Some("a"))), Response::Done);
        assert_eq!(state.trust.as_ref().and_then(|t| t.autolock.clone()), None);
    }

    #[test]
    fn an_older_cluster_gets_its_secrets_key_once_and_secrets_must_open_with_it() {
        use crate::state::{apply, Command, Rejection, Response, State, StoredFile};
        let (founding, _, _) = found(Duration::from_secs(3600)).unwrap();
        assert!(founding.trust.secrets_key.is_some(), "a new cluster has one from the start");
        let mut state = State::default();
        let older = Trust { secrets_key: None, ..founding.trust.clone() };
        apply(&mut state, &Command::InitTrust { trust: Box::new(older), admin: founding.admin.clone() });
        let key = crate::secrets::new_key();
        let file = |data: String| StoredFile { created_at_ms: 1, bytes: 2, digest: String::new(), data };
        let sealed = crate::secrets::seal(&key, b"pw").unwrap();
        let create = |data: &str| Command::CreateSecret { name: "db".into(), file: file(data.into()) };
        // No key yet: nothing can be sealed for it.
        assert!(matches!(apply(&mut state, &create(&sealed)), Response::Rejected(Rejection::Invalid(_))));
        assert_eq!(apply(&mut state, &Command::SetSecretsKey { key: key.clone() }), Response::Done);
        // A second key (a racing first secret) changes nothing.
        apply(&mut state, &Command::SetSecretsKey { key: crate::secrets::new_key() });
        assert_eq!(state.trust.as_ref().and_then(|t| t.secrets_key.clone()), Some(key));
        let other = crate::secrets::seal(&crate::secrets::new_key(), b"pw").unwrap();
        assert!(matches!(apply(&mut state, &create(&other)), Response::Rejected(Rejection::Invalid(_))));
        assert_eq!(apply(&mut state, &create(&sealed)), Response::Done);
        // The same value again (sealed anew: another nonce) is no change; another value is refused.
        let again =
            crate::secrets::seal(&state.trust.as_ref().and_then(|t| t.secrets_key.clone()).unwrap(), b"pw").unwrap();
        assert_ne!(again, sealed);
        let before = state.clone();
        assert_eq!(apply(&mut state, &create(&again)), Response::Reconciled { applied: 0 });
        assert_eq!(state, before);
        let changed =
            crate::secrets::seal(&state.trust.as_ref().and_then(|t| t.secrets_key.clone()).unwrap(), b"pw2").unwrap();
        assert!(matches!(apply(&mut state, &create(&changed)), Response::Rejected(Rejection::FileExists { .. })));
    }

    #[test]
    fn a_rotation_trusts_both_roots_until_every_node_holds_the_new_ones_then_only_it() {
        use crate::state::{apply, Command, Response, State};
        let (founding, _, admin) = found(Duration::from_secs(3600)).unwrap();
        let mut state = State::default();
        let cmd = Command::InitTrust { trust: Box::new(founding.trust.clone()), admin: founding.admin.clone() };
        assert_eq!(apply(&mut state, &cmd), Response::Done);
        let old = state.trust.clone().unwrap();
        let old_token = JoinToken { digest: old.ca.digest(), secret: old.worker_secret.clone() }.to_string();
        let old_admin = admin.identity().unwrap().fingerprint;

        let request = Request::new().unwrap();
        let (rotation, chain, roots) = rotation(&old, ADMIN, &request.csr).unwrap();
        let new_root = rotation.ca.clone();
        // Decided on a stale view of the root: refused, nothing changes.
        let stale = Rotation { after: "00".repeat(32), ..rotation.clone() };
        assert!(matches!(apply(&mut state, &Command::RotateCa(Box::new(stale))), Response::Rejected(_)));
        assert_eq!(state.trust.as_ref(), Some(&old));
        assert_eq!(apply(&mut state, &Command::RotateCa(Box::new(rotation.clone()))), Response::Done);
        let t = state.trust.clone().unwrap();
        assert!(t.rotating());
        assert_eq!(t.roots_pem(), roots);
        assert_eq!(t.ca.digest(), new_root.digest());
        // The admin's new certificate: new root, bridged to the old; the old one still works.
        let mine = request.complete(chain, roots).unwrap().identity().unwrap();
        assert_eq!((mine.name.as_str(), mine.issuer.as_str()), (ADMIN, new_root.name().as_str()));
        assert!(state.user(ADMIN, &mine.fingerprint).is_some() && state.user(ADMIN, &old_admin).is_some());
        // One rotation at a time.
        let again = crate::trust::rotation(&t, ADMIN, &Request::new().unwrap().csr).unwrap().0;
        assert!(matches!(apply(&mut state, &Command::RotateCa(Box::new(again))), Response::Rejected(_)));

        // Everything issued now carries the cross-signed root; a node's
        // renewal keeps its name and role; a removed worker gets nothing.
        let csr = Request::new().unwrap().csr;
        let renewed = renew(Some(&t), "n1", Role::Worker, true, &csr).unwrap();
        assert_eq!((renewed.node_id.as_str(), renewed.role.as_str()), ("n1", "worker"));
        assert_eq!(berth_proto::pki::certificates(&renewed.chain).unwrap().len(), 3);
        assert!(
            matches!(renew(Some(&t), "n1", Role::Worker, false, &csr), Err(OpError::Refused(m)) if m.contains("removed"))
        );
        assert!(matches!(renew(Some(&t), ADMIN, Role::User, true, &csr), Err(OpError::Refused(_))));
        // The old token names the old root: refused, saying so.
        assert!(
            matches!(admit(Some(&t), &old_token, &csr, "worker"), Err(OpError::Refused(m)) if m.contains("rotated"))
        );

        // It waits for every node and server until each holds the new root,
        // and for the admin to confirm it holds its new certificate.
        for id in ["n1", "n2"] {
            let node = berth_proto::model::Node {
                id: id.into(),
                name: id.into(),
                address: "198.18.0.1:7500".into(),
                labels: Default::default(),
                capacity: Default::default(),
                status: berth_proto::model::NodeStatus::Down,
                availability: Default::default(),
                subnet: None,
                overlay: None,
                reads: 0,
            };
            state.nodes.insert(id.into(), node);
        }
        let pending = |s: &State| s.rotation_pending(&[1, 2]);
        assert_eq!(pending(&state), ["server/1", "server/2", "node/n1", "node/n2", "user/admin"]);
        let holds = |holder: &str, root: String| Command::Holds { holder: holder.into(), root };
        apply(&mut state, &holds("node/n1", new_root.name()));
        apply(&mut state, &holds("node/n2", old.ca.name()));
        apply(&mut state, &holds("server/1", new_root.name()));
        apply(&mut state, &holds("server/2", new_root.name()));
        assert_eq!(pending(&state), ["node/n2", "user/admin"]);
        apply(&mut state, &holds("node/n2", new_root.name()));
        // Confirming with anything but the renewed certificate is refused.
        let confirm = |fp: &str| Command::ConfirmUser { name: ADMIN.into(), fingerprint: fp.into() };
        assert!(matches!(apply(&mut state, &confirm(&"0".repeat(64))), Response::Rejected(_)));
        assert_eq!(pending(&state), ["user/admin"]);
        // A lost answer: asking again during the rotation gives another one.
        let again = Request::new().unwrap();
        let (_, fingerprint) = sign_user(&t, ADMIN, &again.csr).unwrap();
        let renew_admin = Command::RenewUser { name: ADMIN.into(), fingerprint: fingerprint.clone() };
        assert_eq!(apply(&mut state, &renew_admin), Response::Done);
        assert!(state.user(ADMIN, &mine.fingerprint).is_none() && state.user(ADMIN, &fingerprint).is_some());
        assert!(state.user(ADMIN, &old_admin).is_some(), "the old one works until the new one is confirmed");
        assert_eq!(apply(&mut state, &confirm(&fingerprint)), Response::Done);
        assert!(state.user(ADMIN, &old_admin).is_none());
        assert!(pending(&state).is_empty());

        // Finished for the root that signs (not another): only it is trusted.
        let wrong = Command::FinishRotation { root: old.ca.digest() };
        assert!(matches!(apply(&mut state, &wrong), Response::Rejected(_)));
        assert_eq!(apply(&mut state, &Command::FinishRotation { root: new_root.digest() }), Response::Done);
        let t = state.trust.clone().unwrap();
        assert_eq!((t.roots.clone(), t.cross.clone()), (vec![new_root.cert.clone()], None));
        assert!(state.user(ADMIN, &fingerprint).is_some() && state.user(ADMIN, &old_admin).is_none());
        assert!(pending(&state).is_empty(), "nothing is pending outside a rotation");
        assert_eq!(
            berth_proto::pki::certificates(&renew(Some(&t), "n1", Role::Worker, true, &csr).unwrap().chain)
                .unwrap()
                .len(),
            2
        );
    }
}
