//! Backups and the ways back after a loss, on real servers: a new cluster
//! restored from `berthctl cluster backup`, which the old cluster's
//! agents, users and join tokens still trust; and a survivor of a lost
//! majority forced into a cluster of its own, losing nothing it held.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use berth_proto::pb::cluster::*;
use berth_tests::agent::Agent;
use berth_tests::{berthctl, berthctl_stdin, bin, free_port, keys, spec, wait_for, Cluster};

/// A service that asks for no replicas: nothing to pull.
fn idle(name: &str) -> CreateServiceRequest {
    CreateServiceRequest { spec: Some(ServiceSpec { replicas: 0, ..spec(name) }), no_resolve_image: true }
}

/// A first start of berth-server that must fail: its error output.
fn refused(args: &[&str]) -> Result<String> {
    let out = Command::new("timeout").arg("60").arg(bin("berth-server")).args(args).output()?;
    ensure!(!out.status.success(), "berth-server {args:?} was expected to fail");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_restores_a_new_cluster_that_the_old_ones_agents_and_users_trust() -> Result<()> {
    let mut cluster = Cluster::start(3, &[]).await?;
    let addrs = cluster.addrs();
    let agent = Agent::new(None);
    let _daemon = agent.join_at(&addrs, "rec1", &format!("127.0.0.1:{}", free_port()), &[])?;
    let node_id = wait_for(Duration::from_secs(60), "the agent to register", async || {
        let (_, out, _) = berthctl(&addrs, &["node", "inspect", "rec1", "-o", "json"]).ok()?;
        let node: serde_json::Value = serde_json::from_str(&out).ok()?;
        let node = node.get("node").unwrap_or(&node);
        (node["status"] == "ready").then(|| node["id"].as_str().map(str::to_owned)).flatten()
    })
    .await
    .with_context(|| agent.daemon_log())?;
    for i in 0..5 {
        cluster.servers[i % 3].client().create_service(idle(&format!("svc-{i}"))).await?;
    }
    let (ok, _, err) = berthctl_stdin(&addrs, &["secret", "create", "db-pass", "-"], b"hunter2")?;
    ensure!(ok, "secret create: {err}");

    let file = cluster.dir.path().join("cluster.bak");
    let (ok, out, err) = berthctl(&addrs[1..2], &["cluster", "backup", path(&file)])?;
    ensure!(ok && out.contains("backup of cluster") && out.contains(&path(&file).to_string()), "{out} {err}");
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "the backup holds the root key: owner-only, not {mode:o}");
    let bytes = std::fs::read(&file)?;
    ensure!(!bytes.windows(7).any(|w| w == b"hunter2"), "a secret's value stays sealed in the backup");
    // After the backup: not in it.
    cluster.servers[0].client().create_service(idle("after-backup")).await?;

    // Every server is lost.
    for s in &mut cluster.servers {
        s.kill9();
    }
    let spare = cluster.dir.path().join("spare");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let damaged_file = cluster.dir.path().join("damaged.bak");
    std::fs::write(&damaged_file, &damaged)?;
    let base = ["--data-dir", path(&spare), "--listen", &listen];
    let err = refused(&[&base[..], &["--restore", path(&damaged_file), "--bootstrap"]].concat())?;
    ensure!(err.contains("the backup is damaged"), "{err}");
    let err = refused(&[&base[..], &["--restore", path(&file)]].concat())?;
    ensure!(err.contains("--bootstrap"), "{err}");
    let err = refused(&[&base[..], &["--force-new-cluster"]].concat())?;
    ensure!(err.contains("holds none"), "{err}");

    // A new cluster from the backup, at the first server's address.
    let restored = cluster.add_server_with(&addrs[0], &["--restore", path(&file), "--bootstrap"], &[])?;
    cluster.wait_for_voters(1).await.with_context(|| cluster.servers[restored].log_text())?;
    let err = refused(&[
        "--data-dir",
        path(&cluster.servers[restored].data_dir),
        "--listen",
        &listen,
        "--restore",
        path(&file),
        "--bootstrap",
    ])?;
    ensure!(err.contains("already holds server 1"), "{err}");

    // The old admin's credential works, and the state is the backup's.
    let mut names: Vec<String> = cluster.local_services(restored).await?;
    names.sort();
    ensure!(names == ["svc-0", "svc-1", "svc-2", "svc-3", "svc-4"], "restored services: {names:?}");
    let (ok, out, _) = berthctl(&addrs[..1], &["secret", "ls"])?;
    ensure!(ok && out.contains("db-pass"), "{out}");
    let (ok, out, _) = berthctl(&addrs[..1], &["cluster", "status"])?;
    ensure!(ok && out.contains("WARNING: 1 voting server"), "{out}");
    // The agent, still running, is the same node to the new cluster.
    wait_for(Duration::from_secs(60), "the agent back as the same node", async || {
        let (_, out, _) = berthctl(&addrs[..1], &["node", "inspect", "rec1", "-o", "json"]).ok()?;
        let node: serde_json::Value = serde_json::from_str(&out).ok()?;
        let node = node.get("node").unwrap_or(&node);
        (node["status"] == "ready" && node["id"].as_str() == Some(&node_id)).then_some(())
    })
    .await
    .with_context(|| agent.daemon_log())?;

    // A new server joins with the old cluster's server token.
    ensure!(keys().server_token.is_some());
    let joined = cluster.add_server(false, &[])?;
    cluster.wait_for_voters(2).await.with_context(|| cluster.servers[joined].log_text())?;
    cluster.servers[restored].client().create_service(idle("after-restore")).await?;
    wait_for(Duration::from_secs(30), "the new server to hold the restored state", async || {
        let names = cluster.local_services(joined).await.ok()?;
        (names.len() == 6 && names.iter().any(|n| n == "after-restore")).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_survivor_forced_into_a_new_cluster_loses_nothing_it_held() -> Result<()> {
    let mut cluster = Cluster::start(3, &["--request-timeout-ms", "3000"]).await?;
    let mut acked = Vec::new();
    for i in 0..30 {
        let name = format!("w{i:02}");
        cluster.servers[i % 3].client().create_service(idle(&name)).await?;
        acked.push(name);
    }
    // The leader and one follower are lost for good; the survivor follows.
    let leader = cluster.leader().await?;
    let survivor = (leader + 1) % 3;
    cluster.servers[leader].kill9();
    cluster.servers[(leader + 2) % 3].kill9();
    let err = cluster.servers[survivor].client().create_service(idle("no-quorum")).await;
    ensure!(err.is_err(), "one of three cannot write");

    cluster.servers[survivor].stop()?;
    cluster.servers[survivor].restart_with(&["--force-new-cluster"])?;
    cluster.wait_for_voters(1).await.with_context(|| cluster.servers[survivor].log_text())?;
    let held = cluster.local_services(survivor).await?;
    for name in &acked {
        ensure!(held.contains(name), "{name}, acknowledged, is lost: {held:?}");
    }
    cluster.servers[survivor].client().create_service(idle("after-force")).await?;
    ensure!(cluster.servers[survivor].data_dir.join("forced.json").exists());

    // Others join it with new data dirs and the cluster's server token.
    let token = keys().server_token.context("server token")?;
    let through = cluster.servers[survivor].addr.clone();
    for _ in 0..2 {
        let addr = format!("127.0.0.1:{}", free_port());
        cluster.add_server_with(&addr, &["--join", &through, "--token", &token], &["--request-timeout-ms", "3000"])?;
    }
    cluster.wait_for_voters(3).await.with_context(|| cluster.logs())?;
    cluster.wait_converged().await?;
    for i in [3, 4] {
        ensure!(cluster.local_services(i).await?.len() == held.len() + 1, "server {i} caught up");
    }

    // The flag left on, after servers joined: refused, nothing dropped.
    cluster.servers[survivor].stop()?;
    cluster.servers[survivor].restart_with(&["--force-new-cluster"])?;
    let status =
        wait_for(Duration::from_secs(30), "the forced server to refuse", async || cluster.servers[survivor].exited())
            .await?;
    let log = cluster.servers[survivor].log_text();
    ensure!(!status.success() && log.contains("was carried out on this data dir"), "{log}");
    cluster.servers[survivor].restart()?;
    cluster.wait_for_voters(3).await?;
    ensure!(cluster.status().await?.members.len() == 3, "no server was dropped");
    Ok(())
}
