//! Work the leader does on its own: turning agents' heartbeats into node
//! status changes, and running the reconciler so that tasks follow
//! services. A pass runs when the applied log moves (a service changed, an
//! agent reported), or every `PERIOD` for liveness, with at least `GAP`
//! between passes so a burst of commits makes one pass, not many. Every
//! server runs the loop; it acts only while its server leads, and each
//! pass sees the state after the previous pass's commit (the reconciler's
//! decisions are checked again on apply anyway).
//!
//! A pass looks at the whole state, so its cost grows with the cluster.
//! The pause after a pass grows with it (`DUTY`): however many services
//! there are, passes take at most about a quarter of the leader's time and
//! of the state lock, and writes keep their pace while it reconciles.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::node::Node;
use crate::reconciler::reconcile;
use crate::state::{now_ms, Command, Response};

/// How often the leader looks at liveness (and tasks) without news.
pub const PERIOD: Duration = Duration::from_millis(200);
/// The least time between two passes.
const GAP: Duration = Duration::from_millis(10);
/// A pass that took t is followed by at least DUTY × t of rest.
const DUTY: u32 = 3;

pub async fn run(node: Arc<Node>) {
    // The log position the last pass looked at, and the one at which the
    // reconciler last found nothing to do.
    let (mut seen, mut at_rest) = (None, None);
    let mut warned = false;
    let mut rest = GAP;
    loop {
        tokio::time::sleep(rest).await;
        node.applied_after(seen, PERIOD).await;
        seen = node.metrics().last_applied;
        let Some(transitions) = node.with_liveness(|l| match node.applied.read() {
            Ok(applied) => {
                l.retain(&applied.state.nodes);
                l.transitions(&applied.state.nodes, std::time::Instant::now())
            }
            Err(_) => Vec::new(),
        }) else {
            at_rest = None;
            continue;
        };
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
        for cmd in transitions {
            if let Command::SetNodeStatus { id, status } = &cmd {
                info!(node = %id, %status, "node status");
            }
            if let Err(e) = node.write(cmd).await {
                warn!("recording a node status change: {e}");
            }
        }
        let started = std::time::Instant::now();
        let (position, changes) = match node.applied.read() {
            Ok(applied) if applied.last_applied == at_rest && at_rest.is_some() => continue,
            Ok(applied) => (applied.last_applied, reconcile(&applied.state)),
            Err(_) => return,
        };
        rest = GAP.max(started.elapsed() * DUTY);
        if changes.is_empty() {
            at_rest = position;
            continue;
        }
        let count = changes.len();
        match node.write(Command::Reconcile { changes, at_ms: now_ms() }).await {
            Ok(Response::Reconciled { applied: 0 }) => {
                // Nothing held when applied: the state moved under the
                // decision. Not again at once (a reconciler that disagreed
                // with apply would otherwise write in a tight loop).
                debug!(count, "no reconcile change applied");
                tokio::time::sleep(PERIOD).await;
            }
            Ok(Response::Reconciled { applied }) => debug!(count, applied, "reconciled"),
            Ok(other) => warn!("unexpected reply to a reconcile: {other:?}"),
            Err(e) => warn!("reconciling: {e}"),
        }
    }
}
