//! Durable storage for Raft: one sled database per server holding the log,
//! the vote and the state machine.
//!
//! ```text
//!   data-dir/raft.sled
//!     tree "log"   index (u64 BE) -> Entry (JSON)        LogStore
//!     tree "meta"  vote, committed, last purged           LogStore
//!     tree "snap"  the last snapshot (meta + data)        StateMachineStore
//!     meta "format"  the store's format (see [`format`])
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
mod sm;

use std::io::{self, Cursor};
use std::path::Path;

use format::Formats;
use openraft::{BasicNode, StorageError, StorageIOError};
use sled::Transactional;

pub use log::LogStore;
pub use sm::{Applied, StateMachineStore};

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

/// Opens (or creates) the store under `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), io::Error> {
    let db = sled::Config::new()
        .path(dir.join("raft.sled"))
        .flush_every_ms(Some(500))
        .open()
        .map_err(|e| io::Error::other(format!("cannot open {}: {e}", dir.join("raft.sled").display())))?;
    upgrade(&db, format::THIS).map_err(io::Error::other)?;
    let log = LogStore::open(db.clone()).map_err(io::Error::other)?;
    let sm = StateMachineStore::open(db).map_err(io::Error::other)?;
    Ok((log, sm))
}

/// Brings the store to `formats.current`: every log entry and the stored
/// snapshot rewritten and the new format recorded in one transaction, so
/// a crash leaves the old store or the new one. A store of a newer format
/// is refused and left as it is.
pub fn upgrade(db: &sled::Db, formats: Formats) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (log, snap, meta) = (db.open_tree("log")?, db.open_tree("snap")?, db.open_tree("meta")?);
    let recorded = meta.get(format::KEY)?;
    let found = match &recorded {
        Some(v) => serde_json::from_slice::<u32>(v)?,
        None if log.is_empty() && snap.is_empty() && meta.is_empty() => formats.current,
        None => format::UNMARKED,
    };
    let path = formats.path("the store", found)?;
    let mut entries = Vec::new();
    let mut data = None;
    if !path.is_empty() {
        for kv in log.iter() {
            let (key, value) = kv?;
            let what = format!("log entry {}", u64::from_be_bytes(key.as_ref().try_into().unwrap_or_default()));
            let entry = formats.migrate(&what, found, serde_json::from_slice(&value)?, |m| m.entry)?;
            entries.push((key, serde_json::to_vec(&entry)?));
        }
        if let Some(value) = snap.get(sm::SNAP_DATA)? {
            let mut migrated = formats.migrate_snapshot(serde_json::from_slice(&value)?)?;
            migrated["format"] = formats.current.into();
            data = Some(serde_json::to_vec(&migrated)?);
        }
    } else if recorded.is_some() {
        return Ok(());
    }
    let marker = serde_json::to_vec(&formats.current)?;
    (&log, &snap, &meta)
        .transaction(|(log, snap, meta)| {
            for (key, value) in &entries {
                log.insert(key, value.as_slice())?;
            }
            if let Some(data) = &data {
                snap.insert(sm::SNAP_DATA, data.as_slice())?;
            }
            meta.insert(format::KEY, marker.as_slice())?;
            Ok(())
        })
        .map_err(|e: sled::transaction::TransactionError<()>| format!("recording the store's format: {e:?}"))?;
    db.flush()?;
    if found != formats.current {
        tracing::info!(from = found, to = formats.current, entries = entries.len(), "store migrated");
    }
    Ok(())
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
