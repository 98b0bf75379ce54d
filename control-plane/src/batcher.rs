//! Group commit of client writes.
//!
//! Concurrent writes reaching a server are gathered into one batch. On the
//! leader a batch becomes one `Proposal`, so one Raft entry, one
//! replication round and one fsync serve them all; a follower forwards the
//! whole batch in one RPC and the leader proposes it as one entry. Batching
//! adapts to load: at most `IN_FLIGHT` batches are under way at once, and
//! writes arriving meanwhile queue up to form the next one. An idle server
//! sends a lone write at once.
//!
//! ```text
//!   write ─┐                      ┌─ leader:   client_write(Proposal[a,b,c]) ─▶ [ra,rb,rc]
//!   write ─┼─▶ queue ─▶ batcher ──┤            (≤ IN_FLIGHT at a time)              │
//!   write ─┘                      └─ follower: Raft.Forward(Propose[a,b,c]) ─────────┤
//!                                                        replies ◀───────────────────┘
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::network::Peers;
use crate::node::{forward, propose_here, LeaderOp, LeaderReply, OpError, Step};
use crate::state::Command;
use crate::stats::Stats;
use crate::store::{NodeId, Raft};

/// Batches under way at once; writes arriving meanwhile form the next one.
/// One measured best: more slots make batches smaller and fsyncs more
/// frequent (bench/raft.sh: 64 clients gave about 7,000 writes/s with one
/// slot, 6,300 with two, 5,400 with four).
const IN_FLIGHT: usize = 1;
/// Commands in one proposal at most (keeps entries well under a megabyte).
const MAX_BATCH: usize = 512;

struct Pending {
    cmd: Command,
    reply: oneshot::Sender<Step>,
}

#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the batcher of server `id`; a batch that takes longer than
    /// `patience` is given up (its writes may still commit) so that a lost
    /// quorum cannot hold its slot forever.
    pub fn spawn(id: NodeId, raft: Raft, peers: Peers, patience: Duration, stats: Stats) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
            while let Some(first) = rx.recv().await {
                // Waiting for a slot is what lets the next batch grow under load.
                let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let (raft, peers, stats) = (raft.clone(), peers.clone(), stats.clone());
                tokio::spawn(async move {
                    send(id, &raft, &peers, &stats, patience, batch).await;
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    /// One attempt at a write on this server, as part of the next proposal.
    pub async fn write(&self, cmd: Command) -> Step {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Pending { cmd, reply }).await.is_err() {
            return Step::Retry("this server is shutting down".into());
        }
        rx.await.unwrap_or_else(|_| Step::Retry("the write was dropped while shutting down".into()))
    }
}

/// Proposes a batch here when leading, else forwards it to the leader, and answers every writer.
async fn send(id: NodeId, raft: &Raft, peers: &Peers, stats: &Stats, patience: Duration, batch: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<Step>>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let n = commands.len();
    let leader = raft.metrics().borrow().current_leader;
    let attempt = async {
        match leader {
            Some(l) if l == id => propose_here(raft, stats, commands).await,
            Some(l) => forward(raft, peers, l, &LeaderOp::Propose(commands)).await,
            None => Step::Retry("no leader is elected yet".into()),
        }
    };
    let step = tokio::time::timeout(patience, attempt)
        .await
        .unwrap_or_else(|_| Step::Retry("no quorum confirmed the write in time".into()));
    let steps: Vec<Step> = match step {
        Step::Done(Ok(LeaderReply::Proposed(responses))) if responses.len() == n => {
            responses.into_iter().map(|r| Step::Done(Ok(LeaderReply::Write(r)))).collect()
        }
        Step::Done(Ok(other)) => {
            vec![Step::Done(Err(OpError::Internal(format!("unexpected reply to a proposal: {other:?}")))); n]
        }
        other => vec![other; n],
    };
    for (reply, step) in replies.into_iter().zip(steps) {
        // A caller that gave up (deadline) has dropped its receiver; nothing to do.
        let _ = reply.send(step);
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("cmd", &self.cmd).finish_non_exhaustive()
    }
}
