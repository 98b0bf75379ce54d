//! The replicated state and the one way to change it.
//!
//! ```text
//!   Command ──apply(&mut State, &Command)──▶ Response     (every server, same order)
//!   Query   ──query(&State, &Query)────────▶ QueryReply   (leader, after a read barrier)
//! ```
//!
//! The Raft log carries `Proposal`s, each a list of commands applied one by
//! one. Both are pure functions over plain data: no IO, no clock, no randomness,
//! so every server that applies the same log reaches the same state. Storage
//! (`crate::store`) wraps them; API handlers only validate and submit.

mod apply;
mod query;

use std::collections::BTreeMap;

use berth_proto::model::{InvalidField, Service, ServiceSpec};
use serde::{Deserialize, Serialize};

pub use apply::apply;
pub use query::{query, Query, QueryReply};

/// Everything the cluster agrees on. Services for now; nodes, tasks and IPAM join later.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub services: BTreeMap<String, Service>,
}

/// Every mutation of cluster state is one of these, carried by one Raft log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Precondition: no service of that name exists.
    CreateService(ServiceSpec),
    /// Precondition: the service exists. A spec equal to the stored one changes nothing.
    UpdateService(ServiceSpec),
    /// Create or update, whichever applies: idempotent.
    ApplyService(ServiceSpec),
    /// Precondition: the service exists.
    DeleteService { name: String },
}

/// What one Raft log entry carries: the commands of concurrent clients,
/// grouped by the leader so that one entry, one replication round and one
/// fsync serve them all. Each is applied on its own, in order, with its own
/// response, exactly as if it had its own entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal(pub Vec<Command>);

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Service { service: Service, outcome: Outcome },
    Deleted,
    Rejected(Rejection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("service {0:?} not found")]
    NotFound(String),
    #[error("service {0:?} already exists")]
    AlreadyExists(String),
    #[error("invalid spec: {0}")]
    Invalid(InvalidField),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        })
    }
}
