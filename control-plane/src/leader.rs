//! Work the leader does on its own, on a timer: today, turning agents'
//! heartbeats into node status changes (the reconciler joins it next).
//! Every server runs the loop; it acts only while its server leads.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::node::Node;
use crate::state::Command;

/// How often the leader looks at liveness.
pub const PERIOD: Duration = Duration::from_millis(500);

pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let nodes = match node.applied.read() {
            Ok(applied) => applied.state.nodes.clone(),
            Err(_) => return,
        };
        let Some(changes) = node.with_liveness(|l| {
            l.retain(&nodes);
            l.transitions(&nodes, std::time::Instant::now())
        }) else {
            continue;
        };
        for cmd in changes {
            if let Command::SetNodeStatus { id, status } = &cmd {
                info!(node = %id, %status, "node status");
            }
            if let Err(e) = node.write(cmd).await {
                warn!("recording a node status change: {e}");
            }
        }
    }
}
