//! The watch of a node's tasks (`Agent::watch_tasks`): a stream that sends
//! the node's whole list, then what changed at each publication (see
//! `publish`), and the last message again as a keepalive.
//!
//! A message has two parts. The node's own (its tasks, network and
//! volumes) differs from node to node. The services and peers are the
//! same for every node that was last sent the same revision, so that part
//! is made, and converted to the wire, once per publication and revision
//! sent (`Wire`), and each watch copies it into its node's message. Made
//! by each watch, it was most of a server's work at a thousand nodes: the
//! same filtering of a thousand-replica service and the same address
//! formatting, once per node.
//!
//! Copied into each message, the common part still cost a deep copy of
//! every endpoint's strings per node, and prost's walk of them to size
//! and encode it: with the allocator, most of what a server spent placing
//! 100,000 tasks on 1000 nodes. An agent that asks (`shared`) is sent it
//! encoded once, as bytes (`AssignedTasks.shared`) that every message
//! holds by reference and the agent merges; an agent of the release
//! before is sent it copied, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use berth_proto::model::Removed;
use berth_proto::pb::agent::{AssignedTasks, WatchTasksRequest};
use berth_proto::prost::bytes::Bytes;
use berth_proto::prost::Message as _;
use tokio::sync::watch::Receiver;
use tokio::sync::Notify;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::node::Node;
use crate::publish::{Published, Share};
use crate::state::ServicesTouched;
use crate::stats::Open;

/// A watch repeats its list at least this often, as a keepalive; otherwise
/// it wakes when the applied state moves.
const WATCH_REFRESH: Duration = Duration::from_secs(5);

/// This server's publications and their common parts on the wire, shared
/// by all its watches.
#[derive(Debug, Clone)]
pub struct Watches {
    published: Receiver<Arc<Published>>,
    /// Rung by each new watch (see `publish::spawn`).
    wanted: Arc<Notify>,
    wire: Arc<Mutex<Wire>>,
}

/// The common parts made for the newest publication a watch asked about.
#[derive(Debug, Default)]
struct Wire {
    revision: u64,
    whole: Option<Arc<Common>>,
    /// By (revision sent, partial services); None: the log does not reach back.
    deltas: HashMap<(u64, bool), Option<Arc<Common>>>,
    /// The same for streams resumed from another server's revision (made
    /// from the touched tasks); None: they are not known.
    resumed: HashMap<(u64, bool), Option<Arc<Common>>>,
}

/// A common part (peers, services and their removals), and the same
/// encoded, made when a watch that merges it first asks.
#[derive(Debug)]
struct Common {
    message: AssignedTasks,
    encoded: OnceLock<Bytes>,
}

impl Common {
    fn new(message: AssignedTasks) -> Arc<Self> {
        Arc::new(Self { message, encoded: OnceLock::new() })
    }

    fn encoded(&self) -> Bytes {
        let m = &self.message;
        let encode = || {
            let shared = AssignedTasks {
                peers: m.peers.clone(),
                services: m.services.clone(),
                removed_peers: m.removed_peers.clone(),
                removed_services: m.removed_services.clone(),
                ..AssignedTasks::default()
            };
            Bytes::from(shared.encode_to_vec())
        };
        self.encoded.get_or_init(encode).clone()
    }
}

impl Watches {
    pub fn new((published, wanted): (Receiver<Arc<Published>>, Arc<Notify>)) -> Self {
        Self { published, wanted, wire: Arc::default() }
    }

    /// The stream of a node's messages, as `asked`: whole lists only, or
    /// deltas with partial services (`replica_deltas`), resumed from the
    /// revision the agent holds (`resume`).
    pub fn stream(&self, node: Arc<Node>, asked: WatchTasksRequest) -> ReceiverStream<Result<AssignedTasks, Status>> {
        let WatchTasksRequest { node_id, deltas, replica_deltas, resume, shared } = asked;
        let resume = Some(resume).filter(|r| deltas && *r > 0);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (watches, mut published) = (self.clone(), self.published.clone());
        self.wanted.notify_one();
        tokio::spawn(async move {
            let _open = Open::count(&node.stats.watch_streams);
            // What the stream last sent: the revision, and the node's share.
            let mut sent: Option<(u64, Arc<Share>)> = None;
            let mut sent_at = tokio::time::Instant::now();
            // Never a list older than the state when the watch began (a
            // publication made before, while no watch asked for newer ones,
            // would stop tasks placed since), nor than the agent's.
            let fresh = node.last_applied().map_or(1, |l| l.index.max(1)).max(resume.unwrap_or(0));
            loop {
                let p = published.borrow_and_update().clone();
                let keepalive = sent_at.elapsed() >= WATCH_REFRESH;
                let message = match (&sent, resume) {
                    (None, _) if p.revision < fresh => None,
                    (None, Some(from)) => {
                        let touched = || {
                            let applied = node.applied.read().ok()?;
                            applied.touches.services_after(from)
                        };
                        Some(watches.resumed(&p, &node_id, from, touched, replica_deltas, shared))
                    }
                    (Some((rev, share)), _) if !keepalive && !p.moved(&node_id, *rev, share) => None,
                    (Some((rev, share)), _) if deltas => {
                        Some(watches.delta(&p, &node_id, *rev, share, replica_deltas, shared))
                    }
                    _ => Some(watches.whole(&p, &node_id, shared)),
                };
                if let Some(message) = message {
                    node.stats.watch_messages.inc();
                    node.stats.watch_bytes.inc_by(message.encoded_len() as u64);
                    if message.delta {
                        node.stats.watch_deltas.inc();
                    }
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                    sent = Some((p.revision, p.share(&node_id)));
                    sent_at = tokio::time::Instant::now();
                }
                // A keepalive is due only once something was sent: a stream
                // waiting for a state as new as a resumed agent's (this
                // server lagging) waits for publications alone, and ends
                // when its agent gives up on it.
                let refresh = match sent {
                    Some(_) => WATCH_REFRESH.saturating_sub(sent_at.elapsed()),
                    None => WATCH_REFRESH,
                };
                tokio::select! {
                    changed = tokio::time::timeout(refresh, published.changed()) => {
                        if let Ok(Err(_)) = changed {
                            return; // the publisher stopped: the server is shutting down
                        }
                    }
                    () = tx.closed() => return,
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// `node`'s whole list at `p`.
    fn whole(&self, p: &Published, node: &str, shared: bool) -> AssignedTasks {
        let (own, _) = p.own(node, &Share::default());
        let own = AssignedTasks { revision: p.revision, ..own.into() };
        let make = || Common::new(AssignedTasks::from(p.whole()));
        let common = self.memo(p, |wire| match wire {
            Some(wire) => wire.whole.get_or_insert_with(make).clone(),
            None => make(),
        });
        joined(own, &common, node, shared)
    }

    /// What changed for `node` at `p` since it was sent revision `sent`
    /// with share `before`; its whole list when the log does not reach back.
    fn delta(
        &self,
        p: &Published,
        node: &str,
        sent: u64,
        before: &Share,
        partial: bool,
        shared: bool,
    ) -> AssignedTasks {
        let make = || p.common(sent, partial).map(|(c, r)| Common::new(AssignedTasks::delta(c, r, p.revision)));
        let common = self.memo(p, |wire| match wire {
            Some(wire) => wire.deltas.entry((sent, partial)).or_insert_with(make).clone(),
            None => make(),
        });
        match common {
            Some(common) => {
                let (own, gone) = p.own(node, before);
                joined(AssignedTasks::delta(own, gone, p.revision), &common, node, shared)
            }
            None => self.whole(p, node, shared),
        }
    }

    /// The first message of a stream resumed from revision `from`, which
    /// another server sent: the services of the tasks `touched` since
    /// (None: not known, or a command that touched all came since), and
    /// the node's own part whole (this server does not know what of it
    /// the other sent); else its whole list.
    fn resumed(
        &self,
        p: &Published,
        node: &str,
        from: u64,
        touched: impl FnOnce() -> Option<ServicesTouched>,
        partial: bool,
        shared: bool,
    ) -> AssignedTasks {
        let make = || {
            let touched = touched()?;
            let (changed, removed) = p.touched_common(&touched, partial);
            Some(Common::new(AssignedTasks::delta(changed, removed, p.revision)))
        };
        let common = self.memo(p, |wire| match wire {
            Some(wire) => wire.resumed.entry((from, partial)).or_insert_with(make).clone(),
            None => make(),
        });
        match common {
            Some(common) => {
                let (own, _) = p.own(node, &Share::default());
                let gone = Removed { tasks_whole: true, ..Removed::default() };
                joined(AssignedTasks::delta(own, gone, p.revision), &common, node, shared)
            }
            None => {
                tracing::debug!(
                    node,
                    from,
                    revision = p.revision,
                    "watch not resumed: what changed since is not known"
                );
                self.whole(p, node, shared)
            }
        }
    }

    /// Runs `f` with the common parts of `p` made so far (made under the
    /// lock: another watch wanting the same would make the same), or
    /// without any for a watch still on an older publication than the
    /// newest asked about.
    fn memo<T>(&self, p: &Published, f: impl FnOnce(Option<&mut Wire>) -> T) -> T {
        let mut wire = self.wire.lock().ok().filter(|w| p.revision >= w.revision);
        if let Some(w) = wire.as_deref_mut().filter(|w| p.revision > w.revision) {
            *w = Wire { revision: p.revision, ..Wire::default() };
        }
        f(wire.as_deref_mut())
    }
}

/// `node`'s message: its own part, and the common part less its own peer;
/// for an agent that merges it, the common part as encoded once.
fn joined(own: AssignedTasks, common: &Common, node: &str, shared: bool) -> AssignedTasks {
    if shared {
        return AssignedTasks { shared: common.encoded(), ..own };
    }
    let common = &common.message;
    AssignedTasks {
        peers: common.peers.iter().filter(|p| p.node_id != node).cloned().collect(),
        removed_peers: common.removed_peers.iter().filter(|p| *p != node).cloned().collect(),
        services: common.services.clone(),
        removed_services: common.removed_services.clone(),
        ..own
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{Cidr, Desired, Overlay, Task, TaskState};

    use super::*;
    use crate::state::{apply, Command, State};
    use crate::testing;

    const NODES: [&str; 3] = ["n1", "n2", "n3"];

    /// Three nodes with overlays, two services with replicas on each.
    fn state() -> State {
        let mut state = State::default();
        for (i, id) in NODES.iter().enumerate() {
            let node = berth_proto::model::Node {
                subnet: Some(format!("198.19.{}.0/24", i + 1).parse::<Cidr>().unwrap()),
                overlay: Some(Overlay {
                    public_key: format!("key-{i}"),
                    endpoint: format!("198.18.0.{}:51820", i + 1),
                }),
                ..testing::node(id)
            };
            state.nodes.insert((*id).into(), node);
        }
        for s in ["web", "db"] {
            apply(&mut state, &Command::CreateService(testing::spec(s, 30)));
            for slot in 1..=30u32 {
                place(&mut state, s, slot, slot as usize % 3);
            }
        }
        state
    }

    fn place(state: &mut State, service: &str, slot: u32, n: usize) {
        let mut t = Task::new(service, slot, 1, 1, Default::default());
        t.node = Some(NODES[n].into());
        t.address = Some([198, 19, n as u8 + 1, slot as u8].into());
        t.state = TaskState::Running;
        state.tasks.insert(t.id.clone(), t);
    }

    /// Each node's message as the model makes it for that node alone.
    fn alone(p: &Published, node: &str, sent: Option<(u64, &Share)>, partial: bool) -> AssignedTasks {
        match sent.and_then(|(rev, share)| p.delta(node, rev, share, partial)) {
            Some((changed, removed)) => AssignedTasks::delta(changed, removed, p.revision),
            None => AssignedTasks { revision: p.revision, ..p.full(node).into() },
        }
    }

    /// Whichever node's watch made the common part first, every node's
    /// message is the one made for it alone: whole lists, deltas with
    /// whole or partial services, and a watch still on an older
    /// publication after a newer one was asked about.
    #[test]
    fn messages_joined_from_shared_parts_are_each_nodes_own() {
        joined_messages_are_each_nodes_own(false);
    }

    /// The same for agents that merge the common part, sent encoded once.
    #[test]
    fn messages_with_the_shared_part_encoded_once_merge_into_each_nodes_own() {
        joined_messages_are_each_nodes_own(true);
    }

    fn joined_messages_are_each_nodes_own(shared: bool) {
        // As the agent reads it: the shared part merged, its own peer left out.
        let read = |mut m: AssignedTasks, node: &str| {
            assert_eq!(m.services.is_empty() && m.peers.is_empty(), shared, "sent as bytes, or copied in");
            m.merge_shared(node).unwrap();
            m
        };
        let mut state = state();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Published::default()));
        let watches = Watches::new((rx, Arc::default()));
        let p1 = Published::next(&Published::default(), &state, 1, None);
        for node in NODES {
            let message = read(watches.whole(&p1, node, shared), node);
            assert_eq!(message, alone(&p1, node, None, false), "{node}");
            assert!(message.peers.iter().all(|p| p.node_id != node), "{node} is not its own peer");
            assert_eq!((message.peers.len(), message.services.len()), (2, 2));
        }
        if shared {
            // One encoding, held by every node's message.
            let bytes = |node| watches.whole(&p1, node, true).shared;
            assert_eq!(bytes("n1").as_ptr(), bytes("n3").as_ptr());
        }
        // A task placed, one failed, one stopped, a node's endpoint moved.
        place(&mut state, "web", 31, 0);
        state.tasks.get_mut("web.2.1").unwrap().state = TaskState::Failed;
        state.tasks.get_mut("db.3.1").unwrap().desired = Desired::Shutdown;
        state.nodes.get_mut("n2").unwrap().overlay.as_mut().unwrap().endpoint = "198.18.0.9:51820".into();
        let p2 = Published::next(&p1, &state, 2, None);
        for partial in [true, false] {
            for node in NODES {
                let share = p1.share(node);
                let message = read(watches.delta(&p2, node, 1, &share, partial, shared), node);
                assert_eq!(message, alone(&p2, node, Some((1, &share)), partial), "{node}, partial {partial}");
                assert!(message.delta);
                let moved_peer = (node != "n2") as usize;
                assert_eq!(message.peers.len(), moved_peer, "{node}: n2's new endpoint, to the others");
            }
        }
        // n1's new task is its own; the others see only its endpoint.
        assert_eq!(watches.delta(&p2, "n1", 1, &p1.share("n1"), true, shared).tasks.len(), 1);
        assert!(watches.delta(&p2, "n3", 1, &p1.share("n3"), true, shared).tasks.is_empty());
        // A watch behind the newest publication still gets its own message.
        for node in NODES {
            assert_eq!(read(watches.whole(&p1, node, shared), node), alone(&p1, node, None, false));
        }
        // One the log no longer reaches back to gets its whole list.
        let mut p = p2;
        for i in 0..1100u64 {
            state.tasks.get_mut("web.5.1").unwrap().state = [TaskState::Running, TaskState::Failed][i as usize % 2];
            p = Published::next(&p, &state, i + 3, None);
        }
        let behind = read(watches.delta(&p, "n1", 1, &p1.share("n1"), true, shared), "n1");
        assert_eq!(behind, alone(&p, "n1", None, true));
        assert!(!behind.delta);
    }

    /// A watch resumed from a revision another server sent starts with
    /// the services of the tasks touched since and its node's tasks
    /// whole; over the wire, the agent's list becomes the whole one, a
    /// task that left it gone too. Without touches, the whole list.
    #[test]
    fn a_resumed_watch_starts_with_the_touched_services_and_its_tasks_whole() {
        let mut state = state();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Published::default()));
        let watches = Watches::new((rx, Arc::default()));
        // (What the agent left out and why is each message's own: not compared.)
        let over_the_wire = |m: AssignedTasks| berth_proto::model::Assignment {
            skipped: vec![],
            ..berth_proto::model::Assignment::try_from(m).unwrap()
        };
        // The agent's list, from another server at revision 3.
        let theirs = Published::next(&Published::default(), &state, 3, None);
        let held = over_the_wire(alone(&theirs, "n1", None, true));
        // This server published at 2 and then at 5; meanwhile one of n1's
        // tasks went, one came, and another service's replica moved.
        let p2 = Published::next(&Published::default(), &state, 2, None);
        let mut touched = ServicesTouched::new();
        for id in ["web.3.1", "web.31.1", "db.5.1"] {
            let service = id.split('.').next().unwrap();
            touched
                .entry(service.into())
                .or_insert_with(|| Some(Default::default()))
                .as_mut()
                .unwrap()
                .insert(id.into());
        }
        state.tasks.remove("web.3.1");
        place(&mut state, "web", 31, 0);
        state.tasks.get_mut("db.5.1").unwrap().address = Some([198, 19, 9, 9].into());
        let p5 = Published::next(&p2, &state, 5, None);
        for partial in [true, false] {
            let mut message = watches.resumed(&p5, "n1", 3, || Some(touched.clone()), partial, false);
            let (changed, removed) = p5.resumed("n1", &touched, partial);
            assert_eq!(message, AssignedTasks::delta(changed, removed, 5), "partial {partial}");
            assert!(message.delta && message.tasks_whole);
            assert_eq!(message.tasks.len(), p5.share("n1").tasks.len(), "n1's tasks, all of them");
            let names: Vec<&str> = message.services.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["db", "web"], "the two services touched, not the cluster");
            if partial {
                assert_eq!(message.services[0].endpoints.len(), 1, "db's moved replica alone");
            }
            let removed = message.take_removed();
            let mut agent = held.clone();
            agent.apply(over_the_wire(message), removed);
            assert_eq!(agent, over_the_wire(alone(&p5, "n1", None, true)));
            assert!(!agent.refused.contains_key("web.3.1") && !agent.tasks.contains_key("web.3.1"));
        }
        // Touches not known that far back (or a command that touched all): the whole list.
        let p6 = Published::next(&p5, &state, 6, None);
        let whole = watches.resumed(&p6, "n1", 3, || None, true, false);
        assert!(!whole.delta && !whole.tasks_whole);
        assert_eq!(whole, alone(&p6, "n1", None, true));
    }
}
