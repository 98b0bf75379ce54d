//! Agents join a real cluster: three berth-server processes and two
//! berth-agent processes on loopback, each with its own data dir. Nodes
//! register, stay ready on heartbeats, go down when their agent dies, come
//! back as the same node, act on new tasks while the server they watch is
//! frozen, and are drained, activated and removed through berthctl; a
//! cluster past its heartbeat rate asks them to beat less often.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use berth_tests::{berthctl, bin, free_port, wait_for, Cluster, Process};

/// A berth-agent joined to the cluster, in its own data dir.
struct JoinedAgent {
    process: Process,
    dir: tempfile::TempDir,
    name: String,
    advertise: String,
    bridge: String,
}

impl Drop for JoinedAgent {
    fn drop(&mut self) {
        let _ = self.process.stop(Duration::from_secs(5));
        berth_tests::agent::remove_bridge(&self.bridge);
        berth_tests::agent::remove_stale_wireguard_sockets();
    }
}

impl JoinedAgent {
    fn start(servers: &[String], name: &str, extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let advertise = format!("127.0.0.1:{}", free_port());
        let bridge = format!("bn{}", &advertise.rsplit(':').next().unwrap_or("0"));
        let mut agent =
            Self { process: Process::new(dir.path().join("agent.log")), dir, name: name.into(), advertise, bridge };
        agent.launch(servers, extra)?;
        Ok(agent)
    }

    fn launch(&mut self, servers: &[String], extra: &[&str]) -> Result<()> {
        let mut cmd = std::process::Command::new(bin("berth-agent"));
        cmd.env("BERTH_AGENT_DATA_DIR", self.dir.path())
            .env("BERTH_LOG", "info")
            .env("BERTH_TOKEN", berth_tests::keys().worker_token.unwrap_or_default())
            .args(["--server", &servers.join(","), "--name", &self.name, "--advertise", &self.advertise])
            .args(["--cpus", "2", "--memory", "4Gi", "--heartbeat-ms", "300", "--bridge", &self.bridge])
            .args(["--wireguard-port", &free_port().to_string()])
            .args(extra);
        self.process.start(&mut cmd)
    }

    fn id(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node-id")).unwrap_or_default()
    }
}

/// `node ls` rows as (name, status, availability, cpus, memory).
fn nodes(servers: &[String]) -> Result<Vec<Vec<String>>> {
    let (ok, out, err) = berthctl(servers, &["node", "ls"])?;
    ensure!(ok, "node ls failed: {err}");
    Ok(out.lines().skip(1).map(|l| l.split_whitespace().map(str::to_owned).collect()).collect())
}

fn status_of(servers: &[String], name: &str) -> Option<(String, String)> {
    let rows = nodes(servers).ok()?;
    rows.into_iter().find(|r| r[0] == name).map(|r| (r[2].clone(), r[3].clone()))
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_join_fail_return_and_leave() -> Result<()> {
    let cluster = Cluster::start(3, &["--node-down-after-ms", "2000"]).await?;
    let servers = cluster.addrs();
    let mut a = JoinedAgent::start(&servers, "alpha", &["--label", "zone=a"])?;
    let b = JoinedAgent::start(&servers[1..], "beta", &[])?;
    let ready = |name: &'static str| {
        let servers = servers.clone();
        async move || (status_of(&servers, name) == Some(("ready".into(), "active".into()))).then_some(())
    };
    wait_for(Duration::from_secs(30), "alpha ready", ready("alpha")).await?;
    wait_for(Duration::from_secs(30), "beta ready", ready("beta")).await?;
    let rows = nodes(&servers)?;
    ensure!(rows.len() == 2, "{rows:?}");
    ensure!(rows[0][1] == a.advertise && rows[0][4] == "0/2" && rows[0][5] == "0/4Gi", "{rows:?}");
    let id = a.id();
    ensure!(id.len() == 16, "the node id is kept in the data dir: {id:?}");
    let (ok, out, _) = berthctl(&servers, &["node", "inspect", "alpha"])?;
    ensure!(ok && out.contains(&id) && out.contains("zone=a"), "{out}");

    // A dead agent: down within the timeout; back as the same node.
    a.process.kill9();
    wait_for(Duration::from_secs(20), "alpha down", async || {
        (status_of(&servers, "alpha").map(|s| s.0) == Some("down".into())).then_some(())
    })
    .await?;
    ensure!(status_of(&servers, "beta").map(|s| s.0) == Some("ready".into()), "beta stayed ready");
    a.launch(&servers, &["--label", "zone=a"])?;
    wait_for(Duration::from_secs(30), "alpha ready again", ready("alpha")).await?;
    ensure!(a.id() == id && nodes(&servers)?.len() == 2, "the same node came back");

    // A frozen server (its connections open, nothing answered) must not
    // leave a node's task list stale: beta watches servers[1] first. Its
    // heartbeats move on to servers[2]; its watch, past its deadline, too,
    // resumed from the revision it holds.
    cluster.servers[1].freeze()?;
    let (ok, out, err) = berthctl(
        &servers,
        &[
            "service",
            "create",
            "--detach",
            "fresh",
            "--image",
            "127.0.0.1:9/none:1",
            "--constraint",
            "node.name == beta",
        ],
    )?;
    ensure!(ok, "{out}{err}");
    let seen = wait_for(Duration::from_secs(60), "beta to act on its new task", async || {
        let tasks = live_tasks(&servers, "fresh").ok()?;
        tasks.into_iter().find(|t| t.1 == "beta" && t.2 == "failed")
    })
    .await;
    cluster.servers[1].thaw()?;
    let seen = seen.map_err(|e| {
        let log = std::fs::read_to_string(b.dir.path().join("agent.log")).unwrap_or_default();
        anyhow::anyhow!("{e}: {log}\n{}", cluster.logs())
    })?;
    ensure!(seen.3.contains("pulling 127.0.0.1:9/none:1"), "it tried to pull the image: {seen:?}");
    // If its watch was on servers[1] (it may have moved before), servers[2]
    // sent what changed since the revision beta held, not the cluster.
    let log = std::fs::read_to_string(b.dir.path().join("agent.log"))?;
    let watch: Vec<&str> = log.lines().filter(|l| l.contains("task watch: ")).collect();
    eprintln!("beta's watch, servers[1] frozen:\n{}", watch.join("\n"));
    let left = watch.iter().any(|l| l.contains(&servers[1]));
    ensure!(!left || log.contains("task watch: resumed"), "beta's watch started over on servers[2]: {log}");
    wait_for(Duration::from_secs(30), "beta ready", ready("beta")).await?;
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "fresh"])?;
    ensure!(ok, "{err}");

    // Drain and activate; a ready, active node cannot be removed.
    let (ok, out, _) = berthctl(&servers, &["node", "drain", "beta"])?;
    ensure!(ok && out.contains("drain"), "{out}");
    ensure!(status_of(&servers, "beta") == Some(("ready".into(), "drain".into())));
    berthctl(&servers, &["node", "activate", "beta"])?;
    ensure!(status_of(&servers, "beta") == Some(("ready".into(), "active".into())));
    let (ok, _, err) = berthctl(&servers, &["node", "rm", "alpha"])?;
    ensure!(!ok && err.contains("drain it first"), "{err}");
    let (ok, _, err) = berthctl(&servers, &["node", "rm", "nobody"])?;
    ensure!(!ok && err.contains("\"nobody\" not found"), "{err}");

    // A dead node can go.
    a.process.kill9();
    wait_for(Duration::from_secs(20), "alpha down again", async || {
        (status_of(&servers, "alpha").map(|s| s.0) == Some("down".into())).then_some(())
    })
    .await?;
    let (ok, out, err) = berthctl(&servers, &["node", "rm", "alpha"])?;
    ensure!(ok, "{out}{err}");
    ensure!(status_of(&servers, "alpha").is_none() && status_of(&servers, "beta").is_some());
    // Its certificate went with it: back with its data dir, it is refused
    // and says what to do; with its certificate deleted it joins again, by
    // token, as a new node.
    let old_id = a.id();
    a.launch(&servers, &[])?;
    wait_for(Duration::from_secs(20), "the removed node to be refused", async || {
        (!a.process.is_running()).then_some(())
    })
    .await?;
    let log = std::fs::read_to_string(a.dir.path().join("agent.log"))?;
    ensure!(log.contains("was removed from the cluster") && log.contains("join again with a worker token"), "{log}");
    ensure!(status_of(&servers, "alpha").is_none(), "a removed node registered again");
    std::fs::remove_dir_all(a.dir.path().join("tls"))?;
    a.launch(&servers, &[])?;
    wait_for(Duration::from_secs(30), "alpha ready as a new node", ready("alpha")).await?;
    ensure!(a.id() != old_id, "the host came back under its old id {old_id}");
    a.process.kill9();

    // A second node may not take a ready node's name.
    let mut clash = JoinedAgent::start(&servers, "beta", &[])?;
    let exited = wait_for(Duration::from_secs(20), "the clashing agent to give up", async || {
        (!clash.process.is_running()).then_some(())
    })
    .await;
    ensure!(
        exited.is_ok(),
        "an agent with a taken name kept running: {}\nbeta: {}\n{:?}",
        std::fs::read_to_string(clash.dir.path().join("agent.log")).unwrap_or_default(),
        std::fs::read_to_string(b.dir.path().join("agent.log")).unwrap_or_default(),
        berthctl(&servers, &["node", "ls"])
    );
    let log = std::fs::read_to_string(clash.dir.path().join("agent.log"))?;
    ensure!(log.contains("a ready node named \"beta\" exists"), "{log}");
    drop(b);
    Ok(())
}

/// `service ps` rows of tasks meant to run, as (task, node, state, message).
fn live_tasks(servers: &[String], service: &str) -> Result<Vec<(String, String, String, String)>> {
    let (ok, out, err) = berthctl(servers, &["service", "ps", service, "-o", "json"])?;
    ensure!(ok, "service ps failed: {err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    Ok(list
        .iter()
        .filter(|t| t["task"]["desired"] == "running")
        .map(|t| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
            (s(&t["task"]["id"]), s(&t["node_name"]), s(&t["task"]["state"]), s(&t["task"]["message"]))
        })
        .collect())
}

fn per_node(tasks: &[(String, String, String, String)]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for t in tasks {
        *out.entry(t.1.clone()).or_default() += 1;
    }
    out
}

/// A cluster past `--max-heartbeats-per-second` nodes asks each for a
/// longer period (here two nodes at one beat a second: 2 s), and the
/// agents beat that much less often (their own period is 300 ms); a node
/// has four of those periods (8 s, not the 2 s node-down timeout) before
/// it is down.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_past_its_heartbeat_rate_asks_for_longer_periods_and_waits_longer() -> Result<()> {
    let cluster = Cluster::start(3, &["--node-down-after-ms", "2000", "--max-heartbeats-per-second", "1"]).await?;
    let servers = cluster.addrs();
    let mut a = JoinedAgent::start(&servers, "alpha", &[])?;
    let b = JoinedAgent::start(&servers[1..], "beta", &[])?;
    let asked = |agent: &JoinedAgent| {
        let log = agent.dir.path().join("agent.log");
        async move || {
            let log = std::fs::read_to_string(&log).ok()?;
            log.contains("the cluster asks for heartbeats every 2000 ms").then_some(())
        }
    };
    for (agent, what) in [(&a, "alpha asked to beat every 2 s"), (&b, "beta asked to beat every 2 s")] {
        wait_for(Duration::from_secs(60), what, asked(agent)).await.map_err(|e| {
            let log = std::fs::read_to_string(agent.dir.path().join("agent.log")).unwrap_or_default();
            anyhow::anyhow!("{e}: {log}\n{}", cluster.logs())
        })?;
    }
    for name in ["alpha", "beta"] {
        wait_for(Duration::from_secs(30), "both ready", async || {
            (status_of(&servers, name).map(|s| s.0) == Some("ready".into())).then_some(())
        })
        .await?;
    }
    // The beats every server answered, over 10 s: about 10 at 2 s, where
    // the agents' own 300 ms would make about 66.
    let beats = || -> Result<u64> {
        let mut sum = 0;
        for server in &servers {
            let (ok, out, err) =
                berthctl(std::slice::from_ref(server), &["cluster", "status", "--local", "-o", "json"])?;
            ensure!(ok, "cluster status on {server}: {err}");
            let v: serde_json::Value = serde_json::from_str(&out)?;
            sum += v["figures"]["heartbeats"].as_u64().with_context(|| format!("no heartbeats in {out}"))?;
        }
        Ok(sum)
    };
    let before = beats()?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let beaten = beats()? - before;
    eprintln!("two nodes beat {beaten} times in 10 s");
    ensure!((3..=25).contains(&beaten), "two nodes beat {beaten} times in 10 s, not about every 2 s");
    // Its last beat was at most 2 s before the kill: it has until 6 s
    // after. Whether it was still ready is judged only if the answer came
    // within 5.5 s of the kill (later, down would be right).
    a.process.kill9();
    let killed = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = status_of(&servers, "alpha");
    if killed.elapsed() < Duration::from_millis(5_500) {
        ensure!(
            status.as_ref().map(|s| s.0.as_str()) == Some("ready"),
            "alpha was down 3 s after its agent died, within its four periods: {status:?}"
        );
    }
    wait_for(Duration::from_secs(30), "alpha down", async || {
        (status_of(&servers, "alpha").map(|s| s.0) == Some("down".into())).then_some(())
    })
    .await?;
    eprintln!("alpha down {:?} after its agent died", killed.elapsed());
    ensure!(status_of(&servers, "beta").map(|s| s.0) == Some("ready".into()), "beta stayed ready on 2 s beats");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn services_are_spread_over_ready_nodes_within_constraints_and_capacity() -> Result<()> {
    let cluster = Cluster::start(3, &[]).await?;
    let servers = cluster.addrs();
    let _a = JoinedAgent::start(&servers, "alpha", &["--label", "zone=a"])?;
    let _b = JoinedAgent::start(&servers, "beta", &["--label", "zone=b"])?;
    wait_for(Duration::from_secs(30), "two nodes", async || {
        (nodes(&servers).ok()?.iter().filter(|r| r[2] == "ready").count() == 2).then_some(())
    })
    .await?;
    let create = |args: &[&str]| -> Result<()> {
        let mut all = vec!["service", "create", "--detach"];
        all.extend_from_slice(args);
        let (ok, out, err) = berthctl(&servers, &all)?;
        ensure!(ok, "{out}{err}");
        Ok(())
    };
    create(&["web", "--image", "busybox:1.36", "--replicas", "4", "--cpus", "0.5"])?;
    create(&["db", "--image", "busybox:1.36", "--replicas", "2", "--constraint", "node.labels.zone == a"])?;
    create(&["huge", "--image", "busybox:1.36", "--cpus", "64"])?;
    let placed = |service: &'static str, want: &'static [(&'static str, usize)]| {
        let servers = servers.clone();
        async move || {
            let tasks = live_tasks(&servers, service).ok()?;
            let want: std::collections::BTreeMap<String, usize> =
                want.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect();
            (per_node(&tasks) == want).then_some(tasks)
        }
    };
    let web = wait_for(Duration::from_secs(20), "web spread 2/2", placed("web", &[("alpha", 2), ("beta", 2)])).await?;
    // Placed, and never running: no registry serves the image (an agent
    // that already tried may have reported the pull failing).
    let unpulled = |t: &(String, String, String, String)| {
        t.2 == "assigned" || (t.2 == "failed" && t.3.starts_with("pulling docker.io/library/busybox:1.36"))
    };
    ensure!(web.iter().all(unpulled), "{web:?}");
    wait_for(Duration::from_secs(20), "db on zone a", placed("db", &[("alpha", 2)])).await?;
    // Its task is made by a reconcile of its own, after the others' maybe.
    let huge = wait_for(Duration::from_secs(20), "huge pending", async || {
        Some(live_tasks(&servers, "huge").ok()?).filter(|t| !t.is_empty())
    })
    .await?;
    ensure!(huge.len() == 1 && huge[0].2 == "pending" && huge[0].3.contains("2 nodes lack CPU (needs 64)"), "{huge:?}");
    let rows = nodes(&servers)?;
    ensure!(rows[0][4] == "1/2" && rows[0][6] == "4", "alpha holds 2 web (1 CPU) and 2 db: {rows:?}");

    // Each node has its own subnet of the cluster CIDR, and each placed task
    // an address of its node's subnet that no other task has.
    let subnets: std::collections::BTreeMap<String, String> =
        rows.iter().map(|r| (r[0].clone(), r[7].clone())).collect();
    ensure!(
        subnets["alpha"] != subnets["beta"]
            && subnets.values().all(|s| s.starts_with("198.19.") && s.ends_with(".0/24")),
        "{subnets:?}"
    );
    let mut seen = std::collections::BTreeSet::new();
    for service in ["web", "db"] {
        let (ok, out, err) = berthctl(&servers, &["service", "ps", service, "-o", "json"])?;
        ensure!(ok, "{err}");
        for t in serde_json::from_str::<Vec<serde_json::Value>>(&out)? {
            let (node, address) = (t["node_name"].as_str().unwrap_or(""), t["task"]["address"].as_str().unwrap_or(""));
            let prefix = subnets[node].trim_end_matches("0/24");
            ensure!(address.starts_with(prefix) && !address.ends_with(".1") && seen.insert(address.to_owned()), "{t}");
        }
    }
    ensure!(seen.len() == 6, "{seen:?}");

    // Scale down keeps the lowest slots; a drained node's tasks move.
    let (ok, _, err) = berthctl(&servers, &["node", "drain", "beta"])?;
    ensure!(ok, "{err}");
    wait_for(Duration::from_secs(20), "web all on alpha", placed("web", &[("alpha", 4)])).await?;
    let spec = "name: web\nimage: busybox:1.36\nreplicas: 1\nresources: {cpus: 0.5}\n";
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), spec)?;
    berthctl(&servers, &["apply", "--detach", "-f", file.path().to_str().unwrap_or_default()])?;
    let web = wait_for(Duration::from_secs(20), "web scaled to 1", placed("web", &[("alpha", 1)])).await?;
    ensure!(web[0].0.starts_with("web.1."), "the lowest slot stays: {web:?}");
    Ok(())
}
