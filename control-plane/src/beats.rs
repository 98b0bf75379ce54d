//! What answering an agent's heartbeat needs from the state, made once per
//! applied index and shared by every heartbeat until the next.
//!
//! Thousands of nodes beat every second; each answer names the node's
//! exclusive tasks (its lease) and the digest of the roots the cluster
//! trusts. Looking those up in the state on every beat walked every task
//! and hashed every root per beat; a view made once per commit costs one
//! walk per commit, and a beat then costs a map lookup. While tasks are
//! being placed the index moves many times a second, and a walk of
//! 100,000 tasks per move was a tenth of a server's CPU: the view is made
//! from the last one and the tasks touched since (`state::Touches`), as
//! the watches' publication is.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use berth_proto::model::{Desired, Task};

use crate::state::{Since, State};
use crate::store::{Applied, LogId};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct BeatView {
    /// The applied index it was made at.
    pub at: Option<LogId>,
    /// Tasks meant to run with an exclusive volume, by node.
    pub exclusive: HashMap<String, Vec<String>>,
    /// Digest of the roots the cluster trusts (empty before it has any).
    pub roots_digest: String,
    /// An old root is still trusted: nodes say which root they hold.
    pub rotating: bool,
}

impl BeatView {
    /// The view of `state` (at `at`): `prev`'s, with the tasks `touched`
    /// since (and those of the services a spec's command named) made
    /// again, or every task walked when that is not known.
    pub fn next(prev: &BeatView, state: &State, at: Option<LogId>, touched: Option<&Since>) -> Self {
        let exclusive = match touched {
            Some(since) => {
                let of_services = since.of_services(state);
                let ids: BTreeSet<&str> =
                    since.tasks.iter().copied().chain(&of_services).map(|t| t.id.as_str()).collect();
                let mut exclusive = prev.exclusive.clone();
                if exclusive.values().flatten().any(|id| ids.contains(id.as_str())) {
                    exclusive.values_mut().for_each(|tasks| tasks.retain(|id| !ids.contains(id.as_str())));
                    exclusive.retain(|_, tasks| !tasks.is_empty());
                }
                for t in ids.iter().filter_map(|id| state.tasks.get(*id)) {
                    lease(&mut exclusive, t);
                }
                exclusive
            }
            None => {
                let mut exclusive = HashMap::new();
                state.tasks.values().for_each(|t| lease(&mut exclusive, t));
                exclusive
            }
        };
        let (roots_digest, rotating) = match &state.trust {
            Some(t) => (berth_proto::renew::roots_digest(&t.roots_pem()), t.rotating()),
            None => (String::new(), false),
        };
        Self { at, exclusive, roots_digest, rotating }
    }
}

/// Adds `t` to its node's leased tasks if it is meant to run there with an
/// exclusive volume (kept in id order).
fn lease(exclusive: &mut HashMap<String, Vec<String>>, t: &Task) {
    let Some(node) = &t.node else { return };
    if t.desired == Desired::Running && t.spec.overrides.options.exclusive() {
        let tasks = exclusive.entry(node.clone()).or_default();
        if let Err(at) = tasks.binary_search(&t.id) {
            tasks.insert(at, t.id.clone());
        }
    }
}

/// The view of the last applied index asked for, kept until the index moves.
#[derive(Debug, Default)]
pub struct BeatCache(Mutex<Arc<BeatView>>);

impl BeatCache {
    /// The view of `applied`, made from the cached one when that is older.
    pub fn at(&self, applied: &Applied) -> Arc<BeatView> {
        let at = applied.last_applied;
        let mut cached = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.at != at || at.is_none() {
            let touched = cached.at.and_then(|c| applied.touches.after(c.index));
            *cached = Arc::new(BeatView::next(&cached, &applied.state, at, touched.as_ref()));
        }
        cached.clone()
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{Mount, MountKind, Task, TaskSpec};

    use super::*;
    use crate::state::{apply, touches, Command, TaskChange};
    use crate::testing;

    fn task(slot: u32, node: Option<&str>, exclusive: bool, desired: Desired) -> Task {
        let mut spec = TaskSpec::default();
        let kind = MountKind::Volume;
        let volume =
            Mount { kind, source: "data".into(), target: "/data".into(), readonly: false, pin: true, exclusive };
        spec.overrides.options.mounts = vec![volume];
        let mut t = Task::new("db", slot, 1, 1, spec);
        t.node = node.map(Into::into);
        t.desired = desired;
        t
    }

    fn whole(state: &State) -> BeatView {
        BeatView::next(&BeatView::default(), state, None, None)
    }

    #[test]
    fn a_node_is_told_only_its_exclusive_tasks_that_should_run() {
        let mut state = State::default();
        for t in [
            task(1, Some("n1"), true, Desired::Running),
            task(2, Some("n1"), false, Desired::Running),
            task(3, Some("n1"), true, Desired::Shutdown),
            task(4, Some("n2"), true, Desired::Running),
        ] {
            state.tasks.insert(t.id.clone(), t);
        }
        let view = whole(&state);
        assert_eq!(view.exclusive.get("n1"), Some(&vec!["db.1.1".to_string()]));
        assert_eq!(view.exclusive.get("n2"), Some(&vec!["db.4.1".to_string()]));
        assert_eq!(view.exclusive.len(), 2);
        assert!(view.roots_digest.is_empty() && !view.rotating);
    }

    /// Applies `cmd` as the state machine does, noting what it touched.
    fn step(applied: &mut Applied, cmd: Command) {
        let before = applied.last_applied.map_or(0, |l| l.index);
        let touch = touches(&applied.state, &cmd);
        apply(&mut applied.state, &cmd);
        applied.touches.push(before, before + 1, touch);
        applied.last_applied = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), before + 1));
    }

    fn decided(changes: Vec<TaskChange>) -> Command {
        Command::Reconcile { changes, at_ms: 1, rollouts: vec![] }
    }

    #[test]
    fn the_cache_is_made_again_only_when_the_index_moves() {
        let mut applied = Applied::default();
        step(&mut applied, Command::CreateService(testing::spec("db", 1)));
        let cache = BeatCache::default();
        let first = cache.at(&applied);
        // Same index: the view made before (the state at an index does not change).
        let t = task(1, Some("n1"), true, Desired::Running);
        applied.state.tasks.insert(t.id.clone(), t);
        assert!(Arc::ptr_eq(&first, &cache.at(&applied)));
        step(&mut applied, decided(vec![TaskChange::Shutdown { id: "db.1.1".into(), reason: String::new() }]));
        assert!(!Arc::ptr_eq(&first, &cache.at(&applied)));
    }

    /// Placed, stopped, its service removed, forgotten: after each, the
    /// view made from the last one and the touched tasks is the whole one.
    #[test]
    fn a_view_made_from_the_touched_tasks_is_the_whole_one() {
        let mut applied = Applied::default();
        for n in ["n1", "n2"] {
            applied.state.nodes.insert(n.into(), testing::node(n));
        }
        step(&mut applied, Command::CreateService(testing::spec("db", 1)));
        let (t1, t2, t3) = (
            task(1, None, true, Desired::Running),
            task(2, None, false, Desired::Running),
            task(3, None, true, Desired::Running),
        );
        let ids = [t1.id.clone(), t2.id.clone(), t3.id.clone()];
        let place = |id: &String, node: &str| TaskChange::Assign { id: id.clone(), node: node.into() };
        let commands = [
            decided(vec![
                TaskChange::Create(Box::new(t1)),
                TaskChange::Create(Box::new(t2)),
                TaskChange::Create(Box::new(t3)),
            ]),
            decided(vec![place(&ids[0], "n1"), place(&ids[1], "n1"), place(&ids[2], "n2")]),
            decided(vec![TaskChange::Shutdown { id: ids[0].clone(), reason: String::new() }]),
            Command::DeleteService { name: "db".into() },
            decided(vec![TaskChange::Remove { id: ids[2].clone() }]),
        ];
        let mut view = whole(&applied.state);
        let mut seen = Vec::new();
        for cmd in commands {
            let at = applied.last_applied;
            step(&mut applied, cmd);
            let since = applied.touches.after(at.map_or(0, |l| l.index));
            assert!(since.is_some(), "the touches reach back");
            view = BeatView::next(&view, &applied.state, applied.last_applied, since.as_ref());
            assert_eq!(view.exclusive, whole(&applied.state).exclusive);
            seen.push(view.exclusive.values().map(Vec::len).sum::<usize>());
        }
        assert_eq!(seen, [0, 2, 1, 0, 0], "placed: t1 and t3 leased; t1 stopped; the service removed stops t3");
    }
}
