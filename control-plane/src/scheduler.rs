//! The scheduler: which node each pending task goes to. A pure function of
//! the nodes (with what they already carry) and the tasks to place, so it
//! is deterministic for the same input and testable without a cluster; the
//! reconciler feeds it and commits what it decides.
//!
//! ```text
//! filter: its pinned node, if any (a global service's task)
//!         ─▶ ready and active ─▶ constraints hold ─▶ its agent mounts volumes (if it has mounts)
//!         ─▶ holds its pinned volumes (once they exist) ─▶ fewer of the service than its cap per node
//!         ─▶ CPU and memory fit what is unallocated ─▶ its subnet has an address left
//! score:  most of its volumes held (data stays where it is)
//!         ─▶ fewest tasks of this service under each spread label's value (preferences, in order)
//!         ─▶ fewest tasks of this service on the node (spread)
//!         ─▶ least allocated (dominant share of CPU or memory in use)
//!         ─▶ node order (ties)
//! ```
//!
//! Tasks of one shape (service, requests, constraints, placement) are
//! placed together: the nodes that could take one are found once and kept
//! in a heap ordered by score, so placing k tasks on n nodes costs
//! O(n + k log n) per shape, not O(k n). A service with no task anywhere
//! yet takes the first k fitting nodes of a standing least-allocated order
//! instead, which is what the heap would give and usually costs only a few
//! steps. Spread preferences change the score of every node under a label
//! value at once, which a heap cannot follow: those shapes (rare, and
//! small) are placed by a scan per task, O(k n). A pinned task looks at its
//! one node.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use berth_proto::model::{format_memory, Constraint, Resources};

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Ready and active (not drained): may take new tasks.
    pub schedulable: bool,
    pub capacity: Resources,
    /// Requests of the tasks it already carries.
    pub allocated: Resources,
    /// How many tasks of each service it already carries.
    pub tasks: BTreeMap<String, u32>,
    /// Task addresses its subnet has left; None when it hands out none.
    pub addresses_left: Option<u32>,
    /// Its agent has told its volumes: it can mount them (one from before
    /// volumes would run a task without its mounts).
    pub mounts: bool,
    /// The newest task fields its agent understands (`Node::reads`).
    pub reads: u32,
}

/// A task to place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub task: String,
    pub service: String,
    pub resources: Resources,
    pub constraints: Vec<Constraint>,
    /// The one node it may run on (a global service's task), by id.
    pub pin: Option<String>,
    /// Node label keys to spread the service over, the first one first.
    pub spread: Vec<String>,
    /// The most tasks of the service one node may carry.
    pub max_per_node: Option<u32>,
    /// Where its volumes are.
    pub data: Data,
    /// The agent level its fields need (3: a stack's name, depends_on).
    pub needs: u32,
}

/// Where a task's named volumes are, as the reconciler finds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Data {
    /// It mounts volumes or host paths: only nodes that can mount take it.
    pub mounts: bool,
    /// Nodes holding some of its volumes, by id, with how many: the more,
    /// the better.
    pub held: BTreeMap<String, u32>,
    /// With pinned volumes that exist: the nodes holding every one of
    /// them (the only ones it may go to), and the volumes and where they
    /// are, for people.
    pub pinned: Option<(BTreeSet<String>, String)>,
}

/// What places a request: tasks that share it are placed together.
type ShapeKey<'a> = (&'a str, Resources, &'a [Constraint], Option<&'a str>, &'a [String], Option<u32>, &'a Data);

impl Request {
    fn shape(&self) -> ShapeKey<'_> {
        let (service, pin) = (self.service.as_str(), self.pin.as_deref());
        (service, self.resources, &self.constraints, pin, &self.spread, self.max_per_node, &self.data)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Place {
        task: String,
        node: String,
    },
    /// No node can take it now; the reason is for people (`service ps`).
    Unplaced {
        task: String,
        reason: String,
    },
}

/// Places `requests` in order; every request gets one decision, in order
/// of shape first appearance and then request order.
pub fn schedule(nodes: &[NodeView], requests: &[Request]) -> Vec<Decision> {
    let mut shapes: Vec<(&Request, Vec<&Request>)> = Vec::new();
    let mut index: HashMap<ShapeKey, usize> = HashMap::new();
    for r in requests {
        let key = r.shape();
        match index.get(&key) {
            Some(&i) => shapes[i].1.push(r),
            None => {
                index.insert(key, shapes.len());
                shapes.push((r, vec![r]));
            }
        }
    }
    let mut placer = Placer::new(nodes);
    let mut decisions = Vec::with_capacity(requests.len());
    for (shape, tasks) in shapes {
        placer.place_shape(shape, &tasks, &mut decisions);
    }
    decisions
}

/// Heap key: most of its data first, then fewest of this service, then
/// least allocated, then node order.
type Key = Reverse<(u32, u32, u64, usize)>;

/// The nodes as placement goes on, with indexes kept in step.
struct Placer {
    nodes: Vec<NodeView>,
    /// Dominant share in use, per node.
    loads: Vec<u64>,
    /// Schedulable nodes by (load, index): least allocated first.
    order: BTreeSet<(u64, usize)>,
    /// Tasks per service per node, so scoring needs no lookup by name.
    spread: HashMap<String, HashMap<usize, u32>>,
    /// A buffer for the heap, kept across shapes.
    scratch: Vec<Key>,
    /// Node indexes by id, for pinned tasks.
    by_id: HashMap<String, usize>,
}

impl Placer {
    fn new(nodes: &[NodeView]) -> Self {
        let nodes = nodes.to_vec();
        let loads: Vec<u64> = nodes.iter().map(load).collect();
        let order = nodes.iter().enumerate().filter(|(_, n)| n.schedulable).map(|(i, _)| (loads[i], i)).collect();
        let mut spread: HashMap<String, HashMap<usize, u32>> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            for (service, &count) in &node.tasks {
                spread.entry(service.clone()).or_default().insert(i, count);
            }
        }
        let by_id = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        Self { scratch: Vec::with_capacity(nodes.len()), nodes, loads, order, spread, by_id }
    }

    fn place_shape(&mut self, shape: &Request, tasks: &[&Request], out: &mut Vec<Decision>) {
        if let Some(pin) = &shape.pin {
            self.place_pinned(pin, shape, tasks, out);
        } else if !shape.spread.is_empty() {
            self.place_by_preference(shape, tasks, out);
        } else if let Some(chosen) = self.first_fits(shape, tasks.len()) {
            for (task, i) in tasks.iter().zip(chosen) {
                self.place(i, shape, task, out);
            }
        } else {
            self.place_by_heap(shape, tasks, out);
        }
    }

    /// The quick way, for a service with no task anywhere yet: the heap
    /// would hand out the least allocated fitting nodes one each, in order,
    /// so walk the nodes by load and take the first `k` that fit. None when
    /// the service has tasks already or fewer than `k` nodes fit.
    fn first_fits(&self, shape: &Request, k: usize) -> Option<Vec<usize>> {
        if self.spread.get(&shape.service).is_some_and(|c| !c.is_empty()) || !shape.data.held.is_empty() {
            return None;
        }
        let chosen: Vec<usize> =
            self.order.iter().map(|&(_, i)| i).filter(|&i| refusal(&self.nodes[i], shape).is_none()).take(k).collect();
        (chosen.len() == k).then_some(chosen)
    }

    /// The general way: every fitting node in a heap by key.
    fn place_by_heap(&mut self, shape: &Request, tasks: &[&Request], out: &mut Vec<Decision>) {
        let mut refused = Refusals::default();
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        for (i, node) in self.nodes.iter().enumerate() {
            match refusal(node, shape) {
                None => keys.push(self.key(shape, i)),
                Some(why) => refused.count(why),
            }
        }
        let mut heap = BinaryHeap::from(keys);
        for task in tasks {
            let Some(Reverse((_, _, _, i))) = heap.pop() else {
                out.push(Decision::Unplaced {
                    task: task.task.clone(),
                    reason: refused.explain(shape, self.nodes.len()),
                });
                continue;
            };
            self.place(i, shape, task, out);
            match refusal(&self.nodes[i], shape) {
                None => heap.push(self.key(shape, i)),
                Some(why) => refused.count(why),
            }
        }
        self.scratch = heap.into_vec();
    }

    /// A global service's tasks: each on its node or nowhere.
    fn place_pinned(&mut self, pin: &str, shape: &Request, tasks: &[&Request], out: &mut Vec<Decision>) {
        for task in tasks {
            let Some(&i) = self.by_id.get(pin) else {
                out.push(Decision::Unplaced { task: task.task.clone(), reason: format!("its node {pin} is gone") });
                continue;
            };
            match refusal(&self.nodes[i], shape) {
                None => self.place(i, shape, task, out),
                Some(why) => {
                    let mut refused = Refusals::default();
                    refused.count(why);
                    let reason = refused.parts(shape, |_| format!("its node {}", self.nodes[i].name)).join(", ");
                    out.push(Decision::Unplaced { task: task.task.clone(), reason });
                }
            }
        }
    }

    /// A service with spread preferences: per task, the fitting node whose
    /// label values (in order), then itself, carry the fewest of the service.
    fn place_by_preference(&mut self, shape: &Request, tasks: &[&Request], out: &mut Vec<Decision>) {
        // Per preference: each node's value (None: the label is missing),
        // and the service's tasks under each value.
        let values: Vec<Vec<Option<String>>> =
            shape.spread.iter().map(|key| self.nodes.iter().map(|n| n.labels.get(key).cloned()).collect()).collect();
        let mut under: Vec<HashMap<Option<String>, u32>> = vec![HashMap::new(); values.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            let count = node.tasks.get(&shape.service).copied().unwrap_or(0);
            for (p, by_node) in values.iter().enumerate() {
                *under[p].entry(by_node[i].clone()).or_default() += count;
            }
        }
        for task in tasks {
            let mut refused = Refusals::default();
            let mut best: Option<(Vec<u32>, Key, usize)> = None;
            for i in 0..self.nodes.len() {
                if let Some(why) = refusal(&self.nodes[i], shape) {
                    refused.count(why);
                    continue;
                }
                let key = self.key(shape, i);
                // Its data first (the key's first part), then the groups.
                let groups: Vec<u32> = std::iter::once(key.0 .0)
                    .chain((0..values.len()).map(|p| under[p].get(&values[p][i]).copied().unwrap_or(0)))
                    .collect();
                let candidate = (groups, key, i);
                // Keys are reversed (for the max-heap): the larger one wins.
                if best.as_ref().is_none_or(|b| (&candidate.0, Reverse(&candidate.1)) < (&b.0, Reverse(&b.1))) {
                    best = Some(candidate);
                }
            }
            let Some((_, _, i)) = best else {
                out.push(Decision::Unplaced {
                    task: task.task.clone(),
                    reason: refused.explain(shape, self.nodes.len()),
                });
                continue;
            };
            for (p, by_node) in values.iter().enumerate() {
                *under[p].entry(by_node[i].clone()).or_default() += 1;
            }
            self.place(i, shape, task, out);
        }
    }

    fn key(&self, shape: &Request, i: usize) -> Key {
        let count = self.spread.get(&shape.service).and_then(|c| c.get(&i)).copied().unwrap_or(0);
        let held = shape.data.held.get(&self.nodes[i].id).copied().unwrap_or(0);
        Reverse((u32::MAX - held, count, self.loads[i], i))
    }

    fn place(&mut self, i: usize, shape: &Request, task: &Request, out: &mut Vec<Decision>) {
        let node = &mut self.nodes[i];
        node.allocated += shape.resources;
        node.addresses_left = node.addresses_left.map(|n| n.saturating_sub(1));
        *node.tasks.entry(shape.service.clone()).or_default() += 1;
        *self.spread.entry(shape.service.clone()).or_default().entry(i).or_default() += 1;
        let before = self.loads[i];
        self.loads[i] = load(node);
        if self.order.remove(&(before, i)) {
            self.order.insert((self.loads[i], i));
        }
        out.push(Decision::Place { task: task.task.clone(), node: node.id.clone() });
    }
}

/// The node's dominant share (per 10,000) of CPU or memory in use: the
/// resource it would run out of first.
fn load(node: &NodeView) -> u64 {
    let share = |used: u64, cap: u64| used.saturating_mul(10_000).checked_div(cap).unwrap_or(0);
    share(node.allocated.cpu_millis, node.capacity.cpu_millis)
        .max(share(node.allocated.memory_bytes, node.capacity.memory_bytes))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Unschedulable,
    Constraint(usize),
    NoMounts,
    OldAgent,
    NotData,
    PerNode(u32),
    Cpu,
    Memory,
    Addresses,
}

fn refusal(node: &NodeView, shape: &Request) -> Option<Why> {
    if !node.schedulable {
        return Some(Why::Unschedulable);
    }
    if let Some(i) = shape.constraints.iter().position(|c| !c.allows(&node.name, &node.labels)) {
        return Some(Why::Constraint(i));
    }
    if shape.data.mounts && !node.mounts {
        return Some(Why::NoMounts);
    }
    if shape.needs > node.reads {
        return Some(Why::OldAgent);
    }
    if shape.data.pinned.as_ref().is_some_and(|(nodes, _)| !nodes.contains(&node.id)) {
        return Some(Why::NotData);
    }
    if let Some(max) = shape.max_per_node.filter(|&max| node.tasks.get(&shape.service).is_some_and(|&n| n >= max)) {
        return Some(Why::PerNode(max));
    }
    let free = |cap: u64, used: u64| cap.saturating_sub(used);
    if shape.resources.cpu_millis > free(node.capacity.cpu_millis, node.allocated.cpu_millis) {
        return Some(Why::Cpu);
    }
    if shape.resources.memory_bytes > free(node.capacity.memory_bytes, node.allocated.memory_bytes) {
        return Some(Why::Memory);
    }
    if node.addresses_left == Some(0) {
        return Some(Why::Addresses);
    }
    None
}

/// Why nodes turned a shape down, counted for one line of explanation.
#[derive(Debug, Default)]
struct Refusals {
    unschedulable: usize,
    constraint: BTreeMap<usize, usize>,
    no_mounts: usize,
    old_agent: usize,
    not_data: usize,
    per_node: Option<(u32, usize)>,
    cpu: usize,
    memory: usize,
    addresses: usize,
}

impl Refusals {
    fn count(&mut self, why: Why) {
        match why {
            Why::Unschedulable => self.unschedulable += 1,
            Why::Constraint(i) => *self.constraint.entry(i).or_default() += 1,
            Why::NoMounts => self.no_mounts += 1,
            Why::OldAgent => self.old_agent += 1,
            Why::NotData => self.not_data += 1,
            Why::PerNode(max) => self.per_node = Some((max, self.per_node.map_or(0, |p| p.1) + 1)),
            Why::Cpu => self.cpu += 1,
            Why::Memory => self.memory += 1,
            Why::Addresses => self.addresses += 1,
        }
    }

    fn explain(&self, shape: &Request, nodes: usize) -> String {
        if nodes == 0 {
            return "no nodes in the cluster".into();
        }
        let n = |k: usize| if k == 1 { "1 node".to_owned() } else { format!("{k} nodes") };
        format!("no node fits: {}", self.parts(shape, n).join(", "))
    }

    /// A phrase per reason, `subject(count)` naming the nodes it holds for
    /// ("2 nodes", or "its node host2" for a pinned task).
    fn parts(&self, shape: &Request, subject: impl Fn(usize) -> String) -> Vec<String> {
        let mut parts = Vec::new();
        // The verb agrees with the subject: "1 node lacks", "2 nodes lack".
        let say = |k: usize, one: String, many: String| format!("{} {}", subject(k), if k == 1 { one } else { many });
        if self.unschedulable > 0 {
            parts.push(say(self.unschedulable, "is not ready or drained".into(), "are not ready or drained".into()));
        }
        for (&i, &k) in &self.constraint {
            let c = &shape.constraints[i];
            parts.push(say(k, format!("fails {c}"), format!("fail {c}")));
        }
        if self.no_mounts > 0 {
            let (one, many) = (
                "runs an agent that cannot mount volumes, secrets or configs",
                "run agents that cannot mount volumes, secrets or configs",
            );
            parts.push(say(self.no_mounts, one.into(), many.into()));
        }
        if self.old_agent > 0 {
            let (one, many) = (
                "runs an agent too old for stacks and depends_on (upgrade it)",
                "run agents too old for stacks and depends_on (upgrade them)",
            );
            parts.push(say(self.old_agent, one.into(), many.into()));
        }
        if let Some((_, where_)) = shape.data.pinned.as_ref().filter(|_| self.not_data > 0) {
            let lack = format!("its pinned {where_}");
            parts.push(say(self.not_data, format!("does not hold {lack}"), format!("do not hold {lack}")));
        }
        if let Some((max, k)) = self.per_node {
            let runs = format!("{max} of its tasks already (max_replicas_per_node)");
            parts.push(say(k, format!("runs {runs}"), format!("run {runs}")));
        }
        if self.cpu > 0 {
            let needs = shape.resources.cpu_millis as f64 / 1000.0;
            parts.push(say(self.cpu, format!("lacks CPU (needs {needs})"), format!("lack CPU (needs {needs})")));
        }
        if self.memory > 0 {
            let needs = format_memory(shape.resources.memory_bytes);
            parts.push(say(
                self.memory,
                format!("lacks memory (needs {needs})"),
                format!("lack memory (needs {needs})"),
            ));
        }
        if self.addresses > 0 {
            let (one, many) = ("has no free address in its subnet", "have no free address in their subnets");
            parts.push(say(self.addresses, one.into(), many.into()));
        }
        parts
    }
}

#[cfg(test)]
mod tests;
