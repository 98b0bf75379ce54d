//! A server's Raft member and the rules for getting work to the leader.
//!
//! Everything that must happen on the leader is a `LeaderOp`. `Node::run`
//! tries it here; a follower forwards it to the leader it knows over
//! `Raft.Forward`, and the leader only ever runs it locally, so a request
//! hops at most once. Until a deadline (`request_timeout`) a request waits
//! out elections and leader changes; after it, the client gets a clear
//! "unavailable" instead of a hang.
//!
//! ```text
//!   run(op) ──▶ here(op) ── Done ──▶ reply
//!                 │ NotLeader ──▶ forward to leader ──▶ its here(op)
//!                 │ Retry(why) ──▶ sleep, again, until the deadline
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_proto::model::NetworkConfig;
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};

use crate::batcher::Batcher;
use crate::beats::{BeatCache, BeatView};
use crate::liveness::Liveness;
use crate::network::{decode, encode, Peers};
use crate::pace::Pace;
use crate::state::{query, Command, Proposal, Query, QueryReply, Response};
use crate::stats::Stats;
use crate::store::{Applied, LogId, NodeId, Raft};
use crate::trust::Joined;

/// Pause between attempts while a leader is being elected or a learner catches up.
const RETRY: Duration = Duration::from_millis(50);
/// A learner within this many entries of the leader is close enough to vote.
const CAUGHT_UP: u64 = 200;

/// Whether a server that reads commands up to level `reads` may join: a
/// learner is sent the log as it is, and entries of a level it cannot read
/// (`state::READS`) would stop it for good. (So going back a release is
/// not possible once the log holds the newer commands.)
fn may_join(addr: &str, reads: u32) -> Result<(), OpError> {
    match reads >= crate::state::READS {
        true => Ok(()),
        false => Err(OpError::FailedPrecondition(format!(
            "the server at {addr} runs an older release than this cluster's leader (it reads commands up to level \
             {reads}, the leader {} and may write them): start it with the leader's release, then join it",
            crate::state::READS
        ))),
    }
}

/// Work that only the leader may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LeaderOp {
    /// One write; the server batches it with others (see `batcher`).
    Write(Box<Command>),
    /// Commands proposed as one entry where this op runs, never
    /// forwarded on: a follower's batch sent to the leader, or the
    /// leader's own decisions (`Node::write_as_leader`).
    Propose(Vec<Command>),
    Read(Query),
    /// Admit a server at this address as a learner, if it reads what
    /// this cluster writes (`reads`: its `state::READS`; a release before
    /// the field sends none, 0).
    Join {
        addr: String,
        #[serde(default)]
        reads: u32,
    },
    /// Make a caught-up learner a voter.
    Promote {
        id: NodeId,
    },
    /// Take a server out of the membership.
    Remove {
        id: NodeId,
    },
    /// A berth-agent's proof of life, kept in the leader's memory; with
    /// `lease`, the leader answers the node's lease (`LeaderReply::Lease`).
    /// A leader of the release before ignores the field and answers `Done`:
    /// no lease.
    Heartbeat {
        node: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lease: bool,
    },
    /// A node with a join token asks for its certificate (`trust::admit`).
    Admit {
        token: String,
        csr: String,
        /// What the node means to be: worker or server.
        role: String,
    },
    /// A node renews its certificate; `name` and `role` are its current
    /// certificate's (`trust::renew`).
    Renew {
        name: String,
        role: String,
        csr: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LeaderReply {
    Write(Response),
    Proposed(Vec<Response>),
    Read(QueryReply),
    Joined {
        id: NodeId,
    },
    Admitted(Joined),
    Done,
    /// A node's lease: for `ms` after it sent its heartbeat it may run the
    /// `exclusive` tasks (0: no lease). See [`Node::lease`]. And the period
    /// the node is asked to beat at (0: its own; see `pace`), which a
    /// leader of the release before does not send.
    Lease {
        ms: u64,
        exclusive: Vec<String>,
        #[serde(default)]
        beat_ms: u64,
    },
}

/// Below this node-down timeout (ms) no node gets a lease (see `Node::lease`).
pub const MIN_LEASED_DOWN_MS: u64 = 2_000;

/// What one attempt of an op came to; also the answer of `Raft.Forward`.
/// One lives per request and is matched in many places, so the large
/// variant is not boxed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    Done(Result<LeaderReply, OpError>),
    NotLeader,
    Retry(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
}

pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub applied: Arc<RwLock<Applied>>,
    /// The last applied entry, moving with `applied` (see `applied_after`).
    applied_index: watch::Receiver<Option<LogId>>,
    pub peers: Peers,
    pub request_timeout: Duration,
    batcher: Batcher,
    /// Serializes id allocation for joins on this leader.
    join_lock: tokio::sync::Mutex<()>,
    /// Agents' heartbeats, while this server leads: the term it was made
    /// for, and the tracker (see `liveness`).
    pub liveness: std::sync::Mutex<Option<(u64, Liveness)>>,
    /// A node the tracker held silent was heard again: the leader looks
    /// at once (it otherwise waits for `Liveness::next_look`).
    pub revived: tokio::sync::Notify,
    /// How often nodes beat, and the node-down timeout (`pace`).
    pub pace: Pace,
    /// The lowest `state::READS` of the members, as this server last
    /// learned it while leading (`leader::follow_level`; 0 before).
    pub cluster_level: std::sync::atomic::AtomicU32,
    /// The network this server sets if it is the first leader.
    pub network: NetworkConfig,
    /// What `/metrics` shows of this server's work.
    pub stats: Stats,
    beats: BeatCache,
    /// The heartbeats' promise, which a lease in use holds off (`quiet`).
    pub quiet: crate::quiet::Quiet,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Node {
    pub fn new(
        id: NodeId,
        raft: Raft,
        applied: Arc<RwLock<Applied>>,
        applied_index: watch::Receiver<Option<LogId>>,
        peers: Peers,
        request_timeout: Duration,
        stats: Stats,
    ) -> Self {
        let batcher = Batcher::spawn(id, raft.clone(), peers.clone(), request_timeout, stats.clone());
        Self {
            id,
            stats,
            beats: BeatCache::default(),
            raft,
            applied,
            applied_index,
            peers,
            request_timeout,
            batcher,
            join_lock: tokio::sync::Mutex::new(()),
            liveness: std::sync::Mutex::new(None),
            revived: tokio::sync::Notify::new(),
            pace: Pace::default(),
            cluster_level: std::sync::atomic::AtomicU32::new(0),
            network: NetworkConfig::DEFAULT,
            quiet: crate::quiet::Quiet::default(),
        }
    }

    /// Runs `f` on this leader's liveness tracker, made afresh for each
    /// term it leads; None when this server does not lead.
    pub fn with_liveness<T>(&self, f: impl FnOnce(&mut Liveness) -> T) -> Option<T> {
        let (leader, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != Some(self.id) {
            return None;
        }
        let mut slot = self.liveness.lock().ok()?;
        if slot.as_ref().is_none_or(|(t, _)| *t != term) {
            // The longest silence a node may have been told: the period
            // the cluster's size asks for (a node with a lease is asked
            // for the ordinary one, whose timeout is never longer).
            let nodes = self.applied.read().map(|a| a.state.nodes.len()).unwrap_or(0);
            let settle = self.pace.timeout(self.pace.beat(nodes));
            *slot = Some((term, Liveness::new(settle, std::time::Instant::now())));
        }
        slot.as_mut().map(|(_, l)| f(l))
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Waits until this server leads (at once if it does). When Raft has
    /// stopped, waits a `leader::PERIOD` instead, so a caller's loop does
    /// not spin.
    pub async fn until_leading(&self) {
        let mut server = self.raft.server_metrics();
        if server.wait_for(|m| m.current_leader == Some(self.id)).await.is_err() {
            tokio::time::sleep(crate::leader::PERIOD).await;
        }
    }

    /// The id of the last entry this server applied.
    pub fn last_applied(&self) -> Option<LogId> {
        *self.applied_index.borrow()
    }

    /// Waits until this server has applied past `seen`, or for `limit`;
    /// answers what is applied then. Watches of the applied state (tasks
    /// for agents, events for people) wake on this instead of polling, and
    /// only when the state moves (not on openraft's metrics, which change
    /// with every heartbeat).
    pub async fn applied_after(&self, seen: Option<LogId>, limit: Duration) -> Option<LogId> {
        let mut index = self.applied_index.clone();
        let stopped = matches!(tokio::time::timeout(limit, index.wait_for(|a| *a != seen)).await, Ok(Err(_)));
        if stopped {
            // Raft has stopped: nothing will move again; do not let callers spin.
            tokio::time::sleep(limit).await;
        }
        let applied = *index.borrow();
        applied
    }

    pub async fn write(&self, cmd: Command) -> Result<Response, OpError> {
        match self.run(LeaderOp::Write(Box::new(cmd))).await? {
            LeaderReply::Write(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// A write of this server's own decision as the leader (a node's
    /// liveness, seen from its memory), proposed here and never forwarded:
    /// a leader that lost its office meanwhile must not have a stale view
    /// committed by its successor (it once marked a node down that the new
    /// leader heard from, which moved an exclusive volume's task while it
    /// ran). Proposed here, it is an entry of this server's term, which
    /// commits only if this term's log survives (it reached a quorum, or
    /// the next leader, while this server led), never as a new proposal
    /// of its successor. It bypasses the batcher, which
    /// forwards a batch to whichever server leads when the batch is sent
    /// (that let the deposed leader's "node down" through again). The
    /// commands go as one entry, with one response each.
    pub async fn write_as_leader(&self, commands: Vec<Command>) -> Result<Vec<Response>, OpError> {
        let op = LeaderOp::Propose(commands);
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let step = timeout_at(deadline, self.here(&op)).await;
            match step {
                Ok(Step::Done(Ok(LeaderReply::Proposed(r)))) => return Ok(r),
                Ok(Step::Done(Ok(other))) => return Err(unexpected(other)),
                Ok(Step::Done(Err(e))) => return Err(e),
                Ok(Step::NotLeader) => return Err(OpError::Unavailable("this server is no longer the leader".into())),
                Ok(Step::Retry(_)) if Instant::now() + RETRY < deadline => tokio::time::sleep(RETRY).await,
                Ok(Step::Retry(why)) => return Err(OpError::Unavailable(why)),
                Err(_) => return Err(OpError::Unavailable("no quorum confirmed it in time".into())),
            }
        }
    }

    /// A linearizable read through the leader, or with `stale` this server's applied state.
    pub async fn read(&self, q: Query, stale: bool) -> Result<QueryReply, OpError> {
        if stale {
            return self.read_local(&q);
        }
        match self.run(LeaderOp::Read(q)).await? {
            LeaderReply::Read(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    fn read_local(&self, q: &Query) -> Result<QueryReply, OpError> {
        let applied = self.applied.read().map_err(|_| OpError::Internal("state lock poisoned".into()))?;
        Ok(query(&applied.state, q))
    }

    /// A certificate the leader signs: `op` is `Admit` or `Renew`.
    pub async fn certificate(&self, op: LeaderOp) -> Result<Joined, OpError> {
        match self.run(op).await? {
            LeaderReply::Admitted(j) => Ok(j),
            other => Err(OpError::Internal(format!("unexpected reply from the leader: {other:?}"))),
        }
    }

    /// Runs `op` on the leader, wherever it is, within the request deadline.
    pub async fn run(&self, op: LeaderOp) -> Result<LeaderReply, OpError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut why = String::from("no quorum of servers answered");
        loop {
            let step = match timeout_at(deadline, self.here(&op)).await {
                Err(_) => break,
                Ok(Step::NotLeader) => match self.metrics().current_leader {
                    Some(leader) if leader != self.id => match timeout_at(deadline, self.forward(leader, &op)).await {
                        Err(_) => break,
                        Ok(step) => step,
                    },
                    _ => Step::Retry("no leader is elected yet".into()),
                },
                Ok(step) => step,
            };
            match step {
                Step::Done(result) => return result,
                Step::NotLeader => why = "the leader changed while the request was forwarded".into(),
                Step::Retry(reason) => why = reason,
            }
            if Instant::now() + RETRY >= deadline {
                break;
            }
            tokio::time::sleep(RETRY).await;
        }
        Err(OpError::Unavailable(format!(
            "the cluster did not confirm the request within {:.1}s ({why}), so it may or may not take effect; \
             a majority of servers must be running and reachable: check them with `berthctl cluster status`",
            self.request_timeout.as_secs_f64()
        )))
    }

    async fn forward(&self, leader: NodeId, op: &LeaderOp) -> Step {
        forward(&self.raft, &self.peers, leader, op).await
    }

    /// One attempt at `op` on this server.
    pub async fn here(&self, op: &LeaderOp) -> Step {
        match op {
            LeaderOp::Write(cmd) => self.batcher.write((**cmd).clone()).await,
            LeaderOp::Propose(commands) => propose_here(&self.raft, &self.stats, commands.clone()).await,
            LeaderOp::Read(q) => match self.linearizable().await {
                Ok(()) => Step::Done(self.read_local(q).map(LeaderReply::Read)),
                Err(step) => step,
            },
            LeaderOp::Admit { token, csr, role } => match self.linearizable().await {
                Ok(()) => Step::Done(self.admit(token, csr, role).map(LeaderReply::Admitted)),
                Err(step) => step,
            },
            LeaderOp::Renew { name, role, csr } => match self.linearizable().await {
                Ok(()) => Step::Done(self.renew(name, role, csr).map(LeaderReply::Admitted)),
                Err(step) => step,
            },
            LeaderOp::Join { addr, reads } => self.join(addr, *reads).await,
            LeaderOp::Promote { id } => self.promote(*id).await,
            LeaderOp::Remove { id } => self.remove(*id).await,
            LeaderOp::Heartbeat { node, lease } => self.heartbeat(node, *lease),
        }
    }

    /// The Raft ids of the cluster's servers, voters and learners.
    pub fn server_ids(&self) -> Vec<NodeId> {
        self.metrics().membership_config.membership().nodes().map(|(id, _)| *id).collect()
    }

    /// Confirms that this server leads and has applied every entry it
    /// committed: its state holds every write acknowledged before the call.
    pub async fn confirm_leading(&self) -> Result<(), OpError> {
        match self.linearizable().await {
            Ok(()) => Ok(()),
            Err(Step::NotLeader) => Err(OpError::Unavailable("this server no longer leads; try again".into())),
            Err(Step::Retry(why)) => Err(OpError::Unavailable(why)),
            Err(Step::Done(r)) => r.map(|_| ()),
        }
    }

    /// Waits until this leader's applied state is as fresh as any read may see.
    async fn linearizable(&self) -> Result<(), Step> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Err(Step::NotLeader),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(Step::Retry(e.to_string())),
            Err(e) => Err(fatal(e)),
        }
    }

    fn admit(&self, token: &str, csr: &str, role: &str) -> Result<Joined, OpError> {
        let applied = self.applied.read().map_err(|_| OpError::Internal("state lock poisoned".into()))?;
        crate::trust::admit(applied.state.trust.as_ref(), token, csr, role)
    }

    fn renew(&self, name: &str, role: &str, csr: &str) -> Result<Joined, OpError> {
        let role = berth_proto::pki::Role::parse(role).ok_or_else(|| OpError::Invalid(format!("role {role:?}")))?;
        let applied = self.applied.read().map_err(|_| OpError::Internal("state lock poisoned".into()))?;
        let known = applied.state.nodes.contains_key(name) && !applied.state.removed_nodes.contains(name);
        crate::trust::renew(applied.state.trust.as_ref(), name, role, known, csr)
    }

    fn heartbeat(&self, node: &str, lease: bool) -> Step {
        let Some((known, ready, nodes)) = self.applied.read().ok().map(|a| {
            let n = a.state.nodes.get(node);
            (n.is_some(), n.is_some_and(|n| n.status != berth_proto::model::NodeStatus::Down), a.state.nodes.len())
        }) else {
            return Step::Done(Err(OpError::Internal("state lock poisoned".into())));
        };
        if !known {
            return Step::Done(Err(OpError::NotFound(format!("node {node} is not registered; register again"))));
        }
        let view = self.beat_view();
        let exclusive = view.exclusive.get(node).filter(|e| !e.is_empty());
        let paces = self.cluster_level.load(std::sync::atomic::Ordering::Relaxed) >= crate::state::READS_PACED_BEATS;
        let beat = self.pace.asked(nodes, exclusive.is_some(), paces);
        let now = std::time::Instant::now();
        let was_alive = self.with_liveness(|l| l.heartbeat(node, now, self.pace.timeout(beat)));
        if was_alive == Some(false) {
            self.revived.notify_one();
        }
        match was_alive {
            Some(was_alive) if lease => {
                let (ms, exclusive) = self.lease(exclusive, was_alive && ready);
                Step::Done(Ok(LeaderReply::Lease { ms, exclusive, beat_ms: beat.as_millis() as u64 }))
            }
            Some(_) => Step::Done(Ok(LeaderReply::Done)),
            None => Step::NotLeader,
        }
    }

    /// The lease a node's heartbeat earns (its length, and the node's
    /// `exclusive` tasks it covers): 7/10 of the node-down timeout,
    /// and only from a leader a quorum acknowledged within an eighth of it
    /// (and only with a timeout of 2 s or more: below that the margins
    /// below do not hold, and exclusive tasks wait).
    ///
    /// Why that fences: the node counts the lease from when it sent the
    /// heartbeat (s). Its agent stops its exclusive tasks half a second
    /// before the lease ends, and each one's monitor kills it at the end,
    /// whatever the agent does: by s + 0.7·down + 0.1 s (its poll). This
    /// leader heard from a quorum at q >= s - down/8 - 0.15 s (metrics
    /// are up to 1.5 Raft heartbeats old), so no other leader's term began
    /// before q, and a new leader takes the node for down no sooner than a
    /// full timeout into its term (`Liveness` starts afresh): after
    /// s + 7·down/8 - 0.15 s, which is later whenever down > 1.43 s. This
    /// leader itself waits a full timeout after the node's last heartbeat.
    /// The tasks named are the leader's own view, so a node that comes back
    /// from a partition never restarts a task that has moved meanwhile.
    ///
    /// `heard` is false for a node this leader has not heard before its
    /// deadline (first heard this term, or maybe being marked down now) and
    /// for one the state has as down (its tasks move): it earns none until
    /// it is heard again.
    fn lease(&self, exclusive: Option<&Vec<String>>, heard: bool) -> (u64, Vec<String>) {
        let down = self.pace.down.as_millis() as u64;
        if exclusive.is_some() {
            // The bound above needs the ordinary beat's quorum acks.
            self.quiet.hold(self.pace.down);
        }
        let acked = self.raft.metrics().borrow().millis_since_quorum_ack;
        if !heard || down < MIN_LEASED_DOWN_MS || acked.is_none_or(|ms| ms > down / 8) {
            return (0, vec![]);
        }
        (down * 7 / 10, exclusive.cloned().unwrap_or_default())
    }

    /// What heartbeats need of the state now (see `beats`).
    pub fn beat_view(&self) -> Arc<BeatView> {
        match self.applied.read() {
            Ok(a) => self.beats.at(&a),
            Err(_) => Arc::default(),
        }
    }

    async fn join(&self, addr: &str, reads: u32) -> Step {
        if self.metrics().current_leader != Some(self.id) {
            return Step::NotLeader;
        }
        if let Err(e) = may_join(addr, reads) {
            return Step::Done(Err(e));
        }
        let _guard = self.join_lock.lock().await;
        let membership = self.metrics().membership_config.clone();
        if let Some((id, _)) = membership.membership().nodes().find(|(_, n)| n.addr == addr) {
            // A learner there died before finishing its join and comes back
            // with no state: it may have its id again. A voter may not: an
            // empty server voting as one that had acknowledged entries could
            // lose them.
            if membership.membership().voter_ids().any(|v| v == *id) {
                return Step::Done(Err(OpError::FailedPrecondition(format!(
                    "{addr} already belongs to voting server {id}; restart that server with its data dir, \
                     or remove it first with `berthctl cluster remove {id}`"
                ))));
            }
            return Step::Done(Ok(LeaderReply::Joined { id: *id }));
        }
        let id = membership.membership().nodes().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        match self.raft.add_learner(id, BasicNode::new(addr), false).await {
            Ok(_) => Step::Done(Ok(LeaderReply::Joined { id })),
            Err(e) => membership_error(e),
        }
    }

    async fn promote(&self, id: NodeId) -> Step {
        let m = self.metrics();
        if m.current_leader != Some(self.id) {
            return Step::NotLeader;
        }
        let membership = m.membership_config.membership();
        if membership.voter_ids().any(|v| v == id) {
            return Step::Done(Ok(LeaderReply::Done));
        }
        if membership.get_node(&id).is_none() {
            return Step::Done(Err(OpError::NotFound(format!("server {id} is not a member; it has to join first"))));
        }
        let last = m.last_log_index.unwrap_or(0);
        let matched = m.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map(|l| l.index);
        if matched.is_none_or(|x| x + CAUGHT_UP < last) {
            return Step::Retry(format!("server {id} is catching up (at {} of {last})", matched.unwrap_or(0)));
        }
        match self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true).await {
            Ok(_) => Step::Done(Ok(LeaderReply::Done)),
            Err(e) => membership_error(e),
        }
    }

    async fn remove(&self, id: NodeId) -> Step {
        let m = self.metrics();
        if m.current_leader != Some(self.id) {
            return Step::NotLeader;
        }
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Step::Done(Err(OpError::NotFound(format!(
                "no server with id {id}; `berthctl cluster status` lists the members"
            ))));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Step::Done(Err(OpError::FailedPrecondition(format!(
                    "server {id} is the only voter; removing it would leave no cluster"
                ))));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        match self.raft.change_membership(change, false).await {
            Ok(_) => Step::Done(Ok(LeaderReply::Done)),
            Err(e) => membership_error(e),
        }
    }
}

/// Sends `op` to `leader` over `Raft.Forward`; its answer, or `Retry` if it cannot be reached.
pub(crate) async fn forward(raft: &Raft, peers: &Peers, leader: NodeId, op: &LeaderOp) -> Step {
    let addr = raft.metrics().borrow().membership_config.membership().get_node(&leader).map(|n| n.addr.clone());
    let Some(addr) = addr else {
        return Step::Retry(format!("leader {leader} has no known address"));
    };
    let result = async {
        let mut client = peers.raft(&addr)?;
        let reply = client.forward(encode(op)?).await?;
        decode::<Step>(reply.get_ref())
    };
    match result.await {
        Ok(step) => step,
        Err(status) => Step::Retry(format!("leader {leader} at {addr} is unreachable: {}", status.message())),
    }
}

/// Proposes `commands` as one entry if this server leads; never forwards.
pub(crate) async fn propose_here(raft: &Raft, stats: &Stats, commands: Vec<Command>) -> Step {
    let n = commands.len();
    let started = std::time::Instant::now();
    let written = raft.client_write(Proposal(commands)).await;
    if written.is_ok() {
        let took = started.elapsed();
        stats.proposals.inc();
        stats.proposed_commands.observe(n as f64);
        stats.commit_seconds.observe(took.as_secs_f64());
        stats.commit_micros.inc_by(took.as_micros() as u64);
    }
    match written {
        Ok(r) if r.data.len() == n => Step::Done(Ok(LeaderReply::Proposed(r.data))),
        Ok(r) => Step::Done(Err(OpError::Internal(format!(
            "state machine gave {} responses for {n} commands",
            r.data.len()
        )))),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Step::NotLeader,
        Err(e) => fatal(e),
    }
}

fn unexpected(r: LeaderReply) -> OpError {
    OpError::Internal(format!("unexpected reply from the leader: {r:?}"))
}

fn fatal<E: std::error::Error>(e: RaftError<NodeId, E>) -> Step {
    Step::Done(Err(OpError::Unavailable(format!("this server's Raft stopped: {e}"))))
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Step {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Step::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
            Step::Retry(format!("another membership change is in progress: {p}"))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Step::Done(Err(OpError::FailedPrecondition(e.to_string())))
        }
        e => fatal(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_server_that_cannot_read_the_log_may_not_join() {
        assert!(may_join("198.18.0.4:7000", crate::state::READS).is_ok());
        let Err(OpError::FailedPrecondition(why)) = may_join("198.18.0.4:7000", crate::state::READS - 1) else {
            panic!("an older server joined")
        };
        assert!(why.contains("198.18.0.4:7000") && why.contains("older release"), "{why}");
        // A joiner of the release before the field says nothing: level 0.
        let old: LeaderOp = serde_json::from_str(r#"{"Join":{"addr":"198.18.0.4:7000"}}"#).unwrap();
        assert_eq!(old, LeaderOp::Join { addr: "198.18.0.4:7000".into(), reads: 0 });
    }
}
