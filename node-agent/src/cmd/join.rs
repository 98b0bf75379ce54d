//! `berth-agent --server ADDR[,ADDR…] --token T`: join the cluster and
//! stay in it. A node without a certificate trades the join token for one
//! (its key pair is made here and never leaves `DATA_DIR/tls/`); the
//! certificate names the node's id, so a restart is the same node and
//! needs no token. The node registers, then sends a heartbeat every period (or the longer
//! one a large cluster asks for) to any live server,
//! moving to the next with backoff when one fails, while the worker
//! (`berth_node_agent::driver`) runs what the cluster places here, and the
//! node API (`tasks::logs`) answers servers on `--listen`. The certificate
//! renews itself before it expires and when the roots that heartbeats
//! report change (`berth_proto::renew`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_node_agent::driver::{self, HostNetwork, StoreImages, Worker};
use berth_node_agent::network::overlay::Keys;
use berth_node_agent::network::plan::Features;
use berth_node_agent::stats::AgentStats;
use berth_node_agent::tasks::logs::NodeApi;
use berth_proto::client::{Peer, Servers, Settings, Tls};
use berth_proto::model::Protocol;
use berth_proto::pb::agent::agent_client::AgentClient;
use berth_proto::pb::agent::node_server::NodeServer;
use berth_proto::pb::agent::{HeartbeatRequest, NodeCapacity, RegisterRequest};
use berth_proto::pki::{Credentials, Role};
use berth_proto::renew::{Remote, Renewal};
use tracing::{info, warn};

use super::Node;

const ID_FILE: &str = "node-id";
/// The node's key, certificate and the cluster's roots.
const TLS_DIR: &str = "tls";
/// How long a first start keeps trying to reach a server to join through.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);
/// How long a server has to answer a registration or a heartbeat.
const CALL_TIMEOUT: Duration = Duration::from_secs(6);

#[derive(Debug, Clone, clap::Args)]
pub struct JoinArgs {
    /// Servers of the cluster to join (comma-separated or repeated).
    #[arg(long = "server", env = "BERTH_SERVER", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// The worker join token (`berthctl cluster join-token worker`); needed
    /// only until the node has its certificate.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// This node's name (a DNS label); the host name by default.
    #[arg(long)]
    pub name: Option<String>,
    /// Where this node is reached (host:port); NAME:7500 by default.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Where the agent answers servers (task logs); the advertise address
    /// when it is an IP address, else 0.0.0.0 on its port.
    #[arg(long)]
    pub listen: Option<String>,
    /// KEY=VALUE for placement constraints (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// CPUs to offer; all of this host's by default.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory to offer (e.g. 8Gi); all of this host's by default.
    #[arg(long)]
    pub memory: Option<String>,
    /// Time between heartbeats (a large cluster may ask for longer).
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// UDP port of the node's WireGuard overlay on its advertise address
    /// (0: no overlay; there is none either when --advertise is not an IP).
    #[arg(long, default_value_t = 51820)]
    pub wireguard_port: u16,
    /// The bridge this node's containers are plugged into.
    #[arg(long, default_value = "berth0")]
    pub bridge: String,
    /// MTU of the bridge and of containers' eth0 (room for the overlay's headers).
    #[arg(long, default_value_t = berth_node_agent::network::DEFAULT_MTU)]
    pub mtu: u32,
    /// The static init run as PID 1 of tasks that ask for one (`--init`).
    #[arg(long, env = "BERTH_INIT_PATH", default_value = berth_node_agent::driver::DEFAULT_INIT)]
    pub init_path: std::path::PathBuf,
    /// The most processes a task's container may have (0: no limit).
    #[arg(long, default_value_t = berth_node_agent::driver::DEFAULT_PIDS_LIMIT)]
    pub pids_limit: u64,
    /// The domain of services' names in DNS (`web.berth.local`).
    #[arg(long, default_value = berth_node_agent::dns::DEFAULT_DOMAIN)]
    pub cluster_domain: String,
    /// Seconds a DNS answer about the cluster may be kept.
    #[arg(long, default_value_t = 5)]
    pub dns_ttl: u32,
    /// Another address (IP:PORT) where the node's DNS answers, e.g. for
    /// the host; it always answers on its bridge's gateway, port 53.
    #[arg(long)]
    pub dns_listen: Option<std::net::SocketAddr>,
    /// Resolvers (IP, repeatable) for names outside the cluster; the
    /// host's /etc/resolv.conf by default.
    #[arg(long = "dns-upstream", value_delimiter = ',')]
    pub dns_upstreams: Vec<std::net::IpAddr>,
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics (off
    /// unless set; keep it on a loopback or management address)
    #[arg(long, env = "BERTH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

pub async fn join(mut node: Node, data_dir: &Path, run_dir: &Path, args: JoinArgs) -> anyhow::Result<u8> {
    berth_node_agent::dns::zone::Zone::new(&args.cluster_domain, args.dns_ttl)
        .map_err(|e| anyhow::anyhow!("--cluster-domain: {e}"))?;
    if args.servers.is_empty() {
        bail!("give --server ADDR[,ADDR...] to join a cluster, or a command (see --help)");
    }
    let tls_dir = data_dir.join(TLS_DIR);
    let creds = match Credentials::load(&tls_dir).with_context(|| format!("reading {}", tls_dir.display()))? {
        Some(creds) => creds,
        None => admit(data_dir, &args).await?,
    };
    let tls = Tls::new(&creds)?;
    let request = registration(data_dir, &args, creds.identity()?.name)?;
    let (roots_tx, roots) = tokio::sync::watch::channel(String::new());
    let ids = node.runtime.id_ranges().clone();
    let stats = AgentStats::default();
    node.store.count_in(&stats);
    let mut network = HostNetwork::new(args.bridge.clone(), args.mtu, run_dir.join("netns"), ids);
    network.stats = stats.clone();
    network.dns = Some(berth_node_agent::dns::Settings {
        domain: args.cluster_domain.clone(),
        ttl: args.dns_ttl,
        listen: args.dns_listen,
        upstreams: args.dns_upstreams.clone(),
    });
    if request.wireguard_port != 0 {
        let keys = overlay_keys(data_dir, &request.advertise_address, args.wireguard_port)?;
        network.overlay = keys.map(|k| (k, args.wireguard_port));
    }
    let period = Duration::from_millis(args.heartbeat_ms.max(10));
    // Nodes given the same list start at different servers (by id).
    let servers = Servers::new(&args.servers, &Settings::calls(CALL_TIMEOUT), &tls.connector(Peer::Server))
        .context("--server")?
        .spread(&request.node_id);
    let listen = listen_address(args.listen.as_deref(), &request.advertise_address)?;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        // An advertised address this host does not have (NAT, a cloud
        // public IP): listen on every address, on its port.
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable && args.listen.is_none() => {
            let any = SocketAddr::from(([0, 0, 0, 0], listen.port()));
            warn!("{listen} is not an address of this host; listening on {any} (set --listen to choose)");
            tokio::net::TcpListener::bind(any).await.with_context(|| format!("listening on {any}"))?
        }
        other => other.with_context(|| format!("listening on {listen} (--listen)"))?,
    };
    // The mesh must never take the agent's own ports.
    network.reserved.push((listen.port(), Protocol::Tcp));
    if let Some((_, port)) = &network.overlay {
        network.reserved.push((*port, Protocol::Udp));
    }
    let settings = driver::Settings {
        cgroup_parent: node.cgroup_parent.clone(),
        dns_domain: network.dns.as_ref().map(|d| d.domain.clone()),
        features: Features { overlay: network.overlay.is_some(), dns: network.dns.is_some() },
        pids_limit: Some(args.pids_limit).filter(|p| *p > 0),
        init_path: args.init_path.clone(),
        stats: stats.clone(),
        ..driver::Settings::default()
    };
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr} (--metrics-listen)"))?;
            let mut registry = stats.registry();
            registry.register_collector(Box::new(network.overlay_traffic()));
            info!(%addr, "serving metrics at http://{addr}/metrics");
            Some(tokio::spawn(berth_proto::metrics::serve(listener, std::sync::Arc::new(registry))))
        }
        None => None,
    };
    let api = berth_proto::client::server(berth_proto::client::MAX_STREAMS)
        .add_service(NodeServer::new(NodeApi::new(node.runtime.clone())))
        .serve_with_incoming(berth_proto::tls::incoming(listener, tls.clone()));
    let renewal =
        Renewal { tls: tls.clone(), dir: data_dir.join(TLS_DIR), creds, authority: Remote(servers.clone()), roots };
    for swept in node.runtime.sweep(Duration::from_secs(600)) {
        warn!("removed {}: left by a create that was interrupted", swept.display());
    }
    match node.runtime.id_ranges().sweep(Duration::from_secs(600)) {
        Ok(holders) => {
            holders.iter().for_each(|h| warn!("gave back the user namespace ids of {}: it is gone", h.display()))
        }
        Err(e) => warn!("sweeping user namespace claims: {e}"),
    }
    let images = StoreImages { store: node.store, registries: node.registries };
    let worker = Worker { containers: node.runtime, images, network, settings };
    let mut shutdown = std::pin::pin!(shutdown());
    berth_proto::systemd::ready(&format!("serving on {listen}; registering"));
    let outcome = tokio::select! {
        _ = &mut shutdown => Ok(0),
        result = api => result.map(|_| 0).context("serving the node API"),
        result = stay(worker, data_dir, request, period, servers, (tls, roots_tx)) => result,
        () = renewal.run() => Ok(0),
    };
    berth_proto::systemd::stopping();
    if let Some(m) = metrics {
        m.abort();
    }
    outcome
}

/// Trades the join token for this node's certificate, from the first
/// server that answers; saves it (and the node's id) only once it has it,
/// so a refused token leaves nothing behind.
async fn admit(data_dir: &Path, args: &JoinArgs) -> anyhow::Result<Credentials> {
    let token = args.token.as_deref().context(
        "this node has no certificate yet: give --token with the cluster's worker join token \
         (`berthctl cluster join-token worker` prints the whole command)",
    )?;
    let (node, creds) = berth_proto::join::admit(&args.servers, token, Role::Worker, JOIN_PATIENCE).await?;
    let dir = data_dir.join(TLS_DIR);
    creds.save(&dir).with_context(|| format!("saving {}", dir.display()))?;
    berth_node_agent::durable::write(&data_dir.join(ID_FILE), node.as_bytes()).context("saving the node id")?;
    info!(node, "admitted to the cluster: this node's certificate is signed");
    Ok(creds)
}

/// `--listen`, or what to listen on for the advertise address.
fn listen_address(listen: Option<&str>, advertise: &str) -> anyhow::Result<SocketAddr> {
    if let Some(l) = listen {
        return l.parse().with_context(|| format!("--listen {l:?} is not IP:PORT"));
    }
    if let Ok(addr) = advertise.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port = advertise.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    let port = port.with_context(|| format!("--advertise {advertise:?} is not HOST:PORT"))?;
    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
}

/// Registers, then heartbeats; registers again when the cluster has
/// forgotten the node. Returns only on a registration the cluster refuses.
async fn stay(
    worker: Worker<berth_node_agent::runtime::Runtime, StoreImages, HostNetwork>,
    data_dir: &Path,
    mut request: RegisterRequest,
    period: Duration,
    mut servers: Servers,
    (tls, roots): (Tls, tokio::sync::watch::Sender<String>),
) -> anyhow::Result<u8> {
    let worker = std::sync::Arc::new(worker);
    let mut running: Option<(String, tokio::task::JoinHandle<()>)> = None;
    // What the heartbeats earn: until when this node may run the tasks
    // with an exclusive volume that the leader names (see `tasks::fence`).
    let (lease_tx, lease) = tokio::sync::watch::channel(driver::Leases::default());
    loop {
        let id = loop {
            match AgentClient::new(servers.channel()).register(request.clone()).await {
                Ok(reply) => break reply.into_inner().node_id,
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::InvalidArgument | tonic::Code::AlreadyExists | tonic::Code::PermissionDenied
                    ) =>
                {
                    bail!("the cluster refused this node: {}", s.message())
                }
                Err(s) => failed(&mut servers, &s).await,
            }
        };
        if request.node_id != id {
            berth_node_agent::durable::write(&data_dir.join(ID_FILE), id.as_bytes()).context("saving the node id")?;
            request.node_id = id.clone();
        }
        info!(node = %id, server = servers.current(), "registered");
        berth_proto::systemd::status(&format!("node {id}, registered through {}", servers.current()));
        if running.as_ref().is_none_or(|(running_for, _)| *running_for != id) {
            if let Some((_, old)) = running.take() {
                old.abort();
            }
            let work = worker.clone().run(id.clone(), servers.clone(), lease.clone());
            running = Some((id.clone(), tokio::spawn(work)));
        }
        // The period: ours, or the longer one a large cluster asks for.
        let mut every = period;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            // A beat late by two periods is as good as lost: another server, then.
            // Which root our certificate is from: a CA rotation waits for it.
            let root = tls.identity().map(|i| i.issuer).unwrap_or_default();
            let mut beat = tonic::Request::new(HeartbeatRequest { node_id: id.clone(), root });
            beat.set_timeout((every * 2).clamp(Duration::from_millis(500), CALL_TIMEOUT));
            // A lease counts from before the beat left: the leader heard it later.
            let sent = berth_monitor::lease::now_ns();
            let beat = AgentClient::new(servers.channel()).heartbeat(beat).await;
            // Heard and the lease it brought, in one change: the worker never
            // sees the one without the other.
            let earned = beat.as_ref().ok().map(|r| r.get_ref()).filter(|r| r.lease_ms > 0).map(|r| {
                let until = sent.saturating_add(r.lease_ms.saturating_mul(1_000_000));
                driver::Lease { until, exclusive: r.exclusive.iter().cloned().collect() }
            });
            lease_tx.send_if_modified(|l| {
                let changed = !l.heard || earned.is_some();
                l.heard = true;
                if let Some(lease) = earned {
                    l.lease = Some(lease);
                }
                changed
            });
            match beat {
                Ok(reply) => {
                    servers.succeeded();
                    let reply = reply.into_inner();
                    let asked = reply.period(period);
                    // The cluster's roots: the renewal acts when they are not ours.
                    let digest = reply.roots_digest;
                    roots.send_if_modified(|heard| std::mem::replace(heard, digest.clone()) != digest);
                    if asked != every {
                        info!("the cluster asks for heartbeats every {} ms", asked.as_millis());
                        every = asked;
                        tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    }
                }
                Err(s) if s.code() == tonic::Code::NotFound => {
                    warn!("the cluster no longer knows this node; registering again");
                    break;
                }
                Err(s) => failed(&mut servers, &s).await,
            }
        }
    }
}

async fn failed(servers: &mut Servers, status: &tonic::Status) {
    warn!(server = servers.current(), "{}", berth_proto::client::reason(status));
    servers.failed().await;
}

/// What this node tells the cluster about itself, as node `node_id` (its
/// certificate's).
fn registration(data_dir: &Path, args: &JoinArgs, node_id: String) -> anyhow::Result<RegisterRequest> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => host_name()?,
    };
    let advertise = args.advertise.clone().unwrap_or_else(|| format!("{name}:7500"));
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let Some((k, v)) = l.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            bail!("--label {l:?} is not KEY=VALUE");
        };
        labels.insert(k.to_owned(), v.to_owned());
    }
    let cpu_millis = match &args.cpus {
        Some(c) => super::cpus_flag(c)?,
        None => std::thread::available_parallelism().map(|n| n.get() as u64 * 1000).unwrap_or(1000),
    };
    let memory_bytes = match &args.memory {
        Some(m) => super::memory_flag(m)?,
        None => host_memory()?,
    };
    let overlay = overlay_keys(data_dir, &advertise, args.wireguard_port)?;
    Ok(RegisterRequest {
        node_id,
        name,
        advertise_address: advertise,
        labels: labels.into_iter().collect(),
        capacity: Some(NodeCapacity { cpu_millis, memory_bytes }),
        wireguard_public_key: overlay.as_ref().map(|k| k.public.clone()).unwrap_or_default(),
        wireguard_port: if overlay.is_some() { u32::from(args.wireguard_port) } else { 0 },
        reads: berth_proto::model::AGENT_READS,
    })
}

/// The node's WireGuard keys, when it is to have an overlay.
pub fn overlay_keys(data_dir: &Path, advertise: &str, port: u16) -> anyhow::Result<Option<Keys>> {
    if port == 0 {
        return Ok(None);
    }
    let ip = advertise.rsplit_once(':').and_then(|(h, _)| h.parse::<std::net::Ipv4Addr>().ok());
    if ip.is_none() {
        warn!("no overlay: --advertise {advertise} is not IPv4:PORT, so other nodes cannot reach this one's WireGuard");
        return Ok(None);
    }
    Ok(Some(Keys::load_or_make(data_dir).context("the node's WireGuard key")?))
}

/// The host name's first label, lowercased: a node name must be a DNS label.
fn host_name() -> anyhow::Result<String> {
    let host = nix::unistd::gethostname().context("reading the host name")?;
    let host = host.to_string_lossy().to_lowercase();
    Ok(host.split('.').next().unwrap_or_default().to_owned())
}

fn host_memory() -> anyhow::Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no MemTotal in /proc/meminfo")
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_address_follows_the_advertised_one() {
        let at = |l: Option<&str>, a: &str| listen_address(l, a).map(|s| s.to_string()).map_err(|e| e.to_string());
        assert_eq!(at(None, "198.18.0.2:7500").unwrap(), "198.18.0.2:7500");
        assert_eq!(at(None, "alpha:7600").unwrap(), "0.0.0.0:7600");
        assert_eq!(at(Some("127.0.0.1:9"), "alpha:7600").unwrap(), "127.0.0.1:9");
        assert!(at(None, "alpha").unwrap_err().contains("--advertise \"alpha\""));
        assert!(at(Some("alpha:1"), "alpha:7600").unwrap_err().contains("--listen"));
    }
}
