//! Certificates renew on their own, and the cluster's root is replaced,
//! while a service runs and the leader is killed: three berth-servers and
//! two berth-agents with one-minute certificates, pulling from a
//! docker-registry on loopback. Nothing stops, no task restarts, writes
//! go on, and at the end only the new root is trusted anywhere: the old
//! credential is refused, and so is a certificate of the new root once
//! it has expired.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_proto::client::{self, Peer, Settings, Tls};
use berth_proto::pb::agent::agent_client::AgentClient;
use berth_proto::pb::agent::HeartbeatRequest;
use berth_proto::pki::{certificates, Credentials, Identity, Role};
use berth_tests::agent::Agent;
use berth_tests::registry::Registry;
use berth_tests::{berthctl, berthctl_as, keys, reload_keys, wait_for, Cluster};

const SERVE: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// The certificate a node holds now, and how many roots it trusts.
fn held(tls_dir: &Path) -> Option<(Identity, usize)> {
    let creds = Credentials::load(tls_dir).ok()??;
    Some((creds.identity().ok()?, certificates(&creds.roots).ok()?.len()))
}

/// Running tasks of `service`: id -> state.
fn tasks(servers: &[String], service: &str) -> Option<BTreeMap<String, String>> {
    let (ok, out, _) = berthctl(servers, &["service", "ps", service, "-o", "json"]).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    Some(
        list.iter()
            .filter(|t| t["task"]["desired"] == "running")
            .map(|t| (s(&t["task"]["id"]), s(&t["task"]["state"])))
            .collect(),
    )
}

/// Containers on the agents: name -> pid.
fn pids(agents: &[&Agent]) -> BTreeMap<String, i64> {
    let ps = agents.iter().flat_map(|a| a.ps());
    ps.map(|c| (c["name"].as_str().unwrap_or_default().to_owned(), c["pid"].as_i64().unwrap_or(0))).collect()
}

fn ca_status(servers: &[String]) -> Option<serde_json::Value> {
    let (ok, out, _) = berthctl(servers, &["cluster", "ca", "status", "-o", "json"]).ok()?;
    serde_json::from_str(&out).ok().filter(|_| ok)
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_renew_and_the_root_rotates_while_a_service_runs_and_a_leader_dies() -> Result<()> {
    let (registry, image) = Registry::with_busybox().await?;
    let mut cluster = Cluster::start(3, &["--cert-validity=1m"]).await?;
    let servers = cluster.addrs();
    let (a, b) = (Agent::new(Some(&registry)), Agent::new(Some(&registry)));
    let daemons = berth_tests::agent::join_ready(&servers, &[(&a, "alpha"), (&b, "beta")]).await?;
    let (ok, out, err) = berthctl(
        &servers,
        &["service", "create", "--detach", "web", "--image", &image, "--replicas", "2", "--", "sh", "-c", SERVE],
    )?;
    ensure!(ok, "{out}{err}");
    let running = wait_for(Duration::from_secs(60), "2 tasks running", async || {
        let t = tasks(&servers, "web")?;
        (t.len() == 2 && t.values().all(|s| s == "running")).then_some(t)
    })
    .await?;
    let containers = pids(&[&a, &b]);
    ensure!(containers.len() == 2, "{containers:?}");

    // Every node's certificate (servers' and agents') lives a minute and
    // is replaced well before it ends, without a restart.
    let dirs: Vec<PathBuf> = cluster
        .servers
        .iter()
        .map(|s| s.data_dir.join("tls"))
        .chain([&a, &b].iter().map(|x| x.data.path().join("tls")))
        .collect();
    let first: Vec<Identity> =
        dirs.iter().map(|d| held(d).context("a node's certificate").map(|h| h.0)).collect::<Result<_>>()?;
    let old_root = first[0].issuer.clone();
    wait_for(Duration::from_secs(120), "every node to renew its certificate", async || {
        dirs.iter()
            .zip(&first)
            .all(|(d, f)| held(d).is_some_and(|(now, _)| now.fingerprint != f.fingerprint))
            .then_some(())
    })
    .await
    .with_context(|| format!("{}{}{}", cluster.logs(), a.daemon_log(), b.daemon_log()))?;

    // The root is replaced; the leader dies in the middle of it.
    let stale = cluster.dir.path().join("stale.conf");
    std::fs::copy(keys().admin_conf, &stale)?;
    let (_, old_token, _) = berthctl(&servers, &["cluster", "join-token", "worker", "-q"])?;
    // berthctl waits for the end, as a user runs it, while the leader dies.
    let admin_conf = keys().admin_conf;
    let rotating = std::process::Command::new(berth_tests::bin("berthctl"))
        .env("BERTH_CONFIG", &admin_conf)
        .env("BERTH_SERVER", servers.join(","))
        .args(["cluster", "ca", "rotate", "--wait", "120"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stale_text = std::fs::read_to_string(&stale)?;
    wait_for(Duration::from_secs(30), "berthctl to save its new credential", async || {
        (std::fs::read_to_string(&admin_conf).ok()? != stale_text).then_some(())
    })
    .await?;
    reload_keys()?;
    let leader = cluster.leader().await?;
    cluster.servers[leader].kill9();
    let status = ca_status(&servers).context("ca status during the rotation")?;
    ensure!(status["rotating"] == true || status["trusted"].as_array().is_some_and(|t| t.len() == 1), "{status}");
    // A write while the leader is gone and the rotation goes on.
    let (ok, out, err) = berthctl(&servers, &["service", "scale", "--detach", "web=3"])?;
    ensure!(ok, "{out}{err}");
    cluster.servers[leader].restart()?;
    let done = wait_for(Duration::from_secs(120), "the rotation to finish", async || {
        ca_status(&servers).filter(|s| s["rotating"] == false)
    })
    .await
    .with_context(|| format!("{:?}\n{}", ca_status(&servers), cluster.logs()))?;
    let new_root = done["root"].as_str().unwrap_or_default().to_owned();
    let rotated = tokio::task::spawn_blocking(move || rotating.wait_with_output()).await??;
    let (out, err) = (String::from_utf8_lossy(&rotated.stdout), String::from_utf8_lossy(&rotated.stderr));
    ensure!(rotated.status.success() && out.contains("CA rotation finished"), "{out}{err}");
    // berthctl now trusts the new root alone.
    let conf = berth_proto::contexts::ClientConfig::load(&admin_conf)?;
    let ca = &conf.context(None, &admin_conf)?.ca;
    ensure!(certificates(ca)?.len() == 1 && done["trusted"][0] == new_root.as_str(), "{ca}");
    // A worker's certificate of the new root, left to expire (a minute;
    // nothing renews it): accepted now, refused once it has expired.
    let (_, new_token, _) = berthctl(&servers, &["cluster", "join-token", "worker", "-q"])?;
    let (_, short) =
        berth_proto::join::admit(&servers, new_token.trim(), Role::Worker, Duration::from_secs(30)).await?;
    let expires = short.identity()?.not_after;
    let short = Tls::new(&short)?;
    let heartbeat = |tls: &Tls| {
        let channel =
            client::channel(&servers[0], &Settings::calls(Duration::from_secs(10)), &tls.connector(Peer::Server));
        let me = tls.identity().map(|i| i.name).unwrap_or_default();
        async move {
            AgentClient::new(channel?)
                .heartbeat(HeartbeatRequest { node_id: me, ..Default::default() })
                .await
                .map_err(|s| anyhow::anyhow!("{}", client::reason(&s)))
        }
    };
    // (Not registered: the cluster answers, and says so.)
    let answer = heartbeat(&short).await.unwrap_err().to_string();
    ensure!(answer.contains("not registered"), "{answer}");

    // Every node holds a certificate of the new root and trusts it alone
    // (a node renews again once the old root is dropped).
    wait_for(Duration::from_secs(90), "every node to trust only the new root", async || {
        dirs.iter().all(|d| held(d).is_some_and(|(id, roots)| id.issuer != old_root && roots == 1)).then_some(())
    })
    .await
    .with_context(|| format!("{:?}", dirs.iter().map(|d| held(d)).collect::<Vec<_>>()))?;
    // Nothing stopped: the same tasks run in the same containers, and the
    // scale made during the rotation took.
    let now = wait_for(Duration::from_secs(60), "3 tasks running", async || {
        let t = tasks(&servers, "web")?;
        (t.len() == 3 && t.values().all(|s| s == "running")).then_some(t)
    })
    .await?;
    ensure!(running.keys().all(|id| now.contains_key(id)), "tasks were replaced: {running:?} -> {now:?}");
    let after = pids(&[&a, &b]);
    ensure!(containers.iter().all(|(name, pid)| after.get(name) == Some(pid)), "{containers:?} -> {after:?}");
    let (ok, out, _) = berthctl(&servers, &["node", "ls"])?;
    ensure!(ok && out.matches(" ready ").count() == 2, "{out}");

    // The admin's rewritten credential works; the old one and the old
    // join token are refused.
    let (ok, out, err) = berthctl(&servers, &["service", "ls"])?;
    ensure!(ok && out.contains("web"), "{out}{err}");
    let (ok, _, err) = berthctl_as(&stale, &servers, &["service", "ls"])?;
    ensure!(!ok, "the pre-rotation credential still works: {err}");
    let (_, token, _) = berthctl(&servers, &["cluster", "join-token", "worker", "-q"])?;
    ensure!(token.contains(&new_root) && !old_token.contains(&new_root), "{old_token} -> {token}");
    let late = Agent::new(None);
    let ran = late
        .command(&[
            "--server",
            &servers[0],
            "--name",
            "late",
            "--advertise",
            "127.0.0.1:1",
            "--token",
            old_token.trim(),
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&ran.stderr);
    ensure!(!ran.status.success() && stderr.contains("made before the cluster's CA was rotated"), "{stderr}");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    tokio::time::sleep(Duration::from_secs((expires - now + 2).max(0) as u64)).await;
    let refused = heartbeat(&short).await.unwrap_err().to_string();
    ensure!(!refused.contains("not registered"), "an expired certificate was let in: {refused}");
    ensure!(refused.contains("xpired") || refused.contains("closed") || refused.contains("alert"), "{refused}");

    let (ok, _, err) = berthctl(&servers, &["service", "rm", "web"])?;
    ensure!(ok, "{err}");
    for mut d in daemons {
        d.stop(Duration::from_secs(20))?;
    }
    Ok(())
}
