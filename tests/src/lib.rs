//! Test harness: real berth-server processes on loopback, each with its own
//! data dir, and helpers to drive, kill, freeze and restart them.
//!
//! Clusters are serialized within a test binary (one at a time) so that
//! timing-sensitive Raft elections are not starved on a small machine.

// A test harness: failing loudly on broken preconditions is its job.
#![allow(clippy::panic, clippy::expect_used)]

pub mod agent;
pub mod disk;
pub mod etcd;
pub mod hosts;
pub mod oci;
pub mod process;
pub mod registry;
pub mod token;

pub use process::Process;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use berth_proto::client::{Peer, Tls};
use berth_proto::contexts::ClientConfig;
use berth_proto::pb::cluster::cluster_client::ClusterClient;
use berth_proto::pb::cluster::*;
use tonic::transport::Channel;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The credentials of the cluster under test, as its users and hosts get
/// them: the bootstrap server's admin.conf and the join tokens. A test
/// binary runs one cluster at a time, so they are kept here for every
/// helper (berthctl, agents, clients) to use.
#[derive(Debug, Clone)]
pub struct Keys {
    pub admin_conf: PathBuf,
    pub admin: Tls,
    pub worker_token: Option<String>,
    pub server_token: Option<String>,
}

static KEYS: Mutex<Option<Keys>> = Mutex::new(None);

/// The current cluster's credentials.
pub fn keys() -> Keys {
    KEYS.lock().unwrap_or_else(|p| p.into_inner()).clone().expect("no cluster has been bootstrapped yet")
}

fn set_keys(keys: Option<Keys>) {
    *KEYS.lock().unwrap_or_else(|p| p.into_inner()) = keys;
}

/// Reads the admin's credential again (berthctl rewrote it: a CA rotation).
pub fn reload_keys() -> Result<()> {
    let mut keys = keys();
    keys.admin = tls_of(&keys.admin_conf)?;
    set_keys(Some(keys));
    Ok(())
}

/// The admin's TLS from a config file (an admin.conf).
pub fn tls_of(conf: &Path) -> Result<Tls> {
    let config = ClientConfig::load(conf)?;
    Ok(Tls::new(&config.context(None, conf)?.credentials())?)
}

/// Path of a workspace binary (built by `cargo build --workspace --bins`),
/// or of one installed in `BERTH_BIN_DIR` (the package test sets it).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    built(name)
}

/// The release package, `target/berth/berth_VERSION_amd64.deb`, as
/// tests/run.sh has deploy/package.sh build it before the tests.
pub fn release_package() -> anyhow::Result<PathBuf> {
    let name = format!("berth_{}_amd64.deb", env!("CARGO_PKG_VERSION"));
    let deb = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/berth").join(name);
    anyhow::ensure!(deb.exists(), "{} is missing: run deploy/package.sh (tests/run.sh does)", deb.display());
    Ok(deb)
}

/// Path of a binary of this build, wherever `BERTH_BIN_DIR` points.
pub fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/test-xxxx -> target/<profile>/<name>
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A client of the server at `addr`, as the current cluster's admin.
pub fn client(addr: &str) -> ClusterClient<Channel> {
    client_as(addr, &keys().admin)
}

/// A client of the server at `addr` presenting `tls`.
pub fn client_as(addr: &str, tls: &Tls) -> ClusterClient<Channel> {
    let settings = berth_proto::client::Settings {
        connect_timeout: Duration::from_secs(1),
        ..berth_proto::client::Settings::calls(Duration::from_secs(10))
    };
    let channel = berth_proto::client::channel(addr, &settings, &tls.connector(Peer::Server))
        .unwrap_or_else(|e| panic!("bad address {addr}: {e}"));
    ClusterClient::new(channel).max_decoding_message_size(MAX_MESSAGE)
}

/// The cluster CIDR of every test cluster.
pub const CLUSTER_CIDR: &str = "198.19.0.0/16";

/// Replies (a list of every service) may be large.
pub const MAX_MESSAGE: usize = 64 << 20;

/// One berth-server process.
#[derive(Debug)]
pub struct Server {
    pub addr: String,
    pub data_dir: PathBuf,
    /// Settings passed at every start (as a service unit would).
    settings: Vec<String>,
    process: Process,
    /// The network namespace of the host it runs on (see `hosts`), if not this one.
    netns: Option<String>,
}

impl Server {
    fn spawn(&mut self, first_start: &[String]) -> Result<()> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(bin("berth-server"));
                c
            }
            None => Command::new(bin("berth-server")),
        };
        // Container addresses from the range tests may use (DESIGN.md),
        // unless the settings name a range of it themselves.
        let cidr: &[&str] =
            if self.settings.iter().any(|s| s == "--cluster-cidr") { &[] } else { &["--cluster-cidr", CLUSTER_CIDR] };
        self.process.start(
            cmd.arg("--data-dir")
                .arg(&self.data_dir)
                .args(&self.settings)
                .args(cidr)
                .args(first_start)
                // BERTH_SERVER_LOG (a filter) looks closer at a run's servers.
                .env("BERTH_LOG", std::env::var("BERTH_SERVER_LOG").unwrap_or_else(|_| "info,openraft=warn".into())),
        )
    }

    /// Restarts a stopped server with its data dir and settings (no bootstrap/join/listen).
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("server {} is still running", self.addr);
        }
        self.spawn(&[])
    }

    /// Restarts a stopped server with its data dir and settings, and `once`
    /// for this start only (`--force-new-cluster`).
    pub fn restart_with(&mut self, once: &[&str]) -> Result<()> {
        if self.is_running() {
            bail!("server {} is still running", self.addr);
        }
        self.spawn(&once.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Its exit status, once it has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.exited()
    }

    /// SIGTERM and wait for a clean exit; returns its exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.process.stop(Duration::from_secs(15)).with_context(|| format!("server {}", self.addr))
    }

    pub fn freeze(&self) -> Result<()> {
        self.process.signal("STOP")
    }

    pub fn thaw(&self) -> Result<()> {
        self.process.signal("CONT")
    }

    pub fn client(&self) -> ClusterClient<Channel> {
        client(&self.addr)
    }

    /// This server's own view of Raft.
    pub async fn local_status(&self) -> Result<ClusterStatusReply> {
        Ok(self.client().cluster_status(ClusterStatusRequest { local: true }).await?.into_inner())
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// A cluster of berth-server processes on loopback.
#[derive(Debug)]
pub struct Cluster {
    pub servers: Vec<Server>,
    pub dir: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Bootstraps server 0, joins the rest, and waits until all are voters.
    pub async fn start(n: usize, extra: &[&str]) -> Result<Self> {
        let mut cluster = Self::prepare()?;
        for i in 0..n {
            cluster.add_server(i == 0, extra)?;
            if i == 0 {
                cluster.founded().await?;
            }
        }
        if let Err(e) = cluster.wait_for_voters(n).await {
            return Err(e.context(cluster.logs()));
        }
        Ok(cluster)
    }

    /// A cluster of one server on each of `hosts` (port 7400 of its address).
    pub async fn start_on(hosts: &[&hosts::Host], extra: &[&str]) -> Result<Self> {
        let mut cluster = Self::prepare()?;
        for (i, host) in hosts.iter().enumerate() {
            cluster.add_server_at(i == 0, extra, format!("{}:7400", host.ip), Some(host.netns.clone()))?;
            if i == 0 {
                cluster.founded().await?;
            }
        }
        cluster.wait_for_voters(hosts.len()).await?;
        Ok(cluster)
    }

    /// A cluster of no servers yet, its turn taken: prepare the data dirs
    /// (`server_dir`), then `add_server`, `founded`, `wait_for_voters`.
    pub fn prepare() -> Result<Self> {
        let turn = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir()?;
        Ok(Cluster { servers: Vec::new(), dir, _turn: turn })
    }

    /// The data dir server `i` has, or will have.
    pub fn server_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("server-{i}"))
    }

    /// Starts one more server: the bootstrap one, or one joining through server 0.
    pub fn add_server(&mut self, bootstrap: bool, extra: &[&str]) -> Result<usize> {
        self.add_server_at(bootstrap, extra, format!("127.0.0.1:{}", free_port()), None)
    }

    /// Starts one more server at `addr` (one of a stopped server, say) with
    /// a new data dir and these first-start flags (`--restore F --bootstrap`).
    pub fn add_server_with(&mut self, addr: &str, first_start: &[&str], extra: &[&str]) -> Result<usize> {
        let first_start = first_start.iter().map(|s| s.to_string()).collect();
        self.spawn_server(addr.to_owned(), None, first_start, extra)
    }

    fn add_server_at(&mut self, bootstrap: bool, extra: &[&str], addr: String, netns: Option<String>) -> Result<usize> {
        let first_start = if bootstrap {
            vec!["--bootstrap".to_string()]
        } else {
            let token = keys().server_token.context("the cluster's server token is not known yet")?;
            vec!["--join".into(), self.servers[0].addr.clone(), "--token".into(), token]
        };
        self.spawn_server(addr, netns, first_start, extra)
    }

    /// Starts server `servers.len()` at `addr` with a new data dir, listening
    /// there, with `first_start` on this start only and `extra` on every one.
    fn spawn_server(
        &mut self,
        addr: String,
        netns: Option<String>,
        first_start: Vec<String>,
        extra: &[&str],
    ) -> Result<usize> {
        let i = self.servers.len();
        let mut server = Server {
            addr: addr.clone(),
            data_dir: self.server_dir(i),
            settings: extra.iter().map(|s| s.to_string()).collect(),
            process: Process::new(self.dir.path().join(format!("server-{i}.log"))),
            netns,
        };
        let args: Vec<String> = ["--listen".to_string(), addr].into_iter().chain(first_start).collect();
        server.spawn(&args)?;
        self.servers.push(server);
        Ok(i)
    }

    /// Waits for the bootstrap server: its admin.conf, one voter, and the
    /// cluster's identity recorded (the join tokens answer).
    pub async fn founded(&mut self) -> Result<()> {
        let conf = self.admin_conf();
        let admin = wait_for(Duration::from_secs(30), "the bootstrap server's admin.conf", async || tls_of(&conf).ok())
            .await
            .with_context(|| self.logs())?;
        set_keys(Some(Keys { admin_conf: conf, admin, worker_token: None, server_token: None }));
        self.wait_for_voters(1).await?;
        let addr = self.servers[0].addr.clone();
        let token = async |role: &str| {
            let mut c = client(&addr);
            c.join_token(JoinTokenRequest { role: role.into(), rotate: false }).await.ok().map(|r| r.into_inner().token)
        };
        let worker = wait_for(Duration::from_secs(30), "the worker join token", async || token("worker").await).await?;
        let server = wait_for(Duration::from_secs(30), "the server join token", async || token("server").await).await?;
        let mut keys = keys();
        keys.worker_token = Some(worker);
        keys.server_token = Some(server);
        set_keys(Some(keys));
        Ok(())
    }

    /// The first admin's credential, written by the bootstrap server.
    pub fn admin_conf(&self) -> PathBuf {
        self.dir.path().join("server-0").join("admin.conf")
    }

    pub fn addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.addr.clone()).collect()
    }

    /// The cluster status as the first answering running server reports it.
    pub async fn status(&mut self) -> Result<ClusterStatusReply> {
        let mut last = anyhow!("no server is running");
        for s in &mut self.servers {
            if !s.is_running() {
                continue;
            }
            let mut c = s.client();
            let mut req = tonic::Request::new(ClusterStatusRequest { local: false });
            req.set_timeout(Duration::from_secs(3));
            match c.cluster_status(req).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(e) => last = anyhow!("{}: {e}", s.addr),
            }
        }
        Err(last)
    }

    /// Index in `servers` of the current leader, once one is elected.
    pub async fn leader(&mut self) -> Result<usize> {
        wait_for(Duration::from_secs(20), "a leader", async || {
            let st = self.status().await.ok()?;
            let leader = st.members.iter().find(|m| Some(m.id) == st.leader_id)?;
            let i = self.servers.iter().position(|s| s.addr == leader.address)?;
            self.servers[i].is_running().then_some(i)
        })
        .await
    }

    pub async fn wait_for_voters(&mut self, n: usize) -> Result<()> {
        wait_for(Duration::from_secs(60), &format!("{n} voters"), async || {
            let st = self.status().await.ok()?;
            let voters = st.members.iter().filter(|m| m.role != "learner").count();
            (voters == n && st.leader_id.is_some()).then_some(())
        })
        .await
    }

    /// Waits until every running server has applied everything the leader committed.
    pub async fn wait_converged(&mut self) -> Result<u64> {
        wait_for(Duration::from_secs(60), "all servers to apply the leader's log", async || {
            let commit = self.status().await.ok()?.commit_index?;
            for s in &mut self.servers {
                if s.is_running() {
                    let st = s.local_status().await.ok()?;
                    if st.applied_index? < commit {
                        return None;
                    }
                }
            }
            Some(commit)
        })
        .await
    }

    /// Lists services from one server's own applied state.
    pub async fn local_services(&self, i: usize) -> Result<Vec<String>> {
        let reply = self.servers[i].client().list_services(ListServicesRequest { stale: true }).await?.into_inner();
        Ok(reply.services.into_iter().filter_map(|s| s.spec.map(|s| s.name)).collect())
    }

    /// Every server's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.servers.iter().map(|s| format!("==== {} ====\n{}", s.addr, s.log_text())).collect()
    }
}

/// Polls `check` until it returns `Some`, or fails after `limit` (a hang guard, not a performance bound).
pub async fn wait_for<T>(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal valid spec.
pub fn spec(name: &str) -> ServiceSpec {
    ServiceSpec { name: name.into(), image: "busybox:1.36".into(), replicas: 1, ..Default::default() }
}

/// Runs berthctl with `args` as the current cluster's admin; returns
/// (exit success, stdout, stderr).
pub fn berthctl(servers: &[String], args: &[&str]) -> Result<(bool, String, String)> {
    berthctl_as(&keys().admin_conf, servers, args)
}

/// Runs berthctl with `input` on its stdin.
pub fn berthctl_stdin(servers: &[String], args: &[&str], input: &[u8]) -> Result<(bool, String, String)> {
    use std::io::Write;
    let mut child = Command::new("timeout")
        .args(["--kill-after=10", "300"])
        .arg(bin("berthctl"))
        .env("BERTH_CONFIG", &keys().admin_conf)
        .env("BERTH_SERVER", servers.join(","))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("berthctl's stdin")?.write_all(input)?;
    let out = child.wait_with_output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into()))
}

/// Runs berthctl with the config `conf`; one that has not ended after 5
/// minutes (a wait that never converges) is killed, so a test fails
/// rather than hangs.
pub fn berthctl_as(conf: &Path, servers: &[String], args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new("timeout")
        .args(["--kill-after=10", "300"])
        .arg(bin("berthctl"))
        .env("BERTH_CONFIG", conf)
        .env("BERTH_SERVER", servers.join(","))
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into()))
}

/// The text of `http://ADDR/metrics`, as Prometheus would scrape it.
pub fn scrape(addr: &str) -> Result<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().with_context(|| format!("{addr} is not IP:PORT"))?;
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: berth\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").context("no blank line after the headers")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET http://{addr}/metrics: {head}");
    }
    Ok(body.to_owned())
}

/// One series' value in scraped text: `name` is the series as written,
/// labels included (`berth_tasks{state="running"}`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
