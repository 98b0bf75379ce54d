//! Saves what this release writes, for every later build to load (a
//! server's: control-plane/tests/fixtures.rs; an agent's: the test at the
//! end of this file). Run it when a release changes what a server or an
//! agent stores, and commit the new directory; never rewrite an old one:
//!
//! ```text
//! cargo test -p berth-tests --test fixtures -- --ignored
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_tests::agent::{join_ready, Agent};
use berth_tests::oci::{blob, Compression, Image, Tar};
use berth_tests::{berthctl, wait_for, Cluster};

/// A server's data dir after services were created, changed, scaled and
/// removed, with a node that joined and tasks it took: a snapshot (every 6
/// entries) and the log after it, and a backup of the cluster
/// (`backup.bak`, from releases that take them). `expected.json` says what
/// it holds.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "writes tests/fixtures; run by hand for a release"]
async fn save_a_server_data_dir() -> Result<()> {
    let release = std::env::var("BERTH_FIXTURE").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned());
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/server").join(&release);
    ensure!(!out.exists(), "{} exists: fixtures are never rewritten", out.display());
    let mut cluster = Cluster::start(1, &["--snapshot-logs", "6", "--keep-logs", "2"]).await?;
    let servers = cluster.addrs();
    let agent = Agent::new(None);
    let daemons = join_ready(&servers, &[(&agent, "alpha")]).await?;
    let run = |args: &[&str]| -> Result<()> {
        let (ok, out, err) = berthctl(&servers, args)?;
        ensure!(ok, "berthctl {args:?}: {out}{err}");
        Ok(())
    };
    let image = "registry.invalid:5000/web:1";
    run(&["service", "create", "--detach", "web", "--image", image, "--replicas", "2", "-e", "A=1", "-p", "8080:80"])?;
    run(&[
        "service",
        "create",
        "--detach",
        "jail",
        "--image",
        image,
        "--pids-limit",
        "64",
        "--security-opt",
        "seccomp=unconfined",
        "--userns",
        "auto",
        "--entrypoint",
        "sh",
        "--user",
        "1000:1000",
        "--workdir",
        "/tmp",
        "--hostname",
        "jail-host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--stop-signal",
        "SIGINT",
        "--stop-grace-period",
        "30s",
        "--health-cmd",
        "test -d /",
        "--health-interval",
        "2s",
        "--update-parallelism",
        "2",
        "--update-order",
        "stop-first",
        "--rollback-monitor",
        "1s",
        "--label",
        "team=jail",
        "--add-host",
        "db:198.18.0.5",
        "--dns-search",
        "example.com",
        "--ulimit",
        "nofile=64:128",
        "--tmpfs",
        "/cache:size=1Mi",
        "--restart-max-attempts",
        "3",
        "--",
        "-c",
        "sleep 1",
    ])?;
    // A global service with a pinned image pulled on every start, and a
    // replicated one spread by zone, one per node, left where it is.
    let pinned = format!("{image}@sha256:{}", "ab".repeat(32));
    run(&["service", "create", "--detach", "edge", "--image", &pinned, "--mode", "global", "--pull", "always"])?;
    run(&[
        "service",
        "create",
        "--detach",
        "zoned",
        "--image",
        image,
        "--no-resolve-image",
        "--replicas",
        "2",
        "--placement-pref",
        "spread=node.labels.zone",
        "--replicas-max-per-node",
        "1",
        "--no-rebalance",
    ])?;
    // Volumes (a slot's own, pinned and exclusive), a bind, a secret and a config.
    let value = tempfile::NamedTempFile::new()?;
    std::fs::write(value.path(), "fixture-value")?;
    let value = value.path().display().to_string();
    run(&["secret", "create", "db_password", &value])?;
    run(&["config", "create", "app.conf", &value])?;
    run(&[
        "service",
        "create",
        "--detach",
        "data",
        "--image",
        image,
        "--mount",
        "source=data-{{.Task.Slot}},target=/data,volume-pin,volume-exclusive",
        "--mount",
        "type=bind,source=/srv,target=/srv,readonly",
        "--secret",
        "src=db_password,mode=0400,uid=1000",
        "--config",
        "src=app.conf,target=/etc/app.conf",
    ])?;
    // A stack: STACK_SERVICE names, and a service that waits for another.
    let project = tempfile::tempdir()?;
    let compose = project.path().join("compose.yaml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  db: {{image: \"{image}\", healthcheck: {{test: [CMD, true]}}}}\n  \
             web: {{image: \"{image}\", depends_on: {{db: {{condition: service_healthy}}}}}}\n"
        ),
    )?;
    let compose = compose.display().to_string();
    run(&["stack", "deploy", "--detach", "--no-resolve-image", "-c", &compose, "app"])?;
    run(&["service", "create", "--detach", "gone", "--image", image, "--constraint", "node.labels.zone == a"])?;
    run(&["service", "rm", "gone"])?;
    run(&["service", "scale", "--detach", "web=3"])?;
    // The tasks are placed (their image cannot be pulled; they fail and retry).
    wait_for(Duration::from_secs(30), "web's tasks placed", async || {
        let (ok, out, _) = berthctl(&servers, &["service", "ps", "web"]).ok()?;
        (ok && out.matches("alpha").count() >= 3).then_some(())
    })
    .await?;
    let (ok, services, err) = berthctl(&servers, &["-o", "json", "service", "ls"])?;
    ensure!(ok, "{err}");
    let backup = cluster.dir.path().join("backup.bak");
    run(&["cluster", "backup", backup.to_str().unwrap_or_default()])?;
    drop(daemons);
    cluster.servers[0].stop()?;

    std::fs::create_dir_all(&out)?;
    for file in ["raft.sled", "store.key"] {
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(cluster.servers[0].data_dir.join(file))
            .arg(&out)
            .status()?;
        ensure!(copied.success(), "copying {file}");
    }
    std::fs::copy(&backup, out.join("backup.bak"))?;
    let services: serde_json::Value = serde_json::from_str(&services).context("service ls -o json")?;
    let expected = serde_json::json!({
        "services": services,
        "nodes": ["alpha"],
        "users": ["admin"],
    });
    std::fs::write(out.join("expected.json"), serde_json::to_string_pretty(&expected)?)?;
    Ok(())
}

/// tests/payload/hello.c in an image of its own, a few hundred bytes.
fn hello_image() -> Result<Image> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("hello");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("payload/hello.c");
    let built = std::process::Command::new("gcc")
        .args(["-nostdlib", "-static", "-Os", "-s", "-o"])
        .arg(&out)
        .arg(&source)
        .status()?;
    ensure!(built.success(), "gcc {} failed", source.display());
    let layer = Tar::default().file("hello", 0o755, &std::fs::read(&out)?).finish()?;
    let mut image = Image::new(vec![blob(layer, Compression::Gzip)?]);
    image.config = serde_json::json!({ "Env": ["PATH=/"], "Cmd": ["/hello"] });
    Ok(image)
}

/// Files of an agent's data dir that are this test's, not the agent's.
const NOT_THE_AGENTS: [&str; 3] = ["run", "registries.toml", "daemon.log"];

/// An agent's data dir: an image pulled from an OCI layout and a
/// container that ran it and exited, its records and its log.
/// `expected.json` holds what `ps` and `images` said of them.
#[test]
#[ignore = "writes tests/fixtures; run by hand for a release"]
fn save_an_agent_data_dir() -> Result<()> {
    let release = std::env::var("BERTH_FIXTURE").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned());
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/agent").join(&release);
    ensure!(!out.exists(), "{} exists: fixtures are never rewritten", out.display());
    let layout = tempfile::tempdir()?;
    hello_image()?.write_layout(layout.path(), "1")?;
    let agent = Agent::new(None);
    let image = format!("oci:{}:1", layout.path().display());
    // With what a container may record: its own user namespace, a user and a workdir.
    let printed = agent.ok(&["run", "--name", "hello", "--userns", "auto", "--user", "0:0", "--workdir", "/", &image]);
    ensure!(printed == "hello from berth\n", "{printed:?}");
    let ps: serde_json::Value = serde_json::from_str(&agent.ok(&["ps", "-o", "json"]))?;
    let images = agent.ok(&["image", "ls"]);
    std::fs::create_dir_all(&out)?;
    let data = out.join("data");
    let copied = std::process::Command::new("cp").arg("-a").arg(agent.data.path()).arg(&data).status()?;
    ensure!(copied.success(), "copying the data dir");
    for name in NOT_THE_AGENTS {
        let path = data.join(name);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    let expected = serde_json::json!({ "ps": ps, "images": images });
    std::fs::write(out.join("expected.json"), serde_json::to_string_pretty(&expected)?)?;
    Ok(())
}

/// Every agent data dir an earlier release saved loads in this build (a
/// copy of it: fixtures never change): its containers are listed as that
/// release listed them, a log reads, the image runs from the store, and
/// the container is removed.
#[test]
fn agent_data_dirs_of_earlier_releases_load() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/agent");
    let mut releases: Vec<_> = std::fs::read_dir(&root)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    releases.sort();
    ensure!(!releases.is_empty(), "no fixtures in {}", root.display());
    for release in releases {
        let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(release.join("expected.json"))?)?;
        let agent = Agent::new(None);
        let copied =
            std::process::Command::new("cp").arg("-a").arg(release.join("data/.")).arg(agent.data.path()).status()?;
        ensure!(copied.success(), "copying {}", release.display());
        let what = release.display();

        // Every field that release listed, as it listed it (later builds may add fields).
        let ps: Vec<serde_json::Value> = serde_json::from_str(&agent.ok(&["ps", "-o", "json"]))?;
        let listed = expected["ps"].as_array().context("expected ps")?;
        ensure!(ps.len() == listed.len(), "{what}: {ps:?}");
        for (now, then) in ps.iter().zip(listed) {
            for (field, value) in then.as_object().context("a container")? {
                ensure!(&now[field] == value, "{what}: {field} was {value}, now {}", now[field]);
            }
        }
        let reference = listed[0]["image"].as_str().context("image")?;
        let images = agent.ok(&["image", "ls"]);
        ensure!(images.contains(reference), "{what}: {images}");
        ensure!(agent.ok(&["logs", "hello"]) == "hello from berth\n", "{what}: the log reads");
        if std::env::consts::ARCH == "x86_64" {
            ensure!(agent.ok(&["run", "--rm", reference]) == "hello from berth\n", "{what}: the stored image runs");
        }
        agent.ok(&["rm", "hello"]);
        ensure!(agent.ps().is_empty(), "{what}: removed");
        // Marked with this build's format, as a new data dir is.
        let fresh = Agent::new(None);
        fresh.ok(&["ps"]);
        let format = |a: &Agent| std::fs::read_to_string(a.data.path().join("format"));
        ensure!(format(&agent)? == format(&fresh)?, "{what}: marked {:?}", format(&agent)?);
    }
    Ok(())
}
