//! Node liveness on the leader: heartbeats are kept in memory, never
//! written to Raft; only transitions (ready -> down -> ready) become
//! commands. Pure: the caller passes the time.
//!
//! Each beat says how long the node may now stay silent: the timeout of
//! the period its answer asks for (`pace`), so nodes of a large cluster,
//! asked to beat less often, have longer.
//!
//! A new leader has heard no one yet, so it waits the longest such timeout
//! from its own start before calling any node down.
//!
//! Nor does it call most of the cluster down at once. When at least `MASS`
//! nodes are silent in one look and, with the nodes already down, they are
//! more than half of all nodes, the leader is more likely behind (its
//! runtimes starved, its own link cut) than most of its nodes gone, and
//! moving all their tasks onto the rest would bury those too. It holds
//! them ready, and says so, until fewer are silent: Kubernetes likewise
//! stops evicting when a whole zone turns unhealthy at once. (Seen with
//! 1000 simulated nodes on 2 cores and services created eight at a time:
//! the leader took 3,389 nodes down in waves, and every task was placed
//! again.) Small clusters are never held: two of three nodes gone is not
//! a crowd, and their tasks move.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use berth_proto::model::{Node, NodeStatus};

use crate::state::Command;

/// The fewest nodes silent at once that may be a crowd (see the module doc).
pub const MASS: usize = 10;

#[derive(Debug)]
pub struct Liveness {
    /// How long this leader waits from its start before calling a node it
    /// never heard down: the longest any node may have been told to be
    /// silent (`pace`).
    settle: Duration,
    /// When this leader started listening.
    since: Instant,
    /// Each node heard: until when it counts as alive.
    alive_until: HashMap<String, Instant>,
}

impl Liveness {
    pub fn new(settle: Duration, now: Instant) -> Self {
        Self { settle, since: now, alive_until: HashMap::new() }
    }

    /// Records a heartbeat, after which the node may stay silent for
    /// `timeout`; answers whether the node was alive before it (if not,
    /// the next look may bring it back: see `next_look`).
    pub fn heartbeat(&mut self, node: &str, now: Instant, timeout: Duration) -> bool {
        let was_alive = self.alive(node, now);
        let until = now + timeout;
        match self.alive_until.get_mut(node) {
            Some(at) => *at = until,
            None => {
                self.alive_until.insert(node.to_owned(), until);
            }
        }
        was_alive
    }

    /// Whether the node has been heard from within its timeout.
    pub fn alive(&self, node: &str, now: Instant) -> bool {
        self.alive_until.get(node).is_some_and(|until| now < *until)
    }

    /// Status changes to commit: ready nodes not heard from within their
    /// timeout (counted from this leader's start at the earliest) go down,
    /// unless they are a crowd (see the module doc); down nodes heard from
    /// again come back. Also how many silent nodes are held ready.
    pub fn transitions(&self, nodes: &BTreeMap<String, Node>, now: Instant) -> (Vec<Command>, usize) {
        let settled = now.saturating_duration_since(self.since) >= self.settle;
        let silent = nodes.values().filter(|n| n.status == NodeStatus::Ready && !self.alive(&n.id, now)).count();
        let already = nodes.values().filter(|n| n.status == NodeStatus::Down).count();
        let crowd = silent >= MASS && (silent + already) * 2 > nodes.len();
        let commands = nodes
            .values()
            .filter_map(|n| {
                let alive = self.alive(&n.id, now);
                let status = match n.status {
                    NodeStatus::Ready if !alive && settled && !crowd => NodeStatus::Down,
                    NodeStatus::Down if alive => NodeStatus::Ready,
                    _ => return None,
                };
                Some(Command::SetNodeStatus { id: n.id.clone(), status })
            })
            .collect();
        (commands, if crowd && settled { silent } else { 0 })
    }

    /// When a look may next find a change that no heartbeat brings: the
    /// first moment a ready node heard from falls silent, or the end of
    /// this leader's settling. Between those, only a silent node heard
    /// again (`heartbeat` says so) or a change of the nodes themselves can
    /// make `transitions` answer differently, so the leader waits for those
    /// instead of looking on a timer.
    pub fn next_look(&self, nodes: &BTreeMap<String, Node>, now: Instant) -> Option<Instant> {
        let settled = self.since + self.settle;
        let silent_at = nodes
            .values()
            .filter(|n| n.status == NodeStatus::Ready)
            .filter_map(|n| self.alive_until.get(&n.id))
            .copied();
        silent_at.chain(Some(settled)).filter(|at| *at > now).min()
    }

    /// Forgets nodes that left the cluster.
    pub fn retain(&mut self, nodes: &BTreeMap<String, Node>) {
        self.alive_until.retain(|id, _| nodes.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::model::Availability;

    use super::*;

    const FIVE: Duration = Duration::from_secs(5);

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

    fn ids((cmds, _held): (Vec<Command>, usize)) -> Vec<(String, NodeStatus)> {
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
        assert!(live.transitions(&all, s(4)).0.is_empty(), "a new leader waits a full timeout");
        live.heartbeat("a", s(3), FIVE);
        assert_eq!(ids(live.transitions(&all, s(5))), [("b".into(), NodeStatus::Down)]);
        assert_eq!(ids(live.transitions(&all, s(8))), [("a".into(), NodeStatus::Down), ("b".into(), NodeStatus::Down)]);
        all.get_mut("a").unwrap().status = NodeStatus::Down;
        live.heartbeat("a", s(9), FIVE);
        assert_eq!(
            ids(live.transitions(&all, s(10))),
            [("a".into(), NodeStatus::Ready), ("b".into(), NodeStatus::Down)]
        );
        all.remove("b");
        live.retain(&all);
        assert!(!live.alive("b", s(10)));
    }

    #[test]
    fn the_next_look_is_when_a_ready_node_falls_silent_or_the_leader_settles() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut live = Liveness::new(Duration::from_secs(5), t0);
        let all = nodes(&[("a", NodeStatus::Ready), ("b", NodeStatus::Ready), ("c", NodeStatus::Down)]);
        assert_eq!(live.next_look(&all, s(1)), Some(s(5)), "unheard nodes go down when the leader settles");
        assert!(!live.heartbeat("a", s(2), FIVE), "a node first heard was not alive");
        assert!(live.heartbeat("a", s(3), FIVE));
        assert!(!live.heartbeat("c", s(4), FIVE), "a down node heard again: the next look brings it back");
        assert_eq!(live.next_look(&all, s(4)), Some(s(5)));
        // Settled: a falls silent at 8; c is down, and only a heartbeat changes it.
        assert_eq!(live.next_look(&all, s(6)), Some(s(8)));
        let b_down_c_back = [("b".into(), NodeStatus::Down), ("c".into(), NodeStatus::Ready)];
        assert_eq!(ids(live.transitions(&all, s(7))), b_down_c_back);
        assert_eq!(ids(live.transitions(&all, s(8)))[0], ("a".into(), NodeStatus::Down));
        // Every ready node silent already: nothing is due without news.
        assert_eq!(live.next_look(&all, s(9)), None);
        assert!(!live.heartbeat("b", s(10), FIVE));
        assert_eq!(live.next_look(&all, s(10)), Some(s(15)));
    }

    #[test]
    fn each_node_has_the_silence_its_last_answer_allowed() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        // A leader of a large cluster settles after the longest silence
        // any node may have been told.
        let mut live = Liveness::new(Duration::from_secs(20), t0);
        let all = nodes(&[("a", NodeStatus::Ready), ("b", NodeStatus::Ready)]);
        assert!(live.transitions(&all, s(19)).0.is_empty());
        live.heartbeat("a", s(1), Duration::from_secs(20));
        live.heartbeat("b", s(2), FIVE);
        assert_eq!(live.next_look(&all, s(3)), Some(s(7)), "b, asked for the ordinary beat, is due first");
        assert_eq!(ids(live.transitions(&all, s(20))), [("b".into(), NodeStatus::Down)]);
        // a was told a long period; the cluster shrank, and its next answer
        // asks for the ordinary beat: the timeout follows the last answer.
        assert!(live.alive("a", s(20)));
        live.heartbeat("a", s(20), FIVE);
        assert_eq!(live.next_look(&all, s(21)), Some(s(25)));
        assert_eq!(
            ids(live.transitions(&all, s(25))),
            [("a".into(), NodeStatus::Down), ("b".into(), NodeStatus::Down)]
        );
    }

    #[test]
    fn a_crowd_falling_silent_at_once_is_held_ready_and_a_few_are_not() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut live = Liveness::new(Duration::from_secs(5), t0);
        let names: Vec<String> = (0..20).map(|i| format!("n{i:02}")).collect();
        let mut all = nodes(&names.iter().map(|n| (n.as_str(), NodeStatus::Ready)).collect::<Vec<_>>());
        // Nine stay, eleven fall silent: more than half, and a crowd.
        for n in &names[..9] {
            live.heartbeat(n, s(6), FIVE);
        }
        let (cmds, held) = live.transitions(&all, s(7));
        assert_eq!((cmds.len(), held), (0, 11), "{cmds:?}");
        // Four of them beat again: seven silent, no longer a crowd; they go down.
        for n in &names[9..13] {
            live.heartbeat(n, s(7), FIVE);
        }
        let (cmds, held) = live.transitions(&all, s(8));
        assert_eq!(held, 0);
        assert_eq!(cmds.len(), 7);
        // Seven down already: ten more silent would make seventeen of twenty.
        for n in &names[13..] {
            all.get_mut(n).unwrap().status = NodeStatus::Down;
        }
        for n in &names[..3] {
            live.heartbeat(n, s(20), FIVE);
        }
        let (cmds, held) = live.transitions(&all, s(21));
        assert_eq!((cmds.len(), held), (0, 10));
        // A small cluster is never held: two of three silent go down.
        let small = nodes(&[("a", NodeStatus::Ready), ("b", NodeStatus::Ready), ("c", NodeStatus::Ready)]);
        let mut live = Liveness::new(Duration::from_secs(5), t0);
        live.heartbeat("a", s(6), FIVE);
        assert_eq!(
            ids(live.transitions(&small, s(7))),
            [("b".into(), NodeStatus::Down), ("c".into(), NodeStatus::Down)]
        );
    }
}
