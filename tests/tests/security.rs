//! Every port is mutual TLS and every call is authorised by the caller's
//! certificate: real berth-server and berth-agent processes, real
//! handshakes, and the clients a stranger, a worker node or a user with
//! too little access would use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use anyhow::{Context as _, Result};
use berth_proto::client::{self, Peer, Settings, Tls};
use berth_proto::pb::agent::agent_client::AgentClient;
use berth_proto::pb::agent::node_client::NodeClient;
use berth_proto::pb::agent::*;
use berth_proto::pb::cluster::{CreateServiceRequest, JoinTokenRequest, ListServicesRequest};
use berth_proto::pb::raft::raft_client::RaftClient;
use berth_proto::pb::raft::Payload;
use berth_proto::pki::{Ca, Credentials, Role};
use berth_tests::agent::Agent;
use berth_tests::{berthctl, berthctl_as, client_as, keys, spec, wait_for, Cluster};
use tonic::transport::Channel;
use tonic::Code;

const DAY: Duration = Duration::from_secs(86_400);

fn channel(addr: &str, tls: &Tls, peer: Peer) -> Channel {
    client::channel(addr, &Settings::calls(Duration::from_secs(10)), &tls.connector(peer)).unwrap()
}

/// What anyone holding a token can get: a certificate of the token's role.
async fn join(addr: &str, token: &str, role: Role) -> Result<Credentials, tonic::Status> {
    match berth_proto::join::admit(&[addr.to_owned()], token, role, Duration::from_secs(30)).await {
        Ok((_, creds)) => Ok(creds),
        Err(berth_proto::join::AdmitError::Refused(status)) => Err(status),
        Err(e) => panic!("no answer to the join: {e}"),
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(s) => (s.code(), client::reason(&s)),
    }
}

#[tokio::test]
async fn strangers_and_workers_are_refused_on_every_port() -> Result<()> {
    let cluster = Cluster::start(1, &[]).await?;
    let server = cluster.servers[0].addr.clone();
    let worker_token = keys().worker_token.unwrap();
    // One real agent, for its node API.
    let agent = Agent::new(None);
    let agent_addr = format!("127.0.0.1:{}", berth_tests::free_port());
    let mut daemon = agent.join_at(&cluster.addrs(), "sec1", &agent_addr, &[])?;
    wait_for(Duration::from_secs(60), "the agent to register", async || {
        let (_, out, _) = berthctl(&cluster.addrs(), &["node", "ls"]).ok()?;
        out.contains(" ready ").then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {}", agent.daemon_log()))?;

    // No certificate at all: the handshake itself requires one ...
    let pinned = Tls::pinned(&worker_token.parse::<berth_proto::pki::JoinToken>().unwrap().digest).unwrap();
    let (_, why) = code(client_as(&server, &pinned).list_services(ListServicesRequest::default()).await);
    // (the server's alert, or its closing the connection, whichever the client reads first)
    assert!(why.contains("CertificateRequired") || why.contains("closed"), "{why}");
    // ... and a joining connection may only join.
    let mut joining =
        berth_proto::pb::cluster::cluster_client::ClusterClient::new(channel(&server, &pinned, Peer::Join));
    assert_eq!(code(joining.list_services(ListServicesRequest::default()).await).0, Code::Unauthenticated);
    let mut raft = RaftClient::new(channel(&server, &pinned, Peer::Join));
    assert_eq!(code(raft.vote(Payload { json: b"{}".to_vec() }).await).0, Code::Unauthenticated);

    // A certificate from another root, even naming this cluster.
    let cluster_id = berth_tests::tls_of(&keys().admin_conf)?.identity().unwrap().cluster;
    let other = Ca::new(&cluster_id)?;
    let forged = Tls::new(&other.credentials(&cluster_id, Role::Server, "evil", DAY, &other.cert)?)?;
    assert!(client_as(&server, &forged).list_services(ListServicesRequest::default()).await.is_err());
    assert!(NodeClient::new(channel(&agent_addr, &forged, Peer::Worker))
        .task_logs(TaskLogsRequest { service: "web".into(), ..Default::default() })
        .await
        .is_err());

    // A worker: its own node's calls only.
    let worker = Tls::new(&join(&server, &worker_token, Role::Worker).await?)?;
    let me = worker.identity().unwrap().name;
    let (c, why) = code(client_as(&server, &worker).list_services(ListServicesRequest::default()).await);
    assert_eq!(c, Code::PermissionDenied, "{why}");
    let mut raft = RaftClient::new(channel(&server, &worker, Peer::Server));
    let (c, why) = code(raft.vote(Payload { json: b"{}".to_vec() }).await);
    assert!(c == Code::PermissionDenied && why.contains("only servers"), "{why}");
    let (c, _) = code(raft.forward(Payload { json: b"{}".to_vec() }).await);
    assert_eq!(c, Code::PermissionDenied);
    let mut as_agent = AgentClient::new(channel(&server, &worker, Peer::Server));
    let victim = berthctl(&cluster.addrs(), &["node", "inspect", "sec1", "-o", "json"])?.1;
    let victim: serde_json::Value = serde_json::from_str(&victim)?;
    let victim = victim["node"]["id"].as_str().or(victim["id"].as_str()).expect("a node id").to_owned();
    let register = RegisterRequest {
        node_id: victim.clone(),
        name: "sec1".into(),
        advertise_address: "127.0.0.1:1".into(),
        capacity: Some(NodeCapacity { cpu_millis: 1000, memory_bytes: 1 << 30 }),
        wireguard_public_key: "A".repeat(43) + "=",
        wireguard_port: 51820,
        ..Default::default()
    };
    let (c, why) = code(as_agent.register(register.clone()).await);
    assert!(c == Code::PermissionDenied && why.contains("only as itself"), "{why}");
    let (c, _) = code(as_agent.watch_tasks(WatchTasksRequest { node_id: victim.clone(), ..Default::default() }).await);
    assert_eq!(c, Code::PermissionDenied);
    let (c, _) = code(as_agent.heartbeat(HeartbeatRequest { node_id: victim.clone(), ..Default::default() }).await);
    assert_eq!(c, Code::PermissionDenied);
    let (c, _) = code(as_agent.report_tasks(ReportTasksRequest { node_id: victim.clone(), tasks: vec![] }).await);
    assert_eq!(c, Code::PermissionDenied);
    // As itself it is fine: its id is the one its certificate names.
    let mine = RegisterRequest { node_id: String::new(), name: "sec2".into(), ..register };
    assert_eq!(as_agent.register(mine).await?.into_inner().node_id, me);
    // An agent's log API answers servers only.
    let (c, why) = code(
        NodeClient::new(channel(&agent_addr, &worker, Peer::Worker))
            .task_logs(TaskLogsRequest { service: "web".into(), ..Default::default() })
            .await,
    );
    assert!(c == Code::PermissionDenied && why.contains("only servers"), "{why}");
    // A server holds at most 256 log streams open on a node at once.
    let creds = Credentials::load(&cluster.servers[0].data_dir.join("tls"))?;
    let as_server = Tls::new(&creds.context("the server's credentials")?)?;
    let follow = TaskLogsRequest { service: "web".into(), follow: true, ..Default::default() };
    let one_connection = channel(&agent_addr, &as_server, Peer::Worker);
    let mut streams = Vec::new();
    for _ in 0..256 {
        streams.push(NodeClient::new(one_connection.clone()).task_logs(follow.clone()).await?.into_inner());
    }
    let another = || NodeClient::new(channel(&agent_addr, &as_server, Peer::Worker));
    let (c, why) = code(another().task_logs(follow.clone()).await);
    assert!(c == Code::ResourceExhausted && why.contains("at most 256 at a time"), "{why}");
    drop(streams);
    wait_for(Duration::from_secs(30), "the streams given back", async || {
        another().task_logs(follow.clone()).await.ok()
    })
    .await?;

    // openssl agrees: TLS 1.3 that wants a client certificate, on both ports.
    for addr in [&server, &agent_addr] {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", addr, "-tls1_3"])
            .stdin(std::process::Stdio::null())
            .output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("TLSv1.3"), "{addr}: {text}");
        assert!(
            text.contains("certificate required") || text.contains("Acceptable client certificate CA names"),
            "{addr}: {text}"
        );
    }
    // Random bytes on both ports disturb nobody.
    for addr in [&server, &agent_addr] {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr)?;
        let junk: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let _ = s.write_all(&junk);
    }
    let (ok, out, err) = berthctl(&cluster.addrs(), &["node", "ls"])?;
    assert!(ok && out.contains("sec1"), "{out}{err}");
    // Data dirs (keys, state, layers) are the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cluster.servers[0].data_dir), 0o700);
    assert_eq!(mode(agent.data.path()), 0o700);
    assert!(daemon.is_running(), "the agent survived: {}", agent.daemon_log());
    daemon.stop(Duration::from_secs(10))?;
    Ok(())
}

#[tokio::test]
async fn tokens_admit_their_role_and_users_get_only_their_roles_rights() -> Result<()> {
    let cluster = Cluster::start(1, &[]).await?;
    let addrs = cluster.addrs();
    let server = addrs[0].clone();
    let keys = keys();
    let worker_token = keys.worker_token.clone().unwrap();

    // The printed join command carries the token; -q prints only it.
    let (ok, out, _) = berthctl(&addrs, &["cluster", "join-token", "worker"])?;
    assert!(ok && out.contains(&format!("berth-agent --server {server} --token {worker_token}")), "{out}");
    let (_, quiet, _) = berthctl(&addrs, &["cluster", "join-token", "worker", "-q"])?;
    assert_eq!(quiet.trim(), worker_token);

    // A worker token does not make a server, nor the reverse.
    let (c, why) = code(join(&server, &worker_token, Role::Server).await);
    assert!(c == Code::PermissionDenied && why.contains("this is a worker join token"), "{why}");
    // Rotation: the old token is refused at once, the new one works.
    let (ok, out, err) = berthctl(&addrs, &["cluster", "join-token", "worker", "--rotate", "-q"])?;
    assert!(ok, "{err}");
    let (c, why) = code(join(&server, &worker_token, Role::Worker).await);
    assert!(c == Code::PermissionDenied && why.contains("rotated"), "{why}");
    join(&server, out.trim(), Role::Worker).await?;
    // An agent with a rotated token exits with the reason and keeps nothing.
    let agent = Agent::new(None);
    let ran = agent
        .command(&["--server", &server, "--name", "late", "--advertise", "127.0.0.1:1", "--token", &worker_token])
        .output()?;
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(!ran.status.success() && stderr.contains("refused to admit this node"), "{stderr}");
    assert!(!agent.data.path().join("tls").exists(), "a refused join leaves no certificate");

    // Roles.
    let dir = tempfile::tempdir()?;
    let mut confs = std::collections::BTreeMap::new();
    for role in ["read", "operator"] {
        let (ok, out, err) = berthctl(&addrs, &["user", "add", &format!("{role}er"), "--role", role])?;
        assert!(ok, "{err}");
        let conf = dir.path().join(role);
        std::fs::write(&conf, out)?;
        confs.insert(role, conf);
    }
    let as_user = |role: &str, args: &[&str]| berthctl_as(&confs[role], &addrs, args).unwrap();
    let (ok, _, err) = as_user("read", &["service", "create", "--detach", "web", "--image", "busybox:1.36"]);
    assert!(!ok && err.contains("needs the operator role"), "{err}");
    let (ok, _, err) = as_user("read", &["service", "ls"]);
    assert!(ok, "{err}");
    let (ok, _, err) = as_user("operator", &["service", "create", "--detach", "web", "--image", "busybox:1.36"]);
    assert!(ok, "{err}");
    let (ok, _, err) = as_user("operator", &["user", "add", "mallory", "--role", "admin"]);
    assert!(!ok && err.contains("needs the admin role"), "{err}");
    let (ok, _, err) = as_user("operator", &["node", "drain", "nonode"]);
    assert!(!ok && err.contains("needs the admin role"), "{err}");
    let (ok, _, err) = as_user("operator", &["cluster", "join-token", "worker"]);
    assert!(!ok && err.contains("needs the admin role"), "{err}");
    let (_, out, _) = berthctl(&addrs, &["user", "ls"])?;
    assert!(out.contains("reader") && out.contains("operatorer") && out.contains("admin"), "{out}");
    // Removal takes effect at once.
    let (ok, _, err) = berthctl(&addrs, &["user", "rm", "operatorer"])?;
    assert!(ok, "{err}");
    let (ok, _, err) = as_user("operator", &["service", "ls"]);
    assert!(!ok && err.contains("not a user of this cluster"), "{err}");
    // The last admin stays.
    let (ok, _, err) = berthctl(&addrs, &["user", "rm", "admin"])?;
    assert!(!ok && err.contains("last admin"), "{err}");
    // The gRPC view agrees with berthctl's.
    let mut admin = client_as(&server, &keys.admin);
    admin.create_service(CreateServiceRequest { spec: Some(spec("api")), no_resolve_image: true }).await?;
    let token = admin.join_token(JoinTokenRequest { role: "bogus".into(), rotate: false }).await;
    assert!(code(token).1.contains("expected worker or server"));

    // Bounds: a request past the server's limit (1.5 MiB) is refused naming
    // it; a spec within it but past a field's limit names the field.
    let mut huge = spec("huge");
    huge.env.insert("BIG".into(), "x".repeat(2 << 20));
    let (c, why) = code(admin.create_service(CreateServiceRequest { spec: Some(huge), no_resolve_image: true }).await);
    assert!(matches!(c, Code::OutOfRange | Code::ResourceExhausted) && why.contains("1572864"), "{c:?} {why}");
    let mut fat = spec("fat");
    fat.env.insert("FAT".into(), "x".repeat(64 << 10));
    let (c, why) = code(admin.create_service(CreateServiceRequest { spec: Some(fat), no_resolve_image: true }).await);
    assert!(c == Code::InvalidArgument && why.contains("env.FAT") && why.contains("at most 32768 bytes"), "{why}");
    // Ports the hosts use are not for services.
    let (ok, _, err) =
        berthctl(&addrs, &["service", "create", "--detach", "ssh", "--image", "busybox:1.36", "--publish", "22:22"])?;
    assert!(!ok && err.contains("22/tcp cannot be published") && err.contains("1024-65535"), "{err}");
    let listed = admin.list_services(ListServicesRequest::default()).await?.into_inner().services;
    let names: Vec<String> = listed.into_iter().filter_map(|s| s.spec.map(|s| s.name)).collect();
    assert!(names.contains(&"api".to_owned()) && !names.iter().any(|n| n == "huge" || n == "fat"), "{names:?}");
    Ok(())
}

#[tokio::test]
async fn a_caller_holds_at_most_its_share_of_open_watches() -> Result<()> {
    use berth_proto::pb::cluster::EventsRequest;
    let cluster = Cluster::start(1, &["--max-watches-per-caller", "3"]).await?;
    let addrs = cluster.addrs();
    let mut admin = berth_tests::client(&addrs[0]);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(admin.events(EventsRequest::default()).await?.into_inner());
    }
    let (c, why) = code(admin.events(EventsRequest::default()).await);
    assert_eq!(c, Code::ResourceExhausted, "{why}");
    assert!(why.contains("already has 3 open log streams and event watches: at most 3 at a time"), "{why}");
    let logs = berth_proto::pb::cluster::ServiceLogsRequest { service: "none".into(), follow: true, tail: -1 };
    assert_eq!(admin.service_logs(logs).await.unwrap_err().code(), Code::ResourceExhausted, "logs count too");

    // Another user has a share of its own.
    let (ok, out, err) = berthctl(&addrs, &["user", "add", "watcher", "--role", "read"])?;
    assert!(ok, "{err}");
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("conf"), out)?;
    let mut watcher = client_as(&addrs[0], &berth_tests::tls_of(&dir.path().join("conf"))?);
    let _theirs = watcher.events(EventsRequest::default()).await?;

    // Hanging up one gives its place back.
    open.pop();
    wait_for(Duration::from_secs(30), "the dropped watch to be given back", async || {
        admin.events(EventsRequest::default()).await.ok()
    })
    .await?;
    Ok(())
}

/// `berthctl cluster unlock` at `servers`, given `key` on stdin.
fn unlock(servers: &[String], key: &str) -> Result<(bool, String)> {
    use std::io::Write;
    let mut child = std::process::Command::new(berth_tests::bin("berthctl"))
        .env("BERTH_CONFIG", keys().admin_conf)
        .env("BERTH_SERVER", servers.join(","))
        .args(["cluster", "unlock"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(format!("{key}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

/// Restarts server `i` and waits for it to say it is locked.
async fn restart_locked(cluster: &mut Cluster, i: usize) -> Result<()> {
    cluster.servers[i].stop()?;
    cluster.servers[i].restart()?;
    wait_for(Duration::from_secs(30), &format!("server {i} to say it is locked"), async || {
        cluster.servers[i].log_text().contains("the store is locked (autolock)").then_some(())
    })
    .await
}

/// Autolock: every server's store key is sealed by an unlock key no server
/// keeps; a restarted server is locked (clients pass it by) until given
/// the key; a rotated key replaces the old; off, servers start alone.
#[tokio::test]
async fn autolock_keeps_a_restarted_server_locked_until_it_is_given_the_key() -> Result<()> {
    let mut cluster = Cluster::start(3, &[]).await?;
    let addrs = cluster.addrs();
    let dirs: Vec<_> = (0..3).map(|i| cluster.server_dir(i)).collect();
    let key_file = |i: usize| std::fs::read_to_string(dirs[i].join("store.key")).unwrap_or_default();
    let (ok, _, err) = berthctl(&addrs, &["cluster", "unlock-key"])?;
    assert!(!ok && err.contains("autolock is off"), "{err}");
    let (ok, out, err) = berthctl(&addrs, &["cluster", "autolock", "on"])?;
    assert!(ok, "{err}");
    let key = out.split_whitespace().find(|w| w.starts_with("BERTH-UNLOCK-1-")).context("no key printed")?.to_owned();
    let (_, quiet, _) = berthctl(&addrs, &["cluster", "unlock-key", "-q"])?;
    assert_eq!(quiet.trim(), key);
    let (ok, _, err) = berthctl(&addrs, &["service", "create", "--detach", "locked-in", "--image", "busybox:1.36"])?;
    assert!(ok, "{err}");
    wait_for(Duration::from_secs(30), "every server's store key sealed", async || {
        (0..3).all(|i| key_file(i).contains("\"sealed\"")).then_some(())
    })
    .await?;

    // Restarted, server 2 is locked: clients pass it by, as a server that is down.
    restart_locked(&mut cluster, 2).await?;
    let first_the_locked = [addrs[2].clone(), addrs[0].clone(), addrs[1].clone()];
    let (ok, out, err) = berthctl(&first_the_locked, &["service", "ls"])?;
    assert!(ok && out.contains("locked-in"), "{out}{err}");
    let (ok, _, err) = berthctl(&addrs[2..], &["service", "ls"])?;
    assert!(!ok && err.contains("locked by autolock"), "a locked server answers nothing: {err}");
    let (ok, said) = unlock(&addrs[2..], &format!("BERTH-UNLOCK-1-{}", "0".repeat(64)))?;
    assert!(!ok && said.contains("that unlock key does not open"), "{said}");
    let (ok, said) = unlock(&addrs, &key)?;
    assert!(ok && said.contains(&format!("{}: unlocked", addrs[2])), "{said}");
    assert!(said.contains(&format!("{}: this server is not locked", addrs[0])), "{said}");
    wait_for(Duration::from_secs(60), "server 2 to serve its state", async || {
        cluster.local_services(2).await.ok().filter(|s| s.contains(&"locked-in".to_owned()))
    })
    .await
    .with_context(|| cluster.servers[2].log_text())?;

    // A new key: the old one opens nothing.
    let before = key_file(1);
    let (ok, out, err) = berthctl(&addrs, &["cluster", "unlock-key", "--rotate", "-q"])?;
    assert!(ok, "{err}");
    let new_key = out.trim().to_owned();
    assert!(new_key != key && new_key.starts_with("BERTH-UNLOCK-1-"), "{new_key}");
    wait_for(Duration::from_secs(30), "server 1's store key resealed", async || (key_file(1) != before).then_some(()))
        .await?;
    restart_locked(&mut cluster, 1).await?;
    let (ok, said) = unlock(&addrs[1..2], &key)?;
    assert!(!ok && said.contains("does not open"), "{said}");
    let (ok, said) = unlock(&addrs[1..2], &new_key)?;
    assert!(ok, "{said}");
    wait_for(Duration::from_secs(60), "server 1 to serve", async || cluster.local_services(1).await.ok()).await?;

    // Off: store keys in the clear again, and a restart needs nobody.
    let (ok, _, err) = berthctl(&addrs, &["cluster", "autolock", "off"])?;
    assert!(ok, "{err}");
    wait_for(Duration::from_secs(30), "every store key in the clear", async || {
        (0..3).all(|i| key_file(i).contains("\"key\"")).then_some(())
    })
    .await?;
    cluster.servers[0].stop()?;
    cluster.servers[0].restart()?;
    wait_for(Duration::from_secs(60), "server 0 to serve without a key", async || {
        cluster.local_services(0).await.ok().filter(|s| s.contains(&"locked-in".to_owned()))
    })
    .await?;
    Ok(())
}
