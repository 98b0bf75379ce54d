//! What a cluster of mixed releases may write. A release that adds a
//! command teaches servers to read it (`state::READS` goes up); the
//! command is then written only while every member (voters and learners:
//! all apply the log) says it reads it, which each server tells in its
//! own `ClusterStatus` (`reads`; a release before the field says 0). Until
//! then the caller does what the older releases understand. So a rolling
//! upgrade never puts an entry in the log that a server cannot apply.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::pb::cluster::cluster_client::ClusterClient;
use berth_proto::pb::cluster::ClusterStatusRequest;
use tonic::Request;

use crate::node::Node;
use crate::state::READS;

/// How long an answer is trusted: members change rarely, and a member
/// that went back a release is caught within this.
const FRESH: Duration = Duration::from_secs(30);

/// The cluster's level, asked of every member now and then, and again
/// whenever the membership changes.
#[derive(Debug, Clone, Default)]
pub struct Levels {
    seen: Arc<Mutex<Option<Seen>>>,
}

/// When the level was asked, of which membership (its log id), and what it was.
type Seen = (Instant, Option<openraft::LogId<u64>>, u32);

impl Levels {
    /// The lowest level any member reads; 0 when one cannot be asked.
    pub async fn cluster(&self, node: &Node) -> u32 {
        let metrics = node.metrics();
        let membership = *metrics.membership_config.log_id();
        if let Some((at, of, level)) = *self.seen.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < FRESH && of == membership {
                return level;
            }
        }
        let members: Vec<(u64, String)> =
            metrics.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        let mut lowest = READS;
        for (id, addr) in members.into_iter().filter(|(id, _)| *id != node.id) {
            lowest = lowest.min(ask(node, &addr).await.unwrap_or_else(|| {
                tracing::debug!(member = id, %addr, "cannot tell what it reads; writing as the oldest release");
                0
            }));
        }
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), membership, lowest));
        lowest
    }
}

/// What the server at `addr` says it reads.
async fn ask(node: &Node, addr: &str) -> Option<u32> {
    let channel = node.peers.channel(addr).ok()?;
    let mut req = Request::new(ClusterStatusRequest { local: true });
    req.set_timeout(Duration::from_secs(2));
    Some(ClusterClient::new(channel).cluster_status(req).await.ok()?.into_inner().reads)
}
