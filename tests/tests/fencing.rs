//! An exclusive volume's replica never runs in two places, even across a
//! partition: three hosts (a server and an agent each, network namespaces
//! on this machine), a service with an exclusive volume whose task
//! appends its name and the time in nanoseconds to a log on the test host
//! (a bind mount every host shares) every 20 ms. Ten times over, the host
//! running it is cut off: its agent, with no lease from a leader, stops
//! the task before the others take its node for down and start a new
//! copy; healed, it never starts the old one again. Twice more its agent
//! is killed instead: the task's monitor kills it when the last lease
//! ends, with no agent to say so (the task has closed its output, so the
//! monitor watches beyond the end of it). In the log, once a copy has written, no
//! copy before it ever writes again.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_tests::agent::Agent;
use berth_tests::hosts::Hosts;
use berth_tests::oci::Image;
use berth_tests::registry::{Auth, Registry};
use berth_tests::{berthctl, wait_for, Cluster};

/// The writer's task meant to run and where, as `servers` see it: (id, node, state).
fn writer(servers: &[String]) -> Option<(String, String, String)> {
    let (ok, out, _) = berthctl(servers, &["service", "ps", "writer", "-o", "json"]).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let t = list.iter().find(|t| t["task"]["desired"] == "running")?;
    Some((s(&t["task"]["id"]), s(&t["node_name"]), s(&t["task"]["state"])))
}

/// The log's lines as (time in ns, copy), in time order.
fn lines(log: &std::path::Path) -> Vec<(u128, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out: Vec<(u128, String)> = text
        .lines()
        .filter_map(|l| {
            let (copy, ns) = l.split_once(' ')?;
            Some((ns.trim().parse().ok()?, copy.to_owned()))
        })
        .collect();
    out.sort();
    out
}

/// The copies in the order they wrote, each once: an error names the copy
/// that wrote again after another had begun (two ran at once).
fn turns(lines: &[(u128, String)]) -> Result<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    let mut began: Vec<u128> = Vec::new();
    for (at, copy) in lines {
        if order.last() == Some(copy) {
            continue;
        }
        if let Some(i) = order.iter().position(|c| c == copy) {
            let later = &order[i + 1..];
            anyhow::bail!(
                "{copy} wrote at {at} ns, {} ms after {later:?} had begun ({:?}): two copies ran",
                (at - began[i + 1]) / 1_000_000,
                &began[i + 1..]
            );
        }
        order.push(copy.clone());
        began.push(*at);
    }
    Ok(order)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exclusive_replica_never_runs_twice_across_partitions() -> Result<()> {
    let hosts = Hosts::new(3)?;
    let registry = Registry::start_at(&hosts.gateway.to_string(), Auth::Anonymous).await?;
    Image::busybox_with_payloads()?.push(&registry.addr, "busybox", "v1").await?;
    let image = format!("{}/busybox:v1", registry.addr);
    let on: Vec<&berth_tests::hosts::Host> = hosts.hosts.iter().collect();
    // Down after 3 s: the lease is 2.1 s (test agents beat every 300 ms).
    let cluster = Cluster::start_on(&on, &["--node-down-after-ms", "3000"]).await?;
    let servers = cluster.addrs();
    let agents: Vec<Agent> = on.iter().map(|h| Agent::on(Some(&registry), h)).collect();
    let mut daemons = Vec::new();
    for (agent, host) in agents.iter().zip(&on) {
        let at = format!("{}:7500", host.ip);
        daemons.push(agent.join_at(&servers, &host.name, &at, &[])?);
    }
    wait_for(Duration::from_secs(30), "three nodes ready", async || {
        let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
        (ok && out.matches(" ready ").count() == 3).then_some(())
    })
    .await
    .with_context(|| agents.iter().map(Agent::daemon_log).collect::<Vec<_>>().join("\n----\n"))?;

    let shared = tempfile::tempdir()?;
    let log = shared.path().join("log");
    let bind = format!("type=bind,source={},target=/shared", shared.path().display());
    let args =
        ["service", "create", "writer", "--image", &image, "--mount", "source=wdata,target=/data,volume-exclusive"];
    // Its output closed first: the monitor watches the lease beyond the end of it.
    let command = ["--", "sh", "-c", "exec >/dev/null 2>&1; exec stamp /shared/log"];
    let (ok, out, err) = berthctl(&servers, &[&args[..], &["--mount", &bind], &command[..]].concat())?;
    ensure!(ok, "{out}{err}");
    let first = wait_for(Duration::from_secs(30), "the first copy writing", async || lines(&log).first().cloned())
        .await
        .with_context(|| {
            let ps = berthctl(&servers, &["service", "ps", "writer"]).map(|r| r.1 + &r.2).unwrap_or_default();
            let logs = berthctl(&servers, &["service", "logs", "writer"]).map(|r| r.1 + &r.2).unwrap_or_default();
            format!("{out}\n{ps}\n{logs}\n{:?}", std::fs::read_to_string(&log))
        })?;
    ensure!(first.0 > 1_000_000_000_000_000_000, "times in ns: {first:?}");

    let mut moved_to: BTreeMap<String, usize> = BTreeMap::new();
    for round in 1..=12 {
        let (task, node, _) = writer(&servers).context("the writer's task")?;
        let cut = on.iter().position(|h| h.name == node).context("the writer's host")?;
        // Rounds 11 and 12 kill its agent rather than cut its host off.
        let killed = round > 10;
        let others: Vec<String> = match killed {
            false => (0..3).filter(|i| *i != cut).map(|i| servers[i].clone()).collect(),
            true => servers.clone(),
        };
        match killed {
            false => on[cut].cut()?,
            true => daemons[cut].kill9(),
        }
        // The others take its node for down and run a new copy.
        let (moved, to) =
            wait_for(Duration::from_secs(60), &format!("round {round}: the writer off {node}"), async || {
                let (id, at, state) = writer(&others)?;
                (id != task && at != node && state == "running").then_some((id, at))
            })
            .await
            .with_context(|| cluster.logs())?;
        wait_for(Duration::from_secs(30), &format!("round {round}: {moved} writing"), async || {
            lines(&log).iter().any(|(_, copy)| *copy == moved).then_some(())
        })
        .await?;
        *moved_to.entry(to).or_default() += 1;
        match killed {
            false => on[cut].heal()?,
            true => daemons[cut] = agents[cut].join_at(&servers, &node, &format!("{}:7500", on[cut].ip), &[])?,
        }
        // Healed, its node is ready again and its old copy is gone, never started again.
        wait_for(Duration::from_secs(60), &format!("round {round}: {node} back without {task}"), async || {
            let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
            let gone = !agents[cut].ps().iter().any(|c| c["name"] == task.as_str());
            (ok && out.matches(" ready ").count() == 3 && gone).then_some(())
        })
        .await?;
        turns(&lines(&log)).with_context(|| {
            let logs: Vec<String> = agents.iter().map(|a| a.daemon_log()).collect();
            let lease: Vec<String> = logs
                .iter()
                .enumerate()
                .flat_map(|(i, l)| {
                    l.lines()
                        .filter(|l| l.contains("lease") || l.contains("writer"))
                        .map(move |l| format!("agent{i}: {l}"))
                })
                .collect();
            format!("round {round} (cut {node}, {task} -> {moved})\n{}\n{}", lease.join("\n"), cluster.logs())
        })?;
    }
    // Half a second more of writing, then the whole log once again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = lines(&log);
    let order = turns(&all)?;
    ensure!(order.len() == 13, "one copy per round and the first: {order:?}");
    // How long the slot went without a copy at each move (for the record).
    let gaps: Vec<u128> = all.windows(2).filter(|w| w[0].1 != w[1].1).map(|w| (w[1].0 - w[0].0) / 1_000_000).collect();
    eprintln!("gaps between copies, ms (10 cuts, then 2 agent kills): {gaps:?}");
    ensure!(moved_to.len() >= 2, "the copies went to more than one host: {moved_to:?}");
    drop(daemons);
    Ok(())
}
