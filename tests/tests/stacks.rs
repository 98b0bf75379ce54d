//! A real application from one Compose file, across three hosts: Debian's
//! own redis-server as the database (its password a secret, its data a
//! volume) and a web tier (busybox httpd, whose CGI counts visits in
//! redis through Debian's redis-cli, finding the database by its short
//! name `db`). The web tier waits for the database to be healthy, when
//! first deployed and again whenever it restarts; the count survives the
//! database's restart and a deploy of a changed file; deploying the same
//! file changes nothing; the password is in no inspect, environment,
//! disk or log. Then the Compose Specification's own deploy examples
//! (`deploy.md`, `05-services.md`, `08-configs.md`, `09-secrets.md`),
//! re-created with busybox, land as the specs they describe.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_tests::agent::Agent;
use berth_tests::hosts::{Host, Hosts};
use berth_tests::oci::{blob, Compression, Image, Tar};
use berth_tests::registry::{Auth, Registry};
use berth_tests::{berthctl, wait_for, Cluster};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The web tier's page: one more visit, counted by the database.
const COUNT: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\n\
    REDISCLI_AUTH=\"$(cat /run/secrets/db_password)\" /usr/bin/redis-cli -h db INCR visits 2>&1\n";

const PASSWORD: &str = "s3cret-pw-in-no-log";

/// The database, as the application's file has it.
const DB: &str = r#"
services:
  db:
    image: ${REGISTRY}/app:1
    # The password goes from the secret's file into a config in memory.
    command: ["sh", "-c", "echo \"requirepass $$(cat /run/secrets/db_password)\" > /run/redis/redis.conf && exec redis-server /run/redis/redis.conf --dir /data --appendonly yes --appendfsync always --protected-mode no"]
    tmpfs: ["/run/redis:size=1m"]
    volumes: [dbdata:/data]
    secrets: [db_password]
    healthcheck:
      test: ["CMD-SHELL", "REDISCLI_AUTH=$$(cat /run/secrets/db_password) redis-cli ping | grep -q PONG"]
      interval: 1s
      retries: 3
    deploy:
      placement: {constraints: [node.hostname == host3]}
"#;

/// The web tier.
const WEB: &str = r#"
  web:
    image: ${REGISTRY}/app:1
    command: httpd -f -p 8080 -h /www
    ports: ["8080:8080"]
    depends_on:
      db: {condition: service_healthy}
    secrets: [db_password]
    environment: {TIER: "${TIER:-web}"}
    deploy:
      replicas: 2
      placement: {max_replicas_per_node: 1, constraints: [node.hostname != host3]}
    build: ./web
    networks: [front]
"#;

/// What both share. `${REGISTRY}` comes from the project's `.env`.
const REST: &str = r#"
volumes:
  dbdata: {}
secrets:
  db_password: {file: ./db_password.txt}
networks:
  front: {}
"#;

/// The application's file: the database, the web tier unless left out.
fn app(db: &str, web: bool) -> String {
    format!("{}{}{REST}", db.trim_end(), if web { WEB.trim_end() } else { "" })
}

/// Tasks meant to run, from `service ps -o json`: (id, node, state, message).
fn tasks(servers: &[String], service: &str) -> Vec<(String, String, String, String)> {
    let Ok((true, out, _)) = berthctl(servers, &["service", "ps", service, "-o", "json"]) else { return vec![] };
    let list: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    list.iter()
        .filter(|t| t["task"]["desired"] == "running")
        .map(|t| (s(&t["task"]["id"]), s(&t["node_name"]), s(&t["task"]["state"]), s(&t["task"]["message"])))
        .collect()
}

/// A visit to the web tier through `host`'s published port: the count it shows.
async fn visit(host: &Host) -> Option<String> {
    let get = async {
        let mut conn = tokio::net::TcpStream::connect(format!("{}:8080", host.ip)).await.ok()?;
        conn.write_all(b"GET /cgi-bin/count HTTP/1.0\r\n\r\n").await.ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.ok()?;
        // The CGI ends its headers with "\n\n", httpd its own with "\r\n".
        Some(reply.replace("\r\n", "\n").split_once("\n\n")?.1.trim().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), get).await.ok().flatten()
}

/// Waits until a visit through `host` counts `n`, visiting until it does.
async fn count_reaches(host: &Host, n: u64) -> Result<()> {
    let mut last = None;
    wait_for(Duration::from_secs(90), &format!("visits counted up to {n}"), async || {
        last = visit(host).await;
        let got: u64 = last.as_deref()?.parse().ok()?;
        (got >= n).then_some(())
    })
    .await
    .with_context(|| format!("the page said {last:?}"))
}

/// A service's spec as `service inspect -o json` shows it.
fn spec(servers: &[String], service: &str) -> Result<Value> {
    let (ok, out, err) = berthctl(servers, &["service", "inspect", service, "-o", "json"])?;
    ensure!(ok, "{err}");
    Ok(serde_json::from_str::<Value>(&out)?["spec"].clone())
}

/// Files under `dir` whose bytes hold `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(k) if k.is_dir() => todo.push(entry.path()),
                Ok(k) if k.is_file() => {
                    let data = std::fs::read(entry.path()).unwrap_or_default();
                    if data.windows(needle.len()).any(|w| w == needle) {
                        found.push(entry.path().display().to_string());
                    }
                }
                _ => {}
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_and_a_web_tier_from_one_compose_file() -> Result<()> {
    let hosts = Hosts::new(3)?;
    let registry = Registry::start_at(&hosts.gateway.to_string(), Auth::Anonymous).await?;
    let mut image = Image::busybox()?;
    let layer = Tar::default()
        .host_programs(&["/usr/bin/redis-server", "/usr/bin/redis-cli"])?
        // On the image's PATH (/bin).
        .symlink("bin/redis-server", "/usr/bin/redis-server")
        .symlink("bin/redis-cli", "/usr/bin/redis-cli")
        .dir("data/")
        .dir("www/")
        .dir("www/cgi-bin/")
        .file("www/cgi-bin/count", 0o755, COUNT.as_bytes());
    image.layers.push(blob(layer.finish()?, Compression::Gzip)?);
    image.push(&registry.addr, "app", "1").await?;
    let on: Vec<&Host> = hosts.hosts.iter().collect();
    let cluster = Cluster::start_on(&on, &[]).await?;
    let servers = cluster.addrs();
    let agents: Vec<Agent> = on.iter().map(|h| Agent::on(Some(&registry), h)).collect();
    let mut daemons = Vec::new();
    for (i, h) in on.iter().enumerate() {
        let dns = ["--dns-listen".to_owned(), format!("{}:53", h.ip)];
        let dns: Vec<&str> = dns.iter().map(String::as_str).collect();
        daemons.push(agents[i].join_at(&servers, &h.name, &format!("{}:7500", h.ip), &dns)?);
    }
    wait_for(Duration::from_secs(60), "three nodes ready", async || {
        let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
        (ok && out.matches(" ready ").count() == 3).then_some(())
    })
    .await?;

    let project = tempfile::tempdir()?;
    std::fs::write(project.path().join(".env"), format!("REGISTRY={}\n", registry.addr))?;
    std::fs::write(project.path().join("db_password.txt"), PASSWORD)?;
    let file = project.path().join("compose.yaml");
    std::fs::write(&file, app(DB, true))?;
    let file = file.display().to_string();
    let deploy =
        |extra: &[&str]| berthctl(&servers, &[&["stack", "deploy", "-c", &file][..], extra, &["shop"]].concat());

    // What berth does not do is named, and refused with --strict.
    let (ok, _, err) = deploy(&["--strict"])?;
    ensure!(!ok && err.contains("services.web.build: not supported: berth runs images"), "{err}");
    ensure!(berthctl(&servers, &["service", "ls"])?.1.lines().count() <= 1, "--strict changed something");
    let (ok, out, err) = deploy(&[])?;
    ensure!(ok, "{out}{err}");
    ensure!(err.contains("services.web.networks: berth has one overlay network"), "{err}");
    ensure!(out.contains("secret shop_db_password created") && out.contains("shop_web converged"), "{out}{err}");

    // The web tier finds the database by its short name, from two hosts.
    let web_nodes: Vec<String> = tasks(&servers, "shop_web").into_iter().map(|t| t.1).collect();
    ensure!(web_nodes.len() == 2 && !web_nodes.contains(&"host3".to_owned()), "{web_nodes:?}");
    count_reaches(on[0], 1).await?;
    let before: u64 = visit(on[1]).await.context("a visit")?.parse()?;
    ensure!(before >= 2, "{before}");
    let (ok, out, _) = berthctl(&servers, &["stack", "ls"])?;
    ensure!(ok && out.lines().any(|l| l.split_whitespace().eq(["shop", "2"])), "{out}");
    let (ok, out, _) = berthctl(&servers, &["stack", "services", "shop"])?;
    ensure!(ok && out.contains("shop_db ") && out.contains("shop_web "), "{out}");
    let (ok, out, _) = berthctl(&servers, &["stack", "ps", "shop"])?;
    ensure!(ok && out.contains("shop_db.1.1") && out.contains("shop_web.2.1"), "{out}");
    // Its names in DNS, asked of a node's DNS with dig.
    let db_ip = wait_for(Duration::from_secs(30), "db in DNS", async || {
        let t = berthctl(&servers, &["service", "ps", "shop_db", "-o", "json"]).ok()?.1;
        let list: Vec<Value> = serde_json::from_str(&t).ok()?;
        list.iter().find(|t| t["task"]["desired"] == "running")?["task"]["address"].as_str().map(str::to_owned)
    })
    .await?;
    for name in ["db.shop.berth.local", "shop_db.berth.local"] {
        let at = format!("@{}", on[0].ip);
        let got = on[0].run("dig", &["+short", "+time=2", "+tries=1", &at, name])?;
        ensure!(got.trim() == db_ip, "{name}: {got:?}, not {db_ip}");
    }

    // depends_on holds at every start: with the database gone, a web task
    // that stops waits, saying why, and starts once the database is healthy.
    let (ok, out, err) = berthctl(&servers, &["service", "scale", "--detach", "shop_db=0"])?;
    ensure!(ok, "{out}{err}");
    wait_for(Duration::from_secs(60), "db gone", async || tasks(&servers, "shop_db").is_empty().then_some(())).await?;
    let (task, node) = tasks(&servers, "shop_web").first().map(|t| (t.0.clone(), t.1.clone())).context("a web task")?;
    let agent = &agents[on.iter().position(|h| h.name == node).context("its host")?];
    let pid = agent.ps().iter().find(|c| c["name"] == task.as_str()).and_then(|c| c["pid"].as_i64()).context("pid")?;
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    wait_for(Duration::from_secs(60), "the web task waiting for the database", async || {
        let t = tasks(&servers, "shop_web");
        t.iter().any(|t| t.0 == task && t.3 == "waiting for shop_db to be healthy").then_some(())
    })
    .await
    .with_context(|| format!("{:?}", tasks(&servers, "shop_web")))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = tasks(&servers, "shop_web").into_iter().find(|t| t.0 == task).context("the task")?;
    ensure!(still.2 != "running", "it started without its database: {still:?}");
    // Back, on its node (its data is there): the count goes on from before.
    let (ok, out, err) = berthctl(&servers, &["service", "scale", "shop_db=1"])?;
    ensure!(ok, "{out}{err}");
    wait_for(Duration::from_secs(60), "the web task running again", async || {
        tasks(&servers, "shop_web").iter().any(|t| t.0 == task && t.2 == "running").then_some(())
    })
    .await?;
    let after: u64 = wait_for(Duration::from_secs(60), "a visit", async || visit(on[0]).await?.parse().ok()).await?;
    ensure!(after > before, "the count started over: {after} after {before}");

    // The same file again changes nothing; a changed one updates only what changed.
    let versions = |servers: &[String]| -> Result<BTreeMap<String, u64>> {
        let (_, out, _) = berthctl(servers, &["stack", "services", "shop", "-o", "json"])?;
        let list: Vec<Value> = serde_json::from_str(&out)?;
        Ok(list
            .iter()
            .map(|s| (s["spec"]["name"].as_str().unwrap_or("-").into(), s["version"].as_u64().unwrap_or(0)))
            .collect())
    };
    let was = versions(&servers)?;
    let (ok, out, err) = deploy(&[])?;
    ensure!(ok && out.contains("stack shop: nothing changed") && versions(&servers)? == was, "{out}{err}");
    let changed = DB.replace("--appendonly yes", "--appendonly yes --save 60 1");
    std::fs::write(&file, app(&changed, true))?;
    let (ok, out, err) = deploy(&[])?;
    ensure!(ok && out.contains("service shop_web unchanged") && out.contains("shop_db converged"), "{out}{err}");
    let now = versions(&servers)?;
    ensure!(now["shop_db"] == was["shop_db"] + 1 && now["shop_web"] == was["shop_web"], "{was:?} -> {now:?}");
    count_reaches(on[1], after + 1).await?;

    // The password: in no inspect, environment, disk or log.
    for service in ["shop_db", "shop_web"] {
        let (_, out, _) = berthctl(&servers, &["service", "inspect", service, "-o", "json"])?;
        ensure!(!out.contains(PASSWORD) && out.contains("db_password"), "{service}: {out}");
        let (_, logs, _) = berthctl(&servers, &["service", "logs", service])?;
        ensure!(!logs.contains(PASSWORD), "{service}'s logs: {logs}");
    }
    for a in &agents {
        for c in a.ps() {
            let Some(pid) = c["pid"].as_i64() else { continue };
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            ensure!(
                !environ.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()),
                "in {}'s environment",
                c["name"]
            );
        }
        ensure!(holding(a.data.path(), PASSWORD.as_bytes()).is_empty(), "on an agent's disk");
        ensure!(!a.daemon_log().contains(PASSWORD), "in an agent's log");
    }
    ensure!(holding(cluster.dir.path(), PASSWORD.as_bytes()).is_empty() && !cluster.logs().contains(PASSWORD));

    // --prune removes what the file dropped; rm takes the rest, but not the data.
    std::fs::write(&file, app(&changed, false))?;
    let (ok, out, err) = deploy(&[])?;
    ensure!(ok && out.contains("service shop_web is no longer in the file; --prune removes it"), "{out}{err}");
    let (ok, out, err) = deploy(&["--prune"])?;
    ensure!(ok && out.contains("service shop_web removed (--prune)"), "{out}{err}");
    let (ok, out, err) = berthctl(&servers, &["stack", "rm", "shop"])?;
    ensure!(
        ok && out.contains("service shop_db removed") && out.contains("secret shop_db_password removed"),
        "{out}{err}"
    );
    let (_, out, _) = berthctl(&servers, &["volume", "ls"])?;
    ensure!(out.contains("shop_dbdata"), "the volume keeps the data: {out}");
    let (ok, _, err) = berthctl(&servers, &["stack", "ps", "shop"])?;
    ensure!(!ok && err.contains("nothing found in stack shop"), "{err}");

    spec_examples(&servers, &registry.addr, project.path()).await?;
    drop(daemons);
    Ok(())
}

/// The specification's examples, each key as the spec describes it,
/// checked in the specs the cluster keeps and the tasks it runs.
async fn spec_examples(servers: &[String], registry: &str, dir: &Path) -> Result<()> {
    let examples = format!(
        r#"
x-image: &image {registry}/app:1
services:
  frontend:
    image: *image
    command: ["sh", "-c", "cat /etc/http.conf; echo token=$$(cat /run/secrets/oauth_token); exec sleep 1d"]
    deploy:
      mode: replicated
      replicas: 2
      endpoint_mode: dnsrr
      labels: {{com.example.description: "This label will appear on the web service"}}
      resources:
        limits: {{cpus: '0.50', memory: 50M, pids: 100}}
        reservations: {{cpus: '0.25', memory: 20M}}
      restart_policy: {{condition: on-failure, max_attempts: 3, window: 120s}}
      update_config: {{parallelism: 2, delay: 10s, order: stop-first}}
      placement:
        preferences: [{{spread: node.labels.zone}}]
    configs: [{{source: http_config, target: /etc/http.conf, mode: 0440}}]
    secrets: [oauth_token]
    depends_on:
      backend: {{condition: service_started}}
  backend:
    image: *image
    command: sleep 1d
    environment: [RACK_ENV=development, SHOW=true]
    deploy:
      mode: global
configs:
  http_config:
    content: |
      debug=${{DEBUG:-false}}
secrets:
  oauth_token:
    environment: OAUTH_TOKEN
"#
    );
    std::fs::write(dir.join("examples.yaml"), examples)?;
    std::fs::write(dir.join(".env"), "OAUTH_TOKEN=tok-123\nDEBUG=true\n")?;
    let file = dir.join("examples.yaml").display().to_string();
    let (ok, out, err) = berthctl(servers, &["stack", "deploy", "-c", &file, "ex"])?;
    ensure!(ok && out.contains("ex_frontend converged"), "{out}{err}");
    let front = spec(servers, "ex_frontend")?;
    ensure!(front["replicas"] == 2 && front["resources"]["cpu_millis"] == 500, "{front}");
    ensure!(front["resources"]["memory_bytes"] == 50 << 20 && front["pids_limit"] == 100, "{front}");
    ensure!(front["restart"] == "on-failure" && front["update_config"]["parallelism"] == 2, "{front}");
    ensure!(front["update_config"]["delay_ms"] == 10_000 && front["update_config"]["order"] == "stop-first", "{front}");
    ensure!(front["placement"]["spread"][0] == "zone", "spread over node.labels.zone: {front}");
    let options = &front["overrides"]["options"];
    ensure!(options["labels"]["com.example.description"] == "This label will appear on the web service", "{front}");
    ensure!(options["restart_max_attempts"] == 3 && options["restart_window_ms"] == 120_000, "{front}");
    ensure!(options["depends_on"][0]["service"] == "ex_backend", "{front}");
    let back = spec(servers, "ex_backend")?;
    ensure!(back["mode"] == "global" && back["env"]["SHOW"] == "true", "{back}");
    let said = wait_for(Duration::from_secs(60), "frontend's output", async || {
        let out = berthctl(servers, &["service", "logs", "ex_frontend"]).ok()?.1;
        (out.contains("debug=true") && out.contains("token=tok-123")).then_some(out)
    })
    .await?;
    ensure!(said.contains("ex_frontend.1.1@"), "{said}");
    let (ok, out, err) = berthctl(servers, &["stack", "rm", "ex"])?;
    ensure!(
        ok && out.contains("config ex_http_config removed") && out.contains("secret ex_oauth_token removed"),
        "{out}{err}"
    );
    Ok(())
}
