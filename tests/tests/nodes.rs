//! Agents join a real cluster: three berth-server processes and two
//! berth-agent processes on loopback, each with its own data dir. Nodes
//! register, stay ready on heartbeats, go down when their agent dies, come
//! back as the same node, and are drained, activated and removed through
//! berthctl.

use std::time::Duration;

use anyhow::{ensure, Result};
use berth_tests::{berthctl, bin, wait_for, Cluster, Process};

/// A berth-agent joined to the cluster, in its own data dir.
struct JoinedAgent {
    process: Process,
    dir: tempfile::TempDir,
    name: String,
}

impl JoinedAgent {
    fn start(servers: &[String], name: &str, extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut agent = Self { process: Process::new(dir.path().join("agent.log")), dir, name: name.into() };
        agent.launch(servers, extra)?;
        Ok(agent)
    }

    fn launch(&mut self, servers: &[String], extra: &[&str]) -> Result<()> {
        let mut cmd = std::process::Command::new(bin("berth-agent"));
        cmd.env("BERTH_AGENT_DATA_DIR", self.dir.path())
            .env("BERTH_LOG", "info")
            .args(["--server", &servers.join(","), "--name", &self.name, "--advertise", "127.0.0.1:7500"])
            .args(["--cpus", "2", "--memory", "4Gi", "--heartbeat-ms", "300"])
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
    ensure!(rows[0][1] == "127.0.0.1:7500" && rows[0][4] == "0/2" && rows[0][5] == "0/4Gi", "{rows:?}");
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

    // A second node may not take a ready node's name.
    let mut clash = JoinedAgent::start(&servers, "beta", &[])?;
    let exited = wait_for(Duration::from_secs(20), "the clashing agent to give up", async || {
        (!clash.process.is_running()).then_some(())
    })
    .await;
    ensure!(exited.is_ok(), "an agent with a taken name kept running");
    let log = std::fs::read_to_string(clash.dir.path().join("agent.log"))?;
    ensure!(log.contains("a ready node named \"beta\" exists"), "{log}");
    drop(b);
    Ok(())
}
