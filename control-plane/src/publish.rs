//! What agents' task watches carry, made once per publication and shared
//! by every watch on this server, with a log of what changed, so that a
//! watch sends its node only what changed since its last message.
//!
//! Before this, each watch built its node's whole assignment from the
//! state on every commit (every task walked, every service's endpoints
//! made) and sent it whole: N nodes × the cluster per change. Now the
//! server makes one `Published` per batch of commits (`next`, from the
//! last one: a task whose assignment did not change keeps its `Arc`), and
//! a watch takes its node's share (`Share`, compared by pointer first)
//! and the shared changes since the revision it last sent (`log`). What
//! a node receives for a change elsewhere is that change, not the cluster.
//!
//! ```text
//!   state ──next()──▶ Published{rev, services, peers, shares, log} ──watch──▶ every stream
//!                                                      │
//!   stream(sent rev r, sent share) ──delta(node, r)────┘──▶ changed tasks/peers/services + removed
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::model::{
    AssignedTask, Assignment, Desired, Files, NodeNetwork, Peer, Removed, Replica, ServiceEndpoints, Task, TaskSpec,
    TaskState,
};
use tokio::sync::Notify;

use crate::node::Node;
use crate::state::{ServicesTouched, Since, State, Touched};

/// The least time between two publications: a burst of commits makes one.
const GAP: Duration = Duration::from_millis(50);
/// A publication that took t is followed by at least DUTY × t of rest, so
/// publishing takes at most about a third of the server however big the
/// cluster is.
const DUTY: u32 = 2;

/// How long the publisher waits with nothing applied and no new watch
/// before it looks whether its watches are all gone.
const IDLE: Duration = Duration::from_secs(5);

/// Publishes the applied state for this server's watches, while any
/// watches; a watch subscribes with `Receiver::clone` and is woken by each
/// publication. A new watch rings the bell (the `Notify`) so that a state
/// published before it came, or not at all, is published for it at once.
pub fn spawn(node: Arc<Node>) -> (tokio::sync::watch::Receiver<Arc<Published>>, Arc<Notify>) {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Published::default()));
    let wanted = Arc::new(Notify::new());
    let bell = wanted.clone();
    tokio::spawn(async move {
        let mut seen = None;
        let mut rest = GAP;
        loop {
            tokio::time::sleep(rest).await;
            let applied = tokio::select! {
                applied = node.applied_after(seen, IDLE) => applied,
                () = bell.notified() => node.last_applied(),
            };
            if tx.is_closed() {
                return;
            }
            let stale = tx.borrow().revision != applied.map_or(0, |l| l.index) || seen.is_none();
            if tx.receiver_count() <= 1 || !stale {
                // Nothing to publish for this state (a new watch rings for
                // it). Without this, a server no agent watched looked again
                // every GAP, twenty times a second, for as long as it ran.
                seen = applied;
                continue;
            }
            let started = Instant::now();
            let prev = tx.borrow().clone();
            // On a blocking thread, as the reconciler's passes: at 100,000
            // tasks a publication is tens of ms of CPU under the state lock.
            let reader = node.clone();
            let made = tokio::task::spawn_blocking(move || {
                let a = reader.applied.read().ok()?;
                let touched = a.touches.after(prev.revision).filter(|_| prev.revision > 0);
                let next = Published::next(&prev, &a.state, a.last_applied.map_or(0, |l| l.index), touched.as_ref());
                Some((a.last_applied, next))
            })
            .await;
            let Ok(Some((applied, next))) = made else { return };
            seen = applied;
            tx.send_replace(Arc::new(next));
            let took = started.elapsed();
            node.stats.publish_seconds.observe(took.as_secs_f64());
            rest = GAP.max(took * DUTY);
        }
    });
    (rx, wanted)
}

/// Publications a watch may lag behind and still get a delta; one that
/// lags more gets its whole list again.
const LOG_KEPT: usize = 1024;

/// One node's own part: its tasks, its network and its volumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Share {
    pub tasks: BTreeMap<String, Arc<AssignedTask>>,
    pub network: Option<NodeNetwork>,
    pub volumes: Option<BTreeSet<String>>,
}

/// A service or a peer changed (or came), or went, at a revision; or only
/// some of a service's replicas (and maybe its `started`) did.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Service(String),
    Peer(String),
    /// The tasks whose replicas came, changed or went.
    Replicas(String, Vec<String>),
}

#[derive(Debug, Default)]
pub struct Published {
    /// The applied index it was made at.
    pub revision: u64,
    pub services: BTreeMap<String, Arc<ServiceEndpoints>>,
    /// Every node with an overlay, by id.
    pub peers: BTreeMap<String, Arc<Peer>>,
    pub shares: HashMap<String, Arc<Share>>,
    /// Services and peers that changed, came or went, by the revision that
    /// published it; complete for every revision after `since`.
    log: BTreeMap<u64, Arc<[Change]>>,
    since: u64,
}

impl Published {
    /// The publication of `state` at `revision`, reusing what did not
    /// change since `prev`. With `touched` (what the commands since `prev`
    /// may have changed, `state::Touches`), only the touched tasks'
    /// services and nodes are made again, and the services named by a
    /// spec's command whole from their own tasks (`State::tasks_of`), with
    /// those tasks' nodes; without, everything is.
    pub fn next(prev: &Published, state: &State, revision: u64, touched: Option<&Since>) -> Published {
        let (services, peers, shares) = match touched {
            Some(since) => {
                let of_services = since.of_services(state);
                let tasks: Vec<&Touched> = since.tasks.iter().copied().chain(&of_services).collect();
                // The services named are made whole below: their tasks patch none.
                let patched: Vec<&Touched> =
                    since.tasks.iter().copied().filter(|t| !since.services.contains(t.service.as_str())).collect();
                let mut services = services_touched(prev, state, &patched);
                for name in &since.services {
                    match endpoints_of(state, name) {
                        Some(now) => drop(services.insert((*name).to_owned(), keep(prev.services.get(*name), now))),
                        None => drop(services.remove(*name)),
                    }
                }
                (services, prev.peers.clone(), shares_touched(prev, state, &tasks))
            }
            None => {
                let services = endpoints(state)
                    .into_iter()
                    .map(|s| (s.name.clone(), keep(prev.services.get(&s.name), s)))
                    .collect();
                (services, peers(prev, state), shares(prev, state))
            }
        };
        let mut changes = Vec::new();
        for name in changed(&prev.services, &services) {
            changes.push(match (prev.services.get(&name), services.get(&name)) {
                (Some(before), Some(now)) if before.ports == now.ports => Change::Replicas(name, replicas(before, now)),
                _ => Change::Service(name),
            });
        }
        changes.extend(changed(&prev.peers, &peers).map(Change::Peer));
        let mut log = prev.log.clone();
        let mut since = prev.since;
        if !changes.is_empty() {
            log.insert(revision, changes.into());
        }
        while log.len() > LOG_KEPT {
            if let Some((rev, _)) = log.pop_first() {
                since = rev;
            }
        }
        Published { revision, services, peers, shares, log, since }
    }

    /// The node's share (an empty one for a node with nothing).
    pub fn share(&self, node: &str) -> Arc<Share> {
        self.shares.get(node).cloned().unwrap_or_default()
    }

    /// The node's whole assignment: its whole share, and `whole` less its
    /// own peer.
    pub fn full(&self, node: &str) -> Assignment {
        let (own, _) = self.own(node, &Share::default());
        let Assignment { mut peers, services, .. } = self.whole();
        peers.retain(|p| p.node_id != node);
        Assignment { peers, services, ..own }
    }

    /// Every service and every peer: what every node's whole list shares.
    pub fn whole(&self) -> Assignment {
        Assignment {
            peers: self.peers.values().map(|p| (**p).clone()).collect(),
            services: self.services.values().map(|s| (**s).clone()).collect(),
            ..Assignment::default()
        }
    }

    /// What changed for `node` since a stream sent it revision `sent` with
    /// share `before`: None when the log no longer reaches back that far
    /// (the stream sends the whole list), else the changes (maybe none).
    /// With `partial`, a service none but replicas of which changed comes
    /// with only those (see `Removed`); else whole. It is `own` and
    /// `common` together, less the node's own peer.
    pub fn delta(&self, node: &str, sent: u64, before: &Share, partial: bool) -> Option<(Assignment, Removed)> {
        Some(self.with_own(node, self.common(sent, partial)?, before))
    }

    /// What a watch resumed from another server's revision is sent first:
    /// `touched_common` and the node's own part whole
    /// (`Removed::tasks_whole`), which this server cannot know it sent.
    pub fn resumed(&self, node: &str, touched: &ServicesTouched, partial: bool) -> (Assignment, Removed) {
        let (changed, removed) = self.with_own(node, self.touched_common(touched, partial), &Share::default());
        (changed, Removed { tasks_whole: true, ..removed })
    }

    /// A common part less `node`'s own peer, with its own part since `before`.
    fn with_own(&self, node: &str, common: (Assignment, Removed), before: &Share) -> (Assignment, Removed) {
        let (mut changed, mut removed) = common;
        changed.peers.retain(|p| p.node_id != node);
        removed.peers.retain(|p| p != node);
        let (own, gone) = self.own(node, before);
        changed.tasks = own.tasks;
        (changed.network, changed.volumes, removed.tasks) = (own.network, own.volumes, gone.tasks);
        (changed, removed)
    }

    /// What changed in `node`'s own share since `before`: its tasks, and
    /// its network and volumes (always sent).
    pub fn own(&self, node: &str, before: &Share) -> (Assignment, Removed) {
        let share = self.share(node);
        let changed = Assignment {
            tasks: share
                .tasks
                .iter()
                .filter(|(id, task)| before.tasks.get(*id) != Some(task))
                .map(|(id, task)| (id.clone(), (**task).clone()))
                .collect(),
            network: share.network,
            volumes: share.volumes.clone(),
            ..Assignment::default()
        };
        let tasks = before.tasks.keys().filter(|id| !share.tasks.contains_key(*id)).cloned().collect();
        (changed, Removed { tasks, ..Removed::default() })
    }

    /// The services and peers (every node's, the one asking's too) that
    /// changed since revision `sent`: the same for every node that was
    /// sent `sent`, so made once for all of them. None when the log no
    /// longer reaches back that far.
    pub fn common(&self, sent: u64, partial: bool) -> Option<(Assignment, Removed)> {
        if sent < self.since {
            return None;
        }
        let mut changed = Assignment::default();
        let mut removed = Removed::default();
        // Per service touched: None when it changed whole, else its replicas' tasks.
        let mut services: BTreeMap<&str, Option<BTreeSet<&str>>> = BTreeMap::new();
        let mut peers = BTreeSet::new();
        for change in self.log.range(sent + 1..).flat_map(|(_, c)| c.iter()) {
            match change {
                Change::Service(name) => drop(services.insert(name, None)),
                Change::Replicas(name, tasks) => {
                    if let Some(set) = services.entry(name).or_insert_with(|| Some(BTreeSet::new())) {
                        set.extend(tasks.iter().map(String::as_str));
                    }
                }
                Change::Peer(id) => drop(peers.insert(id)),
            }
        }
        self.services_part(services, partial, &mut changed, &mut removed);
        for id in peers {
            match self.peers.get(id) {
                Some(p) => changed.peers.push((**p).clone()),
                None => removed.peers.push(id.clone()),
            }
        }
        Some((changed, removed))
    }

    /// What a watch resumed from another server's revision is sent of the
    /// services and peers: the services touched since (`touched`, from
    /// `state::Touches`, which knows each log entry's; this server's log
    /// is by its own publications, and a replica that came and went
    /// between two of them is in neither, though the other server may
    /// have sent it). Peers change only with commands that touch all,
    /// which leave no resume.
    pub fn touched_common(&self, touched: &ServicesTouched, partial: bool) -> (Assignment, Removed) {
        let services = touched
            .iter()
            .map(|(name, tasks)| (name.as_str(), tasks.as_ref().map(|t| t.iter().map(String::as_str).collect())))
            .collect();
        let (mut changed, mut removed) = (Assignment::default(), Removed::default());
        self.services_part(services, partial, &mut changed, &mut removed);
        (changed, removed)
    }

    /// Puts `services` into a message as they are now: those gone as
    /// removed, those with only some replicas named (Some) as partial
    /// services when `partial`, the rest whole.
    fn services_part(
        &self,
        services: BTreeMap<&str, Option<BTreeSet<&str>>>,
        partial: bool,
        changed: &mut Assignment,
        removed: &mut Removed,
    ) {
        for (name, tasks) in services {
            match (self.services.get(name), tasks) {
                (None, _) => removed.services.push(name.to_owned()),
                (Some(s), Some(tasks)) if partial => {
                    let replicas: Vec<Replica> =
                        s.replicas.iter().filter(|r| tasks.contains(r.task.as_str())).cloned().collect();
                    let here: BTreeSet<&str> = replicas.iter().map(|r| r.task.as_str()).collect();
                    let gone = tasks.difference(&here).map(|t| (*t).to_owned()).collect();
                    removed.replicas.insert(name.to_owned(), gone);
                    let (name, ports, started) = (s.name.clone(), s.ports.clone(), s.started);
                    changed.services.push(ServiceEndpoints { name, ports, replicas, started });
                }
                (Some(s), _) => changed.services.push((**s).clone()),
            }
        }
    }

    /// Whether anything for `node` may have changed since revision `sent`
    /// with share `before` (a cheap look: no change means no message).
    pub fn moved(&self, node: &str, sent: u64, before: &Arc<Share>) -> bool {
        let share = self.share(node);
        !Arc::ptr_eq(&share, before) && *share != **before
            || self.log.range(sent + 1..).next().is_some()
            || sent < self.since
    }
}

/// The last publication's `Arc` when it holds the same value, so that
/// "changed" is a pointer compare; else a new one.
fn keep<T: PartialEq>(prev: Option<&Arc<T>>, now: T) -> Arc<T> {
    match prev {
        Some(p) if **p == now => p.clone(),
        _ => Arc::new(now),
    }
}

/// Names in `before` or `after` whose value differs (or that only one has).
fn changed<'a, T: PartialEq>(
    before: &'a BTreeMap<String, Arc<T>>,
    after: &'a BTreeMap<String, Arc<T>>,
) -> impl Iterator<Item = String> + 'a {
    let gone = before.keys().filter(|k| !after.contains_key(*k));
    let new_or_changed =
        after.iter().filter(|(k, v)| before.get(*k).is_none_or(|b| !Arc::ptr_eq(b, v))).map(|(k, _)| k);
    gone.chain(new_or_changed).cloned()
}

/// The tasks whose replicas differ between two versions of a service
/// (came, went, or moved slot or address).
fn replicas(before: &ServiceEndpoints, now: &ServiceEndpoints) -> Vec<String> {
    let old: HashMap<&str, &Replica> = before.replicas.iter().map(|r| (r.task.as_str(), r)).collect();
    let new: HashMap<&str, &Replica> = now.replicas.iter().map(|r| (r.task.as_str(), r)).collect();
    let gone = old.keys().filter(|t| !new.contains_key(*t));
    let came_or_moved = new.iter().filter(|(t, r)| old.get(*t) != Some(*r)).map(|(t, _)| t);
    let mut tasks: Vec<String> = gone.chain(came_or_moved).map(|t| (*t).to_owned()).collect();
    tasks.sort_unstable();
    tasks
}

/// Every node with an overlay and a subnet, as a peer.
fn peers(prev: &Published, state: &State) -> BTreeMap<String, Arc<Peer>> {
    state
        .nodes
        .values()
        .filter_map(|n| {
            let (overlay, subnet) = (n.overlay.as_ref()?, n.subnet?);
            let peer = Peer {
                node_id: n.id.clone(),
                public_key: overlay.public_key.clone(),
                endpoint: overlay.endpoint.parse().ok()?,
                subnet,
            };
            Some((n.id.clone(), keep(prev.peers.get(&n.id), peer)))
        })
        .collect()
}

/// The last publication's services, those of `touched` tasks made again:
/// the touched tasks' replicas taken out and put back as they are now
/// (`ServiceEndpoints::patch`, as an agent takes a partial service).
fn services_touched(prev: &Published, state: &State, touched: &[&Touched]) -> BTreeMap<String, Arc<ServiceEndpoints>> {
    let mut by_service: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for t in touched {
        by_service.entry(t.service.as_str()).or_default().insert(t.id.as_str());
    }
    let mut services = prev.services.clone();
    for (name, ids) in by_service {
        let Some(before) = prev.services.get(name).filter(|_| state.services.contains_key(name)) else {
            continue; // a service comes and goes by a spec's command, which `next` makes whole
        };
        let tasks: Vec<&Task> =
            ids.iter().filter_map(|id| state.tasks.get(*id)).filter(|t| t.service == name).collect();
        // Tasks not touched are as they were: none ran if none did then.
        let started = tasks.iter().any(|t| runs(t)) || before.started && started(state, name);
        let replicas = tasks.iter().filter_map(|t| t.serving_address().map(|a| replica(t, a))).collect();
        let gone: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        let mut now = (**before).clone();
        now.patch(ServiceEndpoints { replicas, started, ..(**before).clone() }, &gone);
        services.insert(name.to_owned(), keep(Some(before), now));
    }
    services
}

/// Whether any task of the service runs, as `endpoints` says it.
fn started(state: &State, service: &str) -> bool {
    state.tasks_of(service).any(runs)
}

/// Wanted running and running: what makes a service `started`.
fn runs(t: &Task) -> bool {
    t.desired == Desired::Running && t.state == TaskState::Running
}

/// The last publication's shares, those of the nodes `touched` tasks were
/// or are on made again.
fn shares_touched(prev: &Published, state: &State, touched: &[&Touched]) -> HashMap<String, Arc<Share>> {
    let mut by_node: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for t in touched {
        let now = state.tasks.get(&t.id).and_then(|t| t.node.as_deref());
        for node in t.node.as_deref().into_iter().chain(now) {
            by_node.entry(node).or_default().insert(t.id.as_str());
        }
    }
    let mut shares = prev.shares.clone();
    for (node, ids) in by_node {
        let Some(before) = prev.shares.get(node).filter(|_| state.nodes.contains_key(node)) else {
            continue; // a node comes and goes by a command that touches all
        };
        let mut tasks = before.tasks.clone();
        for id in ids {
            tasks.remove(id);
            let task = state.tasks.get(id).filter(|t| t.desired == Desired::Running && t.node.as_deref() == Some(node));
            if let Some(t) = task {
                tasks.insert(t.id.clone(), assigned_task(before.tasks.get(id), state, t));
            }
        }
        shares.insert(node.to_owned(), keep(Some(before), share(state, node, tasks)));
    }
    shares
}

/// Every node's share, reusing the last publication's tasks (and shares)
/// where nothing in them changed.
fn shares(prev: &Published, state: &State) -> HashMap<String, Arc<Share>> {
    let mut tasks: HashMap<&str, BTreeMap<String, Arc<AssignedTask>>> = HashMap::new();
    for t in state.tasks.values().filter(|t| t.desired == Desired::Running) {
        let Some(node) = t.node.as_deref() else { continue };
        let prev_task = prev.shares.get(node).and_then(|s| s.tasks.get(&t.id));
        tasks.entry(node).or_default().insert(t.id.clone(), assigned_task(prev_task, state, t));
    }
    state
        .nodes
        .keys()
        .map(|id| {
            let share = share(state, id, tasks.remove(id.as_str()).unwrap_or_default());
            (id.clone(), keep(prev.shares.get(id), share))
        })
        .collect()
}

/// A node's share of its `tasks`, with its network and volumes.
fn share(state: &State, node: &str, tasks: BTreeMap<String, Arc<AssignedTask>>) -> Share {
    let subnet = state.nodes.get(node).and_then(|n| n.subnet);
    let network = subnet.zip(state.network).map(|(subnet, net)| NodeNetwork { subnet, cluster: net.cidr });
    let volumes = state.volumes.get(node).map(|v| v.iter().map(|v| v.name.clone()).collect());
    Share { tasks, network, volumes }
}

/// Task `t` as its node is sent it: the last publication's, `prev`, when
/// nothing in it changed (compared in place first: most tasks did not
/// change, and making one to compare would copy its whole spec).
fn assigned_task(prev: Option<&Arc<AssignedTask>>, state: &State, t: &Task) -> Arc<AssignedTask> {
    let files = files_of(state, &t.spec);
    match prev.filter(|p| p.restarts == t.restarts && p.address == t.address && p.files == files && p.spec == t.spec) {
        Some(p) => p.clone(),
        None => Arc::new(AssignedTask {
            id: t.id.clone(),
            spec: t.spec.clone(),
            restarts: t.restarts,
            address: t.address,
            files,
        }),
    }
}

/// What a node is asked to do now, made from the state alone: its tasks,
/// each with its own spec (not its service's current one: old tasks of a
/// rolling update run the old spec) and the restarts the cluster has
/// counted, so an agent that restarts goes on counting from there; and
/// what its network needs. A publication's `full` gives the same.
pub fn assigned(state: &State, node_id: &str) -> Assignment {
    Published::next(&Published::default(), state, 0, None).full(node_id)
}

/// The values of the secrets and configs a task names (a secret opened
/// with the cluster's key): what only its node is sent. One the state no
/// longer has is left out, and the agent fails the task saying so.
fn files_of(state: &State, spec: &TaskSpec) -> Files {
    let options = &spec.overrides.options;
    if options.secrets.is_empty() && options.configs.is_empty() {
        return Files::default();
    }
    let key = state.trust.as_ref().and_then(|t| t.secrets_key.as_deref());
    let secrets = options.secrets.iter().filter_map(|r| {
        let sealed = &state.secrets.get(&r.source)?.data;
        Some((r.source.clone(), crate::secrets::open(key?, sealed)?))
    });
    let configs = options
        .configs
        .iter()
        .filter_map(|r| Some((r.source.clone(), hex::decode(&state.configs.get(&r.source)?.data).ok()?)));
    Files { secrets: secrets.collect(), configs: configs.collect() }
}

/// Every service, its ports, its replicas that serve now
/// (`Task::serving_address`), wherever they are, and whether any task of it
/// runs: the same for every node.
pub fn endpoints(state: &State) -> Vec<ServiceEndpoints> {
    state.services.keys().filter_map(|name| endpoints_of(state, name)).collect()
}

/// One service's endpoints, from its own tasks (`State::tasks_of`); None
/// when there is no such service.
fn endpoints_of(state: &State, name: &str) -> Option<ServiceEndpoints> {
    let spec = &state.services.get(name)?.spec;
    let mut service =
        ServiceEndpoints { name: spec.name.clone(), ports: spec.ports.clone(), replicas: vec![], started: false };
    for t in state.tasks_of(name) {
        service.started |= runs(t);
        if let Some(address) = t.serving_address() {
            service.replicas.push(replica(t, address));
        }
    }
    service.replicas.sort_by(|a, b| (a.slot, &a.task).cmp(&(b.slot, &b.task)));
    Some(service)
}

fn replica(t: &Task, address: impl Into<std::net::IpAddr>) -> Replica {
    Replica { task: t.id.clone(), slot: t.slot, address: address.into() }
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{
        Availability, Cidr, NetworkConfig, Node, NodeStatus, Overlay, PortSpec, Protocol, ServiceSpec, Task, TaskReport,
    };
    use berth_proto::prost::Message as _;
    use proptest::prelude::*;

    use super::*;
    use crate::state::{apply, touches, Command, NewTask, TaskChange, Touches};
    use crate::testing::{self, spec};

    const NODES: [&str; 3] = ["n1", "n2", "n3"];

    fn node(i: usize) -> Node {
        Node {
            subnet: Some(format!("198.19.{}.0/24", i + 1).parse::<Cidr>().unwrap()),
            overlay: Some(Overlay { public_key: format!("key-{i}"), endpoint: format!("198.18.0.{}:51820", i + 1) }),
            ..testing::node(NODES[i])
        }
    }

    /// Things that happen to a cluster between two publications.
    #[derive(Debug, Clone)]
    enum Op {
        /// A task of service s, slot, on node n, running or not.
        Place {
            s: usize,
            slot: u32,
            n: usize,
            running: bool,
        },
        /// The k-th task (mod their number) stops being wanted, or goes.
        Stop(usize),
        Forget(usize),
        /// It restarted (its count moves).
        Restart(usize),
        RemoveService(usize),
        AddService(usize),
        /// A node's overlay endpoint moves, or the node goes.
        MovePeer(usize, u8),
        RemoveNode(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 1..4u32, 0..3usize, any::<bool>()).prop_map(|(s, slot, n, running)| Op::Place { s, slot, n, running }),
            2 => any::<usize>().prop_map(Op::Stop),
            1 => any::<usize>().prop_map(Op::Forget),
            2 => any::<usize>().prop_map(Op::Restart),
            1 => (0..3usize).prop_map(Op::RemoveService),
            1 => (0..3usize).prop_map(Op::AddService),
            1 => (0..3usize, any::<u8>()).prop_map(|(n, p)| Op::MovePeer(n, p)),
            1 => (0..3usize).prop_map(Op::RemoveNode),
        ]
    }

    fn cluster() -> State {
        let mut state = State::default();
        for (i, id) in NODES.iter().enumerate() {
            apply(&mut state, &Command::CreateService(spec(&format!("s{i}"), 1)));
            state.nodes.insert((*id).into(), node(i));
        }
        state
    }

    fn nth(state: &State, k: usize) -> Option<String> {
        let n = state.tasks.len();
        (n > 0).then(|| state.tasks.keys().nth(k % n).cloned()).flatten()
    }

    fn run(state: &mut State, op: &Op) {
        match op {
            Op::Place { s, slot, n, running } => {
                let mut t = Task::new(&format!("s{s}"), *slot, 1, 1, Default::default());
                t.node = Some(NODES[*n].into());
                t.address = Some([198, 19, *n as u8 + 1, (*slot % 250) as u8 + 1].into());
                t.state = if *running { TaskState::Running } else { TaskState::Assigned };
                state.tasks.insert(t.id.clone(), t);
            }
            Op::Stop(k) => {
                if let Some(id) = nth(state, *k) {
                    state.tasks.get_mut(&id).unwrap().desired = Desired::Shutdown;
                }
            }
            Op::Forget(k) => {
                if let Some(id) = nth(state, *k) {
                    state.tasks.remove(&id);
                }
            }
            Op::Restart(k) => {
                if let Some(id) = nth(state, *k) {
                    state.tasks.get_mut(&id).unwrap().restarts += 1;
                }
            }
            Op::RemoveService(s) => drop(state.services.remove(&format!("s{s}"))),
            Op::AddService(s) => drop(apply(state, &Command::CreateService(spec(&format!("s{s}"), 1)))),
            Op::MovePeer(n, port) => {
                if let Some(o) = state.nodes.get_mut(NODES[*n]).and_then(|n| n.overlay.as_mut()) {
                    o.endpoint = format!("198.18.0.{}:{}", n + 1, 1000 + u16::from(*port));
                }
            }
            Op::RemoveNode(n) => drop(state.nodes.remove(NODES[*n])),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// What an agent keeps by applying each delta is, after every
        /// publication, the whole list it would have been sent, for every
        /// node, whichever publications a watch skipped.
        #[test]
        fn deltas_applied_in_turn_make_the_whole_list(
            ops in prop::collection::vec((op(), any::<bool>()), 1..40),
            partial in any::<bool>(),
        ) {
            let mut state = cluster();
            let mut p = Published::next(&Published::default(), &state, 1, None);
            // Per node: what its agent has, and what its stream last sent.
            let mut agents: Vec<(Assignment, u64, Arc<Share>)> =
                NODES.iter().map(|n| (p.full(n), p.revision, p.share(n))).collect();
            for (i, (op, watched)) in ops.iter().enumerate() {
                run(&mut state, op);
                p = Published::next(&p, &state, i as u64 + 2, None);
                if !watched {
                    continue; // the streams slept through this one
                }
                for (n, (agent, rev, share)) in NODES.iter().zip(agents.iter_mut()) {
                    let (changed, removed) = p.delta(n, *rev, share, partial).expect("the log reaches back");
                    let moved = p.moved(n, *rev, share);
                    let before = agent.clone();
                    agent.apply(changed, removed);
                    prop_assert_eq!(&*agent, &p.full(n), "node {} after {:?}", n, op);
                    prop_assert!(moved || *agent == before, "a change the quick look missed: {:?}", op);
                    *rev = p.revision;
                    *share = p.share(n);
                }
                prop_assert_eq!(p.full("n1"), assigned(&state, "n1"));
            }
        }
    }

    /// A reconciler's decision or an agent's report about the k-th task (or a new one).
    #[derive(Debug, Clone)]
    enum Cmd {
        Create {
            s: usize,
            slot: u32,
        },
        Assign(usize, usize),
        Shutdown(usize),
        Remove(usize),
        Report(usize, TaskState, u32),
        /// Commands that change a service's spec.
        Scale(usize, u32),
        Port(usize, u16),
        Delete(usize),
        Recreate(usize),
        /// A task of the service's spec, maybe placed (`TaskChange::New`).
        New {
            s: usize,
            slot: u32,
            n: Option<usize>,
        },
        /// A node's status or availability changes.
        Status(usize, bool),
    }

    fn cmd() -> impl Strategy<Value = Cmd> {
        let state = prop_oneof![Just(TaskState::Running), Just(TaskState::Failed), Just(TaskState::Exited)];
        prop_oneof![
            3 => (0..3usize, 1..6u32).prop_map(|(s, slot)| Cmd::Create { s, slot }),
            2 => (0..3usize, 1..6u32, prop::option::of(0..3usize)).prop_map(|(s, slot, n)| Cmd::New { s, slot, n }),
            4 => (any::<usize>(), 0..3usize).prop_map(|(k, n)| Cmd::Assign(k, n)),
            1 => any::<usize>().prop_map(Cmd::Shutdown),
            1 => any::<usize>().prop_map(Cmd::Remove),
            5 => (any::<usize>(), state, 0..3u32).prop_map(|(k, st, r)| Cmd::Report(k, st, r)),
            1 => (0..3usize, 1..5u32).prop_map(|(s, r)| Cmd::Scale(s, r)),
            1 => (0..3usize, 1..3u16).prop_map(|(s, p)| Cmd::Port(s, p)),
            1 => (0..3usize).prop_map(Cmd::Delete),
            1 => (0..3usize).prop_map(Cmd::Recreate),
            1 => (0..3usize, any::<bool>()).prop_map(|(n, down)| Cmd::Status(n, down)),
        ]
    }

    fn spec_of(s: usize) -> ServiceSpec {
        spec(&format!("s{s}"), 1)
    }

    fn command(state: &State, c: &Cmd) -> Command {
        let nth = |k: usize| nth(state, k).unwrap_or_default();
        let decided = |change: TaskChange| Command::Reconcile { changes: vec![change], at_ms: 1, rollouts: vec![] };
        match c {
            Cmd::Create { s, slot } => {
                let generation = state.generations.get(&format!("s{s}.{slot}")).map_or(1, |g| g + 1);
                decided(TaskChange::Create(Box::new(Task::new(
                    &format!("s{s}"),
                    *slot,
                    generation,
                    1,
                    Default::default(),
                ))))
            }
            Cmd::New { s, slot, n } => {
                let service = format!("s{s}");
                let generation = state.generations.get(&format!("{service}.{slot}")).map_or(1, |g| g + 1);
                let version = state.services.get(&service).map_or(1, |svc| state.template(svc));
                let node = n.map(|n| NODES[n].to_owned());
                decided(TaskChange::New(NewTask { service, slot: *slot, generation, version, pin: None, node }))
            }
            Cmd::Assign(k, n) => decided(TaskChange::Assign { id: nth(*k), node: NODES[*n].into() }),
            Cmd::Shutdown(k) => decided(TaskChange::Shutdown { id: nth(*k), reason: "stop".into() }),
            Cmd::Remove(k) => decided(TaskChange::Remove { id: nth(*k) }),
            Cmd::Report(k, st, restarts) => {
                let id = nth(*k);
                let node = state.tasks.get(&id).and_then(|t| t.node.clone()).unwrap_or_default();
                let report = TaskReport {
                    id,
                    state: *st,
                    exit_code: None,
                    restarts: *restarts,
                    message: String::new(),
                    health: None,
                };
                Command::ReportTasks { node, reports: vec![report], at_ms: 1 }
            }
            Cmd::Scale(s, replicas) => Command::ScaleService { name: format!("s{s}"), replicas: *replicas },
            Cmd::Port(s, port) => {
                let target = PortSpec { published: None, target: 8000 + port, protocol: Protocol::Tcp, name: None };
                let spec = state.services.get(&format!("s{s}")).map(|svc| svc.spec.clone());
                Command::UpdateService(ServiceSpec { ports: vec![target], ..spec.unwrap_or_else(|| spec_of(*s)) })
            }
            Cmd::Delete(s) => Command::DeleteService { name: format!("s{s}") },
            Cmd::Recreate(s) => Command::CreateService(spec_of(*s)),
            Cmd::Status(n, true) => Command::SetNodeStatus { id: NODES[*n].into(), status: NodeStatus::Down },
            Cmd::Status(n, false) => {
                Command::SetAvailability { id: NODES[*n].into(), availability: Availability::Drain }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// A publication made again from the touched tasks alone is the one
        /// made from the whole state, whatever reports and decisions came
        /// between two publications.
        #[test]
        fn publications_made_from_touches_are_the_whole_ones(
            batches in prop::collection::vec(prop::collection::vec(cmd(), 1..6), 1..25),
        ) {
            let mut state = cluster();
            let network = NetworkConfig::new("198.18.0.0/15".parse().unwrap(), 24).unwrap();
            apply(&mut state, &Command::InitNetwork(network));
            let mut touched = Touches::default();
            let mut index = 1;
            let mut p = Published::next(&Published::default(), &state, index, None);
            for batch in &batches {
                for c in batch {
                    let c = command(&state, c);
                    let touch = touches(&state, &c);
                    apply(&mut state, &c);
                    touched.push(index, index + 1, touch);
                    index += 1;
                }
                let whole = Published::next(&p, &state, index, None);
                let Some(tasks) = touched.after(p.revision) else {
                    p = whole; // a command that touches all came between
                    continue;
                };
                let made = Published::next(&p, &state, index, Some(&tasks));
                prop_assert_eq!(&made.services, &whole.services, "after {:?}", batch);
                prop_assert_eq!(&made.peers, &whole.peers);
                prop_assert_eq!(&made.shares, &whole.shares, "after {:?}", batch);
                prop_assert_eq!(&made.log, &whole.log, "after {:?}", batch);
                p = made;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// A watch that follows one server and then resumes on another,
        /// whose publications came at other revisions, holds the whole
        /// list once the other's first message is applied (made from the
        /// tasks touched since), and from then on with its deltas. After a
        /// command that touched all, it is sent the whole list.
        #[test]
        fn a_watch_resumed_on_another_server_makes_the_whole_list(
            cmds in prop::collection::vec((cmd(), any::<bool>(), any::<bool>()), 1..40),
            moves_at in 0..40usize,
            partial in any::<bool>(),
        ) {
            let mut state = cluster();
            let network = NetworkConfig::new("198.18.0.0/15".parse().unwrap(), 24).unwrap();
            apply(&mut state, &Command::InitNetwork(network));
            let mut touched = Touches::default();
            let mut index = 1;
            let (mut a, mut b) = (Published::default(), Published::default());
            a = Published::next(&a, &state, index, None);
            b = Published::next(&b, &state, index, None);
            // Per node: what its agent has, what its stream last sent, and
            // whether it has resumed on b.
            let mut agents: Vec<(Assignment, u64, Arc<Share>, bool)> =
                NODES.iter().map(|n| (a.full(n), a.revision, a.share(n), false)).collect();
            let mut on_b = false;
            for (i, (c, a_publishes, b_publishes)) in cmds.iter().enumerate() {
                let c = command(&state, c);
                let touch = touches(&state, &c);
                apply(&mut state, &c);
                touched.push(index, index + 1, touch);
                index += 1;
                if *a_publishes {
                    a = Published::next(&a, &state, index, None);
                }
                if *b_publishes {
                    b = Published::next(&b, &state, index, None);
                }
                let p = if on_b { &b } else { &a };
                for (n, (agent, rev, share, resumed)) in NODES.iter().zip(agents.iter_mut()) {
                    if p.revision <= *rev {
                        continue; // the server waits for a state as new as the agent's
                    }
                    if on_b && !*resumed {
                        match touched.services_after(*rev) {
                            Some(t) => {
                                let (changed, removed) = p.resumed(n, &t, partial);
                                agent.apply(changed, removed);
                            }
                            None => *agent = p.full(n),
                        }
                        *resumed = true;
                    } else {
                        let (changed, removed) = p.delta(n, *rev, share, partial).expect("the log reaches back");
                        agent.apply(changed, removed);
                    }
                    prop_assert_eq!(&*agent, &p.full(n), "node {} after {:?} (on b: {})", n, c, on_b);
                    *rev = p.revision;
                    *share = p.share(n);
                }
                on_b |= i == moves_at;
            }
        }
    }

    #[test]
    fn a_change_elsewhere_sends_only_that_change() {
        let mut state = cluster();
        for (n, slot) in [(0, 1), (1, 2), (2, 3)] {
            run(&mut state, &Op::Place { s: 0, slot, n, running: true });
        }
        let p1 = Published::next(&Published::default(), &state, 1, None);
        run(&mut state, &Op::Place { s: 1, slot: 1, n: 2, running: true });
        let p2 = Published::next(&p1, &state, 2, None);
        // n1's share is the same one: nothing of its own moved.
        assert!(Arc::ptr_eq(&p1.share("n1"), &p2.share("n1")));
        let (changed, removed) = p2.delta("n1", 1, &p1.share("n1"), false).unwrap();
        assert!(changed.tasks.is_empty() && changed.peers.is_empty() && removed == Removed::default());
        let names: Vec<&str> = changed.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s1"], "only the service that changed");
        // The node that got the task gets it, and the same service change.
        let (changed, _) = p2.delta("n3", 1, &p1.share("n3"), false).unwrap();
        assert_eq!(changed.tasks.keys().collect::<Vec<_>>(), ["s1.1.1"]);
        // Nothing moved at all: no message.
        let p3 = Published::next(&p2, &state, 3, None);
        assert!(!p3.moved("n1", 2, &p2.share("n1")));
    }

    #[test]
    fn one_replica_of_a_large_service_is_sent_alone() {
        let mut state = cluster();
        for slot in 1..=1000 {
            run(&mut state, &Op::Place { s: 0, slot, n: (slot % 3) as usize, running: true });
        }
        let p1 = Published::next(&Published::default(), &state, 1, None);
        let whole = p1.full("n1");
        // One replica stops serving, another moves address.
        let (a, b) = ("s0.7.1", "s0.8.1");
        state.tasks.get_mut(a).unwrap().state = TaskState::Failed;
        state.tasks.get_mut(b).unwrap().address = Some([198, 19, 9, 9].into());
        let p2 = Published::next(&p1, &state, 2, None);
        let (changed, removed) = p2.delta("n1", 1, &p1.share("n1"), true).unwrap();
        assert_eq!(changed.services.len(), 1);
        let names: Vec<&str> = changed.services[0].replicas.iter().map(|r| r.task.as_str()).collect();
        assert_eq!(names, [b], "only the replica that moved");
        assert_eq!(removed.replicas, BTreeMap::from([("s0".to_owned(), vec![a.to_owned()])]));
        // Over the wire: a hundred bytes or so, and the agent's list made whole.
        let mut message = berth_proto::pb::agent::AssignedTasks::delta(changed, removed, 2);
        assert!(message.encoded_len() < 200, "{} bytes", message.encoded_len());
        let removed = message.take_removed();
        let mut agent = whole;
        agent.apply(Assignment::try_from(message).unwrap(), removed);
        assert_eq!(agent, p2.full("n1"));
        // Whole services for an agent that did not ask for parts.
        let (changed, removed) = p2.delta("n1", 1, &p1.share("n1"), false).unwrap();
        assert_eq!(changed.services[0].replicas.len(), 999);
        assert!(removed.replicas.is_empty());
    }

    #[test]
    fn a_watch_that_lags_past_the_log_gets_the_whole_list() {
        let mut state = cluster();
        let mut p = Published::next(&Published::default(), &state, 1, None);
        let first = p.share("n1");
        for i in 0..LOG_KEPT as u64 + 5 {
            // A service's endpoints change at every publication.
            run(&mut state, &Op::Place { s: 0, slot: 1, n: 1, running: i % 2 == 0 });
            p = Published::next(&p, &state, i + 2, None);
        }
        assert!(p.delta("n1", 1, &first, true).is_none(), "too far behind for a delta");
        assert!(p.moved("n1", 1, &first));
        assert!(p.delta("n1", p.revision - 3, &p.share("n1"), true).is_some());
    }
}
