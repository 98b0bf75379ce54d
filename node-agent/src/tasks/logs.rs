//! The `Node` gRPC service this agent serves on its advertise address: the
//! logs of its task containers, for `berthctl service logs` (a server calls
//! every node that runs the service and merges the streams).
//!
//! Logs are read from the files the containers' monitors write, so a
//! stream costs the containers nothing. A follow stream lists the node's
//! containers every `FOLLOW_POLL` to pick up tasks that start later, and
//! keeps reading a task across restarts (a restart keeps the container and
//! appends to its log; after a rotation the follower notices the new inode
//! and reads the new file from the top).
//!
//! File reads block, and the agent runs on one thread; each stream runs on
//! tokio's blocking pool, so a large log never stalls the task worker.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::model::validate_name;
use berth_proto::pb::agent::node_server::Node;
use berth_proto::pb::agent::{TaskLogLine, TaskLogLines, TaskLogsRequest};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::runtime::logs::{self, Follower, LogLine, Stream};
use crate::runtime::{Container, Runtime};

const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Bytes of text per message (at least one line), so a long log is not
/// one huge message.
const BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct NodeApi {
    pub runtime: Runtime,
}

#[tonic::async_trait]
impl Node for NodeApi {
    type TaskLogsStream = ReceiverStream<Result<TaskLogLines, Status>>;

    async fn task_logs(&self, req: Request<TaskLogsRequest>) -> Result<Response<Self::TaskLogsStream>, Status> {
        // Only the cluster's servers read logs here (they check users' rights).
        match req.extensions().get::<berth_proto::tls::Caller>() {
            Some(berth_proto::tls::Caller(Some(id))) if id.role == berth_proto::pki::Role::Server => {}
            Some(berth_proto::tls::Caller(Some(id))) => {
                return Err(Status::permission_denied(format!("only servers may read a node's logs, not {id}")))
            }
            _ => return Err(Status::unauthenticated("reading a node's logs needs a server's certificate")),
        }
        let req = req.into_inner();
        validate_name(&req.service).map_err(|e| Status::invalid_argument(format!("service {e}")))?;
        let (tx, rx) = mpsc::channel(8);
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || stream(&runtime, &req, &tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The task a container runs for `service`, if it runs one.
fn task_of<'a>(c: &'a Container, service: &str) -> Option<&'a str> {
    let task = c.config.task.as_deref()?;
    (task.split_once('.')?.0 == service).then_some(task)
}

fn containers(runtime: &Runtime, service: &str) -> BTreeMap<String, std::path::PathBuf> {
    let list = runtime.list().unwrap_or_default();
    list.iter().filter_map(|c| Some((task_of(c, service)?.to_owned(), c.dir.clone()))).collect()
}

/// Sends `lines` of `task` in batches; false once the caller has gone.
fn send(tx: &mpsc::Sender<Result<TaskLogLines, Status>>, task: &str, lines: Vec<LogLine>) -> bool {
    let wire = |l: LogLine| TaskLogLine {
        task: task.to_owned(),
        stream: match l.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
        .into(),
        time: l.time,
        text: l.text,
    };
    let mut batch = TaskLogLines::default();
    let mut size = 0;
    for line in lines.into_iter().map(wire) {
        size += line.text.len() + line.time.len() + 16;
        batch.lines.push(line);
        if size >= BATCH_BYTES {
            if tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                return false;
            }
            size = 0;
        }
    }
    batch.lines.is_empty() || tx.blocking_send(Ok(batch)).is_ok()
}

fn stream(runtime: &Runtime, req: &TaskLogsRequest, tx: &mpsc::Sender<Result<TaskLogLines, Status>>) {
    let tail = req.has_tail.then_some(req.tail as usize);
    let mut followers: BTreeMap<String, Follower> = BTreeMap::new();
    for (task, dir) in containers(runtime, &req.service) {
        // Follow from the end as it is now, then read what is kept: a line
        // written in between may come twice, but none is lost.
        let follower = Follower::from_end(&dir).unwrap_or_else(|_| Follower::from_start(&dir));
        let lines = match logs::read(&dir, tail) {
            Ok(lines) => lines,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!("reading the logs of {task}: {e}"))));
                return;
            }
        };
        if !send(tx, &task, lines) {
            return;
        }
        followers.insert(task, follower);
    }
    if !req.follow {
        return;
    }
    while !tx.is_closed() {
        std::thread::sleep(FOLLOW_POLL);
        let now = containers(runtime, &req.service);
        followers.retain(|task, _| now.contains_key(task));
        for (task, dir) in &now {
            followers.entry(task.clone()).or_insert_with(|| Follower::from_start(dir));
        }
        for (task, follower) in &mut followers {
            if !send(tx, task, follower.poll().unwrap_or_default()) {
                return;
            }
        }
    }
}
