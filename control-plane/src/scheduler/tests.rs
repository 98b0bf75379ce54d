#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use proptest::prelude::*;

const GI: u64 = 1 << 30;

fn node(id: &str, cpus: u64, mem_gi: u64) -> NodeView {
    NodeView {
        id: id.into(),
        name: id.into(),
        labels: BTreeMap::new(),
        schedulable: true,
        capacity: Resources { cpu_millis: cpus * 1000, memory_bytes: mem_gi * GI },
        allocated: Resources::default(),
        tasks: BTreeMap::new(),
        addresses_left: None,
        mounts: true,
        reads: berth_proto::model::AGENT_READS,
    }
}

fn requests(service: &str, n: usize, resources: Resources, constraints: &[&str]) -> Vec<Request> {
    (0..n)
        .map(|i| Request {
            task: format!("{service}.{i}"),
            service: service.into(),
            resources,
            constraints: constraints.iter().map(|c| c.parse().unwrap()).collect(),
            ..Request::default()
        })
        .collect()
}

/// How many tasks each node got, by node id.
fn placed(decisions: &[Decision]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in decisions {
        if let Decision::Place { node, .. } = d {
            *out.entry(node.clone()).or_default() += 1;
        }
    }
    out
}

#[test]
fn replicas_spread_over_nodes_before_doubling_up() {
    let nodes = [node("a", 4, 8), node("b", 4, 8), node("c", 4, 8)];
    let d = schedule(&nodes, &requests("web", 7, Resources::default(), &[]));
    assert_eq!(placed(&d), BTreeMap::from([("a".into(), 3), ("b".into(), 2), ("c".into(), 2)]));
}

#[test]
fn existing_tasks_count_for_spread_and_allocation_breaks_ties() {
    let mut a = node("a", 4, 8);
    a.tasks.insert("web".into(), 2);
    let mut b = node("b", 4, 8);
    b.allocated = Resources { cpu_millis: 3000, memory_bytes: 0 };
    let c = node("c", 4, 8);
    let d = schedule(&[a, b, c], &requests("web", 2, Resources { cpu_millis: 500, memory_bytes: 0 }, &[]));
    // c (empty) first, then b (no web task yet, though busier) before a (has two).
    assert_eq!(
        d,
        [
            Decision::Place { task: "web.0".into(), node: "c".into() },
            Decision::Place { task: "web.1".into(), node: "b".into() },
        ]
    );
}

#[test]
fn constraints_and_unschedulable_nodes_are_honoured_with_reasons() {
    let mut a = node("a", 4, 8);
    a.labels.insert("zone".into(), "x".into());
    let mut b = node("b", 4, 8);
    b.labels.insert("zone".into(), "y".into());
    let mut c = node("c", 4, 8);
    c.labels.insert("zone".into(), "x".into());
    c.schedulable = false;
    let d = schedule(&[a, b, c], &requests("db", 2, Resources::default(), &["node.labels.zone == x"]));
    assert_eq!(placed(&d), BTreeMap::from([("a".into(), 2)]));

    let d = schedule(&[node("a", 4, 8)], &requests("db", 1, Resources::default(), &["node.name != a"]));
    assert_eq!(
        d,
        [Decision::Unplaced { task: "db.0".into(), reason: "no node fits: 1 node fails node.name != a".into() }]
    );
}

#[test]
fn resources_are_never_overcommitted_and_shortage_is_explained() {
    let nodes = [node("a", 2, 1), node("b", 1, 4)];
    let req = Resources { cpu_millis: 1000, memory_bytes: GI };
    let d = schedule(&nodes, &requests("app", 4, req, &[]));
    assert_eq!(placed(&d), BTreeMap::from([("a".into(), 1), ("b".into(), 1)]));
    let reasons: Vec<&str> = d
        .iter()
        .filter_map(|d| match d {
            Decision::Unplaced { reason, .. } => Some(reason.as_str()),
            Decision::Place { .. } => None,
        })
        .collect();
    assert_eq!(reasons, ["no node fits: 1 node lacks CPU (needs 1), 1 node lacks memory (needs 1Gi)"; 2]);
    assert_eq!(
        schedule(&[], &requests("app", 1, req, &[])),
        [Decision::Unplaced { task: "app.0".into(), reason: "no nodes in the cluster".into() }]
    );
}

fn labelled(id: &str, zone: &str) -> NodeView {
    let mut n = node(id, 4, 8);
    n.labels.insert("zone".into(), zone.into());
    n
}

#[test]
fn spread_preferences_even_out_label_values_before_nodes() {
    // Zone a has three nodes, b one, and c none: by node, 6 tasks would
    // put 5 in zone a; spread over zones, b's node takes half of them.
    // A node without the label is a value of its own (none).
    let nodes = [labelled("a1", "a"), labelled("a2", "a"), labelled("a3", "a"), labelled("b1", "b"), node("x", 4, 8)];
    let spread = |n: usize| -> Vec<Request> {
        requests("web", n, Resources::default(), &[])
            .into_iter()
            .map(|r| Request { spread: vec!["zone".into()], ..r })
            .collect()
    };
    let d = schedule(&nodes, &spread(6));
    assert_eq!(placed(&d), BTreeMap::from([("a1".into(), 1), ("a2".into(), 1), ("b1".into(), 2), ("x".into(), 2)]));
    // Tasks already there count: zone b is full up to what the others get.
    let mut b1 = labelled("b1", "b");
    b1.tasks.insert("web".into(), 2);
    let d = schedule(&[labelled("a1", "a"), labelled("a2", "a"), b1], &spread(2));
    assert_eq!(placed(&d), BTreeMap::from([("a1".into(), 1), ("a2".into(), 1)]));
    // No fitting node: the same reasons as without preferences.
    let mut off = labelled("a1", "a");
    off.schedulable = false;
    let d = schedule(&[off], &spread(1));
    assert_eq!(
        d,
        [Decision::Unplaced { task: "web.0".into(), reason: "no node fits: 1 node is not ready or drained".into() }]
    );
}

#[test]
fn a_cap_per_node_leaves_the_rest_pending_with_the_reason() {
    let mut a = node("a", 4, 8);
    a.tasks.insert("web".into(), 1);
    let capped: Vec<Request> = requests("web", 4, Resources::default(), &[])
        .into_iter()
        .map(|r| Request { max_per_node: Some(2), ..r })
        .collect();
    let d = schedule(&[a, node("b", 4, 8)], &capped);
    assert_eq!(placed(&d), BTreeMap::from([("a".into(), 1), ("b".into(), 2)]));
    let reason = "no node fits: 2 nodes run 2 of its tasks already (max_replicas_per_node)";
    assert_eq!(d[3], Decision::Unplaced { task: "web.3".into(), reason: reason.into() });
    // A fresh service takes the quick path; the cap still holds.
    let d = schedule(&[node("a", 4, 8)], &capped);
    assert_eq!(placed(&d), BTreeMap::from([("a".into(), 2)]));
}

#[test]
fn a_pinned_task_goes_to_its_node_or_says_why_not() {
    let pinned = |task: &str, node: &str, cpu_millis: u64| Request {
        task: task.into(),
        service: "agent".into(),
        resources: Resources { cpu_millis, memory_bytes: 0 },
        pin: Some(node.into()),
        ..Request::default()
    };
    let mut busy = node("b", 4, 8);
    busy.allocated.cpu_millis = 3500;
    let d = schedule(
        &[node("a", 4, 8), busy, node("c", 4, 8)],
        &[pinned("agent.1", "a", 1000), pinned("agent.2", "b", 1000), pinned("agent.3", "gone", 0)],
    );
    assert_eq!(
        d,
        [
            Decision::Place { task: "agent.1".into(), node: "a".into() },
            Decision::Unplaced { task: "agent.2".into(), reason: "its node b lacks CPU (needs 1)".into() },
            Decision::Unplaced { task: "agent.3".into(), reason: "its node gone is gone".into() },
        ]
    );
}

// ---- properties over random clusters ----

/// A node, sometimes carrying tasks of services s0 and s1 already.
fn arb_node(i: usize) -> impl Strategy<Value = NodeView> {
    (1u64..=8, 1u64..=16, prop::bool::weighted(0.85), prop::option::of(0u8..3), 0u32..3, 0u32..2, 0u64..=100).prop_map(
        move |(cpus, mem, schedulable, zone, s0, s1, used_pct)| {
            let mut n = node(&format!("n{i:03}"), cpus, mem);
            n.schedulable = schedulable;
            if let Some(z) = zone {
                n.labels.insert("zone".into(), format!("z{z}"));
            }
            for (service, count) in [("s0", s0), ("s1", s1)].into_iter().filter(|(_, c)| *c > 0) {
                n.tasks.insert(service.into(), count);
            }
            n.allocated = Resources {
                cpu_millis: n.capacity.cpu_millis * used_pct / 200,
                memory_bytes: n.capacity.memory_bytes / 100 * used_pct / 2,
            };
            n
        },
    )
}

fn arb_nodes() -> impl Strategy<Value = Vec<NodeView>> {
    (0usize..12).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
}

/// A service: replicas, requests (often none), maybe a zone constraint.
fn arb_service(i: usize) -> impl Strategy<Value = Vec<Request>> {
    (1usize..25, prop::option::weighted(0.5, (0u64..=2000, 0u64..=2 * GI)), prop::option::of((0u8..3, any::<bool>())))
        .prop_map(move |(replicas, res, zone)| {
            let resources = res.map(|(c, m)| Resources { cpu_millis: c, memory_bytes: m }).unwrap_or_default();
            let constraint = zone.map(|(z, eq)| format!("node.labels.zone {} z{z}", if eq { "==" } else { "!=" }));
            let constraints: Vec<&str> = constraint.iter().map(String::as_str).collect();
            requests(&format!("s{i}"), replicas, resources, &constraints)
        })
}

fn arb_requests() -> impl Strategy<Value = Vec<Request>> {
    (0usize..6).prop_flat_map(|n| (0..n).map(arb_service).collect::<Vec<_>>()).prop_map(|s| s.concat())
}

/// The rules written as plainly as possible, O(tasks x nodes): each task
/// in shape order goes to the fitting node with the fewest of its service,
/// then the least load, then the lowest index.
fn reference(nodes: &[NodeView], reqs: &[Request]) -> Vec<Option<String>> {
    let mut nodes = nodes.to_vec();
    let mut order: Vec<&Request> = Vec::new();
    for r in reqs {
        let same =
            |o: &&Request| o.service == r.service && o.resources == r.resources && o.constraints == r.constraints;
        if !order.iter().any(same) {
            order.extend(reqs.iter().filter(|o| same(o)));
        }
    }
    order
        .into_iter()
        .map(|r| {
            let best = (0..nodes.len())
                .filter(|&i| refusal(&nodes[i], r).is_none())
                .min_by_key(|&i| (nodes[i].tasks.get(&r.service).copied().unwrap_or(0), load(&nodes[i]), i))?;
            let n = &mut nodes[best];
            n.allocated.cpu_millis += r.resources.cpu_millis;
            n.allocated.memory_bytes += r.resources.memory_bytes;
            *n.tasks.entry(r.service.clone()).or_default() += 1;
            Some(n.id.clone())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn placements_respect_every_rule(nodes in arb_nodes(), reqs in arb_requests()) {
        let decisions = schedule(&nodes, &reqs);
        prop_assert_eq!(decisions.len(), reqs.len(), "one decision per request");
        prop_assert_eq!(&decisions, &schedule(&nodes, &reqs), "deterministic");
        let got: Vec<Option<String>> = decisions
            .iter()
            .map(|d| match d {
                Decision::Place { node, .. } => Some(node.clone()),
                Decision::Unplaced { .. } => None,
            })
            .collect();
        prop_assert_eq!(got, reference(&nodes, &reqs), "same choices as the plain O(tasks x nodes) rules");

        let by_task: HashMap<&str, &Request> = reqs.iter().map(|r| (r.task.as_str(), r)).collect();
        let mut after: HashMap<&str, NodeView> = nodes.iter().map(|n| (n.id.as_str(), n.clone())).collect();
        for d in &decisions {
            if let Decision::Place { task, node } = d {
                let r = by_task[task.as_str()];
                let n = after.get_mut(node.as_str()).unwrap();
                prop_assert!(n.schedulable, "{} placed on unschedulable {}", task, node);
                prop_assert!(r.constraints.iter().all(|c| c.allows(&n.name, &n.labels)), "{} breaks a constraint on {}", task, node);
                n.allocated.cpu_millis += r.resources.cpu_millis;
                n.allocated.memory_bytes += r.resources.memory_bytes;
                *n.tasks.entry(r.service.clone()).or_default() += 1;
            }
        }
        for n in after.values() {
            prop_assert!(n.allocated.cpu_millis <= n.capacity.cpu_millis, "{} CPU overcommitted", n.id);
            prop_assert!(n.allocated.memory_bytes <= n.capacity.memory_bytes, "{} memory overcommitted", n.id);
        }
        // A task left unplaced could not have gone anywhere: allocations only
        // grow, so no node admits it even now.
        for d in &decisions {
            if let Decision::Unplaced { task, .. } = d {
                let r = by_task[task.as_str()];
                prop_assert!(after.values().all(|n| refusal(n, r).is_some()), "{} was placeable", task);
            }
        }
        // Spread: a service that asks for no resources lands evenly on the
        // nodes that may take it.
        // (s0 and s1 may start uneven, so they are left out.)
        for r in reqs.iter().filter(|r| {
            r.resources == Resources::default() && r.task.ends_with(".0") && r.service != "s0" && r.service != "s1"
        }) {
            let counts: Vec<u32> = after
                .values()
                .filter(|n| n.schedulable && r.constraints.iter().all(|c| c.allows(&n.name, &n.labels)))
                .map(|n| n.tasks.get(&r.service).copied().unwrap_or(0))
                .collect();
            if let (Some(max), Some(min)) = (counts.iter().max(), counts.iter().min()) {
                prop_assert!(max - min <= 1, "{} spread {:?}", r.service, counts);
            }
        }
    }
}

#[test]
fn data_draws_its_task_and_a_pinned_volume_binds_it() {
    let (mut a, b) = (node("a", 4, 8), node("b", 4, 8));
    // a is busier and already runs the service: without data, b would win.
    a.tasks.insert("db".into(), 1);
    a.allocated = Resources { cpu_millis: 3000, memory_bytes: 0 };
    let mut r = requests("db", 1, Resources::default(), &[]).remove(0);
    r.data = Data { mounts: true, held: [("a".into(), 1)].into(), pinned: None };
    assert_eq!(placed(&schedule(&[a.clone(), b.clone()], &[r.clone()])), BTreeMap::from([("a".into(), 1)]));
    // Unpinned, a task whose data's node is down goes elsewhere.
    let mut down = a.clone();
    down.schedulable = false;
    assert_eq!(placed(&schedule(&[down.clone(), b.clone()], &[r.clone()])), BTreeMap::from([("b".into(), 1)]));
    // Pinned, it waits, saying where its data is.
    r.data.pinned = Some((["a".into()].into(), "volume data (on a)".into()));
    let d = schedule(&[down, b.clone()], &[r.clone()]);
    let Decision::Unplaced { reason, .. } = &d[0] else { panic!("{d:?}") };
    assert_eq!(
        reason,
        "no node fits: 1 node is not ready or drained, 1 node does not hold its pinned volume data (on a)"
    );
    // With spread preferences too, the data comes first.
    r.spread = vec!["zone".into()];
    r.data.pinned = None;
    let (mut za, mut zb) = (a, b);
    za.labels.insert("zone".into(), "x".into());
    zb.labels.insert("zone".into(), "y".into());
    assert_eq!(placed(&schedule(&[za, zb], &[r])), BTreeMap::from([("a".into(), 1)]));
}

#[test]
fn a_task_with_mounts_skips_agents_that_cannot_mount() {
    let (mut old, new) = (node("old", 8, 8), node("new", 1, 1));
    old.mounts = false;
    let mut r = requests("db", 1, Resources::default(), &[]).remove(0);
    r.data.mounts = true;
    assert_eq!(placed(&schedule(&[old.clone(), new], &[r.clone()])), BTreeMap::from([("new".into(), 1)]));
    let d = schedule(&[old], &[r]);
    let Decision::Unplaced { reason, .. } = &d[0] else { panic!("{d:?}") };
    assert_eq!(reason, "no node fits: 1 node runs an agent that cannot mount volumes, secrets or configs");
}

#[test]
fn a_stacks_task_skips_agents_too_old_for_it() {
    let (mut old, new) = (node("old", 8, 8), node("new", 1, 1));
    old.reads = 2;
    let mut r = requests("shop_db", 1, Resources::default(), &[]).remove(0);
    r.needs = 3;
    assert_eq!(placed(&schedule(&[old.clone(), new], &[r.clone()])), BTreeMap::from([("new".into(), 1)]));
    let d = schedule(&[old.clone()], &[r.clone()]);
    let Decision::Unplaced { reason, .. } = &d[0] else { panic!("{d:?}") };
    assert_eq!(reason, "no node fits: 1 node runs an agent too old for stacks and depends_on (upgrade it)");
    r.needs = 0;
    assert_eq!(placed(&schedule(&[old], &[r])), BTreeMap::from([("old".into(), 1)]), "other tasks go anywhere");
}
