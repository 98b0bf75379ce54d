//! The reconciler: what should change so that tasks match services. A pure
//! function of the replicated state; the leader runs it after changes and
//! on a timer, and commits its answer as one `Command::Reconcile`.
//!
//! ```text
//! tasks on down/drained nodes, of removed services ─▶ Shutdown
//! each slot 1..=replicas without a live task       ─▶ New (next generation, with its node)
//!   (global: a slot per eligible node, the task pinned to it)
//! slots above replicas (global: of nodes no longer eligible) ─▶ Shutdown
//! slots whose task runs an old spec, as the rollout
//! allows (see [`rollout`])                         ─▶ start-first: New successor, the
//!                                                     old one stops once it serves;
//!                                                     stop-first: Shutdown, then New
//! one replica moved to even out a calm service     ─▶ Create (its old task's spec), Assign
//! a rollout whose new tasks failed                 ─▶ rollback | pause (RolloutChange)
//! live tasks not placed                            ─▶ scheduler ─▶ Assign | Unplaced
//! stopped tasks, or ones on nodes that are gone    ─▶ Remove
//! ```
//!
//! Running it twice without anything happening in between gives nothing
//! the second time: at rest it is silent. What waits for time (a rollout's
//! delay or monitor) says when to look again (`Reconciled::wake_at`).

mod data;
pub mod rebalance;
pub mod rollout;

use std::collections::{BTreeMap, BTreeSet};

use berth_proto::model::{
    Desired, Mode, NodeStatus, Order, RolloutState, Service, ServiceSpec, Task, TaskSpec, TaskState,
};

use crate::scheduler::{self, Decision, NodeView, Request};
use crate::state::{NewTask, RolloutChange, State, TaskChange};

/// What the reconciler would change.
#[derive(Debug, Default, PartialEq)]
pub struct Reconciled {
    pub changes: Vec<TaskChange>,
    pub rollouts: Vec<RolloutChange>,
    /// Services whose failed rollout goes back to the previous spec, and why.
    pub rollbacks: Vec<(String, String)>,
    /// When to look again though nothing changes (Unix ms).
    pub wake_at: Option<u64>,
}

impl Reconciled {
    /// Look again at `at` at the latest.
    fn wake(&mut self, at: u64) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.rollouts.is_empty() && self.rollbacks.is_empty()
    }
}

/// `now` is the leader's wall clock (Unix ms), for rollouts' delays and monitors.
pub fn reconcile(state: &State, now: u64) -> Reconciled {
    let mut out = Reconciled::default();
    let mut plan = Plan::default();

    // Tasks that cannot go on where they are.
    for t in state.tasks.values().filter(|t| t.desired == Desired::Running) {
        let node = t.node.as_ref().map(|id| (id, state.nodes.get(id)));
        match (state.services.contains_key(&t.service), node) {
            (false, _) => plan.stop(t, "service removed".into()),
            (true, Some((id, None))) => plan.stop(t, format!("node {id} was removed")),
            (true, Some((_, Some(n)))) if n.status == NodeStatus::Down => {
                plan.stop(t, format!("node {} is down", n.name))
            }
            (true, Some((_, Some(n)))) if !n.schedulable() => plan.stop(t, format!("node {} is drained", n.name)),
            _ => {}
        }
    }

    // Live tasks by service and slot, oldest generation first.
    let mut live: BTreeMap<&str, BTreeMap<u32, Vec<&Task>>> = BTreeMap::new();
    for t in state.tasks.values() {
        if t.desired == Desired::Running && !plan.stopping.contains(t.id.as_str()) {
            live.entry(&t.service).or_default().entry(t.slot).or_default().push(t);
        }
    }
    for slots in live.values_mut().flat_map(|s| s.values_mut()) {
        slots.sort_by_key(|t| t.generation);
    }

    // Services with a move given up lately, and until when they wait.
    let mut held_back: BTreeMap<&str, u64> = BTreeMap::new();
    for t in state.tasks.values().filter(|t| abandoned_lately(t, now)) {
        let until = t.since_ms.saturating_add(MOVE_BACKOFF_MS);
        held_back.entry(&t.service).and_modify(|u| *u = (*u).max(until)).or_insert(until);
    }
    // New tasks of their services' current specs, and (at most one) a move's.
    let mut created: Vec<Task> = Vec::new();
    let mut moved: Option<Task> = None;
    // Services that may have a replica moved (see `calm_service`).
    let mut calm = Vec::new();
    for (name, service) in &state.services {
        let slots = live.remove(name.as_str()).unwrap_or_default();
        let next = |slot: u32| next_generation(state, name, slot);
        let current = state.template(service);
        // During a rollback, a task of an older version that already runs
        // what the spec asks (one the failed rollout never reached) is no
        // less current. (Elsewhere versions decide: a change of service
        // fields a task does not carry, such as constraints, moves tasks.)
        // (Made only then: a pass looks at every service.)
        let rolling_back = service.rollout.as_ref().is_some_and(|r| r.version == current && r.state.rolling_back());
        let spec_now = rolling_back.then(|| TaskSpec::from(&service.spec));
        let fresh = |t: &Task| t.version >= current || spec_now.as_ref().is_some_and(|s| t.spec == *s);
        let (mut new_tasks, mut in_flight, mut outdated) = (Vec::new(), 0, BTreeMap::new());
        let monitor = service.spec.update_config.monitor_ms;
        let wanted = wanted_slots(state, service, &slots);
        let make = |slot: u32| {
            let pin = wanted.get(&slot).cloned().flatten();
            NewTask { service: name.clone(), slot, generation: next(slot), version: current, pin, node: None }
                .made_for(service)
        };
        for &slot in wanted.keys() {
            let Some((newest, older)) = slots.get(&slot).and_then(|tasks| tasks.split_last()) else {
                created.push(make(slot));
                in_flight += 1;
                continue;
            };
            // A move (a successor of the old task's version, see
            // `rebalance`) that failed is given up: the old task serves on,
            // and the service draws no move for a while (`MOVE_BACKOFF_MS`).
            let moving = !older.is_empty() && older.iter().all(|o| o.version == newest.version);
            if let Some(why) = moving.then(|| rollout::failure(newest, monitor, now)).flatten() {
                plan.stop(newest, format!("{ABANDONED}{why}"));
                continue;
            }
            if !older.is_empty() {
                // A successor exists. The old ones go once it serves, or at
                // once if they do not run themselves (they serve no one).
                // A successor that fits nowhere stalls the update with its
                // reason shown, and the old task keeps serving, as Swarm's
                // start-first updates do.
                for old in older {
                    if newest.serving() || old.state != TaskState::Running {
                        // Of the same version: a move (see `rebalance`).
                        let why = if old.version == newest.version { "rebalanced: " } else { "" };
                        plan.stop(old, format!("{why}replaced by {}", newest.id));
                    }
                }
                // One made for a spec that has changed again is dropped, so
                // a fixed spec can roll out past one that never ran; one
                // that serves (its old ones go now) waits its turn.
                if fresh(newest) {
                    new_tasks.push(*newest);
                } else if newest.serving() {
                    outdated.insert(slot, *newest);
                } else {
                    plan.stop(newest, "superseded by a newer spec".into());
                }
                in_flight += usize::from(!newest.serving());
            } else if !fresh(newest) && newest.state != TaskState::Running {
                // It serves no one: replaced now, outside the paced rollout.
                plan.stop(newest, "superseded by a newer spec".into());
                created.push(make(slot));
                in_flight += 1;
            } else if !fresh(newest) {
                outdated.insert(slot, *newest);
            } else {
                new_tasks.push(*newest);
                in_flight += usize::from(!newest.serving());
            }
        }
        let view = rollout::View {
            current,
            replicas: wanted.len() as u32,
            rollout: service.rollout.as_ref(),
            update: service.spec.update_config,
            rollback: service.spec.rollback_config,
            has_previous: service.previous.is_some(),
            new_tasks,
            outdated: outdated.keys().copied().collect(),
            in_flight,
        };
        let decided = rollout::decide(&view, now);
        // A global task is replaced on its own node, stop-first (as a
        // Kubernetes DaemonSet's by default): its node might not have room
        // for two.
        // A slot with an exclusive volume never has two copies: stop-first.
        let order = match service.spec.mode {
            Mode::Replicated if service.spec.overrides.options.exclusive() => Order::StopFirst,
            Mode::Replicated => rollout::config(&view).order,
            Mode::Global => Order::StopFirst,
        };
        for slot in decided.replace {
            match (order, outdated.get(&slot)) {
                (Order::StartFirst, _) => created.push(make(slot)),
                // Its successor comes once the slot has no live task.
                (Order::StopFirst, Some(old)) => plan.stop(old, format!("updating to version {current}")),
                (Order::StopFirst, None) => {}
            }
        }
        if let Some((state, message)) = decided.state {
            out.rollouts.push(RolloutChange { service: name.clone(), version: current, state, message });
        }
        if let Some(why) = decided.rollback {
            out.rollbacks.push((name.clone(), why));
        }
        if let Some(at) = decided.wake_at {
            out.wake(at);
        }
        for (_, tasks) in slots.iter().filter(|(slot, _)| !wanted.contains_key(slot)) {
            for t in tasks {
                plan.stop(t, unwanted(state, t));
            }
        }
        // Nothing outdated (so nothing replaced) and nothing in flight.
        let backing_off = held_back.get(name.as_str()).copied();
        if let Some(until) = backing_off {
            out.wake(until);
        }
        if outdated.is_empty() && in_flight == 0 && slots.len() == wanted.len() && backing_off.is_none() {
            calm.extend(calm_service(service, &slots));
        }
    }
    // One replica moves per pass, when nothing else is being made.
    if created.is_empty() && !calm.is_empty() {
        let nodes = views(state, &plan.stopping);
        for (service, tasks, ready_at) in &calm {
            let Some(t) = rebalance::pick(&nodes, &service.spec, tasks) else { continue };
            if now < *ready_at {
                out.wake(*ready_at);
                continue;
            }
            let generation = next_generation(state, &t.service, t.slot);
            moved = Some(Task::new(&t.service, t.slot, generation, t.version, t.spec.clone()));
            break;
        }
    }
    let Plan { mut changes, stopping } = plan;
    let decisions = place(state, &stopping, created.iter().chain(&moved));
    changes.extend(written(state, decisions, created, moved));

    // Forget what has stopped, or can no longer tell us it has.
    for t in state.tasks.values().filter(|t| t.desired == Desired::Shutdown) {
        let node_gone =
            t.node.as_ref().is_none_or(|id| state.nodes.get(id).is_none_or(|n| n.status == NodeStatus::Down));
        // (An exclusive copy holds its slot until its node says it is shut
        // down: see `data::other_copy`.)
        let ended = t.ended();
        // A move given up is kept a while: it holds its service's next one back.
        if (ended || node_gone) && !abandoned_lately(t, now) {
            changes.push(TaskChange::Remove { id: t.id.clone() });
        }
    }
    out.changes = changes;
    out
}

/// The generation a slot's next task takes.
fn next_generation(state: &State, service: &str, slot: u32) -> u32 {
    state.generations.get(&format!("{service}.{slot}")).copied().unwrap_or(0) + 1
}

/// How a task of a failed move is stopped (and known again).
const ABANDONED: &str = "rebalance abandoned: ";

/// How long after a failed move its service draws no other.
pub const MOVE_BACKOFF_MS: u64 = 60_000;

/// A task of a move given up less than `MOVE_BACKOFF_MS` ago.
fn abandoned_lately(t: &Task, now: u64) -> bool {
    t.desired == Desired::Shutdown
        && t.message.starts_with(ABANDONED)
        && now < t.since_ms.saturating_add(MOVE_BACKOFF_MS)
}

/// Why a task whose slot the service no longer wants stops: scaled down,
/// or (global) what became of its node.
fn unwanted(state: &State, t: &Task) -> String {
    let Some(id) = &t.pin else { return "scaled down".into() };
    match state.nodes.get(id) {
        None => format!("node {id} was removed"),
        Some(n) if n.status == NodeStatus::Down => format!("node {} is down", n.name),
        Some(n) if !n.schedulable() => format!("node {} is drained", n.name),
        Some(n) => format!("node {} no longer meets the service's constraints", n.name),
    }
}

/// A service whose replicas may be moved to even out its spread, with its
/// tasks and the time from which a move may start: replicated, rebalanced
/// (`placement.rebalance`), replaced start-first (a stop-first service's
/// tasks cannot run twice, and a move would), not in a rollout, one task per
/// slot, and every one serving. A move waits until every replica has served
/// for the update config's `monitor` (the rate: one move per service per
/// monitor, and none towards a node that has just flapped back for long).
fn calm_service<'a>(
    service: &'a Service,
    slots: &BTreeMap<u32, Vec<&'a Task>>,
) -> Option<(&'a Service, Vec<&'a Task>, u64)> {
    let spec = &service.spec;
    let rolling = service
        .rollout
        .as_ref()
        .is_some_and(|r| r.state.moving() || matches!(r.state, RolloutState::Paused | RolloutState::RollbackPaused));
    // A replica with volumes stays with its data.
    let eligible = spec.mode == Mode::Replicated
        && spec.placement.rebalance
        && spec.overrides.options.mounts.is_empty()
        && spec.update_config.order == Order::StartFirst
        && !rolling;
    if !eligible {
        return None;
    }
    let tasks: Vec<&Task> = slots.values().filter_map(|t| t.last().copied()).collect();
    if slots.values().any(|t| t.len() != 1) || !tasks.iter().all(|t| t.serving()) {
        return None;
    }
    let ready_at = tasks.iter().map(|t| t.since_ms.saturating_add(spec.update_config.monitor_ms)).max().unwrap_or(0);
    Some((service, tasks, ready_at))
}

/// The slots a service should have, each with the node its task is
/// pinned to: 1..=replicas, unpinned; or, for a global service, one per
/// node that is ready, active and meets its constraints. A node keeps the
/// slot of the tasks it has; a new one takes the lowest free number.
fn wanted_slots(state: &State, service: &Service, live: &BTreeMap<u32, Vec<&Task>>) -> BTreeMap<u32, Option<String>> {
    let spec = &service.spec;
    if spec.mode == Mode::Replicated {
        return (1..=spec.replicas).map(|slot| (slot, None)).collect();
    }
    let mut held: BTreeMap<&str, u32> = BTreeMap::new();
    for (&slot, tasks) in live {
        if let Some(pin) = tasks.last().and_then(|t| t.pin.as_deref()) {
            held.entry(pin).or_insert(slot);
        }
    }
    let eligible = state
        .nodes
        .values()
        .filter(|n| n.schedulable() && spec.constraints.iter().all(|c| c.allows(&n.name, &n.labels)));
    let mut wanted = BTreeMap::new();
    let mut homeless = Vec::new();
    for node in eligible {
        match held.get(node.id.as_str()) {
            Some(&slot) => {
                wanted.insert(slot, Some(node.id.clone()));
            }
            None => homeless.push(node.id.clone()),
        }
    }
    let mut free = (1..).filter(|slot| !live.contains_key(slot) && !wanted.contains_key(slot));
    let numbered: Vec<(u32, String)> = homeless.into_iter().map(|id| (free.next().unwrap_or(0), id)).collect();
    wanted.extend(numbered.into_iter().map(|(slot, id)| (slot, Some(id))));
    wanted
}

#[derive(Default)]
struct Plan<'a> {
    changes: Vec<TaskChange>,
    /// Tasks told to stop in this pass.
    stopping: BTreeSet<&'a str>,
}

impl<'a> Plan<'a> {
    fn stop(&mut self, t: &'a Task, reason: String) {
        if self.stopping.insert(t.id.as_str()) {
            self.changes.push(TaskChange::Shutdown { id: t.id.clone(), reason });
        }
    }
}

/// The nodes as the scheduler sees them, with the live tasks (those not
/// told to stop in this pass) counted per service. One walk of the tasks:
/// a pass over 100,000 makes this for each of its placements.
fn views(state: &State, stopping: &BTreeSet<&str>) -> Vec<NodeView> {
    let mut nodes: Vec<NodeView> = state
        .nodes
        .values()
        .map(|n| NodeView {
            id: n.id.clone(),
            name: n.name.clone(),
            labels: n.labels.clone(),
            schedulable: n.schedulable(),
            capacity: n.capacity,
            allocated: Default::default(),
            tasks: BTreeMap::new(),
            addresses_left: n.subnet.map(|s| s.task_capacity().min(u32::MAX as u64) as u32),
            mounts: state.volumes.contains_key(&n.id),
            reads: n.reads,
        })
        .collect();
    let at: std::collections::HashMap<&str, usize> =
        state.nodes.keys().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    for t in state.tasks.values() {
        let Some(view) = t.node.as_deref().and_then(|id| at.get(id)).map(|&i| &mut nodes[i]) else { continue };
        // Tasks told to stop still hold their share until they have stopped.
        if t.holds_resources() {
            view.allocated += t.spec.resources;
        }
        // Addresses stay taken until their task is forgotten (see `state::ipam`).
        if t.address.is_some() {
            view.addresses_left = view.addresses_left.map(|left| left.saturating_sub(1));
        }
        if t.desired == Desired::Running && !stopping.contains(t.id.as_str()) {
            match view.tasks.get_mut(&t.service) {
                Some(count) => *count += 1,
                None => {
                    view.tasks.insert(t.service.clone(), 1);
                }
            }
        }
    }
    nodes
}

/// What the scheduler is asked for a task of this service.
fn request(task: &Task, spec: &ServiceSpec, holders: &data::Holders) -> Request {
    Request {
        task: task.id.clone(),
        service: task.service.clone(),
        resources: task.spec.resources,
        constraints: spec.constraints.clone(),
        pin: task.pin.clone(),
        spread: spec.placement.spread.clone(),
        max_per_node: spec.placement.max_per_node,
        data: holders.data(task),
        needs: agent_needs(spec),
    }
}

/// The agent level a service's tasks need: an agent before stacks would
/// skip a `STACK_SERVICE` task unreported, and start one without waiting
/// for its dependencies.
pub fn agent_needs(spec: &ServiceSpec) -> u32 {
    if spec.uses_stacks() {
        berth_proto::model::AGENT_READS
    } else {
        0
    }
}

/// Runs the scheduler over every live task without a node (old and new).
fn place<'a>(state: &'a State, stopping: &BTreeSet<&str>, created: impl Iterator<Item = &'a Task>) -> Vec<Decision> {
    let nodes = views(state, stopping);
    let mut pending: Vec<&Task> = created.collect();
    pending.extend(
        state
            .tasks
            .values()
            .filter(|t| t.desired == Desired::Running && !stopping.contains(t.id.as_str()) && t.node.is_none()),
    );
    pending.sort_by(|a, b| (&a.service, a.slot, a.generation).cmp(&(&b.service, b.slot, b.generation)));
    // A slot with an exclusive volume waits until its other copy has stopped
    // (or its node is down: by then that node has fenced it).
    let mut waiting = Vec::new();
    pending.retain(|t| match data::other_copy(state, t) {
        Some(why) => {
            waiting.push(Decision::Unplaced { task: t.id.clone(), reason: why });
            false
        }
        None => true,
    });
    let holders = data::Holders::of(state);
    let requests: Vec<Request> =
        pending.iter().filter_map(|t| Some(request(t, &state.services.get(&t.service)?.spec, &holders))).collect();
    scheduler::schedule(&nodes, &requests).into_iter().chain(waiting).collect()
}

/// The scheduler's decisions and the new tasks as changes: first the
/// tasks that were pending already (they have waited longest, and a pass
/// cut short keeps a prefix of its changes, see `leader`), then each new
/// task as one `New` with its node (a move's, whose spec is its old
/// task's, as a `Create` and an `Assign`).
fn written(state: &State, decisions: Vec<Decision>, created: Vec<Task>, moved: Option<Task>) -> Vec<TaskChange> {
    let mut out = Vec::with_capacity(decisions.len());
    let mut new: BTreeMap<String, Decision> = BTreeMap::new();
    for d in decisions {
        let (Decision::Place { task, .. } | Decision::Unplaced { task, .. }) = &d;
        if !state.tasks.contains_key(task) {
            new.insert(task.clone(), d);
            continue;
        }
        match d {
            Decision::Place { task, node } => out.push(TaskChange::Assign { id: task, node }),
            // Said once: an unchanged reason is not written again.
            Decision::Unplaced { task, reason } => {
                let known = state.tasks.get(&task).is_some_and(|t| t.message == reason);
                if !known {
                    out.push(TaskChange::Unplaced { id: task, reason });
                }
            }
        }
    }
    let mut decided = |id: &str| match new.remove(id) {
        Some(Decision::Place { node, .. }) => (Some(node), None),
        Some(Decision::Unplaced { task, reason }) => (None, Some(TaskChange::Unplaced { id: task, reason })),
        None => (None, None),
    };
    for t in created {
        let (node, unplaced) = decided(&t.id);
        let Task { service, slot, generation, version, pin, .. } = t;
        out.push(TaskChange::New(NewTask { service, slot, generation, version, pin, node }));
        out.extend(unplaced);
    }
    if let Some(t) = moved {
        let (node, unplaced) = decided(&t.id);
        let id = t.id.clone();
        out.push(TaskChange::Create(Box::new(t)));
        out.extend(node.map(|node| TaskChange::Assign { id, node }));
        out.extend(unplaced);
    }
    out
}

#[cfg(test)]
mod tests;
