//! What this server counts and times for `/metrics`, and what it reads off
//! Raft and the applied state when it is scraped.
//!
//! `Stats` holds the counters and histograms bumped where things happen
//! (proposals, applies, heartbeats, watches, reconciler passes); clones
//! share them. `Collected` computes the rest at scrape time, so that a
//! figure of the whole state costs one walk per scrape, not one per commit.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use berth_proto::metrics::prometheus_client::collector::Collector;
use berth_proto::metrics::prometheus_client::encoding::DescriptorEncoder;
use berth_proto::metrics::prometheus_client::metrics::counter::Counter;
use berth_proto::metrics::prometheus_client::metrics::gauge::Gauge;
use berth_proto::metrics::prometheus_client::metrics::histogram::Histogram;
use berth_proto::metrics::prometheus_client::registry::Registry;
use berth_proto::metrics::{counts, gauge, gauges, seconds};
use berth_proto::model::{NodeStatus, TaskState};
use openraft::ServerState;

use crate::pace::Pace;
use crate::quiet::Quiet;
use crate::state::State;
use crate::store::Applied;
use crate::store::Raft;

#[derive(Debug, Clone)]
pub struct Stats {
    /// Raft entries of commands this server proposed while leading.
    pub proposals: Counter,
    /// Commands per proposal (writes batched into one entry).
    pub proposed_commands: Histogram,
    /// From proposing an entry to its commands' replies (committed and applied).
    pub commit_seconds: Histogram,
    /// The same times summed, in microseconds (for the mean `cluster status`
    /// shows: the histogram's own sum is not readable).
    pub commit_micros: Counter,
    /// Log entries applied to this server's state.
    pub applied_entries: Counter,
    /// Time one apply of a run of entries held the state lock.
    pub apply_seconds: Histogram,
    pub snapshot_seconds: Histogram,
    /// The last snapshot this server built, in bytes (before sealing).
    pub snapshot_bytes: Gauge,
    /// Agents' heartbeats this server answered.
    pub heartbeats: Counter,
    /// Agents' task watches open on this server.
    pub watch_streams: Gauge,
    pub watch_messages: Counter,
    pub watch_bytes: Counter,
    /// Messages that were deltas (the rest are whole lists).
    pub watch_deltas: Counter,
    /// Time to make one publication of the state for the watches.
    pub publish_seconds: Histogram,
    /// Reconciler passes this server ran as leader, and their time.
    pub reconcile_seconds: Histogram,
    /// Tasks placed on a node.
    pub placements: Counter,
    /// From a task waiting for a node (made, or left pending) to its placement committed.
    pub placement_seconds: Histogram,
    /// Times this server saw the leader change (including to none).
    pub leader_changes: Counter,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            proposals: Counter::default(),
            proposed_commands: counts(),
            commit_seconds: seconds(),
            commit_micros: Counter::default(),
            applied_entries: Counter::default(),
            apply_seconds: seconds(),
            snapshot_seconds: seconds(),
            snapshot_bytes: Gauge::default(),
            heartbeats: Counter::default(),
            watch_streams: Gauge::default(),
            watch_messages: Counter::default(),
            watch_bytes: Counter::default(),
            watch_deltas: Counter::default(),
            publish_seconds: seconds(),
            reconcile_seconds: seconds(),
            placements: Counter::default(),
            placement_seconds: seconds(),
            leader_changes: Counter::default(),
        }
    }
}

impl Stats {
    /// A registry with these figures and those read at scrape time from `raft` and `applied`.
    pub fn registry(&self, raft: Raft, applied: Arc<RwLock<Applied>>, quiet: Quiet, pace: Pace) -> Registry {
        let mut r = Registry::with_prefix("berth");
        let s = self.clone();
        r.register("raft_proposals", "Raft entries of commands this server proposed as leader", s.proposals);
        r.register(
            "raft_proposed_commands",
            "Commands per proposal (writes batched into one entry)",
            s.proposed_commands,
        );
        r.register(
            "raft_commit_seconds",
            "From proposing an entry to its replies (committed and applied)",
            s.commit_seconds,
        );
        r.register("raft_applied_entries", "Log entries applied to this server's state", s.applied_entries);
        r.register("raft_apply_seconds", "Time one apply of a run of entries held the state lock", s.apply_seconds);
        r.register("raft_snapshot_build_seconds", "Time to build and store a snapshot", s.snapshot_seconds);
        r.register("raft_snapshot_bytes", "Size of the last snapshot this server built", s.snapshot_bytes);
        r.register("raft_leader_changes", "Times this server saw the leader change", s.leader_changes);
        r.register("heartbeats", "Agents' heartbeats this server answered", s.heartbeats);
        r.register("watch_streams", "Agents' task watches open on this server", s.watch_streams);
        r.register("watch_messages", "Messages sent on agents' task watches", s.watch_messages);
        r.register("watch_bytes", "Bytes (encoded) sent on agents' task watches", s.watch_bytes);
        r.register("watch_deltas", "Watch messages that were deltas (the rest are whole lists)", s.watch_deltas);
        r.register(
            "watch_publish_seconds",
            "Time to make one publication of the state for the watches",
            s.publish_seconds,
        );
        r.register("reconcile_seconds", "Reconciler passes run as leader, and their time", s.reconcile_seconds);
        r.register("placements", "Tasks placed on a node", s.placements);
        r.register(
            "placement_seconds",
            "From a task waiting for a node to its placement committed",
            s.placement_seconds,
        );
        r.register_collector(Box::new(Collected { raft, applied, quiet, pace }));
        r
    }
}

/// Figures read off Raft and the state at each scrape.
struct Collected {
    raft: Raft,
    applied: Arc<RwLock<Applied>>,
    quiet: Quiet,
    pace: Pace,
}

impl std::fmt::Debug for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collected").finish_non_exhaustive()
    }
}

/// Every task state, so that a state with no task reads 0 rather than vanishing.
const TASK_STATES: [TaskState; 6] = [
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Running,
    TaskState::Exited,
    TaskState::Failed,
    TaskState::Shutdown,
];

impl Collector for Collected {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = self.raft.metrics().borrow().clone();
        let index = |l: Option<openraft::LogId<u64>>| l.map_or(0, |l| l.index as i64);
        gauge(&mut e, "raft_term", "This server's Raft term", m.current_term as i64)?;
        gauge(&mut e, "raft_leader", "The leader's server id (0: none known)", m.current_leader.unwrap_or(0) as i64)?;
        gauge(&mut e, "raft_is_leader", "1 while this server leads", i64::from(m.state == ServerState::Leader))?;
        gauge(
            &mut e,
            "raft_quiet_beat_ms",
            "The gap the leader's heartbeats promise now: 0 at the ordinary beat (see quiet)",
            self.quiet.grace().as_millis() as i64,
        )?;
        gauge(
            &mut e,
            "raft_last_log_index",
            "Index of the last entry in this server's log",
            m.last_log_index.unwrap_or(0) as i64,
        )?;
        gauge(&mut e, "raft_applied_index", "Index of the last entry applied", index(m.last_applied))?;
        gauge(&mut e, "raft_snapshot_index", "Last index the stored snapshot covers", index(m.snapshot))?;
        let kept = m.last_log_index.unwrap_or(0) as i64 - index(m.purged);
        gauge(&mut e, "raft_log_entries", "Entries in this server's log (not yet purged)", kept)?;
        if let Some(ms) = m.millis_since_quorum_ack {
            gauge(
                &mut e,
                "raft_millis_since_quorum_ack",
                "On the leader: since a quorum last acknowledged it",
                ms as i64,
            )?;
        }
        let Ok(a) = self.applied.read() else { return Ok(()) };
        let t = Tally::of(&a.state);
        let beat = self.pace.beat(a.state.nodes.len());
        drop(a);
        gauge(
            &mut e,
            "heartbeat_period_ms",
            "The period nodes without a lease are asked to heartbeat at once every server paces: 0 for their own (see pace)",
            beat.as_millis() as i64,
        )?;
        gauge(&mut e, "services", "Services in the cluster", t.services as i64)?;
        let tasks = t.tasks.iter().map(|(s, n)| (s.as_str(), *n as i64));
        gauges(&mut e, "tasks", "Tasks in the cluster by state", "state", tasks)?;
        let nodes = t.nodes.iter().map(|(s, n)| (s.as_str(), *n as i64));
        gauges(&mut e, "nodes", "Worker nodes by status", "status", nodes)?;
        gauge(&mut e, "secrets", "Secrets stored", t.secrets as i64)?;
        gauge(&mut e, "configs", "Configs stored", t.configs as i64)
    }
}

/// The cluster's counts: one walk of the tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub services: u64,
    /// Every task state and node status, with 0 where none is.
    pub tasks: BTreeMap<String, u64>,
    pub nodes: BTreeMap<String, u64>,
    pub secrets: u64,
    pub configs: u64,
}

impl Tally {
    pub fn of(state: &State) -> Self {
        let mut tasks: BTreeMap<String, u64> = TASK_STATES.iter().map(|s| (s.to_string(), 0)).collect();
        for t in state.tasks.values() {
            *tasks.entry(t.state.to_string()).or_default() += 1;
        }
        let mut nodes: BTreeMap<String, u64> =
            [NodeStatus::Ready, NodeStatus::Down].iter().map(|s| (s.to_string(), 0)).collect();
        for n in state.nodes.values() {
            *nodes.entry(n.status.to_string()).or_default() += 1;
        }
        Self {
            services: state.services.len() as u64,
            tasks,
            nodes,
            secrets: state.secrets.len() as u64,
            configs: state.configs.len() as u64,
        }
    }
}

impl Stats {
    /// The main figures, for `berthctl cluster status`.
    pub fn figures(&self, state: &State) -> berth_proto::pb::cluster::Figures {
        let t = Tally::of(state);
        let commits = self.proposals.get();
        berth_proto::pb::cluster::Figures {
            services: t.services,
            tasks: t.tasks.into_iter().collect(),
            nodes: t.nodes.into_iter().collect(),
            leader_changes: self.leader_changes.get(),
            proposals: self.proposals.get(),
            commit_ms_mean: if commits == 0 { 0.0 } else { self.commit_micros.get() as f64 / 1000.0 / commits as f64 },
            snapshot_bytes: self.snapshot_bytes.get().max(0) as u64,
            watch_streams: self.watch_streams.get().max(0) as u64,
            heartbeats: self.heartbeats.get(),
        }
    }
}

/// Counts leader changes as this server sees them, until Raft stops. The
/// server metrics change with the vote, role, leader or membership only.
pub async fn count_leader_changes(raft: Raft, changes: Counter) {
    let mut rx = raft.server_metrics();
    let mut leader = rx.borrow().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow().current_leader;
        if now != leader {
            changes.inc();
            leader = now;
        }
    }
}

/// One open thing (a watch stream) counted in a gauge while it lives.
#[derive(Debug)]
pub struct Open(Gauge);

impl Open {
    pub fn count(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}
