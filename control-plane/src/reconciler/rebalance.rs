//! Rebalancing: after a lost node comes back (or a new one joins), a
//! service's replicas sit on the nodes that were left, and one host
//! failure could take the whole service down. Swarm never moves them back;
//! here the leader does, one replica at a time, the way a start-first
//! update replaces one: the replica's slot gets a successor, which the
//! scheduler places where the service is thinnest, and the old task stops
//! only once the new one serves. So the service never has fewer serving
//! replicas than it asks for. The reconciler decides when a service may
//! move one (calm, see there); this decides which one, without IO.
//!
//! ```text
//! dst = where the scheduler would put one more replica now
//! src = the fullest node (by spread label values, then by node) for which,
//!       at the first level where src and dst differ (a label value, or the node),
//!       src has at least 2 more than dst ─▶ move a replica from src
//! ```
//!
//! Each move makes the counts strictly more even, so moves end; a gap of
//! one is as even as it gets (moving would only swap the two).

use std::collections::BTreeMap;

use berth_proto::model::{ServiceSpec, Task};

use crate::scheduler::{self, Decision, NodeView, Request};

/// The replica to move so that the service's spread gets better, if any.
/// `nodes` counts every live task (`NodeView::tasks`); `tasks` are the
/// service's, one serving task per slot.
pub fn pick<'a>(nodes: &[NodeView], spec: &ServiceSpec, tasks: &[&'a Task]) -> Option<&'a Task> {
    let count = |n: &NodeView| n.tasks.get(&spec.name).copied().unwrap_or(0);
    let keys = &spec.placement.spread;
    // The common case, cheaply: no node has two, so nothing can improve.
    let mut per_node: BTreeMap<&str, u32> = BTreeMap::new();
    for t in tasks {
        if let Some(n) = &t.node {
            *per_node.entry(n).or_default() += 1;
        }
    }
    if keys.is_empty() && per_node.values().all(|&c| c < 2) {
        return None;
    }
    let probe = Request {
        task: String::new(),
        service: spec.name.clone(),
        resources: spec.resources,
        constraints: spec.constraints.clone(),
        pin: None,
        spread: keys.clone(),
        max_per_node: spec.placement.max_per_node,
        // Services with mounts are never rebalanced (see `calm_service`).
        data: Default::default(),
        needs: super::agent_needs(spec),
    };
    let dst = match scheduler::schedule(nodes, &[probe]).pop()? {
        Decision::Place { node, .. } => nodes.iter().position(|n| n.id == node)?,
        Decision::Unplaced { .. } => return None,
    };
    // Per spread key, the service's tasks under each label value.
    let under: Vec<BTreeMap<Option<&String>, u32>> = keys
        .iter()
        .map(|k| {
            let mut by_value = BTreeMap::new();
            for n in nodes {
                *by_value.entry(n.labels.get(k)).or_default() += count(n);
            }
            by_value
        })
        .collect();
    let levels = |n: &NodeView| -> Vec<u32> {
        let mut l: Vec<u32> = keys.iter().zip(&under).map(|(k, by)| by[&n.labels.get(k)]).collect();
        l.push(count(n));
        l
    };
    // The fullest first (ties in node order); the first whose move helps.
    let mut sources: Vec<usize> = (0..nodes.len()).filter(|&i| per_node.contains_key(nodes[i].id.as_str())).collect();
    sources.sort_by_cached_key(|&i| std::cmp::Reverse(levels(&nodes[i])));
    let d = &nodes[dst];
    let src = sources.into_iter().filter(|&i| i != dst).find(|&i| {
        let s = &nodes[i];
        // The first level at which they part: a label value, else the node.
        let level = keys.iter().position(|k| s.labels.get(k) != d.labels.get(k)).unwrap_or(keys.len());
        levels(s)[level] >= levels(d)[level] + 2
    })?;
    let on = nodes[src].id.as_str();
    tasks.iter().filter(|t| t.node.as_deref() == Some(on)).max_by_key(|t| t.slot).copied()
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{Resources, TaskSpec};

    use super::*;

    fn node(id: &str, zone: Option<&str>, web: u32) -> NodeView {
        NodeView {
            id: id.into(),
            name: id.into(),
            labels: zone.map(|z| BTreeMap::from([("zone".to_owned(), z.to_owned())])).unwrap_or_default(),
            schedulable: true,
            capacity: Resources { cpu_millis: 4000, memory_bytes: 8 << 30 },
            allocated: Resources::default(),
            tasks: if web > 0 { BTreeMap::from([("web".to_owned(), web)]) } else { BTreeMap::new() },
            addresses_left: None,
            mounts: true,
            reads: berth_proto::model::AGENT_READS,
        }
    }

    /// The service's tasks as the nodes carry them, slots numbered in node order.
    fn tasks(nodes: &[NodeView]) -> Vec<Task> {
        let mut out = Vec::new();
        for n in nodes {
            for _ in 0..n.tasks.get("web").copied().unwrap_or(0) {
                let slot = out.len() as u32 + 1;
                out.push(Task { node: Some(n.id.clone()), ..Task::new("web", slot, 1, 1, TaskSpec::default()) });
            }
        }
        out
    }

    fn spec(spread: &[&str]) -> ServiceSpec {
        let mut s: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": "web", "image": "busybox", "replicas": 3
        }))
        .unwrap();
        s.placement.spread = spread.iter().map(|k| k.to_string()).collect();
        s
    }

    fn moved(nodes: &[NodeView], spread: &[&str]) -> Option<(String, u32)> {
        let all = tasks(nodes);
        let refs: Vec<&Task> = all.iter().collect();
        pick(nodes, &spec(spread), &refs).map(|t| (t.node.clone().unwrap(), t.slot))
    }

    #[test]
    fn a_replica_moves_off_the_fullest_node_only_when_that_evens_things_out() {
        // Host3 came back empty: one of host1's two moves (its highest slot).
        let back = [node("h1", None, 2), node("h2", None, 1), node("h3", None, 0)];
        assert_eq!(moved(&back, &[]), Some(("h1".into(), 2)));
        // A gap of one is as even as it gets.
        assert_eq!(moved(&[node("h1", None, 2), node("h2", None, 1)], &[]), None);
        assert_eq!(moved(&[node("h1", None, 1), node("h2", None, 1), node("h3", None, 0)], &[]), None);
        // The node it would go to must take it: drained, nothing moves.
        let mut drained = node("h3", None, 0);
        drained.schedulable = false;
        assert_eq!(moved(&[node("h1", None, 3), node("h2", None, 0), drained.clone()], &[]), Some(("h1".into(), 3)));
        assert_eq!(moved(&[node("h1", None, 2), drained], &[]), None);
    }

    #[test]
    fn with_a_spread_preference_label_values_even_out_first() {
        // Zone b has nothing: a replica leaves zone a, though no node has two.
        let zones = [node("a1", Some("a"), 1), node("a2", Some("a"), 1), node("b1", Some("b"), 0)];
        assert_eq!(moved(&zones, &["zone"]), Some(("a1".into(), 1)));
        // Even over zones, and within a zone: nothing moves.
        let even = [node("a1", Some("a"), 1), node("a2", Some("a"), 0), node("b1", Some("b"), 1)];
        assert_eq!(moved(&even, &["zone"]), None);
        // Within one zone, nodes even out as without a preference.
        let lopsided = [node("a1", Some("a"), 2), node("a2", Some("a"), 0), node("b1", Some("b"), 2)];
        assert_eq!(moved(&lopsided, &["zone"]), Some(("a1".into(), 2)));
    }
}
