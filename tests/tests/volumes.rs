//! Data that outlives its tasks, on two agents: a named volume made on
//! first use keeps what a task wrote through a crash, a restart and an
//! update (whose new task goes where the volume is, though start-first
//! spreading alone would take it to the other node), starts with what the
//! image has at its target (files, owner and mode, as Docker copies
//! them), and is shared with a task that has ids of its own (seen through
//! an idmapped mount, kept on disk with the ids the container sees). A
//! pinned volume's task waits while its node is down, saying where its
//! data is, and runs there again when the node is back. `volume ls` and
//! `inspect` show where volumes are and what mounts them; `volume rm` is
//! refused while a task mounts one, then removes it from its node. A bind
//! mount shows a host directory, read-only when asked; a missing bind
//! source fails the task saying so.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_tests::agent::Agent;
use berth_tests::oci::{blob, Compression, Image, Tar};
use berth_tests::registry::Registry;
use berth_tests::{berthctl, wait_for, Cluster};

/// A service's tasks meant to run, from `service ps -o json`: (id, node, state, message).
fn tasks(servers: &[String], service: &str) -> Vec<(String, String, String, String)> {
    let Ok((true, out, _)) = berthctl(servers, &["service", "ps", service, "-o", "json"]) else { return vec![] };
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    list.iter()
        .filter(|t| t["task"]["desired"] == "running")
        .map(|t| (s(&t["task"]["id"]), s(&t["node_name"]), s(&t["task"]["state"]), s(&t["task"]["message"])))
        .collect()
}

/// The volumes `volume ls -o json` shows: (name, node, used_by).
fn volumes(servers: &[String]) -> Vec<(String, String, Vec<String>)> {
    let Ok((true, out, _)) = berthctl(servers, &["volume", "ls", "-o", "json"]) else { return vec![] };
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    list.iter()
        .map(|v| {
            let users = v["used_by"].as_array().into_iter().flatten().filter_map(|u| u.as_str()).map(String::from);
            (
                v["name"].as_str().unwrap_or("-").to_owned(),
                v["node"].as_str().unwrap_or("-").to_owned(),
                users.collect(),
            )
        })
        .collect()
}

/// What a service's tasks printed, without the `TASK@NODE | ` prefixes.
fn said(servers: &[String], service: &str) -> Vec<String> {
    let out = berthctl(servers, &["service", "logs", service]).map(|r| r.1).unwrap_or_default();
    out.lines().filter_map(|l| l.split_once("| ")).map(|(_, v)| v.to_owned()).collect()
}

/// Waits until the service's runs have printed exactly `want`.
async fn wait_runs(servers: &[String], service: &str, want: &[&str]) -> Result<()> {
    let runs = || said(servers, service).into_iter().filter(|l| l.starts_with("runs=")).collect::<Vec<_>>();
    wait_for(Duration::from_secs(60), &format!("{service}'s runs {want:?}"), async || (runs() == want).then_some(()))
        .await
        .with_context(|| format!("{:?}", said(servers, service)))
}

#[tokio::test]
async fn a_volume_keeps_its_data_through_restarts_and_updates() -> Result<()> {
    let registry = Registry::start().await?;
    let mut image = Image::busybox()?;
    let data = Tar::default().dir_owned("data/", 0o750, (1000, 1000)).file("data/seed", 0o644, b"from the image\n");
    image.layers.push(blob(data.finish()?, Compression::Gzip)?);
    image.push(&registry.addr, "store", "1").await?;
    let reference = format!("{}/store:1", registry.addr);
    let cluster = Cluster::start(1, &[]).await?;
    let servers = cluster.addrs();
    let (one, two) = (Agent::new(Some(&registry)), Agent::new(Some(&registry)));
    let mut daemons = berth_tests::agent::join_ready(&servers, &[(&one, "one"), (&two, "two")]).await?;
    let agent_on = |node: &str| if node == "one" { &one } else { &two };

    // Each run adds a line and prints how many there are.
    let script = "stat -c 'owner=%u mode=%a' /data; cat /data/seed; echo run >> /data/runs; \
        echo runs=$(wc -l < /data/runs); exec sleep 600";
    let create = |name: &str, extra: &[&str]| {
        let args = [&["service", "create", name, "--image", &reference][..], extra, &["--", "sh", "-c", script]];
        berthctl(&servers, &args.concat())
    };
    let (ok, out, err) = create("store", &["--mount", "type=volume,source=data,target=/data"])?;
    ensure!(ok, "{out}{err}");
    wait_runs(&servers, "store", &["runs=1"]).await?;
    let first = said(&servers, "store");
    ensure!(first[..2] == ["owner=1000 mode=750", "from the image"], "not filled from the image: {first:?}");
    let home = tasks(&servers, "store").first().map(|t| t.1.clone()).context("store's node")?;
    let agent = agent_on(&home);
    let on_disk = agent.data.path().join("volumes/data/data");
    ensure!(std::fs::read_to_string(on_disk.join("runs"))? == "run\n", "the volume on the node");
    // The cluster knows where it is, and what mounts it.
    wait_for(Duration::from_secs(30), "data in volume ls", async || {
        (volumes(&servers) == [("data".into(), home.clone(), vec!["store.1.1".into()])]).then_some(())
    })
    .await
    .with_context(|| format!("{:?}", volumes(&servers)))?;

    // A crash: the agent restarts the task on a fresh writable layer; the volume stays.
    let pid = agent.ps().iter().find(|c| c["name"] == "store.1.1").and_then(|c| c["pid"].as_i64()).context("pid")?;
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    wait_runs(&servers, "store", &["runs=1", "runs=2"]).await?;
    // An update: a new task, a new container, the same volume.
    let (ok, out, err) = berthctl(&servers, &["service", "update", "store", "--env-add", "V=2"])?;
    ensure!(ok, "{out}{err}");
    wait_runs(&servers, "store", &["runs=1", "runs=2", "runs=3"]).await?;
    let now = tasks(&servers, "store");
    ensure!(now.len() == 1 && now[0].1 == home, "the new task went where its data is: {now:?}");

    // A task with ids of its own shares it: it sees the same owners, and
    // what it writes is kept with the ids it sees.
    let (ok, out, err) = create("other", &["--userns", "auto", "--mount", "source=data,target=/data"])?;
    ensure!(ok, "{out}{err}");
    wait_runs(&servers, "other", &["runs=4"]).await?;
    ensure!(said(&servers, "other")[0] == "owner=1000 mode=750", "{:?}", said(&servers, "other"));
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(on_disk.join("runs"))?);
    ensure!(owner == 0, "the file the tasks' root wrote is root's on disk: {owner}");
    let (ok, out, _) = berthctl(&servers, &["service", "inspect", "other"])?;
    ensure!(ok && out.contains("volume data -> /data"), "{out}");

    // A pinned volume: its task waits for its node rather than start empty elsewhere.
    let (ok, out, err) = create("pinned", &["--mount", "source=pdata,target=/data,volume-pin"])?;
    ensure!(ok, "{out}{err}");
    wait_runs(&servers, "pinned", &["runs=1"]).await?;
    let pinned_on = tasks(&servers, "pinned").first().map(|t| t.1.clone()).context("pinned's node")?;
    wait_for(Duration::from_secs(30), "pdata in volume ls", async || {
        volumes(&servers).iter().any(|v| v.0 == "pdata" && v.1 == pinned_on).then_some(())
    })
    .await?;
    let index = if pinned_on == "one" { 0 } else { 1 };
    let stopped = daemons.remove(index);
    drop(stopped);
    let waiting = format!("does not hold its pinned volume pdata (on {pinned_on})");
    wait_for(Duration::from_secs(60), "pinned waiting for its node", async || {
        tasks(&servers, "pinned").iter().any(|t| t.2 == "pending" && t.3.contains(&waiting)).then_some(())
    })
    .await
    .with_context(|| format!("{:?}", tasks(&servers, "pinned")))?;
    let back = agent_on(&pinned_on).join(&servers, &pinned_on, &[])?;
    daemons.insert(index, back);
    wait_runs(&servers, "pinned", &["runs=1", "runs=2"]).await?;
    ensure!(tasks(&servers, "pinned").iter().all(|t| t.1 == pinned_on), "{:?}", tasks(&servers, "pinned"));

    // A volume in use is not removed; one no task mounts is, with its files.
    let (ok, _, err) = berthctl(&servers, &["volume", "rm", "pdata"])?;
    ensure!(!ok && err.contains("in use by pinned."), "{err}");
    let (ok, out, err) = berthctl(&servers, &["service", "rm", "pinned"])?;
    ensure!(ok, "{out}{err}");
    let pdata = agent_on(&pinned_on).data.path().join("volumes/pdata");
    let (ok, out, err) = wait_for(Duration::from_secs(30), "pdata removed", async || {
        let (ok, out, err) = berthctl(&servers, &["volume", "rm", "pdata"]).ok()?;
        // Until its container is gone its node refuses.
        (ok || !err.contains("in use")).then_some((ok, out, err))
    })
    .await?;
    ensure!(ok && out.contains(&format!("volume pdata removed from {pinned_on}")), "{out}{err}");
    ensure!(!pdata.exists(), "its files are gone");
    ensure!(volumes(&servers).iter().all(|v| v.0 != "pdata"), "{:?}", volumes(&servers));
    let (ok, _, err) = berthctl(&servers, &["volume", "rm", "pdata"])?;
    ensure!(!ok && err.contains("volume pdata not found"), "{err}");
    let (ok, out, _) = berthctl(&servers, &["volume", "inspect", "data"])?;
    ensure!(ok && out.contains("Used by:") && out.contains("other."), "{out}");

    // A bind mount, read-only, and one whose source is missing.
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("conf"), "from the host\n")?;
    let bind = format!("type=bind,source={},target=/conf,readonly", host.path().display());
    let look = "cat /conf/conf; touch /conf/x 2>&1; exec sleep 600";
    let args = ["service", "create", "binder", "--image", &reference, "--mount", &bind, "--", "sh", "-c", look];
    let (ok, out, err) = berthctl(&servers, &args)?;
    ensure!(ok, "{out}{err}");
    wait_for(Duration::from_secs(30), "binder's output", async || (said(&servers, "binder").len() >= 2).then_some(()))
        .await?;
    let seen = said(&servers, "binder");
    ensure!(seen.first().is_some_and(|l| l == "from the host"), "{seen:?}");
    ensure!(seen.get(1).is_some_and(|l| l.contains("Read-only file system")), "{seen:?}");
    let args =
        ["service", "create", "lost", "--image", &reference, "--mount", "type=bind,source=/nonexistent/x,target=/x"];
    let (ok, out, err) = berthctl(&servers, &args)?;
    ensure!(!ok && err.contains("bind source /nonexistent/x does not exist on this node"), "{out}{err}");
    // Bad mounts are refused by field, before anything is written.
    let (ok, _, err) =
        berthctl(&servers, &["service", "create", "bad", "--image", &reference, "--mount", "source=../x,target=/x"])?;
    ensure!(!ok && err.contains("mounts[0].source"), "{err}");
    let (ok, out, _) = berthctl(&servers, &["service", "ls"])?;
    ensure!(ok && !out.contains("bad"), "{out}");
    drop(daemons);
    Ok(())
}
