//! What a cluster of mixed releases may write. A release that adds a
//! command teaches servers to read it (`state::READS` goes up); the
//! command is then written only while every member (voters and learners:
//! all apply the log) says it reads it, which each server tells in its
//! own `ClusterStatus` (`reads`; a release before the field says 0). Until
//! then the caller does what the older releases understand. So a rolling
//! upgrade never puts an entry in the log that a server cannot apply.

use std::collections::HashMap;
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
    seen: Arc<Mutex<Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    /// When it was asked, of which membership (its log id), and the answer.
    last: Option<(Instant, Option<openraft::LogId<u64>>, u32, String)>,
    /// What each member said last: a member that cannot be asked now (a
    /// server down, as Raft allows) is taken at its word of before.
    said: HashMap<u64, u32>,
}

impl Levels {
    /// The lowest level any member reads (0 for one never heard), and who
    /// holds it back, for messages.
    pub async fn cluster(&self, node: &Node) -> (u32, String) {
        let metrics = node.metrics();
        let membership = *metrics.membership_config.log_id();
        if let Some((at, of, level, behind)) = &self.seen.lock().unwrap_or_else(|e| e.into_inner()).last {
            if at.elapsed() < FRESH && *of == membership {
                return (*level, behind.clone());
            }
        }
        let members: Vec<(u64, String)> =
            metrics.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        let mut answers = Vec::new();
        for (id, addr) in members.into_iter().filter(|(id, _)| *id != node.id) {
            answers.push((id, addr.clone(), ask(node, &addr).await));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (mut lowest, mut behind) = (READS, Vec::new());
        for (id, addr, answer) in answers {
            let level = match answer {
                Some(level) => *seen.said.entry(id).insert_entry(level).get(),
                None => seen.said.get(&id).copied().unwrap_or(0),
            };
            if level < READS {
                let why = if answer.is_some() { "runs an older release" } else { "cannot be asked" };
                behind.push(format!("server {id} at {addr} {why}"));
            }
            lowest = lowest.min(level);
        }
        let behind = if behind.is_empty() { "every server reads them".into() } else { behind.join(", ") };
        seen.last = Some((Instant::now(), membership, lowest, behind.clone()));
        (lowest, behind)
    }
}

/// What the server at `addr` says it reads.
async fn ask(node: &Node, addr: &str) -> Option<u32> {
    let channel = node.peers.channel(addr).ok()?;
    let mut req = Request::new(ClusterStatusRequest { local: true });
    req.set_timeout(Duration::from_secs(2));
    Some(ClusterClient::new(channel).cluster_status(req).await.ok()?.into_inner().reads)
}

impl Levels {
    /// Ok once every member reads `level`; otherwise the refusal, saying
    /// `what` needs it and which servers hold it back.
    pub async fn require(&self, node: &Node, level: u32, what: &str) -> Result<(), tonic::Status> {
        let (lowest, behind) = self.cluster(node).await;
        match lowest >= level {
            true => Ok(()),
            false => Err(tonic::Status::failed_precondition(format!(
                "{what} need every server of this release or newer; {behind} (`berthctl cluster status` lists the \
                 servers)"
            ))),
        }
    }
}
