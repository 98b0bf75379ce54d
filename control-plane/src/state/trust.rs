//! The replicated half of the cluster's trust: its id, the root that
//! signs certificates (any server can sign; agents and users never see
//! the key), the join secrets, and the users with their access.
//!
//! Certificates say who their holder is and which role it has; the state
//! says what a user may do, so that changing or removing a user takes
//! effect at once on every server, whatever certificates are out there.
//!
//! A CA rotation (`RotateCa`) makes a new root the signing one and keeps
//! the old one trusted; chains carry the new root certified by the old
//! (`cross`), so nodes that have not renewed yet still verify the ones that
//! have. `holders` says which root each node's certificate is from; once
//! every node holds the signing root's, `FinishRotation` drops the others.

use std::collections::BTreeMap;

use berth_proto::pki::{Ca, Issued, PkiError, Role};
use serde::{Deserialize, Serialize};

use super::{Rejection, Response, State};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    pub cluster: String,
    /// The root that signs new certificates.
    pub ca: Ca,
    /// Every trusted root (PEM): the signing one first.
    pub roots: Vec<String>,
    /// What a joining worker's token must carry.
    pub worker_secret: String,
    /// What a joining server's token must carry.
    pub server_secret: String,
    /// How long a node's certificate is valid, in seconds.
    pub validity_secs: u64,
    /// During a rotation: the signing root's certificate signed by the
    /// root before it (PEM), appended to every chain issued meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross: Option<String>,
    /// The name of the root each node's certificate is from, by holder:
    /// `node/<id>` for agents (recorded as it is issued) and
    /// `server/<raft id>` for servers (as each reports its own).
    #[serde(default)]
    pub holders: BTreeMap<String, String>,
    /// With autolock on, the unlock key (`store::seal::UnlockKey`) that
    /// seals every server's store key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autolock: Option<String>,
    /// What seals secrets' values (hex; `crate::secrets`): made at the
    /// bootstrap, or for a cluster from before secrets with its first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_key: Option<String>,
}

impl Trust {
    /// The trusted roots as one PEM bundle, as nodes keep them.
    pub fn roots_pem(&self) -> String {
        self.roots.concat()
    }

    /// Whether an old root is still trusted beside the signing one.
    pub fn rotating(&self) -> bool {
        self.roots.len() > 1
    }

    /// A certificate from the signing root, its chain bridged to the old
    /// root while a rotation lasts.
    pub fn issue(&self, csr: &str, role: Role, name: &str, validity: std::time::Duration) -> Result<Issued, PkiError> {
        let mut issued = self.ca.issue(csr, &self.cluster, role, name, validity)?;
        if let Some(cross) = &self.cross {
            issued.chain.push_str(cross);
        }
        Ok(issued)
    }
}

/// What a user may do; each level includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Every read and watch.
    Read,
    /// Services, scaling, applying specs, logs.
    Operator,
    /// Nodes, the cluster's servers, users and tokens.
    Admin,
}

impl Access {
    pub const ALL: [Access; 3] = [Access::Read, Access::Operator, Access::Admin];

    pub const fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Operator => "operator",
            Access::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub access: Access,
    /// The one certificate (SHA-256, hex) this user is known by: a
    /// replaced or removed user's old certificate is worth nothing.
    pub fingerprint: String,
    /// The certificate a CA rotation issued to this user (who asked for
    /// it), accepted beside `fingerprint` until the rotation finishes and
    /// then in its place: losing the rotation's answer locks nobody out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed: Option<String>,
}

/// Which join secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JoinRole {
    Worker,
    Server,
}

impl State {
    /// What a rotation still waits for: servers (by Raft id) and nodes
    /// whose certificate is not known to be from the signing root, and
    /// users given a new one who have not confirmed they hold it. Empty
    /// when no rotation is under way.
    pub fn rotation_pending(&self, servers: &[u64]) -> Vec<String> {
        let Some(t) = self.trust.as_ref().filter(|t| t.rotating()) else { return Vec::new() };
        let signing = t.ca.name();
        let servers = servers.iter().map(|id| format!("server/{id}"));
        let nodes = self.nodes.keys().map(|id| format!("node/{id}"));
        let behind = servers.chain(nodes).filter(|k| t.holders.get(k) != Some(&signing));
        let users = self.users.values().filter(|u| u.renewed.is_some()).map(|u| format!("user/{}", u.name));
        behind.chain(users).collect()
    }

    /// The user a certificate belongs to, if it is that user's current one.
    pub fn user(&self, name: &str, fingerprint: &str) -> Option<&User> {
        self.users.get(name).filter(|u| u.fingerprint == fingerprint || u.renewed.as_deref() == Some(fingerprint))
    }
}

pub(super) fn init(state: &mut State, trust: &Trust, admin: &User) -> Response {
    match &state.trust {
        Some(t) if t.cluster != trust.cluster => Response::Rejected(Rejection::TrustSet(t.cluster.clone())),
        Some(_) => Response::Done,
        None => {
            state.trust = Some(trust.clone());
            state.users.insert(admin.name.clone(), admin.clone());
            Response::Done
        }
    }
}

/// Autolock on with `key`, or off, if it is still `previous`.
pub(super) fn set_autolock(state: &mut State, key: &Option<String>, previous: &Option<String>) -> Response {
    match state.trust.as_mut() {
        Some(trust) if trust.autolock != *previous => Response::Rejected(Rejection::AutolockChanged),
        Some(trust) => {
            trust.autolock.clone_from(key);
            Response::Done
        }
        None => Response::Rejected(Rejection::NoTrust),
    }
}

pub(super) fn rotate_token(state: &mut State, role: JoinRole, secret: &str) -> Response {
    match &mut state.trust {
        None => Response::Rejected(Rejection::NoTrust),
        Some(t) => {
            match role {
                JoinRole::Worker => t.worker_secret = secret.to_owned(),
                JoinRole::Server => t.server_secret = secret.to_owned(),
            }
            Response::Done
        }
    }
}

pub(super) fn add_user(users: &mut BTreeMap<String, User>, user: &User) -> Response {
    if users.contains_key(&user.name) {
        return Response::Rejected(Rejection::UserExists(user.name.clone()));
    }
    users.insert(user.name.clone(), user.clone());
    Response::Done
}

pub(super) fn remove_user(users: &mut BTreeMap<String, User>, name: &str) -> Response {
    let admins = users.values().filter(|u| u.access == Access::Admin).count();
    match users.get(name) {
        None => Response::Rejected(Rejection::UserNotFound(name.to_owned())),
        Some(u) if u.access == Access::Admin && admins == 1 => {
            Response::Rejected(Rejection::LastAdmin(name.to_owned()))
        }
        Some(_) => {
            users.remove(name);
            Response::Done
        }
    }
}

/// A new signing root; the one it replaces (whose digest is `after`)
/// stays trusted, and `user` (who asked) is known by its new certificate.
pub(super) fn rotate_ca(state: &mut State, rotation: &Rotation) -> Response {
    let Some(t) = &mut state.trust else { return Response::Rejected(Rejection::NoTrust) };
    if t.rotating() || t.ca.digest() != rotation.after {
        return Response::Rejected(Rejection::RotationUnderway);
    }
    let Some(user) = state.users.get_mut(&rotation.user) else {
        return Response::Rejected(Rejection::UserNotFound(rotation.user.clone()));
    };
    user.renewed = Some(rotation.fingerprint.clone());
    t.roots.insert(0, rotation.ca.cert.clone());
    t.ca = rotation.ca.clone();
    t.cross = Some(rotation.cross.clone());
    Response::Done
}

/// Every node holds the signing root's certificate: trust only it.
pub(super) fn finish_rotation(state: &mut State, root: &str) -> Response {
    let Some(t) = &mut state.trust else { return Response::Rejected(Rejection::NoTrust) };
    if t.ca.digest() != root {
        return Response::Rejected(Rejection::RotationUnderway);
    }
    t.roots = vec![t.ca.cert.clone()];
    t.cross = None;
    for user in state.users.values_mut() {
        if let Some(renewed) = user.renewed.take() {
            user.fingerprint = renewed;
        }
    }
    Response::Done
}

/// `name` has been given a certificate of the signing root, `fingerprint`:
/// accepted beside its current one until it confirms it holds it.
pub(super) fn renew_user(state: &mut State, name: &str, fingerprint: &str) -> Response {
    match state.users.get_mut(name) {
        None => Response::Rejected(Rejection::UserNotFound(name.to_owned())),
        Some(u) => {
            u.renewed = Some(fingerprint.to_owned());
            Response::Done
        }
    }
}

/// `name` called with its renewed certificate: from now on it is the only one.
pub(super) fn confirm_user(state: &mut State, name: &str, fingerprint: &str) -> Response {
    match state.users.get_mut(name) {
        None => Response::Rejected(Rejection::UserNotFound(name.to_owned())),
        Some(u) if u.renewed.as_deref() == Some(fingerprint) => {
            u.fingerprint = fingerprint.to_owned();
            u.renewed = None;
            Response::Done
        }
        Some(u) if u.fingerprint == fingerprint && u.renewed.is_none() => Response::Done,
        Some(_) => Response::Rejected(Rejection::NotRenewed(name.to_owned())),
    }
}

pub(super) fn holds(state: &mut State, holder: &str, root: &str) -> Response {
    let Some(t) = &mut state.trust else { return Response::Rejected(Rejection::NoTrust) };
    t.holders.insert(holder.to_owned(), root.to_owned());
    Response::Done
}

/// What `Command::RotateCa` carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The new signing root.
    pub ca: Ca,
    /// Its certificate signed by the root it replaces.
    pub cross: String,
    /// SHA-256 of the root it replaces: a rotation decided on a stale view is refused.
    pub after: String,
    /// The admin who rotates, and the fingerprint of their new certificate.
    pub user: String,
    pub fingerprint: String,
}

/// The first key wins: a second (from a create racing the first) is a no-op.
pub fn set_secrets_key(state: &mut State, key: &str) -> Response {
    let Some(trust) = state.trust.as_mut() else {
        return Response::Rejected(Rejection::NoTrust);
    };
    if trust.secrets_key.is_none() && crate::secrets::seal(key, b"").is_some() {
        trust.secrets_key = Some(key.to_owned());
    }
    Response::Done
}
