//! End-to-end tests of the control plane: real berth-server processes on
//! loopback, driven over gRPC and through berthctl.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use berth_proto::pb::cluster::*;
use berth_tests::{berthctl, client, spec, wait_for, Cluster};
use tonic::Code;

/// Bootstrap plus two joins; a write through any server reads back through every server.
#[tokio::test(flavor = "multi_thread")]
async fn writes_through_any_server_read_back_everywhere() -> Result<()> {
    let mut cluster = Cluster::start(3, &[]).await?;
    let st = cluster.status().await?;
    ensure!(st.members.len() == 3, "three members: {st:?}");
    ensure!(st.members.iter().filter(|m| m.role == "leader").count() == 1, "one leader: {st:?}");

    for (i, s) in cluster.servers.iter().enumerate() {
        let req = CreateServiceRequest { spec: Some(spec(&format!("svc-{i}"))), no_resolve_image: true };
        s.client().create_service(req).await?;
    }
    for s in &cluster.servers {
        for i in 0..3 {
            let reply = s.client().get_service(GetServiceRequest { name: format!("svc-{i}"), stale: false }).await?;
            ensure!(reply.into_inner().service.and_then(|s| s.spec).is_some_and(|s| s.name == format!("svc-{i}")));
        }
    }
    cluster.wait_converged().await?;
    for i in 0..3 {
        let local = cluster.local_services(i).await?;
        ensure!(local == ["svc-0", "svc-1", "svc-2"], "server {i} holds {local:?}");
    }

    // berthctl against the same cluster: create, apply (idempotent), json, rm, cluster remove.
    let addrs = cluster.addrs();
    let (ok, out, err) = berthctl(
        &addrs,
        &[
            "service",
            "create",
            "--detach",
            "web",
            "--image",
            "busybox",
            "--replicas",
            "2",
            "--env",
            "A=1",
            "--memory",
            "64Mi",
            "--cpus",
            "0.5",
            "--publish",
            "8080:80",
            "--",
            "httpd",
            "-f",
        ],
    )?;
    ensure!(ok && out.contains("web created"), "create: {out} {err}");
    let (ok, out, _) = berthctl(&addrs, &["service", "ls"])?;
    ensure!(
        ok && out.lines().next().is_some_and(|h| h.starts_with("NAME")) && out.contains("8080:80/tcp"),
        "ls: {out}"
    );
    let (ok, out, _) = berthctl(&addrs, &["service", "inspect", "web", "-o", "json"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        ok && json["spec"]["resources"]["memory_bytes"] == 64 << 20 && json["spec"]["command"][0] == "httpd",
        "{out}"
    );

    let file = cluster.dir.path().join("web.yaml");
    std::fs::write(&file, "name: web\nimage: busybox\nreplicas: 2\ncommand: [httpd, -f]\nenv: {A: \"1\"}\nresources: {cpus: 0.5, memory: 64Mi}\nports: [\"8080:80\"]\n")?;
    let f = file.to_str().unwrap_or_default();
    let (ok, out, err) = berthctl(&addrs, &["apply", "--detach", "-f", f])?;
    ensure!(ok && out.contains("web unchanged (version 1)"), "apply same spec: {out} {err}");
    std::fs::write(&file, "name: web\nimage: busybox\nreplicas: 5\n---\nname: api\nimage: busybox\n")?;
    let (ok, out, _) = berthctl(&addrs, &["apply", "--detach", "-f", f])?;
    ensure!(ok && out.contains("web updated (version 2)") && out.contains("api created (version 1)"), "apply: {out}");
    let (ok, out, _) = berthctl(&addrs, &["apply", "--detach", "-f", f])?;
    ensure!(ok && out.contains("web unchanged") && out.contains("api unchanged"), "re-apply: {out}");

    let (ok, out, _) = berthctl(&addrs, &["service", "rm", "api"])?;
    ensure!(ok && out.contains("removed"), "rm: {out}");
    let (ok, _, err) = berthctl(&addrs, &["service", "inspect", "api"])?;
    ensure!(!ok && err.contains("not found"), "inspect after rm: {err}");

    let (ok, out, _) = berthctl(&addrs, &["cluster", "status", "-o", "json"])?;
    let st: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(ok && st["members"].as_array().map(Vec::len) == Some(3), "{out}");
    let (ok, out, _) = berthctl(&addrs, &["cluster", "status"])?;
    ensure!(ok && out.contains("Leader:") && out.contains("ROLE"), "{out}");
    let (ok, out, _) = berthctl(&addrs, &["version"])?;
    let release = env!("CARGO_PKG_VERSION");
    ensure!(ok && out.starts_with(&format!("berthctl  {release}\n")), "{out}");
    for addr in &addrs {
        ensure!(out.lines().any(|l| l.starts_with(addr.as_str()) && l.ends_with(release)), "{addr}: {out}");
    }

    // Remove a follower: the cluster goes on with two voters.
    let leader = cluster.leader().await?;
    let follower = (leader + 1) % 3;
    let st = cluster.status().await?;
    let id = st.members.iter().find(|m| m.address == cluster.servers[follower].addr).map(|m| m.id).unwrap_or_default();
    let (ok, out, err) = berthctl(&addrs, &["cluster", "remove", &id.to_string()])?;
    ensure!(ok, "cluster remove: {out} {err}");
    cluster.servers[follower].kill9();
    let st = cluster.status().await?;
    ensure!(st.members.len() == 2 && st.members.iter().all(|m| m.id != id), "after remove: {st:?}");
    let (ok, _, err) = berthctl(&addrs, &["service", "create", "--detach", "after-remove", "--image", "busybox"])?;
    ensure!(ok, "write after removing a member: {err}");
    let (ok, _, err) = berthctl(&addrs, &["cluster", "remove", "99"])?;
    ensure!(!ok && err.contains("no server with id 99"), "{err}");
    Ok(())
}

/// Kill -9 the leader while clients write; nothing acknowledged is lost, and the killed server catches up.
#[tokio::test(flavor = "multi_thread")]
async fn leader_kills_lose_no_acknowledged_write() -> Result<()> {
    let mut cluster = Cluster::start(3, &["--snapshot-logs", "200"]).await?;
    let addrs = cluster.addrs();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (addrs, acked, stop) = (addrs.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w{w}-{n}");
                n += 1;
                // Each write goes to the next server in turn; failures are simply not acknowledged.
                let addr = &addrs[n % addrs.len()];
                let req = CreateServiceRequest { spec: Some(spec(&name)), no_resolve_image: true };
                if client(addr).create_service(req).await.is_ok() {
                    acked.lock().map(|mut a| a.insert(name)).ok();
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leader = cluster.leader().await?;
        let before = acked.lock().map(|a| a.len()).unwrap_or(0);
        cluster.servers[leader].kill9();
        let new_leader = cluster.leader().await.with_context(|| cluster.logs())?;
        ensure!(new_leader != leader, "round {round}: a new leader takes over");
        wait_for(Duration::from_secs(30), "writes to resume", async || {
            (acked.lock().map(|a| a.len()).unwrap_or(0) > before).then_some(())
        })
        .await?;
        cluster.servers[leader].restart()?;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    cluster.wait_converged().await?;
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    ensure!(acked.len() > 50, "the writers made progress: {}", acked.len());
    for i in 0..3 {
        let held: BTreeSet<String> = cluster.local_services(i).await?.into_iter().collect();
        let lost: Vec<_> = acked.difference(&held).collect();
        ensure!(lost.is_empty(), "server {i} lost {} acknowledged writes: {lost:?}\n{}", lost.len(), cluster.logs());
    }
    Ok(())
}

/// Stop every server, start them with only their data dirs: state intact.
#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_restart_keeps_state() -> Result<()> {
    let mut cluster = Cluster::start(3, &[]).await?;
    for i in 0..20 {
        cluster.servers[i % 3]
            .client()
            .create_service(CreateServiceRequest { spec: Some(spec(&format!("keep-{i:02}"))), no_resolve_image: true })
            .await?;
    }
    for s in &mut cluster.servers {
        let status = s.stop()?;
        ensure!(status.success(), "SIGTERM gives a clean exit: {status}");
    }
    for s in &mut cluster.servers {
        s.restart()?;
    }
    cluster.leader().await?;
    let reply = cluster.servers[1].client().list_services(ListServicesRequest { stale: false }).await?.into_inner();
    ensure!(reply.services.len() == 20, "20 services after restart, got {}", reply.services.len());
    cluster.servers[2]
        .client()
        .create_service(CreateServiceRequest { spec: Some(spec("after-restart")), no_resolve_image: true })
        .await?;
    cluster.wait_converged().await?;
    for i in 0..3 {
        ensure!(cluster.local_services(i).await?.len() == 21, "server {i} has every service");
    }
    Ok(())
}

/// A member that joins after the log was compacted catches up from a snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn late_member_catches_up_from_snapshot() -> Result<()> {
    let opts = ["--snapshot-logs", "20", "--keep-logs", "0"];
    let mut cluster = Cluster::start(2, &opts).await?;
    for i in 0..60 {
        cluster.servers[0]
            .client()
            .create_service(CreateServiceRequest { spec: Some(spec(&format!("s{i:02}"))), no_resolve_image: true })
            .await?;
    }
    let st = cluster.servers[0].local_status().await?;
    ensure!(st.snapshot_index.is_some(), "the leader took a snapshot: {st:?}");
    // Its figures say what it built and what it proposed.
    let f = st.figures.clone().unwrap_or_default();
    ensure!(f.services == 60 && f.snapshot_bytes > 0 && f.proposals >= 60 && f.commit_ms_mean > 0.0, "{f:?}");
    let late = cluster.add_server(false, &opts)?;
    cluster.wait_for_voters(3).await?;
    cluster.wait_converged().await?;
    let st = cluster.servers[late].local_status().await?;
    ensure!(st.snapshot_index.is_some_and(|i| i >= 20), "the late member installed a snapshot: {st:?}");
    ensure!(cluster.local_services(late).await?.len() == 60, "the late member holds all 60 services");
    // And it keeps up afterwards.
    cluster.servers[late]
        .client()
        .create_service(CreateServiceRequest { spec: Some(spec("fresh")), no_resolve_image: true })
        .await?;
    cluster.wait_converged().await?;
    ensure!(cluster.local_services(late).await?.contains(&"fresh".to_string()));
    Ok(())
}

/// Two of three servers frozen: writes fail with a clear error, then succeed after SIGCONT.
#[tokio::test(flavor = "multi_thread")]
async fn no_quorum_fails_clearly_then_recovers() -> Result<()> {
    let mut cluster = Cluster::start(3, &["--request-timeout-ms", "3000"]).await?;
    let leader = cluster.leader().await?;
    // Freeze the leader and one follower; talk to the survivor.
    let other = (leader + 1) % 3;
    let survivor = (leader + 2) % 3;
    cluster.servers[leader].freeze()?;
    cluster.servers[other].freeze()?;
    let started = std::time::Instant::now();
    let err = cluster.servers[survivor]
        .client()
        .create_service(CreateServiceRequest { spec: Some(spec("no-quorum")), no_resolve_image: true })
        .await
        .expect_err("no quorum, no write");
    ensure!(started.elapsed() < Duration::from_secs(30), "the error comes back instead of hanging");
    ensure!(err.code() == Code::Unavailable && err.message().contains("majority"), "clear error: {err:?}");
    let addrs = cluster.addrs();
    let (ok, _, msg) =
        berthctl(&[addrs[survivor].clone()], &["service", "create", "--detach", "still-no", "--image", "busybox"])?;
    ensure!(!ok && msg.contains("majority"), "berthctl says what is wrong: {msg}");

    cluster.servers[leader].thaw()?;
    cluster.servers[other].thaw()?;
    wait_for(Duration::from_secs(30), "writes to succeed again", async || {
        let req = CreateServiceRequest { spec: Some(spec("quorum-back")), no_resolve_image: true };
        match cluster.servers[survivor].client().create_service(req).await {
            Ok(_) => Some(()),
            Err(e) if e.code() == Code::AlreadyExists => Some(()),
            Err(_) => None,
        }
    })
    .await?;
    let names =
        cluster.servers[survivor].client().list_services(ListServicesRequest { stale: false }).await?.into_inner();
    ensure!(
        names.services.iter().any(|s| s.spec.as_ref().is_some_and(|s| s.name == "quorum-back")),
        "the confirmed write is there (an unconfirmed one may or may not land): {names:?}"
    );
    Ok(())
}

/// Every invalid field is rejected by name and changes nothing; garbage on the port harms nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_rejected_and_harmless() -> Result<()> {
    let mut cluster = Cluster::start(3, &[]).await?;
    let mut c = cluster.servers[1].client();
    let res = |cpus, memory_bytes| Some(Resources { cpus, memory_bytes });
    let port = |published, target, protocol: &str| {
        vec![PortSpec { published, target, protocol: protocol.into(), ..Default::default() }]
    };
    let cases: Vec<(&str, ServiceSpec)> = vec![
        ("name", ServiceSpec { name: "Bad_Name".into(), ..spec("x") }),
        ("name", ServiceSpec { name: String::new(), ..spec("x") }),
        ("image", ServiceSpec { image: "UPPER/case".into(), ..spec("x") }),
        ("image", ServiceSpec { image: String::new(), ..spec("x") }),
        ("replicas", ServiceSpec { replicas: -1, ..spec("x") }),
        ("resources.cpus", ServiceSpec { resources: res(-1.0, 0), ..spec("x") }),
        ("resources.memory", ServiceSpec { resources: res(0.0, -1), ..spec("x") }),
        ("ports[0].published", ServiceSpec { ports: port(65536, 80, ""), ..spec("x") }),
        ("ports[0].target", ServiceSpec { ports: port(80, 0, ""), ..spec("x") }),
        ("ports[0].protocol", ServiceSpec { ports: port(80, 80, "icmp"), ..spec("x") }),
        ("ports[1].published", ServiceSpec { ports: [port(80, 80, ""), port(80, 81, "")].concat(), ..spec("x") }),
        ("restart", ServiceSpec { restart: "sometimes".into(), ..spec("x") }),
        ("env.", ServiceSpec { env: [(String::new(), "v".into())].into(), ..spec("x") }),
    ];
    for (field, bad) in cases {
        let err = c
            .create_service(CreateServiceRequest { spec: Some(bad.clone()), no_resolve_image: true })
            .await
            .expect_err("rejected");
        ensure!(err.code() == Code::InvalidArgument, "{field}: {err:?}");
        ensure!(err.message().contains(field), "{field} is named in {:?}", err.message());
        let err = c
            .apply_service(ApplyServiceRequest { spec: Some(bad), no_resolve_image: true })
            .await
            .expect_err("rejected");
        ensure!(err.code() == Code::InvalidArgument, "{field} via apply: {err:?}");
    }
    let err =
        c.create_service(CreateServiceRequest { spec: None, no_resolve_image: false }).await.expect_err("rejected");
    ensure!(err.code() == Code::InvalidArgument && err.message().contains("spec"), "{err:?}");
    let err = c.delete_service(DeleteServiceRequest { name: "../etc".into() }).await.expect_err("rejected");
    ensure!(err.code() == Code::InvalidArgument && err.message().contains("name"), "{err:?}");
    let list = c.list_services(ListServicesRequest { stale: false }).await?.into_inner();
    ensure!(list.services.is_empty(), "nothing was created: {:?}", list.services);

    // A spec file with an unknown field: berthctl names it and writes nothing.
    let file = cluster.dir.path().join("bad.yaml");
    std::fs::write(&file, "name: web\nimage: busybox\nreplica: 3\n")?;
    let (ok, _, err) = berthctl(&cluster.addrs(), &["apply", "--detach", "-f", file.to_str().unwrap_or_default()])?;
    ensure!(!ok && err.contains("replica"), "unknown field named: {err}");
    let (ok, _, err) = berthctl(
        &cluster.addrs(),
        &["service", "create", "--detach", "web", "--image", "busybox", "--memory", "lots"],
    )?;
    ensure!(!ok && err.contains("--memory"), "bad flag named: {err}");
    // A file whose second service is invalid writes neither.
    std::fs::write(&file, "name: first\nimage: busybox\n---\nname: second\nimage: busybox\nports: [\"80:99999\"]\n")?;
    let (ok, _, err) = berthctl(&cluster.addrs(), &["apply", "--detach", "-f", file.to_str().unwrap_or_default()])?;
    ensure!(!ok && err.contains("document 2") && err.contains("ports[0].target"), "{err}");
    let list = c.list_services(ListServicesRequest { stale: false }).await?.into_inner();
    ensure!(list.services.is_empty(), "a rejected file changes nothing: {:?}", list.services);

    // Random bytes, a truncated HTTP/2 preface and an oversized frame header at every server's port.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for s in &cluster.servers {
        for n in 0..20 {
            let mut stream = std::net::TcpStream::connect(&s.addr)?;
            stream.set_write_timeout(Some(Duration::from_secs(2)))?;
            let mut junk: Vec<u8> = match n % 3 {
                0 => (0..rng.gen_range(1..65536)).map(|_| rng.gen()).collect(),
                1 => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                _ => [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &[0xff, 0xff, 0xff, 0x00, 0x00, 0, 0, 0, 1]].concat(),
            };
            junk.extend((0..rng.gen_range(0..512)).map(|_| rng.gen::<u8>()));
            let _ = stream.write_all(&junk);
        }
    }
    for s in &cluster.servers {
        let st = s.local_status().await?;
        ensure!(st.leader_id.is_some(), "{} still works after garbage", s.addr);
    }
    c.create_service(CreateServiceRequest { spec: Some(spec("after-garbage")), no_resolve_image: true }).await?;
    ensure!(cluster.status().await?.members.len() == 3);
    for s in &mut cluster.servers {
        ensure!(s.is_running(), "{} survived", s.addr);
    }
    Ok(())
}

/// A server whose disk fills up stops with one line saying why, rather
/// than answering UNAVAILABLE forever; started again once there is room,
/// it has every write it acknowledged.
#[tokio::test]
async fn a_full_disk_stops_the_server_and_loses_nothing_acknowledged() -> Result<()> {
    let mut cluster = Cluster::prepare()?;
    let disk = berth_tests::disk::Tmpfs::mount(&cluster.server_dir(0), "6m")?;
    cluster.add_server(true, &[])?;
    cluster.founded().await?;
    cluster.wait_for_voters(1).await?;
    let addr = cluster.servers[0].addr.clone();

    let value = "x".repeat(6000);
    let mut acked = BTreeSet::new();
    let refused = loop {
        ensure!(acked.len() < 5000, "6 MiB never filled up");
        let name = format!("fill-{}", acked.len());
        let mut s = spec(&name);
        s.env = (0..8).map(|i| (format!("K{i}"), value.clone())).collect();
        match client(&addr).create_service(CreateServiceRequest { spec: Some(s), no_resolve_image: true }).await {
            Ok(_) => acked.insert(name),
            Err(e) => break e,
        };
    };
    ensure!(acked.len() > 5, "some writes fit: {}", acked.len());
    let status = wait_for(Duration::from_secs(60), "the server to exit", async || cluster.servers[0].exited())
        .await
        .map_err(|e| e.context(format!("refused with {refused:?}\n{}", cluster.logs())))?;
    ensure!(!status.success(), "it exits non-zero: {status}");
    // One line of its own says why (Raft's log lines may come around it).
    let log = cluster.servers[0].log_text();
    let said: Vec<&str> = log.lines().filter(|l| l.starts_with("berth-server: ")).collect();
    ensure!(said.len() == 1, "one line says why it stopped: {said:?}\n{log}");
    ensure!(
        said[0].starts_with("berth-server: Raft stopped:") && said[0].contains("No space left on device"),
        "{}",
        said[0]
    );
    ensure!(said[0].contains(&cluster.server_dir(0).display().to_string()), "and names the data dir: {}", said[0]);

    // Room again: it starts from what is on disk, with every write it acknowledged.
    disk.resize("64m")?;
    cluster.servers[0].restart()?;
    let held: BTreeSet<String> =
        wait_for(Duration::from_secs(60), "the server to serve again", async || cluster.local_services(0).await.ok())
            .await?
            .into_iter()
            .collect();
    let lost: Vec<_> = acked.difference(&held).collect();
    ensure!(lost.is_empty(), "lost {} acknowledged writes: {lost:?}", lost.len());
    // And it takes writes again.
    client(&addr).create_service(CreateServiceRequest { spec: Some(spec("after")), no_resolve_image: true }).await?;
    Ok(())
}

/// Whether any file under `dir` holds `needle`.
fn holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| match e.path() {
        p if p.is_dir() => holds(&p, needle),
        p => std::fs::read(&p).is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle)),
    })
}

/// The store is encrypted at rest: neither a service's environment nor the
/// cluster's root key is in the clear in raft.sled, the key is the owner's
/// alone, and a restart reads it all back.
#[tokio::test]
async fn the_store_on_disk_holds_no_secret_in_the_clear() -> Result<()> {
    let mut cluster = Cluster::start(1, &["--snapshot-logs", "5"]).await?;
    let addr = cluster.servers[0].addr.clone();
    for i in 0..8 {
        let mut s = spec(&format!("vault-{i}"));
        s.env.insert("PASSWORD".into(), "correct-horse-battery-staple".into());
        client(&addr).create_service(CreateServiceRequest { spec: Some(s), no_resolve_image: true }).await?;
    }
    cluster.servers[0].stop()?;
    let dir = cluster.server_dir(0);
    let store = dir.join("raft.sled");
    ensure!(store.is_dir(), "{}", store.display());
    ensure!(!holds(&store, b"correct-horse-battery-staple"), "a service's environment is in the clear");
    ensure!(!holds(&store, b"PRIVATE KEY"), "the root key is in the clear");
    ensure!(!holds(&store, b"vault-3"), "service names are in the clear");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("store.key"))?.permissions());
    ensure!(mode & 0o777 == 0o600, "store.key is {mode:o}");

    cluster.servers[0].restart()?;
    let held = wait_for(Duration::from_secs(60), "the server to serve again", async || {
        cluster.local_services(0).await.ok().filter(|s| s.len() == 8)
    })
    .await?;
    ensure!(held.contains(&"vault-7".to_owned()), "{held:?}");
    Ok(())
}

/// A leader with nothing to write beats quietly (`quiet`): its followers
/// take the promise and stand for nobody meanwhile; a write brings the
/// ordinary beat back at once; and a leader lost at rest is still replaced,
/// with nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_at_rest_beats_quietly_and_a_write_or_its_loss_ends_it() -> Result<()> {
    let mut cluster = Cluster::prepare()?;
    let metrics: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", berth_tests::free_port())).collect();
    for (i, m) in metrics.iter().enumerate() {
        cluster.add_server(i == 0, &["--metrics-listen", m])?;
        if i == 0 {
            cluster.founded().await?;
        }
    }
    cluster.wait_for_voters(3).await?;
    let gauge =
        |i: usize, name: &str| berth_tests::scrape(&metrics[i]).ok().and_then(|t| berth_tests::metric(&t, name));
    let quiet = |i: usize| gauge(i, "berth_raft_quiet_beat_ms");
    let create = |name: &str| CreateServiceRequest { spec: Some(spec(name)), no_resolve_image: true };
    cluster.servers[0].client().create_service(create("before")).await?;

    // Nothing written for a while: every server shows the leader's promise.
    wait_for(Duration::from_secs(30), "the leader to beat quietly, promised to all", async || {
        (0..3).all(|i| quiet(i) == Some(1000.0)).then_some(())
    })
    .await
    .with_context(|| cluster.logs())?;
    let term = |i: usize| gauge(i, "berth_raft_term");
    let terms: Vec<_> = (0..3).map(term).collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(
        (0..3).map(term).collect::<Vec<_>>() == terms,
        "no election at rest: terms {terms:?}, now {:?}\n{}",
        (0..3).map(term).collect::<Vec<_>>(),
        cluster.logs()
    );
    ensure!((0..3).all(|i| quiet(i) == Some(1000.0)), "still quiet after 5 s");

    // A write: the leader beats at the ordinary pace again (for at least 3 s after it).
    let leader = cluster.leader().await?;
    cluster.servers[(leader + 1) % 3].client().create_service(create("wakes")).await?;
    wait_for(Duration::from_secs(2), "a write to end the quiet beat", async || {
        (quiet(leader) == Some(0.0)).then_some(())
    })
    .await?;

    // Lost at rest: another leader, which takes writes, and nothing acknowledged is lost.
    wait_for(Duration::from_secs(30), "quiet again", async || (quiet(leader) == Some(1000.0)).then_some(())).await?;
    cluster.servers[leader].kill9();
    let next = cluster.leader().await.with_context(|| cluster.logs())?;
    ensure!(next != leader, "a new leader");
    cluster.servers[next].client().create_service(create("after")).await?;
    cluster.wait_converged().await?;
    let held = cluster.local_services(next).await?;
    ensure!(held == ["after", "before", "wakes"], "the new leader holds {held:?}");
    Ok(())
}
