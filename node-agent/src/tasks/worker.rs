//! The node's share of the cluster's work, at the edge: watch the tasks the
//! control plane assigns here, act on [`plan`]'s answer through the runtime,
//! and report what the tasks do. Restarts happen here, with no round trip.
//!
//! ```text
//! WatchTasks stream ─▶ want ─┐
//! runtime.list()    ─▶ have ─┴▶ plan ─▶ Start / Restart / Stop / Remove ─▶ runtime
//!                                  └─▶ reports (when they change) ─▶ ReportTasks
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::model::{Cidr, Protocol, RestartPolicy};
use berth_proto::pb::agent::agent_client::AgentClient;
use berth_proto::pb::agent::{AssignedTask, ReportTasksRequest, ServiceEndpoints, TaskReport, WatchTasksRequest};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::plan::{plan, Action, Have, Want};
use super::restart;
use crate::dns::{self, zone, Dns};
use crate::image::{ImageRef, Registries, Store};
use crate::network::mesh::Published;
use crate::network::overlay::{Keys, Overlay, Peer};
use crate::network::{IpRoute, NodeNet};
use crate::runtime::{record, ContainerConfig, Limits, LogPolicy, NetworkMode, Runtime, Status};

/// How often the worker looks again without news from the cluster or from
/// its containers (containers started before an agent restart are only
/// seen this way).
const TICK: Duration = Duration::from_millis(200);
/// Grace between SIGTERM and SIGKILL when a task is stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the worker needs of this node.
#[derive(Debug, Clone)]
pub struct Local {
    pub store: Store,
    pub runtime: Runtime,
    pub registries: Registries,
    pub cgroup_parent: String,
    /// The node network's bridge, MTU and where task namespaces live.
    pub bridge: String,
    pub mtu: u32,
    pub netns_dir: PathBuf,
    /// The node's WireGuard keys and UDP port, when it has an overlay.
    pub overlay: Option<(Keys, u16)>,
    /// Ports of the agent's own that the routing mesh leaves alone.
    pub reserved: Vec<(u16, Protocol)>,
    /// The node's DNS, when it runs one.
    pub dns: Option<dns::Settings>,
}

/// What the cluster wants of this node: its tasks, and its subnet within
/// the cluster's network once that is set.
#[derive(Debug, Clone, Default, PartialEq)]
struct Assigned {
    tasks: BTreeMap<String, AssignedTask>,
    network: Option<(Cidr, Cidr)>,
    /// The other nodes' overlay ends, by public key.
    peers: BTreeMap<String, Peer>,
    /// The cluster's published ports and their replicas, for the mesh.
    published: Vec<Published>,
    /// Every service's running replicas, for DNS.
    services: Vec<zone::Service>,
}

type Net = Arc<NodeNet<IpRoute>>;

#[derive(Debug, Default)]
struct Books {
    /// Restarts in a row and in all, per task.
    streaks: HashMap<String, (u32, u32)>,
    /// Tasks that could not start (e.g. the image would not pull): when
    /// to try again, and why.
    failed: HashMap<String, (u64, String)>,
    /// Tasks stopped here whose shutdown the cluster has not heard yet.
    stopped: BTreeSet<String>,
    last_report: Vec<TaskReport>,
    /// Work on tasks under way (a start's image pull, a stop's grace), one
    /// job per task at most: passes leave these tasks alone, and never wait
    /// for them, so a task stopping for 10 s holds back no other.
    jobs: JoinSet<Result<(), String>>,
    busy: HashMap<tokio::task::Id, String>,
}

impl Books {
    /// Runs `job` for `task` on its own; `exits` wakes the worker when it ends.
    fn spawn<F>(&mut self, task: String, exits: &Arc<Notify>, job: F)
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let exits = exits.clone();
        let handle = self.jobs.spawn(async move {
            let done = job.await;
            exits.notify_one();
            done
        });
        self.busy.insert(handle.id(), task);
    }

    fn is_busy(&self, task: &str) -> bool {
        self.busy.values().any(|t| t == task)
    }

    /// Takes in the jobs that ended: a task whose job failed waits before
    /// it is tried again (the restart backoff), and says why meanwhile.
    fn finished(&mut self, want: &BTreeMap<String, AssignedTask>, now: u64) {
        while let Some(done) = self.jobs.try_join_next_with_id() {
            let (task, why) = match done {
                Ok((id, Ok(()))) => {
                    self.busy.remove(&id);
                    continue;
                }
                Ok((id, Err(why))) => (self.busy.remove(&id), why),
                Err(e) => (self.busy.remove(&e.id()), format!("the agent's work on it failed: {e}")),
            };
            let Some(task) = task else { continue };
            warn!(%task, "{why}");
            // One that left meanwhile is told as shut down (its start may
            // have failed before it had a container to stop).
            if !want.contains_key(&task) {
                self.stopped.insert(task.clone());
            }
            let counted = want.get(&task).map_or(0, |t| t.restarts);
            let tries = self.streaks.entry(task.clone()).or_insert((0, counted));
            tries.0 += 1;
            let retry_at = now + restart::delay(tries.0).as_millis() as u64;
            self.failed.insert(task, (retry_at, why));
        }
    }
}

/// Runs until the process ends: `watch` streams from `clients` (one at a
/// time, the next on failure).
pub async fn run(local: Local, node_id: String, clients: Vec<AgentClient<Channel>>) {
    let (tx, mut rx) = watch::channel(Assigned::default());
    tokio::spawn(watch_tasks(node_id.clone(), clients.clone(), tx));
    let local = Arc::new(local);
    let exits = Arc::new(Notify::new());
    let mut books = Books::default();
    let mut at = 0;
    // Nothing is done before the cluster has said what it wants: an agent
    // that restarts must not take "no tasks yet" for "stop every task".
    if rx.changed().await.is_err() {
        return;
    }
    let (net_tx, net_rx) = watch::channel(None);
    tokio::spawn(network(local.clone(), rx.clone(), net_tx));
    loop {
        let want = rx.borrow_and_update().tasks.clone();
        let net = net_rx.borrow().clone();
        work(&local, &want, &mut books, &exits, net.as_ref()).await;
        let reports = reports(&local, &want, &mut books);
        if reports != books.last_report {
            let req = ReportTasksRequest { node_id: node_id.clone(), tasks: reports.clone() };
            match clients[at % clients.len()].clone().report_tasks(req).await {
                Ok(_) => {
                    // The cluster has heard these stops (a stop still
                    // under way is told when its container is gone).
                    let told: BTreeSet<&str> =
                        reports.iter().filter(|r| r.state == "shutdown").map(|r| r.id.as_str()).collect();
                    books.stopped.retain(|t| want.contains_key(t) || !told.contains(t.as_str()));
                    books.last_report = reports;
                }
                Err(e) => {
                    warn!("reporting tasks: {}", e.message());
                    at += 1;
                }
            }
        }
        // News from the cluster, a container of ours ending, or the tick.
        tokio::select! {
            _ = rx.changed() => {}
            _ = exits.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// The node's network follows the cluster on a loop of its own, so that
/// the tasks' work (a pass that sets up a task's namespace, a report to a
/// slow server) never holds back a peer, the routing mesh or DNS: the bridge for the node's
/// subnet, the overlay and its peers, then the mesh. What it has set up is
/// published on `out` for the work on tasks.
async fn network(local: Arc<Local>, mut rx: watch::Receiver<Assigned>, out: watch::Sender<Option<Net>>) {
    let mut net: Option<Net> = None;
    let mut overlay: Option<Overlay> = None;
    // What the routing mesh was last set to, on the current `net`.
    let mut meshed: Option<Vec<Published>> = None;
    let mut dns: Option<Dns> = None;
    // What the DNS zone was last set to.
    let mut zoned: Option<Vec<zone::Service>> = None;
    loop {
        let assigned = rx.borrow_and_update().clone();
        if let Some((subnet, cluster)) = assigned.network {
            if net.as_ref().is_none_or(|n| (n.subnet, n.cluster) != (subnet, cluster)) {
                net = node_network(&local, subnet, cluster).await;
                overlay = None;
                meshed = None;
                dns = None;
                out.send_replace(net.clone());
            }
        }
        if let (Some(n), Some((keys, port))) = (&net, &local.overlay) {
            if overlay.is_none() {
                overlay = start_overlay(keys, *port, n).await;
            }
            // The device's UAPI socket may take up to its timeout to
            // answer: off the agent's one thread (the overlay comes back).
            if let Some(mut o) = overlay.take() {
                let peers = assigned.peers.clone();
                let update = tokio::task::spawn_blocking(move || {
                    if let Err(e) = o.set_peers(peers) {
                        warn!("updating the overlay's peers: {e}");
                    }
                    if let Err(e) = o.size_sockets() {
                        warn!("sizing the overlay's sockets: {e}");
                    }
                    o
                });
                overlay = update.await.ok();
            }
        }
        let published = net.as_ref().map(|n| reachable(&assigned, n.subnet, overlay.is_some()));
        if let (Some(n), Some(published)) = (&net, published.filter(|p| meshed.as_ref() != Some(p))) {
            let (n, reserved, before, wanted) = (n.clone(), local.reserved.clone(), meshed.clone(), published.clone());
            match tokio::task::spawn_blocking(move || n.publish(&reserved, before.as_deref(), &wanted)).await {
                Ok(Ok(())) => meshed = Some(published),
                Ok(Err(e)) => warn!("updating the routing mesh: {e}"),
                Err(e) => warn!("updating the routing mesh: {e}"),
            }
        }
        if let (Some(n), Some(settings)) = (&net, &local.dns) {
            if dns.is_none() {
                dns = start_dns(settings, n);
                zoned = None;
            }
            if let Some(server) = dns.as_ref().filter(|_| zoned.as_ref() != Some(&assigned.services)) {
                let (cluster, services) = (n.cluster, assigned.services.clone());
                server.update(|zone| zone.update(Some(cluster), services));
                zoned = Some(assigned.services.clone());
            }
        }
        // Retried on the tick while something is not set up.
        let pending = net.is_none()
            || (local.overlay.is_some() && overlay.is_none())
            || meshed.is_none()
            || (local.dns.is_some() && dns.is_none());
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(TICK), if pending => {}
        }
    }
}

/// Sets up the node's bridge for its subnet; None (and tried again on the
/// next pass) when that fails.
async fn node_network(local: &Local, subnet: Cidr, cluster: Cidr) -> Option<Net> {
    let net = Arc::new(NodeNet {
        bridge: local.bridge.clone(),
        subnet,
        cluster,
        mtu: local.mtu,
        netns_dir: local.netns_dir.clone(),
        host: IpRoute,
    });
    let ready = net.clone();
    match tokio::task::spawn_blocking(move || ready.ensure()).await {
        Ok(Ok(())) => {
            info!(bridge = %net.bridge, %subnet, "node network ready");
            Some(net)
        }
        Ok(Err(e)) => {
            warn!("setting up the node network: {e}");
            None
        }
        Err(e) => {
            warn!("setting up the node network: {e}");
            None
        }
    }
}

/// Starts the node's DNS on its bridge's gateway (and `--dns-listen`);
/// None (and tried again on the next pass) when that fails.
fn start_dns(settings: &dns::Settings, net: &Net) -> Option<Dns> {
    let gateway = std::net::SocketAddr::from((net.subnet.gateway(), 53));
    let addresses: Vec<std::net::SocketAddr> = std::iter::once(gateway).chain(settings.listen).collect();
    let own: Vec<std::net::IpAddr> = addresses.iter().map(|a| a.ip()).collect();
    let upstreams = if settings.upstreams.is_empty() {
        dns::upstreams(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(), &own)
    } else {
        settings.upstreams.iter().map(|ip| std::net::SocketAddr::new(*ip, 53)).collect()
    };
    let zone = match zone::Zone::new(&settings.domain, settings.ttl) {
        Ok(zone) => zone,
        Err(e) => {
            warn!("DNS: {e}");
            return None;
        }
    };
    match Dns::serve(zone, &addresses, upstreams.clone()) {
        Ok(server) => {
            info!(?addresses, ?upstreams, domain = %settings.domain, "DNS up");
            Some(server)
        }
        Err(e) => {
            warn!("starting DNS: {e}");
            None
        }
    }
}

/// Brings up the node's WireGuard interface; None (and tried again on the
/// next pass) when that fails.
async fn start_overlay(keys: &Keys, port: u16, net: &Net) -> Option<Overlay> {
    let (keys, mtu, cluster, source) = (keys.clone(), net.mtu, net.cluster, net.subnet.gateway());
    let started =
        tokio::task::spawn_blocking(move || Overlay::start(&keys, port, mtu, cluster, source, &IpRoute)).await;
    match started {
        Ok(Ok(o)) => {
            info!(interface = %o.interface, port, "overlay up");
            Some(o)
        }
        Ok(Err(e)) => {
            warn!("starting the overlay: {e}");
            None
        }
        Err(e) => {
            warn!("starting the overlay: {e}");
            None
        }
    }
}

/// Keeps `tx` holding the node's current tasks, from whichever server answers.
async fn watch_tasks(node_id: String, clients: Vec<AgentClient<Channel>>, tx: watch::Sender<Assigned>) {
    let mut at = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut client = clients[at % clients.len()].clone();
        match client.watch_tasks(WatchTasksRequest { node_id: node_id.clone() }).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(list)) => {
                            backoff = Duration::from_millis(100);
                            let network = list.subnet.parse().ok().zip(list.cluster_cidr.parse().ok());
                            let peers = list
                                .peers
                                .into_iter()
                                .filter_map(|p| {
                                    Some((p.public_key, Peer { endpoint: p.endpoint, subnet: p.subnet.parse().ok()? }))
                                })
                                .collect();
                            let published = published(&list.services);
                            let services = list.services.iter().map(replicas).collect();
                            let tasks = list.tasks.into_iter().map(|t| (t.id.clone(), t)).collect();
                            if tx.send(Assigned { tasks, network, peers, published, services }).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!("task watch: {}", e.message());
                            break;
                        }
                    }
                }
            }
            Err(e) => warn!("task watch: {}", e.message()),
        }
        at += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A service's replicas that have an address and its named ports, as DNS names them.
fn replicas(service: &ServiceEndpoints) -> zone::Service {
    let replicas = service.endpoints.iter().filter_map(|e| Some((e.slot, e.address.parse().ok()?))).collect();
    let ports = service
        .ports
        .iter()
        .filter(|p| !p.name.is_empty())
        .filter_map(|p| {
            let (protocol, port) = (Protocol::parse(&p.protocol)?, u16::try_from(p.target).ok()?);
            Some(zone::NamedPort { name: p.name.clone(), protocol, port })
        })
        .collect();
    zone::Service { name: service.name.clone(), replicas, ports }
}

/// The published ports among the cluster's services, each with its
/// replicas' addresses, in a stable order (an unchanged cluster gives an
/// unchanged list, and the mesh is left alone).
fn published(services: &[ServiceEndpoints]) -> Vec<Published> {
    let mut out: Vec<Published> = services
        .iter()
        .flat_map(|s| {
            let backends: Vec<Ipv4Addr> = s.endpoints.iter().filter_map(|e| e.address.parse().ok()).collect();
            s.ports.iter().filter_map(move |p| {
                Some(Published {
                    port: u16::try_from(p.published).ok().filter(|p| *p > 0)?,
                    protocol: Protocol::parse(&p.protocol)?,
                    target: u16::try_from(p.target).ok()?,
                    service: s.name.clone(),
                    backends: backends.clone(),
                })
            })
        })
        .collect();
    out.sort();
    out
}

/// The published ports with only the replicas this node can reach: on its
/// own bridge, or behind a peer of a running overlay (a node without one,
/// or one whose key was not taken, would swallow its share).
fn reachable(assigned: &Assigned, own: Cidr, overlay: bool) -> Vec<Published> {
    let peers = assigned.peers.values().map(|p| p.subnet).filter(|_| overlay);
    let subnets: Vec<Cidr> = std::iter::once(own).chain(peers).collect();
    let mut published = assigned.published.clone();
    for p in &mut published {
        p.backends.retain(|b| subnets.iter().any(|s| s.contains(*b)));
    }
    published
}

/// One pass: take in the jobs that ended, plan, then start a job for each
/// action on a task with none under way; they run at once, and the pass
/// does not wait for them.
async fn work(
    local: &Arc<Local>,
    want: &BTreeMap<String, AssignedTask>,
    books: &mut Books,
    exits: &Arc<Notify>,
    net: Option<&Net>,
) {
    let now = record::now_ms();
    books.finished(want, now);
    let wants: Vec<Want> = want
        .values()
        .map(|t| Want { task: t.id.clone(), restart: RestartPolicy::parse(&t.restart).unwrap_or_default() })
        .collect();
    let Some(have) = have(&local.runtime, books) else { return };
    // Namespaces of tasks that are neither wanted nor have a container
    // (left by an agent that stopped halfway) go.
    if let Some(net) = net {
        for task in net.attached() {
            if !want.contains_key(&task) && !have.iter().any(|h| h.task == task) && !books.is_busy(&task) {
                let _ = detach(Some(net.clone()), task).await;
            }
        }
    }
    for action in plan(&wants, &have, now) {
        let (Action::Start { task } | Action::Restart { task, .. } | Action::Stop { task } | Action::Remove { task }) =
            &action;
        // A task whose last job failed waits out its backoff, whatever comes next.
        if books.is_busy(task) || books.failed.get(task).is_some_and(|(retry_at, _)| now < *retry_at) {
            continue;
        }
        match action {
            Action::Start { task } => {
                let Some(spec) = want.get(&task).cloned() else { continue };
                books.spawn(task, exits, start(local.clone(), spec, false, exits.clone(), net.cloned()));
            }
            Action::Restart { task, at_ms, streak } => {
                if now < at_ms {
                    continue;
                }
                let Some(spec) = want.get(&task).cloned() else { continue };
                // Counting goes on from the cluster's count after an agent restart.
                let entry = books.streaks.entry(task.clone()).or_insert((0, spec.restarts));
                *entry = (streak, entry.1 + 1);
                books.spawn(task, exits, start(local.clone(), spec, true, exits.clone(), net.cloned()));
            }
            Action::Stop { task } => {
                books.stopped.insert(task.clone());
                let (local, net, name) = (local.clone(), net.cloned(), task.clone());
                books.spawn(task, exits, async move {
                    let _ = local.runtime.stop(&name, STOP_GRACE).await;
                    local.runtime.remove(&name, true).await.map_err(|e| e.to_string())?;
                    detach(net, name).await
                });
            }
            Action::Remove { task } => {
                books.stopped.insert(task.clone());
                let (local, net, name) = (local.clone(), net.cloned(), task.clone());
                books.spawn(task, exits, async move {
                    local.runtime.remove(&name, true).await.map_err(|e| e.to_string())?;
                    detach(net, name).await
                });
            }
        }
    }
}

/// Creates and starts the task's container, or when restarting starts its
/// container again on a fresh writable layer, keeping its log; `exits` is
/// told when it ends, so a restart does not wait for the next tick.
async fn start(
    local: Arc<Local>,
    spec: AssignedTask,
    again: bool,
    exits: Arc<Notify>,
    net: Option<Net>,
) -> Result<(), String> {
    let task = spec.id.clone();
    if again {
        // Removing the old writable layer may take a while: off the agent's thread.
        let (runtime, name) = (local.runtime.clone(), task.clone());
        if let Ok(Ok(())) = tokio::task::spawn_blocking(move || runtime.renew(&name)).await {
            return launch(&local, &task, exits).await;
        }
    }
    // No container to start again (or it would not renew): a new one.
    match local.runtime.remove(&task, true).await {
        Err(crate::runtime::RuntimeError::NotFound(_)) | Ok(()) => {}
        Err(e) => return Err(e.to_string()),
    }
    let reference: ImageRef = spec.image.parse().map_err(|e: crate::image::BadReference| e.to_string())?;
    let image =
        local.store.ensure(&reference, &local.registries).await.map_err(|e| format!("pulling {reference}: {e}"))?;
    let network = match (spec.address.parse::<Ipv4Addr>(), net) {
        (Err(_), _) => NetworkMode::None,
        (Ok(address), Some(net)) => {
            let (name, gateway) = (task.clone(), net.subnet.gateway());
            let netns = tokio::task::spawn_blocking(move || net.attach(&name, address))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("network: {e}"))?;
            let resolv_conf = local.dns.as_ref().map(|d| dns::resolv_conf(gateway.into(), &d.domain));
            NetworkMode::Joined { netns, address, resolv_conf }
        }
        (Ok(_), None) => return Err("network: the node's bridge is not ready yet".into()),
    };
    let config = ContainerConfig {
        name: task.clone(),
        image: reference.to_string(),
        image_digest: image.digest.clone(),
        layers: local.store.layer_dirs(&image).map_err(|e| e.to_string())?,
        layer_digests: image.layers.clone(),
        image_config: image.config,
        command: spec.command.clone(),
        entrypoint: None,
        env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        limits: Limits {
            memory_bytes: Some(spec.memory_bytes).filter(|m| *m > 0),
            cpu_millis: Some(spec.cpu_millis).filter(|c| *c > 0),
            pids: None,
        },
        network,
        cgroup_parent: local.cgroup_parent.clone(),
        log: LogPolicy::default(),
        created_at_ms: record::now_ms(),
        task: Some(task.clone()),
    };
    // Creating syncs the config to disk: off the agent's one thread, so
    // the syncs of tasks starting together overlap.
    let runtime = local.runtime.clone();
    let created = tokio::task::spawn_blocking(move || runtime.create(&config)).await;
    created.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    launch(&local, &task, exits).await
}

/// Removes a task's network namespace (its container is gone).
async fn detach(net: Option<Net>, task: String) -> Result<(), String> {
    let Some(net) = net else { return Ok(()) };
    match tokio::task::spawn_blocking(move || net.detach(&task)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("removing its network namespace: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn launch(local: &Local, task: &str, exits: Arc<Notify>) -> Result<(), String> {
    let mut shim = local.runtime.start(task).await.map_err(|e| e.to_string())?;
    info!(%task, pid = shim.pid, "task started");
    tokio::spawn(async move {
        shim.exited().await;
        exits.notify_one();
    });
    Ok(())
}

/// This node's task containers, as [`plan`] sees them; None when the runtime cannot list them (a
/// pass then does nothing: "none" would restart or report every task).
fn have(runtime: &Runtime, books: &Books) -> Option<Vec<Have>> {
    let containers = match runtime.list() {
        Ok(c) => c,
        Err(e) => {
            warn!("listing containers: {e}");
            return None;
        }
    };
    let list = containers
        .into_iter()
        .filter_map(|c| {
            let task = c.config.task.clone()?;
            let started: Option<record::Started> = record::read(&c.dir, record::STARTED).ok().flatten();
            let started_at_ms = started.as_ref().map_or(0, |s| s.started_at_ms);
            let ran_for = match &c.status {
                Status::Exited(e) if started.is_some() => {
                    Duration::from_millis(e.finished_at_ms.saturating_sub(started_at_ms))
                }
                _ => Duration::ZERO,
            };
            let streak = books.streaks.get(&task).map_or(0, |s| s.0);
            Some(Have { task, status: c.status, ran_for, streak, started_at_ms })
        })
        .collect();
    Some(list)
}

/// What to tell the cluster about this node's tasks.
fn reports(local: &Local, want: &BTreeMap<String, AssignedTask>, books: &mut Books) -> Vec<TaskReport> {
    let Some(have) = have(&local.runtime, books) else { return books.last_report.clone() };
    let have: BTreeMap<String, Have> = have.into_iter().map(|h| (h.task.clone(), h)).collect();
    let mut out = Vec::new();
    for (task, assigned) in want {
        let restarts = books.streaks.get(task).map_or(assigned.restarts, |s| s.1);
        let report = |state: &str, code: Option<i32>, message: String| TaskReport {
            id: task.clone(),
            state: state.into(),
            has_exit_code: code.is_some(),
            exit_code: code.unwrap_or(0),
            restarts,
            message,
        };
        out.push(match have.get(task).map(|h| &h.status) {
            Some(Status::Running(_)) => {
                books.failed.remove(task);
                report("running", None, String::new())
            }
            Some(Status::Exited(e)) if e.error.is_some() => report("failed", None, e.error.clone().unwrap_or_default()),
            Some(Status::Exited(e)) if e.oom_killed => report("exited", Some(e.code), "killed: out of memory".into()),
            Some(Status::Exited(e)) => report("exited", Some(e.code), String::new()),
            Some(Status::Lost) => report("failed", None, "its shim died".into()),
            Some(Status::Created) => continue,
            None => match books.failed.get(task) {
                Some((_, why)) => report("failed", None, why.clone()),
                None => continue,
            },
        });
    }
    // Shut down once its container is gone and its job (which frees its
    // namespace, and with it the address) has ended.
    for task in books.stopped.iter().filter(|t| !have.contains_key(*t) && !books.is_busy(t)) {
        let restarts = books.streaks.get(task).map_or(0, |s| s.1);
        out.push(TaskReport { id: task.clone(), state: "shutdown".into(), restarts, ..Default::default() });
    }
    out
}

#[cfg(test)]
mod tests {
    use berth_proto::pb::agent::{Endpoint, EndpointPort};

    use super::*;

    #[test]
    fn the_mesh_gets_published_ports_only_in_a_stable_order() {
        let endpoint = |slot, address: &str| Endpoint { task: format!("x.{slot}.1"), slot, address: address.into() };
        let port = |published, target, protocol: &str| EndpointPort {
            published,
            target,
            protocol: protocol.into(),
            name: String::new(),
        };
        let services = vec![
            ServiceEndpoints {
                name: "web".into(),
                ports: vec![port(8080, 80, "tcp"), port(0, 9000, "tcp"), port(8080, 80, "udp")],
                endpoints: vec![endpoint(1, "198.19.1.2"), endpoint(2, "not an address"), endpoint(3, "198.19.2.2")],
            },
            ServiceEndpoints {
                name: "api".into(),
                ports: vec![port(70000, 1, "tcp"), port(81, 1, "sctp")],
                endpoints: vec![],
            },
            ServiceEndpoints { name: "db".into(), ports: vec![port(5432, 5432, "")], endpoints: vec![] },
        ];
        let got = published(&services);
        let summary: Vec<(u16, Protocol, &str, usize)> =
            got.iter().map(|p| (p.port, p.protocol, p.service.as_str(), p.backends.len())).collect();
        assert_eq!(
            summary,
            [(5432, Protocol::Tcp, "db", 0), (8080, Protocol::Tcp, "web", 2), (8080, Protocol::Udp, "web", 2)]
        );
        assert_eq!(got[1].backends, ["198.19.1.2".parse::<Ipv4Addr>().unwrap(), "198.19.2.2".parse().unwrap()]);
        let mut reversed = services.clone();
        reversed.reverse();
        assert_eq!(published(&reversed), got);
    }
}
