//! The Cluster API's two open-ended streams.
//!
//! - `events`: this server's applied state, diffed (`crate::events`) each
//!   time it moves. Any server answers; a follower's events come as it
//!   applies, a moment after the leader's.
//! - `service_logs`: a fan-in. The server calls the `Node` service of every
//!   node that runs the service (every ready node when following, since new
//!   tasks may land anywhere) and passes their lines on, tagged with the
//!   node; a node it cannot reach becomes a warning, not an error, so the
//!   other nodes' logs still come.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::client;
use berth_proto::model::{Desired, NodeStatus};
use berth_proto::pb::agent::node_client::NodeClient;
use berth_proto::pb::agent::TaskLogsRequest;
use berth_proto::pb::cluster::{Event, LogLine, LogLines, ServiceLogsRequest};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Status;

use crate::events::diff;
use crate::node::Node;
use crate::state::{now_ms, Rejection, State};

/// How long an events stream waits for a change before checking that its
/// caller is still there.
const IDLE: Duration = Duration::from_secs(5);
/// The largest message accepted from an agent (it sends at most 1 MiB of lines).
const MAX_BATCH: usize = 8 << 20;

fn state_of(node: &Node) -> Result<State, Status> {
    node.applied.read().map(|a| a.state.clone()).map_err(|_| Status::internal("state lock poisoned"))
}

/// Sends every change applied from now on, until the receiver goes.
pub async fn events(node: Arc<Node>, tx: mpsc::Sender<Result<Event, Status>>) {
    let mut seen = node.last_applied();
    let Ok(mut before) = state_of(&node) else { return };
    while !tx.is_closed() {
        let now = node.applied_after(seen, IDLE).await;
        if now == seen {
            continue;
        }
        seen = now;
        let Ok(after) = state_of(&node) else { return };
        let at = now_ms();
        for e in diff(&before, &after) {
            let event = Event {
                time_unix_ms: at,
                kind: e.kind.into(),
                action: e.action,
                name: e.name,
                attributes: e.attributes.into_iter().collect(),
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        before = after;
    }
}

/// Where a service's logs are.
#[derive(Debug, PartialEq)]
struct Sources {
    /// The nodes to ask, by (name, address).
    ready: Vec<(String, String)>,
    /// Down nodes that hold some of its tasks, by name.
    down: Vec<String>,
}

/// A NOT_FOUND status when there is no such service.
fn nodes_for(state: &State, service: &str, follow: bool) -> Result<Sources, Status> {
    if !state.services.contains_key(service) && !state.tasks.values().any(|t| t.service == service) {
        return Err(Rejection::NotFound(service.to_owned()).into());
    }
    let hosts: Vec<&String> = state
        .tasks
        .values()
        .filter(|t| t.service == service && (t.desired == Desired::Running || follow))
        .filter_map(|t| t.node.as_ref())
        .collect();
    let ready = state
        .nodes
        .values()
        .filter(|n| n.status == NodeStatus::Ready && (follow || hosts.contains(&&n.id)))
        .map(|n| (n.name.clone(), n.address.clone()))
        .collect();
    let down = state
        .nodes
        .values()
        .filter(|n| n.status == NodeStatus::Down && hosts.contains(&&n.id))
        .map(|n| n.name.clone())
        .collect();
    Ok(Sources { ready, down })
}

/// Starts the fan-in; the stream ends when every node's has.
pub fn service_logs(
    node: &Node,
    req: ServiceLogsRequest,
    tx: mpsc::Sender<Result<LogLines, Status>>,
) -> Result<(), Status> {
    let state = state_of(node)?;
    let Sources { ready: nodes, down } = nodes_for(&state, &req.service, req.follow)?;
    for name in down {
        let warning = format!("node {name} is down: the logs of its tasks cannot be read now");
        let _ = tx.try_send(Ok(LogLines { lines: vec![], warning }));
    }
    let ask = TaskLogsRequest {
        service: req.service,
        follow: req.follow,
        has_tail: req.tail >= 0,
        tail: req.tail.max(0) as u64,
    };
    for (name, address) in nodes {
        let channel = node.peers.agent(&address);
        tokio::spawn(from_node(name, address, channel, ask.clone(), tx.clone()));
    }
    Ok(())
}

async fn from_node(
    name: String,
    address: String,
    channel: Result<Channel, Status>,
    ask: TaskLogsRequest,
    tx: mpsc::Sender<Result<LogLines, Status>>,
) {
    let warn = |why: String| LogLines { lines: vec![], warning: format!("node {name} ({address}): {why}") };
    // Pings (client::Settings) notice an agent that hangs mid-stream (a frozen host).
    let stream = match channel {
        Ok(channel) => NodeClient::new(channel).max_decoding_message_size(MAX_BATCH).task_logs(ask).await,
        Err(e) => Err(e),
    };
    let mut stream = match stream {
        Ok(s) => s.into_inner(),
        Err(s) => {
            let _ = tx.send(Ok(warn(client::reason(&s)))).await;
            return;
        }
    };
    loop {
        // A follow on a quiet node sends nothing for a long time: the
        // caller going away must end it all the same.
        let message = tokio::select! {
            _ = tx.closed() => return,
            m = stream.message() => m,
        };
        let batch = match message {
            Ok(Some(batch)) => LogLines {
                lines: batch
                    .lines
                    .into_iter()
                    .map(|l| LogLine { task: l.task, node: name.clone(), stream: l.stream, time: l.time, text: l.text })
                    .collect(),
                warning: String::new(),
            },
            Ok(None) => return,
            Err(s) => warn(s.message().to_owned()),
        };
        let ended = !batch.warning.is_empty();
        if tx.send(Ok(batch)).await.is_err() || ended {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{Node as NodeRecord, Task, TaskSpec};

    use super::*;

    #[test]
    fn logs_come_from_the_ready_nodes_that_run_the_service() {
        let mut s = State::default();
        for (id, status) in [("n1", NodeStatus::Ready), ("n2", NodeStatus::Ready), ("n3", NodeStatus::Down)] {
            let n = NodeRecord {
                id: id.into(),
                name: format!("host-{id}"),
                address: format!("{id}:7500"),
                labels: Default::default(),
                capacity: Default::default(),
                status,
                availability: Default::default(),
                subnet: None,
                overlay: None,
                reads: 0,
            };
            s.nodes.insert(id.into(), n);
        }
        for (slot, node) in [(1, "n1"), (2, "n3")] {
            let mut t = Task::new("web", slot, 1, 1, TaskSpec::default());
            t.node = Some(node.into());
            s.tasks.insert(t.id.clone(), t);
        }
        let names = |v: Sources| (v.ready.into_iter().map(|(n, _)| n).collect::<Vec<_>>(), v.down);
        let (ready, down) = names(nodes_for(&s, "web", false).unwrap());
        assert_eq!((ready, down), (vec!["host-n1".to_owned()], vec!["host-n3".to_owned()]), "n2 runs none");
        let (ready, _) = names(nodes_for(&s, "web", true).unwrap());
        assert_eq!(ready, ["host-n1", "host-n2"], "a follow watches every ready node");
        assert_eq!(nodes_for(&s, "api", false).unwrap_err().code(), tonic::Code::NotFound);
    }
}
