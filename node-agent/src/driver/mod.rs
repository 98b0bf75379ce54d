//! The driver: where the node's share of the cluster's work meets IO. It
//! carries out what the pure core decides (`tasks::step` for the tasks,
//! `network::plan` for the node's network) through narrow ports
//! ([`ports`]: containers, images, network), with the real ones in
//! [`host`] and recording fakes beside them in tests.
//!
//! ```text
//!                 ┌─▶ netloop: plan::next ─▶ Network::apply ─────────────────▶ bridge, overlay, mesh, DNS
//!                 ├─▶ volloop: volumes on disk ≠ the cluster's list ─▶ cluster::report_volumes
//! cluster::watch ─┤   (Assignment, from whichever server answers)
//!                 └─▶ jobs: step(assignment, containers, books, now) ─▶ jobs ─▶ Containers, Images, Network
//!                                                                └─▶ reports ─▶ cluster::report
//! ```
//!
//! Nothing is done before the cluster's first word: an agent that restarts
//! must not take "no assignment yet" for "stop every task".

mod cluster;
mod host;
mod jobs;
mod netloop;
pub mod ports;
mod volloop;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use berth_proto::client::Servers;
use tokio::sync::watch;

pub use host::{HostNetwork, StoreImages};

use crate::network::plan::Features;
use ports::{Containers, Images, Network};

/// How the worker behaves; `Settings::default` is what a node runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Grace between SIGTERM and SIGKILL when a task is stopped.
    pub stop_grace: Duration,
    /// How often the worker looks again without news while something is
    /// under way (a job, a probe, a leased container) or waits on time
    /// (`Step::waiting`), and a failed
    /// network step is tried again.
    pub tick: Duration,
    /// How often it looks when nothing is under way. Every running
    /// container's end wakes it (its shim's pidfd, whoever started it), as
    /// do its own jobs, probes, new assignments and reports, so a look at
    /// rest only catches what those missed; at rest, a look every 200 ms
    /// was a third of an idle agent's CPU, and one a second most of its
    /// wakes.
    pub rest: Duration,
    /// How long the task watch waits for a server's next message (they
    /// come every 5 s at least) before it takes the server for frozen.
    pub watch_deadline: Duration,
    /// Parent cgroup of the tasks' containers.
    pub cgroup_parent: String,
    /// The cluster domain containers search, when the node runs DNS.
    pub dns_domain: Option<String>,
    pub features: Features,
    /// The most processes (and threads) a task's container may have: a
    /// fork bomb in one task takes down neither the node nor its others.
    pub pids_limit: Option<u64>,
    /// The static init a task with `init` runs as PID 1 (tini-static).
    pub init_path: std::path::PathBuf,
    /// How long a task whose lease lapsed gets between SIGTERM and SIGKILL
    /// (see `tasks::fence`): short, since the lease ends only a little
    /// before the cluster may start it elsewhere.
    pub fence_grace: Duration,
    /// What `/metrics` shows of the worker's work.
    pub stats: crate::stats::AgentStats,
}

/// The node's lease from the cluster's leader (see `tasks::fence`): until
/// when it holds (ns on the host's boot clock, `berth_monitor::lease`, as
/// the monitors read it), and the tasks with an exclusive volume it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub until: u64,
    pub exclusive: std::collections::BTreeSet<String>,
}

/// What the node's heartbeats have earned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    /// A heartbeat has been answered (or has failed) since the agent
    /// started: until then nothing is fenced, nor started under a lease.
    pub heard: bool,
    pub lease: Option<Lease>,
}

impl Leases {
    /// The lease, while it holds with `grace` to spare: a task it stops
    /// gets its grace before the lease's end, when its monitor kills it.
    pub fn valid(&self, grace: Duration) -> Option<&Lease> {
        let now = berth_monitor::lease::now_ns().saturating_add(grace.as_nanos().min(u64::MAX as u128) as u64);
        self.lease.as_ref().filter(|l| self.heard && now < l.until)
    }
}

/// Where Debian's tini package puts its static build, what `--init` runs
/// (Docker's `docker-init` is tini too).
pub const DEFAULT_INIT: &str = "/usr/bin/tini-static";

/// Tasks' process limit unless the node says otherwise (`--pids-limit`),
/// as Podman's and CRI-O's defaults bound it.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

impl Default for Settings {
    fn default() -> Self {
        Self {
            stop_grace: Duration::from_secs(10),
            tick: Duration::from_millis(200),
            rest: Duration::from_secs(10),
            watch_deadline: Duration::from_secs(15),
            cgroup_parent: "berth".into(),
            dns_domain: None,
            features: Features { overlay: false, dns: false },
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
            init_path: DEFAULT_INIT.into(),
            fence_grace: Duration::from_millis(500),
            stats: crate::stats::AgentStats::default(),
        }
    }
}

/// A node's worker: its ports and settings.
#[derive(Debug)]
pub struct Worker<C, I, N> {
    pub containers: C,
    pub images: I,
    pub network: N,
    pub settings: Settings,
}

impl<C: Containers, I: Images, N: Network> Worker<C, I, N> {
    /// Runs until the future is dropped: watches `servers` for what node
    /// `node_id` should do, does it, and reports back; `lease` is what the
    /// node's heartbeats earn.
    pub async fn run(self: Arc<Self>, node_id: String, servers: Servers, lease: watch::Receiver<Leases>) {
        let (assigned_tx, mut assigned) = watch::channel(None);
        let (reports_tx, reports_rx) = watch::channel(Vec::new());
        let (taken_tx, taken_rx) = watch::channel(Vec::new());
        let watch = cluster::watch(servers.clone(), node_id.clone(), self.settings.watch_deadline, assigned_tx);
        let volumes = (servers.clone(), node_id.clone());
        let report = cluster::report(servers, node_id, reports_rx, taken_tx);
        let work = async {
            if assigned.wait_for(Option::is_some).await.is_err() {
                return;
            }
            tokio::join!(
                netloop::run(self.clone(), assigned.clone()),
                volloop::run(self.clone(), (assigned.clone(), reports_tx.subscribe()), volumes.0, volumes.1),
                jobs::run(self.clone(), assigned, reports_tx, taken_rx, lease)
            );
        };
        tokio::join!(watch, report, work);
    }

    /// Runs a call to the node's network on the blocking pool (its calls
    /// run commands and syscalls).
    async fn network<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&N) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let worker = self.clone();
        tokio::task::spawn_blocking(move || f(&worker.network)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}
