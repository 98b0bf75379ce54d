//! The real ports: containers through the runtime, images through the
//! store, and the node's network through iproute2, iptables, boringtun and
//! the DNS server. File work and commands run on tokio's blocking pool, so
//! the agent's one thread (heartbeats, the watch, DNS updates) never waits
//! on a disk.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_proto::metrics::{
    self, prometheus_client::collector::Collector, prometheus_client::encoding::DescriptorEncoder,
};
use berth_proto::model::{NodeNetwork, NodeVolume, Probe, Protocol, Pull};
use tracing::{info, warn};

use super::ports::{Attached, Containers, Ended, Images, Network, Pulled};
use crate::dns::{self, zone, Dns};
use crate::image::{ImageRef, PullError, Registries, Store};
use crate::network::overlay::{self, Keys, Overlay};
use crate::network::plan::NetStep;
use crate::network::{self as net, IpRoute, NodeNet};
use crate::runtime::userns::IdRanges;
use crate::runtime::{pidfd, record, Container, ContainerConfig, Launch, Runtime, RuntimeError, Started, Status};
use crate::stats::AgentStats;
use crate::tasks::health::{self, Outcome};
use crate::tasks::step::Observed;

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(RuntimeError::Other { name: String::new(), message: format!("a blocking task failed: {e}") })
    })
}

impl Containers for Runtime {
    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        let runtime = self.clone();
        blocking(move || Ok(observe(runtime.list()?))).await
    }

    async fn create(&self, config: ContainerConfig) -> Result<(), RuntimeError> {
        let runtime = self.clone();
        // Creating syncs the config to disk: the syncs of tasks starting together overlap.
        blocking(move || runtime.create(&config).map(drop)).await
    }

    async fn volumes(&self) -> Result<Vec<NodeVolume>, RuntimeError> {
        let runtime = self.clone();
        blocking(move || runtime.node_volumes()).await
    }

    async fn fence(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        if Runtime::get(self, name)?.status == Status::Lost {
            // No monitor: what is left of it is killed, cgroup and all.
            return self.kill(name, nix::sys::signal::Signal::SIGKILL, true);
        }
        Runtime::stop(self, name, grace).await.map(drop)
    }

    async fn renew_lease(&self, name: &str, deadline_ns: u64) -> Result<(), RuntimeError> {
        let (runtime, name) = (self.clone(), name.to_owned());
        blocking(move || runtime.renew_lease(&name, deadline_ns)).await
    }

    /// The shim, this process's child, is reaped by tokio once it exits.
    async fn start(&self, name: &str, launch: Launch) -> Result<(), RuntimeError> {
        let shim = Runtime::start(self, name, &launch).await?;
        info!(task = name, pid = shim.pid, "task started");
        Ok(())
    }

    fn end_of(&self, name: &str, running: &Started) -> Result<Option<Ended>, RuntimeError> {
        let io = |e: io::Error| RuntimeError::Other { name: name.into(), message: format!("watching its shim: {e}") };
        Ok(pidfd::shim_end(running).map_err(io)?.map(|end| Box::pin(end) as Ended))
    }

    /// With the task's own grace when its spec gives one.
    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let grace = self.get(name).map_or(grace, |c| c.config.stop_grace(grace));
        Runtime::stop(self, name, grace).await.map(drop)
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        Runtime::remove(self, name, true).await
    }

    async fn renew(&self, name: &str) -> Result<(), RuntimeError> {
        let (runtime, name) = (self.clone(), name.to_owned());
        blocking(move || runtime.renew(&name)).await
    }

    async fn probe(&self, name: &str, probe: &Probe, address: Option<Ipv4Addr>, timeout: Duration) -> Outcome {
        let no_address = || "a tcp or http probe needs the task's own address, and it has none".to_owned();
        let at = |port: u16| address.map(|a| SocketAddr::from((a, port))).ok_or_else(no_address);
        match probe {
            Probe::Exec(args) => match self.exec(name, args, timeout, health::OUTPUT_BYTES).await {
                Ok(out) if out.code == 0 => Ok(()),
                Ok(out) => Err(format!("exit code {}: {}", out.code, out.output.trim())),
                Err(e) => Err(e.to_string()),
            },
            Probe::Http { port, path } => crate::probe::http(at(*port)?, path, timeout).await,
            Probe::Tcp { port } => crate::probe::tcp(at(*port)?, timeout).await,
            Probe::Disable => Ok(()),
        }
    }
}

/// The task containers among `containers`, as the worker's step sees them.
fn observe(containers: Vec<Container>) -> Vec<Observed> {
    containers
        .into_iter()
        .filter_map(|c| {
            let task = c.config.task.clone()?;
            let ran_for = match &c.status {
                Status::Exited(e) => {
                    let started: Option<record::Started> = record::read(&c.dir, record::STARTED).ok().flatten();
                    started.map_or(Duration::ZERO, |s| {
                        Duration::from_millis(e.finished_at_ms.saturating_sub(s.started_at_ms))
                    })
                }
                // Running: for how long so far.
                Status::Running(s) => Duration::from_millis(record::now_ms().saturating_sub(s.started_at_ms)),
                _ => Duration::ZERO,
            };
            let exclusive = c.config.overrides.options.exclusive();
            Some(Observed { task, status: c.status, ran_for, check: c.config.health_check(), exclusive })
        })
        .collect()
}

/// The node's image store and the registries it pulls from.
#[derive(Debug, Clone)]
pub struct StoreImages {
    pub store: Store,
    pub registries: Registries,
}

impl Images for StoreImages {
    async fn ensure(&self, image: &ImageRef, pull: Pull) -> Result<Pulled, PullError> {
        let image = match pull {
            Pull::Missing => self.store.ensure(image, &self.registries).await?,
            // Layers it has are not fetched again; the manifest is.
            Pull::Always => self.store.pull(image, &self.registries).await?,
            Pull::Never => self.store.get(image).map_err(|e| match e {
                PullError::NotPulled(name) => {
                    PullError::NotFound(format!("image {name} is not on this node, and its pull policy is never"))
                }
                e => e,
            })?,
        };
        Ok(Pulled { layers: self.store.layer_dirs(&image)?, image })
    }
}

/// The node's network on this host: its bridge, its tasks' namespaces, the
/// overlay, the routing mesh's rules and DNS. Each part has a lock of its
/// own, so a task's namespace is never held up by the overlay's UAPI.
#[derive(Debug)]
pub struct HostNetwork {
    pub bridge: String,
    pub mtu: u32,
    /// Where task namespaces are kept, one file each.
    pub netns_dir: PathBuf,
    /// Claims of user namespace ids, shared with the runtime.
    pub ids: IdRanges,
    /// The node's WireGuard keys and UDP port, when it has an overlay.
    pub overlay: Option<(Keys, u16)>,
    /// Ports of the agent's own that the routing mesh leaves alone.
    pub reserved: Vec<(u16, Protocol)>,
    /// The node's DNS, when it runs one.
    pub dns: Option<dns::Settings>,
    live_net: Mutex<Option<Arc<NodeNet<IpRoute>>>>,
    live_overlay: Arc<Mutex<Option<Overlay>>>,
    /// DNS counts its questions here.
    pub stats: AgentStats,
    live_dns: Mutex<Option<(Dns, NodeNetwork)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl HostNetwork {
    pub fn new(bridge: String, mtu: u32, netns_dir: PathBuf, ids: IdRanges) -> Self {
        Self {
            bridge,
            mtu,
            netns_dir,
            ids,
            overlay: None,
            reserved: Vec::new(),
            dns: None,
            live_net: Mutex::new(None),
            live_overlay: Arc::default(),
            stats: AgentStats::default(),
            live_dns: Mutex::new(None),
        }
    }

    /// What `/metrics` reads of the overlay at each scrape.
    pub fn overlay_traffic(&self) -> OverlayTraffic {
        OverlayTraffic(self.live_overlay.clone())
    }

    fn net(&self) -> io::Result<Arc<NodeNet<IpRoute>>> {
        lock(&self.live_net).clone().ok_or_else(|| io::Error::other("the node's bridge is not ready yet"))
    }

    /// Starts the node's DNS on its bridge's gateway (and `--dns-listen`).
    fn start_dns(&self, settings: &dns::Settings, net: &NodeNet<IpRoute>) -> io::Result<Dns> {
        let gateway = SocketAddr::from((net.subnet.gateway(), 53));
        let addresses: Vec<SocketAddr> = std::iter::once(gateway).chain(settings.listen).collect();
        let own: Vec<std::net::IpAddr> = addresses.iter().map(|a| a.ip()).collect();
        let upstreams = if settings.upstreams.is_empty() {
            dns::upstreams(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(), &own)
        } else {
            settings.upstreams.iter().map(|ip| SocketAddr::new(*ip, 53)).collect()
        };
        let zone = zone::Zone::new(&settings.domain, settings.ttl).map_err(io::Error::other)?;
        let server = Dns::serve(zone, &addresses, upstreams.clone(), self.stats.clone())?;
        info!(?addresses, ?upstreams, domain = %settings.domain, "DNS up");
        Ok(server)
    }
}

/// The overlay's peers and bytes, read from boringtun when scraped (no
/// overlay yet: nothing is written).
#[derive(Debug)]
pub struct OverlayTraffic(Arc<Mutex<Option<Overlay>>>);

impl Collector for OverlayTraffic {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let traffic = lock(&self.0).as_ref().map(Overlay::traffic);
        let t = match traffic {
            Some(Ok(t)) => t,
            Some(Err(err)) => {
                warn!("reading the overlay's traffic: {err}");
                return Ok(());
            }
            None => return Ok(()),
        };
        metrics::gauge(&mut e, "overlay_peers", "WireGuard peers of this node", t.peers as i64)?;
        metrics::counter(&mut e, "overlay_received_bytes", "Bytes received from overlay peers", t.rx_bytes)?;
        metrics::counter(&mut e, "overlay_sent_bytes", "Bytes sent to overlay peers", t.tx_bytes)
    }
}

impl Network for HostNetwork {
    fn apply(&self, step: &NetStep) -> io::Result<()> {
        match step {
            NetStep::Bridge(n) => {
                let made = NodeNet {
                    bridge: self.bridge.clone(),
                    subnet: n.subnet,
                    cluster: n.cluster,
                    mtu: self.mtu,
                    netns_dir: self.netns_dir.clone(),
                    ids: self.ids.clone(),
                    host: IpRoute,
                };
                made.ensure()?;
                // What served the old subnet goes (DNS frees its addresses);
                // until the new one is ready, the old one stands whole.
                lock(&self.live_overlay).take();
                lock(&self.live_dns).take();
                info!(bridge = %made.bridge, subnet = %n.subnet, "node network ready");
                *lock(&self.live_net) = Some(Arc::new(made));
            }
            NetStep::Overlay => {
                let net = self.net()?;
                let (keys, port) = self.overlay.as_ref().ok_or_else(|| io::Error::other("this node has no overlay"))?;
                let started = Overlay::start(keys, *port, net.mtu, net.cluster, net.subnet.gateway(), &IpRoute)?;
                info!(interface = %started.interface, port, "overlay up");
                *lock(&self.live_overlay) = Some(started);
            }
            NetStep::Peers(peers) => {
                let wanted: BTreeMap<String, overlay::Peer> = peers
                    .iter()
                    .map(|p| {
                        (p.public_key.clone(), overlay::Peer { endpoint: p.endpoint.to_string(), subnet: p.subnet })
                    })
                    .collect();
                let mut live = lock(&self.live_overlay);
                live.as_mut().ok_or_else(|| io::Error::other("the overlay is not up"))?.set_peers(wanted)?;
            }
            NetStep::Mesh { before, wanted } => self.net()?.publish(&self.reserved, before.as_deref(), wanted)?,
            NetStep::Dns => {
                let net = self.net()?;
                let settings = self.dns.as_ref().ok_or_else(|| io::Error::other("this node runs no DNS"))?;
                let server = self.start_dns(settings, &net)?;
                *lock(&self.live_dns) = Some((server, NodeNetwork { subnet: net.subnet, cluster: net.cluster }));
            }
            NetStep::Zone(services) => {
                let live = lock(&self.live_dns);
                let (server, n) = live.as_ref().ok_or_else(|| io::Error::other("DNS is not up"))?;
                let cluster = n.cluster;
                server.update(|zone| zone.update(Some(cluster), services.clone()));
            }
        }
        Ok(())
    }

    fn refresh(&self) {
        if let Some(o) = lock(&self.live_overlay).as_ref() {
            if let Err(e) = o.size_sockets() {
                warn!("sizing the overlay's sockets: {e}");
            }
        }
    }

    fn attach(&self, task: &str, address: Ipv4Addr, userns: bool) -> io::Result<Attached> {
        let net = self.net()?;
        let sandbox = net.attach(task, address, userns)?;
        Ok(Attached { netns: sandbox.netns, gateway: net.subnet.gateway(), userns: sandbox.userns })
    }

    fn detach(&self, task: &str) -> io::Result<()> {
        net::detach(&IpRoute, &self.netns_dir, &self.ids, task)
    }

    fn attached(&self) -> Vec<String> {
        net::attached(&self.netns_dir)
    }
}
