//! Task containers get addresses of their node's subnet and reach each
//! other by address: three berth-servers (cluster CIDR 198.19.0.0/16) and
//! two berth-agents on this host, each with its own bridge. A web service's
//! replicas answer HTTP from the host and from a client container on the
//! other node's bridge (the client in a user namespace of its own, its
//! network namespace inside it); their namespaces and veths go with them.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_tests::agent::Agent;
use berth_tests::registry::Registry;
use berth_tests::{berthctl, wait_for, Cluster};

/// Serves its host name over HTTP on port 8080.
const WEB: &str = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www";

/// Running tasks of a service: (task, node, address).
fn running(servers: &[String], service: &str) -> Option<Vec<(String, String, Ipv4Addr)>> {
    let (ok, out, _) = berthctl(servers, &["service", "ps", service, "-o", "json"]).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
    list.iter()
        .filter(|t| t["task"]["desired"] == "running" && t["task"]["state"] == "running")
        .map(|t| {
            let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
            Some((s(&t["task"]["id"])?, s(&t["node_name"])?, s(&t["task"]["address"])?.parse().ok()?))
        })
        .collect()
}

/// GET / from the host.
fn get(addr: Ipv4Addr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from((addr, 8080)), Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

#[tokio::test(flavor = "multi_thread")]
async fn task_containers_reach_each_other_by_address() -> Result<()> {
    let (registry, image) = Registry::with_busybox().await?;
    let cluster = Cluster::start(3, &[]).await?;
    let servers = cluster.addrs();
    let (a, b) = (Agent::new(Some(&registry)), Agent::new(Some(&registry)));
    let daemons = berth_tests::agent::join_ready(&servers, &[(&a, "alpha"), (&b, "beta")]).await?;

    let (ok, out, err) = berthctl(
        &servers,
        &["service", "create", "--detach", "web", "--image", &image, "--replicas", "2", "--", "sh", "-c", WEB],
    )?;
    ensure!(ok, "{out}{err}");
    let web = wait_for(Duration::from_secs(60), "2 web tasks running", async || {
        running(&servers, "web").filter(|t| t.len() == 2)
    })
    .await
    .with_context(|| format!("{}\n{}", a.daemon_log(), b.daemon_log()))?;
    let nodes: Vec<&str> = web.iter().map(|t| t.1.as_str()).collect();
    ensure!(nodes.contains(&"alpha") && nodes.contains(&"beta"), "spread: {web:?}");

    // From the host, through each node's bridge.
    for (task, _, addr) in &web {
        let body = wait_for(Duration::from_secs(20), "the web task to answer", async || get(*addr).ok())
            .await
            .with_context(|| format!("{task} at {addr}"))?;
        ensure!(body.contains(&format!("hello-from-{task}")), "{task}: {body}");
    }
    // Inside: eth0 has the address, the gateway is the node's bridge.
    let netns = a.run_root().join("netns");
    let on_a: Vec<&(String, String, Ipv4Addr)> = web.iter().filter(|t| t.1 == "alpha").collect();
    let ns = netns.join(&on_a[0].0);
    let inside = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-br", "addr", "show", "dev", "eth0"])
        .output()?;
    let inside = String::from_utf8_lossy(&inside.stdout);
    ensure!(inside.contains(&format!("{}/24", on_a[0].2)), "{inside}");

    // Container to container, across the two bridges, from a client whose
    // root is an unprivileged host id (its network namespace is its user
    // namespace's, so it configures and uses it as any container does).
    let fetch: Vec<String> = web.iter().map(|(_, _, addr)| format!("wget -qO- http://{addr}:8080/")).collect();
    let client = format!("echo map $(cat /proc/self/uid_map); while true; do {}; sleep 0.5; done", fetch.join("; "));
    let (ok, out, err) = berthctl(
        &servers,
        &["service", "create", "--detach", "client", "--image", &image, "--userns", "auto", "--", "sh", "-c", &client],
    )?;
    ensure!(ok, "{out}{err}");
    let logs = wait_for(Duration::from_secs(60), "the client to fetch from both web tasks", async || {
        let (ok, out, _) = berthctl(&servers, &["service", "logs", "client"]).ok()?;
        (ok && web.iter().all(|(task, _, _)| out.contains(&format!("hello-from-{task}")))).then_some(out)
    })
    .await
    .with_context(|| berthctl(&servers, &["service", "logs", "client"]).map(|r| r.1).unwrap_or_default())?;
    let map = logs.lines().find_map(|l| l.split_once("| map ")).map(|(_, m)| m.to_owned()).unwrap_or_default();
    let map: Vec<u64> = map.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    ensure!(map.len() == 3 && map[0] == 0 && map[1] >= 1 << 31 && map[2] == 65536, "client's uid_map: {logs}");

    // Removal takes the namespaces and the veths with the containers.
    for service in ["web", "client"] {
        let (ok, _, err) = berthctl(&servers, &["service", "rm", service])?;
        ensure!(ok, "{err}");
    }
    wait_for(Duration::from_secs(60), "no namespaces or veths left", async || {
        let clean = [&a, &b].iter().all(|x| {
            let count = |dir: PathBuf| std::fs::read_dir(dir).map_or(0, |d| d.count());
            let netns = x.run_root().join("netns");
            let namespaces = count(netns.clone()) - usize::from(netns.join("users").exists());
            let left = namespaces + count(netns.join("users")) + x.userns_claims().len();
            left == 0 && plugged_into(&x.bridge).is_empty()
        });
        clean.then_some(())
    })
    .await?;
    drop(daemons);
    Ok(())
}

/// Links plugged into a bridge.
fn plugged_into(bridge: &str) -> String {
    let out = std::process::Command::new("ip").args(["-br", "link", "show", "master", bridge]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}
