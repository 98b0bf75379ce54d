//! The worker's side of the agent protocol: the task watch, which keeps
//! the latest [`Assignment`] from whichever server answers, and the
//! reporter, which hands the cluster the latest reports. Both fail over
//! between the servers (`berth_proto::client::Servers`), and neither ever
//! holds up the worker's passes.
//!
//! A server sends its list at least every few seconds; one that sends
//! nothing for `deadline` is taken for frozen (its connection may look
//! alive), and the watch moves on to the next server.

use std::time::Duration;

use berth_proto::client::{reason, Servers, MAX_MESSAGE};
use berth_proto::model::{Assignment, NodeVolume, TaskReport};
use berth_proto::pb::agent::agent_client::AgentClient;
use berth_proto::pb::agent::{ReportTasksRequest, ReportVolumesRequest, WatchTasksRequest};
use tokio::sync::watch;
use tracing::{info, warn};

fn agent(servers: &Servers) -> AgentClient<tonic::transport::Channel> {
    AgentClient::new(servers.channel()).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
}

/// Keeps `tx` holding the node's latest assignment until nobody listens.
/// A message whose network the agent cannot take changes nothing: the last
/// assignment stands, and another server is tried (one element it cannot
/// read costs only that element: see `Assignment`).
///
/// A watch that moves to another server resumes from the revision of the
/// list it holds: that server sends what changed since, not the cluster
/// (a thousand nodes that all came back at once to the servers left
/// after a failover were sent about 6 MB each).
pub async fn watch(mut servers: Servers, node_id: String, deadline: Duration, tx: watch::Sender<Option<Assignment>>) {
    // The revision of the list `tx` holds, as the last message gave it
    // (none from a server of the release before).
    let mut held: Option<u64> = None;
    while !tx.is_closed() {
        let server = servers.current().to_owned();
        let resume = held.filter(|_| tx.borrow().is_some()).unwrap_or(0);
        let request =
            WatchTasksRequest { node_id: node_id.clone(), deltas: true, replica_deltas: true, resume, shared: true };
        match agent(&servers).watch_tasks(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                // Whether this stream has sent its whole list, or resumed
                // the one `tx` holds: its deltas build on it from then on.
                let mut whole = false;
                loop {
                    let mut message = match tokio::time::timeout(deadline, stream.message()).await {
                        Err(_) => {
                            warn!(%server, "task watch: nothing for {deadline:?}; trying another server");
                            // A revision no server reaches (a cluster restored
                            // from a backup, say) must not hold the next one up.
                            if !whole {
                                held = None;
                            }
                            break;
                        }
                        Ok(Ok(Some(message))) => message,
                        Ok(Ok(None)) => break,
                        Ok(Err(status)) => {
                            warn!(%server, "task watch: {}", reason(&status));
                            break;
                        }
                    };
                    if let Err(e) = message.merge_shared(&node_id) {
                        warn!(%server, "task watch: a message's shared part does not decode ({e}); trying another server");
                        break;
                    }
                    let (delta, revision, removed) = (message.delta, message.revision, message.take_removed());
                    let changed = match Assignment::try_from(message) {
                        Ok(changed) => changed,
                        Err(e) => {
                            warn!(%server, "task watch: this agent cannot take the assignment ({e}); keeping the last one");
                            break;
                        }
                    };
                    let resumed = delta && !whole && resume > 0 && removed.tasks_whole;
                    if delta && !whole && !resumed {
                        warn!(%server, "task watch: a delta before any whole list; watching again");
                        held = None;
                        break;
                    }
                    if resumed {
                        info!(%server, from = resume, to = revision, "task watch: resumed (what changed since, not the whole list)");
                        whole = true;
                    }
                    held = Some(revision).filter(|r| *r > 0);
                    servers.succeeded();
                    let before = tx.borrow().as_ref().map(|a| (a.refused.clone(), a.skipped.clone()));
                    if delta {
                        // A keepalive changes nothing: the loops that follow the
                        // assignment (tasks, network, volumes) are not woken for it.
                        tx.send_if_modified(|a| {
                            let Some(a) = a else { return false };
                            let news = changed.news_for(&removed, a);
                            a.apply(changed, removed);
                            news
                        });
                    } else {
                        tx.send_if_modified(|a| {
                            let news = a.as_ref() != Some(&changed);
                            *a = Some(changed);
                            news
                        });
                        whole = true;
                    }
                    if let Some(now) = tx.borrow().as_ref() {
                        if before != Some((now.refused.clone(), now.skipped.clone())) {
                            for (task, why) in &now.refused {
                                warn!(%server, %task, "task watch: this agent cannot run the task: {why}");
                            }
                            for why in &now.skipped {
                                warn!(%server, "task watch: left out of the assignment: {why}");
                            }
                        }
                    }
                    if tx.is_closed() {
                        return;
                    }
                }
            }
            Err(status) => warn!(%server, "task watch: {}", reason(&status)),
        }
        servers.failed().await;
    }
}

/// Sends the latest reports from `wanted` until a server takes them, then
/// says so on `taken`; newer reports replace older ones not yet sent.
pub async fn report(
    mut servers: Servers,
    node_id: String,
    mut wanted: watch::Receiver<Vec<TaskReport>>,
    taken: watch::Sender<Vec<TaskReport>>,
) {
    while wanted.changed().await.is_ok() {
        loop {
            let reports = wanted.borrow_and_update().clone();
            let request = ReportTasksRequest {
                node_id: node_id.clone(),
                tasks: reports.iter().cloned().map(Into::into).collect(),
            };
            match agent(&servers).report_tasks(request).await {
                Ok(_) => {
                    servers.succeeded();
                    if taken.send(reports).is_err() {
                        return;
                    }
                    break;
                }
                Err(status) => {
                    warn!(server = servers.current(), "reporting tasks: {}", reason(&status));
                    servers.failed().await;
                }
            }
        }
    }
}

/// Tells the cluster the node's volumes, once; false when no server took them.
pub async fn report_volumes(servers: &mut Servers, node_id: &str, volumes: &[NodeVolume]) -> bool {
    let request = ReportVolumesRequest {
        node_id: node_id.to_owned(),
        volumes: volumes.iter().cloned().map(Into::into).collect(),
    };
    match agent(servers).report_volumes(request).await {
        Ok(_) => {
            servers.succeeded();
            true
        }
        Err(status) => {
            warn!(server = servers.current(), "reporting volumes: {}", reason(&status));
            if status.code() == tonic::Code::Unavailable {
                servers.failed().await;
            }
            false
        }
    }
}
