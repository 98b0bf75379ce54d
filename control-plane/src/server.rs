//! Starting and stopping one berth-server.
//!
//! First start: `--bootstrap` makes server 1 of a new cluster; `--join ADDR`
//! asks the cluster's leader (found through ADDR) for an id and a learner
//! slot, then this server asks to be promoted to voter once it has caught up.
//! The identity is saved before Raft starts, so any later start needs only
//! the data dir, and an unfinished promotion is resumed.
//!
//! A server may also start from a backup (`--restore`) or, having lost
//! its majority for good, as a cluster of its own (`--force-new-cluster`):
//! see `recovery`.
//!
//! Trust comes first: bootstrap makes the cluster's root, this server's
//! certificate and the first admin's credential (`DATA_DIR/admin.conf`),
//! and writes the replicated part as the cluster's first command; a
//! joining server trades its `--token` for a certificate (`trust`) before
//! it asks to join Raft. Every connection is then mutual TLS.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use berth_proto::client::Tls;
use berth_proto::contexts::{ClientConfig, Context};
use berth_proto::pb::agent::agent_server::AgentServer;
use berth_proto::pb::cluster::cluster_client::ClusterClient;
use berth_proto::pb::cluster::cluster_server::ClusterServer;
use berth_proto::pb::cluster::lock_server::LockServer;
use berth_proto::pb::cluster::ClusterStatusRequest;
use berth_proto::pb::raft::raft_server::RaftServer;
use berth_proto::pki::{write_private, Credentials, Role};
use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::api::{AgentApi, ClusterApi, RaftApi};
use crate::autolock;
use crate::config::{Config, Identity};
use crate::network::{decode, encode, Network, Peers, MAX_MESSAGE};
use crate::node::{LeaderOp, LeaderReply, Node, Step};
use crate::state::{Command, Response as Applied};
use crate::store::{self, NodeId, Raft};
use crate::trust;

/// How long a first start keeps trying to reach the cluster it joins.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);
/// This server's key, certificate and roots, under the data dir.
pub const TLS_DIR: &str = "tls";
/// The first admin's credential, in berthctl's config format.
pub const ADMIN_CONF: &str = "admin.conf";
/// A new cluster's trust until the cluster has recorded it.
const FOUNDING: &str = "founding.json";

/// Runs the server until `shutdown` resolves, then stops cleanly.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let mut shutdown = Box::pin(shutdown);
    berth_proto::pki::private_dir(&cfg.data_dir)
        .with_context(|| format!("cannot create {} (owner only)", cfg.data_dir.display()))?;
    let saved = Identity::load(&cfg.data_dir)?;
    let (listen, advertise) = cfg.addresses(saved.as_ref())?;
    let mut listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let (mut identity, creds) = match saved {
        Some(i) if cfg.restore.is_some() => bail!(
            "{} already holds server {}: --restore makes a new cluster in a new, empty data dir",
            cfg.data_dir.display(),
            i.id
        ),
        Some(i) => {
            if cfg.bootstrap || cfg.join.is_some() {
                info!(id = i.id, "data dir already holds server {}; --bootstrap/--join ignored", i.id);
            }
            let creds = Credentials::load(&cfg.data_dir.join(TLS_DIR))?.with_context(|| {
                format!(
                    "{} holds server {} but no certificate ({TLS_DIR}/): it was made by a berth \
                     without TLS; join this server again with a new data dir",
                    cfg.data_dir.display(),
                    i.id
                )
            })?;
            (i, creds)
        }
        None if cfg.force_new_cluster => bail!(
            "--force-new-cluster keeps a surviving server's state, and {} holds none: give that server's data dir",
            cfg.data_dir.display()
        ),
        None => match &cfg.restore {
            Some(file) => crate::recovery::restore(&cfg, file, listen, &advertise).await?,
            None => first_start(&cfg, listen, &advertise).await?,
        },
    };
    let tls = Tls::new(&creds)?;
    let peers = Peers::new(&tls);
    let id = identity.id;

    // Autolock: a sealed store key waits for `berthctl cluster unlock`.
    let unlock = if store::seal::locked(&cfg.data_dir)? {
        info!(id, "the store is locked (autolock): waiting for `berthctl cluster unlock`");
        berth_proto::systemd::ready("locked (autolock): waiting for `berthctl cluster unlock`");
        let data_dir = cfg.data_dir.clone();
        let waited = autolock::wait_for_unlock(listener, tls.clone(), data_dir, cfg.max_streams_per_connection);
        let key = tokio::select! {
            key = waited => key?,
            _ = &mut shutdown => return Ok(()),
        };
        listener = rebind(listen).await?;
        Some(key)
    } else {
        None
    };
    let (mut log, mut sm) = store::open(&cfg.data_dir, unlock.as_ref())?;
    if cfg.force_new_cluster {
        crate::recovery::force_new_cluster(&cfg.data_dir, &mut identity, &log, &sm).await?;
    }
    let stats = crate::stats::Stats::default();
    sm.count_in(&stats);
    let sealer = sm.sealer();
    let last_index = openraft::storage::RaftLogStorage::get_log_state(&mut log)
        .await
        .map_err(|e| anyhow!("reading the log: {e}"))?
        .last_log_id
        .map(|l| l.index);
    let applied = sm.applied();
    let applied_index = sm.applied_index();
    // Raft runs on a runtime of its own, with connections of its own to
    // the other servers: agents' calls keep this runtime's workers busy,
    // and heartbeats and appends that queue behind them went out late
    // enough for followers to stand for election (see `RaftRuntime`).
    let raft_runtime = RaftRuntime::start()?;
    let raft_peers = Peers::for_raft(&tls);
    let quiet = crate::quiet::Quiet::default();
    let network = Network { peers: raft_peers.clone(), quiet: quiet.clone() };
    let log_reader = log.clone();
    let raft_cfg = Arc::new(cfg.raft_config()?);
    let raft = raft_runtime
        .spawn(Raft::new(id, raft_cfg, network, log, sm))
        .await
        .context("Raft's runtime stopped")?
        .context("cannot start Raft")?;
    let timing =
        crate::elect::Timing { heartbeat: cfg.heartbeat, timeout: cfg.election_timeout, quiet: cfg.quiet_heartbeat };
    let elections = crate::elect::Elections::new(id, raft.clone(), log_reader, raft_peers, timing, quiet.clone());
    let mut node =
        Node::new(id, raft.clone(), applied.clone(), applied_index, peers, cfg.request_timeout, stats.clone());
    node.pace = crate::pace::Pace { down: cfg.node_down_after, max_per_second: cfg.max_heartbeats_per_second };
    node.quiet = quiet.clone();
    let down_ms = cfg.node_down_after.as_millis() as u64;
    if down_ms < crate::node::MIN_LEASED_DOWN_MS || cfg.heartbeat.as_millis() as u64 * 3 / 2 > down_ms / 8 {
        warn!(
            "with --node-down-after-ms {down_ms} (and Raft heartbeats every {:?}) no node gets a lease: tasks \
             with an exclusive volume will not run (2000 ms or more, and heartbeats at most 1/12 of it)",
            cfg.heartbeat
        );
    }
    node.network = cfg.network;
    let node = Arc::new(node);
    let levels = crate::api::Levels::default();
    let leader_work = tokio::spawn(crate::leader::run(node.clone(), levels.clone()));
    let standing = raft_runtime.spawn(elections.clone().run());
    let leader_changes = tokio::spawn(crate::stats::count_leader_changes(raft.clone(), stats.leader_changes.clone()));
    let metrics = match cfg.metrics_listen {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr}"))?;
            let registry = Arc::new(stats.registry(raft.clone(), applied, quiet.clone(), node.pace));
            info!(%addr, "serving metrics at http://{addr}/metrics");
            Some(tokio::spawn(berth_proto::metrics::serve(listener, registry)))
        }
        None => None,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let until_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let raft_api = || {
        RaftServer::new(RaftApi { node: node.clone(), elections: elections.clone() })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    };
    // Other servers' Raft connections are served on Raft's runtime (see
    // `berth_proto::tls::incoming_split`); the rest, and Raft from servers
    // of a release that does not ask apart, here.
    let (incoming, raft_incoming) = berth_proto::tls::incoming_split(listener, tls.clone());
    let raft_lane = raft_runtime.spawn(
        berth_proto::client::server(cfg.max_streams_per_connection)
            .add_service(raft_api())
            .serve_with_incoming_shutdown(raft_incoming, until_stop(stop_rx.clone())),
    );
    let server = berth_proto::client::server(cfg.max_streams_per_connection)
        .add_service(
            ClusterServer::new(ClusterApi::new(
                node.clone(),
                cfg.max_watches_per_caller,
                cfg.registries.clone(),
                levels.clone(),
            ))
            .max_decoding_message_size(cfg.max_request_bytes)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            AgentServer::new(AgentApi {
                node: node.clone(),
                watches: crate::api::Watches::new(crate::publish::spawn(node.clone())),
                levels: levels.clone(),
            })
            .max_decoding_message_size(cfg.max_request_bytes)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(LockServer::new(autolock::Unlocked))
        .add_service(raft_api())
        .serve_with_incoming_shutdown(incoming, until_stop(stop_rx));
    let server = tokio::spawn(server);

    if identity.bootstrap && !raft.is_initialized().await? {
        raft.initialize(BTreeMap::from([(id, BasicNode::new(&advertise))]))
            .await
            .context("cannot bootstrap the cluster")?;
        info!(id, "bootstrapped a new cluster");
    }
    if cfg.data_dir.join(FOUNDING).exists() {
        tokio::spawn(write_founding(node.clone(), cfg.data_dir.clone()));
    }
    if identity.pending_promotion.is_some() {
        tokio::spawn(finish_promotion(node.clone(), identity.clone(), cfg.data_dir.clone()));
    }
    let key_keeper = tokio::spawn(autolock::keep(node.clone(), sealer, last_index));
    let certificates = crate::rotation::spawn(node.clone(), tls.clone(), creds, cfg.data_dir.join(TLS_DIR));
    info!(id, %listen, %advertise, "berth-server serving");
    berth_proto::systemd::ready(&format!("server {id} serving on {listen} as {advertise}"));

    tokio::select! {
        _ = &mut shutdown => {}
        fatal = stopped(&raft) => {
            // Raft does not come back from a storage error, and the API
            // would answer UNAVAILABLE forever: stop, so that whatever
            // supervises this server (systemd) starts it again, once the
            // disk has room, from what is on disk.
            bail!(
                "Raft stopped: {fatal}: fix the disk of {} and start this server again (what it acknowledged is on disk)",
                cfg.data_dir.display()
            );
        }
    }
    info!(id, "shutting down");
    berth_proto::systemd::stopping();
    leader_work.abort();
    standing.abort();
    leader_changes.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    key_keeper.abort();
    certificates.abort();
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), async { (server.await, raft_lane.await) }).await {
        Ok((Ok(Err(e)), _) | (_, Ok(Err(e)))) => warn!("gRPC server ended with an error: {e}"),
        Err(_) => warn!("gRPC server did not stop within 5s"),
        _ => {}
    }
    raft.shutdown().await.map_err(|e| anyhow!("raft shutdown: {e}"))?;
    info!(id, "stopped");
    Ok(())
}

/// The runtime Raft's core, its replication and `elect` run on: one
/// worker thread. Shut down in the background when dropped, which an
/// async context allows (dropping a runtime there panics).
struct RaftRuntime {
    handle: tokio::runtime::Handle,
    /// Taken only when dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl RaftRuntime {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("raft")
            .enable_all()
            .build()
            .context("cannot start Raft's runtime")?;
        Ok(Self { handle: runtime.handle().clone(), runtime: Some(runtime) })
    }

    fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(work)
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Listens on `listen` again once the locked phase has let it go (its
/// accept loop ends a moment after its server).
async fn rebind(listen: SocketAddr) -> Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(listen).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {listen}")),
        }
    }
}

/// Resolves when Raft has stopped by itself: a storage error (a full disk,
/// an I/O error), or a panic in its core. It waits for the server metrics'
/// channel to close, which happens when Raft's core ends (its full metrics
/// change with every heartbeat, and would wake this as often).
async fn stopped(raft: &Raft) -> openraft::error::Fatal<NodeId> {
    let mut server = raft.server_metrics();
    while server.changed().await.is_ok() {}
    match &raft.metrics().borrow().running_state {
        Err(fatal) => fatal.clone(),
        Ok(()) => openraft::error::Fatal::Stopped,
    }
}

/// Creates the identity of a server that has never run: bootstrap or join.
async fn first_start(cfg: &Config, listen: SocketAddr, advertise: &str) -> Result<(Identity, Credentials)> {
    let tls_dir = cfg.data_dir.join(TLS_DIR);
    let (id, pending_promotion, creds) = if cfg.bootstrap {
        let (founding, server, admin) = trust::found(cfg.cert_validity)?;
        server.save(&tls_dir).with_context(|| format!("cannot write {}", tls_dir.display()))?;
        let path = cfg.data_dir.join(FOUNDING);
        write_private(&path, &serde_json::to_vec(&founding)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let context = Context {
            name: format!("berth-{}", &founding.trust.cluster[..8]),
            servers: vec![advertise.to_owned()],
            user: trust::ADMIN.into(),
            ca: admin.roots,
            certificate: admin.chain,
            key: admin.key,
        };
        let conf = cfg.data_dir.join(ADMIN_CONF);
        ClientConfig::single(context).save(&conf)?;
        info!("the admin's credential is in {}: `BERTH_CONFIG={} berthctl ...`", conf.display(), conf.display());
        (1, None, server)
    } else if let Some(via) = &cfg.join {
        let token = cfg
            .token
            .as_deref()
            .context("--join needs --token: the cluster's server join token (`berthctl cluster join-token server`)")?;
        let creds = admit(via, token).await?;
        let tls = Tls::new(&creds)?;
        let id = join(&Peers::new(&tls), via, advertise).await?;
        creds.save(&tls_dir).with_context(|| format!("cannot write {}", tls_dir.display()))?;
        (id, Some(via.clone()), creds)
    } else {
        bail!(
            "{} holds no cluster state: start with --bootstrap to create a cluster, or --join ADDR --token T to join one",
            cfg.data_dir.display()
        );
    };
    let identity =
        Identity { id, listen, advertise: advertise.to_string(), bootstrap: cfg.bootstrap, pending_promotion };
    identity.save(&cfg.data_dir)?;
    info!(id, "identity saved in {}", cfg.data_dir.display());
    Ok((identity, creds))
}

/// Trades a server join token for this server's certificate, through `via`.
async fn admit(via: &str, token: &str) -> Result<Credentials> {
    let (node, creds) = berth_proto::join::admit(&[via.to_owned()], token, Role::Server, JOIN_PATIENCE).await?;
    info!(node, "admitted: this server's certificate is signed");
    Ok(creds)
}

/// Writes the replicated half of a new cluster's trust, once Raft runs.
async fn write_founding(node: Arc<Node>, dir: PathBuf) {
    let path = dir.join(FOUNDING);
    let founding = match std::fs::read(&path)
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(serde_json::from_slice::<trust::Founding>(&b)?))
    {
        Ok(f) => f,
        Err(e) => return warn!("cannot read {}: {e:#}", path.display()),
    };
    loop {
        match node
            .write(Command::InitTrust { trust: Box::new(founding.trust.clone()), admin: founding.admin.clone() })
            .await
        {
            Ok(Applied::Done) => break,
            Ok(other) => return warn!("the cluster refused its own identity: {other:?}"),
            Err(e) => info!("waiting to record the cluster's identity: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The root's key now lives only in the replicated state.
    match std::fs::remove_file(&path) {
        Ok(()) => info!(cluster = founding.trust.cluster, "the cluster's identity is recorded"),
        Err(e) => warn!("cannot remove {}: {e}", path.display()),
    }
}

/// Finds the leader through `via` and asks it to admit `advertise` as a learner.
async fn join(peers: &Peers, via: &str, advertise: &str) -> Result<NodeId> {
    let deadline = Instant::now() + JOIN_PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match try_join(peers, via, advertise).await {
            Ok(Some(id)) => {
                info!(id, via, "admitted to the cluster as a learner");
                return Ok(id);
            }
            Ok(None) => last = "no leader yet".into(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("cannot join the cluster through {via} within {JOIN_PATIENCE:?}: {last}")
}

async fn try_join(peers: &Peers, via: &str, advertise: &str) -> Result<Option<NodeId>> {
    let status = ClusterClient::new(peers.channel(via)?)
        .cluster_status(ClusterStatusRequest { local: false })
        .await?
        .into_inner();
    let Some(leader) = status.members.iter().find(|m| Some(m.id) == status.leader_id) else {
        return Ok(None);
    };
    let reply = peers
        .raft(&leader.address)?
        .forward(encode(&LeaderOp::Join { addr: advertise.to_string(), reads: crate::state::READS })?)
        .await?;
    match decode::<Step>(reply.get_ref())? {
        Step::Done(Ok(LeaderReply::Joined { id })) => Ok(Some(id)),
        Step::Done(Ok(other)) => bail!("unexpected join reply {other:?}"),
        Step::Done(Err(e)) => Err(e.into()),
        Step::NotLeader | Step::Retry(_) => Ok(None),
    }
}

/// Keeps asking the leader to make this learner a voter until it has.
async fn finish_promotion(node: Arc<Node>, mut identity: Identity, dir: std::path::PathBuf) {
    loop {
        match node.run(LeaderOp::Promote { id: identity.id }).await {
            Ok(_) => {
                identity.pending_promotion = None;
                match identity.save(&dir) {
                    Ok(()) => info!(id = identity.id, "promoted to voter"),
                    Err(e) => warn!("promoted, but cannot record it: {e:#}"),
                }
                return;
            }
            Err(e) => info!(id = identity.id, "waiting to be promoted: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
