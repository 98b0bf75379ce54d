//! gRPC services: thin translations between protobuf and `Node`.
//!
//! Handlers convert requests into domain types (rejecting bad input with
//! INVALID_ARGUMENT naming the field), hand them to `Node`, and map the
//! outcome to a reply or a status whose message says what to do next.

mod access;
mod agent;
mod auth;
mod backup;
mod cluster;
mod files;
mod levels;
mod pin;
mod raft;
mod streams;
mod volumes;
mod watch;

pub use agent::AgentApi;
pub use cluster::ClusterApi;
pub use levels::Levels;
pub use raft::RaftApi;
use tonic::Status;
pub use watch::Watches;

use crate::node::OpError;
use crate::state::Rejection;

impl From<OpError> for Status {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Unavailable(m) => Status::unavailable(m),
            OpError::NotFound(m) => Status::not_found(m),
            OpError::FailedPrecondition(m) => Status::failed_precondition(m),
            OpError::Internal(m) => Status::internal(m),
            OpError::Refused(m) => Status::permission_denied(m),
            OpError::Invalid(m) => Status::invalid_argument(m),
        }
    }
}

impl From<Rejection> for Status {
    fn from(r: Rejection) -> Self {
        match &r {
            Rejection::NotFound(name) => {
                Status::not_found(format!("{r}; `berthctl service ls` lists the services (create it with `berthctl service create {name} --image IMAGE`)"))
            }
            Rejection::AlreadyExists(name) => Status::already_exists(format!(
                "{r}; change it with `berthctl apply -f SPEC` or remove it with `berthctl service rm {name}`"
            )),
            Rejection::Invalid(field) => Status::invalid_argument(format!("invalid service spec: {field}")),
            Rejection::NodeNotFound(_) => {
                Status::not_found(format!("{r}; `berthctl node ls` lists the nodes"))
            }
            Rejection::NodeInUse { .. } | Rejection::NetworkSet(..) | Rejection::PortTaken { .. }
            | Rejection::PortReserved { .. } => Status::failed_precondition(r.to_string()),
            Rejection::NoSubnet(_) => Status::resource_exhausted(r.to_string()),
            Rejection::TrustSet(_) | Rejection::LastAdmin(_) | Rejection::RotationUnderway | Rejection::NotRenewed(_) => Status::failed_precondition(r.to_string()),
            Rejection::AutolockChanged => Status::aborted(r.to_string()),
            Rejection::NoTrust => Status::unavailable(r.to_string()),
            Rejection::UserExists(_) => Status::already_exists(r.to_string()),
            Rejection::UserNotFound(_) => Status::not_found(r.to_string()),
            Rejection::FileExists { .. } => Status::already_exists(r.to_string()),
            Rejection::FileNotFound { .. } => Status::not_found(r.to_string()),
            Rejection::FileInUse { .. } => Status::failed_precondition(r.to_string()),
        }
    }
}
