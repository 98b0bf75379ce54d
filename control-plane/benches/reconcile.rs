//! The leader's placing loop without Raft: a reconcile pass over a large
//! state, and the apply of what it decides. At 1000 nodes and 100,000
//! tasks (berth-sim's size, issue 19) placing is bounded by how many tasks
//! a pass writes and how long a pass and its apply take.
//! `cargo bench -p berth-control-plane --bench reconcile`.
//!
//! The state: 1000 ready nodes, 99 services of 1000 replicas placed and
//! running, and one new service of 1000 replicas that no pass has seen.
//! Before timing it prints what the pass decides and how many bytes its
//! Raft entry takes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]

use berth_control_plane::reconciler::reconcile;
use berth_control_plane::state::{apply, Command, Proposal, State, TaskChange};
use berth_proto::model::{
    Availability, NetworkConfig, Node, NodeStatus, Resources, ServiceSpec, TaskReport, TaskState,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const NODES: usize = 1000;
const SERVICES: usize = 100;
const REPLICAS: u32 = 1000;

/// A service as berth-sim asks for it, through the API's own conversion.
fn service(k: usize) -> ServiceSpec {
    let spec = berth_proto::pb::cluster::ServiceSpec {
        name: format!("sim{k}"),
        image: "busybox:1.36".into(),
        replicas: i64::from(REPLICAS),
        ..Default::default()
    };
    berth_proto::convert::spec_from_request(Some(spec)).expect("a valid spec")
}

/// Reconciles and applies until nothing changes, then reports every placed task running.
fn settle(state: &mut State, now: &mut u64) {
    loop {
        *now += 1;
        let decided = reconcile(state, *now);
        if decided.changes.is_empty() {
            break;
        }
        apply(state, &Command::Reconcile { changes: decided.changes, at_ms: *now, rollouts: vec![] });
    }
    let mut by_node: std::collections::BTreeMap<String, Vec<TaskReport>> = Default::default();
    for t in state.tasks.values().filter(|t| t.state == TaskState::Assigned) {
        let report = TaskReport {
            id: t.id.clone(),
            state: TaskState::Running,
            exit_code: None,
            restarts: 0,
            message: String::new(),
            health: None,
        };
        by_node.entry(t.node.clone().unwrap()).or_default().push(report);
    }
    for (node, reports) in by_node {
        apply(state, &Command::ReportTasks { node, reports, at_ms: *now });
    }
}

/// The state above, and the time its last change was made at.
fn cluster() -> (State, u64) {
    let mut state = State::default();
    let network = NetworkConfig { cidr: "198.18.0.0/15".parse().unwrap(), node_prefix: 25, ..NetworkConfig::DEFAULT };
    apply(&mut state, &Command::InitNetwork(network));
    for i in 0..NODES {
        let node = Node {
            // As random as the ids agents are given (a shared prefix makes every comparison longer).
            id: format!("{:016x}", (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            name: format!("sim-{i}"),
            address: format!("198.18.{}.{}:7001", i / 250, i % 250 + 1),
            labels: Default::default(),
            capacity: Resources { cpu_millis: 64_000, memory_bytes: 256 << 30 },
            status: NodeStatus::Ready,
            availability: Availability::Active,
            subnet: None,
            overlay: None,
            reads: berth_proto::model::AGENT_READS,
        };
        apply(&mut state, &Command::RegisterNode(node));
    }
    let mut now = 1;
    for k in 0..SERVICES - 1 {
        apply(&mut state, &Command::CreateService(service(k)));
        settle(&mut state, &mut now);
    }
    apply(&mut state, &Command::CreateService(service(SERVICES - 1)));
    (state, now + 1)
}

fn bench(c: &mut Criterion) {
    let (state, now) = cluster();
    let decided = reconcile(&state, now);
    let (mut creates, mut others) = (0, 0);
    for change in &decided.changes {
        match change {
            TaskChange::Create(_) | TaskChange::New(_) => creates += 1,
            _ => others += 1,
        }
    }
    let command = Command::Reconcile { changes: decided.changes, at_ms: now, rollouts: vec![] };
    let bytes = serde_json::to_vec(&Proposal(vec![command.clone()])).unwrap().len();
    println!(
        "{} tasks on {NODES} nodes, a new service of {REPLICAS}: the pass makes {creates} tasks and {others} other changes, an entry of {bytes} bytes ({} per task)",
        state.tasks.len(),
        bytes / REPLICAS as usize
    );
    c.bench_function("reconcile pass, 99,000 tasks + a new service of 1000", |b| b.iter(|| reconcile(&state, now)));
    c.bench_function("apply its entry", |b| {
        b.iter_batched_ref(|| state.clone(), |s| apply(s, &command), BatchSize::LargeInput)
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
