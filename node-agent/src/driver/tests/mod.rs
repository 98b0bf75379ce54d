//! The real worker, in-process: a scripted cluster (`cluster`) on loopback
//! gRPC feeds it assignments and takes its reports, and fake containers,
//! images and network (`super::fake`) stand for the node.

mod cluster;

use std::sync::Arc;
use std::time::Duration;

use berth_proto::client::{self, Servers};
use berth_proto::pb::agent as pb;
use tokio::time::Instant;

use super::fake::{FakeContainers, FakeImages, FakeNetwork};
use super::{Settings, Worker};
use crate::network::plan::{Features, Kind};
use crate::runtime::Status;
use cluster::FakeCluster;

const GRACE: Duration = Duration::from_secs(2);

struct Node {
    containers: FakeContainers,
    network: FakeNetwork,
    /// What its heartbeats would have earned.
    lease: tokio::sync::watch::Sender<super::Leases>,
    worker: tokio::task::JoinHandle<()>,
    /// What its `/metrics` would show.
    stats: crate::stats::AgentStats,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

/// A worker watching `clusters` (in that order), with `containers` as the node has them.
fn node(clusters: &[&FakeCluster], containers: FakeContainers) -> Node {
    resting(clusters, containers, Duration::from_millis(50))
}

/// The same, looking every `rest` when nothing is under way.
fn resting(clusters: &[&FakeCluster], containers: FakeContainers, rest: Duration) -> Node {
    let settings = Settings {
        stop_grace: GRACE,
        tick: Duration::from_millis(50),
        rest,
        watch_deadline: Duration::from_secs(1),
        cgroup_parent: "berth-test".into(),
        dns_domain: Some("berth.local".into()),
        features: Features { overlay: false, dns: true },
        pids_limit: Some(64),
        init_path: "/usr/bin/tini-static".into(),
        fence_grace: Duration::from_millis(100),
        stats: crate::stats::AgentStats::default(),
    };
    let stats = settings.stats.clone();
    let network = FakeNetwork::default();
    let worker =
        Arc::new(Worker { containers: containers.clone(), images: FakeImages, network: network.clone(), settings });
    let addrs: Vec<String> = clusters.iter().map(|c| c.addr.clone()).collect();
    let connector = cluster::trust().1.connector(client::Peer::Server);
    let servers = Servers::new(&addrs, &client::Settings::calls(Duration::from_secs(2)), &connector).unwrap();
    let (lease, leased) = tokio::sync::watch::channel(super::Leases { heard: true, lease: None });
    Node { containers, network, lease, worker: tokio::spawn(worker.run("n1".into(), servers, leased)), stats }
}

fn task(id: &str, image: &str, restart: &str, address: &str) -> pb::AssignedTask {
    pb::AssignedTask {
        id: id.into(),
        image: image.into(),
        restart: restart.into(),
        address: address.into(),
        ..Default::default()
    }
}

fn assigned(tasks: Vec<pb::AssignedTask>) -> pb::AssignedTasks {
    pb::AssignedTasks {
        tasks,
        subnet: "198.19.1.0/24".into(),
        cluster_cidr: "198.19.0.0/16".into(),
        ..Default::default()
    }
}

/// Polls `f` until it answers, for at most 20 s (a bound against hangs only).
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The task's state in the cluster's last report, with its restarts.
fn reported(cluster: &FakeCluster, task: &str) -> Option<(String, u32)> {
    cluster.last_report().into_iter().find(|r| r.id == task).map(|r| (r.state, r.restarts))
}

fn is(cluster: &FakeCluster, task: &str, state: &str) -> bool {
    reported(cluster, task).is_some_and(|(s, _)| s == state)
}

/// Whether any report said so (a shutdown is told once, then the task leaves the reports).
fn told(cluster: &FakeCluster, task: &str, state: &str) -> bool {
    cluster.reports().iter().flatten().any(|r| r.id == task && r.state == state)
}

#[tokio::test]
async fn a_crashing_task_restarts_with_growing_pauses() {
    let cluster = FakeCluster::start(assigned(vec![task("c.1.1", "reg:5000/crash:1", "always", "")])).await;
    let n = node(&[&cluster], FakeContainers::default());
    let starts =
        eventually("five starts", || Some(n.containers.times("start", "c.1.1")).filter(|s| s.len() >= 5)).await;
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // The first restart at once, then 100, 200 and 400 ms at least (the
    // backoff's floor; a busy machine only makes them longer).
    for (gap, floor) in gaps.iter().zip([0, 100, 200, 400]) {
        assert!(*gap + Duration::from_millis(2) >= Duration::from_millis(floor), "{gaps:?}");
    }
    eventually("restarts reported", || reported(&cluster, "c.1.1").filter(|(_, r)| *r >= 3)).await;
    // Each start after the first was a restart, and each was timed.
    assert!(n.stats.restarts.get() >= 4, "restarts counted: {}", n.stats.restarts.get());
    assert_eq!(n.stats.start_failures.get(), 0);
    // The node's network followed the same assignment on its own loop.
    let kinds: Vec<Kind> = n.network.steps().iter().map(|s| s.kind()).collect();
    assert_eq!(kinds, [Kind::Bridge, Kind::Mesh, Kind::Dns, Kind::Zone]);
}

#[tokio::test]
async fn a_stop_grace_holds_back_no_other_start() {
    let stubborn = task("s.1.1", "reg:5000/stubborn:1", "always", "198.19.1.2");
    let cluster = FakeCluster::start(assigned(vec![stubborn])).await;
    let n = node(&[&cluster], FakeContainers::default());
    eventually("s.1.1 running", || is(&cluster, "s.1.1", "running").then_some(())).await;
    assert!(n.network.namespaces().contains("s.1.1"));
    // Scaled: s.1.1 goes (taking its 2 s grace), q.1.1 comes.
    cluster.assign(assigned(vec![task("q.1.1", "reg:5000/web:1", "always", "198.19.1.3")]));
    eventually("q.1.1 running", || is(&cluster, "q.1.1", "running").then_some(())).await;
    let started = n.containers.times("start", "q.1.1")[0];
    eventually("s.1.1 shut down", || told(&cluster, "s.1.1", "shutdown").then_some(())).await;
    let stopped = n.containers.times("exited", "s.1.1")[0];
    assert!(started < stopped, "q.1.1 started only once s.1.1 had stopped");
    assert!(stopped - n.containers.times("stop", "s.1.1")[0] >= GRACE, "s.1.1 had its grace");
    assert_eq!(n.containers.status("s.1.1"), None, "removed");
    assert!(!n.network.namespaces().contains("s.1.1"), "its namespace went with it");
}

#[tokio::test]
async fn a_task_with_its_own_ids_joins_the_user_namespace_made_with_its_network() {
    use crate::runtime::UserNamespace;
    let own = |id: &str, address: &str| pb::AssignedTask {
        userns: "auto".into(),
        ..task(id, "reg:5000/web:1", "always", address)
    };
    let tasks =
        vec![own("u.1.1", "198.19.1.2"), own("u.2.1", ""), task("h.1.1", "reg:5000/web:1", "always", "198.19.1.3")];
    let cluster = FakeCluster::start(assigned(tasks)).await;
    let n = node(&[&cluster], FakeContainers::default());
    for id in ["u.1.1", "u.2.1", "h.1.1"] {
        eventually("running", || is(&cluster, id, "running").then_some(())).await;
    }
    match n.containers.userns("u.1.1") {
        Some(UserNamespace::Joined { path, ids }) => {
            assert_eq!(path, std::path::Path::new("/fake/netns/users/u.1.1"));
            assert_eq!(ids.size, 65536);
        }
        other => panic!("u.1.1 does not join its sandbox's user namespace: {other:?}"),
    }
    // Without a network namespace made for it, the runtime claims its ids.
    assert_eq!(n.containers.userns("u.2.1"), Some(UserNamespace::Auto));
    assert_eq!(n.containers.userns("h.1.1"), Some(UserNamespace::Host));
}

#[tokio::test]
async fn a_lost_container_restarts_unless_its_policy_says_never() {
    let tasks = vec![task("l.1.1", "reg:5000/web:1", "on-failure", ""), task("n.1.1", "reg:5000/web:1", "never", "")];
    let cluster = FakeCluster::start(assigned(tasks)).await;
    let n = node(&[&cluster], FakeContainers::default());
    eventually("both running", || (is(&cluster, "l.1.1", "running") && is(&cluster, "n.1.1", "running")).then_some(()))
        .await;
    n.containers.lost("l.1.1");
    n.containers.lost("n.1.1");
    eventually("l.1.1 running again", || reported(&cluster, "l.1.1").filter(|r| *r == ("running".into(), 1))).await;
    eventually("n.1.1 failed", || is(&cluster, "n.1.1", "failed").then_some(())).await;
    let said = cluster.last_report().into_iter().find(|r| r.id == "n.1.1").unwrap();
    assert_eq!(said.message, "its shim died");
    assert_eq!(n.containers.times("start", "l.1.1").len(), 2);
    assert_eq!(n.containers.times("start", "n.1.1").len(), 1);
}

#[tokio::test]
async fn an_agent_restart_stops_nothing_before_the_cluster_speaks() {
    let cluster = FakeCluster::start(assigned(vec![
        task("a.1.1", "reg:5000/web:1", "always", ""),
        task("b.1.1", "reg:5000/web:1", "always", ""),
    ]))
    .await;
    cluster.go_silent();
    // Containers of the agent's last run: two still assigned, one not.
    let containers = FakeContainers::default();
    for t in ["a.1.1", "b.1.1", "old.1.1"] {
        containers.running(t, "reg:5000/web:1");
    }
    let n = node(&[&cluster], containers);
    eventually("a watch", || (cluster.watches() >= 1).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(n.containers.events().is_empty(), "{:?}", n.containers.events());
    assert!(cluster.reports().is_empty(), "nothing to say before the cluster has spoken");
    cluster.speak();
    eventually("old.1.1 shut down", || told(&cluster, "old.1.1", "shutdown").then_some(())).await;
    assert!(is(&cluster, "a.1.1", "running") && is(&cluster, "b.1.1", "running"));
    let touched: Vec<(&str, String)> = n.containers.events().into_iter().map(|(w, t, _)| (w, t)).collect();
    assert_eq!(
        touched,
        [("stop", "old.1.1".into()), ("exited", "old.1.1".into()), ("remove", "old.1.1".into())],
        "only what the cluster no longer wants is touched"
    );
    assert!(matches!(n.containers.status("a.1.1"), Some(Status::Running(_))));
}

#[tokio::test]
async fn a_container_that_ends_wakes_the_worker_found_running_or_started() {
    let cluster = FakeCluster::start(assigned(vec![task("a.1.1", "reg:5000/web:1", "always", "")])).await;
    let containers = FakeContainers::default();
    containers.running("a.1.1", "reg:5000/web:1");
    // No look at rest within the test, and the fake cluster's repeated list
    // changes nothing: only the container's end can wake it.
    let n = resting(&[&cluster], containers, Duration::from_secs(3600));
    eventually("a.1.1 running", || is(&cluster, "a.1.1", "running").then_some(())).await;
    // Found running (started before the agent): its shim dies.
    n.containers.lost("a.1.1");
    eventually("a.1.1 started again", || n.containers.times("start", "a.1.1").first().copied()).await;
    // Started by this agent: the same.
    eventually("its run watched", || n.containers.watched("a.1.1").then_some(())).await;
    n.containers.lost("a.1.1");
    eventually("a.1.1 started twice", || (n.containers.times("start", "a.1.1").len() == 2).then_some(())).await;
}

#[tokio::test]
async fn a_silent_server_is_left_for_another() {
    let one = FakeCluster::start(assigned(vec![task("x.1.1", "reg:5000/web:1", "always", "")])).await;
    let two = FakeCluster::start(assigned(vec![
        task("x.1.1", "reg:5000/web:1", "always", ""),
        task("y.1.1", "reg:5000/web:1", "always", ""),
    ]))
    .await;
    let n = node(&[&one, &two], FakeContainers::default());
    eventually("x.1.1 running", || is(&one, "x.1.1", "running").then_some(())).await;
    assert_eq!(two.watches(), 0);
    // Frozen: its stream stays open and says nothing more.
    one.go_silent();
    eventually("y.1.1 started, from the other server", || n.containers.times("start", "y.1.1").first().copied()).await;
    assert!(two.watches() >= 1);
    assert_eq!(n.containers.times("start", "x.1.1").len(), 1, "x.1.1 ran on undisturbed");
}

#[tokio::test]
async fn a_task_the_agent_cannot_take_is_told_failed_and_the_rest_goes_on() {
    let x = task("x.1.1", "reg:5000/web:1", "always", "");
    let cluster = FakeCluster::start(assigned(vec![x.clone()])).await;
    let n = node(&[&cluster], FakeContainers::default());
    eventually("x.1.1 running", || is(&cluster, "x.1.1", "running").then_some(())).await;
    // A policy this agent does not know (as from a newer server).
    cluster.assign(assigned(vec![x, task("w.1.1", "reg:5000/web:1", "sometimes", "")]));
    eventually("w.1.1 failed", || is(&cluster, "w.1.1", "failed").then_some(())).await;
    let said = cluster.last_report().into_iter().find(|r| r.id == "w.1.1").unwrap();
    assert!(said.message.contains("restart: \"sometimes\" is not valid"), "{}", said.message);
    assert!(n.containers.times("create", "w.1.1").is_empty(), "never started");
    assert!(is(&cluster, "x.1.1", "running") && n.containers.times("stop", "x.1.1").is_empty());
}

#[tokio::test]
async fn an_assignment_with_a_network_the_agent_cannot_take_changes_nothing() {
    let one = FakeCluster::start(assigned(vec![task("x.1.1", "reg:5000/web:1", "always", "")])).await;
    let two = FakeCluster::start(assigned(vec![
        task("x.1.1", "reg:5000/web:1", "always", ""),
        task("z.1.1", "reg:5000/web:1", "always", ""),
    ]))
    .await;
    let n = node(&[&one, &two], FakeContainers::default());
    eventually("x.1.1 running", || is(&one, "x.1.1", "running").then_some(())).await;
    // A subnet that is none, and x.1.1 left out: neither is taken.
    one.assign(pb::AssignedTasks { subnet: "nope".into(), ..assigned(vec![]) });
    eventually("z.1.1 started, from the other server", || n.containers.times("start", "z.1.1").first().copied()).await;
    assert!(n.containers.times("stop", "x.1.1").is_empty(), "x.1.1 was never stopped");
    let bridges: Vec<_> = n.network.steps().into_iter().filter(|s| s.kind() == Kind::Bridge).collect();
    assert_eq!(bridges.len(), 1, "the node's network was not touched: {bridges:?}");
}

#[tokio::test]
async fn an_unhealthy_task_is_told_and_replaced_and_a_healthy_one_is_told_healthy() {
    let checked = |id: &str| pb::AssignedTask {
        overrides: Some(berth_proto::pb::cluster::Overrides {
            health: Some(
                berth_proto::model::Health {
                    probe: Some(berth_proto::model::Probe::Tcp { port: 80 }),
                    interval_ms: Some(100),
                    retries: Some(2),
                    ..Default::default()
                }
                .to_pb(),
            ),
            ..Default::default()
        }),
        ..task(id, "reg:5000/web:1", "always", "198.19.1.2")
    };
    let cluster = FakeCluster::start(assigned(vec![checked("h.1.1")])).await;
    let n = node(&[&cluster], FakeContainers::default());
    let health = |c: &FakeCluster| c.last_report().into_iter().find(|r| r.id == "h.1.1").map(|r| r.health);
    eventually("healthy", || (health(&cluster)? == "healthy").then_some(())).await;
    n.containers.sick("h.1.1", true);
    eventually("replaced", || (n.containers.times("start", "h.1.1").len() >= 2).then_some(())).await;
    // Told unhealthy, or (the fake stops at once, and a newer report
    // replaces one not yet sent) told why it restarted.
    let why = "unhealthy after 2 failed probes: fake: sick";
    let said = |r: &pb::TaskReport| r.message == why || r.message == format!("restarted: {why}");
    eventually("told why", || cluster.reports().iter().flatten().any(said).then_some(())).await;
    assert!(!n.containers.times("stop", "h.1.1").is_empty(), "stopped (its grace), not killed outright");
    eventually("restart counted", || reported(&cluster, "h.1.1").filter(|(_, r)| *r >= 1)).await;
    let probes = |result| n.stats.probes.get_or_create(&[("result", result)]).get();
    assert!(
        probes("ok") >= 1 && probes("failed") >= 2,
        "probes counted: {} ok, {} failed",
        probes("ok"),
        probes("failed")
    );
    assert!(n.stats.restarts.get() >= 1);
}

#[tokio::test]
async fn the_nodes_volumes_are_told_once_the_cluster_knows_other_ones() {
    let mount = berth_proto::pb::cluster::Mount {
        r#type: "volume".into(),
        source: "data-{{.Task.Slot}}".into(),
        target: "/data".into(),
        ..Default::default()
    };
    let options = berth_proto::pb::cluster::Options { mounts: vec![mount], ..Default::default() };
    let overrides = berth_proto::pb::cluster::Overrides { options: Some(options), ..Default::default() };
    let db = pb::AssignedTask { overrides: Some(overrides), ..task("db.2.1", "reg:5000/db:1", "always", "") };
    // The cluster has heard of no volume of this node: an empty list is told at once.
    let cluster = FakeCluster::start(assigned(vec![])).await;
    let n = node(&[&cluster], FakeContainers::default());
    eventually("the empty list told", || (cluster.volume_reports() == [Vec::<String>::new()]).then_some(())).await;
    // The task's container makes its slot's volume; the node tells the new list.
    let mut with_db = assigned(vec![db]);
    (with_db.volumes_known, with_db.volumes) = (true, vec![]);
    cluster.assign(with_db);
    eventually("data-2 told", || cluster.volume_reports().last().filter(|v| *v == &["data-2"]).cloned()).await;
    // Once the cluster's list agrees, nothing more is told (not even when
    // the same list could be told again).
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(cluster.volume_reports().len(), 2, "{:?}", cluster.volume_reports());
    drop(n);
}

#[tokio::test]
async fn an_exclusive_task_runs_only_while_a_lease_names_it() {
    let mount = berth_proto::pb::cluster::Mount {
        r#type: "volume".into(),
        source: "data".into(),
        target: "/data".into(),
        exclusive: true,
        ..Default::default()
    };
    let options = berth_proto::pb::cluster::Options { mounts: vec![mount], ..Default::default() };
    let overrides = berth_proto::pb::cluster::Overrides { options: Some(options), ..Default::default() };
    let db = pb::AssignedTask { overrides: Some(overrides), ..task("db.1.1", "reg:5000/db:1", "always", "") };
    let web = task("web.1.1", "reg:5000/web:1", "always", "");
    let cluster = FakeCluster::start(assigned(vec![db, web])).await;
    let n = node(&[&cluster], FakeContainers::default());
    // No lease: the other task starts, the exclusive one does not.
    eventually("web running", || is(&cluster, "web.1.1", "running").then_some(())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(n.containers.times("start", "db.1.1").is_empty(), "started without a lease");
    // A lease that names it: it starts.
    let lease = |ms: u64, names: &[&str]| super::Leases {
        heard: true,
        lease: Some(super::Lease {
            until: berth_monitor::lease::now_ns() + ms * 1_000_000,
            exclusive: names.iter().map(|s| (*s).to_owned()).collect(),
        }),
    };
    n.lease.send_replace(lease(60_000, &["db.1.1"]));
    eventually("db running", || is(&cluster, "db.1.1", "running").then_some(())).await;
    // The lease lapses: it is stopped (kept), the other task runs on.
    // (It lapses half a second early: the fence's grace comes out of it.)
    n.lease.send_replace(lease(700, &["db.1.1"]));
    eventually("db fenced", || (!n.containers.times("fence", "db.1.1").is_empty()).then_some(())).await;
    assert!(n.containers.times("stop", "web.1.1").is_empty() && n.containers.times("remove", "db.1.1").is_empty());
    // A lease that no longer names it (the leader moved it) starts nothing.
    n.lease.send_replace(lease(60_000, &[]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(n.containers.times("start", "db.1.1").len(), 1);
    // Named again: it runs again.
    n.lease.send_replace(lease(60_000, &["db.1.1"]));
    eventually("db started again", || (n.containers.times("start", "db.1.1").len() == 2).then_some(())).await;
}

#[tokio::test]
async fn deltas_add_and_remove_tasks_on_the_whole_list_they_follow() {
    let cluster = FakeCluster::start(assigned(vec![task("a.1.1", "reg:5000/web:1", "always", "")])).await;
    let n = node(&[&cluster], FakeContainers::default());
    eventually("a.1.1 running", || is(&cluster, "a.1.1", "running").then_some(())).await;
    // A delta names only what is new: a.1.1 stays.
    let add = pb::AssignedTasks { delta: true, ..assigned(vec![task("b.1.1", "reg:5000/web:1", "always", "")]) };
    cluster.assign(add);
    eventually("b.1.1 running", || is(&cluster, "b.1.1", "running").then_some(())).await;
    assert!(is(&cluster, "a.1.1", "running"));
    assert_eq!(n.containers.times("start", "a.1.1").len(), 1, "a.1.1 left alone");
    // One that takes a.1.1 away: only a.1.1 stops.
    cluster.assign(pb::AssignedTasks { delta: true, removed_tasks: vec!["a.1.1".into()], ..assigned(vec![]) });
    eventually("a.1.1 shut down", || told(&cluster, "a.1.1", "shutdown").then_some(())).await;
    assert!(is(&cluster, "b.1.1", "running"));
    assert!(n.containers.times("stop", "b.1.1").is_empty());
}
