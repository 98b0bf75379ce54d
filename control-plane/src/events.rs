//! What changed in the cluster, as a stream of events for `berthctl events`:
//! a pure diff of two applied states. The state is the source of truth, so
//! the events need no log of their own; a watcher diffs each newly applied
//! state against the one it saw before. Several commits between two looks
//! fold into one event per thing that changed.
//!
//! ```text
//! service  create | update | remove | paused | completed | rolling_back | rollback_paused | rolled_back
//! node     register | ready | down | drain | activate | update | remove
//! task     create | assign | <its new state> | health | restart | stop | remove
//! ```

use std::collections::BTreeMap;

use berth_proto::model::{Availability, Desired, HealthState, NodeStatus, RolloutState, Task, TaskState};

use crate::state::State;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `service`, `node` or `task`.
    pub kind: &'static str,
    pub action: String,
    /// The service's or node's name, or the task's id.
    pub name: String,
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    fn new(kind: &'static str, action: impl Into<String>, name: &str) -> Self {
        Self { kind, action: action.into(), name: name.to_owned(), attributes: BTreeMap::new() }
    }

    fn with(mut self, key: &str, value: impl ToString) -> Self {
        let value = value.to_string();
        if !value.is_empty() {
            self.attributes.insert(key.to_owned(), value);
        }
        self
    }
}

/// Services first, then nodes, then tasks, each in name order.
pub fn diff(old: &State, new: &State) -> Vec<Event> {
    let mut out = Vec::new();
    for (name, svc) in &new.services {
        match old.services.get(name) {
            None => out.push(
                Event::new("service", "create", name)
                    .with("version", svc.version)
                    .with("image", &svc.spec.image)
                    .with("replicas", svc.spec.replicas),
            ),
            Some(before) if before.version != svc.version => out.push(
                Event::new("service", "update", name)
                    .with("version", svc.version)
                    .with("image", &svc.spec.image)
                    .with("replicas", svc.spec.replicas),
            ),
            Some(_) => {}
        }
        // A rollout's turns (its start is the update above).
        let before = old.services.get(name).and_then(|s| s.rollout.as_ref());
        if let Some(r) = svc.rollout.as_ref().filter(|r| Some(*r) != before && r.state != RolloutState::Updating) {
            out.push(
                Event::new("service", r.state.to_string(), name).with("version", r.version).with("message", &r.message),
            );
        }
    }
    for name in old.services.keys().filter(|n| !new.services.contains_key(*n)) {
        out.push(Event::new("service", "remove", name));
    }

    for (id, node) in &new.nodes {
        let named = |action: &str| Event::new("node", action, &node.name).with("id", id);
        match old.nodes.get(id) {
            None => out.push(named("register").with("address", &node.address)),
            Some(before) => {
                if before.status != node.status {
                    out.push(named(match node.status {
                        NodeStatus::Ready => "ready",
                        NodeStatus::Down => "down",
                    }));
                }
                if before.availability != node.availability {
                    out.push(named(match node.availability {
                        Availability::Active => "activate",
                        Availability::Drain => "drain",
                    }));
                }
                if (&before.name, &before.address, &before.labels, before.capacity)
                    != (&node.name, &node.address, &node.labels, node.capacity)
                {
                    out.push(named("update").with("address", &node.address));
                }
            }
        }
    }
    for (id, node) in old.nodes.iter().filter(|(id, _)| !new.nodes.contains_key(*id)) {
        out.push(Event::new("node", "remove", &node.name).with("id", id));
    }

    let node_name = |t: &Task| t.node.as_ref().map(|id| new.nodes.get(id).map_or(id.clone(), |n| n.name.clone()));
    for (id, t) in &new.tasks {
        let task = |action: &str| Event::new("task", action, id);
        let Some(before) = old.tasks.get(id) else {
            out.push(task("create").with("service", &t.service).with("image", &t.spec.image));
            if t.node.is_some() {
                out.push(task("assign").with("node", node_name(t).unwrap_or_default()));
            }
            continue;
        };
        if before.node.is_none() && t.node.is_some() {
            out.push(task("assign").with("node", node_name(t).unwrap_or_default()));
        }
        if before.desired == Desired::Running && t.desired == Desired::Shutdown {
            out.push(task("stop").with("reason", &t.message));
        }
        if before.state != t.state {
            let mut e = task(&t.state.to_string()).with("node", node_name(t).unwrap_or_default());
            if let Some(code) = t.exit_code.filter(|_| t.state != TaskState::Running) {
                e = e.with("exit_code", code);
            }
            if t.desired == Desired::Running {
                e = e.with("message", &t.message);
            }
            if let Some(address) = t.serving_address() {
                e = e.with("address", address);
            }
            out.push(e);
        }
        if before.health != t.health && t.state == TaskState::Running {
            if let Some(health) = t.health {
                let e = task("health").with("health", health).with("node", node_name(t).unwrap_or_default());
                let e = if health == HealthState::Unhealthy { e.with("message", &t.message) } else { e };
                out.push(match t.serving_address() {
                    Some(address) => e.with("address", address),
                    None => e,
                });
            }
        }
        if t.restarts > before.restarts {
            out.push(task("restart").with("restarts", t.restarts).with("node", node_name(t).unwrap_or_default()));
        }
    }
    for id in old.tasks.keys().filter(|id| !new.tasks.contains_key(*id)) {
        out.push(Event::new("task", "remove", id));
    }
    out
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{Node, Resources, ServiceSpec, TaskSpec, TaskState};

    use super::*;
    use crate::state::{apply, Command, TaskChange, TaskReport};
    use berth_proto::model::HealthState;

    fn spec(replicas: u32) -> ServiceSpec {
        ServiceSpec { image: "registry:5000/web:1".into(), ..crate::testing::spec("web", replicas) }
    }

    fn lines(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let attrs: Vec<String> = e.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{} {} {} {}", e.kind, e.action, e.name, attrs.join(",")).trim_end().to_owned()
            })
            .collect()
    }

    /// Applies `cmd` and returns the events it makes.
    fn step(s: &mut State, cmd: Command) -> Vec<String> {
        let before = s.clone();
        apply(s, &cmd);
        lines(&diff(&before, s))
    }

    #[test]
    fn each_change_is_one_event_and_nothing_is_silent() {
        let mut s = State::default();
        assert_eq!(
            step(&mut s, Command::CreateService(spec(1))),
            ["service create web image=registry:5000/web:1,replicas=1,version=1"]
        );
        let node = Node {
            id: "n1".into(),
            name: "alpha".into(),
            address: "198.18.0.2:7500".into(),
            labels: Default::default(),
            capacity: Resources { cpu_millis: 1000, memory_bytes: 1 << 30 },
            status: NodeStatus::Ready,
            availability: Availability::Active,
            subnet: None,
            overlay: None,
            reads: 0,
        };
        assert_eq!(
            step(&mut s, Command::RegisterNode(node.clone())),
            ["node register alpha address=198.18.0.2:7500,id=n1"]
        );

        let t = Task::new("web", 1, 1, 1, TaskSpec::from(&spec(1)));
        let changes =
            vec![TaskChange::Create(Box::new(t.clone())), TaskChange::Assign { id: t.id.clone(), node: "n1".into() }];
        assert_eq!(
            step(&mut s, Command::Reconcile { changes, at_ms: 1, rollouts: vec![] }),
            ["task create web.1.1 image=registry:5000/web:1,service=web", "task assign web.1.1 node=alpha"]
        );
        let report = |state, restarts, exit_code| Command::ReportTasks {
            node: "n1".into(),
            reports: vec![TaskReport {
                id: t.id.clone(),
                state,
                exit_code,
                restarts,
                message: String::new(),
                health: None,
            }],
            at_ms: 2,
        };
        let probed = |health, message: &str| Command::ReportTasks {
            node: "n1".into(),
            reports: vec![TaskReport {
                id: t.id.clone(),
                state: TaskState::Running,
                exit_code: None,
                restarts: 2,
                message: message.into(),
                health: Some(health),
            }],
            at_ms: 3,
        };
        // (An address from the node's subnet, as IPAM gives it on assignment.)
        s.tasks.get_mut(&t.id).unwrap().address = Some("198.19.1.2".parse().unwrap());
        assert_eq!(
            step(&mut s, report(TaskState::Running, 0, None)),
            ["task running web.1.1 address=198.19.1.2,node=alpha"],
            "where a running task answers"
        );
        assert_eq!(step(&mut s, report(TaskState::Running, 0, None)), Vec::<String>::new(), "no change, no event");
        assert_eq!(step(&mut s, report(TaskState::Running, 1, None)), ["task restart web.1.1 node=alpha,restarts=1"]);
        assert_eq!(step(&mut s, report(TaskState::Exited, 1, Some(3))), ["task exited web.1.1 exit_code=3,node=alpha"]);
        assert_eq!(
            step(&mut s, report(TaskState::Running, 2, None)),
            ["task running web.1.1 address=198.19.1.2,node=alpha", "task restart web.1.1 node=alpha,restarts=2"]
        );
        assert_eq!(step(&mut s, probed(HealthState::Starting, "")), ["task health web.1.1 health=starting,node=alpha"]);
        assert_eq!(s.tasks[&t.id].serving_address(), None, "a task not yet healthy does not answer");
        assert_eq!(
            step(&mut s, probed(HealthState::Healthy, "")),
            ["task health web.1.1 address=198.19.1.2,health=healthy,node=alpha"]
        );
        assert_eq!(
            step(&mut s, probed(HealthState::Unhealthy, "exit 1: no")),
            ["task health web.1.1 health=unhealthy,message=exit 1: no,node=alpha"]
        );
        step(&mut s, report(TaskState::Exited, 2, Some(143)));
        assert_eq!(s.tasks[&t.id].health, None, "only a running task has a health");
        step(&mut s, report(TaskState::Running, 2, None));

        assert_eq!(
            step(&mut s, Command::UpdateService(spec(2))),
            ["service update web image=registry:5000/web:1,replicas=2,version=2"]
        );
        assert_eq!(
            step(&mut s, Command::SetNodeStatus { id: "n1".into(), status: NodeStatus::Down }),
            ["node down alpha id=n1"]
        );
        assert_eq!(
            step(&mut s, Command::SetAvailability { id: "n1".into(), availability: Availability::Drain }),
            ["node drain alpha id=n1"]
        );
        assert_eq!(
            step(&mut s, Command::DeleteService { name: "web".into() }),
            ["service remove web", "task stop web.1.1 reason=service removed"]
        );
        assert_eq!(
            step(&mut s, Command::RemoveNode { id: "n1".into() }),
            ["node remove alpha id=n1", "task remove web.1.1"]
        );
    }
}
