//! The volume loop: keeps the cluster's list of this node's named volumes
//! true, since placement follows it. The task watch says what the cluster
//! knows; on each new assignment, each change of the tasks' reports (a
//! container made with a volume makes it) and every `TICK` the loop
//! lists the volumes on disk and, when the two differ, tells the cluster
//! the whole list. The same list is not told again within `RETRY` (a server that
//! refuses it, as one of a cluster not yet all on this release does, is
//! not pressed), so the loop settles once the watch agrees.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::client::Servers;
use berth_proto::model::{Assignment, NodeVolume, TaskReport};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use super::ports::{Containers, Images, Network};
use super::{cluster, Worker};

/// How often the volumes on disk are looked at without news (for one
/// made or removed by hand: the agent's own work brings news).
const TICK: Duration = Duration::from_secs(10);
/// How long before the same list is told again while the watch disagrees.
const RETRY: Duration = Duration::from_secs(5);

pub(super) async fn run<C: Containers, I: Images, N: Network>(
    worker: Arc<Worker<C, I, N>>,
    (mut assignments, mut reports): (watch::Receiver<Option<Assignment>>, watch::Receiver<Vec<TaskReport>>),
    mut servers: Servers,
    node_id: String,
) {
    let mut told: Option<(Vec<NodeVolume>, Instant)> = None;
    loop {
        let known = assignments.borrow_and_update().as_ref().and_then(|a| a.volumes.clone());
        match worker.containers.volumes().await {
            Ok(have) => {
                let names: BTreeSet<String> = have.iter().map(|v| v.name.clone()).collect();
                let pressed = told.as_ref().is_some_and(|(list, at)| *list == have && at.elapsed() < RETRY);
                if known.as_ref() != Some(&names) && !pressed {
                    cluster::report_volumes(&mut servers, &node_id, &have).await;
                    told = Some((have, Instant::now()));
                }
            }
            Err(e) => warn!("listing the node's volumes: {e}"),
        }
        tokio::select! {
            changed = assignments.changed() => if changed.is_err() { return },
            changed = reports.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}
