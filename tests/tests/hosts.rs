//! berth across hosts: three hosts (network namespaces on a test network in
//! 198.18.0.0/16), each running a berth-server and a berth-agent, in one
//! cluster fixture that the steps share. A global service runs a task on
//! each node as it joins, leaves a drained one and comes back to it, and
//! leaves a removed one; a service spread by zone, at most 2 a node, fills
//! zone b's one host first and leaves the seventh replica waiting; a
//! service spreads over the three;
//! its logs come from every host; its containers are reached across hosts
//! through the overlay (TCP and UDP), and its published ports (TCP and UDP)
//! from outside on every host
//! (the routing mesh), also while a host is cut off; an agent restart
//! leaves its containers alone; a replica failing its health check leaves
//! DNS and the mesh until it passes again; a host cut off loses its task to the others, and once healed it
//! stops its stale container and a replica moves back to it (twice, host3
//! then host2), start-first, never fewer running than asked. Every node's DNS names the replicas and
//! follows them as they scale, fail and move, and keeps answering while
//! the control plane is away; a host stopped and removed leaves every
//! other node's peers and nothing of its overlay behind.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_tests::agent::Agent;
use berth_tests::hosts::Hosts;
use berth_tests::oci::Image;
use berth_tests::registry::{Auth, Registry};
use berth_tests::{berthctl, wait_for, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves its host name over HTTP on port 8080 and UDP echoes on 5353
/// (logging what it gets), and says so in its log.
const SERVE: &str = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && echo serving on $(hostname) \
    && { udp-echo serve 5353 & } && exec httpd -f -p 8080 -h /www";

/// Tasks meant to run, from `service ps -o json`: id -> (node, state).
fn tasks(servers: &[String], service: &str) -> Option<BTreeMap<String, (String, String)>> {
    let (ok, out, _) = berthctl(servers, &["service", "ps", service, "-o", "json"]).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    Some(
        list.iter()
            .filter(|t| t["task"]["desired"] == "running")
            .map(|t| (s(&t["task"]["id"]), (s(&t["node_name"]), s(&t["task"]["state"]))))
            .collect(),
    )
}

/// The page behind a published port, fetched from the test namespace (the
/// world outside the hosts); None when nothing answers within 2 s.
async fn fetch(addr: &str) -> Option<String> {
    let get = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.ok()?;
        Some(reply.split_once("\r\n\r\n")?.1.trim().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), get).await.ok().flatten()
}

/// Whether `addr` answers, within a few dozen tries, from every one of
/// `tasks` (the mesh balances over replicas on every host) and from nothing else.
async fn answers_from_all(addr: &str, tasks: &BTreeMap<String, (String, String)>) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        match fetch(addr).await.as_deref().and_then(|page| page.strip_prefix("hello-from-")) {
            Some(task) if tasks.contains_key(task) => {
                seen.insert(task.to_owned());
            }
            _ => return false,
        }
        if seen.len() == tasks.len() {
            return true;
        }
    }
    false
}

/// The addresses of a service's running replicas, sorted.
fn running_addresses(servers: &[String], service: &str) -> Option<Vec<String>> {
    let (ok, out, _) = berthctl(servers, &["service", "ps", service, "-o", "json"]).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let mut addresses: Vec<String> = list
        .iter()
        .filter(|t| t["task"]["desired"] == "running" && t["task"]["state"] == "running")
        .filter_map(|t| t["task"]["address"].as_str().map(str::to_owned))
        .collect();
    addresses.sort();
    Some(addresses)
}

/// What a host's node DNS (on the host's address) answers for `name`, sorted.
fn dns_addresses(host: &berth_tests::hosts::Host, name: &str) -> Option<Vec<String>> {
    let at = format!("@{}", host.ip);
    let out = host.run("dig", &["+time=2", "+tries=1", "+short", &at, name]).ok()?;
    let mut addresses: Vec<String> = out.lines().map(str::to_owned).collect();
    addresses.sort();
    Some(addresses)
}

/// Each task's health from `service ps -o json`: id -> health (or "-").
fn health_of(servers: &[String], service: &str) -> Option<BTreeMap<String, String>> {
    let (ok, out, _) = berthctl(servers, &["service", "ps", service, "-o", "json"]).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    Some(list.iter().map(|t| (s(&t["task"]["id"]), s(&t["task"]["health"]))).collect())
}

/// The tasks that answer for `service`, once `service inspect`'s
/// endpoints number `n`, every host's DNS names just their addresses, and
/// 20 requests to `mesh` (a published port) come from them and from
/// nothing else, each of them at least once.
async fn serving(
    on: &[&berth_tests::hosts::Host],
    servers: &[String],
    service: &str,
    mesh: &str,
    n: usize,
) -> Option<Vec<String>> {
    let (ok, out, _) = berthctl(servers, &["service", "inspect", service, "-o", "json"]).ok()?;
    let inspected: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let endpoints = inspected["endpoints"].as_array()?;
    let mut addresses: Vec<String> =
        endpoints.iter().filter_map(|e| e["address"].as_str().map(str::to_owned)).collect();
    let mut tasks: Vec<String> = endpoints.iter().filter_map(|e| e["task"].as_str().map(str::to_owned)).collect();
    addresses.sort();
    tasks.sort();
    (tasks.len() == n).then_some(())?;
    for host in on {
        (dns_addresses(host, &format!("{service}.berth.local")).as_ref() == Some(&addresses)).then_some(())?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let page = fetch(mesh).await?;
        let task = page.strip_prefix("hello-from-")?;
        tasks.iter().any(|t| t == task).then_some(())?;
        seen.insert(task.to_owned());
    }
    (seen.len() == n).then_some(tasks)
}

/// A directory of the test's own for logs of its helpers.
/// Waits until `service`'s `n` replicas run on `n` different nodes, and
/// fails at once if any look finds fewer than `n` running.
async fn rebalanced(servers: &[String], service: &str, n: usize) -> Result<()> {
    let mut looks = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let Some(t) = tasks(servers, service) else {
            ensure!(std::time::Instant::now() < deadline, "service ps failed until the deadline");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        looks += 1;
        let running: Vec<&String> = t.values().filter(|(_, s)| s == "running").map(|(node, _)| node).collect();
        ensure!(running.len() >= n, "look {looks}: fewer than {n} {service} replicas run: {t:?}");
        let nodes: std::collections::BTreeSet<&&String> = running.iter().collect();
        if t.len() == n && nodes.len() == n {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "{service} not rebalanced after {looks} looks: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Raft term and leader id every server on `hosts` agrees on (from /metrics).
fn raft_agreed(hosts: &[&berth_tests::hosts::Host]) -> Option<(f64, f64)> {
    let views = hosts
        .iter()
        .map(|h| {
            let text = berth_tests::scrape(&format!("{}:9090", h.ip)).ok()?;
            Some((berth_tests::metric(&text, "berth_raft_term")?, berth_tests::metric(&text, "berth_raft_leader")?))
        })
        .collect::<Option<Vec<_>>>()?;
    (views.iter().all(|v| *v == views[0]) && views[0].1 > 0.0).then(|| views[0])
}

fn scratch_dir(hosts: &Hosts) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("berth-hosts-{}", hosts.bridge));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Task containers on each agent's host, by agent index.
fn containers(agents: &[Agent]) -> Vec<Vec<String>> {
    agents.iter().map(|a| a.ps().iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_spreads_over_hosts_and_survives_a_cut_off_host() -> Result<()> {
    let hosts = Hosts::new(3)?;
    let registry = Registry::start_at(&hosts.gateway.to_string(), Auth::Anonymous).await?;
    Image::busybox_with_payloads()?.push(&registry.addr, "busybox", "v1").await?;
    let image = format!("{}/busybox:v1", registry.addr);
    let on: Vec<&berth_tests::hosts::Host> = hosts.hosts.iter().collect();
    // Each host is a network namespace of its own: the same port on each.
    let mut cluster =
        Cluster::start_on(&on, &["--node-down-after-ms", "2000", "--metrics-listen", "0.0.0.0:9090"]).await?;
    let servers = cluster.addrs();
    // An upstream resolver for names outside the cluster, on the test network.
    let upstream = hosts.gateway.to_string();
    let scratch = scratch_dir(&hosts)?;
    let mut resolver = berth_tests::Process::new(scratch.join("dnsmasq.log"));
    resolver.start(
        std::process::Command::new("dnsmasq")
            .arg(format!("--pid-file={}", scratch.join("dnsmasq.pid").display()))
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
                &format!("--listen-address={upstream}"),
                "--address=/outside.test/198.18.99.99",
            ]),
    )?;
    let agents: Vec<Agent> = on.iter().map(|h| Agent::on(Some(&registry), h)).collect();
    // Each node's DNS answers on its host's address too, and asks the test resolver.
    let dns_args: Vec<Vec<String>> = on
        .iter()
        .enumerate()
        .map(|(i, h)| {
            // host1 and host2 in zone a, host3 in zone b.
            let zone = if i < 2 { "zone=a" } else { "zone=b" };
            let dns = ["--dns-listen".into(), format!("{}:53", h.ip), "--dns-upstream".into(), upstream.clone()];
            let metrics = ["--metrics-listen".into(), format!("{}:9100", h.ip)];
            [&dns[..], &metrics[..], &["--label".into(), zone.into()]].concat()
        })
        .collect();
    let extra = |i: usize| -> Vec<&str> { dns_args[i].iter().map(String::as_str).collect() };
    let mut daemons = Vec::new();
    let join = |i: usize| agents[i].join_at(&servers, &on[i].name, &format!("{}:7500", on[i].ip), &extra(i));
    let ready = |n: usize| {
        let servers = servers.clone();
        async move || {
            let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
            (ok && out.matches(" ready ").count() == n).then_some(())
        }
    };
    for i in 0..2 {
        daemons.push(join(i)?);
    }
    wait_for(Duration::from_secs(30), "two nodes ready", ready(2)).await?;

    // A global service: a task on every node, pinned to it, following
    // nodes as they join and drain (and, at the end, leave).
    let (ok, out, err) =
        berthctl(&servers, &["service", "create", "edge", "--image", &image, "--mode", "global", "--", "sleep", "1d"])?;
    // It waited for both tasks to run (as `docker service create` does).
    ensure!(ok && out.contains("edge converged: 2/2 replicas serve version 1"), "{out}{err}");
    let edge_on = |want: &'static [&'static str]| {
        let servers = servers.clone();
        async move || {
            let t = tasks(&servers, "edge")?;
            let mut nodes: Vec<&str> = t.values().filter(|(_, s)| s == "running").map(|(n, _)| n.as_str()).collect();
            nodes.sort();
            (nodes == want && t.len() == want.len()).then_some(())
        }
    };
    wait_for(Duration::from_secs(60), "edge on host1 and host2", edge_on(&["host1", "host2"])).await?;
    daemons.push(join(2)?);
    wait_for(Duration::from_secs(30), "three nodes ready", ready(3)).await?;
    wait_for(Duration::from_secs(60), "edge on the host that joined", edge_on(&["host1", "host2", "host3"])).await?;
    let (ok, out, err) = berthctl(&servers, &["node", "drain", "host2"])?;
    ensure!(ok, "{out}{err}");
    wait_for(Duration::from_secs(60), "edge off the drained host", edge_on(&["host1", "host3"])).await?;
    let (ok, out, err) = berthctl(&servers, &["node", "activate", "host2"])?;
    ensure!(ok, "{out}{err}");
    wait_for(Duration::from_secs(60), "edge back on the active host", edge_on(&["host1", "host2", "host3"])).await?;
    let (ok, out, _) = berthctl(&servers, &["service", "ls"])?;
    ensure!(ok && out.lines().any(|l| l.starts_with("edge ") && l.contains(" global ")), "{out}");
    let (ok, _, err) = berthctl(&servers, &["service", "scale", "--detach", "edge=2"])?;
    ensure!(!ok && err.contains("replicas") && err.contains("global"), "scaling a global service: {err}");

    // Spread over zones first: zone b's one host takes half of 4 replicas.
    // At most 2 per node: of 7, the seventh waits, saying why.
    let zoned = ["--placement-pref", "spread=node.labels.zone", "--replicas-max-per-node", "2"];
    let args =
        [&["service", "create", "zoned", "--image", &image, "--replicas", "4"][..], &zoned, &["--", "sleep", "1d"]];
    let (ok, out, err) = berthctl(&servers, &args.concat())?;
    ensure!(ok && out.contains("zoned converged: 4/4"), "{out}{err}");
    let per_host = |servers: &[String]| -> Option<BTreeMap<String, usize>> {
        let mut n = BTreeMap::new();
        for (node, _) in tasks(servers, "zoned")?.values().filter(|(_, s)| s == "running") {
            *n.entry(node.clone()).or_default() += 1;
        }
        Some(n)
    };
    let want = BTreeMap::from([("host1".into(), 1), ("host2".into(), 1), ("host3".into(), 2)]);
    ensure!(per_host(&servers) == Some(want), "{:?}", per_host(&servers));
    let (ok, out, err) = berthctl(&servers, &["service", "scale", "--detach", "zoned=7"])?;
    ensure!(ok, "{out}{err}");
    wait_for(Duration::from_secs(60), "6 zoned tasks, 2 a host, and one waiting", async || {
        let full = BTreeMap::from([("host1".into(), 2), ("host2".into(), 2), ("host3".into(), 2)]);
        let (ok, out, _) = berthctl(&servers, &["service", "ps", "zoned"]).ok()?;
        let waiting = out.contains("3 nodes run 2 of its tasks already (max_replicas_per_node)");
        (ok && waiting && per_host(&servers)? == full).then_some(())
    })
    .await?;
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "zoned"])?;
    ensure!(ok, "{err}");
    wait_for(Duration::from_secs(60), "zoned's containers gone", async || {
        containers(&agents).iter().flatten().all(|c| !c.starts_with("zoned.")).then_some(())
    })
    .await?;

    let (ok, out, err) = berthctl(
        &servers,
        &[
            "service",
            "create",
            "web",
            "--image",
            &image,
            "--replicas",
            "3",
            "--publish",
            "http=9080:8080",
            "--publish",
            "9053:5353/udp",
            "--",
            "sh",
            "-c",
            SERVE,
        ],
    )?;
    // Each task's line as it moved, then the service converged.
    ensure!(ok && out.contains("web converged: 3/3 replicas serve version 1"), "{out}{err}");
    ensure!(out.contains("web.1.1") && out.contains("running"), "{out}");
    let running = wait_for(Duration::from_secs(60), "3 tasks running on 3 hosts", async || {
        let t = tasks(&servers, "web")?;
        let nodes: std::collections::BTreeSet<&String> = t.values().map(|(n, _)| n).collect();
        (t.len() == 3 && nodes.len() == 3 && t.values().all(|(_, s)| s == "running")).then_some(t)
    })
    .await
    .with_context(|| agents.iter().map(Agent::daemon_log).collect::<Vec<_>>().join("\n"))?;

    // Each host's logs, gathered by a server from the agents over the test network.
    wait_for(Duration::from_secs(30), "every task's line in service logs", async || {
        let (ok, out, _) = berthctl(&servers, &["service", "logs", "web"]).ok()?;
        let all = running.iter().all(|(task, (node, _))| out.contains(&format!("{task}@{node} | serving on {task}")));
        (ok && all).then_some(())
    })
    .await?;

    // Containers on different hosts talk through the overlay: a client on
    // host1 fetches from every web task.
    let addresses = wait_for(Duration::from_secs(30), "task addresses", async || {
        let (ok, out, _) = berthctl(&servers, &["service", "ps", "web", "-o", "json"]).ok()?;
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let a: Vec<String> = list.iter().filter_map(|t| t["task"]["address"].as_str().map(str::to_owned)).collect();
        (a.len() == 3).then_some(a)
    })
    .await?;
    let fetches: Vec<String> = addresses
        .iter()
        .map(|a| format!("wget -qO- http://{a}:8080/; udp-echo send {a} 5353 udp-from-client"))
        .chain(["wget -qO- http://web:8080/ | sed s/^/by-name:/; nslookup 1.web.berth.local | sed -n 's/^Address: */slot1:/p'".to_owned()])
        .collect();
    let client = format!("while true; do {}; sleep 0.3; done", fetches.join("; "));
    let (ok, out, err) = berthctl(
        &servers,
        &["service", "create", "--detach", "client", "--image", &image, "--replicas", "3", "--", "sh", "-c", &client],
    )?;
    ensure!(ok, "{out}{err}");
    wait_for(
        Duration::from_secs(60),
        "clients on every host to reach every web task, by TCP, UDP and name",
        async || {
            let (ok, out, _) = berthctl(&servers, &["service", "logs", "client"]).ok()?;
            let tcp = running.keys().all(|task| out.contains(&format!("hello-from-{task}")));
            let udp = running.keys().all(|task| out.contains(&format!("echo from {task}: udp-from-client")));
            // By name, from a container on each host: its node's DNS, then the overlay.
            let on_host = |h: &str, what: &str| out.lines().any(|l| l.contains(&format!("@{h} | {what}")));
            let by_name =
                on.iter().all(|h| on_host(&h.name, "by-name:hello-from-web.") && on_host(&h.name, "slot1:198.19."));
            (ok && tcp && udp && by_name).then_some(())
        },
    )
    .await
    .with_context(|| {
        let logs = berthctl(&servers, &["service", "logs", "client"]).map(|r| r.1).unwrap_or_default();
        format!("{logs}\n{}", agents.iter().map(Agent::daemon_log).collect::<Vec<_>>().join("\n"))
    })?;
    // `wg` sees each node's interface and its two peers.
    let links = on[0].run("ip", &["-br", "link"])?;
    let wg = links
        .lines()
        .find_map(|l| l.split_whitespace().next().filter(|n| n.starts_with("bw")))
        .context("no overlay interface")?;
    let peers = on[0].run("wg", &["show", wg, "peers"])?;
    ensure!(peers.lines().count() == 2, "wg show {wg} peers: {peers}");
    // Only root may talk to it (whoever may, may set keys and peers).
    let socket = std::fs::metadata(format!("/var/run/wireguard/{wg}.sock"))?;
    ensure!(std::os::unix::fs::PermissionsExt::mode(&socket.permissions()) & 0o777 == 0o600, "{socket:?}");
    // On the underlay, that traffic is only WireGuard's UDP: no packet on
    // host1's link carries a container address in clear.
    let capture =
        std::process::Command::new("timeout").args(["3", "tcpdump", "-i", on[0].link(), "-nn", "-q", "-l"]).output()?;
    let seen = String::from_utf8_lossy(&capture.stdout);
    ensure!(seen.lines().any(|l| l.contains("UDP")), "no overlay traffic captured: {seen}");
    ensure!(!seen.contains(" 198.19."), "a container address in clear on the underlay:\n{seen}");
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "client"])?;
    ensure!(ok, "{err}");

    // Every node's DNS knows the service: its replicas, one of them by
    // slot, their addresses' names, what is not there, and the world.
    let mut expected: Vec<String> = addresses.clone();
    expected.sort();
    for host in &on {
        let at = format!("@{}", host.ip);
        let dig = |args: &[&str]| host.run("dig", &[&["+time=2", "+tries=1", &at][..], args].concat());
        wait_for(Duration::from_secs(10), &format!("web.berth.local from {}", host.name), async || {
            let mut got: Vec<String> = dig(&["+short", "web.berth.local"]).ok()?.lines().map(str::to_owned).collect();
            got.sort();
            (got == expected).then_some(())
        })
        .await?;
        let one = dig(&["+short", "1.web.berth.local"])?;
        ensure!(one.lines().count() == 1 && expected.contains(&one.trim().to_owned()), "1.web: {one}");
        let ptr = dig(&["+short", "-x", one.trim()])?;
        ensure!(ptr.trim() == "1.web.berth.local.", "PTR of {}: {ptr}", one.trim());
        let missing = dig(&["nosuch.berth.local"])?;
        ensure!(missing.contains("status: NXDOMAIN") && missing.contains("SOA"), "{missing}");
        let outside = dig(&["+short", "outside.test"])?;
        ensure!(outside.trim() == "198.18.99.99", "forwarded: {outside}");
        let tcp = dig(&["+tcp", "+short", "web.berth.local"])?;
        ensure!(tcp.lines().count() == 3, "over TCP: {tcp}");
        // The named port's SRV records, their targets' addresses alongside.
        let srv = dig(&["SRV", "_http._tcp.web.berth.local"])?;
        let targets: Vec<&str> =
            srv.lines().filter(|l| l.contains("\tSRV\t")).filter_map(|l| l.split_whitespace().last()).collect();
        ensure!(targets.len() == 3 && srv.contains(" 8080 "), "SRV: {srv}");
        for target in targets {
            ensure!(srv.lines().any(|l| l.starts_with(target) && l.contains("\tA\t")), "no A for {target}: {srv}");
        }
    }

    // What `/metrics` shows. Each agent: the questions its DNS answered
    // just now (one NXDOMAIN, one forwarded), its overlay peers; together:
    // the web tasks running, started, pulled for and talking over the
    // overlay. The servers: the nodes and tasks, the agents' watches and
    // heartbeats, and the leader's work.
    let mut agents_sum = BTreeMap::<&str, f64>::new();
    let sums = [
        "berth_agent_containers{state=\"running\"}",
        "berth_agent_container_start_seconds_count",
        "berth_agent_image_pull_bytes_total",
        "berth_agent_overlay_sent_bytes_total",
    ];
    for host in &on {
        let text = berth_tests::scrape(&format!("{}:9100", host.ip))?;
        let m = |name: &str| berth_tests::metric(&text, name).unwrap_or(-1.0);
        ensure!(m("berth_agent_dns_queries_total{rcode=\"nxdomain\"}") >= 1.0, "{}: {text}", host.name);
        ensure!(m("berth_agent_dns_queries_total{rcode=\"noerror\"}") >= 5.0, "{}: {text}", host.name);
        ensure!(m("berth_agent_dns_forwarded_total") >= 1.0, "{}: {text}", host.name);
        ensure!(m("berth_agent_overlay_peers") == 2.0, "{}: {text}", host.name);
        for name in sums {
            *agents_sum.entry(name).or_default() += m(name).max(0.0);
        }
    }
    // 3 web replicas and 3 edge tasks.
    ensure!(agents_sum[sums[0]] >= 6.0 && agents_sum[sums[1]] >= 6.0, "{agents_sum:?}");
    ensure!(agents_sum[sums[2]] > 0.0 && agents_sum[sums[3]] > 0.0, "{agents_sum:?}");
    let leader = cluster.leader().await?;
    let mut servers_sum = BTreeMap::<&str, f64>::new();
    for (i, host) in on.iter().enumerate() {
        let text = berth_tests::scrape(&format!("{}:9090", host.ip))?;
        let m = |name: &str| berth_tests::metric(&text, name).unwrap_or(-1.0);
        ensure!(m("berth_nodes{status=\"ready\"}") == 3.0, "{}: {text}", host.name);
        ensure!(m("berth_tasks{state=\"running\"}") >= 6.0, "{}: {text}", host.name);
        ensure!(m("berth_raft_is_leader") == f64::from(u8::from(i == leader)), "{}: {text}", host.name);
        if i == leader {
            ensure!(m("berth_raft_proposals_total") >= 1.0 && m("berth_raft_commit_seconds_count") >= 1.0, "{text}");
        }
        for name in ["berth_watch_streams", "berth_heartbeats_total", "berth_placements_total"] {
            *servers_sum.entry(name).or_default() += m(name).max(0.0);
        }
    }
    ensure!(servers_sum["berth_watch_streams"] == 3.0, "one watch per agent: {servers_sum:?}");
    ensure!(
        servers_sum["berth_heartbeats_total"] >= 3.0 && servers_sum["berth_placements_total"] >= 3.0,
        "{servers_sum:?}"
    );

    // The answers follow the service as it scales up and down.
    for n in [4usize, 3] {
        // Server-side, and waited for.
        let (ok, out, err) = berthctl(&servers, &["service", "scale", &format!("web={n}")])?;
        ensure!(ok && out.contains(&format!("web converged: {n}/{n} replicas")), "{out}{err}");
        wait_for(Duration::from_secs(30), &format!("{n} web addresses in every node's DNS"), async || {
            let want = running_addresses(&servers, "web").filter(|a| a.len() == n)?;
            for host in &on {
                (dns_addresses(host, "web.berth.local").as_ref() == Some(&want)).then_some(())?;
            }
            Some(())
        })
        .await?;
    }

    // `service inspect` shows the same replicas, with their DNS names.
    let (ok, out, err) = berthctl(&servers, &["service", "inspect", "web", "-o", "json"])?;
    ensure!(ok, "{err}");
    let inspected: serde_json::Value = serde_json::from_str(&out)?;
    let mut endpoints: Vec<String> = inspected["endpoints"]
        .as_array()
        .context("no endpoints")?
        .iter()
        .filter_map(|e| e["address"].as_str().map(str::to_owned))
        .collect();
    endpoints.sort();
    ensure!(Some(&endpoints) == running_addresses(&servers, "web").as_ref(), "inspect: {out}");
    let (ok, out, _) = berthctl(&servers, &["service", "inspect", "web"])?;
    ensure!(ok && out.lines().any(|l| l.trim_start().starts_with("1.web ") && l.contains("198.19.")), "{out}");

    // A replica killed (and, restart never, left failed) leaves every
    // node's answer; the other stays.
    let (ok, out, err) = berthctl(
        &servers,
        &[
            "service",
            "create",
            "--detach",
            "solo",
            "--image",
            &image,
            "--replicas",
            "2",
            "--restart",
            "never",
            "--",
            "sh",
            "-c",
            SERVE,
        ],
    )?;
    ensure!(ok, "{out}{err}");
    let both = wait_for(Duration::from_secs(60), "solo's 2 replicas in every node's DNS", async || {
        let want = running_addresses(&servers, "solo").filter(|a| a.len() == 2)?;
        for host in &on {
            (dns_addresses(host, "solo.berth.local").as_ref() == Some(&want)).then_some(())?;
        }
        Some(want)
    })
    .await?;
    let victim = tasks(&servers, "solo").and_then(|t| t.into_keys().next()).context("no solo task")?;
    let pid = agents
        .iter()
        .flat_map(Agent::ps)
        .find(|c| c["name"] == victim.as_str())
        .and_then(|c| c["pid"].as_i64())
        .context("no container for the victim")?;
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    wait_for(Duration::from_secs(30), "the killed replica to leave every node's DNS", async || {
        let left = running_addresses(&servers, "solo").filter(|a| a.len() == 1 && both.contains(&a[0]))?;
        for host in &on {
            (dns_addresses(host, "solo.berth.local").as_ref() == Some(&left)).then_some(())?;
        }
        Some(())
    })
    .await?;
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "solo"])?;
    ensure!(ok, "{err}");

    // A replica that fails its health check (an HTTP probe from its node)
    // leaves every node's DNS, the routing mesh and `service inspect`'s
    // endpoints, stays running (restart never: not replaced), and comes
    // back once it passes again; `service ps` says which and why.
    let serve_ok = format!("mkdir -p /www && echo ok > /www/ok.html && {SERVE}");
    let create = [
        &["service", "create", "--detach", "checked", "--image", &image, "--replicas", "2", "--restart", "never"][..],
        &["--publish", "9180:8080", "--health-http", "8080/ok.html", "--health-interval", "300ms"],
        &["--health-retries", "2", "--", "sh", "-c", &serve_ok],
    ]
    .concat();
    let (ok, out, err) = berthctl(&servers, &create)?;
    ensure!(ok, "{out}{err}");
    let mesh = format!("{}:9180", on[0].ip);
    let ids = wait_for(Duration::from_secs(60), "checked's 2 replicas healthy, in DNS and the mesh", async || {
        let health = health_of(&servers, "checked").filter(|h| h.len() == 2 && h.values().all(|h| h == "healthy"))?;
        serving(&on, &servers, "checked", &mesh, 2).await?;
        Some(health.into_keys().collect::<Vec<String>>())
    })
    .await?;
    let (sick, well) = (&ids[0], &ids[1]);
    let host = agents.iter().position(|a| a.ps().iter().any(|c| c["name"] == sick.as_str())).context("its host")?;
    agents[host].ok(&["exec", sick, "--", "rm", "/www/ok.html"]);
    wait_for(Duration::from_secs(30), "the unhealthy replica out of DNS, the mesh and the endpoints", async || {
        (health_of(&servers, "checked")?.get(sick)? == "unhealthy").then_some(())?;
        let only = serving(&on, &servers, "checked", &mesh, 1).await?;
        (only == [well.clone()]).then_some(())
    })
    .await?;
    let (ok, out, err) = berthctl(&servers, &["service", "ps", "checked"])?;
    ensure!(ok && out.contains("running (unhealthy)") && out.contains("unhealthy after 2 failed probes"), "{out}{err}");
    ensure!(
        containers(&agents).iter().flatten().filter(|c| c.starts_with("checked.")).count() == 2,
        "restart never: the unhealthy replica is left running, not replaced"
    );
    agents[host].ok(&["exec", sick, "--", "sh", "-c", "echo ok > /www/ok.html"]);
    wait_for(Duration::from_secs(30), "the replica back once healthy", async || {
        (health_of(&servers, "checked")?.get(sick)? == "healthy").then_some(())?;
        serving(&on, &servers, "checked", &mesh, 2).await
    })
    .await?;
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "checked"])?;
    ensure!(ok, "{err}");

    // The routing mesh: port 9080 of every host answers, from every replica
    // wherever it runs; also on the host itself (its own address).
    let published: Vec<String> = on.iter().map(|h| format!("{}:9080", h.ip)).collect();
    for addr in &published {
        wait_for(Duration::from_secs(30), &format!("{addr} to answer from every replica"), async || {
            answers_from_all(addr, &running).await.then_some(())
        })
        .await
        .with_context(|| agents.iter().map(Agent::daemon_log).collect::<Vec<_>>().join("\n"))?;
    }
    // A published UDP port too, each datagram from a new source port.
    for host in &on {
        wait_for(Duration::from_secs(10), &format!("{}:9053/udp to echo", host.ip), async || {
            let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
            socket.send_to(b"udp-from-outside", (host.ip, 9053)).await.ok()?;
            let mut reply = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut reply)).await.ok()?.ok()?;
            let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
            (reply.starts_with("echo from web.") && reply.ends_with(": udp-from-outside")).then_some(())
        })
        .await?;
    }
    let own = on[0].run("busybox", &["wget", "-qO-", &format!("http://{}/", published[0])])?;
    ensure!(own.starts_with("hello-from-web."), "host1 fetching its own published port: {own}");

    // Cut host3 off: the two others keep a quorum, see its node go down and
    // run its task. (berthctl asks only the servers it can reach.)
    let reachable = &servers[..2];
    let stale = tasks(&servers, "web").and_then(|t| t.into_iter().find(|(_, (n, _))| n == "host3")).map(|(id, _)| id);
    let stale = stale.context("no web task on host3")?;
    // Raft too: a cut-off follower's server stands for no election (pre-vote),
    // and when it comes back it leaves the leader in office.
    let before = wait_for(Duration::from_secs(30), "servers to agree on a leader", async || raft_agreed(&on)).await?;
    let host3_led = cluster.leader().await? == 2;
    on[2].cut()?;
    wait_for(Duration::from_secs(60), "host3's task on the other hosts", async || {
        let t = tasks(reachable, "web")?;
        (t.len() == 3 && t.values().all(|(n, s)| n != "host3" && s == "running")).then_some(())
    })
    .await
    .with_context(|| cluster.logs())?;
    let (ok, out, _) = berthctl(reachable, &["node", "ls"])?;
    ensure!(ok && out.lines().any(|l| l.starts_with("host3 ") && l.contains(" down ")), "{out}");
    let during = wait_for(Duration::from_secs(30), "host1 and host2 to agree", async || raft_agreed(&on[..2])).await?;
    ensure!(host3_led || during == before, "cutting off a follower changed (term, leader): {before:?} -> {during:?}");
    // Their DNS has too, and knows the replica that took its place.
    for host in &on[..2] {
        wait_for(Duration::from_secs(30), &format!("{}'s DNS to follow the move", host.name), async || {
            let want = running_addresses(reachable, "web").filter(|a| a.len() == 3)?;
            (dns_addresses(host, "web.berth.local")? == want).then_some(())
        })
        .await?;
    }
    // The mesh on the hosts left has forgotten host3's replica: every
    // request answers (after the short window in which it was still listed).
    for addr in &published[..2] {
        let tries = std::sync::Mutex::new(Vec::new());
        wait_for(Duration::from_secs(30), &format!("{addr} to answer 10 times in a row"), async || {
            for _ in 0..10 {
                let page = fetch(addr).await;
                tries.lock().ok()?.push(format!("{page:?}"));
                page.filter(|page| page.starts_with("hello-from-web."))?;
            }
            Some(())
        })
        .await
        .with_context(|| {
            let ps = berthctl(reachable, &["service", "ps", "web"]).map(|r| r.1).unwrap_or_default();
            let rules = on[0].run("iptables", &["-t", "nat", "-S"]).unwrap_or_default();
            let conntrack = on[0].run("conntrack", &["-L", "-p", "tcp", "--orig-port-dst", "9080"]).unwrap_or_default();
            let wg = on[0].run("wg", &["show", "all"]).unwrap_or_default();
            let far = on[1].run("conntrack", &["-L", "-p", "tcp", "--orig-port-dst", "8080"]).unwrap_or_default();
            let wg = format!("{wg}\nhost2:\n{far}");
            let tries = tries.lock().map(|t| t.join(" ")).unwrap_or_default();
            format!("tries: {tries}\n{ps}\n{rules}\n{conntrack}\n{wg}")
        })?;
    }

    // Healed, host3 stops what is no longer its own: exactly 3 containers.
    on[2].heal()?;
    wait_for(Duration::from_secs(60), "host3 to stop its stale web container", async || {
        let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
        (ok && out.matches(" ready ").count() == 3 && !containers(&agents)[2].contains(&stale)).then_some(())
    })
    .await?;
    let after = wait_for(Duration::from_secs(30), "all servers to agree", async || raft_agreed(&on)).await?;
    ensure!(after == during, "host3's server came back and deposed the leader: {during:?} -> {after:?}");
    // Host3's edge task went with its node and a new one is back there.
    wait_for(Duration::from_secs(60), "edge on every host again", edge_on(&["host1", "host2", "host3"])).await?;
    // A web replica moves back to host3 (one host failure no longer takes
    // two of them), start-first: at no moment do fewer than 3 run.
    rebalanced(&servers, "web", 3).await?;
    // Again with host2, so that host1 carried all three in between.
    let stale = tasks(&servers, "web").and_then(|t| t.into_iter().find(|(_, (n, _))| n == "host2")).map(|(id, _)| id);
    let stale = stale.context("no web task on host2")?;
    let others = [servers[0].clone(), servers[2].clone()];
    let host2_led = cluster.leader().await? == 1;
    let after = wait_for(Duration::from_secs(30), "servers to agree on a leader", async || raft_agreed(&on)).await?;
    on[1].cut()?;
    wait_for(Duration::from_secs(60), "host2's task on the other hosts", async || {
        let t = tasks(&others, "web")?;
        (t.len() == 3 && t.values().all(|(n, s)| n != "host2" && s == "running")).then_some(())
    })
    .await
    .with_context(|| cluster.logs())?;
    let during =
        wait_for(Duration::from_secs(30), "host1 and host3 to agree", async || raft_agreed(&[on[0], on[2]])).await?;
    ensure!(host2_led || during == after, "cutting off a follower changed (term, leader): {after:?} -> {during:?}");
    on[1].heal()?;
    wait_for(Duration::from_secs(60), "host2 to stop its stale web container", async || {
        let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
        (ok && out.matches(" ready ").count() == 3 && !containers(&agents)[1].contains(&stale)).then_some(())
    })
    .await?;
    let healed = wait_for(Duration::from_secs(30), "all servers to agree", async || raft_agreed(&on)).await?;
    ensure!(healed == during, "host2's server came back and deposed the leader: {during:?} -> {healed:?}");
    rebalanced(&servers, "web", 3).await?;
    // The moved replicas' old containers stop once their successors serve.
    wait_for(Duration::from_secs(30), "one web container per host", async || {
        let web: Vec<usize> =
            containers(&agents).iter().map(|c| c.iter().filter(|n| n.starts_with("web.")).count()).collect();
        (web == [1, 1, 1]).then_some(())
    })
    .await?;

    // An agent restart leaves its containers' networking alone: host1's
    // task keeps running with its id, address and restart count, answers
    // on its address, and once the overlay is back every host's published
    // port answers from every replica, every time (a restarted node once
    // lost half its flows to a TUN queue a container's shim had kept).
    let before = berthctl(&servers, &["service", "ps", "web", "-o", "json"])?.1;
    daemons[0].stop(Duration::from_secs(15))?;
    daemons[0] = agents[0].join_at(&servers, &on[0].name, &format!("{}:7500", on[0].ip), &extra(0))?;
    let host1_task = |json: &str| -> Option<(String, String, u64)> {
        let list: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
        list.iter().find(|t| t["node_name"] == "host1" && t["task"]["desired"] == "running").map(|t| {
            let s = |k: &str| t["task"][k].as_str().unwrap_or_default().to_owned();
            (s("id"), s("address"), t["task"]["restarts"].as_u64().unwrap_or_default())
        })
    };
    let was = host1_task(&before).context("no task on host1")?;
    wait_for(Duration::from_secs(30), "host1's task to answer on its address after the restart", async || {
        let page = on[0].run("busybox", &["wget", "-qO-", &format!("http://{}:8080/", was.1)]).ok()?;
        page.starts_with(&format!("hello-from-{}", was.0)).then_some(())
    })
    .await
    .with_context(|| agents[0].daemon_log())?;
    let after = berthctl(&servers, &["service", "ps", "web", "-o", "json"])?.1;
    let is = host1_task(&after);
    ensure!(Some(&was) == is.as_ref(), "host1's task changed over an agent restart: {was:?} -> {is:?}");
    let now = tasks(&servers, "web").context("web's tasks")?;
    for addr in &published {
        wait_for(
            Duration::from_secs(30),
            &format!("{addr} to answer 10 times in a row after the restart"),
            async || {
                for _ in 0..10 {
                    fetch(addr).await.filter(|page| page.starts_with("hello-from-web."))?;
                }
                answers_from_all(addr, &now).await.then_some(())
            },
        )
        .await?;
    }

    // With every server stopped, each node's DNS answers from its last
    // view, once its agent has seen the control plane go.
    let before = running_addresses(&servers, "web").context("web's addresses")?;
    let lost = |a: &Agent| a.daemon_log().matches("task watch:").count();
    let seen: Vec<usize> = agents.iter().map(lost).collect();
    for server in &mut cluster.servers {
        server.stop()?;
    }
    wait_for(Duration::from_secs(30), "every agent to lose its task watch", async || {
        agents.iter().zip(&seen).all(|(a, n)| lost(a) > *n).then_some(())
    })
    .await?;
    // Now, and again after longer than the records' TTL.
    for pause in [0, 6] {
        tokio::time::sleep(Duration::from_secs(pause)).await;
        for host in &on {
            wait_for(Duration::from_secs(10), &format!("{}'s DNS without a control plane", host.name), async || {
                (dns_addresses(host, "web.berth.local").as_ref() == Some(&before)).then_some(())
            })
            .await?;
        }
    }
    for server in &mut cluster.servers {
        server.restart()?;
    }
    wait_for(Duration::from_secs(60), "three nodes ready after the control plane's restart", async || {
        let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
        (ok && out.matches(" ready ").count() == 3).then_some(())
    })
    .await
    .with_context(|| cluster.logs())?;

    let (ok, _, err) = berthctl(&servers, &["service", "rm", "web"])?;
    ensure!(ok, "{err}");
    wait_for(Duration::from_secs(60), "only edge's container on each host", async || {
        containers(&agents).iter().all(|c| c.len() == 1 && c[0].starts_with("edge.")).then_some(())
    })
    .await?;

    // Host3 stops (its agent and server), is removed, and leaves nothing
    // of its overlay: every other node drops it from its peers.
    let wg3 = on[2].run("ip", &["-br", "link"])?;
    let wg3 = wg3.lines().find_map(|l| l.split_whitespace().next().filter(|n| n.starts_with("bw"))).map(str::to_owned);
    let wg3 = wg3.context("no overlay interface on host3")?;
    daemons[2].stop(Duration::from_secs(15))?;
    cluster.servers[2].stop()?;
    let links = on[2].run("ip", &["-br", "link"])?;
    ensure!(!links.contains(&wg3), "host3's overlay interface outlived its agent: {links}");
    // The overlay's route went with it; the fallback stays, so nothing for
    // another node leaves in clear.
    let routes = on[2].run("ip", &["route"])?;
    ensure!(!routes.contains(&wg3), "host3's overlay route outlived its agent: {routes}");
    ensure!(routes.contains("unreachable 198.19.0.0/16"), "no fallback route on host3: {routes}");
    let socket = format!("/var/run/wireguard/{wg3}.sock");
    ensure!(!std::path::Path::new(&socket).exists(), "{socket} outlived its agent");
    wait_for(Duration::from_secs(30), "host3 down", async || {
        let (ok, out, _) = berthctl(reachable, &["node", "ls"]).ok()?;
        (ok && out.lines().any(|l| l.starts_with("host3 ") && l.contains(" down "))).then_some(())
    })
    .await?;
    let (ok, out, err) = berthctl(reachable, &["node", "rm", "host3"])?;
    ensure!(ok, "node rm host3: {out}{err}");
    for host in &on[..2] {
        wait_for(Duration::from_secs(10), &format!("{} to drop host3 from its peers", host.name), async || {
            let links = host.run("ip", &["-br", "link"]).ok()?;
            let wg = links.lines().find_map(|l| l.split_whitespace().next().filter(|n| n.starts_with("bw")))?;
            let peers = host.run("wg", &["show", wg, "endpoints"]).ok()?;
            (peers.lines().count() == 1 && !peers.contains(&on[2].ip.to_string())).then_some(())
        })
        .await?;
    }
    // The node left, and its edge task with it; none is made elsewhere.
    let left = || {
        let servers = reachable.to_vec();
        async move || {
            let t = tasks(&servers, "edge")?;
            let nodes: Vec<&str> = t.values().map(|(n, _)| n.as_str()).collect();
            (t.len() == 2 && !nodes.contains(&"host3") && t.values().all(|(_, s)| s == "running")).then_some(())
        }
    };
    wait_for(Duration::from_secs(30), "edge on the two hosts left", left()).await?;
    let (ok, _, err) = berthctl(reachable, &["service", "rm", "edge"])?;
    ensure!(ok, "{err}");
    wait_for(Duration::from_secs(60), "no containers on the hosts left", async || {
        containers(&agents[..2]).iter().all(Vec::is_empty).then_some(())
    })
    .await?;
    drop(daemons);
    drop(resolver);
    Ok(())
}
