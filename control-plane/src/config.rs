//! Server settings from flags, environment variables and an optional TOML
//! file (in that order of precedence), and the identity kept in the data dir.
//!
//! The identity (id, addresses, how it joined) is written once, at first
//! start, so a restart needs nothing but `--data-dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_proto::model::{Cidr, NetworkConfig};
use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::store::NodeId;

#[derive(Debug, Clone, Default, Parser, Deserialize)]
#[command(name = "berth-server", version, about = "berth's Raft-replicated control plane")]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Args {
    /// TOML file with any of these settings (flags and environment win)
    #[arg(long, env = "BERTH_SERVER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory for the Raft log, state and identity
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve gRPC on (default 127.0.0.1:7400)
    #[arg(long, env = "BERTH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address other servers and clients reach this one at (default: --listen)
    #[arg(long, env = "BERTH_ADVERTISE")]
    pub advertise: Option<String>,
    /// Start a new cluster with this server as its only member
    #[arg(long, env = "BERTH_BOOTSTRAP", conflicts_with = "join")]
    #[serde(default)]
    pub bootstrap: bool,
    /// Join the cluster that the server at this address belongs to
    #[arg(long, env = "BERTH_JOIN")]
    pub join: Option<String>,
    /// With --bootstrap: start the new cluster from this backup
    /// (`berthctl cluster backup FILE`) instead of from nothing
    #[arg(long, env = "BERTH_RESTORE", requires = "bootstrap")]
    #[serde(skip)]
    pub restore: Option<PathBuf>,
    /// With --restore: a file holding the cluster's unlock key, for a
    /// backup taken while autolock was on
    #[arg(long, env = "BERTH_UNLOCK_KEY_FILE", requires = "restore")]
    #[serde(skip)]
    pub unlock_key_file: Option<PathBuf>,
    /// When a majority of the servers is lost for good: make this server,
    /// with all it holds, the only member of a cluster of its own, which
    /// other servers then join. Once only: remove it after this start
    #[arg(long, env = "BERTH_FORCE_NEW_CLUSTER", conflicts_with_all = ["bootstrap", "join"])]
    #[serde(skip)]
    pub force_new_cluster: bool,
    /// The server join token for --join (`berthctl cluster join-token server`)
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long a node's certificate is valid, e.g. 90d, 12h, 30m (default
    /// 90d); each node renews its own before expiry. Set at bootstrap
    #[arg(long, env = "BERTH_CERT_VALIDITY")]
    pub cert_validity: Option<String>,
    /// Leader heartbeat period in milliseconds (default 100)
    #[arg(long, env = "BERTH_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Leader heartbeat period in milliseconds while nothing is written (default 1000; 0: always
    /// --heartbeat-ms). Followers are told, and wait that much longer before they stand, so a leader
    /// lost at rest is replaced about this much later
    #[arg(long, env = "BERTH_QUIET_HEARTBEAT_MS")]
    pub quiet_heartbeat_ms: Option<u64>,
    /// Election timeout in milliseconds (default 300): a voter that hears no leader for a random
    /// time in [this, 1.5 x this] stands for election if a majority says it would vote for it
    #[arg(long, env = "BERTH_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Take a snapshot after this many log entries (default 10000)
    #[arg(long, env = "BERTH_SNAPSHOT_LOGS")]
    pub snapshot_logs: Option<u64>,
    /// Log entries kept behind a snapshot for slow followers (default 1000)
    #[arg(long, env = "BERTH_KEEP_LOGS")]
    pub keep_logs: Option<u64>,
    /// How long a request may wait for a leader and a quorum, in milliseconds (default 5000)
    #[arg(long, env = "BERTH_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// The largest request a client or an agent may send, in bytes
    /// (default 1572864, 1.5 MiB, as etcd); larger ones are refused with
    /// the limit named. Servers' own Raft messages are not bound by it.
    #[arg(long, env = "BERTH_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Calls one connection may have open at once (HTTP/2 streams; default
    /// 256). Past it, a client's next call waits for one to end.
    #[arg(long, env = "BERTH_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: Option<u32>,
    /// Log follows and event watches one caller (a user, a server) may have
    /// open at once on this server (default 32); past it, RESOURCE_EXHAUSTED.
    #[arg(long, env = "BERTH_MAX_WATCHES_PER_CALLER")]
    pub max_watches_per_caller: Option<usize>,
    /// A node not heard from for this long is down (default 4000; with the
    /// agents' 1 s heartbeat a dead node is seen within 5 s, in clusters of
    /// up to --max-heartbeats-per-second nodes). Same on every server.
    #[arg(long, env = "BERTH_NODE_DOWN_AFTER_MS")]
    pub node_down_after_ms: Option<u64>,
    /// The most heartbeats a second all nodes together are asked for
    /// (default 1000; agents beating at 1 s or slower): past that many
    /// nodes, each is asked to beat less often than its own period, and
    /// has four of those periods to be heard before it is down. Same on
    /// every server.
    #[arg(long, env = "BERTH_MAX_HEARTBEATS_PER_SECOND")]
    pub max_heartbeats_per_second: Option<u32>,
    /// Containers' addresses come from this network, one subnet per node
    /// (default 10.42.0.0/16). Set once, by the cluster's first leader;
    /// later values are ignored with a warning.
    #[arg(long, env = "BERTH_CLUSTER_CIDR")]
    pub cluster_cidr: Option<String>,
    /// Prefix length of each node's subnet (default 24: 253 containers a node)
    #[arg(long, env = "BERTH_NODE_SUBNET_PREFIX")]
    pub node_subnet_prefix: Option<u8>,
    /// The ports services may publish, LOW-HIGH (default 1024-65535). Set
    /// once with the cluster network, by the cluster's first leader.
    #[arg(long, env = "BERTH_PUBLISHED_PORT_RANGE")]
    pub published_port_range: Option<String>,
    /// Registry credentials and insecure (plain HTTP) registries, TOML, as
    /// the agents' (default /etc/berth/registries.toml): this server
    /// resolves services' tags to digests with it.
    #[arg(long, env = "BERTH_REGISTRIES")]
    pub registries: Option<PathBuf>,
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics (off
    /// unless set; metrics hold no secrets, but keep it on a loopback or
    /// management address)
    #[arg(long, env = "BERTH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Settings after merging flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Unset: the identity's address on restart, else 127.0.0.1:7400.
    pub listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub bootstrap: bool,
    pub join: Option<String>,
    pub token: Option<String>,
    pub restore: Option<PathBuf>,
    pub unlock_key_file: Option<PathBuf>,
    pub force_new_cluster: bool,
    pub cert_validity: Duration,
    pub heartbeat: Duration,
    /// The heartbeat while nothing is written; None: always `heartbeat`.
    pub quiet_heartbeat: Option<Duration>,
    pub election_timeout: Duration,
    pub snapshot_logs: u64,
    pub keep_logs: u64,
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
    pub max_streams_per_connection: u32,
    pub max_watches_per_caller: usize,
    pub node_down_after: Duration,
    pub max_heartbeats_per_second: u32,
    pub network: NetworkConfig,
    pub registries: berth_proto::registries::Registries,
    pub metrics_listen: Option<SocketAddr>,
}

/// What a client's or agent's request may weigh: every spec fits with room
/// (`berth_proto::model::limits`), and so does any Raft entry it becomes.
pub const DEFAULT_MAX_REQUEST: usize = 1536 << 10;

impl Args {
    /// Fills what flags and environment left open from the config file, then defaults.
    pub fn resolve(self) -> Result<Config> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<Args>(&text).with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Args::default(),
        };
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .context("--data-dir is required (or BERTH_DATA_DIR, or data-dir in the config file)")?;
        let ms = |a: Option<u64>, b: Option<u64>, d: u64| Duration::from_millis(a.or(b).unwrap_or(d));
        let cfg = Config {
            data_dir,
            listen: self.listen.or(file.listen),
            advertise: self.advertise.or(file.advertise),
            bootstrap: self.bootstrap || file.bootstrap,
            join: self.join.or(file.join),
            token: self.token.or(file.token),
            restore: self.restore,
            unlock_key_file: self.unlock_key_file,
            force_new_cluster: self.force_new_cluster,
            cert_validity: validity(self.cert_validity.or(file.cert_validity).as_deref().unwrap_or("90d"))?,
            heartbeat: ms(self.heartbeat_ms, file.heartbeat_ms, 100),
            quiet_heartbeat: Some(ms(self.quiet_heartbeat_ms, file.quiet_heartbeat_ms, 1_000)).filter(|q| !q.is_zero()),
            election_timeout: ms(self.election_timeout_ms, file.election_timeout_ms, 300),
            snapshot_logs: self.snapshot_logs.or(file.snapshot_logs).unwrap_or(10_000),
            keep_logs: self.keep_logs.or(file.keep_logs).unwrap_or(1_000),
            request_timeout: ms(self.request_timeout_ms, file.request_timeout_ms, 5_000),
            max_request_bytes: self.max_request_bytes.or(file.max_request_bytes).unwrap_or(DEFAULT_MAX_REQUEST),
            max_streams_per_connection: self
                .max_streams_per_connection
                .or(file.max_streams_per_connection)
                .unwrap_or(berth_proto::client::MAX_STREAMS),
            max_watches_per_caller: self.max_watches_per_caller.or(file.max_watches_per_caller).unwrap_or(32),
            node_down_after: ms(self.node_down_after_ms, file.node_down_after_ms, 4_000),
            max_heartbeats_per_second: self
                .max_heartbeats_per_second
                .or(file.max_heartbeats_per_second)
                .unwrap_or(1_000),
            network: network(
                self.cluster_cidr.or(file.cluster_cidr),
                self.node_subnet_prefix.or(file.node_subnet_prefix),
                self.published_port_range.or(file.published_port_range),
            )?,
            registries: registries(self.registries.or(file.registries))?,
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
        };
        if cfg.max_streams_per_connection == 0 || cfg.max_watches_per_caller == 0 {
            bail!("--max-streams-per-connection and --max-watches-per-caller must be more than 0");
        }
        if cfg.node_down_after.is_zero() {
            bail!("--node-down-after-ms must be more than 0");
        }
        if cfg.max_heartbeats_per_second == 0 {
            bail!("--max-heartbeats-per-second must be more than 0");
        }
        if cfg.bootstrap && cfg.join.is_some() {
            bail!("--bootstrap and --join exclude each other: bootstrap the first server, join the others");
        }
        if cfg.restore.is_some() && !cfg.bootstrap {
            bail!("--restore starts a new cluster: give --bootstrap with it");
        }
        if cfg.force_new_cluster && (cfg.bootstrap || cfg.join.is_some()) {
            bail!("--force-new-cluster keeps this server's state: it excludes --bootstrap and --join");
        }
        if cfg.heartbeat.is_zero() || cfg.election_timeout <= cfg.heartbeat * 2 {
            bail!(
                "election timeout ({:?}) must be more than twice the heartbeat ({:?})",
                cfg.election_timeout,
                cfg.heartbeat
            );
        }
        if let Some(quiet) = cfg.quiet_heartbeat.filter(|q| *q <= cfg.heartbeat || *q > crate::quiet::MAX_PROMISE) {
            bail!(
                "--quiet-heartbeat-ms ({}) must be 0 (off), or more than the heartbeat ({:?}) and at most {} ms",
                quiet.as_millis(),
                cfg.heartbeat,
                crate::quiet::MAX_PROMISE.as_millis()
            );
        }
        if cfg.snapshot_logs == 0 {
            bail!("--snapshot-logs must be at least 1");
        }
        Ok(cfg)
    }
}

/// The registries file given, which must load; else the agents' default,
/// which may be missing or (an agent's, root's only) unreadable: then no
/// registry is special, and a warning says so.
fn registries(given: Option<PathBuf>) -> Result<berth_proto::registries::Registries> {
    use berth_proto::registries::Registries;
    match given {
        Some(path) => Registries::load(&path).map_err(anyhow::Error::msg),
        None => Ok(Registries::load(std::path::Path::new("/etc/berth/registries.toml")).unwrap_or_else(|e| {
            tracing::warn!("{e}; resolving tags with no registry credentials (--registries names another file)");
            Registries::default()
        })),
    }
}

/// `90d`, `12h`, `30m` or `600s`: at least a minute, so renewal has room.
fn validity(text: &str) -> Result<Duration> {
    let bad =
        || anyhow::anyhow!("--cert-validity {text:?} is not valid: expected a number and d, h, m or s, at least 1m");
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => None,
    };
    secs.filter(|s| *s >= 60).map(Duration::from_secs).ok_or_else(bad)
}

fn network(cidr: Option<String>, node_prefix: Option<u8>, ports: Option<String>) -> Result<NetworkConfig> {
    let default = NetworkConfig::DEFAULT;
    let cidr: Cidr = match cidr {
        Some(c) => c.parse().map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?,
        None => default.cidr,
    };
    let mut net = NetworkConfig::new(cidr, node_prefix.unwrap_or(default.node_prefix))
        .map_err(|e| anyhow::anyhow!("--node-subnet-prefix: {e}"))?;
    if let Some(range) = ports {
        net.published = range.parse().map_err(|e| anyhow::anyhow!("--published-port-range: {e}"))?;
    }
    Ok(net)
}

impl Config {
    /// Where to listen and what to advertise. A restarted server keeps the
    /// address it is known by in the membership; it may listen elsewhere.
    pub fn addresses(&self, identity: Option<&Identity>) -> Result<(SocketAddr, String)> {
        let listen =
            self.listen.or(identity.map(|i| i.listen)).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400)));
        if let Some(i) = identity {
            if self.advertise.as_ref().is_some_and(|a| *a != i.advertise) {
                bail!(
                    "this data dir belongs to server {} advertised as {}; its address cannot change \
                     (remove it with `berthctl cluster remove {}` and join again with a new data dir)",
                    i.id,
                    i.advertise,
                    i.id
                );
            }
            return Ok((listen, i.advertise.clone()));
        }
        let advertise = match &self.advertise {
            Some(a) => a.clone(),
            None if listen.ip().is_unspecified() => {
                bail!("--listen {listen} is not an address others can reach: set --advertise to this server's address")
            }
            None => listen.to_string(),
        };
        Ok((listen, advertise))
    }

    pub fn raft_config(&self) -> Result<openraft::Config> {
        // berth stands and beats itself (`elect`): openraft's timers are
        // only its append deadline and the lease after which it grants a vote.
        let (deadline, min, lease) = crate::elect::openraft_timers(self.heartbeat, self.election_timeout);
        let config = openraft::Config {
            cluster_name: "berth".into(),
            heartbeat_interval: deadline,
            election_timeout_min: min,
            election_timeout_max: lease,
            enable_elect: false,
            enable_heartbeat: false,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            max_in_snapshot_log_to_keep: self.keep_logs,
            ..Default::default()
        };
        Ok(config.validate()?)
    }
}

/// Who this server is, written at first start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub advertise: String,
    /// This server created the cluster.
    pub bootstrap: bool,
    /// The address it joined through, while its promotion to voter is unfinished.
    pub pending_promotion: Option<String>,
}

const IDENTITY: &str = "identity.json";

impl Identity {
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(IDENTITY);
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("corrupt {}", path.display()))?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes atomically and durably (temp file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        let tmp = dir.join(format!("{IDENTITY}.tmp"));
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(IDENTITY))?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("berth.toml");
        std::fs::write(&file, "data-dir = \"/var/lib/berth\"\nlisten = \"127.0.0.1:9000\"\nheartbeat-ms = 50\n")
            .expect("write");
        let args =
            Args::parse_from(["berth-server", "--config", file.to_str().expect("utf8"), "--listen", "127.0.0.1:9100"]);
        let cfg = args.resolve().expect("valid");
        let (listen, advertise) = cfg.addresses(None).expect("addresses");
        assert_eq!(listen.port(), 9100);
        assert_eq!(advertise, "127.0.0.1:9100");
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/berth"));
        assert_eq!(cfg.heartbeat, Duration::from_millis(50));
        assert_eq!(cfg.election_timeout, Duration::from_millis(300));
    }

    #[test]
    fn unknown_keys_in_file_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("berth.toml");
        std::fs::write(&file, "data-dir = \"/x\"\nlisten_addr = \"1\"\n").expect("write");
        let err = Args::parse_from(["berth-server", "--config", file.to_str().expect("utf8")]).resolve();
        assert!(format!("{:#}", err.expect_err("must fail")).contains("listen_addr"));
    }

    #[test]
    fn unspecified_listen_needs_advertise() {
        let cfg = Args::parse_from(["berth-server", "--data-dir", "/x", "--listen", "0.0.0.0:7400"]).resolve();
        let err = cfg.expect("valid").addresses(None);
        assert!(err.expect_err("must fail").to_string().contains("--advertise"));
    }

    #[test]
    fn certificate_validity_takes_units_and_refuses_the_rest() {
        assert_eq!(validity("90d").unwrap(), Duration::from_secs(90 * 86_400));
        assert_eq!(validity("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "90", "d", "30s", "1y", "-1d", "99999999999999999999d"] {
            assert!(validity(bad).unwrap_err().to_string().contains("--cert-validity"), "{bad}");
        }
    }

    #[test]
    fn restore_needs_bootstrap_and_forcing_keeps_state() {
        let e = Args::try_parse_from(["berth-server", "--data-dir", "/x", "--restore", "b.bak"]).unwrap_err();
        assert!(e.to_string().contains("--bootstrap"), "{e}");
        let ok = Args::parse_from(["berth-server", "--data-dir", "/x", "--restore", "b.bak", "--bootstrap"]).resolve();
        assert_eq!(ok.unwrap().restore, Some(PathBuf::from("b.bak")));
        for other in [&["--bootstrap"][..], &["--join", "198.18.0.1:7400"]] {
            let args = [&["berth-server", "--data-dir", "/x", "--force-new-cluster"][..], other].concat();
            assert!(Args::try_parse_from(args).is_err(), "{other:?}");
        }
        let e = Args::try_parse_from(["berth-server", "--data-dir", "/x", "--unlock-key-file", "k"]).unwrap_err();
        assert!(e.to_string().contains("--restore"), "{e}");
    }

    #[test]
    fn identity_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Identity::load(dir.path()).expect("load"), None);
        let id = Identity {
            id: 3,
            listen: "127.0.0.1:1".parse().expect("addr"),
            advertise: "127.0.0.1:1".into(),
            bootstrap: false,
            pending_promotion: Some("127.0.0.1:2".into()),
        };
        id.save(dir.path()).expect("save");
        assert_eq!(Identity::load(dir.path()).expect("load"), Some(id));
    }
}
