//! berth's API crate: the protobuf/gRPC wire types, the domain model every
//! other crate works on, and the conversions between the two.
//!
//! ```text
//!   berthctl ──pb──▶ berth-server ──TryFrom<pb>──▶ model ──▶ Raft state machine
//! ```
//!
//! Protobuf types (`pb`) stay at the edges: handlers convert them with
//! `TryFrom`, whose errors name the offending field, and everything behind
//! the handlers sees only `model` types.

pub mod client;
pub mod contexts;
pub mod convert;
pub mod join;
pub mod model;
pub mod pki;
pub mod quota;
pub mod renew;
pub mod tls;

/// Generated protobuf and gRPC code.
#[allow(missing_debug_implementations, clippy::all, clippy::unwrap_used)]
pub mod pb {
    pub mod cluster {
        tonic::include_proto!("berth.cluster.v1");
    }
    pub mod raft {
        tonic::include_proto!("berth.raft.v1");
    }
    pub mod agent {
        tonic::include_proto!("berth.agent.v1");
    }
}
