//! berth-bench: write throughput, latency and failover of a 3-server berth
//! cluster, with etcd under the same load from the same generator, side by
//! side; both with mutual TLS on every connection (berth always has it).
//!
//! Run it through `bench/raft.sh`, which builds release binaries and installs etcd.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use berth_proto::pb::cluster::cluster_client::ClusterClient;
use berth_proto::pb::cluster::CreateServiceRequest;
use berth_tests::etcd::{self, pb as etcdpb, EtcdCluster};
use berth_tests::{client, spec, wait_for, Cluster};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent clients for the throughput run
    #[arg(long, default_value = "64")]
    clients: usize,
    /// Seconds of load in each throughput round
    #[arg(long, default_value = "10")]
    seconds: u64,
    /// Throughput rounds, alternating berth and etcd; medians are reported
    #[arg(long, default_value = "3")]
    rounds: usize,
    /// Leader kills for berth (failover times and the loss check)
    #[arg(long, default_value = "20")]
    kills: usize,
    /// Leader kills for etcd
    #[arg(long, default_value = "5")]
    etcd_kills: usize,
    /// Clients writing during the failover runs
    #[arg(long, default_value = "8")]
    failover_clients: usize,
    /// During failover runs, a write not answered within this many ms is
    /// abandoned and retried on the next server, as a client with a deadline
    /// would (without it, writes stuck on a follower that waits for the dead
    /// leader, as etcd's do for 7 s, would measure the client, not the cluster)
    #[arg(long, default_value = "500")]
    failover_deadline_ms: u64,
    /// Run berth only
    #[arg(long)]
    skip_etcd: bool,
    /// Extra berth-server flag (repeatable), e.g. --server-arg=--heartbeat-ms=50
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

/// One write: client number and a sequence number unique to it, acknowledged or not out.
type WriteFn = Arc<dyn Fn(usize, u64) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

#[derive(Debug, Default)]
struct Stats {
    ops: usize,
    errors: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `clients` closed-loop writers for `secs` and collects latencies of acknowledged writes.
async fn load(clients: usize, secs: u64, first_seq: u64, write: WriteFn) -> Stats {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, errors, write) = (stop.clone(), errors.clone(), write.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut seq = first_seq;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if write(c, seq).await {
                        lat.push(t.elapsed());
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    seq += 1;
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)));
    Stats {
        ops: all.len(),
        errors: errors.load(Ordering::Relaxed) as usize,
        secs,
        p50_ms: pct(0.50).map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        p99_ms: pct(0.99).map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    }
}

/// Background writers for failover runs: after `mark`, they note when the
/// first write that *started* after the mark is acknowledged, so a write that
/// was already committed before a kill does not count as recovery.
struct Writers {
    stop: Arc<AtomicBool>,
    mark: Arc<Mutex<(Instant, Option<Instant>)>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(clients: usize, first_seq: u64, deadline: Duration, write: WriteFn) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mark = Arc::new(Mutex::new((Instant::now(), None)));
        let tasks = (0..clients)
            .map(|c| {
                let (stop, mark, write) = (stop.clone(), mark.clone(), write.clone());
                tokio::spawn(async move {
                    let mut seq = first_seq;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let started = Instant::now();
                        if tokio::time::timeout(deadline, write(c, seq)).await.unwrap_or(false) {
                            if let Ok(mut m) = mark.lock() {
                                if started > m.0 && m.1.is_none() {
                                    m.1 = Some(Instant::now());
                                }
                            }
                        } else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
            })
            .collect();
        Self { stop, mark, tasks }
    }

    /// Runs `kill`, then waits for the first acknowledged write started after it.
    async fn time_recovery(&self, kill: impl FnOnce()) -> Result<Duration> {
        let killed_at = Instant::now();
        if let Ok(mut m) = self.mark.lock() {
            *m = (killed_at, None);
        }
        kill();
        wait_for(Duration::from_secs(60), "a write after the kill", async || {
            let m = self.mark.lock().ok()?;
            m.1.map(|t| t - killed_at)
        })
        .await
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn berth_writer(addrs: &[String], acked: Arc<Mutex<Vec<String>>>) -> WriteFn {
    let clients: Vec<ClusterClient<_>> = addrs.iter().map(|a| client(a)).collect();
    Arc::new(move |c, seq| {
        let name = format!("c{c}-{seq}");
        // Client c starts at server c % n and moves on after a failure.
        let mut cl = if std::env::var("BENCH_LEADER_ONLY").is_ok() {
            clients[0].clone()
        } else {
            clients[(c + seq as usize) % clients.len()].clone()
        };
        let acked = acked.clone();
        Box::pin(async move {
            let ok = cl
                .create_service(CreateServiceRequest { spec: Some(spec(&name)), no_resolve_image: true })
                .await
                .is_ok();
            if ok {
                acked.lock().map(|mut a| a.push(name)).ok();
            }
            ok
        })
    })
}

fn etcd_writer(addrs: &[String], tls: &Arc<rustls::ClientConfig>) -> Result<WriteFn> {
    let clients: Vec<_> =
        addrs.iter().map(|a| etcd::channel(a, tls).map(etcdpb::kv_client::KvClient::new)).collect::<Result<_>>()?;
    // The same bytes berth stores for a service, as the value.
    let value = serde_json::to_vec(&serde_json::json!({
        "name": "c0-0", "image": "busybox:1.36", "command": [], "env": {}, "replicas": 1,
        "resources": {"cpu_millis": 0, "memory_bytes": 0}, "ports": [], "restart": "always"
    }))?;
    Ok(Arc::new(move |c, seq| {
        let mut cl = clients[(c + seq as usize) % clients.len()].clone();
        let req = etcdpb::PutRequest {
            key: format!("svc/c{c}-{seq}").into_bytes(),
            value: value.clone(),
            ..Default::default()
        };
        Box::pin(async move { cl.put(req).await.is_ok() })
    }))
}

/// Kills the berth leader `kills` times under `failover_clients` writers;
/// returns the recovery times and how many acknowledged writes any server lacks.
async fn berth_failovers(
    args: &Args,
    cluster: &mut Cluster,
    acked: Arc<Mutex<Vec<String>>>,
) -> Result<(Vec<Duration>, usize)> {
    let addrs = cluster.addrs();
    let writers = Writers::start(args.failover_clients, 1 << 50, deadline(args), berth_writer(&addrs, acked.clone()));
    let mut failovers = Vec::new();
    for round in 0..args.kills {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leader = cluster.leader().await?;
        let took = writers.time_recovery(|| cluster.servers[leader].kill9()).await?;
        eprintln!("berth kill {round}: next acknowledged write after {took:?}");
        failovers.push(took);
        cluster.servers[leader].restart()?;
        cluster.wait_converged().await?;
    }
    writers.stop().await;
    cluster.wait_converged().await?;
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let mut lost = 0;
    for i in 0..cluster.servers.len() {
        let held: std::collections::HashSet<String> = cluster.local_services(i).await?.into_iter().collect();
        lost = lost.max(acked.iter().filter(|n| !held.contains(*n)).count());
    }
    eprintln!("berth: {} acknowledged writes checked on every server, {lost} lost", acked.len());
    Ok((failovers, lost))
}

async fn etcd_failovers(args: &Args, cluster: &mut EtcdCluster) -> Result<Vec<Duration>> {
    let addrs: Vec<String> = cluster.members.iter().map(|m| m.client_addr.clone()).collect();
    let writers = Writers::start(args.failover_clients, 1 << 50, deadline(args), etcd_writer(&addrs, &cluster.tls)?);
    let mut failovers = Vec::new();
    for round in 0..args.etcd_kills {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leader = cluster.leader().await?;
        let took = writers.time_recovery(|| cluster.members[leader].kill9()).await?;
        eprintln!("etcd kill {round}: next acknowledged write after {took:?}");
        failovers.push(took);
        cluster.members[leader].restart()?;
        cluster.leader().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    writers.stop().await;
    Ok(failovers)
}

fn deadline(args: &Args) -> Duration {
    Duration::from_millis(args.failover_deadline_ms)
}

/// The median of one figure over the rounds.
fn mid(rounds: &[Stats], f: impl Fn(&Stats) -> f64) -> f64 {
    let mut v: Vec<f64> = rounds.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn tput(s: &Stats) -> f64 {
    s.ops as f64 / s.secs
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.clients > 0 && args.seconds > 0 && args.rounds > 0,
        "--clients, --seconds and --rounds must be positive"
    );

    // Both clusters run at once; the load alternates between them, round by
    // round, so that both see the same machine.
    let extra: Vec<&str> = args.server_args.iter().map(String::as_str).collect();
    let mut berth = Cluster::start(3, &extra).await?;
    let mut etcd = if args.skip_etcd { None } else { Some(EtcdCluster::start(3).await.context("etcd cluster")?) };
    let berth_addrs = berth.addrs();
    let etcd_addrs: Vec<String> = etcd.iter().flat_map(|c| c.members.iter().map(|m| m.client_addr.clone())).collect();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (mut b, mut e) = (Vec::new(), Vec::new());
    for round in 0..=args.rounds {
        // Round 0 warms up and is not counted.
        let secs = if round == 0 { 1 } else { args.seconds };
        let seq = (round as u64) << 40;
        let s = load(args.clients, secs, seq, berth_writer(&berth_addrs, acked.clone())).await;
        eprintln!("berth round {round}: {s:?}");
        if round > 0 {
            b.push(s);
        }
        if etcd.is_some() {
            let tls = etcd.as_ref().map(|c| c.tls.clone()).context("etcd")?;
            let s = load(args.clients, secs, seq, etcd_writer(&etcd_addrs, &tls)?).await;
            eprintln!("etcd round {round}: {s:?}");
            if round > 0 {
                e.push(s);
            }
        }
    }
    let (b_fail, lost) = berth_failovers(&args, &mut berth, acked).await?;
    drop(berth);
    let e_fail = match etcd.as_mut() {
        Some(c) => etcd_failovers(&args, c).await?,
        None => Vec::new(),
    };

    let has_etcd = !e.is_empty();
    let row = |name: &str, unit: &str, bv: f64, ev: f64| {
        if has_etcd {
            println!("| {name} | {bv:.1}{unit} | {ev:.1}{unit} | {:.2} |", bv / ev);
        } else {
            println!("| {name} | {bv:.1}{unit} | - | - |");
        }
    };
    println!(
        "| median of {} rounds: {} clients, {}s each, 3 servers on loopback | berth | etcd | berth/etcd |",
        args.rounds, args.clients, args.seconds
    );
    println!("|---|---|---|---|");
    row("writes/s", "", mid(&b, tput), mid(&e, tput));
    row("p50 latency", "ms", mid(&b, |s| s.p50_ms), mid(&e, |s| s.p50_ms));
    row("p99 latency", "ms", mid(&b, |s| s.p99_ms), mid(&e, |s| s.p99_ms));
    let errors = |v: &[Stats]| v.iter().map(|s| s.errors).sum::<usize>();
    println!("| failed writes during the rounds | {} | {} | |", errors(&b), errors(&e));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (bm, em) = (ms(median(b_fail.clone())), ms(median(e_fail.clone())));
    if e_fail.is_empty() {
        println!("| failover median (kill -9 leader -> next ack) | {bm:.0}ms (n={}) | - | - |", b_fail.len());
    } else {
        println!(
            "| failover median (kill -9 leader -> next ack) | {bm:.0}ms (n={}) | {em:.0}ms (n={}) | {:.2} |",
            b_fail.len(),
            e_fail.len(),
            bm / em
        );
    }
    let max = |v: &[Duration]| v.iter().max().copied().map_or(0.0, ms);
    println!("| failover max | {:.0}ms | {:.0}ms | |", max(&b_fail), max(&e_fail));
    println!("| acknowledged writes lost over {} leader kills | {lost} | | |", b_fail.len());
    let all: Vec<String> = b
        .iter()
        .zip(e.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(b, e)| format!("{:.0}/{}", tput(b), e.map_or("-".into(), |e| format!("{:.0}", tput(e)))))
        .collect();
    println!("\nwrites/s per round (berth/etcd): {}", all.join(", "));
    Ok(())
}
