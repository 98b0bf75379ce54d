//! berth-server: the Raft-replicated control plane.
//!
//! ```text
//!   berthctl ──gRPC Cluster──▶ api::cluster ──▶ node::Node ──client_write──▶ openraft
//!                                                  │  (not leader: forward over gRPC Raft.Write)
//!   other servers ◀──gRPC Raft── network ◀──────────┘
//!   openraft ──▶ store::LogStore (sled, fsync) ──▶ store::StateMachineStore ──▶ state::apply
//! ```
//!
//! `state` is pure; `store` persists it; `node` owns the Raft handle and the
//! rules for forwarding, deadlines and membership; `batcher` groups the
//! leader's concurrent writes into one entry; `api` maps gRPC to `node`;
//! `reconciler` (what tasks should change) and `scheduler` (where tasks go)
//! are the pure functions the leader runs to keep tasks in line with services;
//! `events` diffs applied states for `berthctl events`.

pub mod api;
pub mod autolock;
pub mod backup;
pub mod batcher;
pub mod beats;
pub mod config;
pub mod elect;
pub mod events;
pub mod leader;
pub mod liveness;
pub mod network;
pub mod node;
pub mod pace;
pub mod publish;
pub mod quiet;
pub mod reconciler;
pub mod recovery;
pub mod rotation;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod state;
pub mod stats;
pub mod store;
#[cfg(test)]
mod testing;
pub mod trust;
