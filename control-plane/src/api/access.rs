//! The Cluster calls that manage who may reach the cluster: join tokens,
//! users and the cluster's root. Every one but `ca_status` needs the admin
//! role (checked by the caller).

use berth_proto::pb::cluster::*;
use berth_proto::pki::{Identity, JoinToken};
use tonic::Status;

use crate::node::Node;
use crate::state::{Access, Command, JoinRole, Query, QueryReply, Response as Applied, Trust, User as Record};

async fn trust(node: &Node) -> Result<Trust, Status> {
    match node.read(Query::Trust, false).await? {
        QueryReply::Trust(Some(t)) => Ok(t),
        QueryReply::Trust(None) => Err(crate::state::Rejection::NoTrust.into()),
        other => Err(Status::internal(format!("unexpected query reply {other:?}"))),
    }
}

fn done(r: Applied) -> Result<(), Status> {
    match r {
        Applied::Done => Ok(()),
        Applied::Rejected(r) => Err(r.into()),
        other => Err(Status::internal(format!("unexpected state machine reply {other:?}"))),
    }
}

/// The addresses of the cluster's servers, for the join command to print.
fn servers(node: &Node) -> Vec<String> {
    node.metrics().membership_config.membership().nodes().map(|(_, n)| n.addr.clone()).collect()
}

pub async fn join_token(node: &Node, req: JoinTokenRequest) -> Result<JoinTokenReply, Status> {
    let role = match req.role.as_str() {
        "worker" => JoinRole::Worker,
        "server" => JoinRole::Server,
        other => {
            return Err(Status::invalid_argument(format!("role: {other:?} is not valid: expected worker or server")))
        }
    };
    if req.rotate {
        let secret = JoinToken::new("").secret;
        done(node.write(Command::RotateToken { role, secret }).await?)?;
    }
    let trust = trust(node).await?;
    let secret = match role {
        JoinRole::Worker => trust.worker_secret,
        JoinRole::Server => trust.server_secret,
    };
    let token = JoinToken { digest: trust.ca.digest(), secret };
    Ok(JoinTokenReply { token: token.to_string(), servers: servers(node) })
}

pub async fn add_user(node: &Node, req: AddUserRequest) -> Result<AddUserReply, Status> {
    berth_proto::model::validate_name(&req.name).map_err(|e| Status::invalid_argument(format!("user {e}")))?;
    let access = Access::parse(&req.access).ok_or_else(|| {
        Status::invalid_argument(format!("access: {:?} is not valid: expected read, operator or admin", req.access))
    })?;
    let trust = trust(node).await?;
    let (chain, fingerprint) = crate::trust::sign_user(&trust, &req.name, &req.csr)?;
    done(node.write(Command::AddUser(Record { name: req.name, access, fingerprint, renewed: None })).await?)?;
    Ok(AddUserReply { certificate_chain: chain, roots: trust.roots_pem(), servers: servers(node) })
}

pub async fn list_users(node: &Node) -> Result<ListUsersReply, Status> {
    match node.read(Query::ListUsers, false).await? {
        QueryReply::Users(users) => Ok(ListUsersReply {
            users: users
                .into_iter()
                .map(|u| User { name: u.name, access: u.access.to_string(), fingerprint: u.fingerprint })
                .collect(),
        }),
        other => Err(Status::internal(format!("unexpected query reply {other:?}"))),
    }
}

pub async fn remove_user(node: &Node, req: RemoveUserRequest) -> Result<RemoveUserReply, Status> {
    done(node.write(Command::RemoveUser { name: req.name }).await?)?;
    Ok(RemoveUserReply {})
}

/// Starts a CA rotation, the caller getting a certificate of the new root;
/// during one, gives an admin such a certificate; with `confirm`, records
/// that the caller holds it (it called with it).
pub async fn rotate_ca(node: &Node, caller: &Identity, req: RotateCaRequest) -> Result<RotateCaReply, Status> {
    let trust = trust(node).await?;
    let name = caller.name.clone();
    if req.confirm {
        let fingerprint = caller.fingerprint.clone();
        done(node.write(Command::ConfirmUser { name, fingerprint }).await?)?;
        return Ok(RotateCaReply {
            root: trust.ca.digest(),
            certificate_chain: String::new(),
            roots: trust.roots_pem(),
        });
    }
    if trust.rotating() {
        let (chain, fingerprint) = crate::trust::sign_user(&trust, &name, &req.csr)?;
        done(node.write(Command::RenewUser { name, fingerprint }).await?)?;
        return Ok(RotateCaReply { root: trust.ca.digest(), certificate_chain: chain, roots: trust.roots_pem() });
    }
    let (rotation, chain, roots) = crate::trust::rotation(&trust, &name, &req.csr)?;
    let root = rotation.ca.digest();
    done(node.write(Command::RotateCa(Box::new(rotation))).await?)?;
    Ok(RotateCaReply { root, certificate_chain: chain, roots })
}

pub async fn ca_status(node: &Node) -> Result<CaStatusReply, Status> {
    let servers = node.server_ids();
    match node.read(Query::CaStatus { servers }, false).await? {
        QueryReply::CaStatus { root, trusted, pending, roots } => Ok(CaStatusReply { root, trusted, pending, roots }),
        other => Err(Status::internal(format!("unexpected query reply {other:?}"))),
    }
}

/// Autolock on or off, a new unlock key, or the current one.
pub async fn autolock(node: &Node, req: AutolockRequest) -> Result<AutolockReply, Status> {
    use crate::store::seal::UnlockKey;
    let current = trust(node).await?.autolock;
    let key = match (req.enable, req.rotate, &current) {
        (Some(false), true, _) => {
            return Err(Status::invalid_argument("rotate: a new unlock key needs autolock on, not off"))
        }
        (Some(false), false, _) => None,
        (_, true, None) => {
            return Err(Status::failed_precondition("autolock is off: turn it on (it makes an unlock key) first"))
        }
        (_, true, Some(_)) | (Some(true), false, None) => Some(UnlockKey::generate().to_string()),
        (_, false, current) => current.clone(),
    };
    if key != current {
        done(node.write(Command::SetAutolock { key: key.clone(), previous: current }).await?)?;
    }
    Ok(AutolockReply { unlock_key: key.unwrap_or_default() })
}
