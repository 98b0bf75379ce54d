//! The state machine: the pure `apply` on an in-memory `State`, made
//! durable by snapshots in sled and by the Raft log.
//!
//! Applying writes nothing to disk. On start the state is the last snapshot
//! (if any), and openraft re-applies the committed log after it; the log is
//! only purged below a snapshot, so nothing applied can be lost. Writing
//! every applied command through to sled as well cost about 30% of write
//! throughput (bench/raft.sh) and bought nothing the log does not already
//! guarantee.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership};
use serde::{Deserialize, Serialize};

use super::{flush, read_err, write_err, Entry, LogId, Membership, NodeId, SnapshotMeta, TypeConfig};
use crate::state::{apply, Proposal, Response, State};

const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";

/// The applied state as readers see it: shared with the API behind a lock.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: Membership,
    pub state: State,
}

#[derive(Debug, Clone)]
pub struct StateMachineStore {
    db: sled::Db,
    snap: sled::Tree,
    applied: Arc<RwLock<Applied>>,
}

fn lock_err() -> StorageError<NodeId> {
    write_err(std::io::Error::other("state machine lock poisoned"))
}

impl StateMachineStore {
    /// Opens the store with the state of the last snapshot.
    pub(super) fn open(db: sled::Db) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let snap = db.open_tree("snap")?;
        let mut store = Self { db, snap, applied: Arc::default() };
        if let Some(s) = store.stored_snapshot()? {
            let applied = decode_snapshot(&s.meta, s.snapshot.get_ref())?;
            store.applied = Arc::new(RwLock::new(applied));
        }
        Ok(store)
    }

    /// A handle for readers: API handlers read the applied state through it.
    pub fn applied(&self) -> Arc<RwLock<Applied>> {
        self.applied.clone()
    }

    fn stored_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let (Some(meta), Some(data)) =
            (self.snap.get(SNAP_META).map_err(read_err)?, self.snap.get(SNAP_DATA).map_err(read_err)?)
        else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(&meta).map_err(read_err)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data.to_vec())) }))
    }

    async fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError<NodeId>> {
        let mut batch = sled::Batch::default();
        batch.insert(SNAP_META, serde_json::to_vec(meta).map_err(write_err)?);
        batch.insert(SNAP_DATA, data);
        self.snap.apply_batch(batch).map_err(write_err)?;
        // Durable before openraft may purge the log it replaces.
        flush(&self.db).await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(())
    }
}

/// The applied state a snapshot holds; its position and membership come from the meta.
fn decode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Applied, StorageError<NodeId>> {
    let mut applied: Applied =
        serde_json::from_slice(data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
    applied.last_applied = meta.last_log_id;
    applied.membership = meta.last_membership.clone();
    Ok(applied)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (data, last_log_id, last_membership) = {
            let a = self.applied.read().map_err(|_| lock_err())?;
            (serde_json::to_vec(&*a).map_err(read_err)?, a.last_applied, a.membership.clone())
        };
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        self.save_snapshot(&meta, &data).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError<NodeId>> {
        let a = self.applied.read().map_err(|_| lock_err())?;
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut a = self.applied.write().map_err(|_| lock_err())?;
        let mut replies = Vec::new();
        for entry in entries {
            a.last_applied = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
                EntryPayload::Normal(Proposal(commands)) => commands.iter().map(|c| apply(&mut a.state, c)).collect(),
            });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let incoming = decode_snapshot(meta, &data)?;
        self.save_snapshot(meta, &data).await?;
        *self.applied.write().map_err(|_| lock_err())? = incoming;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.stored_snapshot()
    }
}
