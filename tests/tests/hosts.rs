//! berth across hosts: three hosts (network namespaces on a test network in
//! 198.18.0.0/16), each running a berth-server and a berth-agent. A
//! service spreads over the three; its logs come from every host; a host
//! cut off the network loses its task to the others, and once healed it
//! stops its stale container so the service settles at exactly its replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_tests::agent::Agent;
use berth_tests::hosts::Hosts;
use berth_tests::oci::Image;
use berth_tests::registry::{Auth, Registry};
use berth_tests::{berthctl, wait_for, Cluster};

/// Serves its host name over HTTP on port 8080, and says so in its log.
const SERVE: &str = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && echo serving on $(hostname) \
    && exec httpd -f -p 8080 -h /www";

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

/// Task containers on each agent's host, by agent index.
fn containers(agents: &[Agent]) -> Vec<Vec<String>> {
    agents.iter().map(|a| a.ps().iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_spreads_over_hosts_and_survives_a_cut_off_host() -> Result<()> {
    let hosts = Hosts::new(3)?;
    let registry = Registry::start_at(&hosts.gateway.to_string(), Auth::Anonymous).await?;
    Image::busybox()?.push(&registry.addr, "busybox", "v1").await?;
    let image = format!("{}/busybox:v1", registry.addr);
    let on: Vec<&berth_tests::hosts::Host> = hosts.hosts.iter().collect();
    let cluster = Cluster::start_on(&on, &["--node-down-after-ms", "2000"]).await?;
    let servers = cluster.addrs();
    let agents: Vec<Agent> = on.iter().map(|h| Agent::on(Some(&registry), h)).collect();
    let mut daemons = Vec::new();
    for (agent, host) in agents.iter().zip(&on) {
        daemons.push(agent.join_at(&servers, &host.name, &format!("{}:7500", host.ip), &[])?);
    }
    wait_for(Duration::from_secs(30), "three nodes ready", async || {
        let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
        (ok && out.matches(" ready ").count() == 3).then_some(())
    })
    .await?;

    let (ok, out, err) = berthctl(
        &servers,
        &["service", "create", "web", "--image", &image, "--replicas", "3", "--", "sh", "-c", SERVE],
    )?;
    ensure!(ok, "{out}{err}");
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
    let fetch: Vec<String> = addresses.iter().map(|a| format!("wget -qO- http://{a}:8080/")).collect();
    let client = format!("while true; do {}; sleep 0.3; done", fetch.join("; "));
    let (ok, out, err) = berthctl(
        &servers,
        &[
            "service",
            "create",
            "client",
            "--image",
            &image,
            "--constraint",
            "node.name == host1",
            "--",
            "sh",
            "-c",
            &client,
        ],
    )?;
    ensure!(ok, "{out}{err}");
    wait_for(Duration::from_secs(60), "the client on host1 to reach every web task", async || {
        let (ok, out, _) = berthctl(&servers, &["service", "logs", "client"]).ok()?;
        (ok && running.keys().all(|task| out.contains(&format!("hello-from-{task}")))).then_some(())
    })
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
    // On the underlay, that traffic is only WireGuard's UDP: no packet on
    // host1's link carries a container address in clear.
    let capture =
        std::process::Command::new("timeout").args(["3", "tcpdump", "-i", on[0].link(), "-nn", "-q", "-l"]).output()?;
    let seen = String::from_utf8_lossy(&capture.stdout);
    ensure!(seen.lines().any(|l| l.contains("UDP")), "no overlay traffic captured: {seen}");
    ensure!(!seen.contains(" 198.19."), "a container address in clear on the underlay:\n{seen}");
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "client"])?;
    ensure!(ok, "{err}");

    // Cut host3 off: the two others keep a quorum, see its node go down and
    // run its task. (berthctl asks only the servers it can reach.)
    let reachable = &servers[..2];
    on[2].cut()?;
    wait_for(Duration::from_secs(60), "host3's task on the other hosts", async || {
        let t = tasks(reachable, "web")?;
        (t.len() == 3 && t.values().all(|(n, s)| n != "host3" && s == "running")).then_some(())
    })
    .await
    .with_context(|| cluster.logs())?;
    let (ok, out, _) = berthctl(reachable, &["node", "ls"])?;
    ensure!(ok && out.lines().any(|l| l.starts_with("host3 ") && l.contains(" down ")), "{out}");

    // Healed, host3 stops what is no longer its own: exactly 3 containers.
    on[2].heal()?;
    wait_for(Duration::from_secs(60), "exactly 3 containers once host3 is back", async || {
        let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
        let c = containers(&agents);
        let total: usize = c.iter().map(Vec::len).sum();
        (ok && out.matches(" ready ").count() == 3 && total == 3 && c[2].is_empty()).then_some(())
    })
    .await?;

    let (ok, _, err) = berthctl(&servers, &["service", "rm", "web"])?;
    ensure!(ok, "{err}");
    wait_for(Duration::from_secs(60), "no containers on any host", async || {
        containers(&agents).iter().all(Vec::is_empty).then_some(())
    })
    .await?;
    drop(daemons);
    Ok(())
}
