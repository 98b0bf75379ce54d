//! Services run as containers on the agents: three berth-servers, two
//! berth-agents (each with its own data dir, run dir and cgroup parent)
//! pulling from a docker-registry on loopback. Tasks start, a killed
//! container is restarted by its agent, scaling down stops the highest
//! slots, and removing the service leaves no container anywhere.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_tests::agent::Agent;
use berth_tests::oci::Image;
use berth_tests::registry::Registry;
use berth_tests::{berthctl, wait_for, Cluster, Process};

/// Tasks meant to run, from `service ps -o json`: id -> (node, state, restarts).
fn tasks(servers: &[String], service: &str) -> Option<BTreeMap<String, (String, String, u64)>> {
    let (ok, out, _) = berthctl(servers, &["service", "ps", service, "-o", "json"]).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
    Some(
        list.iter()
            .filter(|t| t["task"]["desired"] == "running")
            .map(|t| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
                (
                    s(&t["task"]["id"]),
                    (s(&t["node_name"]), s(&t["task"]["state"]), t["task"]["restarts"].as_u64().unwrap_or(0)),
                )
            })
            .collect(),
    )
}

/// Containers on both agents, by name: (agent index, state, pid).
fn containers(agents: &[&Agent]) -> BTreeMap<String, (usize, String, i64)> {
    let mut out = BTreeMap::new();
    for (i, a) in agents.iter().enumerate() {
        for c in a.ps() {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            out.insert(name, (i, c["state"].as_str().unwrap_or_default().to_owned(), c["pid"].as_i64().unwrap_or(0)));
        }
    }
    out
}

/// Runs until stopped, and stops at once on SIGTERM (as PID 1 a shell
/// has no default action for it, so it traps it).
const SERVE: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

#[tokio::test(flavor = "multi_thread")]
async fn tasks_run_restart_scale_and_go_away() -> Result<()> {
    let registry = Registry::start().await?;
    Image::busybox()?.push(&registry.addr, "busybox", "v1").await?;
    let image = format!("{}/busybox:v1", registry.addr);
    let cluster = Cluster::start(3, &[]).await?;
    let servers = cluster.addrs();
    let (a, b) = (Agent::new(Some(&registry)), Agent::new(Some(&registry)));
    // Declared after the agents, so the daemons stop before the agents clean up.
    let mut daemons = Vec::new();
    for (agent, name) in [(&a, "alpha"), (&b, "beta")] {
        let mut p = Process::new(agent.data.path().join("daemon.log"));
        p.start(&mut agent.command(&["--server", &servers.join(","), "--name", name, "--heartbeat-ms", "300"]))?;
        daemons.push(p);
    }
    let (ok, out, err) = berthctl(
        &servers,
        &["service", "create", "web", "--image", &image, "--replicas", "3", "--", "sh", "-c", SERVE],
    )?;
    ensure!(ok, "{out}{err}");
    let running = wait_for(Duration::from_secs(60), "3 tasks running", async || {
        let t = tasks(&servers, "web")?;
        (t.len() == 3 && t.values().all(|(_, s, _)| s == "running")).then_some(t)
    })
    .await
    .with_context(|| format!("{}\n{}", a.daemon_log(), b.daemon_log()))?;
    let nodes: Vec<&String> = running.values().map(|(n, _, _)| n).collect();
    ensure!(nodes.contains(&&"alpha".to_owned()) && nodes.contains(&&"beta".to_owned()), "spread: {running:?}");
    let on_hosts = containers(&[&a, &b]);
    ensure!(on_hosts.keys().collect::<Vec<_>>() == running.keys().collect::<Vec<_>>(), "{on_hosts:?} vs {running:?}");

    // Kill one container's process: its agent starts it again.
    let (victim, (_, _, pid)) = on_hosts.iter().next().context("a container")?;
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    wait_for(Duration::from_secs(30), "the killed task to run again", async || {
        let t = tasks(&servers, "web")?;
        let (_, state, restarts) = t.get(victim)?;
        (state == "running" && *restarts >= 1).then_some(())
    })
    .await?;

    // A node that stops answering: its tasks come up on the other node;
    // when it answers again it stops what is no longer its own, and the
    // service settles at exactly its replicas.
    daemons[0].signal("STOP")?;
    wait_for(Duration::from_secs(30), "all 3 on beta", async || {
        let t = tasks(&servers, "web")?;
        (t.len() == 3 && t.values().all(|(n, s, _)| n == "beta" && s == "running")).then_some(())
    })
    .await?;
    daemons[0].signal("CONT")?;
    wait_for(Duration::from_secs(30), "alpha's old containers gone", async || {
        let c = containers(&[&a, &b]);
        (c.len() == 3 && c.values().all(|(agent, state, _)| *agent == 1 && state == "running")).then_some(())
    })
    .await?;

    // Scale down: the highest slots go, their containers with them.
    let (ok, _, err) = berthctl(&servers, &["service", "create", "web", "--image", &image])?;
    ensure!(!ok && err.contains("already exists"), "{err}");
    let (ok, out, err) = berthctl(&servers, &["service", "scale", "web=1"])?;
    ensure!(ok && out.contains("scaled to 1"), "{out}{err}");
    wait_for(Duration::from_secs(60), "one container left", async || {
        let c = containers(&[&a, &b]);
        (c.len() == 1 && c.keys().all(|k| k.starts_with("web.1."))).then_some(())
    })
    .await?;

    // Removal leaves nothing on any node.
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "web"])?;
    ensure!(ok, "{err}");
    wait_for(Duration::from_secs(60), "no containers", async || containers(&[&a, &b]).is_empty().then_some(())).await?;
    wait_for(Duration::from_secs(30), "no tasks", async || {
        let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
        (ok && out.lines().skip(1).all(|l| l.split_whitespace().nth(6) == Some("0"))).then_some(())
    })
    .await?;
    drop(daemons);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_keeps_failing_is_restarted_with_backoff() -> Result<()> {
    let registry = Registry::start().await?;
    Image::busybox()?.push(&registry.addr, "busybox", "v1").await?;
    let image = format!("{}/busybox:v1", registry.addr);
    let cluster = Cluster::start(3, &[]).await?;
    let servers = cluster.addrs();
    let agent = Agent::new(Some(&registry));
    let mut daemon = Process::new(agent.data.path().join("daemon.log"));
    daemon.start(&mut agent.command(&["--server", &servers.join(","), "--name", "solo", "--heartbeat-ms", "300"]))?;
    let (ok, out, err) =
        berthctl(&servers, &["service", "create", "crash", "--image", &image, "--", "sh", "-c", "exit 1"])?;
    ensure!(ok, "{out}{err}");
    // Restarts at once, then after 0.1, 0.2, 0.4, 0.8, 1.6, 3.2 s...: about
    // seven in the first 6.3 s, and never a tight loop.
    let started = std::time::Instant::now();
    wait_for(Duration::from_secs(30), "a few restarts", async || {
        let t = tasks(&servers, "crash")?;
        (t.values().next()?.2 >= 4).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarts = tasks(&servers, "crash").and_then(|t| t.values().next().map(|v| v.2)).unwrap_or(0);
    let elapsed = started.elapsed().as_secs_f64();
    // At most 1 + log2(elapsed / 0.1) + 1 restarts fit in `elapsed` seconds.
    let bound = 2.0 + (elapsed / 0.1).log2();
    ensure!((restarts as f64) <= bound, "{restarts} restarts in {elapsed:.1}s: more than backoff allows ({bound:.1})");
    let (ok, out, _) = berthctl(&servers, &["service", "ps", "crash"])?;
    ensure!(ok && (out.contains("exited") || out.contains("running")), "{out}");
    drop(daemon);
    Ok(())
}
