//! What answering an agent's heartbeat needs from the state, made once per
//! applied index and shared by every heartbeat until the next.
//!
//! Thousands of nodes beat every second; each answer names the node's
//! exclusive tasks (its lease) and the digest of the roots the cluster
//! trusts. Looking those up in the state on every beat walked every task
//! and hashed every root per beat; a view made once per commit costs one
//! walk per commit, and a beat then costs a map lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_proto::model::Desired;

use crate::state::State;
use crate::store::LogId;

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
    pub fn of(state: &State, at: Option<LogId>) -> Self {
        let mut exclusive: HashMap<String, Vec<String>> = HashMap::new();
        let leased =
            state.tasks.values().filter(|t| t.desired == Desired::Running && t.spec.overrides.options.exclusive());
        for t in leased {
            if let Some(node) = &t.node {
                exclusive.entry(node.clone()).or_default().push(t.id.clone());
            }
        }
        let (roots_digest, rotating) = match &state.trust {
            Some(t) => (berth_proto::renew::roots_digest(&t.roots_pem()), t.rotating()),
            None => (String::new(), false),
        };
        Self { at, exclusive, roots_digest, rotating }
    }
}

/// The view of the last applied index asked for, kept until the index moves.
#[derive(Debug, Default)]
pub struct BeatCache(Mutex<Arc<BeatView>>);

impl BeatCache {
    /// The view at `at`, made from `state` (the state at `at`) when the cached one is older.
    pub fn at(&self, state: &State, at: Option<LogId>) -> Arc<BeatView> {
        let mut cached = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.at != at || at.is_none() {
            *cached = Arc::new(BeatView::of(state, at));
        }
        cached.clone()
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{Mount, MountKind, Task, TaskSpec};

    use super::*;

    fn task(slot: u32, node: &str, exclusive: bool, desired: Desired) -> Task {
        let mut spec = TaskSpec::default();
        let kind = MountKind::Volume;
        let volume =
            Mount { kind, source: "data".into(), target: "/data".into(), readonly: false, pin: true, exclusive };
        spec.overrides.options.mounts = vec![volume];
        let mut t = Task::new("db", slot, 1, 1, spec);
        t.node = Some(node.into());
        t.desired = desired;
        t
    }

    #[test]
    fn a_node_is_told_only_its_exclusive_tasks_that_should_run() {
        let mut state = State::default();
        for t in [
            task(1, "n1", true, Desired::Running),
            task(2, "n1", false, Desired::Running),
            task(3, "n1", true, Desired::Shutdown),
            task(4, "n2", true, Desired::Running),
        ] {
            state.tasks.insert(t.id.clone(), t);
        }
        let view = BeatView::of(&state, None);
        assert_eq!(view.exclusive.get("n1"), Some(&vec!["db.1.1".to_string()]));
        assert_eq!(view.exclusive.get("n2"), Some(&vec!["db.4.1".to_string()]));
        assert_eq!(view.exclusive.len(), 2);
        assert!(view.roots_digest.is_empty() && !view.rotating);
    }

    #[test]
    fn the_cache_is_made_again_only_when_the_index_moves() {
        let mut state = State::default();
        let at = |i| Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i));
        let cache = BeatCache::default();
        let first = cache.at(&state, at(5));
        let t = task(1, "n1", true, Desired::Running);
        state.tasks.insert(t.id.clone(), t);
        // Same index: the view made before (the state at an index does not change).
        assert!(Arc::ptr_eq(&first, &cache.at(&state, at(5))));
        let moved = cache.at(&state, at(6));
        assert_eq!(moved.exclusive.get("n1").map(Vec::len), Some(1));
    }
}
