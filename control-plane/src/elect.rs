//! When this server stands for election, and the leader's heartbeats:
//! pre-vote (Raft thesis §9.6, as etcd does it) in front of openraft's
//! elections, which berth turns off (`enable_elect: false`).
//!
//! Why: openraft 0.9 lets a follower that heard no leader start an
//! election at once, with a higher term. A server cut off for a while
//! comes back with that term, the leader's next append meets it, and the
//! healthy leader steps down: the local cluster's term went from 1 to 25
//! over two cuts, each election a stall for every write. With pre-vote a
//! server first asks the voters whether they would vote for it; they say
//! yes only if they too have not heard a leader for an election timeout and
//! its log is at least as long as theirs. Only with a majority of yeses does
//! it raise its term, so a cut-off or lagging server never does.
//!
//! And speed: openraft 0.9 waits out its leader lease on top of the
//! election timeout (a follower stood 900-1200 ms after the leader's last
//! heartbeat). Since pre-vote already keeps a live leader in office, the
//! lease openraft keeps is set just under the election timeout, and a
//! server stands after a random timeout in [E, 1.5·E].
//!
//! Heartbeats are sent from here too (`enable_heartbeat: false`): openraft
//! times an append out after its `heartbeat_interval`, and on a loaded
//! machine a 100 ms deadline failed every append, so the leader could not
//! commit. openraft is given a longer interval, which is only its deadline
//! now, and berth sends a heartbeat every `heartbeat`, or every quiet
//! beat while there is nothing to replicate (`quiet`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::Fatal;
use openraft::{BasicNode, ServerState};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::network::{decode, encode, Peers};
use crate::quiet::{may_rest, Quiet};
use crate::store::{LogId, LogStore, NodeId, Raft};

/// A pre-vote request: would you vote for me, with this log?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVote {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId>,
}

/// What a server knows of its leader when it is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// This server leads, and a quorum acknowledged it this long ago.
    pub leading: Option<Option<Duration>>,
    /// How long ago this server last heard from a leader (or voted).
    pub heard: Duration,
    pub last_log_id: Option<LogId>,
}

/// Whether a server in `me` would vote for a candidate whose log ends at
/// `theirs`: only with no live leader in sight (a leader counts as live
/// while a quorum acknowledged it within the timeout) and a log at least
/// as long as its own, the rule of the real vote.
pub fn grants(me: &Standing, theirs: Option<LogId>, timeout: Duration) -> bool {
    let leader_live = match me.leading {
        // A leader no quorum has acknowledged yet (one just restored at
        // start) counts as live: its first round trips are under way.
        Some(acked) => acked.is_none_or(|a| a < timeout),
        None => me.heard < timeout,
    };
    !leader_live && theirs >= me.last_log_id
}

/// Whether `yes` of `voters` (this server's own yes included) make a majority.
pub fn majority(yes: usize, voters: usize) -> bool {
    yes * 2 > voters
}

/// openraft's timers for berth's heartbeat `h` and election timeout `e`
/// (e > 2h): the append deadline, 2/3·e (more than the heartbeat, which
/// openraft requires to be below its election timeouts), and the lease,
/// 7/8·e, after which a follower grants a real vote: just before anyone
/// stands, so no standing server is refused by lease.
pub fn openraft_timers(h: Duration, e: Duration) -> (u64, u64, u64) {
    let (h, e) = (h.as_millis() as u64, e.as_millis() as u64);
    let deadline = (e * 2 / 3).max(h);
    let lease = (e * 7 / 8).max(deadline + 2);
    (deadline, (deadline + lease) / 2, lease)
}

/// The leader's beats and the followers' patience.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    /// The election timeout.
    pub timeout: Duration,
    /// The beat while there is nothing to replicate; None: always `heartbeat`.
    pub quiet: Option<Duration>,
}

/// This server's side of elections: answers pre-votes and, while it
/// follows, stands when its leader has gone silent; while it leads, beats.
#[derive(Clone)]
pub struct Elections {
    id: NodeId,
    raft: Raft,
    log: LogStore,
    peers: Peers,
    heartbeat: Duration,
    timeout: Duration,
    quiet_beat: Option<Duration>,
    quiet: Quiet,
    /// When this server started: it has heard no leader since then at most.
    started: Instant,
    /// When it last said yes to a pre-vote: that candidate is about to
    /// stand, and standing too would split the vote, so it waits a timeout.
    said_yes: Arc<Mutex<Instant>>,
}

impl std::fmt::Debug for Elections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elections").field("id", &self.id).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Elections {
    pub fn new(id: NodeId, raft: Raft, log: LogStore, peers: Peers, timing: Timing, quiet: Quiet) -> Self {
        let started = Instant::now();
        Self {
            id,
            raft,
            log,
            peers,
            heartbeat: timing.heartbeat,
            timeout: timing.timeout,
            quiet_beat: timing.quiet,
            quiet,
            started,
            said_yes: Arc::new(Mutex::new(started)),
        }
    }

    /// What this server promised or was promised (`quiet`).
    pub fn quiet(&self) -> &Quiet {
        &self.quiet
    }

    /// The answer to `ask`.
    pub async fn answer(&self, ask: &PreVote) -> Result<bool, Fatal<NodeId>> {
        let me = self.standing().await?;
        // A quiet leader is heard, and hears its quorum, that much less often.
        let yes = grants(&me, ask.last_log_id, self.timeout + self.quiet.grace());
        if yes {
            *self.said_yes() = Instant::now();
        }
        tracing::debug!(candidate = ask.candidate, yes, ?me, theirs = ?ask.last_log_id, "pre-vote");
        Ok(yes)
    }

    async fn standing(&self) -> Result<Standing, Fatal<NodeId>> {
        let leading = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader).then(|| m.millis_since_quorum_ack.map(Duration::from_millis))
        };
        let heard = self.heard().await?;
        let mut log = self.log.clone();
        let last_log_id = openraft::storage::RaftLogStorage::get_log_state(&mut log)
            .await
            .map(|s| s.last_log_id)
            .unwrap_or_else(|e| {
                tracing::warn!("pre-vote: cannot read the log: {e}");
                None
            });
        Ok(Standing { leading, heard, last_log_id })
    }

    /// How long ago this server last heard from a leader, or voted
    /// (openraft's vote time): at most since it started.
    async fn heard(&self) -> Result<Duration, Fatal<NodeId>> {
        let touched = self.raft.with_raft_state(|st| st.vote_last_modified()).await?;
        Ok(touched.map_or(self.started.elapsed(), |t| t.elapsed().min(self.started.elapsed())))
    }

    fn said_yes(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.said_yes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_timeout(&self) -> Duration {
        let e = self.timeout.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(e..=e + e / 2))
    }

    /// Whether this server leads, and the voters with their addresses.
    fn membership(&self) -> (bool, Vec<(NodeId, BasicNode)>) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let config = m.membership_config.membership();
        let voters = config.voter_ids().filter_map(|id| config.get_node(&id).map(|n| (id, n.clone()))).collect();
        (m.state == ServerState::Leader, voters)
    }

    /// Runs until Raft stops.
    pub async fn run(self) {
        let mut wait = self.next_timeout();
        let mut tried = self.started;
        // The leader's last log index, and since when it has been that.
        let mut still = (None, Instant::now());
        loop {
            // Taken before the look at the role, so that no change after it is missed.
            let mut server = self.raft.server_metrics();
            server.borrow_and_update();
            let (leading, voters) = self.membership();
            if leading {
                self.quiet.heard(None);
                if !self.beat(&mut still).await {
                    return;
                }
                continue;
            }
            self.quiet.promise(None);
            if !voters.iter().any(|(id, _)| *id == self.id) {
                tokio::time::sleep(self.heartbeat).await;
                continue;
            }
            // Silent: nothing heard from a leader, nor asked, nor said yes, for this long.
            let Ok(heard) = self.heard().await else { return };
            let silent = heard.min(tried.elapsed()).min(self.said_yes().elapsed());
            // A quiet leader promised its next heartbeat that much later.
            let patience = wait + self.quiet.grace();
            if silent < patience {
                // Wakes when the timeout would run out, or when this server's
                // role changes (elected: it sends heartbeats from then on).
                // Not every heartbeat: each look asks Raft's core, and ten
                // looks a second were most of an idle follower's work.
                tokio::select! {
                    _ = tokio::time::sleep(patience - silent) => {}
                    changed = server.changed() => if changed.is_err() { return },
                }
                continue;
            }
            let Ok(me) = self.standing().await else { return };
            tried = Instant::now();
            wait = self.next_timeout();
            if !self.canvass(&voters, &me).await {
                tracing::debug!(voters = voters.len(), "pre-vote lost: staying a follower");
                continue;
            }
            // A leader, or a candidate this server voted for, heard while
            // asking: standing now would depose it. Or this server said
            // yes to another candidate meanwhile: both standing would split
            // the vote.
            let Ok(now) = self.heard().await else { return };
            if now < tried.elapsed() || self.said_yes().elapsed() < tried.elapsed() {
                continue;
            }
            tracing::info!(voters = voters.len(), heard = ?me.heard, "no leader heard: standing for election");
            if self.raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }

    /// One heartbeat of a leader, and the pause after it: the ordinary
    /// beat, or a quiet one (promised in the heartbeat, see `quiet`) ended
    /// early when an entry is appended. False once Raft stops.
    async fn beat(&self, still: &mut (Option<u64>, Instant)) -> bool {
        // Watched while quiet: the log's end and this server's role. Not
        // openraft's metrics, sent on every turn of its loop (each tick too).
        let (mut appended, mut server) = (self.log.appended(), self.raft.server_metrics());
        let rest = {
            let m = self.raft.metrics();
            let m = m.borrow();
            // The log's end: the store's, which openraft's metrics may lag.
            let end = m.last_log_index.max(*appended.borrow_and_update());
            if end != still.0 {
                *still = (end, Instant::now());
            }
            let config = m.membership_config.membership();
            let others = config.voter_ids().filter(|id| *id != self.id);
            let matched = m.replication.iter().flat_map(|r| r.values().map(|l| l.map(|l| l.index)));
            let rest = may_rest(still.1.elapsed(), still.0, matched, self.quiet.all_heed(others), self.quiet.held());
            self.quiet_beat.filter(|_| rest && m.replication.is_some())
        };
        // Promised before it is sent.
        self.quiet.promise(rest);
        if self.raft.trigger().heartbeat().await.is_err() {
            return false;
        }
        let Some(gap) = rest else {
            tokio::time::sleep(self.heartbeat).await;
            return true;
        };
        let until = Instant::now() + gap;
        let past = |a: &Option<u64>| a.is_some_and(|a| Some(a) > still.0);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                changed = appended.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    if past(&appended.borrow_and_update()) {
                        // Written to: the ordinary beat from now on.
                        self.quiet.promise(None);
                        return true;
                    }
                }
                changed = server.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    if server.borrow_and_update().state != ServerState::Leader {
                        self.quiet.promise(None);
                        return true;
                    }
                }
            }
        }
    }

    /// Asks the other voters, until a majority (this server's own yes
    /// included) would vote for it, or all have answered.
    /// A server of the release before has no pre-vote and counts as a yes:
    /// its own vote then decides, as before.
    async fn canvass(&self, voters: &[(NodeId, BasicNode)], me: &Standing) -> bool {
        let ask = PreVote { candidate: self.id, last_log_id: me.last_log_id };
        let mut asked = JoinSet::new();
        for (id, node) in voters.iter().filter(|(id, _)| *id != self.id) {
            let (id, peers, ask, limit) = (*id, self.peers.clone(), ask.clone(), self.timeout);
            let addr = node.addr.clone();
            asked.spawn(async move {
                let mut client = peers.raft(&addr).ok()?;
                let mut request = tonic::Request::new(encode(&ask).ok()?);
                request.set_timeout(limit);
                match client.pre_vote(request).await {
                    Ok(reply) => decode::<bool>(reply.get_ref()).ok(),
                    Err(s) if s.code() == tonic::Code::Unimplemented => Some(true),
                    Err(s) => {
                        tracing::debug!(server = id, "pre-vote not answered: {}", s.message());
                        None
                    }
                }
            });
        }
        let mut yes = 1;
        while !majority(yes, voters.len()) {
            let Some(answer) = asked.join_next().await else { return false };
            yes += usize::from(matches!(answer, Ok(Some(true))));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn follower(heard_ms: u64, last: Option<LogId>) -> Standing {
        Standing { leading: None, heard: Duration::from_millis(heard_ms), last_log_id: last }
    }

    const E: Duration = Duration::from_millis(300);

    #[test]
    fn a_follower_that_hears_its_leader_refuses() {
        assert!(!grants(&follower(100, log(2, 10)), log(2, 50), E));
        assert!(grants(&follower(300, log(2, 10)), log(2, 50), E));
    }

    #[test]
    fn a_shorter_or_older_log_is_refused() {
        let me = follower(1000, log(3, 10));
        assert!(!grants(&me, log(3, 9), E));
        assert!(!grants(&me, log(2, 40), E), "a higher index of an older term is an older log");
        assert!(!grants(&me, None, E));
        assert!(grants(&me, log(3, 10), E));
        assert!(grants(&me, log(4, 1), E));
        assert!(grants(&follower(1000, None), None, E), "a new cluster's first election");
    }

    #[test]
    fn a_leader_refuses_while_a_quorum_acknowledges_it() {
        let leader = |acked: Option<u64>| Standing {
            leading: Some(acked.map(Duration::from_millis)),
            heard: Duration::ZERO,
            last_log_id: log(2, 10),
        };
        assert!(!grants(&leader(Some(50)), log(2, 10), E));
        assert!(grants(&leader(Some(2000)), log(2, 10), E), "a leader cut off from its quorum is no leader");
        assert!(!grants(&leader(None), log(2, 10), E), "a leader just restored is given its first round trips");
    }

    #[test]
    fn majorities() {
        assert!(majority(1, 1));
        assert!(!majority(1, 2));
        assert!(!majority(1, 3));
        assert!(majority(2, 3));
        assert!(!majority(2, 4));
        assert!(majority(3, 5));
    }

    #[test]
    fn openraft_is_given_a_lease_shorter_than_the_timeout_and_a_longer_deadline() {
        for (h, e) in [(100, 300), (50, 150), (500, 2000), (1, 3)] {
            let (deadline, min, lease) = openraft_timers(Duration::from_millis(h), Duration::from_millis(e));
            assert!(deadline >= h && deadline < min && min < lease, "{h}/{e}: {deadline} {min} {lease}");
            assert!(lease < e || e < 8, "{h}/{e}: lease {lease} must end before anyone stands");
        }
        assert_eq!(openraft_timers(Duration::from_millis(100), Duration::from_millis(300)), (200, 231, 262));
    }
}
