//! Work the leader does on its own, on a timer: turning agents' heartbeats
//! into node status changes, and running the reconciler so that tasks
//! follow services. Every server runs the loop; it acts only while its
//! server leads, and each pass sees the state after the previous pass's
//! commit (the reconciler's decisions are checked again on apply anyway).

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::node::Node;
use crate::reconciler::reconcile;
use crate::state::{now_ms, Command, Response};

/// How often the leader looks at liveness and tasks.
pub const PERIOD: Duration = Duration::from_millis(200);

pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The log position the reconciler last found nothing to do at.
    let mut at_rest = None;
    loop {
        tick.tick().await;
        let nodes = match node.applied.read() {
            Ok(applied) => applied.state.nodes.clone(),
            Err(_) => return,
        };
        let Some(transitions) = node.with_liveness(|l| {
            l.retain(&nodes);
            l.transitions(&nodes, std::time::Instant::now())
        }) else {
            at_rest = None;
            continue;
        };
        for cmd in transitions {
            if let Command::SetNodeStatus { id, status } = &cmd {
                info!(node = %id, %status, "node status");
            }
            if let Err(e) = node.write(cmd).await {
                warn!("recording a node status change: {e}");
            }
        }
        let (position, changes) = match node.applied.read() {
            Ok(applied) if applied.last_applied == at_rest && at_rest.is_some() => continue,
            Ok(applied) => (applied.last_applied, reconcile(&applied.state)),
            Err(_) => return,
        };
        if changes.is_empty() {
            at_rest = position;
            continue;
        }
        let count = changes.len();
        match node.write(Command::Reconcile { changes, at_ms: now_ms() }).await {
            Ok(Response::Reconciled { applied }) => debug!(count, applied, "reconciled"),
            Ok(other) => warn!("unexpected reply to a reconcile: {other:?}"),
            Err(e) => warn!("reconciling: {e}"),
        }
    }
}
