//! Which tasks a command may change, told before it applies, so that what
//! is made from the state (the watches' publication, `crate::publish`) can
//! redo only those tasks' services and nodes rather than walk every task.
//!
//! Only the commands that come by the thousand are told task by task: the
//! agents' reports and the reconciler's decisions; a node's status and
//! availability touch no task (nothing published shows them). A service's
//! spec is told by the service's name (`Touch::Services`): what follows it
//! makes that service again from its own tasks (a range of the task map,
//! `State::tasks_of`), and a watch resumed on another server needs only
//! that service (`Touches::services_after`). Any other command may
//! change more (a node's overlay, a secret a task reads) and is told as
//! `Touch::All`: what follows it is made whole, as before there were
//! touches. A command told task by task changes nothing but those tasks
//! (`apply` keeps to this; the publication's tests check it, and that a
//! resumed watch's list is the whole one).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Command, State, TaskChange};

/// A task as it was before a command that may change it: its node then,
/// and its service (which never changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub id: String,
    pub service: String,
    pub node: Option<String>,
}

/// What one log entry's commands may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touch {
    Tasks(Vec<Touched>),
    /// Services' specs by name (created, changed, scaled or gone), and so
    /// maybe any of their tasks, on any node; and these tasks. Of what
    /// every node's list shares (`crate::publish`), only these services
    /// change: a watch resumed from another server needs no more.
    Services(Vec<String>, Vec<Touched>),
    All,
}

/// What some entries touched: services by name, whose specs changed, and
/// tasks one by one.
#[derive(Debug, Default)]
pub struct Since<'a> {
    pub services: BTreeSet<&'a str>,
    pub tasks: Vec<&'a Touched>,
}

impl Since<'_> {
    /// The tasks of the services named, as they are in `state`. A spec's
    /// command moves none of them (removing a service stops its tasks
    /// where they are), so where they are now is where the spec's command
    /// left them; a task that other entries moved is also in `tasks`, with
    /// its node from before them.
    pub fn of_services(&self, state: &State) -> Vec<Touched> {
        let was = |t: &berth_proto::model::Task| Touched {
            id: t.id.clone(),
            service: t.service.clone(),
            node: t.node.clone(),
        };
        self.services.iter().flat_map(|name| state.tasks_of(name).map(was)).collect()
    }
}

/// The services whose endpoints some entries may have changed: per
/// service, the tasks whose replicas may have moved, or None when the
/// service itself may have changed.
pub type ServicesTouched = BTreeMap<String, Option<BTreeSet<String>>>;

/// The tasks `cmd` may change, as they are in `state` before it applies.
pub fn touches(state: &State, cmd: &Command) -> Touch {
    let was = |id: &str| {
        state.tasks.get(id).map(|t| Touched { id: t.id.clone(), service: t.service.clone(), node: t.node.clone() })
    };
    match cmd {
        // A report of a task not on that node changes nothing.
        Command::ReportTasks { reports, .. } => Touch::Tasks(reports.iter().filter_map(|r| was(&r.id)).collect()),
        // A node's status and availability are not published (the tasks
        // they move come with the reconciler's decisions).
        Command::SetNodeStatus { .. } | Command::SetAvailability { .. } => Touch::Tasks(vec![]),
        // A service's spec changes only its own endpoints (ports, replicas, started).
        Command::CreateService(spec) | Command::UpdateService(spec) | Command::ApplyService(spec) => {
            Touch::Services(vec![spec.name.clone()], vec![])
        }
        Command::ScaleService { name, .. } | Command::DeleteService { name } => {
            Touch::Services(vec![name.clone()], vec![])
        }
        // Rollout changes are the service's own, which publications do not carry.
        Command::Reconcile { changes, .. } => Touch::Tasks(
            changes
                .iter()
                .filter_map(|c| match c {
                    TaskChange::Create(t) => Some(Touched { id: t.id.clone(), service: t.service.clone(), node: None }),
                    TaskChange::New(t) => Some(Touched { id: t.id(), service: t.service.clone(), node: None }),
                    TaskChange::Assign { id, .. }
                    | TaskChange::Unplaced { id, .. }
                    | TaskChange::Shutdown { id, .. }
                    | TaskChange::Remove { id } => was(id),
                })
                .collect(),
        ),
        _ => Touch::All,
    }
}

/// The touches of the last log entries applied, for whoever makes things
/// from the state and wants to know what moved since the index it made
/// them at. Memory only (never in a snapshot): a server starts without,
/// and its first publication is made whole.
#[derive(Debug, Clone, Default)]
pub struct Touches {
    /// Every entry applied after this index is in `log`; None until the
    /// first entry is applied here.
    since: Option<u64>,
    log: VecDeque<(u64, Touch)>,
    /// Tasks told in `log`, to bound its memory.
    tasks: usize,
}

/// Tasks told in the log at most (a few MB); older entries are dropped,
/// and a reader behind them makes its things whole.
const KEPT_TASKS: usize = 200_000;

impl Touches {
    /// Notes what the entry at `index` touched; `before` is the index
    /// applied before it.
    pub fn push(&mut self, before: u64, index: u64, touch: Touch) {
        self.since.get_or_insert(before);
        self.tasks += touch_len(&touch);
        self.log.push_back((index, touch));
        while self.tasks > KEPT_TASKS {
            let Some((i, t)) = self.log.pop_front() else { break };
            self.tasks -= touch_len(&t);
            self.since = Some(i);
        }
    }

    /// What entries after `index` touched, up to the newest; None when it
    /// is not all known, or when one entry touched more than services and
    /// tasks.
    pub fn after(&self, index: u64) -> Option<Since<'_>> {
        if self.since? > index {
            return None;
        }
        let mut since = Since::default();
        // The log is in index order: skip to the first entry after `index`.
        let first = self.log.partition_point(|(i, _)| *i <= index);
        for (_, touch) in self.log.range(first..) {
            match touch {
                Touch::Tasks(t) => since.tasks.extend(t),
                Touch::Services(names, t) => {
                    since.services.extend(names.iter().map(String::as_str));
                    since.tasks.extend(t);
                }
                Touch::All => return None,
            }
        }
        Some(since)
    }

    /// The services entries after `index` may have changed the endpoints
    /// of, up to the newest; None when they are not all known, or when one
    /// entry may have changed more (nodes, so peers).
    pub fn services_after(&self, index: u64) -> Option<ServicesTouched> {
        if self.since? > index {
            return None;
        }
        let mut services = ServicesTouched::new();
        for (_, touch) in self.log.iter().filter(|(i, _)| *i > index) {
            let (whole, tasks) = match touch {
                Touch::Tasks(t) => (&[][..], t),
                Touch::Services(names, t) => (&names[..], t),
                Touch::All => return None,
            };
            for name in whole {
                services.insert(name.clone(), None);
            }
            for t in tasks {
                if let Some(ids) = services.entry(t.service.clone()).or_insert_with(|| Some(BTreeSet::new())) {
                    ids.insert(t.id.clone());
                }
            }
        }
        Some(services)
    }
}

fn touch_len(t: &Touch) -> usize {
    match t {
        Touch::Tasks(t) => t.len().max(1),
        Touch::Services(names, t) => (names.len() + t.len()).max(1),
        Touch::All => 1,
    }
}

/// Merges the touches of one entry's commands.
pub fn merged(touches: impl IntoIterator<Item = Touch>) -> Touch {
    let (mut names, mut tasks) = (Vec::new(), Vec::new());
    let mut services = false;
    for t in touches {
        match t {
            Touch::Tasks(t) => tasks.extend(t),
            Touch::Services(n, t) => {
                services = true;
                names.extend(n);
                tasks.extend(t);
            }
            Touch::All => return Touch::All,
        }
    }
    match services {
        true => Touch::Services(names, tasks),
        false => Touch::Tasks(tasks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(ids: &[&str]) -> Touch {
        Touch::Tasks(ids.iter().map(|id| Touched { id: (*id).into(), service: "s".into(), node: None }).collect())
    }

    #[test]
    fn touches_are_known_only_after_the_first_entry_and_until_an_all() {
        let mut t = Touches::default();
        assert!(t.after(0).is_none(), "nothing applied here yet");
        t.push(4, 5, tasks(&["a"]));
        t.push(5, 6, tasks(&["b", "c"]));
        assert!(t.after(3).is_none(), "entry 4 was applied before (a snapshot)");
        let ids = |v: Option<Since>| v.map(|v| v.tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>());
        assert_eq!(ids(t.after(4)), Some(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(ids(t.after(5)), Some(vec!["b".into(), "c".into()]));
        assert_eq!(ids(t.after(6)), Some(vec![]));
        t.push(6, 7, Touch::All);
        assert!(t.after(5).is_none(), "entry 7 touched more than tasks");
        assert_eq!(ids(t.after(7)), Some(vec![]));
    }

    #[test]
    fn old_entries_go_once_too_many_tasks_are_told() {
        let mut t = Touches::default();
        let many: Vec<String> = (0..KEPT_TASKS / 2 + 1).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        t.push(0, 1, tasks(&refs));
        t.push(1, 2, tasks(&refs));
        assert!(t.after(0).is_none(), "entry 1 was dropped");
        assert_eq!(t.after(1).map(|v| v.tasks.len()), Some(refs.len()));
    }

    #[test]
    fn reports_and_decisions_touch_their_tasks_as_they_were_and_the_rest_all() {
        let mut state = State::default();
        let mut task = berth_proto::model::Task::new("web", 1, 1, 1, Default::default());
        task.node = Some("n1".into());
        state.tasks.insert(task.id.clone(), task.clone());
        let report = |id: &str| berth_proto::model::TaskReport {
            id: id.into(),
            state: berth_proto::model::TaskState::Running,
            exit_code: None,
            restarts: 0,
            message: String::new(),
            health: None,
        };
        let cmd =
            Command::ReportTasks { node: "n1".into(), reports: vec![report("web.1.1"), report("gone.1.1")], at_ms: 0 };
        let was = Touched { id: "web.1.1".into(), service: "web".into(), node: Some("n1".into()) };
        assert_eq!(touches(&state, &cmd), Touch::Tasks(vec![was.clone()]));
        let new = berth_proto::model::Task::new("web", 2, 1, 1, Default::default());
        let changes = vec![
            TaskChange::Create(Box::new(new)),
            TaskChange::Shutdown { id: "web.1.1".into(), reason: String::new() },
        ];
        let cmd = Command::Reconcile { changes, at_ms: 0, rollouts: vec![] };
        let created = Touched { id: "web.2.1".into(), service: "web".into(), node: None };
        assert_eq!(touches(&state, &cmd), Touch::Tasks(vec![created, was]));
        let web = Touch::Services(vec!["web".into()], vec![]);
        assert_eq!(touches(&state, &Command::DeleteService { name: "web".into() }), web);
        assert_eq!(touches(&state, &Command::RemoveNode { id: "n1".into() }), Touch::All);
    }

    #[test]
    fn the_services_touched_are_named_whole_or_by_their_tasks_until_an_all() {
        let mut t = Touches::default();
        t.push(0, 1, tasks(&["s.1.1"]));
        t.push(1, 2, merged([Touch::Services(vec!["db".into()], vec![]), tasks(&["s.2.1"])]));
        let services = t.services_after(0).unwrap();
        let ids = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>());
        assert_eq!(services, ServicesTouched::from([("db".into(), None), ("s".into(), ids(&["s.1.1", "s.2.1"]))]));
        let since = t.after(0).unwrap();
        assert_eq!(since.services, BTreeSet::from(["db"]), "a spec's service by name");
        assert_eq!(since.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["s.1.1", "s.2.1"]);
        assert_eq!(t.services_after(1).unwrap().len(), 2);
        t.push(2, 3, Touch::All);
        assert!(t.services_after(1).is_none(), "entry 3 may have changed nodes");
        assert_eq!(t.services_after(3), Some(ServicesTouched::new()));
    }
}
