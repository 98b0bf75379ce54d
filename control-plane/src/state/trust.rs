//! The replicated half of the cluster's trust: its id, the root that
//! signs certificates (any server can sign; agents and users never see
//! the key), the join secrets, and the users with their access.
//!
//! Certificates say who their holder is and which role it has; the state
//! says what a user may do, so that changing or removing a user takes
//! effect at once on every server, whatever certificates are out there.

use std::collections::BTreeMap;

use berth_proto::pki::Ca;
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
}

impl Trust {
    /// The trusted roots as one PEM bundle, as nodes keep them.
    pub fn roots_pem(&self) -> String {
        self.roots.concat()
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
}

/// Which join secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JoinRole {
    Worker,
    Server,
}

impl State {
    /// The user a certificate belongs to, if it is that user's current one.
    pub fn user(&self, name: &str, fingerprint: &str) -> Option<&User> {
        self.users.get(name).filter(|u| u.fingerprint == fingerprint)
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
