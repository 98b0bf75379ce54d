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
pub mod metrics;
pub mod model;
pub mod pki;
pub mod quota;
pub mod registries;
pub mod renew;
pub mod systemd;
pub mod tls;

/// For `Message::encoded_len` (what a message weighs on the wire) where `pb` is used.
pub use prost;

/// Generated protobuf and gRPC code.
#[allow(missing_debug_implementations, clippy::all, clippy::unwrap_used)]
pub mod pb {
    /// Laid out as the proto packages are, so that one package's messages
    /// can name another's (the agent protocol carries the cluster's
    /// `Overrides`).
    pub mod berth {
        pub mod cluster {
            pub mod v1 {
                tonic::include_proto!("berth.cluster.v1");
            }
        }
        pub mod raft {
            pub mod v1 {
                tonic::include_proto!("berth.raft.v1");
            }
        }
        pub mod agent {
            pub mod v1 {
                tonic::include_proto!("berth.agent.v1");
            }
        }
    }
    pub use berth::agent::v1 as agent;
    pub use berth::cluster::v1 as cluster;
    pub use berth::raft::v1 as raft;
}
