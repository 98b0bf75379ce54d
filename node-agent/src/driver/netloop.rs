//! The network loop: follows the assignment on its own, so the tasks'
//! work never holds back a peer, the routing mesh or DNS. Each pass asks
//! the pure plan (`network::plan::next`) for the next step, carries it out
//! on the blocking pool and records it, until nothing is left; a step that
//! fails is tried again on the tick, and the overlay's upkeep runs every
//! `UPKEEP`.

use std::sync::Arc;

use berth_proto::model::Assignment;
use tokio::sync::watch;
use tracing::warn;

use super::ports::{Containers, Images, Network};
use super::Worker;
use crate::network::plan::{self, Applied, NetStep};

/// How often the overlay's new sockets are looked for without news (a
/// server's keepalive, which no longer wakes the loop, came this often).
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) async fn run<C: Containers, I: Images, N: Network>(
    worker: Arc<Worker<C, I, N>>,
    mut assignments: watch::Receiver<Option<Assignment>>,
) {
    let features = worker.settings.features;
    let mut applied = Applied::default();
    loop {
        let assignment = assignments.borrow_and_update().clone();
        let mut failed = Vec::new();
        if let Some(assignment) = &assignment {
            while let Some(step) = plan::next(assignment, &applied, features, &failed) {
                let s = step.clone();
                match worker.network(move |n| n.apply(&s)).await {
                    Ok(()) => applied.record(step),
                    Err(e) => {
                        warn!("{}: {e}", what(&step));
                        failed.push(step.kind());
                    }
                }
            }
            let _ = worker
                .network(|n| {
                    n.refresh();
                    Ok(())
                })
                .await;
        }
        // Without a failure the plan is done: nothing to do before news,
        // but the overlay's upkeep (its sockets made at each handshake).
        let pending = !failed.is_empty();
        tokio::select! {
            changed = assignments.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(worker.settings.tick), if pending => {}
            _ = tokio::time::sleep(UPKEEP), if features.overlay => {}
        }
    }
}

fn what(step: &NetStep) -> &'static str {
    match step {
        NetStep::Bridge(_) => "setting up the node network",
        NetStep::Overlay => "starting the overlay",
        NetStep::Peers(_) => "updating the overlay's peers",
        NetStep::Mesh { .. } => "updating the routing mesh",
        NetStep::Dns => "starting DNS",
        NetStep::Zone(_) => "updating DNS",
    }
}
