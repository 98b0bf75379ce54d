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
use tokio::sync::watch;

use super::seal::Sealer;
use super::{flush, format, read_err, write_err, Entry, LogId, Membership, NodeId, SnapshotMeta, TypeConfig};
use crate::state::{apply, merged, touches, Proposal, Response, State, Touch, Touches};
use crate::stats::Stats;

const SNAP_META: &[u8] = b"meta";
pub(super) const SNAP_DATA: &[u8] = b"data";

/// The applied state as readers see it: shared with the API behind a lock.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: Membership,
    pub state: State,
    /// What the last entries' commands touched (see `state::touch`).
    #[serde(skip)]
    pub touches: Touches,
}

#[derive(Debug, Clone)]
pub struct StateMachineStore {
    db: sled::Db,
    snap: sled::Tree,
    /// Snapshot data is sealed on disk, and in the clear everywhere else.
    sealer: Sealer,
    applied: Arc<RwLock<Applied>>,
    /// The last applied entry's id, sent each time the applied state moves
    /// (see `applied_index`).
    moved: Arc<watch::Sender<Option<LogId>>>,
    stats: Stats,
}

fn lock_err() -> StorageError<NodeId> {
    write_err(std::io::Error::other("state machine lock poisoned"))
}

/// The write lock, taken without queueing for a while. A writer that
/// waits in the lock's queue holds back every reader that comes after it,
/// and while a long reader (a reconcile pass: 50-300 ms at 100,000 tasks)
/// held the lock, heartbeats and API calls piled up behind the waiting
/// apply on the runtime's workers, which then answered nothing. Readers
/// on the runtime take the lock for microseconds, so a try a few hundred
/// microseconds apart finds it free soon after the long reader ends;
/// after `PATIENCE` the apply queues as before, so it is never starved.
fn write_politely(applied: &RwLock<Applied>) -> Result<std::sync::RwLockWriteGuard<'_, Applied>, StorageError<NodeId>> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);
    let started = std::time::Instant::now();
    while started.elapsed() < PATIENCE {
        match applied.try_write() {
            Ok(guard) => return Ok(guard),
            Err(std::sync::TryLockError::Poisoned(_)) => return Err(lock_err()),
            Err(std::sync::TryLockError::WouldBlock) => std::thread::sleep(std::time::Duration::from_micros(200)),
        }
    }
    applied.write().map_err(|_| lock_err())
}

/// Applies committed entries in order, noting what each touched.
pub(super) fn apply_entries(
    applied: &RwLock<Applied>,
    stats: &Stats,
    entries: Vec<Entry>,
) -> Result<Vec<Vec<Response>>, StorageError<NodeId>> {
    let mut a = write_politely(applied)?;
    let started = std::time::Instant::now();
    let mut replies = Vec::with_capacity(entries.len());
    for entry in entries {
        let before = a.last_applied.map_or(0, |l| l.index);
        a.last_applied = Some(entry.log_id);
        let (reply, touch) = match entry.payload {
            EntryPayload::Blank => (Vec::new(), Touch::Tasks(Vec::new())),
            EntryPayload::Membership(m) => {
                a.membership = StoredMembership::new(Some(entry.log_id), m);
                (Vec::new(), Touch::Tasks(Vec::new()))
            }
            EntryPayload::Normal(Proposal(commands)) => {
                let mut touched = Vec::with_capacity(commands.len());
                let reply = commands
                    .iter()
                    .map(|c| {
                        touched.push(touches(&a.state, c));
                        apply(&mut a.state, c)
                    })
                    .collect();
                (reply, merged(touched))
            }
        };
        a.touches.push(before, entry.log_id.index, touch);
        replies.push(reply);
    }
    stats.applied_entries.inc_by(replies.len() as u64);
    stats.apply_seconds.observe(started.elapsed().as_secs_f64());
    Ok(replies)
}

impl StateMachineStore {
    /// Opens the store with the state of the last snapshot.
    pub(super) fn open(db: sled::Db, sealer: Sealer) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let snap = db.open_tree("snap")?;
        let mut store = Self {
            db,
            snap,
            sealer,
            applied: Arc::default(),
            moved: Arc::new(watch::channel(None).0),
            stats: Stats::default(),
        };
        if let Some(s) = store.stored_snapshot()? {
            let applied = decode_snapshot(&s.meta, s.snapshot.get_ref())?;
            store.moved.send_replace(applied.last_applied);
            store.applied = Arc::new(RwLock::new(applied));
        }
        Ok(store)
    }

    /// The key this store seals with (autolock reseals its file).
    pub fn sealer(&self) -> Sealer {
        self.sealer.clone()
    }

    /// Counts what this store applies and builds in `stats` (the server's).
    pub fn count_in(&mut self, stats: &Stats) {
        self.stats = stats.clone();
    }

    /// A handle for readers: API handlers read the applied state through it.
    pub fn applied(&self) -> Arc<RwLock<Applied>> {
        self.applied.clone()
    }

    /// The id of the last applied entry, changed only when the applied
    /// state moves (an apply, an installed snapshot), and closed when Raft
    /// stops: what watches of the state wait on. openraft's own metrics
    /// channel sends on every turn of its core, each heartbeat sent or
    /// answered, and woke every such waiter ten and more times a second on
    /// an idle cluster.
    pub fn applied_index(&self) -> watch::Receiver<Option<LogId>> {
        self.moved.subscribe()
    }

    fn stored_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let (Some(meta), Some(data)) =
            (self.snap.get(SNAP_META).map_err(read_err)?, self.snap.get(SNAP_DATA).map_err(read_err)?)
        else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(&meta).map_err(read_err)?;
        let data = self.sealer.open(&data, || "the stored snapshot".into()).map_err(read_err)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }

    /// Stores a snapshot unless the stored one is newer. A snapshot is
    /// built from the state read when building starts and saved after; an
    /// installed snapshot (from the leader) can land in between, and its
    /// log is then purged: overwriting it with the older build would lose
    /// those entries at the next start.
    async fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError<NodeId>> {
        let encoded = serde_json::to_vec(meta).map_err(write_err)?;
        let data = self.sealer.seal(data);
        let saved = self.snap.transaction(|tx| {
            let stored: Option<SnapshotMeta> = tx.get(SNAP_META)?.and_then(|m| serde_json::from_slice(&m).ok());
            if stored.is_some_and(|s| s.last_log_id > meta.last_log_id) {
                return Ok(false);
            }
            tx.insert(SNAP_META, encoded.as_slice())?;
            tx.insert(SNAP_DATA, data.as_slice())?;
            Ok(true)
        });
        let saved: bool = saved
            .map_err(|e: sled::transaction::TransactionError<()>| write_err(std::io::Error::other(format!("{e:?}"))))?;
        if !saved {
            tracing::debug!(snapshot = %meta.snapshot_id, "a newer snapshot is stored; this one is not kept");
            return Ok(());
        }
        // Durable before openraft may purge the log it replaces.
        flush(&self.db).await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(())
    }

    /// Makes `applied` this store's state and its only snapshot, whatever
    /// was stored before (see `recover`), durably.
    pub(super) async fn replace(&self, meta: &SnapshotMeta, applied: Applied) -> Result<(), StorageError<NodeId>> {
        let data = encode_state(&applied).map_err(write_err)?;
        self.snap.insert(SNAP_META, serde_json::to_vec(meta).map_err(write_err)?).map_err(write_err)?;
        self.snap.insert(SNAP_DATA, self.sealer.seal(&data)).map_err(write_err)?;
        flush(&self.db).await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self.applied.write().map_err(|_| lock_err())? = applied;
        self.moved.send_replace(meta.last_log_id);
        Ok(())
    }
}

/// A snapshot's data: the applied state and the format it is written in.
#[derive(Serialize)]
struct Marked<'a> {
    format: u32,
    #[serde(flatten)]
    applied: &'a Applied,
}

/// The applied state as a snapshot's data (and a backup's) holds it: JSON
/// marked with this build's format.
pub fn encode_state(applied: &Applied) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Marked { format: format::FORMAT, applied })
}

/// The applied state in `data` (see [`encode_state`]), migrated from the
/// format it names.
pub fn decode_state(data: &[u8]) -> Result<Applied, String> {
    let value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let value = format::THIS.migrate_snapshot(value).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// The applied state a snapshot holds; its position and membership come
/// from the meta.
fn decode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Applied, StorageError<NodeId>> {
    let fail = |e: String| StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(e));
    let mut applied = decode_state(data).map_err(fail)?;
    applied.last_applied = meta.last_log_id;
    applied.membership = meta.last_membership.clone();
    Ok(applied)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let started = std::time::Instant::now();
        // A copy, so that the lock is held for the copy only: serializing
        // under it stalled every apply (and the workers waiting on the
        // lock) for as long as the JSON took, hundreds of ms at 100,000
        // services. Both on a blocking thread, not Raft's runtime (see `apply`).
        let applied = self.applied.clone();
        let (last_log_id, last_membership, data) = tokio::task::spawn_blocking(move || {
            let copy = applied.read().map_err(|_| lock_err())?.clone();
            let data = encode_state(&copy).map_err(read_err)?;
            Ok::<_, StorageError<NodeId>>((copy.last_applied, copy.membership, data))
        })
        .await
        .map_err(read_err)??;
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        self.save_snapshot(&meta, &data).await?;
        self.stats.snapshot_bytes.set(data.len() as i64);
        self.stats.snapshot_seconds.observe(started.elapsed().as_secs_f64());
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
        // On a blocking thread: the write lock waits for readers (a
        // reconcile pass at 100,000 tasks holds it for 50-300 ms), and on
        // Raft's one-worker runtime that wait stopped heartbeats and
        // append replies too, so followers stood for election under load.
        let entries: Vec<Entry> = entries.into_iter().collect();
        let last = entries.last().map(|e| e.log_id);
        let (applied, stats) = (self.applied.clone(), self.stats.clone());
        let replies = tokio::task::spawn_blocking(move || apply_entries(&applied, &stats, entries))
            .await
            .map_err(|e| write_err(std::io::Error::other(format!("applying entries: {e}"))))??;
        if last.is_some() {
            self.moved.send_replace(last);
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
        // Off Raft's runtime, as an apply (see `apply`).
        let applied = self.applied.clone();
        tokio::task::spawn_blocking(move || write_politely(&applied).map(|mut a| *a = incoming))
            .await
            .map_err(|e| write_err(std::io::Error::other(format!("installing a snapshot: {e}"))))??;
        self.moved.send_replace(meta.last_log_id);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.stored_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, RaftSnapshotBuilder};

    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: Membership::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    #[tokio::test]
    async fn a_snapshot_built_before_an_install_never_replaces_it() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let key = tempfile::tempdir().unwrap();
        let mut store = StateMachineStore::open(db, Sealer::make(key.path()).unwrap()).unwrap();
        // The builder reads the state at index 5 ...
        store.applied.write().unwrap().last_applied = meta(5).last_log_id;
        let mut builder = store.get_snapshot_builder().await;
        // ... but the leader's snapshot at index 9 is installed first.
        let newer = Applied { last_applied: meta(9).last_log_id, ..Applied::default() };
        let data = serde_json::to_vec(&newer).unwrap();
        store.install_snapshot(&meta(9), Box::new(Cursor::new(data))).await.unwrap();
        // Saving the build (from a state read at 5, as if before) keeps 9.
        let older = serde_json::to_vec(&Applied { last_applied: meta(5).last_log_id, ..Applied::default() }).unwrap();
        builder.save_snapshot(&meta(5), &older).await.unwrap();
        let stored = store.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(stored.meta.last_log_id, meta(9).last_log_id);
        // A newer one still replaces it.
        let built = builder.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id, meta(9).last_log_id, "the builder reads the installed state");
        let newest = serde_json::to_vec(&Applied { last_applied: meta(12).last_log_id, ..Applied::default() }).unwrap();
        store.save_snapshot(&meta(12), &newest).await.unwrap();
        assert_eq!(store.get_current_snapshot().await.unwrap().unwrap().meta.last_log_id, meta(12).last_log_id);
    }
}
