//! The fence: a task with an exclusive volume runs only while the node
//! holds a lease from the cluster's leader that names it (see the
//! heartbeat's `lease_ms` and `exclusive`). A pure function of the
//! assignment and the lease as it stands now: the tasks it may not run
//! leave `tasks` for `fenced`, so a pass neither starts them nor (as it
//! would a task no longer wanted) removes them; it stops the ones that
//! run, within `Settings::fence_grace`. They are started again (a restart,
//! by their policy) once a lease names them.
//!
//! A lease lapses when the node cannot reach a leader that hears from a
//! quorum: it ends well before the cluster takes the node for down and
//! moves its tasks, so two copies never overlap. The lease names what the
//! leader wants here now, not the assignment the node last heard, which a
//! partition may have left stale.

use std::collections::BTreeSet;

use berth_proto::model::Assignment;

/// Takes out of `assignment.tasks` the exclusive tasks `lease` (the tasks a
/// valid lease names; none when the node holds no lease) does not name.
pub fn fence(assignment: &mut Assignment, lease: Option<&BTreeSet<String>>) {
    let fenced: Vec<String> = assignment
        .tasks
        .values()
        .filter(|t| t.spec.overrides.options.exclusive() && !lease.is_some_and(|l| l.contains(&t.id)))
        .map(|t| t.id.clone())
        .collect();
    for task in fenced {
        assignment.tasks.remove(&task);
        assignment.fenced.insert(task);
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{AssignedTask, Mount, MountKind, TaskSpec};

    use super::*;

    fn task(id: &str, exclusive: bool) -> AssignedTask {
        let mut spec = TaskSpec::default();
        spec.overrides.options.mounts = vec![Mount {
            kind: MountKind::Volume,
            source: "data".into(),
            target: "/data".into(),
            readonly: false,
            pin: false,
            exclusive,
        }];
        AssignedTask { id: id.into(), spec, restarts: 0, address: None, files: Default::default() }
    }

    fn assignment() -> Assignment {
        let tasks = [task("db.1.1", true), task("db.2.1", true), task("web.1.1", false)];
        Assignment { tasks: tasks.into_iter().map(|t| (t.id.clone(), t)).collect(), ..Assignment::default() }
    }

    #[test]
    fn only_what_a_lease_names_runs_and_other_tasks_are_untouched() {
        let mut a = assignment();
        fence(&mut a, None);
        assert_eq!(a.tasks.keys().collect::<Vec<_>>(), ["web.1.1"], "no lease: no exclusive task");
        assert_eq!(a.fenced, ["db.1.1".to_owned(), "db.2.1".to_owned()].into());
        let mut a = assignment();
        fence(&mut a, Some(&["db.2.1".to_owned()].into()));
        assert_eq!(a.tasks.keys().collect::<Vec<_>>(), ["db.2.1", "web.1.1"], "the leader wants db.1.1 elsewhere");
        assert_eq!(a.fenced, ["db.1.1".to_owned()].into());
    }
}
