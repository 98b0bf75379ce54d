//! The state machine in sled: the pure `apply` on an in-memory `State`,
//! with every change written through to the "sm" tree in one atomic batch.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership};
use serde::{Deserialize, Serialize};

use super::{flush, read_err, write_err, Entry, LogId, Membership, NodeId, TypeConfig};
use crate::state::{apply, Key, Proposal, Response, State};

const APPLIED: &[u8] = b"meta/applied";
const MEMBERSHIP: &[u8] = b"meta/membership";
const SERVICE_PREFIX: &str = "svc/";
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
    sm: sled::Tree,
    snap: sled::Tree,
    applied: Arc<RwLock<Applied>>,
}

fn lock_err() -> StorageError<NodeId> {
    write_err(std::io::Error::other("state machine lock poisoned"))
}

impl StateMachineStore {
    pub(super) fn open(db: sled::Db) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let sm = db.open_tree("sm")?;
        let snap = db.open_tree("snap")?;
        let mut applied = Applied::default();
        for kv in sm.iter() {
            let (k, v) = kv?;
            match &*k {
                APPLIED => applied.last_applied = serde_json::from_slice(&v)?,
                MEMBERSHIP => applied.membership = serde_json::from_slice(&v)?,
                _ => {
                    if let Some(name) = k.strip_prefix(SERVICE_PREFIX.as_bytes()) {
                        applied.state.services.insert(String::from_utf8(name.to_vec())?, serde_json::from_slice(&v)?);
                    }
                }
            }
        }
        Ok(Self { db, sm, snap, applied: Arc::new(RwLock::new(applied)) })
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

    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: &[u8],
    ) -> Result<(), StorageError<NodeId>> {
        let mut batch = sled::Batch::default();
        batch.insert(SNAP_META, serde_json::to_vec(meta).map_err(write_err)?);
        batch.insert(SNAP_DATA, data);
        self.snap.apply_batch(batch).map_err(write_err)?;
        // One flush makes both the snapshot and every state-machine write before it durable.
        flush(&self.db).await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(())
    }
}

fn service_key(name: &str) -> Vec<u8> {
    format!("{SERVICE_PREFIX}{name}").into_bytes()
}

/// Adds the sled writes that make `key` in the tree equal to `key` in `state`.
fn write_key(batch: &mut sled::Batch, state: &State, key: &Key) -> Result<(), serde_json::Error> {
    match key {
        Key::Service(name) => match state.services.get(name) {
            Some(svc) => batch.insert(service_key(name), serde_json::to_vec(svc)?),
            None => batch.remove(service_key(name)),
        },
    }
    Ok(())
}

fn write_pointers(batch: &mut sled::Batch, a: &Applied) -> Result<(), serde_json::Error> {
    batch.insert(APPLIED, serde_json::to_vec(&a.last_applied)?);
    batch.insert(MEMBERSHIP, serde_json::to_vec(&a.membership)?);
    Ok(())
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
        let mut batch = sled::Batch::default();
        let mut replies = Vec::new();
        {
            let mut a = self.applied.write().map_err(|_| lock_err())?;
            for entry in entries {
                a.last_applied = Some(entry.log_id);
                let mut entry_replies = Vec::new();
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Membership(m) => a.membership = StoredMembership::new(Some(entry.log_id), m),
                    EntryPayload::Normal(Proposal(commands)) => {
                        for cmd in commands {
                            entry_replies.push(apply(&mut a.state, &cmd));
                            write_key(&mut batch, &a.state, &cmd.key()).map_err(write_err)?;
                        }
                    }
                }
                replies.push(entry_replies);
            }
            write_pointers(&mut batch, &a).map_err(write_err)?;
        }
        self.sm.apply_batch(batch).map_err(write_err)?;
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
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let mut incoming: Applied =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        incoming.last_applied = meta.last_log_id;
        incoming.membership = meta.last_membership.clone();
        // Replace the whole tree in one atomic batch: old keys out, new keys in.
        let mut batch = sled::Batch::default();
        for k in self.sm.iter().keys() {
            batch.remove(k.map_err(read_err)?);
        }
        for name in incoming.state.services.keys() {
            write_key(&mut batch, &incoming.state, &Key::Service(name.clone())).map_err(write_err)?;
        }
        write_pointers(&mut batch, &incoming).map_err(write_err)?;
        self.sm.apply_batch(batch).map_err(write_err)?;
        self.save_snapshot(meta, &data).await?;
        *self.applied.write().map_err(|_| lock_err())? = incoming;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.stored_snapshot()
    }
}
