//! The scheduler alone: 10,000 pending tasks onto 1,000 nodes (issue
//! target: under 100 ms). `cargo bench -p berth-control-plane --bench scheduler`.
//!
//! Two mixes: 100 services of 100 replicas (the usual shape), and 10,000
//! services of one replica each (the worst case for grouping by shape).
//! Nodes have 2-16 CPUs and 4-64 GiB across three zones; a third of the
//! services ask for resources and a fifth carry a zone constraint.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]

use std::collections::BTreeMap;

use berth_control_plane::scheduler::{schedule, Decision, NodeView, Request};
use berth_proto::model::Resources;
use criterion::{criterion_group, criterion_main, Criterion};

fn nodes(n: usize) -> Vec<NodeView> {
    (0..n)
        .map(|i| NodeView {
            id: format!("node-{i:04}"),
            name: format!("node-{i:04}"),
            labels: BTreeMap::from([("zone".to_owned(), format!("z{}", i % 3))]),
            schedulable: i % 50 != 0,
            capacity: Resources {
                cpu_millis: 2000 * (1 + (i as u64 % 8)),
                memory_bytes: (4 << 30) * (1 + (i as u64 % 16)),
            },
            allocated: Resources::default(),
            tasks: BTreeMap::new(),
            // A /24 per node.
            addresses_left: Some(253),
            mounts: true,
            reads: berth_proto::model::AGENT_READS,
        })
        .collect()
}

fn requests(services: usize, replicas: usize) -> Vec<Request> {
    let mut out = Vec::with_capacity(services * replicas);
    for s in 0..services {
        let resources =
            if s % 3 == 0 { Resources { cpu_millis: 100, memory_bytes: 64 << 20 } } else { Resources::default() };
        let constraints =
            if s % 5 == 0 { vec![format!("node.labels.zone != z{}", s % 3).parse().unwrap()] } else { vec![] };
        for r in 0..replicas {
            out.push(Request {
                task: format!("svc-{s}.{r}"),
                service: format!("svc-{s}"),
                resources,
                constraints: constraints.clone(),
                ..Request::default()
            });
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let nodes = nodes(1000);
    for (name, reqs) in [("100 services x 100", requests(100, 100)), ("10000 services x 1", requests(10_000, 1))] {
        let placed = schedule(&nodes, &reqs).iter().filter(|d| matches!(d, Decision::Place { .. })).count();
        assert_eq!(placed, reqs.len(), "the cluster has room for every task");
        c.bench_function(&format!("schedule 10000 tasks on 1000 nodes, {name}"), |b| {
            b.iter(|| schedule(&nodes, &reqs))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
