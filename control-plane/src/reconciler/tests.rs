#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use berth_proto::model::{
    Availability, Mode, NetworkConfig, NodeStatus, Order, Resources, RolloutState, ServiceSpec, UpdateConfig,
};
use proptest::prelude::*;

use super::*;
use crate::reconciler::MOVE_BACKOFF_MS;
use crate::state::{apply, Command, Rejection, Response, RolloutChange};
use crate::testing::{node, spec};

/// The leader's clock in these tests: long after every task's `since`
/// (1), so no rollout waits for its delay or monitor.
const NOW: u64 = 1_000_000;

fn global(name: &str) -> ServiceSpec {
    ServiceSpec { mode: Mode::Global, ..spec(name, 0) }
}

fn cluster(nodes: &[&str], services: &[(&str, u32)]) -> State {
    let mut s = State::default();
    for n in nodes {
        apply(&mut s, &Command::RegisterNode(node(n)));
    }
    for (name, replicas) in services {
        apply(&mut s, &Command::CreateService(spec(name, *replicas)));
    }
    s
}

/// What agents would report after a moment: placed tasks run, tasks told
/// to stop have stopped (on nodes that are up). Says whether any did.
fn agents_act(s: &mut State) -> bool {
    let mut acted = false;
    for t in s.tasks.values_mut() {
        let up = t.node.as_ref().is_some_and(|n| s.nodes.get(n).is_some_and(|n| n.status == NodeStatus::Ready));
        let next = match (t.desired, t.state) {
            (Desired::Running, TaskState::Assigned) if up => TaskState::Running,
            (Desired::Shutdown, TaskState::Running | TaskState::Assigned) if up => TaskState::Shutdown,
            _ => continue,
        };
        t.state = next;
        acted = true;
    }
    acted
}

/// Lets agents act and the reconciler answer until neither has anything
/// left to do; a rollback it asks for is done as the leader does it.
fn settle(s: &mut State) {
    for _ in 0..50 {
        let acted = agents_act(s);
        let Reconciled { changes, rollouts, rollbacks, .. } = reconcile(s, NOW);
        if changes.is_empty() && rollouts.is_empty() && rollbacks.is_empty() && !acted {
            return;
        }
        write(s, changes, rollouts);
        for (name, _) in rollbacks {
            let svc = &s.services[&name];
            let previous = svc.previous.clone().expect("a rollback has a spec to go back to");
            let spec = ServiceSpec { replicas: svc.spec.replicas, ..*previous };
            apply(s, &Command::UpdateService(spec));
        }
    }
    panic!("no rest after 50 rounds: {:#?}", s.tasks);
}

/// Applies a pass's decisions as the leader writes them, and checks that
/// they leave the state as the release before's form of them (`expand`)
/// does: every test here checks `New` against `Create` and `Assign`.
fn write(s: &mut State, changes: Vec<TaskChange>, rollouts: Vec<RolloutChange>) {
    let mut before = s.clone();
    let expanded = crate::state::expand(&before, changes.clone());
    assert!(!expanded.iter().any(|c| matches!(c, TaskChange::New(_))));
    apply(&mut before, &Command::Reconcile { changes: expanded, at_ms: 1, rollouts: rollouts.clone() });
    apply(s, &Command::Reconcile { changes, at_ms: 1, rollouts });
    assert_eq!(*s, before, "New and its expansion differ");
}

/// Running tasks per service, by slot.
fn running(s: &State, service: &str) -> Vec<(u32, String)> {
    s.tasks
        .values()
        .filter(|t| t.service == service && t.desired == Desired::Running && t.state == TaskState::Running)
        .map(|t| (t.slot, t.node.clone().unwrap()))
        .collect()
}

#[test]
fn replicas_are_created_spread_and_then_left_alone() {
    let mut s = cluster(&["a", "b", "c"], &[("web", 5)]);
    settle(&mut s);
    let tasks = running(&s, "web");
    assert_eq!(tasks.iter().map(|(slot, _)| *slot).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    let per_node: BTreeMap<&str, usize> = tasks.iter().fold(BTreeMap::new(), |mut m, (_, n)| {
        *m.entry(n.as_str()).or_default() += 1;
        m
    });
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [2, 2, 1]);
    assert!(reconcile(&s, NOW).is_empty(), "silent at rest");
    assert_eq!(s.tasks.keys().cloned().collect::<Vec<_>>(), ["web.1.1", "web.2.1", "web.3.1", "web.4.1", "web.5.1"]);
}

#[test]
fn scaling_down_stops_the_highest_slots_and_removal_stops_all() {
    let mut s = cluster(&["a", "b"], &[("web", 4)]);
    settle(&mut s);
    apply(&mut s, &Command::UpdateService(spec("web", 2)));
    settle(&mut s);
    assert_eq!(running(&s, "web").iter().map(|(slot, _)| *slot).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(s.tasks.len(), 2, "stopped tasks are forgotten");
    apply(&mut s, &Command::DeleteService { name: "web".into() });
    settle(&mut s);
    assert!(s.tasks.is_empty());
}

#[test]
fn tasks_of_a_down_or_drained_node_move_and_come_back_once() {
    let mut s = cluster(&["a", "b"], &[("web", 4)]);
    settle(&mut s);
    apply(&mut s, &Command::SetNodeStatus { id: "a".into(), status: NodeStatus::Down });
    settle(&mut s);
    let tasks = running(&s, "web");
    assert_eq!(tasks.len(), 4);
    assert!(tasks.iter().all(|(_, n)| n == "b"), "{tasks:?}");
    assert!(s.tasks.keys().any(|id| id.ends_with(".2")), "replacements take the next generation");
    // a comes back: two replicas move back (see the rebalancing test), and
    // nothing runs twice.
    apply(&mut s, &Command::RegisterNode(node("a")));
    settle(&mut s);
    assert_eq!(running(&s, "web").len(), 4);
    assert_eq!(s.tasks.len(), 4);

    apply(&mut s, &Command::SetAvailability { id: "b".into(), availability: Availability::Drain });
    settle(&mut s);
    assert!(running(&s, "web").iter().all(|(_, n)| n == "a"));
}

#[test]
fn a_global_service_follows_nodes_joining_draining_and_leaving() {
    let mut s = cluster(&["a", "b"], &[]);
    let mut edge = global("edge");
    edge.constraints = vec!["node.labels.role != db".parse().unwrap()];
    apply(&mut s, &Command::CreateService(edge.clone()));
    settle(&mut s);
    assert_eq!(running(&s, "edge"), [(1, "a".into()), (2, "b".into())]);
    assert!(s.tasks.values().all(|t| t.pin == t.node), "each task is pinned to its node");
    assert!(reconcile(&s, NOW).is_empty(), "silent at rest");

    // A node joins: it gets the next slot; one that fails the constraint gets none.
    apply(&mut s, &Command::RegisterNode(node("c")));
    let mut db = node("d");
    db.labels.insert("role".into(), "db".into());
    apply(&mut s, &Command::RegisterNode(db));
    settle(&mut s);
    assert_eq!(running(&s, "edge"), [(1, "a".into()), (2, "b".into()), (3, "c".into())]);

    // Drained, its task stops and moves nowhere; active again, it is back
    // in the lowest free slot.
    apply(&mut s, &Command::SetAvailability { id: "a".into(), availability: Availability::Drain });
    settle(&mut s);
    assert_eq!(running(&s, "edge"), [(2, "b".into()), (3, "c".into())]);
    apply(&mut s, &Command::SetAvailability { id: "a".into(), availability: Availability::Active });
    settle(&mut s);
    assert_eq!(running(&s, "edge"), [(1, "a".into()), (2, "b".into()), (3, "c".into())]);

    // Down and then removed: its task is gone and not made elsewhere.
    apply(&mut s, &Command::SetNodeStatus { id: "b".into(), status: NodeStatus::Down });
    settle(&mut s);
    apply(&mut s, &Command::RemoveNode { id: "b".into() });
    settle(&mut s);
    assert_eq!(running(&s, "edge"), [(1, "a".into()), (3, "c".into())]);

    // Its constraint changes: the node that no longer meets it loses its task
    // (a rolling update replaces the rest on their own nodes).
    edge.constraints = vec!["node.name != c".parse().unwrap()];
    apply(&mut s, &Command::UpdateService(edge));
    settle(&mut s);
    let now: Vec<(u32, String)> = running(&s, "edge");
    assert_eq!(now.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), ["a", "d"], "{now:?}");
    assert!(s.tasks.values().filter(|t| t.desired == Desired::Running).all(|t| t.version == 2));
}

#[test]
fn a_global_task_that_does_not_fit_its_node_waits_there_with_the_reason() {
    let mut s = cluster(&["a", "b"], &[]);
    let mut hog = spec("hog", 1);
    hog.resources.cpu_millis = 3500;
    hog.constraints = vec!["node.name == a".parse().unwrap()];
    apply(&mut s, &Command::CreateService(hog));
    settle(&mut s);
    let mut edge = global("edge");
    edge.resources.cpu_millis = 1000;
    apply(&mut s, &Command::CreateService(edge));
    settle(&mut s);
    assert_eq!(running(&s, "edge"), [(2, "b".into())]);
    let waiting = s.tasks.values().find(|t| t.service == "edge" && t.node.is_none()).expect("a's task waits");
    assert_eq!((waiting.pin.as_deref(), waiting.message.as_str()), (Some("a"), "its node a lacks CPU (needs 1)"));
    // A service's mode is what it was made with.
    let r = apply(&mut s, &Command::UpdateService(spec("edge", 2)));
    assert!(matches!(&r, Response::Rejected(Rejection::Invalid(e)) if e.field == "mode"), "{r:?}");
}

/// Serving tasks of a service per node.
fn spread(s: &State, service: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (_, n) in running(s, service) {
        *out.entry(n).or_default() += 1;
    }
    out
}

/// Passes as `settle` does, checking after each that `service` never has
/// fewer running tasks than `want`; how many tasks were made on the way.
fn settle_above(s: &mut State, service: &str, want: usize) -> usize {
    let mut made = 0;
    for _ in 0..50 {
        let acted = agents_act(s);
        let r = reconcile(s, NOW);
        if r.is_empty() && !acted {
            return made;
        }
        made += r.changes.iter().filter(|c| makes(c)).count();
        apply(s, &Command::Reconcile { changes: r.changes, at_ms: 1, rollouts: r.rollouts });
        assert!(running(s, service).len() >= want, "below {want}: {:#?}", s.tasks);
    }
    panic!("no rest after 50 rounds: {:#?}", s.tasks);
}

#[test]
fn replicas_move_back_one_at_a_time_without_dropping_below_the_count() {
    // Cut c, then b: all three end on a.
    let mut s = cluster(&["a", "b", "c"], &[("web", 3)]);
    settle(&mut s);
    for lost in ["c", "b"] {
        apply(&mut s, &Command::SetNodeStatus { id: lost.into(), status: NodeStatus::Down });
        settle(&mut s);
    }
    assert_eq!(spread(&s, "web"), BTreeMap::from([("a".into(), 3)]));
    // Both back: one replica moves to each, start-first, never under 3.
    for back in ["b", "c"] {
        apply(&mut s, &Command::RegisterNode(node(back)));
    }
    // One move in flight at a time: the first pass makes one task only.
    let first = reconcile(&s, NOW).changes;
    assert_eq!(first.iter().filter(|c| makes(c)).count(), 1, "{first:?}");
    assert_eq!(settle_above(&mut s, "web", 3), 2, "two moves, nothing more");
    assert_eq!(spread(&s, "web"), BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]));
    assert_eq!(s.tasks.len(), 3, "the moved ones stopped and were forgotten");
    assert!(reconcile(&s, NOW).is_empty(), "silent once even");
    // The old ones said why they stopped (seen in events).
    let mut t = s.clone();
    apply(&mut t, &Command::SetNodeStatus { id: "c".into(), status: NodeStatus::Down });
    settle(&mut t);
    apply(&mut t, &Command::RegisterNode(node("c")));
    agents_act(&mut t);
    let mut reasons = Vec::new();
    for _ in 0..10 {
        agents_act(&mut t);
        let r = reconcile(&t, NOW);
        for c in &r.changes {
            if let TaskChange::Shutdown { reason, .. } = c {
                reasons.push(reason.clone());
            }
        }
        apply(&mut t, &Command::Reconcile { changes: r.changes, at_ms: 1, rollouts: r.rollouts });
    }
    assert!(reasons.iter().any(|r| r.starts_with("rebalanced: replaced by web.")), "{reasons:?}");
}

#[test]
fn a_failed_move_is_given_up_and_the_service_waits_before_the_next() {
    let mut s = cluster(&["a", "b"], &[]);
    apply(&mut s, &Command::CreateService(spec("web", 2)));
    apply(&mut s, &Command::SetNodeStatus { id: "b".into(), status: NodeStatus::Down });
    settle(&mut s);
    apply(&mut s, &Command::RegisterNode(node("b")));
    let step = |s: &mut State, now: u64| {
        let r = reconcile(s, now);
        apply(s, &Command::Reconcile { changes: r.changes, at_ms: now, rollouts: r.rollouts });
        r.wake_at
    };
    step(&mut s, NOW);
    let moved = s.tasks.values().find(|t| t.node.as_deref() == Some("b")).expect("a move to b").id.clone();
    // Its node cannot run it.
    let t = s.tasks.get_mut(&moved).unwrap();
    (t.state, t.message, t.since_ms) = (TaskState::Failed, "pulling busybox: manifest unknown".into(), NOW + 1);
    step(&mut s, NOW + 1);
    let t = &s.tasks[&moved];
    assert_eq!(t.desired, Desired::Shutdown);
    assert!(t.message.starts_with("rebalance abandoned: web.") && t.message.contains("manifest unknown"), "{t:?}");
    assert_eq!(running(&s, "web").len(), 2, "the old task serves on");
    // Within the wait nothing moves, the given-up task stays listed, and
    // the leader is told to look again when the wait ends.
    let within = reconcile(&s, NOW + 2);
    assert!(within.changes.is_empty(), "{within:?}");
    assert_eq!(within.wake_at, Some(NOW + 1 + MOVE_BACKOFF_MS));
    // After it, it is forgotten and the move is tried again.
    let later = reconcile(&s, NOW + 2 + MOVE_BACKOFF_MS).changes;
    assert!(later.contains(&TaskChange::Remove { id: moved }), "{later:?}");
    assert!(later.iter().any(makes), "{later:?}");
}

#[test]
fn a_serving_successor_outdated_by_a_new_spec_keeps_its_slot_until_replaced() {
    // A move's successor serves when the spec changes: its old task goes,
    // it stays (the slot never empties) and the rollout replaces it.
    let mut s = cluster(&["a", "b"], &[]);
    apply(&mut s, &Command::CreateService(spec("web", 1)));
    settle(&mut s);
    let old = s.tasks.keys().next().unwrap().clone();
    let successor = Task { node: Some("b".into()), state: TaskState::Running, ..s.tasks[&old].clone() };
    let successor = Task { id: "web.1.2".into(), generation: 2, ..successor };
    s.tasks.insert(successor.id.clone(), successor);
    s.generations.insert("web.1".into(), 2);
    apply(&mut s, &Command::UpdateService(ServiceSpec { image: "busybox:2".into(), ..spec("web", 1) }));
    let changes = reconcile(&s, NOW).changes;
    let stopped: Vec<&String> =
        changes.iter().filter_map(|c| if let TaskChange::Shutdown { id, .. } = c { Some(id) } else { None }).collect();
    assert_eq!(stopped, [&old], "{changes:?}");
    settle(&mut s);
    assert_eq!(running(&s, "web").len(), 1);
    assert!(s.tasks.values().all(|t| t.spec.image == "busybox:2"), "{:#?}", s.tasks);
}

#[test]
fn a_move_waits_for_every_replica_to_have_served_its_monitor_and_some_services_never_move() {
    let lopsided = |spec: ServiceSpec| {
        let mut s = cluster(&["a", "b"], &[]);
        apply(&mut s, &Command::CreateService(spec));
        apply(&mut s, &Command::SetNodeStatus { id: "b".into(), status: NodeStatus::Down });
        settle(&mut s);
        apply(&mut s, &Command::RegisterNode(node("b")));
        s
    };
    // Tasks ran since 1; the monitor (5 s) ends at 5001: the leader is told to look again then.
    let s = lopsided(spec("web", 2));
    let early = reconcile(&s, 2_000);
    assert!(early.changes.is_empty(), "{early:?}");
    assert_eq!(early.wake_at, Some(1 + UpdateConfig::UPDATE.monitor_ms));
    assert_eq!(reconcile(&s, 1 + UpdateConfig::UPDATE.monitor_ms).changes.len(), 2, "made and placed");

    // Opted out, or stop-first (its tasks cannot run twice): nothing moves.
    let mut off = spec("web", 2);
    off.placement.rebalance = false;
    let mut stop_first = spec("web", 2);
    stop_first.update_config.order = Order::StopFirst;
    for spec in [off, stop_first] {
        let s = lopsided(spec);
        assert!(reconcile(&s, NOW).is_empty());
        assert_eq!(spread(&s, "web"), BTreeMap::from([("a".into(), 2)]));
    }
}

#[test]
fn a_changed_spec_rolls_one_slot_at_a_time_successor_first() {
    let mut s = cluster(&["a", "b"], &[("web", 3)]);
    settle(&mut s);
    let mut changed = spec("web", 3);
    changed.image = "busybox:2".into();
    apply(&mut s, &Command::UpdateService(changed));
    // Round by round: never fewer than 3 running, never two slots in flight.
    for _ in 0..20 {
        let changes = reconcile(&s, NOW).changes;
        if changes.is_empty() {
            break;
        }
        let creates = changes.iter().filter(|c| makes(c)).count();
        assert!(creates <= 1, "{changes:?}");
        apply(&mut s, &Command::Reconcile { changes, at_ms: 1, rollouts: vec![] });
        assert!(running(&s, "web").len() >= 3, "{:#?}", s.tasks);
        agents_act(&mut s);
    }
    assert!(s.tasks.values().all(|t| t.version == 2 && t.generation == 2), "{:#?}", s.tasks);
    assert_eq!(running(&s, "web").len(), 3);
}

#[test]
fn a_task_that_fits_nowhere_says_why_once() {
    let mut s = cluster(&["a"], &[]);
    let mut big = spec("big", 1);
    big.resources.memory_bytes = 64 << 30;
    apply(&mut s, &Command::CreateService(big));
    settle(&mut s);
    let t = &s.tasks["big.1.1"];
    assert_eq!(t.state, TaskState::Pending);
    assert_eq!(t.message, "no node fits: 1 node lacks memory (needs 64Gi)");
    assert!(reconcile(&s, NOW).is_empty(), "the same reason is not written again");
}

#[test]
fn a_rollout_stuck_on_a_spec_that_cannot_run_gives_way_to_a_fixed_one() {
    let mut s = cluster(&["a"], &[("web", 2)]);
    settle(&mut s);
    let mut huge = spec("web", 2);
    huge.resources.memory_bytes = 1 << 40;
    huge.update_config.failure_action = berth_proto::model::FailureAction::Pause;
    apply(&mut s, &Command::UpdateService(huge.clone()));
    settle(&mut s);
    assert_eq!(running(&s, "web").len(), 2, "the old tasks keep serving");
    assert!(s.tasks.values().any(|t| t.version == 2 && t.message.starts_with("no node fits")));
    let rollout = s.services["web"].rollout.clone().expect("a rollout");
    assert_eq!(rollout.state, RolloutState::Paused);
    assert!(rollout.message.contains("web.1.2 cannot be placed: no node fits"), "{}", rollout.message);
    let mut fixed = spec("web", 2);
    fixed.image = "busybox:2".into();
    apply(&mut s, &Command::UpdateService(fixed));
    settle(&mut s);
    assert!(s.tasks.values().all(|t| t.version == 3 && t.state == TaskState::Running), "{:#?}", s.tasks);
    assert_eq!(running(&s, "web").len(), 2);
}

#[test]
fn a_service_removed_and_created_again_at_once_gets_new_tasks() {
    let mut s = cluster(&["a"], &[("web", 1)]);
    settle(&mut s);
    apply(&mut s, &Command::DeleteService { name: "web".into() });
    let mut again = spec("web", 1);
    again.image = "busybox:2".into();
    apply(&mut s, &Command::CreateService(again));
    settle(&mut s);
    let ids: Vec<&String> = s.tasks.keys().collect();
    assert_eq!(ids, ["web.1.2"], "the old task stopped and the new one took the next generation");
}

/// Resources held on each node must never pass its capacity.
fn check_capacity(s: &State) -> Result<(), TestCaseError> {
    let mut held: BTreeMap<&str, Resources> = BTreeMap::new();
    for t in s.tasks.values().filter(|t| t.holds_resources()) {
        if let Some(n) = &t.node {
            let h = held.entry(n.as_str()).or_default();
            h.cpu_millis += t.spec.resources.cpu_millis;
            h.memory_bytes += t.spec.resources.memory_bytes;
        }
    }
    for (n, h) in held {
        let cap = s.nodes[n].capacity;
        prop_assert!(h.cpu_millis <= cap.cpu_millis && h.memory_bytes <= cap.memory_bytes, "{} overcommitted", n);
    }
    Ok(())
}

/// No subnet or address is ever held twice; every address lies in its
/// node's subnet and is neither its network, gateway nor broadcast address.
fn check_addresses(s: &State) -> Result<(), TestCaseError> {
    let Some(net) = s.network else { return Ok(()) };
    let mut subnets = BTreeSet::new();
    for n in s.nodes.values() {
        let subnet = n.subnet.expect("every node has a subnet once the network is set");
        prop_assert!(net.cidr.contains(subnet.network) && subnet.prefix == net.node_prefix, "{}", subnet);
        prop_assert!(subnets.insert(subnet), "subnet {} held twice", subnet);
    }
    let mut addresses = BTreeSet::new();
    for t in s.tasks.values() {
        match (t.node.as_ref().and_then(|n| s.nodes.get(n)), t.address) {
            (Some(node), Some(a)) => {
                let subnet = node.subnet.unwrap();
                prop_assert!(subnet.task_addresses().any(|x| x == a), "{} outside {}'s tasks' range", a, subnet);
                prop_assert!(addresses.insert(a), "address {} held twice", a);
            }
            (Some(_), None) => prop_assert!(false, "{} placed without an address", t.id),
            (None, a) => prop_assert!(a.is_none(), "{} has an address but no node", t.id),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever happens to nodes and services, once the cluster settles every
    /// service has exactly its replicas running, one per slot, none on a node
    /// that may not take tasks.
    #[test]
    fn the_cluster_settles_at_exactly_the_replicas(
        nodes in 1usize..6,
        services in prop::collection::vec(0u32..8, 1..5),
        cpu in prop::collection::vec(0u64..1500, 5),
        events in prop::collection::vec((0usize..6, 0u8..6, 0usize..5, 0u32..8), 0..12),
        network in any::<bool>(),
    ) {
        let names: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
        let node_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let svc: Vec<(String, u32)> = services.iter().enumerate().map(|(i, r)| (format!("s{i}"), *r)).collect();
        let svc_refs: Vec<(&str, u32)> = svc.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        let mut s = cluster(&node_refs, &[]);
        if network {
            // Five task addresses a node, so that subnets run out too.
            let net = NetworkConfig::new("198.19.0.0/26".parse().unwrap(), 29).unwrap();
            apply(&mut s, &Command::InitNetwork(net));
        }
        let with_cpu = |name: &str, i: usize, replicas: u32| {
            let mut sp = spec(name, replicas);
            sp.resources.cpu_millis = cpu[i % cpu.len()];
            sp
        };
        for (i, (name, replicas)) in svc_refs.iter().enumerate() {
            apply(&mut s, &Command::CreateService(with_cpu(name, i, *replicas)));
        }
        settle(&mut s);
        for (n, what, sv, replicas) in events {
            let id = names[n % nodes].clone();
            let i = sv % svc.len();
            let cmd = match what {
                0 => Command::SetNodeStatus { id, status: NodeStatus::Down },
                1 => Command::RegisterNode(node(&id)),
                2 => Command::SetAvailability { id, availability: Availability::Active },
                3 => Command::SetAvailability { id, availability: Availability::Drain },
                4 => {
                    apply(&mut s, &Command::DeleteService { name: svc[i].0.clone() });
                    Command::CreateService(with_cpu(&svc[i].0, i + 1, replicas))
                }
                _ => Command::UpdateService(with_cpu(&svc[i].0, i, replicas)),
            };
            apply(&mut s, &cmd);
            check_capacity(&s)?;
            check_addresses(&s)?;
            // Sometimes the cluster settles between events, sometimes not.
            if n % 2 == 0 {
                settle(&mut s);
            } else {
                let changes = reconcile(&s, NOW).changes;
                write(&mut s, changes, vec![]);
            }
        }
        settle(&mut s);
        check_capacity(&s)?;
        check_addresses(&s)?;
        for service in s.services.values() {
            let (spec, current) = (&service.spec, s.template(service));
            // Every slot has one live task of the current spec: running, or
            // pending with the reason it fits nowhere; in the latter case an
            // older one may still serve (a stalled start-first update).
            let live: Vec<&Task> = s.tasks.values().filter(|t| t.service == spec.name && t.desired == Desired::Running).collect();
            let slots: BTreeSet<u32> = live.iter().map(|t| t.slot).collect();
            prop_assert_eq!(slots, (1..=spec.replicas).collect::<BTreeSet<_>>(), "{}", spec.name);
            // A rollout whose successor fits nowhere stalls (and pauses, or
            // rolls back and maybe pauses), and the slots after it keep
            // their old running tasks.
            let paused = service.rollout.as_ref().is_some_and(|r| matches!(r.state, RolloutState::Paused | RolloutState::RollbackPaused));
            let stalled = paused || live.iter().any(|t| t.version == current && t.state == TaskState::Pending);
            for slot in 1..=spec.replicas {
                let here: Vec<&&Task> = live.iter().filter(|t| t.slot == slot).collect();
                let (newest, older) = here.split_last().unwrap();
                if newest.version < current && newest.spec != TaskSpec::from(spec) {
                    prop_assert!(stalled && newest.state == TaskState::Running && older.is_empty(), "{:?}", newest);
                    continue;
                }
                match newest.state {
                    TaskState::Running => prop_assert!(older.is_empty() && s.nodes[newest.node.as_ref().unwrap()].schedulable()),
                    TaskState::Pending => prop_assert!(newest.message.starts_with("no node"), "{:?}", newest),
                    other => prop_assert!(false, "{} is {}", newest.id, other),
                }
                for old in older {
                    prop_assert!(old.state == TaskState::Running && old.version < current, "{:?}", old);
                }
            }
        }
        let left = reconcile(&s, NOW);
        prop_assert!(left.is_empty(), "{:?}", left);
    }
}

#[test]
fn parallelism_replaces_that_many_slots_and_stop_first_stops_the_old_ones_first() {
    let mut s = cluster(&["a", "b"], &[("web", 4)]);
    settle(&mut s);
    let mut changed = spec("web", 4);
    changed.image = "busybox:2".into();
    changed.update_config.parallelism = 2;
    changed.update_config.order = Order::StopFirst;
    apply(&mut s, &Command::UpdateService(changed));
    let first = reconcile(&s, NOW).changes;
    let stops: Vec<&TaskChange> = first.iter().filter(|c| matches!(c, TaskChange::Shutdown { .. })).collect();
    assert_eq!(stops.len(), 2, "{first:?}");
    assert!(matches!(stops[0], TaskChange::Shutdown { reason, .. } if reason == "updating to version 2"));
    assert!(!first.iter().any(makes), "stop-first: nothing new yet");
    apply(&mut s, &Command::Reconcile { changes: first, at_ms: 1, rollouts: vec![] });
    for _ in 0..30 {
        agents_act(&mut s);
        let running = running(&s, "web").len();
        assert!((2..=4).contains(&running), "at most 2 slots down at once: {:#?}", s.tasks);
        let changes = reconcile(&s, NOW).changes;
        if changes.is_empty() {
            break;
        }
        apply(&mut s, &Command::Reconcile { changes, at_ms: 1, rollouts: vec![] });
    }
    assert!(s.tasks.values().all(|t| t.version == 2 && t.spec.image == "busybox:2"), "{:#?}", s.tasks);
    assert_eq!(running(&s, "web").len(), 4);
    let done = reconcile(&s, NOW);
    assert_eq!(done.rollouts.len(), 1, "the rollout is done: {done:?}");
    assert_eq!(done.rollouts[0].state, RolloutState::Completed);
    apply(&mut s, &Command::Reconcile { changes: vec![], at_ms: 1, rollouts: done.rollouts });
    assert_eq!(s.services["web"].rollout.as_ref().map(|r| r.state), Some(RolloutState::Completed));
    assert!(reconcile(&s, NOW).is_empty(), "said once");
}

#[test]
fn a_new_task_that_fails_asks_for_a_rollback_which_rolls_out_as_the_rollback_config_says() {
    let mut s = cluster(&["a"], &[("web", 2)]);
    settle(&mut s);
    let mut bad = spec("web", 2);
    bad.image = "registry:5000/nope:1".into();
    apply(&mut s, &Command::UpdateService(bad));
    let svc = &s.services["web"];
    assert_eq!(svc.previous.as_ref().map(|p| p.image.as_str()), Some("busybox"));
    assert_eq!(svc.rollout.as_ref().map(|r| (r.state, r.version)), Some((RolloutState::Updating, 2)));
    let changes = reconcile(&s, NOW).changes;
    apply(&mut s, &Command::Reconcile { changes, at_ms: 1, rollouts: vec![] });
    agents_act(&mut s);
    let new = s.tasks.get_mut("web.1.2").expect("the first new task");
    new.state = TaskState::Failed;
    new.message = "pulling registry:5000/nope:1: manifest unknown".into();
    let decided = reconcile(&s, NOW);
    let why = "1 of 2 new tasks failed: web.1.2 failed: pulling registry:5000/nope:1: manifest unknown";
    assert_eq!(decided.rollbacks, [("web".to_owned(), why.to_owned())]);
    assert!(!decided.changes.iter().any(makes), "no more new tasks");
    // What the leader does: the previous spec again, as an update.
    let previous = s.services["web"].previous.clone().expect("a previous spec");
    apply(&mut s, &Command::UpdateService(*previous));
    let svc = &s.services["web"];
    assert_eq!(svc.rollout.as_ref().map(|r| (r.state, r.version)), Some((RolloutState::RollingBack, 3)));
    assert_eq!(svc.previous.as_ref().map(|p| p.image.as_str()), Some("registry:5000/nope:1"));
    settle(&mut s);
    // The tasks that never left the previous spec stay: nothing to replace.
    assert_eq!(s.tasks.keys().collect::<Vec<_>>(), ["web.1.1", "web.2.1"], "{:#?}", s.tasks);
    assert_eq!(running(&s, "web").len(), 2);
    let svc = &s.services["web"];
    assert_eq!(svc.rollout.as_ref().map(|r| (r.state, r.version)), Some((RolloutState::RolledBack, 3)));
    // A scale is no rollout: the previous spec and the rollout stay.
    apply(&mut s, &Command::UpdateService(spec("web", 3)));
    let svc = &s.services["web"];
    assert_eq!(svc.rollout.as_ref().map(|r| (r.state, r.version)), Some((RolloutState::RolledBack, 3)));
    assert_eq!(svc.previous.as_ref().map(|p| p.image.as_str()), Some("registry:5000/nope:1"));
    // A rollout's state is set only while it is the one under way.
    let stale = RolloutChange { service: "web".into(), version: 2, state: RolloutState::Paused, message: "x".into() };
    apply(&mut s, &Command::Reconcile { changes: vec![], at_ms: 1, rollouts: vec![stale] });
    assert_eq!(s.services["web"].rollout.as_ref().map(|r| r.state), Some(RolloutState::RolledBack));
}

fn exclusive(name: &str, replicas: u32) -> ServiceSpec {
    let mut spec = spec(name, replicas);
    spec.overrides.options.mounts = vec![berth_proto::model::Mount {
        kind: berth_proto::model::MountKind::Volume,
        source: "data-{{.Task.Slot}}".into(),
        target: "/data".into(),
        readonly: false,
        pin: false,
        exclusive: true,
    }];
    spec
}

#[test]
fn an_exclusive_slot_never_has_two_copies_on_nodes_that_are_up() {
    let mut s = cluster(&["a", "b"], &[]);
    for n in ["a", "b"] {
        apply(&mut s, &Command::ReportVolumes { node: n.into(), volumes: vec![] });
    }
    apply(&mut s, &Command::CreateService(exclusive("db", 1)));
    settle(&mut s);
    let home = running(&s, "db")[0].1.clone();
    // Drained: the new copy waits until the old one has stopped.
    apply(&mut s, &Command::SetAvailability { id: home.clone(), availability: Availability::Drain });
    // (The same pass stops the old copy, makes the new one and holds it back.)
    let first = reconcile(&s, NOW);
    let waiting = first.changes.iter().find_map(|c| match c {
        TaskChange::Unplaced { id, reason } if id == "db.1.2" => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        waiting.as_deref(),
        Some(format!("waiting for db.1.1 to stop on {home}: an exclusive volume runs in one place at a time").as_str())
    );
    // Exited is not enough (its node could start it again): only shut down.
    apply(&mut s, &Command::Reconcile { changes: first.changes, at_ms: 1, rollouts: vec![] });
    s.tasks.get_mut("db.1.1").unwrap().state = TaskState::Exited;
    let again = reconcile(&s, NOW);
    assert!(
        !again.changes.iter().any(|c| matches!(c, TaskChange::Assign { .. } | TaskChange::Remove { .. })),
        "{again:?}"
    );
    let removal = apply(&mut s, &Command::RemoveNode { id: home.clone() });
    assert!(matches!(removal, crate::state::Response::Rejected(_)), "a node still stopping it stays: {removal:?}");
    // Its node removes the container and says so.
    s.tasks.get_mut("db.1.1").unwrap().state = TaskState::Shutdown;
    settle(&mut s);
    assert_eq!(running(&s, "db").len(), 1);
    assert_ne!(running(&s, "db")[0].1, home);
    // An update is stop-first, though the service asks for start-first.
    assert_eq!(s.services["db"].spec.update_config.order, Order::StartFirst);
    let mut changed = exclusive("db", 1);
    changed.env.insert("V".into(), "2".into());
    apply(&mut s, &Command::UpdateService(changed));
    let Reconciled { changes, .. } = reconcile(&s, NOW);
    assert!(changes.iter().any(|c| matches!(c, TaskChange::Shutdown { id, .. } if id == "db.1.2")), "{changes:?}");
    assert!(!changes.iter().any(makes), "no new copy beside the old: {changes:?}");
    settle(&mut s);
    assert_eq!(running(&s, "db").len(), 1);
    // A down node's copy does not hold the slot: the node fenced it.
    let node = running(&s, "db")[0].1.clone();
    apply(&mut s, &Command::SetAvailability { id: home, availability: Availability::Active });
    apply(&mut s, &Command::SetNodeStatus { id: node.clone(), status: NodeStatus::Down });
    settle(&mut s);
    let now = running(&s, "db");
    assert!(now.len() == 1 && now[0].1 != node, "{now:?}");
}

/// Whether a change makes a task: a new one (`New`) or a move (`Create`).
fn makes(c: &TaskChange) -> bool {
    matches!(c, TaskChange::Create(_) | TaskChange::New(_))
}
