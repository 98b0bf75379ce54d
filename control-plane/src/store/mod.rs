//! Durable storage for Raft: one sled database per server holding the log,
//! the vote and the state machine.
//!
//! ```text
//!   data-dir/raft.sled
//!     tree "log"   index (u64 BE) -> Entry (JSON, sealed)  LogStore
//!     tree "meta"  vote, committed, last purged            LogStore
//!     tree "snap"  the last snapshot (meta; data sealed)   StateMachineStore
//!     meta "format", "data"  the store's layout and data format ([`format`])
//!   data-dir/store.key  the key values are sealed with ([`seal`])
//! ```
//!
//! Durability: sled writes reach disk only on `flush`. A log append is
//! reported durable to openraft only after a flush that covers it (group
//! commit: one fsync for every append queued meanwhile), and the vote is
//! flushed before `save_vote` returns. The state machine lives in memory
//! and is persisted as snapshots: building or installing one flushes before
//! openraft may purge the log below it, and at start the state is the last
//! snapshot with the committed log re-applied after it.

pub mod format;
mod log;
pub mod recover;
pub mod seal;
mod sm;
pub mod upgrade;

use std::io::{self, Cursor};
use std::path::Path;

use openraft::{BasicNode, StorageError, StorageIOError};

pub use log::LogStore;
pub use sm::{decode_state, encode_state, Applied, StateMachineStore};

use crate::state::{Proposal, Response};

openraft::declare_raft_types!(
    /// The Raft type configuration of berth: a proposal (a list of commands)
    /// per entry in, one response per command out.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Response>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Membership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;

/// Opens (or creates) the store under `dir`, brought to this build's
/// formats ([`upgrade`]) and sealed with the data dir's key ([`seal`]);
/// a locked key (autolock) opens with `unlock`.
pub fn open(dir: &Path, unlock: Option<&seal::UnlockKey>) -> Result<(LogStore, StateMachineStore), io::Error> {
    let (db, sealer) = upgrade::upgrade(dir, format::THIS, unlock).map_err(io::Error::other)?;
    let log = LogStore::open(db.clone(), sealer.clone()).map_err(io::Error::other)?;
    let sm = StateMachineStore::open(db, sealer).map_err(io::Error::other)?;
    Ok((log, sm))
}

pub(crate) fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read(&e).into()
}

pub(crate) fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

/// Flushes sled on its own IO thread pool (fsync must not stall the async runtime).
pub(crate) async fn flush(db: &sled::Db) -> Result<(), io::Error> {
    db.flush_async().await.map(|_| ()).map_err(io::Error::other)
}

#[cfg(test)]
mod tests;
