//! Saves what this release writes, for every later build to load
//! (control-plane/tests/fixtures.rs). Run it when a release changes what a
//! server stores, and commit the new directory; never rewrite an old one:
//!
//! ```text
//! cargo test -p berth-tests --test fixtures -- --ignored
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_tests::agent::{join_ready, Agent};
use berth_tests::{berthctl, wait_for, Cluster};

/// A server's data dir after services were created, changed, scaled and
/// removed, with a node that joined and tasks it took: a snapshot (every 6
/// entries) and the log after it. `expected.json` says what it holds.
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
    run(&["service", "create", "web", "--image", image, "--replicas", "2", "-e", "A=1", "-p", "8080:80"])?;
    run(&[
        "service",
        "create",
        "jail",
        "--image",
        image,
        "--pids-limit",
        "64",
        "--security-opt",
        "seccomp=unconfined",
    ])?;
    run(&["service", "create", "gone", "--image", image, "--constraint", "node.labels.zone == a"])?;
    run(&["service", "rm", "gone"])?;
    run(&["service", "scale", "web=3"])?;
    // The tasks are placed (their image cannot be pulled; they fail and retry).
    wait_for(Duration::from_secs(30), "4 tasks placed", async || {
        let (ok, out, _) = berthctl(&servers, &["service", "ps", "web"]).ok()?;
        (ok && out.matches("alpha").count() >= 3).then_some(())
    })
    .await?;
    let (ok, services, err) = berthctl(&servers, &["-o", "json", "service", "ls"])?;
    ensure!(ok, "{err}");
    drop(daemons);
    cluster.servers[0].stop()?;

    std::fs::create_dir_all(&out)?;
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(cluster.servers[0].data_dir.join("raft.sled"))
        .arg(&out)
        .status()?;
    ensure!(copied.success(), "copying raft.sled");
    let services: serde_json::Value = serde_json::from_str(&services).context("service ls -o json")?;
    let expected = serde_json::json!({
        "services": services,
        "nodes": ["alpha"],
        "users": ["admin"],
    });
    std::fs::write(out.join("expected.json"), serde_json::to_string_pretty(&expected)?)?;
    Ok(())
}
