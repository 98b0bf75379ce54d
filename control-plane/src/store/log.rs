//! The Raft log and vote, in sled, with group-committed fsync.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::seal::Sealer;
use super::{flush, read_err, write_err, Entry, LogId, NodeId, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The log store; cloning it gives another handle on the same trees (the log reader).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// Entries are sealed; the vote and positions are not secret.
    sealer: Sealer,
    flusher: Option<mpsc::UnboundedSender<LogFlushed<TypeConfig>>>,
    /// The index of the last entry appended, shared by every handle.
    appended: Arc<watch::Sender<Option<u64>>>,
}

impl LogStore {
    pub(super) fn open(db: sled::Db, sealer: Sealer) -> Result<Self, sled::Error> {
        let (log, meta) = (db.open_tree("log")?, db.open_tree("meta")?);
        let appended = Arc::new(watch::channel(None).0);
        Ok(Self { log, meta, db, sealer, flusher: None, appended })
    }

    /// The log's last index as this process last changed it (appended,
    /// truncated, started over; not when flushed): how a quiet leader
    /// learns it is written to without waking on openraft's metrics,
    /// which it sends on every turn of its loop, ticks included.
    pub fn appended(&self) -> watch::Receiver<Option<u64>> {
        self.appended.subscribe()
    }

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<Entry, StorageError<NodeId>> {
        let plain = self.sealer.open(value, || entry_name(key)).map_err(read_err)?;
        serde_json::from_slice(&plain).map_err(read_err)
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        let Some(v) = self.meta.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(&v).map(Some).map_err(read_err)
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError<NodeId>> {
        let v = serde_json::to_vec(value).map_err(write_err)?;
        self.meta.insert(key, v).map_err(write_err)?;
        Ok(())
    }

    /// Empties the log up to and past `last` and votes for `id` in a term
    /// at least `last`'s and the stored vote's: the log of a store that
    /// starts over from a state (see `recover`), durably.
    pub(super) async fn start_over(&self, last: LogId, id: NodeId) -> Result<(), StorageError<NodeId>> {
        let voted = self.get_meta::<Vote<NodeId>>(VOTE)?.map_or(0, |v| v.leader_id.term);
        self.put_meta(LAST_PURGED, &last)?;
        self.put_meta(COMMITTED, &Some(last))?;
        self.put_meta(VOTE, &Vote::new(voted.max(last.leader_id.term), id))?;
        let mut batch = sled::Batch::default();
        for kv in self.log.iter() {
            batch.remove(kv.map_err(read_err)?.0);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.appended.send_replace(Some(last.index));
        flush(&self.db).await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    /// Writes `entries` as `append` does, and flushes: for tests, which
    /// cannot make openraft's callback.
    #[cfg(test)]
    pub(super) fn put(&self, entries: &[Entry]) {
        for e in entries {
            let json = serde_json::to_vec(e).expect("an entry encodes");
            self.log.insert(index_key(e.get_log_id().index), self.sealer.seal(&json)).expect("insert");
        }
        self.db.flush().expect("flush");
    }

    /// The flusher: waits for queued appends, fsyncs once for all of them,
    /// then reports each durable, in order.
    fn flusher(&mut self) -> &mpsc::UnboundedSender<LogFlushed<TypeConfig>> {
        self.flusher.get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<LogFlushed<TypeConfig>>();
            let db = self.db.clone();
            // A thread of its own: sled's flush blocks, and running it here
            // saves a hand-off to a pool per flush.
            let spawned = std::thread::Builder::new().name("log-flusher".into()).spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut waiting = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        waiting.push(more);
                    }
                    let result = db.flush().map(|_| ());
                    for cb in waiting {
                        cb.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| io::Error::other(e.to_string())));
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!("cannot start the log flusher thread: {e}");
            }
            tx
        })
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// A log entry by its key, for errors: `log entry N`.
pub(super) fn entry_name(key: &[u8]) -> String {
    format!("log entry {}", u64::from_be_bytes(key.try_into().unwrap_or_default()))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        use std::ops::Bound::*;
        let start = match range.start_bound() {
            Included(i) => *i,
            Excluded(i) => i.saturating_add(1),
            Unbounded => 0,
        };
        let iter = match range.end_bound() {
            Included(i) => self.log.range(index_key(start)..=index_key(*i)),
            Excluded(i) => self.log.range(index_key(start)..index_key(*i)),
            Unbounded => self.log.range(index_key(start)..),
        };
        iter.map(|kv| {
            let (key, value) = kv.map_err(read_err)?;
            self.decode_entry(&key, &value)
        })
        .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last = match self.log.last().map_err(read_err)? {
            Some((k, v)) => Some(*self.decode_entry(&k, &v)?.get_log_id()),
            None => None,
        };
        // Entries at or below the purge point may survive a crash mid-purge; they do not count.
        let last_log_id = match (last, last_purged_log_id) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (Some(l), _) => Some(l),
            (None, p) => p,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(VOTE, vote)?;
        flush(&self.db).await.map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<NodeId>> {
        // Not flushed: losing it only means re-applying later, never applying uncommitted entries.
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<NodeId>> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut last = None;
        for e in entries {
            let json = serde_json::to_vec(&e).map_err(write_err)?;
            let index = e.get_log_id().index;
            batch.insert(&index_key(index), self.sealer.seal(&json));
            last = Some(index);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        if last.is_some() {
            self.appended.send_replace(last);
        }
        if let Err(mpsc::error::SendError(cb)) = self.flusher().send(callback) {
            cb.log_io_completed(Err(io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        let mut batch = sled::Batch::default();
        for kv in self.log.range(index_key(log_id.index)..) {
            batch.remove(kv.map_err(read_err)?.0);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.appended.send_replace(log_id.index.checked_sub(1));
        flush(&self.db).await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        // Record the purge point first: a crash part way leaves extra entries, never a hole.
        self.put_meta(LAST_PURGED, &log_id)?;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=index_key(log_id.index)) {
            batch.remove(kv.map_err(read_err)?.0);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }
}
