//! Secrets and configs end to end: a secret made from stdin and a config
//! from a file reach a task as read-only files in memory (the default
//! /run/secrets/NAME and a target of its own, owned and moded as asked,
//! for a task with the host's ids and one with its own), a config at the
//! path given; the secret's value appears in no `service inspect`, no
//! `secret inspect`, no environment, nowhere on the agent's or the
//! servers' disks and in no log. A secret in use cannot be removed; an
//! update that swaps it for a new one rolls the task, which then reads the
//! new value.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_tests::agent::Agent;
use berth_tests::oci::Image;
use berth_tests::registry::Registry;
use berth_tests::{berthctl, berthctl_stdin, wait_for, Cluster};

/// What a service's tasks printed, without the `TASK@NODE | ` prefixes.
fn said(servers: &[String], service: &str) -> Vec<String> {
    let out = berthctl(servers, &["service", "logs", service]).map(|r| r.1).unwrap_or_default();
    out.lines().filter_map(|l| l.split_once("| ")).map(|(_, v)| v.to_owned()).collect()
}

/// Files under `dir` whose bytes hold `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let (path, kind) = (entry.path(), entry.file_type());
            match kind {
                Ok(k) if k.is_dir() => todo.push(path),
                Ok(k) if k.is_file() => {
                    let data = std::fs::read(&path).unwrap_or_default();
                    if data.windows(needle.len()).any(|w| w == needle) {
                        found.push(path.display().to_string());
                    }
                }
                _ => {}
            }
        }
    }
    found
}

#[tokio::test]
async fn secrets_reach_only_their_tasks_as_files_in_memory() -> Result<()> {
    let registry = Registry::start().await?;
    Image::busybox()?.push(&registry.addr, "app", "1").await?;
    let image = format!("{}/app:1", registry.addr);
    let cluster = Cluster::start(1, &[]).await?;
    let servers = cluster.addrs();
    let agent = Agent::new(Some(&registry));
    let daemons = berth_tests::agent::join_ready(&servers, &[(&agent, "solo")]).await?;

    let value = "hunter2-not-in-any-log";
    let (ok, out, err) = berthctl_stdin(&servers, &["secret", "create", "db_password", "-"], value.as_bytes())?;
    ensure!(ok && out.contains("secret db_password created (22 bytes)"), "{out}{err}");
    let conf = tempfile::NamedTempFile::new()?;
    std::fs::write(conf.path(), "listen=8080\n")?;
    let (ok, out, err) = berthctl(&servers, &["config", "create", "app.conf", &conf.path().display().to_string()])?;
    ensure!(ok, "{out}{err}");

    // The task prints the secret's digest: its own log is on the agent's disk.
    let look = "sha256sum /run/secrets/db_password | cut -d' ' -f1; stat -c '%u:%g %a' /etc/db.pw; cat /etc/app.conf; \
        grep ' /run/secrets/db_password ' /proc/mounts; echo x 2>&1 > /run/secrets/db_password; \
        env | grep -c not-in-any; exec sleep 600";
    let refs = [
        "--secret",
        "db_password",
        "--secret",
        "src=db_password,target=/etc/db.pw,uid=1000,gid=2000,mode=0400",
        "--config",
        "src=app.conf,target=/etc/app.conf",
    ];
    for (name, extra) in [("plain", &[][..]), ("own-ids", &["--userns", "auto"][..])] {
        let args = [&["service", "create", name, "--image", &image][..], &refs, extra, &["--", "sh", "-c", look]];
        let (ok, out, err) = berthctl(&servers, &args.concat())?;
        ensure!(ok, "{name}: {out}{err}");
        let seen = wait_for(Duration::from_secs(60), &format!("{name}'s output"), async || {
            let s = said(&servers, name);
            (s.len() >= 6).then_some(s)
        })
        .await
        .with_context(|| format!("{:?}", said(&servers, name)))?;
        let digest = berth_tests::oci::sha256(value.as_bytes());
        ensure!(Some(seen[0].as_str()) == digest.strip_prefix("sha256:"), "{name}: the secret's value: {seen:?}");
        ensure!(seen[1] == "1000:2000 400", "{name}: owner and mode as asked: {seen:?}");
        ensure!(seen[2] == "listen=8080", "{name}: the config: {seen:?}");
        ensure!(seen[3].starts_with("tmpfs /run/secrets/db_password tmpfs ro,nosuid,nodev,noexec"), "{seen:?}");
        ensure!(seen[4].contains("Read-only file system"), "{name}: written to: {seen:?}");
        ensure!(seen[5] == "0", "{name}: in the environment: {seen:?}");
    }

    // Nowhere else: not in any read API, on any disk or in any log.
    for args in [
        &["service", "inspect", "plain", "-o", "json"][..],
        &["service", "inspect", "plain"],
        &["secret", "inspect", "db_password", "-o", "json"],
        &["secret", "ls", "-o", "json"],
        &["service", "ps", "plain", "-o", "json"],
    ] {
        let (ok, out, err) = berthctl(&servers, args)?;
        ensure!(ok && !out.contains(value) && !out.contains("hunter2"), "{args:?} shows it: {out}{err}");
    }
    let (_, out, _) = berthctl(&servers, &["service", "inspect", "plain"])?;
    ensure!(out.contains("db_password -> /etc/db.pw (1000:2000, 0400)"), "{out}");
    let (_, out, _) = berthctl(&servers, &["secret", "inspect", "db_password"])?;
    ensure!(
        out.contains("Value:    22 bytes\n") && out.contains("Used by:  own-ids, plain"),
        "no digest either: {out}"
    );
    let (_, out, _) = berthctl(&servers, &["config", "inspect", "app.conf"])?;
    ensure!(out.contains("listen=8080"), "a config's value reads back: {out}");
    let disks = [agent.data.path(), cluster.dir.path()];
    for dir in disks {
        let found = holding(dir, value.as_bytes());
        ensure!(found.is_empty(), "the value on disk: {found:?}");
    }
    ensure!(!agent.daemon_log().contains(value) && !cluster.logs().contains(value), "the value in a log");

    // In use, it stays; bad names and unknown secrets are refused by field.
    let (ok, _, err) = berthctl(&servers, &["secret", "rm", "db_password"])?;
    ensure!(!ok && err.contains("in use by service(s) own-ids, plain"), "{err}");
    let (ok, _, err) = berthctl_stdin(&servers, &["secret", "create", "bad/name", "-"], b"x")?;
    ensure!(!ok && err.contains("name: \"bad/name\" is not valid"), "{err}");
    let (ok, _, err) = berthctl(&servers, &["service", "create", "none", "--image", &image, "--secret", "nope"])?;
    ensure!(!ok && err.contains("secrets[0].source: \"nope\" is not valid: expected an existing secret"), "{err}");
    let (ok, _, err) = berthctl_stdin(&servers, &["secret", "create", "db_password", "-"], b"again")?;
    ensure!(!ok && err.contains("already exists") && err.contains("never changes"), "{err}");

    // Rotation: a new secret, swapped in by an update, rolls the task.
    let (ok, out, err) = berthctl_stdin(&servers, &["secret", "create", "db_password_v2", "-"], b"second-value")?;
    ensure!(ok, "{out}{err}");
    let swap = ["--secret-rm", "db_password", "--secret-add", "src=db_password_v2,target=db_password"];
    let (ok, out, err) = berthctl(&servers, &[&["service", "update", "plain"][..], &swap].concat())?;
    ensure!(ok && out.contains("plain converged"), "{out}{err}");
    let second = berth_tests::oci::sha256(b"second-value");
    wait_for(Duration::from_secs(60), "the new value read", async || {
        said(&servers, "plain").iter().any(|l| Some(l.as_str()) == second.strip_prefix("sha256:")).then_some(())
    })
    .await?;
    let (ok, out, err) = berthctl(&servers, &["service", "rm", "own-ids"])?;
    ensure!(ok, "{out}{err}");
    let (ok, out, err) = wait_for(Duration::from_secs(30), "db_password free", async || {
        let r = berthctl(&servers, &["secret", "rm", "db_password"]).ok()?;
        (r.0 || !r.2.contains("in use")).then_some(r)
    })
    .await?;
    ensure!(ok && out.contains("secret db_password removed"), "{out}{err}");
    let (ok, out, _) = berthctl(&servers, &["secret", "ls"])?;
    ensure!(ok && !out.contains("db_password ") && out.contains("db_password_v2"), "{out}");
    drop(daemons);
    Ok(())
}
