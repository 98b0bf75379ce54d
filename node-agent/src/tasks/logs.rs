//! The `Node` gRPC service this agent serves on its advertise address: the
//! logs of its task containers, for `berthctl service logs` (a server calls
//! every node that runs the service and merges the streams), and the
//! removal of a named volume, for `berthctl volume rm`.
//!
//! Logs are read from the files the containers' monitors write, so a
//! stream costs the containers nothing. A follow stream lists the node's
//! containers every `FOLLOW_POLL` to pick up tasks that start later, and
//! keeps reading a task across restarts (a restart keeps the container and
//! appends to its log; after a rotation the follower notices the new inode
//! and reads the new file from the top).
//!
//! A stream is a task on the agent's runtime, not a thread: each poll
//! borrows a thread of tokio's blocking pool for its file reads (a large
//! log never stalls the task worker) and gives it back, so an idle
//! follower costs a timer and its open files. A caller may hold at most
//! `FOLLOWS_PER_CALLER` streams here; a `--tail` reads only the ends of
//! the files (`logs::read`).

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::model::validate_service_name;
use berth_proto::pb::agent::node_server::Node;
use berth_proto::pb::agent::{RemoveVolumeReply, RemoveVolumeRequest, TaskLogLine, TaskLogLines, TaskLogsRequest};
use berth_proto::quota::{Held, Quota};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::runtime::logs::{self, Follower, LogLine, Stream};
use crate::runtime::{Container, Runtime, RuntimeError};

const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Bytes of text per message (at least one line), so a long log is not
/// one huge message.
const BATCH_BYTES: usize = 1 << 20;
/// Log streams one caller (a server, passing on its users' calls) may
/// have open on this node at once.
pub const FOLLOWS_PER_CALLER: usize = 256;

#[derive(Debug, Clone)]
pub struct NodeApi {
    runtime: Runtime,
    streams: Quota,
}

impl NodeApi {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime, streams: Quota::new("log streams", FOLLOWS_PER_CALLER) }
    }
}

type Lines = Result<TaskLogLines, Status>;

#[tonic::async_trait]
impl Node for NodeApi {
    type TaskLogsStream = Held<ReceiverStream<Lines>>;

    async fn task_logs(&self, req: Request<TaskLogsRequest>) -> Result<Response<Self::TaskLogsStream>, Status> {
        let caller = server(&req, "read a node's logs")?;
        let permit = self.streams.take(&caller)?;
        let req = req.into_inner();
        validate_service_name(&req.service).map_err(|e| Status::invalid_argument(format!("service {e}")))?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(stream(self.runtime.clone(), req, tx));
        Ok(Response::new(Held::new(ReceiverStream::new(rx), permit)))
    }

    async fn remove_volume(&self, req: Request<RemoveVolumeRequest>) -> Result<Response<RemoveVolumeReply>, Status> {
        server(&req, "remove a node's volumes")?;
        let name = req.into_inner().name;
        let runtime = self.runtime.clone();
        let done = tokio::task::spawn_blocking(move || {
            let removed = runtime.remove_volume(&name)?;
            Ok::<_, RuntimeError>((removed, runtime.node_volumes()?))
        });
        let (removed, volumes) = match done.await.map_err(|e| Status::internal(e.to_string()))? {
            Ok(done) => done,
            Err(e @ RuntimeError::VolumeInUse { .. }) => return Err(Status::failed_precondition(e.to_string())),
            Err(e) => return Err(Status::internal(e.to_string())),
        };
        Ok(Response::new(RemoveVolumeReply { removed, volumes: volumes.into_iter().map(Into::into).collect() }))
    }
}

/// Only the cluster's servers call here (they check users' rights):
/// the caller's name, or why not.
fn server<T>(req: &Request<T>, what: &str) -> Result<String, Status> {
    match req.extensions().get::<berth_proto::tls::Caller>() {
        Some(berth_proto::tls::Caller(Some(id))) if id.role == berth_proto::pki::Role::Server => Ok(id.to_string()),
        Some(berth_proto::tls::Caller(Some(id))) => {
            Err(Status::permission_denied(format!("only servers may {what}, not {id}")))
        }
        _ => Err(Status::unauthenticated(format!("to {what} needs a server's certificate"))),
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

/// `lines` of `task` as messages of about `BATCH_BYTES`.
fn batches(task: &str, lines: Vec<LogLine>) -> Vec<TaskLogLines> {
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
    let mut out = Vec::new();
    let mut batch = TaskLogLines::default();
    let mut size = 0;
    for line in lines.into_iter().map(wire) {
        size += line.text.len() + line.time.len() + 16;
        batch.lines.push(line);
        if size >= BATCH_BYTES {
            out.push(std::mem::take(&mut batch));
            size = 0;
        }
    }
    if !batch.lines.is_empty() {
        out.push(batch);
    }
    out
}

/// Sends `messages`; false once the caller has gone.
async fn send(tx: &mpsc::Sender<Lines>, messages: Vec<TaskLogLines>) -> bool {
    for m in messages {
        if tx.send(Ok(m)).await.is_err() {
            return false;
        }
    }
    true
}

type Followers = BTreeMap<String, Follower>;

/// What is kept of one task's log (the last `tail` lines when given), and
/// a follower from its end. Follow from the end as it is now, then read
/// what is kept: a line written in between may come twice, but none is lost.
fn first_read(dir: &std::path::Path, tail: Option<usize>) -> (Follower, std::io::Result<Vec<LogLine>>) {
    let follower = Follower::from_end(dir).unwrap_or_else(|_| Follower::from_start(dir));
    (follower, logs::read(dir, tail))
}

/// What each task wrote since the last poll; tasks that started since
/// are followed from their start, and those removed are dropped.
fn poll(runtime: &Runtime, service: &str, mut followers: Followers) -> (Followers, Vec<TaskLogLines>) {
    let now = containers(runtime, service);
    followers.retain(|task, _| now.contains_key(task));
    for (task, dir) in &now {
        followers.entry(task.clone()).or_insert_with(|| Follower::from_start(dir));
    }
    let mut out = Vec::new();
    for (task, follower) in &mut followers {
        out.extend(batches(task, follower.poll().unwrap_or_default()));
    }
    (followers, out)
}

async fn stream(runtime: Runtime, req: TaskLogsRequest, tx: mpsc::Sender<Lines>) {
    let tail = req.has_tail.then_some(req.tail as usize);
    let (rt, service) = (runtime.clone(), req.service.clone());
    let Ok(tasks) = tokio::task::spawn_blocking(move || containers(&rt, &service)).await else { return };
    // One task's log at a time, sent before the next is read: memory is
    // bounded by one log, not by the whole service's.
    let mut followers = Followers::new();
    for (task, dir) in tasks {
        let read = tokio::task::spawn_blocking(move || first_read(&dir, tail)).await;
        let (follower, lines) = match read {
            Ok((follower, Ok(lines))) => (follower, lines),
            Ok((_, Err(e))) => {
                let _ = tx.send(Err(Status::internal(format!("reading the logs of {task}: {e}")))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(Status::internal(format!("reading logs: {e}")))).await;
                return;
            }
        };
        if !send(&tx, batches(&task, lines)).await {
            return;
        }
        followers.insert(task, follower);
    }
    if !req.follow {
        return;
    }
    let mut tick = tokio::time::interval(FOLLOW_POLL);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tick.tick() => {}
        }
        let (rt, service) = (runtime.clone(), req.service.clone());
        let Ok((kept, lines)) = tokio::task::spawn_blocking(move || poll(&rt, &service, followers)).await else {
            return;
        };
        followers = kept;
        if !send(&tx, lines).await {
            return;
        }
    }
}
