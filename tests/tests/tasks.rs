//! Services run as containers on the agents: three berth-servers, two
//! berth-agents (each with its own data dir, run dir and cgroup parent)
//! pulling from a docker-registry on loopback. Tasks start, their logs are
//! gathered from both nodes, a killed container is restarted by its agent,
//! one removed by hand (`berth-agent rm -f`) is made again,
//! a frozen node's tasks move, a changed spec rolls out one task at a time
//! (each new one running before an old one stops), a scale survives the
//! leader's kill -9, scaling down stops the highest slots, a task in its
//! stop grace holds back no other task's start, removing the
//! service leaves no container anywhere, and `events` saw it all.

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

/// Every task from `service ps -o json`, stopped ones too: (id, desired, state).
fn all_tasks(servers: &[String], service: &str) -> Option<Vec<(String, String, String)>> {
    let (ok, out, _) = berthctl(servers, &["service", "ps", service, "-o", "json"]).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    Some(list.iter().map(|t| (s(&t["task"]["id"]), s(&t["task"]["desired"]), s(&t["task"]["state"]))).collect())
}

/// A berthctl that runs until stopped (`events`, `logs -f`), output to `log`.
fn berthctl_background(servers: &[String], log: std::path::PathBuf, args: &[&str]) -> Result<Process> {
    let mut p = Process::new(log);
    p.start(
        std::process::Command::new(berth_tests::bin("berthctl"))
            .env("BERTH_CONFIG", berth_tests::keys().admin_conf)
            .env("BERTH_SERVER", servers.join(","))
            .args(args),
    )?;
    Ok(p)
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

/// The pids.max of a task's container, from each of its cgroup dirs.
fn pids_max(agent: &Agent, task: &str) -> Vec<String> {
    let dirs = agent.cgroup_dirs(task);
    dirs.iter().filter_map(|d| std::fs::read_to_string(d.join("pids.max")).ok()).map(|s| s.trim().to_owned()).collect()
}

/// Runs until stopped, and stops at once on SIGTERM (as PID 1 a shell
/// has no default action for it, so it traps it).
const SERVE: &str = "trap 'exit 0' TERM; echo serving; while true; do sleep 0.2; done";

#[tokio::test(flavor = "multi_thread")]
async fn tasks_run_restart_scale_and_go_away() -> Result<()> {
    let (registry, image) = Registry::with_busybox().await?;
    let mut cluster = Cluster::start(3, &[]).await?;
    let servers = cluster.addrs();
    let events = berthctl_background(&servers, cluster.dir.path().join("events.log"), &["events"])?;
    // A change made once the stream is there, so none of what follows is missed.
    wait_for(Duration::from_secs(30), "the events stream", async || {
        let _ =
            berthctl(&servers, &["service", "create", "--detach", "probe", "--image", "probe:1", "--replicas", "0"]);
        events.log_text().contains(" service create probe ").then_some(())
    })
    .await?;
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "probe"])?;
    ensure!(ok, "{err}");
    let (a, b) = (Agent::new(Some(&registry)), Agent::new(Some(&registry)));
    // Declared after the agents, so the daemons stop before the agents clean up.
    let daemons = berth_tests::agent::join_ready(&servers, &[(&a, "alpha"), (&b, "beta")]).await?;
    let (ok, out, err) = berthctl(
        &servers,
        &["service", "create", "--detach", "web", "--image", &image, "--replicas", "3", "--", "sh", "-c", SERVE],
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
    // Every task's container has the node's default process limit.
    for (task, (node, _, _)) in &running {
        let agent = if node == "alpha" { &a } else { &b };
        let limits = pids_max(agent, task);
        ensure!(limits == ["4096"], "{task}: pids.max {limits:?}");
    }
    let on_hosts = containers(&[&a, &b]);
    ensure!(on_hosts.keys().collect::<Vec<_>>() == running.keys().collect::<Vec<_>>(), "{on_hosts:?} vs {running:?}");

    // Logs come from both nodes, each line tagged with its task and node
    // (a task may report running a moment before its first line is written).
    wait_for(Duration::from_secs(30), "every task's line in service logs", async || {
        let (ok, out, _) = berthctl(&servers, &["service", "logs", "web"]).ok()?;
        let once = |task: &String, node: &String| {
            out.lines().filter(|l| *l == format!("{task}@{node} | serving")).count() == 1
        };
        (ok && running.iter().all(|(task, (node, _, _))| once(task, node))).then_some(())
    })
    .await?;
    let (ok, out, err) = berthctl(&servers, &["service", "logs", "web", "--tail", "0"])?;
    ensure!(ok && out.is_empty(), "{out}{err}");
    let (ok, _, err) = berthctl(&servers, &["service", "logs", "nosuch"])?;
    ensure!(!ok && err.contains("not found"), "{err}");
    let follow =
        berthctl_background(&servers, cluster.dir.path().join("follow.log"), &["service", "logs", "-f", "web"])?;

    // Kill one container's process: its agent starts it again, and the
    // follower prints what the new run writes.
    let (victim, (_, _, pid)) = on_hosts.iter().next().context("a container")?;
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    wait_for(Duration::from_secs(30), "the killed task to run again", async || {
        let t = tasks(&servers, "web")?;
        let (_, state, restarts) = t.get(victim)?;
        (state == "running" && *restarts >= 1).then_some(())
    })
    .await?;
    wait_for(Duration::from_secs(30), "the restarted task's line in logs -f", async || {
        let text = follow.log_text();
        (text.lines().filter(|l| l.starts_with(&format!("{victim}@")) && l.ends_with("| serving")).count() >= 2)
            .then_some(())
    })
    .await
    .with_context(|| follow.log_text())?;
    drop(follow);

    // `berth-agent rm -f` of a task's container by hand, while the agent
    // daemon runs: it returns, and the daemon gives the task a new
    // container. The tasks never restarted before are restarted at once
    // (no backoff yet): a removal once raced that restart, and could wait
    // for the new run forever.
    for (task, (index, _, old_pid)) in containers(&[&a, &b]).into_iter().filter(|(t, _)| t != victim) {
        let owner = [&a, &b][index];
        let mut rm = owner.command(&["rm", "-f", task.as_str()]).stdout(std::process::Stdio::piped()).spawn()?;
        let removed =
            wait_for(Duration::from_secs(60), "berth-agent rm -f to return", async || rm.try_wait().ok().flatten())
                .await;
        if removed.is_err() {
            let _ = rm.kill();
        }
        let mut said = String::new();
        std::io::Read::read_to_string(&mut rm.stdout.take().context("rm's stdout")?, &mut said)?;
        ensure!(removed?.success() && said.trim() == task.as_str(), "rm -f {task}: {said}");
        wait_for(Duration::from_secs(30), "a new container for the task", async || {
            let (_, state, pid) = containers(&[owner]).get(&task).cloned()?;
            (state == "running" && pid != old_pid && tasks(&servers, "web")?.get(&task)?.1 == "running").then_some(())
        })
        .await?;
    }

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

    // A changed spec rolls out one task at a time, start-first: at every
    // look at least 3 tasks run and at most one new one is on its way. The
    // new spec has its own process limit and no seccomp filter.
    let spec = cluster.dir.path().join("web.yaml");
    let v2 = SERVE.replace("echo serving", "grep Seccomp: /proc/self/status; echo serving v2");
    std::fs::write(
        &spec,
        format!(
            "name: web\nimage: {image}\nreplicas: 3\ncommand: [sh, -c, {}]\n\
             resources: {{pids: 64}}\nsecurity: {{seccomp: unconfined}}\n",
            serde_json::to_string(&v2)?
        ),
    )?;
    let before: Vec<String> = tasks(&servers, "web").context("tasks")?.into_keys().collect();
    let (ok, out, err) = berthctl(&servers, &["apply", "--detach", "-f", spec.to_str().context("path")?])?;
    ensure!(ok && out.contains("updated"), "{out}{err}");
    wait_for(Duration::from_secs(120), "the update to roll out", async || {
        let all = all_tasks(&servers, "web")?;
        // Tasks meant to run that do: an old one is told to stop only once
        // its successor runs, so there are never fewer than 3.
        let running = all.iter().filter(|(_, d, st)| d == "running" && st == "running").count();
        let coming = all.iter().filter(|(id, d, st)| d == "running" && st != "running" && !before.contains(id)).count();
        assert!(running >= 3 && coming <= 1, "not start-first, one at a time: {all:?}");
        let new = all.iter().filter(|(id, d, st)| d == "running" && st == "running" && !before.contains(id)).count();
        (new == 3 && running == 3).then_some(())
    })
    .await?;
    let (ok, out, err) = berthctl(&servers, &["service", "logs", "web"])?;
    ensure!(ok && out.matches("| serving v2").count() == 3, "{out}{err}");
    ensure!(out.matches("| Seccomp:\t0").count() == 3, "not unconfined: {out}");
    // (The old tasks' containers may still be on their way out.)
    for (task, (index, _, _)) in containers(&[&a, &b]).into_iter().filter(|(t, _)| !before.contains(t)) {
        let limits = pids_max([&a, &b][index], &task);
        ensure!(limits == ["64"], "{task}: pids.max {limits:?}");
    }

    // `events` saw services, nodes and tasks change.
    let seen = events.log_text();
    for line in [
        " service create web ",
        " service remove probe",
        " node register alpha ",
        " node down alpha ",
        " node ready alpha ",
        " service update web ",
        " task assign web.1.1 node=",
        " task running web.1.1 ",
        " task restart ",
        " task stop ",
        " task remove ",
    ] {
        ensure!(seen.contains(line), "no {line:?} in events:\n{seen}");
    }
    drop(events);

    // Kill -9 the leader right after a scale is committed: the new tasks
    // are still starting, so their agents' reports (and whatever placement
    // the old leader had not committed) go through the new leader.
    let leader = cluster.leader().await?;
    let (ok, out, err) = berthctl(&servers, &["service", "scale", "--detach", "web=6"])?;
    ensure!(ok, "{out}{err}");
    cluster.servers[leader].kill9();
    wait_for(Duration::from_secs(60), "6 tasks running after the leader died", async || {
        let t = tasks(&servers, "web")?;
        (t.len() == 6 && t.values().all(|(_, s, _)| s == "running")).then_some(())
    })
    .await
    .with_context(|| cluster.logs())?;

    // Scale down: the highest slots go, their containers with them.
    let (ok, _, err) = berthctl(&servers, &["service", "create", "--detach", "web", "--image", &image])?;
    ensure!(!ok && err.contains("already exists"), "{err}");
    let (ok, out, err) = berthctl(&servers, &["service", "scale", "--detach", "web=1"])?;
    ensure!(ok && out.contains("scaled to 1"), "{out}{err}");
    wait_for(Duration::from_secs(60), "one container left", async || {
        let c = containers(&[&a, &b]);
        (c.len() == 1 && c.keys().all(|k| k.starts_with("web.1."))).then_some(())
    })
    .await?;

    // A task stopping through its whole grace (it ignores SIGTERM) holds
    // back no other work of its node: a new task there runs meanwhile.
    let on_alpha = ["--replicas", "1", "--constraint", "node.name == alpha"];
    let stubborn = "trap '' TERM; echo stubborn; while true; do sleep 0.2; done";
    let create = |name: &str, command: &str| {
        let args =
            [&["service", "create", "--detach", name, "--image", &image][..], &on_alpha, &["--", "sh", "-c", command]];
        berthctl(&servers, &args.concat())
    };
    let (ok, out, err) = create("stubborn", stubborn)?;
    ensure!(ok, "{out}{err}");
    let on = |name: &str| containers(&[&a]).into_iter().find(|(k, _)| k.starts_with(&format!("{name}."))).map(|c| c.0);
    let held = wait_for(Duration::from_secs(60), "stubborn running on alpha", async || {
        let t = tasks(&servers, "stubborn")?;
        t.values().all(|(_, s, _)| s == "running").then_some(())?;
        on("stubborn")
    })
    .await?;
    let (ok, out, err) = berthctl(&servers, &["service", "scale", "--detach", "stubborn=0"])?;
    ensure!(ok, "{out}{err}");
    let (ok, out, err) = create("quick", SERVE)?;
    ensure!(ok, "{out}{err}");
    wait_for(Duration::from_secs(30), "quick running on alpha", async || {
        let t = tasks(&servers, "quick")?;
        (t.len() == 1 && t.values().all(|(n, s, _)| n == "alpha" && s == "running")).then_some(())
    })
    .await?;
    ensure!(
        on("stubborn") == Some(held.clone()),
        "quick ran only once {held} had stopped: its start waited for another task's stop"
    );
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "quick"])?;
    ensure!(ok, "{err}");

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

/// Fails at once, after saying whether an earlier run's file is still there.
const CRASH: &str = "test -e /marker && echo marker seen; touch /marker; echo attempt; exit 1";

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_keeps_failing_is_restarted_with_backoff() -> Result<()> {
    let (registry, image) = Registry::with_busybox().await?;
    let cluster = Cluster::start(3, &[]).await?;
    let servers = cluster.addrs();
    let agent = Agent::new(Some(&registry));
    let daemon = agent.join(&servers, "solo", &[])?;
    let (ok, out, err) =
        berthctl(&servers, &["service", "create", "--detach", "crash", "--image", &image, "--", "sh", "-c", CRASH])?;
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
    // Each run starts on a fresh writable layer, and the log keeps every run.
    let (ok, out, err) = berthctl(&servers, &["service", "logs", "crash"])?;
    ensure!(ok && out.matches("| attempt").count() >= 4 && !out.contains("marker seen"), "{out}{err}");
    drop(daemon);
    Ok(())
}

/// An agent whose disk is full fails the task with the reason, stays
/// ready (it keeps heartbeating), and runs the task once there is room.
#[tokio::test]
async fn a_full_disk_fails_the_task_with_its_reason_and_the_node_stays_ready() -> Result<()> {
    let (registry, image) = Registry::with_busybox().await?;
    let cluster = Cluster::start(1, &[]).await?;
    let servers = cluster.addrs();
    let agent = Agent::new(Some(&registry));
    // Where images are kept: too small for this one.
    let disk = berth_tests::disk::Tmpfs::mount(&agent.data.path().join("images"), "256k")?;
    let _daemons = berth_tests::agent::join_ready(&servers, &[(&agent, "full")]).await?;
    let (ok, out, err) =
        berthctl(&servers, &["service", "create", "--detach", "web", "--image", &image, "--", "sh", "-c", SERVE])?;
    ensure!(ok, "{out}{err}");
    let failed = wait_for(Duration::from_secs(60), "the task to fail for want of space", async || {
        let (_, out, _) = berthctl(&servers, &["service", "ps", "web", "-o", "json"]).ok()?;
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
        list.iter()
            .map(|t| t["task"]["message"].as_str().unwrap_or_default().to_owned())
            .find(|m| m.contains("No space left on device"))
    })
    .await
    .with_context(|| agent.daemon_log())?;
    ensure!(failed.contains("images"), "the reason names where: {failed}");
    // The node is still there, heartbeating, through failures and retries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, nodes, _) = berthctl(&servers, &["node", "ls"])?;
    ensure!(nodes.lines().any(|l| l.contains("full") && l.contains("ready")), "{nodes}");

    // Room again: the retried task runs.
    disk.resize("256m")?;
    wait_for(Duration::from_secs(90), "the task to run once there is room", async || {
        let t = tasks(&servers, "web")?;
        t.values().any(|(_, s, _)| s == "running").then_some(())
    })
    .await
    .with_context(|| agent.daemon_log())?;
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "web"])?;
    ensure!(ok, "{err}");
    wait_for(Duration::from_secs(60), "the container to go", async || agent.ps().is_empty().then_some(())).await?;
    Ok(())
}

/// A service replaces its image's entrypoint, user and working directory,
/// as `docker service create --entrypoint/--user/--workdir` do: an image
/// whose ENTRYPOINT is a program (as the `redis-cli` image's is) still runs
/// a shell when asked, and as the user and in the directory asked; and the
/// node's defaults: its capabilities, hostname and a writable root.
#[tokio::test]
async fn a_service_replaces_its_images_entrypoint_user_and_workdir() -> Result<()> {
    let registry = Registry::start().await?;
    let mut image = berth_tests::oci::Image::busybox()?;
    image.config =
        serde_json::json!({ "Env": ["PATH=/bin"], "Entrypoint": ["echo", "from-the-entrypoint"], "Cmd": ["and-cmd"] });
    image.push(&registry.addr, "echoer", "1").await?;
    let reference = format!("{}/echoer:1", registry.addr);
    let cluster = Cluster::start(1, &[]).await?;
    let servers = cluster.addrs();
    let agent = Agent::new(Some(&registry));
    let daemons = berth_tests::agent::join_ready(&servers, &[(&agent, "solo")]).await?;
    let script = "echo overridden; id -u; id -g; pwd; sleep 600";
    let args = ["--entrypoint", "sh", "--user", "1000:2000", "--workdir", "/tmp", "--", "-c", script];
    let (ok, out, err) = berthctl(
        &servers,
        &[&["service", "create", "--detach", "shell", "--image", &reference][..], &args[..]].concat(),
    )?;
    ensure!(ok, "{out}{err}");
    let (ok, out, err) =
        berthctl(&servers, &["service", "create", "--detach", "plain", "--image", &reference, "--restart", "never"])?;
    ensure!(ok, "{out}{err}");
    let locked = "grep CapEff /proc/self/status; hostname; touch /x 2>&1; sleep 600";
    let args = ["--entrypoint", "sh", "--cap-drop", "ALL", "--cap-add", "net_bind_service", "--read-only"];
    let stop = ["--stop-signal", "usr1", "--stop-grace-period", "1m"];
    let args = [&args[..], &stop[..], &["--hostname", "web-host", "--", "-c", locked]].concat();
    let (ok, out, err) = berthctl(
        &servers,
        &[&["service", "create", "--detach", "locked", "--image", &reference][..], &args[..]].concat(),
    )?;
    ensure!(ok, "{out}{err}");
    let logs = |service: &str| berthctl(&servers, &["service", "logs", service]).map(|r| r.1).unwrap_or_default();
    wait_for(Duration::from_secs(60), "the services' output", async || {
        let (shell, plain, locked) = (logs("shell"), logs("plain"), logs("locked"));
        (shell.lines().count() >= 4 && !plain.is_empty() && locked.lines().count() >= 3).then_some(())
    })
    .await
    .with_context(|| agent.daemon_log())?;
    let shell: Vec<String> =
        logs("shell").lines().filter_map(|l| l.split_once("| ")).map(|(_, v)| v.to_owned()).collect();
    ensure!(shell == ["overridden", "1000", "2000", "/tmp"], "the overrides did not hold: {shell:?}");
    ensure!(logs("plain").contains("| from-the-entrypoint and-cmd"), "the image's own: {}", logs("plain"));
    // Only NET_BIND_SERVICE (bit 10), its own hostname, a root it cannot write.
    let locked: Vec<String> =
        logs("locked").lines().filter_map(|l| l.split_once("| ")).map(|(_, v)| v.to_owned()).collect();
    ensure!(locked.first().is_some_and(|l| l == "CapEff:\t0000000000000400"), "{locked:?}");
    ensure!(locked.get(1).is_some_and(|l| l == "web-host"), "{locked:?}");
    ensure!(locked.get(2).is_some_and(|l| l.contains("Read-only file system")), "{locked:?}");
    // How it stops reached its node with it.
    let task =
        agent.ps().into_iter().find_map(|c| c["name"].as_str().filter(|n| n.starts_with("locked.")).map(str::to_owned));
    let config = std::fs::read_to_string(
        agent.container_dir(&task.context("the locked task's container")?).join("config.json"),
    )?;
    let config: serde_json::Value = serde_json::from_str(&config)?;
    ensure!(config["stop_signal"] == "SIGUSR1" && config["stop_grace_ms"] == 60000, "{config}");
    // --init: the node's tini is PID 1 (read-only root and all), the
    // command runs under it, and an orphan left behind is reaped.
    let reaper = "tr '\\0' ' ' < /proc/1/cmdline; echo; (sleep 0.1 &); sleep 1; \
        echo zombies=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l); exec sleep 600";
    let args = ["--init", "--read-only", "--entrypoint", "sh", "--", "-c", reaper];
    let (ok, out, err) =
        berthctl(&servers, &[&["service", "create", "reaper", "--image", &reference][..], &args].concat())?;
    ensure!(ok, "{out}{err}");
    wait_for(Duration::from_secs(30), "reaper's output", async || {
        let said = logs("reaper");
        (said.contains("| /dev/init -- sh -c ") && said.contains("| zombies=0")).then_some(())
    })
    .await
    .with_context(|| logs("reaper"))?;
    // What was asked is what `service inspect` shows, and a bad value is refused by name.
    let (ok, out, _) = berthctl(&servers, &["service", "inspect", "shell", "-o", "json"])?;
    ensure!(ok && out.contains("\"workdir\": \"/tmp\"") && out.contains("\"user\": \"1000:2000\""), "{out}");
    // Labels, hosts, DNS settings, ulimits and a tmpfs, as Docker's.
    let seen = "cat /etc/hosts /etc/resolv.conf; ulimit -n; ulimit -Hn; grep ' /cache ' /proc/mounts; sleep 600";
    let opts = [
        &["--label", "team=web", "--add-host", "db.internal:198.18.0.5", "--dns", "198.18.0.53"][..],
        &["--dns-search", "example.com", "--dns-option", "ndots:2", "--ulimit", "nofile=1024:2048"],
        &["--tmpfs", "/cache:size=1Mi", "--entrypoint", "sh", "--", "-c", seen],
    ]
    .concat();
    let (ok, out, err) = berthctl(
        &servers,
        &[&["service", "create", "--detach", "opts", "--image", &reference][..], &opts[..]].concat(),
    )?;
    ensure!(ok, "{out}{err}");
    // A task that keeps failing is given up on after its max attempts.
    let crashy = ["--restart-max-attempts", "2", "--entrypoint", "sh", "--", "-c", "exit 3"];
    let (ok, out, err) = berthctl(
        &servers,
        &[&["service", "create", "--detach", "crashy", "--image", &reference][..], &crashy[..]].concat(),
    )?;
    ensure!(ok, "{out}{err}");
    wait_for(Duration::from_secs(60), "opts' output", async || logs("opts").contains("/cache").then_some(())).await?;
    let said = logs("opts");
    for line in [
        "| 198.18.0.5\tdb.internal",
        "| nameserver 198.18.0.53",
        "| search example.com",
        "| options ndots:2",
        "| 1024",
        "| 2048",
        "| tmpfs /cache tmpfs rw,nosuid,nodev",
        "size=1024k",
    ] {
        ensure!(said.contains(line), "{line:?} not in: {said}");
    }
    let (ok, out, _) = berthctl(&servers, &["service", "inspect", "opts"])?;
    ensure!(
        ok && out.contains("team=web") && out.contains("nofile=1024:2048") && out.contains("/cache (1Mi)"),
        "{out}"
    );
    let exited_after = |n: u64| {
        let (ok, out, _) = berthctl(&servers, &["service", "ps", "crashy", "-o", "json"]).ok()?;
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let t = &list.first()?["task"];
        (t["state"] == "exited" && t["restarts"].as_u64() == Some(n)).then_some(())
    };
    wait_for(Duration::from_secs(60), "crashy given up after 2 restarts", async || exited_after(2)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(exited_after(2).is_some(), "crashy was restarted again");
    let (ok, _, err) =
        berthctl(&servers, &["service", "create", "--detach", "bad", "--image", &reference, "--workdir", "tmp"])?;
    ensure!(!ok && err.contains("workdir") && err.contains("absolute path"), "{err}");
    let (ok, _, err) =
        berthctl(&servers, &["service", "create", "--detach", "bad", "--image", &reference, "--cap-add", "fly"])?;
    ensure!(!ok && err.contains("cap_add[0]") && err.contains("FLY"), "{err}");
    // A create waits for its tasks, and fails with the reason when one cannot run.
    let missing = format!("{}/nope:1", registry.addr);
    let (ok, out, err) = berthctl(&servers, &["service", "create", "missing", "--image", &missing])?;
    ensure!(!ok && err.contains("task missing.1.1 failed") && err.contains("not found"), "{out}{err}");
    ensure!(out.contains("service missing created (version 1); waiting"), "{out}");
    drop(daemons);
    Ok(())
}

#[tokio::test]
async fn a_failed_rollout_rolls_back_on_its_own_and_updates_go_by_their_config() -> Result<()> {
    let (registry, image) = Registry::with_busybox().await?;
    let cluster = Cluster::start(1, &[]).await?;
    let servers = cluster.addrs();
    let agent = Agent::new(Some(&registry));
    let daemons = berth_tests::agent::join_ready(&servers, &[(&agent, "solo")]).await?;
    // Healthy once it has made its file: an exec probe every 300 ms.
    let serve = "touch /tmp/ready; echo v=$V; exec sleep 600";
    let health = ["--health-cmd", "test -f /tmp/ready", "--health-interval", "300ms", "--health-retries", "1"];
    let rollout = ["--update-parallelism", "2", "--update-monitor", "1s", "--rollback-monitor", "1s"];
    let create = [
        &["service", "create", "--detach", "web", "--image", &image, "--replicas", "3", "-e", "V=1"][..],
        &health,
        &rollout,
    ]
    .concat();
    let (ok, out, err) = berthctl(&servers, &[&create[..], &["--", "sh", "-c", serve]].concat())?;
    ensure!(ok, "{out}{err}");
    let healthy = |servers: &[String]| -> Option<Vec<String>> {
        let (ok, out, _) = berthctl(servers, &["service", "ps", "web", "-o", "json"]).ok()?;
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let ids: Vec<String> = list
            .iter()
            .filter(|t| t["task"]["desired"] == "running" && t["task"]["health"] == "healthy")
            .filter_map(|t| t["task"]["id"].as_str().map(str::to_owned))
            .collect();
        (ids.len() == 3).then_some(ids)
    };
    let first = wait_for(Duration::from_secs(60), "3 healthy replicas", async || healthy(&servers)).await?;

    // An image that is not there: its new tasks fail, and the service goes
    // back on its own; the update waits for that and fails, saying why.
    let nope = format!("{}/nope:1", registry.addr);
    let (ok, out, err) = berthctl(&servers, &["service", "update", "web", "--image", &nope])?;
    ensure!(!ok && err.contains("rolled back") && err.contains("failed"), "{out}{err}");
    ensure!(out.contains("waiting until it converges"), "{out}");
    let (ok, out, err) = berthctl(&servers, &["service", "inspect", "web"])?;
    ensure!(ok && out.contains("Rollout:") && out.contains("rolled_back"), "{out}{err}");
    ensure!(out.contains("rolled back from version 2") && out.contains("web.") && out.contains(" failed"), "{out}");
    ensure!(out.contains(&format!("Image:     {image}")), "the previous image is back: {out}");
    // The replicas that never left the old spec were left alone.
    ensure!(healthy(&servers).as_ref() == Some(&first), "the old replicas were replaced: {:?}", healthy(&servers));

    // A good update converges, two slots at a time, each new task healthy
    // before an old one stops; the wait prints each task and exits 0.
    let (ok, out, err) = berthctl(&servers, &["service", "update", "web", "--env-add", "V=2"])?;
    ensure!(ok && out.contains("web converged: 3/3 replicas serve version"), "{out}{err}");
    ensure!(out.lines().any(|l| l.contains("running (healthy)")), "{out}");
    let (ok, out, _) = berthctl(&servers, &["service", "logs", "web"])?;
    ensure!(ok && out.matches("| v=2").count() == 3, "{out}");
    // Stop-first: the old task goes before its successor comes.
    let (ok, out, err) = berthctl(
        &servers,
        &["service", "update", "web", "--env-add", "V=3", "--update-order", "stop-first", "--update-parallelism", "1"],
    )?;
    ensure!(ok, "{out}{err}");
    let (ok, events, _) = berthctl(&servers, &["service", "inspect", "web", "-o", "json"])?;
    ensure!(ok && events.contains("\"order\": \"stop-first\""), "{events}");
    // A rollback by hand goes back to V=2, and waits for it.
    let (ok, out, err) = berthctl(&servers, &["service", "rollback", "web"])?;
    ensure!(ok && out.contains("converged"), "{out}{err}");
    let (ok, out, _) = berthctl(&servers, &["service", "inspect", "web"])?;
    ensure!(ok && out.contains("V=2") && out.contains("rolled_back"), "{out}");
    let (ok, _, err) = berthctl(&servers, &["service", "update", "web", "--update-order", "sideways"])?;
    ensure!(!ok && err.contains("update_config.order"), "{err}");

    // Tags are pinned: the server resolves moving:1 when a spec takes it,
    // so a tag moved mid-rollout mixes no images, even with every start
    // asking the registry (--pull always). Each image says which it is.
    let marked = |mark: &str| -> Result<Image> {
        let mut image = Image::busybox()?;
        image.config = serde_json::json!({ "Env": ["PATH=/bin", format!("MARK={mark}")], "Cmd": ["sh"] });
        Ok(image)
    };
    marked("a")?.push(&registry.addr, "moving", "1").await?;
    let moving = format!("{}/moving:1", registry.addr);
    let args = ["--replicas", "3", "--pull", "always", "--update-parallelism", "1", "--update-delay", "1s"];
    let says = "echo mark=$MARK v=$V; exec sleep 600";
    let create = [&["service", "create", "pinned", "--image", &moving][..], &args, &["--", "sh", "-c", says]].concat();
    let (ok, out, err) = berthctl(&servers, &create)?;
    ensure!(ok && out.contains("pinned converged: 3/3"), "{out}{err}");
    let (ok, out, _) = berthctl(&servers, &["service", "inspect", "pinned"])?;
    ensure!(ok && out.contains(&format!("Image:     {moving}@sha256:")), "{out}");
    let (ok, out, err) = berthctl(&servers, &["service", "update", "--detach", "pinned", "--env-add", "V=2"])?;
    ensure!(ok, "{out}{err}");
    marked("b")?.push(&registry.addr, "moving", "1").await?;
    wait_for(Duration::from_secs(60), "pinned's rollout to end", async || {
        let (ok, out, _) = berthctl(&servers, &["service", "ps", "pinned", "-o", "json"]).ok()?;
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let live: Vec<&serde_json::Value> = list.iter().filter(|t| t["task"]["desired"] == "running").collect();
        let done = live.len() == 3 && live.iter().all(|t| t["task"]["state"] == "running" && t["task"]["version"] == 2);
        done.then_some(())
    })
    .await?;
    let (ok, logs, _) = berthctl(&servers, &["service", "logs", "pinned"])?;
    ensure!(ok && logs.matches("mark=a v=2").count() == 3 && !logs.contains("mark=b"), "{logs}");
    // Named again, the tag is resolved again: the new image rolls out.
    let (ok, out, err) = berthctl(&servers, &["service", "update", "pinned", "--image", &moving])?;
    ensure!(ok && out.contains("converged"), "{out}{err}");
    let (ok, logs, _) = berthctl(&servers, &["service", "logs", "pinned"])?;
    ensure!(ok && logs.matches("mark=b v=2").count() == 3, "{logs}");
    // As it is, with --no-resolve-image.
    let (ok, out, err) =
        berthctl(&servers, &["service", "update", "--detach", "pinned", "--image", &moving, "--no-resolve-image"])?;
    ensure!(ok, "{out}{err}");
    let (ok, out, _) = berthctl(&servers, &["service", "inspect", "pinned"])?;
    ensure!(ok && out.contains(&format!("Image:     {moving}\n")), "{out}");
    drop(daemons);
    Ok(())
}
