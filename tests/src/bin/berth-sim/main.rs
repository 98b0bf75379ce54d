//! berth-sim: how far berth's control plane goes. Real berth-server
//! processes (3 by default, on loopback) and, in this one process, NODES
//! simulated agents over the real agent API, with no containers.
//!
//! Each simulated node is admitted with the worker token (a certificate
//! of its own), registers, heartbeats at the agents' interval, watches its
//! tasks, and reports each one running a moment after it is assigned
//! (failed, at `--fail-rate`), and shut down once it leaves its list, as
//! an agent does. Then the scenarios run, each with a report:
//!
//! 1. join: NODES nodes admitted, registered and ready;
//! 2. place: services of TASKS tasks in all created, until every task is
//!    reported running (tasks per second, from the first create);
//! 3. one change: one more task of a small service, then one replica of a
//!    large service failed and running again; the bytes every node's watch
//!    received for each (the watches' keepalives left out; the summary
//!    takes the larger);
//! 4. steady state: a minute with nothing to do; the servers' CPU, the
//!    Raft writes and the watch bytes it costs (heartbeats and keepalives);
//! 5. away and back: a tenth of the nodes stop beating and watching, as
//!    hosts cut off would; the time until the cluster has them down and
//!    their tasks running on other nodes, then until they are ready again;
//! 6. rolling update: a large service's spec changed, a tenth of its
//!    replicas replaced at a time; the time until its rollout completes;
//! 7. failover: the leader killed (-9) at full load; the time until the
//!    cluster takes a write again.
//!
//! The last line sums it up for `bench/scale.sh`. Figures come from the
//! servers' `/metrics` and `cluster status`, and from what the simulated
//! nodes received.

mod watched;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use berth_proto::client::{Peer, Servers, Settings, Tls};
use berth_proto::pb::agent::agent_client::AgentClient;
use berth_proto::pb::agent::{
    HeartbeatRequest, NodeCapacity, RegisterRequest, ReportTasksRequest, TaskReport, WatchTasksRequest,
};
use berth_proto::pb::cluster::cluster_client::ClusterClient;
use berth_proto::pb::cluster::{
    CreateServiceRequest, Figures, GetServiceRequest, ScaleServiceRequest, ServiceSpec, UpdateConfig,
    UpdateServiceRequest,
};
use berth_proto::pki::Role;
use berth_tests::{client, keys, spec, wait_for, Cluster};
use clap::Parser;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use watched::{Received, WatchCodec};

#[derive(Debug, Parser)]
struct Args {
    /// Simulated nodes
    nodes: usize,
    /// Tasks to place over them
    tasks: usize,
    /// berth-servers (separate processes)
    #[arg(long, default_value = "3")]
    servers: usize,
    /// Replicas per service (the tasks are spread over TASKS / this services)
    #[arg(long, default_value = "1000")]
    per_service: usize,
    /// How often each node heartbeats (the agent's default)
    #[arg(long, default_value = "1000")]
    heartbeat_ms: u64,
    /// A task is reported running this long after its node first sees it
    #[arg(long, default_value = "200")]
    run_after_ms: u64,
    /// The share of tasks reported failed instead of running (0 to 1)
    #[arg(long, default_value = "0")]
    fail_rate: f64,
    /// Nodes being admitted at once
    #[arg(long, default_value = "32")]
    admit_at_once: usize,
    /// The cluster network: every task takes an address of its node's
    /// subnet (nothing is sent to them; 198.18.0.0/15 is the range
    /// tests may use, DESIGN.md)
    #[arg(long, default_value = "198.18.0.0/15")]
    cluster_cidr: String,
    /// Each node's subnet: /25 holds 125 tasks a node and 1024 nodes in
    /// the /15; 5000 nodes need /28 (13 tasks a node)
    #[arg(long, default_value = "25")]
    node_subnet_prefix: u8,
    /// Extra berth-server flag (repeatable), e.g. --server-arg=--snapshot-logs=2000
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Leave the failover out
    #[arg(long)]
    no_failover: bool,
    /// Ask for whole lists, as an agent of the release before deltas does
    #[arg(long)]
    whole_lists: bool,
    /// Ask for deltas but whole services, as an agent of the release
    /// before replica deltas does
    #[arg(long)]
    whole_services: bool,
    /// Start every watch from the whole list, as an agent of the release
    /// before resumption does when its server goes
    #[arg(long)]
    no_resume: bool,
    /// Take the part every node is sent alike copied into each message, as
    /// an agent of the release before the shared part does
    #[arg(long)]
    not_shared: bool,
    /// Services being created at once (1: one after the other, as one
    /// script does; more, as several users or a stack deploy do)
    #[arg(long, default_value = "1")]
    creates_at_once: usize,
}

/// One simulated node as the scenarios steer and see it.
#[derive(Debug, Default)]
struct Slot {
    /// Cut off: no heartbeats, no watch (its tasks it keeps, as an agent does).
    away: std::sync::atomic::AtomicBool,
    /// The tasks it holds, and of those the ones it reported running.
    held: AtomicU64,
    running: AtomicI64,
    /// Report one of its running tasks failed (once).
    fail_one: std::sync::atomic::AtomicBool,
}

/// What the simulated nodes did and received, summed over all of them.
#[derive(Debug, Default)]
struct Counters {
    registered: AtomicU64,
    /// Nodes whose registration was refused.
    refused: AtomicU64,
    heartbeats: AtomicU64,
    heartbeat_errors: AtomicU64,
    /// Heartbeat round trips, in microseconds.
    heartbeat_us: Mutex<Vec<u32>>,
    watch_messages: AtomicU64,
    watch_bytes: AtomicU64,
    /// Messages that differed from the node's last one (not keepalives).
    change_messages: AtomicU64,
    change_bytes: AtomicU64,
    assigned: AtomicI64,
    /// Tasks that failed and were started again (`Slot::fail_one`).
    restarted: AtomicU64,
    running: AtomicI64,
    reports: AtomicU64,
    report_errors: AtomicU64,
    watch_errors: AtomicU64,
    /// Watches that started on another server with what changed since, not the whole list.
    watch_resumed: AtomicU64,
}

fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A node's WireGuard key: 32 bytes, base64, unique to it (never used).
fn fake_key(i: usize) -> String {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Admits `n` nodes, `at_once` at a time (on this thread: the admission's
/// future is not `Send`), and starts each one as soon as it has its certificate.
async fn admit_all(slots: &[Arc<Slot>], addrs: &[String], token: &str, args: &Arc<Args>, c: &Arc<Counters>) {
    let n = slots.len();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let local = tokio::task::LocalSet::new();
    let turns = Arc::new(tokio::sync::Semaphore::new(args.admit_at_once.max(1)));
    for i in 0..n {
        let (tx, turns, addrs, token) = (tx.clone(), turns.clone(), addrs.to_vec(), token.to_owned());
        local.spawn_local(async move {
            let Ok(_turn) = turns.acquire_owned().await else { return };
            let admitted = berth_proto::join::admit(&addrs, &token, Role::Worker, Duration::from_secs(300)).await;
            let _ = tx.send((i, admitted));
        });
    }
    drop(tx);
    local
        .run_until(async {
            while let Some((i, admitted)) = rx.recv().await {
                let (addrs, args, c, slot) = (addrs.to_vec(), args.clone(), c.clone(), slots[i].clone());
                tokio::spawn(async move {
                    let run = async { node(i, admitted?, addrs, args, c.clone(), slot).await };
                    if let Err(e) = run.await {
                        if count(&c.refused) <= 1 {
                            eprintln!("node {i}: {e:#}");
                        }
                    }
                });
            }
        })
        .await;
}

/// One simulated node, for as long as the process runs.
async fn node(
    i: usize,
    (id, creds): (String, berth_proto::pki::Credentials),
    addrs: Vec<String>,
    args: Arc<Args>,
    c: Arc<Counters>,
    slot: Arc<Slot>,
) -> Result<()> {
    let tls = Tls::new(&creds)?;
    let root = tls.identity().map(|i| i.issuer).unwrap_or_default();
    let servers =
        Servers::new(&addrs, &Settings::calls(Duration::from_secs(10)), &tls.connector(Peer::Server))?.spread(&id);
    let request = RegisterRequest {
        node_id: id.clone(),
        name: format!("sim-{i}"),
        // Only a string to the cluster: nothing is sent there.
        advertise_address: format!("198.18.{}.{}:7500", i / 250, i % 250 + 1),
        capacity: Some(NodeCapacity { cpu_millis: 256_000, memory_bytes: 1 << 40 }),
        wireguard_public_key: fake_key(i),
        wireguard_port: 51820,
        reads: berth_proto::model::AGENT_READS,
        ..Default::default()
    };
    let mut s = servers.clone();
    loop {
        match agent(&s).register(request.clone()).await {
            Ok(_) => break,
            // Refused, or no subnet left for it (the cluster network is
            // full: 1024 nodes of /25 in a /15): it would never be ready.
            Err(e) if matches!(e.code(), tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                bail!("registration refused: {}", e.message())
            }
            Err(_) => s.failed().await,
        }
    }
    c.registered.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(heartbeats(servers.clone(), id.clone(), root, args.heartbeat_ms, c.clone(), slot.clone()));
    watch(servers, id, args, c, slot).await;
    Ok(())
}

fn agent(servers: &Servers) -> AgentClient<Channel> {
    let max = berth_proto::client::MAX_MESSAGE;
    AgentClient::new(servers.channel()).max_decoding_message_size(max).max_encoding_message_size(max)
}

async fn heartbeats(
    mut servers: Servers,
    node_id: String,
    root: String,
    every_ms: u64,
    c: Arc<Counters>,
    slot: Arc<Slot>,
) {
    let own = Duration::from_millis(every_ms);
    let mut every = own;
    let mut tick = tokio::time::interval(every);
    // Spread the nodes' beats over the period, as agents started at different times would.
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % every_ms)).await;
    loop {
        tick.tick().await;
        if slot.away.load(Ordering::Relaxed) {
            continue;
        }
        let started = Instant::now();
        let beat = HeartbeatRequest { node_id: node_id.clone(), root: root.clone() };
        match agent(&servers).heartbeat(beat).await {
            Ok(reply) => {
                // The period a large cluster asks for, as the agent keeps it.
                let asked = reply.get_ref().period(own);
                if asked != every {
                    every = asked;
                    tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                }
                c.heartbeats.fetch_add(1, Ordering::Relaxed);
                let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                c.heartbeat_us.lock().unwrap_or_else(|p| p.into_inner()).push(us);
            }
            Err(_) => {
                c.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                servers.failed().await;
            }
        }
    }
}

/// A task as the node has it: when it is due to be reported, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Starting(Instant),
    Reported,
}

/// Watches the node's tasks, fails over between servers, and reports.
async fn watch(mut servers: Servers, node_id: String, args: Arc<Args>, c: Arc<Counters>, slot: Arc<Slot>) {
    let mut held: HashMap<String, Held> = HashMap::new();
    let mut last_hash = 0u64;
    // The revision of the list the node holds, to resume from on another server.
    let mut revision = 0;
    let run_after = Duration::from_millis(args.run_after_ms);
    loop {
        while slot.away.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let request = WatchTasksRequest {
            node_id: node_id.clone(),
            deltas: !args.whole_lists,
            replica_deltas: !args.whole_services,
            resume: if args.no_resume { 0 } else { revision },
            shared: !args.not_shared,
        };
        let mut stream = match watch_tasks(&servers, request).await {
            Ok(s) => s,
            Err(_) => {
                c.watch_errors.fetch_add(1, Ordering::Relaxed);
                servers.failed().await;
                continue;
            }
        };
        loop {
            let next_due = held.values().filter_map(|h| match h {
                Held::Starting(at) => Some(*at + run_after),
                Held::Reported => None,
            });
            // At most 200 ms, to see the node sent away.
            let wait =
                next_due.min().map_or(Duration::from_secs(3600), |at| at.saturating_duration_since(Instant::now()));
            let wait = wait.min(Duration::from_millis(200));
            if slot.away.load(Ordering::Relaxed) {
                break;
            }
            tokio::select! {
                message = tokio::time::timeout(Duration::from_secs(15), stream.message()) => {
                    let Ok(Ok(Some(mut m))) = message else {
                        c.watch_errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    // As an agent merges the shared part: its own peer left out.
                    m.message.peers.retain(|p| p.node_id != node_id);
                    m.message.removed_peers.retain(|p| *p != node_id);
                    revision = m.message.revision;
                    let gone = received(&m, &mut held, &mut last_hash, &c, &slot);
                    slot.held.store(held.len() as u64, Ordering::Relaxed);
                    if !gone.is_empty() {
                        let reports = gone.into_iter().map(|id| report(id, "shutdown")).collect();
                        send(&servers, &node_id, reports, &c).await;
                    }
                }
                () = tokio::time::sleep(wait) => {
                    if slot.fail_one.swap(false, Ordering::Relaxed) {
                        // It fails, and is started again as an agent restarts a task.
                        let running = held.iter().find(|(id, h)| **h == Held::Reported && id.starts_with("sim"));
                        if let Some(id) = running.map(|(id, _)| id.clone()) {
                            if send(&servers, &node_id, vec![report(id.clone(), "failed")], &c).await {
                                held.insert(id, Held::Starting(Instant::now()));
                                ran(&c, &slot, -1);
                                c.restarted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    let now = Instant::now();
                    let due: Vec<String> = held
                        .iter()
                        .filter(|(_, h)| matches!(h, Held::Starting(at) if *at + run_after <= now))
                        .map(|(id, _)| id.clone())
                        .collect();
                    if due.is_empty() {
                        continue;
                    }
                    let reports = due
                        .iter()
                        .map(|id| report(id.clone(), if rand::random::<f64>() < args.fail_rate { "failed" } else { "running" }))
                        .collect();
                    if send(&servers, &node_id, reports, &c).await {
                        for id in due {
                            held.insert(id, Held::Reported);
                            ran(&c, &slot, 1);
                        }
                    }
                }
            }
        }
        servers.failed().await;
    }
}

/// Opens the node's watch, read as `watched` reads it.
async fn watch_tasks(
    servers: &Servers,
    request: WatchTasksRequest,
) -> Result<tonic::Streaming<Received>, tonic::Status> {
    let mut grpc =
        tonic::client::Grpc::new(servers.channel()).max_decoding_message_size(berth_proto::client::MAX_MESSAGE);
    grpc.ready().await.map_err(|e| tonic::Status::unknown(format!("not ready: {e}")))?;
    let path = PathAndQuery::from_static("/berth.agent.v1.Agent/WatchTasks");
    Ok(grpc.server_streaming(tonic::Request::new(request), path, WatchCodec).await?.into_inner())
}

/// Takes a message in: counts it, notes new tasks; returns those gone.
fn received(
    r: &Received,
    held: &mut HashMap<String, Held>,
    last_hash: &mut u64,
    c: &Counters,
    slot: &Slot,
) -> Vec<String> {
    let (m, bytes) = (&r.message, r.bytes);
    c.watch_messages.fetch_add(1, Ordering::Relaxed);
    c.watch_bytes.fetch_add(bytes, Ordering::Relaxed);
    if m.tasks_whole {
        c.watch_resumed.fetch_add(1, Ordering::Relaxed);
    }
    // A delta with nothing in it is a keepalive; a whole list is a
    // keepalive when it repeats the last one.
    let news = if m.delta {
        let removed = m.removed_tasks.len() + m.removed_peers.len() + m.removed_services.len();
        !m.tasks.is_empty() || !m.peers.is_empty() || !m.services.is_empty() || removed > 0
    } else {
        std::mem::replace(last_hash, r.hash) != r.hash
    };
    if news {
        c.change_messages.fetch_add(1, Ordering::Relaxed);
        c.change_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    let now = Instant::now();
    for t in &m.tasks {
        if !held.contains_key(&t.id) {
            held.insert(t.id.clone(), Held::Starting(now));
            c.assigned.fetch_add(1, Ordering::Relaxed);
        }
    }
    let gone: Vec<String> = if m.delta && !m.tasks_whole {
        m.removed_tasks.iter().filter(|id| held.contains_key(*id)).cloned().collect()
    } else {
        let listed: std::collections::HashSet<&str> = m.tasks.iter().map(|t| t.id.as_str()).collect();
        held.keys().filter(|id| !listed.contains(id.as_str())).cloned().collect()
    };
    for id in &gone {
        if held.remove(id) == Some(Held::Reported) {
            ran(c, slot, -1);
        }
        c.assigned.fetch_sub(1, Ordering::Relaxed);
    }
    gone
}

/// `n` more (or fewer) tasks reported running, by the node of `slot`.
fn ran(c: &Counters, slot: &Slot, n: i64) {
    c.running.fetch_add(n, Ordering::Relaxed);
    slot.running.fetch_add(n, Ordering::Relaxed);
}

/// Creates the service as a user would: again (on the next server, from
/// the `k`th) while the cluster is busy.
async fn create(addrs: &[String], k: usize, spec: ServiceSpec) -> Result<()> {
    let what = format!("creating {}", spec.name);
    retry(&what, addrs, k, async |mut c, tries| {
        let request = CreateServiceRequest { spec: Some(spec.clone()), no_resolve_image: true };
        match c.create_service(request).await {
            // An earlier try took effect after all.
            Err(e) if e.code() == tonic::Code::AlreadyExists && tries > 0 => Ok(()),
            r => r.map(drop),
        }
    })
    .await
}

/// Calls `call` (with a client of the next server each time, from the
/// `k`th, and the tries so far) until it succeeds, as a user would while
/// the cluster is busy: at most 21 tries, a second apart.
async fn retry(
    what: &str,
    addrs: &[String],
    k: usize,
    mut call: impl AsyncFnMut(ClusterClient<Channel>, usize) -> Result<(), tonic::Status>,
) -> Result<()> {
    let mut tries = 0;
    while let Err(e) = call(client(&addrs[(k + tries) % addrs.len()]), tries).await {
        tries += 1;
        eprintln!("{what}: {:?}: {}", e.code(), e.message());
        if tries > 20 || e.code() == tonic::Code::InvalidArgument {
            bail!("{what}: {e}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

fn report(id: String, state: &str) -> TaskReport {
    TaskReport { id, state: state.into(), ..Default::default() }
}

/// Sends reports; whether a server took them.
async fn send(servers: &Servers, node_id: &str, tasks: Vec<TaskReport>, c: &Counters) -> bool {
    if tasks.is_empty() {
        return true;
    }
    let request = ReportTasksRequest { node_id: node_id.into(), tasks };
    match agent(servers).report_tasks(request).await {
        Ok(_) => {
            c.reports.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(_) => {
            c.report_errors.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// The leader's figures, through any server.
async fn figures(cluster: &mut Cluster) -> Option<Figures> {
    cluster.status().await.ok()?.figures
}

/// What `read` makes of `/proc/PID/FILE` of each running server.
fn per_server<T>(cluster: &Cluster, file: &str, read: impl Fn(&str) -> Option<T>) -> Vec<T> {
    let pids = cluster.servers.iter().filter_map(|s| s.pid());
    pids.filter_map(|pid| read(&std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?)).collect()
}

/// Peak resident memory of each running server, in MiB.
fn server_rss_mb(cluster: &Cluster) -> Vec<f64> {
    per_server(cluster, "status", |status| {
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    })
}

/// CPU time (user and system) the running servers have used, in seconds.
fn servers_cpu_s(cluster: &Cluster) -> f64 {
    let ticks = 100.0; // USER_HZ: 100 on every Linux this runs on
    let used = per_server(cluster, "stat", |stat| {
        // Fields after the command (which may hold spaces), from the 3rd: utime is the 14th, stime the 15th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
        Some((utime + stime) / ticks)
    });
    used.iter().sum()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    if args.nodes == 0 {
        bail!("NODES must be at least 1");
    }
    let mut server_args: Vec<String> = vec![
        "--cluster-cidr".into(),
        args.cluster_cidr.clone(),
        "--node-subnet-prefix".into(),
        args.node_subnet_prefix.to_string(),
    ];
    server_args.extend(args.server_args.iter().cloned());
    let flags: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start(args.servers, &flags).await?;
    let addrs = cluster.addrs();
    let token = keys().worker_token.context("no worker token")?;
    let c = Arc::new(Counters::default());
    let slots: Vec<Arc<Slot>> = (0..args.nodes).map(|_| Arc::default()).collect();

    // 1. Join.
    let started = Instant::now();
    admit_all(&slots, &addrs, &token, &args, &c).await;
    let n = args.nodes as u64;
    wait_for(Duration::from_secs(600), "every node ready", async || {
        if count(&c.refused) > 0 {
            return Some(());
        }
        let f = figures(&mut cluster).await?;
        (f.nodes.get("ready").copied() == Some(n)).then_some(())
    })
    .await?;
    if count(&c.refused) > 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        bail!("{} of {n} nodes were refused registration (the first said why, above)", count(&c.refused));
    }
    let join_s = started.elapsed().as_secs_f64();
    println!("join: {n} nodes ready in {join_s:.1} s ({:.0} nodes/s)", n as f64 / join_s);

    // 2. Place.
    let per = args.per_service.max(1);
    let mut left = args.tasks;
    let started = Instant::now();
    let mut k = 0;
    let (mut creating, mut took) = (FuturesUnordered::new(), Vec::new());
    while left > 0 {
        let replicas = left.min(per);
        let mut s = spec(&format!("sim{k}"));
        s.replicas = replicas as i64;
        if creating.len() >= args.creates_at_once.max(1) {
            took.push(creating.next().await.context("no create under way")??);
        }
        let addrs = &addrs;
        creating.push(async move {
            let at = Instant::now();
            create(addrs, k, s).await.map(|()| at.elapsed().as_millis() as u32)
        });
        left -= replicas;
        k += 1;
    }
    while let Some(done) = creating.next().await {
        took.push(done?);
    }
    took.sort_unstable();
    println!(
        "  created in {:.1} s, each answered in {:.2} s (median), {:.2} s (max)",
        started.elapsed().as_secs_f64(),
        percentile(&took, 0.5),
        percentile(&took, 1.0)
    );
    let total = args.tasks as u64;
    let mut last_print = Instant::now();
    wait_for(Duration::from_secs(3600), "every task running", async || {
        let f = figures(&mut cluster).await?;
        let running = f.tasks.get("running").copied().unwrap_or(0);
        if last_print.elapsed() > Duration::from_secs(10) {
            println!("  {:.0} s: {running} running, {:?}", started.elapsed().as_secs_f64(), f.tasks);
            last_print = Instant::now();
        }
        (running >= total).then_some(())
    })
    .await?;
    let place_s = started.elapsed().as_secs_f64();
    let tasks_per_s = total as f64 / place_s;
    println!("place: {total} tasks in {k} services running in {place_s:.1} s ({tasks_per_s:.0} tasks/s)");
    let f = figures(&mut cluster).await.unwrap_or_default();
    println!(
        "  leader: {} proposals, commit {:.1} ms mean, {} watches, snapshot {} bytes",
        f.proposals, f.commit_ms_mean, f.watch_streams, f.snapshot_bytes
    );

    // 3. One change: the bytes each node receives for one task placed elsewhere.
    let probe = spec("probe");
    create(&addrs, 0, probe).await?;
    let settle = async |cluster: &mut Cluster, want: u64| {
        wait_for(Duration::from_secs(120), "the probe task running", async || {
            let f = figures(cluster).await?;
            (f.tasks.get("running").copied().unwrap_or(0) >= want).then_some(())
        })
        .await
    };
    settle(&mut cluster, total + 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = count(&c.change_bytes);
    let scale = ScaleServiceRequest { name: "probe".into(), replicas: 2 };
    retry("scaling probe", &addrs, 0, async |mut c, _| c.scale_service(scale.clone()).await.map(drop)).await?;
    settle(&mut cluster, total + 2).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let small_change = (count(&c.change_bytes) - before) as f64 / n as f64;
    println!(
        "one change: {small_change:.0} bytes to each node (all its watch's messages for one task placed and running)"
    );
    // And in a large service: one of its replicas fails and starts again.
    let (restarted, before) = (count(&c.restarted), count(&c.change_bytes));
    let Some(victim) = slots.iter().find(|s| s.held.load(Ordering::Relaxed) > 0) else { bail!("no node holds a task") };
    victim.fail_one.store(true, Ordering::Relaxed);
    wait_for(Duration::from_secs(120), "the failed replica running again", async || {
        let f = figures(&mut cluster).await?;
        let failed = count(&c.restarted) > restarted;
        (failed && f.tasks.get("running").copied().unwrap_or(0) >= total + 2).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let large_change = (count(&c.change_bytes) - before) as f64 / n as f64;
    println!(
        "one change in a service of {} replicas: {large_change:.0} bytes to each node (one replica failed and running again)",
        args.per_service.min(args.tasks)
    );
    let node_bytes_per_change = small_change.max(large_change);

    // 4. Steady state: a minute with nothing to do (before nodes go away and
    // come back, after which replicas move back to them for a while).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = (servers_cpu_s(&cluster), figures(&mut cluster).await.unwrap_or_default(), count(&c.watch_bytes));
    let minute = Duration::from_secs(60);
    tokio::time::sleep(minute).await;
    let after = (servers_cpu_s(&cluster), figures(&mut cluster).await.unwrap_or_default(), count(&c.watch_bytes));
    let cpu_pct = (after.0 - before.0) / minute.as_secs_f64() * 100.0;
    println!(
        "steady minute: servers {cpu_pct:.1}% of a core in all, {} Raft proposals, {:.0} watch bytes per node per s",
        after.1.proposals.saturating_sub(before.1.proposals),
        (after.2 - before.2) as f64 / n as f64 / minute.as_secs_f64(),
    );

    // 5. Away and back: a tenth of the nodes cut off, then back.
    let away = &slots[..(slots.len() / 10).max(1)];
    let moved: u64 = away.iter().map(|s| s.held.load(Ordering::Relaxed)).sum();
    // Every task the services ask for (the probe's two too): the cluster's
    // running count before is no target (a replaced task not yet forgotten
    // counts there for a moment, and the wait never ended).
    let want = total + 2;
    let started = Instant::now();
    for s in away {
        s.away.store(true, Ordering::Relaxed);
    }
    let down = away.len() as u64;
    wait_for(Duration::from_secs(600), "the away nodes down", async || {
        let f = figures(&mut cluster).await?;
        (f.nodes.get("down").copied() == Some(down)).then_some(())
    })
    .await?;
    let down_s = started.elapsed().as_secs_f64();
    // Then every task running again and none waiting (a node taken for
    // down meanwhile and back moves its tasks too).
    let staying = &slots[away.len()..];
    let mut said = Instant::now();
    wait_for(Duration::from_secs(600), "the away nodes' tasks running elsewhere", async || {
        let f = figures(&mut cluster).await?;
        let count = |state: &str| f.tasks.get(state).copied().unwrap_or(0);
        let here = staying.iter().map(|s| s.running.load(Ordering::Relaxed)).sum::<i64>();
        if said.elapsed() > Duration::from_secs(10) {
            println!("  {here} of {want} running on the nodes still here, the cluster's count {:?}", f.tasks);
            said = Instant::now();
        }
        // The away nodes' tasks count as running in the cluster until it
        // forgets them, so the nodes still here must report them; a node
        // may count one more than the cluster (a report whose answer was
        // lost), never fewer once the cluster has nothing left to place.
        let settled = count("pending") == 0 && count("assigned") == 0 && here >= want as i64;
        (settled && f.nodes.get("down").copied() == Some(down)).then_some(())
    })
    .await?;
    let moved_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for s in away {
        s.away.store(false, Ordering::Relaxed);
    }
    wait_for(Duration::from_secs(600), "every node ready again", async || {
        let f = figures(&mut cluster).await?;
        (f.nodes.get("ready").copied() == Some(n)).then_some(())
    })
    .await?;
    println!(
        "away: {down} nodes down after {down_s:.1} s, their {moved} tasks running elsewhere after {moved_s:.1} s; back and ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 6. Rolling update: the first service's replicas replaced, a tenth at a time.
    let replicas = args.per_service.min(args.tasks).max(1);
    let mut update = spec("sim0");
    update.replicas = replicas as i64;
    update.env = [("VERSION".to_owned(), "2".to_owned())].into();
    let step = (replicas / 10).max(1);
    update.update_config =
        Some(UpdateConfig { parallelism: Some(step as u32), monitor_ms: Some(1000), ..Default::default() });
    let started = Instant::now();
    let req = UpdateServiceRequest { spec: Some(update), no_resolve_image: true };
    retry("updating sim0", &addrs, 0, async |mut c, _| c.update_service(req.clone()).await.map(drop)).await?;
    wait_for(Duration::from_secs(1800), "sim0's rollout completed", async || {
        let mut c = client(&addrs[0]);
        let s = c.get_service(GetServiceRequest { name: "sim0".into(), stale: true }).await.ok()?.into_inner();
        let rollout = s.service?.rollout?;
        (rollout.state == "completed").then_some(())
    })
    .await?;
    let update_s = started.elapsed().as_secs_f64();
    println!(
        "rolling update: {replicas} replicas replaced, {step} at a time (monitor 1 s), in {update_s:.1} s ({:.0} tasks/s)",
        replicas as f64 / update_s
    );

    // 7. Failover at full load.
    let mut failover_ms = -1.0;
    let rss = server_rss_mb(&cluster);
    if !args.no_failover && args.servers > 1 {
        let leader = cluster.leader().await?;
        let survivors: Vec<String> =
            addrs.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, a)| a.clone()).collect();
        let killed = Instant::now();
        cluster.servers[leader].kill9();
        let mut attempt = 0;
        wait_for(Duration::from_secs(60), "a write after the leader's death", async || {
            attempt += 1;
            let mut c = client(&survivors[attempt % survivors.len()]);
            let mut req = tonic::Request::new(CreateServiceRequest {
                spec: Some(spec(&format!("after-{attempt}"))),
                no_resolve_image: true,
            });
            req.set_timeout(Duration::from_millis(500));
            c.create_service(req).await.ok().map(|_| ())
        })
        .await?;
        failover_ms = killed.elapsed().as_secs_f64() * 1000.0;
        println!("failover: a write taken {failover_ms:.0} ms after the leader was killed");
        cluster.servers[leader].restart()?;
    }

    let mut beats = c.heartbeat_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
    beats.sort_unstable();
    println!(
        "nodes: {} heartbeats (p50 {:.1} ms, p99 {:.1} ms, {} failed), {} watch messages ({:.1} MB; {} changes, {:.1} MB), {} reports ({} failed), {} watch restarts ({} resumed)",
        count(&c.heartbeats),
        percentile(&beats, 0.5),
        percentile(&beats, 0.99),
        count(&c.heartbeat_errors),
        count(&c.watch_messages),
        count(&c.watch_bytes) as f64 / 1e6,
        count(&c.change_messages),
        count(&c.change_bytes) as f64 / 1e6,
        count(&c.reports),
        count(&c.report_errors),
        count(&c.watch_errors),
        count(&c.watch_resumed),
    );
    let rss_max = rss.iter().copied().fold(0.0, f64::max);
    println!("servers: peak RSS {:?} MiB", rss.iter().map(|r| r.round() as u64).collect::<Vec<_>>());
    let by_state: BTreeMap<String, u64> = f.tasks.into_iter().collect();
    println!("tasks by state: {by_state:?}");
    println!(
        "nodes={n} tasks={total} tasks_per_s={tasks_per_s:.0} failover_ms={failover_ms:.0} node_bytes_per_change={node_bytes_per_change:.0} server_rss_mb={rss_max:.0}"
    );
    Ok(())
}
