//! Who may call what, decided on this side of every call from the
//! caller's certificate (`berth_proto::tls::Caller`, checked against our
//! roots and cluster id by the handshake) and, for users, the replicated
//! state.
//!
//! | service                 | who                                              |
//! |-------------------------|--------------------------------------------------|
//! | Raft (and forwarding)   | servers                                          |
//! | Agent                   | the worker node its certificate names, as itself |
//! | Agent.Join              | anyone with a join token (no certificate needed) |
//! | Agent.Renew             | any node, for the name and role it already has   |
//! | Cluster                 | users by access (read < operator < admin); servers |

use berth_proto::pki::{Identity, Role};
use berth_proto::tls::Caller;
use tonic::{Request, Status};

use crate::node::Node;
use crate::state::Access;

/// The caller's identity; UNAUTHENTICATED for a connection that has none
/// (only a join may come without a certificate).
pub fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    match req.extensions().get::<Caller>() {
        Some(Caller(Some(id))) => Ok(id.clone()),
        _ => Err(Status::unauthenticated(
            "this call needs a certificate of the cluster: join with a token first (`berthctl cluster join-token`)",
        )),
    }
}

/// Only another server of the cluster.
pub fn server<T>(req: &Request<T>) -> Result<(), Status> {
    let id = caller(req)?;
    match id.role {
        Role::Server => Ok(()),
        _ => Err(Status::permission_denied(format!("only servers may make this call, not {id}"))),
    }
}

/// Only the worker node `node_id`, as itself (its id comes from its
/// certificate), and not one removed from the cluster.
pub fn node<T>(cluster: &Node, req: &Request<T>, node_id: &str) -> Result<(), Status> {
    let id = caller(req)?;
    let removed = cluster.applied.read().map(|a| a.state.removed_nodes.contains(&id.name)).unwrap_or(false);
    if removed {
        return Err(Status::permission_denied(format!(
            "node {} was removed from the cluster (`berthctl node rm`), and its certificate with it: to bring \
             this host back, delete its DATA_DIR/tls and join again with a worker token",
            id.name
        )));
    }
    if id.role != Role::Worker {
        return Err(Status::permission_denied(format!("only worker nodes may make this call, not {id}")));
    }
    if id.name != node_id {
        return Err(Status::permission_denied(format!(
            "node {} may act only as itself, not as node {node_id:?}",
            id.name
        )));
    }
    Ok(())
}

/// A user with at least `need`, or a server passing a request on.
pub fn user<T>(node: &Node, req: &Request<T>, need: Access, what: &str) -> Result<(), Status> {
    let id = caller(req)?;
    match id.role {
        Role::Server => Ok(()),
        Role::Worker => Err(Status::permission_denied(format!(
            "{what} needs the {need} role; a worker node's certificate ({}) is not a user's",
            id.name
        ))),
        Role::User => {
            let applied = node.applied.read().map_err(|_| Status::internal("state lock poisoned"))?;
            if applied.state.trust.is_none() {
                return Err(Status::unavailable(
                    "this server has not yet applied the cluster's identity and users; try again",
                ));
            }
            let Some(user) = applied.state.user(&id.name, &id.fingerprint) else {
                return Err(Status::permission_denied(format!(
                    "user {:?} is not a user of this cluster (removed, or replaced by a newer credential)",
                    id.name
                )));
            };
            if user.access < need {
                return Err(Status::permission_denied(format!(
                    "{what} needs the {need} role; user {:?} has {}",
                    user.name, user.access
                )));
            }
            Ok(())
        }
    }
}
