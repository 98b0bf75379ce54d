//! Work the leader does on its own: turning agents' heartbeats into node
//! status changes, and running the reconciler so that tasks follow
//! services. A pass runs when the applied log moves (a service changed, an
//! agent reported), when a silent node is heard again, or when liveness
//! or a rollout says a look is due (`Liveness::next_look`; at rest that is
//! once in a few seconds, where a look every 200 ms was a tenth of an idle
//! leader's wakes), with at least `GAP` between passes so a burst of
//! commits makes one pass, not many. Every
//! server runs the loop; it acts only while its server leads, and each
//! pass sees the state after the previous pass's commit (the reconciler's
//! decisions are checked again on apply anyway).
//!
//! A pass looks at the whole state, so its cost grows with the cluster.
//! The pause after a pass grows with it (`DUTY`): however many services
//! there are, passes take at most about a quarter of the leader's time and
//! of the state lock, and writes keep their pace while it reconciles.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::model::{RolloutState, ServiceSpec};
use tracing::{debug, info, warn};

use crate::api::Levels;
use crate::node::Node;
use crate::reconciler::reconcile;
use crate::state::{expand, now_ms, Command, Response, RolloutChange, State, TaskChange, READS_NEW_TASKS};

/// How long the leader waits after a reconcile that changed nothing, and
/// a stopped Raft's callers before they look again.
pub const PERIOD: Duration = Duration::from_millis(200);
/// The least time between two passes.
const GAP: Duration = Duration::from_millis(10);
/// A pass that took t is followed by at least DUTY × t of rest.
const DUTY: u32 = 3;
/// The most task changes one pass writes. A Raft entry is replicated
/// whole, in one append with one deadline; a pass that placed 100 services
/// of 1000 replicas at once wrote 161,000 changes (a new task was about
/// 1 KB), an entry no follower could take in time (berth-sim, 1000 nodes).
/// A new task placed is now one `New` of about 90 bytes: 10,000 of them
/// are about 1 MB (while a member of the release before reads only
/// `Create` and `Assign`, 10,000 changes are about 5,000 tasks, 3.5 MB).
const MAX_CHANGES: usize = 10_000;

pub async fn run(node: Arc<Node>, levels: Levels) {
    // The log position the last pass looked at, and the one at which the
    // reconciler last found nothing to do.
    let (mut seen, mut at_rest) = (None, None);
    // When a rollout waits for time (a delay, a monitor), a pass then.
    let mut wake_at: Option<u64> = None;
    let mut warned = false;
    let mut rest = GAP;
    let mut led_term = None;
    // How many silent nodes liveness held ready at the last look (see `liveness`).
    let mut was_held = 0;
    // When liveness may next change without news (the first look at once).
    let mut next_look = Some(std::time::Instant::now());
    tokio::spawn(follow_level(Arc::downgrade(&node), levels));
    loop {
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
        let patience = patience(next_look, wake_at, node.pace.down);
        tokio::select! {
            _ = node.applied_after(seen, patience) => {}
            () = node.revived.notified() => {}
        }
        seen = node.last_applied();
        let Some((transitions, held)) = node.with_liveness(|l| match node.applied.read() {
            Ok(applied) => {
                let now = std::time::Instant::now();
                l.retain(&applied.state.nodes);
                next_look = l.next_look(&applied.state.nodes, now);
                l.transitions(&applied.state.nodes, now)
            }
            Err(_) => (Vec::new(), 0),
        }) else {
            at_rest = None;
            next_look = Some(std::time::Instant::now());
            // A follower has nothing to do here until it leads.
            node.until_leading().await;
            continue;
        };
        if (held > 0) != (was_held > 0) {
            match held {
                0 => info!(was_held, "the silent nodes are fewer than half now; their status follows liveness again"),
                _ => warn!(
                    held,
                    "more than half the nodes are silent at once: holding them ready (this server is more likely \
                     behind than they are gone; see liveness)"
                ),
            }
            was_held = held;
        }
        // Once per term: a leader whose log lacks this line never acted as
        // one (see bench/results/scale.md, a leader that wrote nothing).
        let term = node.metrics().current_term;
        if led_term != Some(term) {
            info!(term, "leading: watching liveness and reconciling");
            led_term = Some(term);
        }
        let network = node.applied.read().map(|a| a.state.network).ok().flatten();
        match network {
            None => match node.write(Command::InitNetwork(node.network)).await {
                Ok(_) => {
                    info!(cidr = %node.network.cidr, node_prefix = node.network.node_prefix, "cluster network set")
                }
                Err(e) => warn!("setting the cluster network: {e}"),
            },
            Some(set) if set != node.network && !warned => {
                warn!(cidr = %set.cidr, "the cluster network was set before; --cluster-cidr/--node-subnet-prefix/--published-port-range of this server are ignored");
                warned = true;
            }
            Some(_) => {}
        }
        // One entry for all: a hundred nodes cut off at once are one write, not a hundred in turn.
        for cmd in &transitions {
            if let Command::SetNodeStatus { id, status } = cmd {
                info!(node = %id, %status, "node status");
            }
        }
        if !transitions.is_empty() {
            if let Err(e) = node.write_as_leader(transitions).await {
                warn!("recording node status changes: {e}");
                // Again soon: a node back up is alive to the tracker now, and beats no news.
                next_look = Some(std::time::Instant::now() + PERIOD);
            }
        }
        let level = node.cluster_level.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        let now = now_ms();
        let due = wake_at.is_some_and(|at| now >= at);
        // At rest and nothing applied since: no pass, and no pause after
        // none (at rest the loop wakes only for liveness, see `patience`).
        if at_rest.is_some() && seen == at_rest && !due {
            rest = Duration::ZERO;
            continue;
        }
        // On a blocking thread: at 100,000 tasks a pass takes 50-300 ms of
        // CPU, which on one of the runtime's workers held up heartbeats.
        let pass = {
            let node = node.clone();
            tokio::task::spawn_blocking(move || {
                let applied = node.applied.read().ok()?;
                if applied.last_applied == at_rest && at_rest.is_some() && !due {
                    return Some(None);
                }
                let mut decided = reconcile(&applied.state, now);
                if level < READS_NEW_TASKS {
                    decided.changes = expand(&applied.state, decided.changes);
                }
                // The rest are decided again by the next pass (each pass looks at
                // the state afresh, so any prefix of its decisions may be written alone).
                decided.changes.truncate(MAX_CHANGES);
                let waiting = waiting_since(&applied.state, &decided.changes, now);
                Some(Some((applied.last_applied, decided, waiting)))
            })
            .await
        };
        let (position, decided, waiting) = match pass {
            Ok(Some(Some(pass))) => pass,
            // At rest, and nothing changed since.
            Ok(Some(None)) => continue,
            // The state lock poisoned, or the runtime shutting down.
            Ok(None) | Err(_) => return,
        };
        node.stats.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        debug!(changes = decided.changes.len(), took = ?started.elapsed(), ?position, "reconcile pass");
        rest = GAP.max(started.elapsed() * DUTY);
        wake_at = decided.wake_at;
        for (service, why) in decided.rollbacks {
            roll_back(&node, &service, &why).await;
        }
        if decided.changes.is_empty() && decided.rollouts.is_empty() {
            at_rest = position;
            continue;
        }
        let (changes, rollouts) = (decided.changes, decided.rollouts);
        for r in &rollouts {
            info!(service = %r.service, version = r.version, state = %r.state, "rollout {}", r.message);
        }
        let count = changes.len() + rollouts.len();
        match own(&node, Command::Reconcile { changes, at_ms: now, rollouts }).await {
            Ok(Response::Reconciled { applied: 0 }) => {
                // Nothing held when applied: the state moved under the
                // decision. Not again at once (a reconciler that disagreed
                // with apply would otherwise write in a tight loop).
                debug!(count, "no reconcile change applied");
                tokio::time::sleep(PERIOD).await;
            }
            Ok(Response::Reconciled { applied }) => {
                debug!(count, applied, "reconciled");
                let placed = now_ms();
                for since in waiting {
                    node.stats.placements.inc();
                    node.stats.placement_seconds.observe(placed.saturating_sub(since) as f64 / 1000.0);
                }
            }
            Ok(other) => warn!("unexpected reply to a reconcile: {other:?}"),
            Err(e) => warn!("reconciling: {e}"),
        }
    }
}

/// How long the loop waits for news (an entry applied, a silent node
/// heard again): until liveness's next look or a rollout's wake time,
/// and at most `longest`.
fn patience(next_look: Option<std::time::Instant>, wake_at: Option<u64>, longest: Duration) -> Duration {
    let look = next_look.map(|at| at.saturating_duration_since(std::time::Instant::now()));
    let wake = wake_at.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
    look.into_iter().chain(wake).fold(longest, Duration::min)
}

/// Keeps `level` at what every member reads (`api::levels`), while this
/// server leads, apart from the passes: asking a member that does not
/// answer takes seconds, and a pass must not wait for it (until known, 0:
/// the leader writes as the oldest release does). Ends with the loop.
async fn follow_level(node: std::sync::Weak<Node>, levels: Levels) {
    while let Some(node) = node.upgrade() {
        if node.metrics().current_leader == Some(node.id) {
            node.cluster_level.store(levels.cluster(&node).await.0, Ordering::Relaxed);
        }
        drop(node);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// For each task the pass places, since when it waited for a node: a
/// pending task since it was left pending, a new one since this pass.
fn waiting_since(state: &State, changes: &[TaskChange], now: u64) -> Vec<u64> {
    changes
        .iter()
        .filter_map(|c| match c {
            TaskChange::Assign { id, .. } => Some(state.tasks.get(id).map_or(now, |t| t.since_ms)),
            TaskChange::New(t) => t.node.is_some().then_some(now),
            _ => None,
        })
        .collect()
}

/// Puts a service's previous spec back (with its replicas as they are now),
/// as a plain update that every release applies alike, then says why.
async fn roll_back(node: &Node, service: &str, why: &str) {
    let Some((spec, version)) = node.applied.read().ok().and_then(|a| {
        let svc = a.state.services.get(service)?;
        let previous = svc.previous.as_deref()?;
        Some((ServiceSpec { replicas: svc.spec.replicas, ..previous.clone() }, a.state.template(svc)))
    }) else {
        return;
    };
    warn!(%service, from_version = version, "rolling back: {why}");
    // The leader's own decision, as its reconciles are: a deposed leader's
    // rollback must not overwrite an update its successor took meanwhile.
    match own(node, Command::UpdateService(spec)).await {
        Ok(Response::Service { service: svc, .. }) => {
            let change = RolloutChange {
                service: service.to_owned(),
                version: svc.version,
                state: RolloutState::RollingBack,
                message: format!("rolled back from version {version}: {why}"),
            };
            let cmd = Command::Reconcile { changes: vec![], at_ms: now_ms(), rollouts: vec![change] };
            if let Err(e) = own(node, cmd).await {
                warn!(%service, "recording why it rolled back: {e}");
            }
        }
        // Refused (its port taken since, say): the rollout pauses, saying
        // why, rather than asking again every pass.
        Ok(Response::Rejected(r)) => pause(node, service, version, format!("could not roll back ({r}): {why}")).await,
        Ok(other) => warn!(%service, "rolling back: unexpected reply {other:?}"),
        // No quorum or no longer the leader: whoever leads next decides again.
        Err(e) => warn!(%service, "rolling back: {e}"),
    }
}

async fn pause(node: &Node, service: &str, version: u64, message: String) {
    warn!(%service, "{message}");
    let change = RolloutChange { service: service.to_owned(), version, state: RolloutState::Paused, message };
    if let Err(e) = own(node, Command::Reconcile { changes: vec![], at_ms: now_ms(), rollouts: vec![change] }).await {
        warn!(%service, "recording a paused rollout: {e}");
    }
}

/// Writes one decision of this leader's (`Node::write_as_leader`).
async fn own(node: &Node, cmd: Command) -> Result<Response, crate::node::OpError> {
    let mut replies = node.write_as_leader(vec![cmd]).await?;
    replies.pop().ok_or_else(|| crate::node::OpError::Internal("no response to a proposal".into()))
}
