//! A rolling upgrade from the previous release to this build, as an
//! operator does it: three hosts (network namespaces), a server and an
//! agent on each, all of the previous release (`tests/previous.sh` builds
//! it; tests/run.sh runs it first). While a client writes and a service
//! answers through the routing mesh and every node's DNS, the servers are
//! upgraded one at a time, then the agents one at a time. No acknowledged
//! write is lost, no container is restarted by its agent's upgrade, and
//! the mesh and DNS answer every probe throughout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use berth_proto::pb::cluster::{CreateServiceRequest, ServiceSpec};
use berth_tests::agent::Agent;
use berth_tests::hosts::{Host, Hosts};
use berth_tests::oci::Image;
use berth_tests::registry::{Auth, Registry};
use berth_tests::{berthctl, built, client, spec, wait_for, Cluster};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Serves its host name over HTTP on port 80.
const SERVE: &str = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

/// The previous release's binaries.
fn previous() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/previous/bin");
    ensure!(
        dir.join("berth-server").exists(),
        "{} has no build of the previous release: run tests/previous.sh (tests/run.sh does)",
        dir.display()
    );
    Ok(dir)
}

/// One GET of `addr`'s page, within 2 s.
async fn fetch(addr: &str) -> Option<String> {
    let get = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.ok()?;
        reply.contains("hello-from-").then_some(reply)
    };
    tokio::time::timeout(Duration::from_secs(2), get).await.ok().flatten()
}

/// Whether the node DNS of `host` names the service, asking up to three
/// times a second apart, as a resolver retries a lost question or a
/// SERVFAIL (an NXDOMAIN would be remembered: it counts as failed).
fn dns_answers(host: &Host) -> bool {
    let at = format!("@{}", host.ip);
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let out = host.run("dig", &["+time=1", "+tries=1", &at, "web.berth.local"]).unwrap_or_default();
        if out.contains("status: NXDOMAIN") {
            return false;
        }
        let answered = out.lines().skip_while(|l| !l.starts_with(";; ANSWER SECTION")).any(|l| l.contains("\tA\t"));
        if answered {
            return true;
        }
    }
    false
}

/// What the probes saw: (probes, failures) of the mesh and of DNS.
#[derive(Debug, Default)]
struct Seen {
    mesh: (u64, Vec<String>),
    dns: (u64, Vec<String>),
}

/// Probes the mesh on every host (a probe fails after three tries a
/// second apart, as a client retries) and every node's DNS until `stop`.
fn probe(hosts: Vec<Host>, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for host in &hosts {
                let addr = format!("{}:8080", host.ip);
                let mut ok = false;
                for _ in 0..3 {
                    if fetch(&addr).await.is_some() {
                        ok = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let host2 = host.clone();
                let dns = tokio::task::spawn_blocking(move || dns_answers(&host2)).await.unwrap_or(false);
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                s.mesh.0 += 1;
                s.dns.0 += 1;
                if !ok {
                    s.mesh.1.push(format!("{addr} at {:?}", std::time::SystemTime::now()));
                }
                if !dns {
                    s.dns.1.push(format!("{} at {:?}", host.name, std::time::SystemTime::now()));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Writes services `w-N` (no replicas) through the servers in turn until
/// `stop`; answers the names whose create was acknowledged.
fn write(servers: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let name = format!("w-{n}");
            let req =
                CreateServiceRequest { spec: Some(ServiceSpec { replicas: 0, ..spec(&name) }), no_resolve_image: true };
            match client(&servers[n % servers.len()]).create_service(req).await {
                Ok(_) => acked.push(name),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            n += 1;
        }
        acked
    })
}

/// Each running container of an agent: name -> its process.
fn running(agent: &Agent) -> BTreeMap<String, i64> {
    agent
        .ps()
        .into_iter()
        .filter(|c| c["state"] == "running")
        .filter_map(|c| Some((c["name"].as_str()?.to_owned(), c["pid"].as_i64()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_upgrade_from_the_previous_release_loses_nothing_and_keeps_serving() -> Result<()> {
    let old = previous()?;
    let new = built("berth-server").parent().map(Path::to_path_buf).context("this build's directory")?;
    // Every process starts from the previous release until it is upgraded.
    std::env::set_var("BERTH_BIN_DIR", &old);
    let hosts = Hosts::new(3)?;
    let registry = Registry::start_at(&hosts.gateway.to_string(), Auth::Anonymous).await?;
    Image::busybox()?.push(&registry.addr, "busybox", "v1").await?;
    let image = format!("{}/busybox:v1", registry.addr);
    let on: Vec<&Host> = hosts.hosts.iter().collect();
    let mut cluster = Cluster::start_on(&on, &[]).await?;
    let servers = cluster.addrs();
    let agents: Vec<Agent> = on.iter().map(|h| Agent::on(Some(&registry), h)).collect();
    // Each node's DNS answers on its host's address, where the probes ask.
    let dns: Vec<String> = on.iter().map(|h| format!("{}:53", h.ip)).collect();
    let join =
        |i: usize| agents[i].join_at(&servers, &on[i].name, &format!("{}:7500", on[i].ip), &["--dns-listen", &dns[i]]);
    let mut daemons = Vec::new();
    for i in 0..3 {
        daemons.push(join(i)?);
    }
    let ready = async || {
        let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
        (ok && out.matches(" ready ").count() == 3).then_some(())
    };
    wait_for(Duration::from_secs(60), "three nodes ready", ready).await?;
    let (ok, out, err) = berthctl(
        &servers,
        &[
            "service",
            "create",
            "web",
            "--image",
            &image,
            "--mode",
            "global",
            "--publish",
            "8080:80",
            "--",
            "sh",
            "-c",
            SERVE,
        ],
    )?;
    ensure!(ok, "service create: {out}{err}");
    wait_for(Duration::from_secs(60), "the mesh and DNS to answer on every host", async || {
        for h in &on {
            fetch(&format!("{}:8080", h.ip)).await?;
            dns_answers(h).then_some(())?;
        }
        Some(())
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let probes = probe(hosts.hosts.clone(), stop.clone(), seen.clone());
    let writes = write(servers.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Servers, one at a time: each back and caught up before the next.
    std::env::set_var("BERTH_BIN_DIR", &new);
    for i in 0..3 {
        let status = cluster.servers[i].stop()?;
        ensure!(status.success(), "server {i} stops cleanly: {status}");
        cluster.servers[i].restart()?;
        cluster.wait_for_voters(3).await?;
        cluster.wait_converged().await?;
    }
    let (ok, out, _) = berthctl(&servers, &["version"])?;
    let release = env!("CARGO_PKG_VERSION");
    ensure!(ok && out.lines().filter(|l| l.contains(" server ") && l.ends_with(release)).count() == 3, "{out}");

    // Agents, one at a time: the same containers run on, and it is ready again.
    for i in 0..3 {
        let before = running(&agents[i]);
        ensure!(!before.is_empty(), "{} runs its task", on[i].name);
        let registered = agents[i].daemon_log().matches("registered").count();
        let status = daemons[i].stop(Duration::from_secs(30))?;
        ensure!(status.success(), "agent {i} stops cleanly: {status}");
        daemons[i] = join(i)?;
        let pid = daemons[i].pid().context("the agent's pid")?;
        // nsenter (into the host's namespace) execs the agent.
        let agent_bin = new.join("berth-agent");
        wait_for(Duration::from_secs(10), "the agent of this build to run", async || {
            (std::fs::read_link(format!("/proc/{pid}/exe")).ok()? == agent_bin).then_some(())
        })
        .await?;
        wait_for(Duration::from_secs(60), "the upgraded agent registered", async || {
            (agents[i].daemon_log().matches("registered").count() > registered).then_some(())
        })
        .await?;
        wait_for(Duration::from_secs(60), "the upgraded node ready", ready).await?;
        let after = running(&agents[i]);
        ensure!(after == before, "{}: containers before {before:?}, after {after:?}", on[i].name);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    probes.await?;
    let acked = writes.await?;

    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    ensure!(seen.mesh.0 > 30 && seen.dns.0 > 30, "the probes ran: {seen:?}");
    ensure!(
        seen.mesh.1.is_empty(),
        "the mesh failed {} of {} probes: {:?}",
        seen.mesh.1.len(),
        seen.mesh.0,
        seen.mesh.1
    );
    ensure!(seen.dns.1.is_empty(), "DNS failed {} of {} probes: {:?}", seen.dns.1.len(), seen.dns.0, seen.dns.1);
    ensure!(acked.len() > 10, "the client wrote through the upgrade: {} writes", acked.len());
    cluster.wait_converged().await?;
    for i in 0..3 {
        let held = cluster.local_services(i).await?;
        let lost: Vec<&String> = acked.iter().filter(|n| !held.contains(n)).collect();
        ensure!(lost.is_empty(), "server {i} lost acknowledged writes: {lost:?}");
    }
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "web"])?;
    ensure!(ok, "{err}");
    Ok(())
}
