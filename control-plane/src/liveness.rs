//! Node liveness on the leader: heartbeats are kept in memory, never
//! written to Raft; only transitions (ready -> down -> ready) become
//! commands. Pure: the caller passes the time.
//!
//! A new leader has heard no one yet, so it waits a full timeout from its
//! own start before calling any node down.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use berth_proto::model::{Node, NodeStatus};

use crate::state::Command;

#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    /// When this leader started listening.
    since: Instant,
    last_seen: HashMap<String, Instant>,
}

impl Liveness {
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self { timeout, since: now, last_seen: HashMap::new() }
    }

    pub fn heartbeat(&mut self, node: &str, now: Instant) {
        match self.last_seen.get_mut(node) {
            Some(seen) => *seen = now,
            None => {
                self.last_seen.insert(node.to_owned(), now);
            }
        }
    }

    /// Whether the node has been heard from within the timeout.
    pub fn alive(&self, node: &str, now: Instant) -> bool {
        self.last_seen.get(node).is_some_and(|seen| now.saturating_duration_since(*seen) < self.timeout)
    }

    /// Status changes to commit: ready nodes not heard from within the
    /// timeout (counted from this leader's start at the earliest) go down;
    /// down nodes heard from again come back.
    pub fn transitions(&self, nodes: &BTreeMap<String, Node>, now: Instant) -> Vec<Command> {
        let settled = now.saturating_duration_since(self.since) >= self.timeout;
        nodes
            .values()
            .filter_map(|n| {
                let alive = self.alive(&n.id, now);
                let status = match n.status {
                    NodeStatus::Ready if !alive && settled => NodeStatus::Down,
                    NodeStatus::Down if alive => NodeStatus::Ready,
                    _ => return None,
                };
                Some(Command::SetNodeStatus { id: n.id.clone(), status })
            })
            .collect()
    }

    /// Forgets nodes that left the cluster.
    pub fn retain(&mut self, nodes: &BTreeMap<String, Node>) {
        self.last_seen.retain(|id, _| nodes.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::model::Availability;

    use super::*;

    fn nodes(statuses: &[(&str, NodeStatus)]) -> BTreeMap<String, Node> {
        statuses
            .iter()
            .map(|(id, status)| {
                let node = Node {
                    id: (*id).into(),
                    name: (*id).into(),
                    address: String::new(),
                    labels: Default::default(),
                    capacity: Default::default(),
                    status: *status,
                    availability: Availability::Active,
                    subnet: None,
                    overlay: None,
                    reads: 0,
                };
                ((*id).into(), node)
            })
            .collect()
    }

    fn ids(cmds: &[Command]) -> Vec<(String, NodeStatus)> {
        cmds.iter()
            .map(|c| match c {
                Command::SetNodeStatus { id, status } => (id.clone(), *status),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn silence_past_the_timeout_is_down_and_a_heartbeat_brings_it_back() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut live = Liveness::new(Duration::from_secs(5), t0);
        let mut all = nodes(&[("a", NodeStatus::Ready), ("b", NodeStatus::Ready)]);
        assert!(live.transitions(&all, s(4)).is_empty(), "a new leader waits a full timeout");
        live.heartbeat("a", s(3));
        assert_eq!(ids(&live.transitions(&all, s(5))), [("b".into(), NodeStatus::Down)]);
        assert_eq!(
            ids(&live.transitions(&all, s(8))),
            [("a".into(), NodeStatus::Down), ("b".into(), NodeStatus::Down)]
        );
        all.get_mut("a").unwrap().status = NodeStatus::Down;
        live.heartbeat("a", s(9));
        assert_eq!(
            ids(&live.transitions(&all, s(10))),
            [("a".into(), NodeStatus::Ready), ("b".into(), NodeStatus::Down)]
        );
        all.remove("b");
        live.retain(&all);
        assert!(!live.alive("b", s(10)));
    }
}
