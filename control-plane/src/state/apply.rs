//! `apply`: the state machine's transition function.

use std::collections::BTreeMap;

use berth_proto::model::{
    volume_name_ok, Desired, FileKind, InvalidField, NodeStatus, NodeVolume, Protocol, Resources, Rollout,
    RolloutState, Service, ServiceSpec, Task, TaskState, MAX_NODE_VOLUMES,
};

use super::{ipam, trust, Command, Outcome, Rejection, Response, RolloutChange, State, TaskChange};

/// The first of `spec`'s new dependencies (one its service has already is
/// left alone, so a dependency removed since does not stop a scale or a
/// rollback) that is not an existing service, or that waits, through
/// others, for `spec`'s service: a cycle would hold every service in it
/// forever.
fn dependency_problem(state: &State, spec: &ServiceSpec) -> Option<InvalidField> {
    let had = state.services.get(&spec.name).map(|s| &s.spec.overrides.options.depends_on);
    for (i, d) in spec.overrides.options.depends_on.iter().enumerate() {
        if had.is_some_and(|had| had.contains(d)) {
            continue;
        }
        let field = format!("depends_on[{i}].service");
        if !state.services.contains_key(&d.service) {
            return Some(InvalidField::new(field, &d.service, "an existing service (create it first)"));
        }
        let (mut seen, mut next) = (std::collections::BTreeSet::new(), vec![d.service.as_str()]);
        while let Some(name) = next.pop() {
            if name == spec.name {
                let expected = format!("a service that does not wait for {} in turn", spec.name);
                return Some(InvalidField::new(field, &d.service, expected));
            }
            if seen.insert(name) {
                let deps = state.services.get(name).map(|s| &s.spec.overrides.options.depends_on);
                next.extend(deps.into_iter().flatten().map(|d| d.service.as_str()));
            }
        }
    }
    None
}

/// A published port (per protocol) answers on every node, so only one
/// service may have it, and only one the hosts do not use themselves.
fn port_taken(state: &State, spec: &ServiceSpec) -> Option<Rejection> {
    let published = |s: &ServiceSpec| -> Vec<(u16, Protocol)> {
        s.ports.iter().filter_map(|p| Some((p.published?, p.protocol))).collect()
    };
    let mine = published(spec);
    // Most services publish nothing: no need to look at every other one
    // (this runs on every server for every write of a service).
    if mine.is_empty() {
        return None;
    }
    // The cluster's range, never 22 or 53, and never a port some node's
    // agent already uses: its API (TCP) or its WireGuard (UDP).
    let range = state.network.map(|n| n.published).unwrap_or_default();
    for &(port, protocol) in &mine {
        let why = if !range.contains(port) {
            Some(format!("outside the cluster's published port range {range} (--published-port-range)"))
        } else if port == 22 || port == 53 {
            Some("reserved for the hosts' ssh and DNS".to_owned())
        } else {
            state.nodes.values().find_map(|n| {
                let api = n.address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
                let wireguard = n.overlay.as_ref().and_then(|o| o.endpoint.rsplit_once(':')?.1.parse::<u16>().ok());
                match protocol {
                    Protocol::Tcp if api == Some(port) => Some(format!("node {}'s agent API", n.name)),
                    Protocol::Udp if wireguard == Some(port) => Some(format!("node {}'s WireGuard", n.name)),
                    _ => None,
                }
            })
        };
        if let Some(why) = why {
            return Some(Rejection::PortReserved { port, protocol, why });
        }
    }
    let others = state.services.values().filter(|s| s.spec.name != spec.name);
    others.into_iter().find_map(|other| {
        let (port, protocol) = published(&other.spec).into_iter().find(|p| mine.contains(p))?;
        Some(Rejection::PortTaken { port, protocol, service: other.spec.name.clone() })
    })
}

/// Applies one command. Deterministic: the same state and command give the
/// same result on every server. A rejected command leaves the state as it was.
pub fn apply(state: &mut State, cmd: &Command) -> Response {
    match cmd {
        Command::CreateService(spec) | Command::UpdateService(spec) | Command::ApplyService(spec) => {
            // Specs are validated at the API edge; checking again keeps a log
            // written by an older, laxer server from planting a bad spec.
            if let Err(e) = spec.validate() {
                return Response::Rejected(Rejection::Invalid(e));
            }
            if let Some(taken) = port_taken(state, spec) {
                return Response::Rejected(taken);
            }
            if let Some(missing) = super::files::missing(state, spec) {
                return Response::Rejected(Rejection::Invalid(missing));
            }
            if let Some(bad) = dependency_problem(state, spec) {
                return Response::Rejected(Rejection::Invalid(bad));
            }
            let existing = state.services.get_mut(&spec.name);
            match (cmd, existing) {
                (Command::CreateService(_), Some(_)) => Response::Rejected(Rejection::AlreadyExists(spec.name.clone())),
                (Command::UpdateService(_), None) => Response::Rejected(Rejection::NotFound(spec.name.clone())),
                // As Swarm: a service's mode is what it was made with.
                (_, Some(svc)) if svc.spec.mode != spec.mode => {
                    Response::Rejected(Rejection::Invalid(InvalidField::new(
                        "mode",
                        spec.mode,
                        format!(
                            "{}, as the service was created (remove it and create it again to change)",
                            svc.spec.mode
                        ),
                    )))
                }
                (_, Some(svc)) if svc.spec == *spec => {
                    Response::Service { service: svc.clone(), outcome: Outcome::Unchanged }
                }
                (_, Some(svc)) => {
                    let tasks_change = !svc.spec.same_tasks(spec);
                    // Back to the spec before the last change: a rollback,
                    // by its own config.
                    let back = svc.previous.as_ref().is_some_and(|p| p.same_tasks(spec));
                    let before = std::mem::replace(&mut svc.spec, spec.clone());
                    svc.version += 1;
                    if tasks_change {
                        svc.previous = Some(Box::new(before));
                        let state = if back { RolloutState::RollingBack } else { RolloutState::Updating };
                        svc.rollout = Some(Rollout { state, version: svc.version, message: String::new() });
                    }
                    let svc = svc.clone();
                    if tasks_change {
                        state.templates.insert(spec.name.clone(), svc.version);
                    }
                    Response::Service { service: svc, outcome: Outcome::Updated }
                }
                (_, None) => {
                    let svc = Service { spec: spec.clone(), version: 1, previous: None, rollout: None };
                    state.services.insert(spec.name.clone(), svc.clone());
                    state.templates.insert(spec.name.clone(), 1);
                    Response::Service { service: svc, outcome: Outcome::Created }
                }
            }
        }
        // An update of the spec as it is now, but for its replicas.
        Command::ScaleService { name, replicas } => match state.services.get(name) {
            Some(svc) => {
                let spec = ServiceSpec { replicas: *replicas, ..svc.spec.clone() };
                apply(state, &Command::UpdateService(spec))
            }
            None => Response::Rejected(Rejection::NotFound(name.clone())),
        },
        Command::DeleteService { name } => match state.services.remove(name) {
            Some(_) => {
                // Its tasks stop now, so a service created again under the
                // same name never adopts them.
                for t in state.tasks.values_mut().filter(|t| &t.service == name) {
                    stop(t, "service removed", None);
                }
                Response::Deleted
            }
            None => Response::Rejected(Rejection::NotFound(name.clone())),
        },
        Command::InitNetwork(net) => match state.network {
            Some(set) if set != *net => Response::Rejected(Rejection::NetworkSet(set.cidr, set.node_prefix)),
            Some(_) => Response::Reconciled { applied: 0 },
            None => {
                state.network = Some(*net);
                let ids: Vec<String> = state.nodes.keys().cloned().collect();
                for id in ids {
                    let subnet = ipam::free_subnet(state);
                    if let Some(n) = state.nodes.get_mut(&id) {
                        n.subnet = subnet;
                    }
                }
                Response::Reconciled { applied: 1 }
            }
        },
        Command::RegisterNode(node) => {
            let mut node = node.clone();
            node.subnet = None;
            if let Some(known) = state.nodes.get(&node.id) {
                node.availability = known.availability;
                node.subnet = known.subnet;
            }
            if node.subnet.is_none() {
                if let Some(net) = state.network {
                    match ipam::free_subnet(state) {
                        Some(s) => node.subnet = Some(s),
                        None => return Response::Rejected(Rejection::NoSubnet(net.cidr)),
                    }
                }
            }
            node.status = NodeStatus::Ready;
            state.nodes.insert(node.id.clone(), node.clone());
            Response::Node(node)
        }
        Command::SetNodeStatus { id, status } => match state.nodes.get_mut(id) {
            Some(node) => {
                node.status = *status;
                Response::Node(node.clone())
            }
            None => Response::Rejected(Rejection::NodeNotFound(id.clone())),
        },
        Command::SetAvailability { id, availability } => match state.nodes.get_mut(id) {
            Some(node) => {
                node.availability = *availability;
                Response::Node(node.clone())
            }
            None => Response::Rejected(Rejection::NodeNotFound(id.clone())),
        },
        Command::RemoveNode { id } => remove_node(state, id),
        Command::InitTrust { trust, admin } => trust::init(state, trust, admin),
        Command::RotateToken { role, secret } => trust::rotate_token(state, *role, secret),
        Command::SetAutolock { key, previous } => trust::set_autolock(state, key, previous),
        Command::AddUser(user) => trust::add_user(&mut state.users, user),
        Command::RemoveUser { name } => trust::remove_user(&mut state.users, name),
        Command::RotateCa(rotation) => trust::rotate_ca(state, rotation),
        Command::FinishRotation { root } => trust::finish_rotation(state, root),
        Command::Holds { holder, root } => trust::holds(state, holder, root),
        Command::RenewUser { name, fingerprint } => trust::renew_user(state, name, fingerprint),
        Command::ConfirmUser { name, fingerprint } => trust::confirm_user(state, name, fingerprint),
        Command::SetSecretsKey { key } => trust::set_secrets_key(state, key),
        Command::CreateSecret { name, file } => super::files::create(state, FileKind::Secret, name, file),
        Command::RemoveSecret { name } => super::files::remove(state, FileKind::Secret, name),
        Command::CreateConfig { name, file } => super::files::create(state, FileKind::Config, name, file),
        Command::RemoveConfig { name } => super::files::remove(state, FileKind::Config, name),
        Command::ReportVolumes { node, volumes } => {
            if let Err(e) = check_volumes(volumes) {
                return Response::Rejected(Rejection::Invalid(e));
            }
            match state.nodes.contains_key(node) {
                true => {
                    state.volumes.insert(node.clone(), volumes.clone());
                    Response::Done
                }
                false => Response::Rejected(Rejection::NodeNotFound(node.clone())),
            }
        }
        Command::ReportTasks { node, reports, at_ms } => {
            let mut applied = 0;
            for r in reports {
                if let Some(t) = state.tasks.get_mut(&r.id).filter(|t| t.node.as_ref() == Some(node)) {
                    // Restarts only add up: an agent that lost count (it
                    // restarted, or reports a task it stopped) does not reset it.
                    let restarts = t.restarts.max(r.restarts);
                    let health = r.health.filter(|_| r.state == TaskState::Running);
                    // A turn of health is a change of state too: a rollout's
                    // delay and monitor count from when a task began to serve.
                    if t.state != r.state || t.restarts != restarts || t.health != health {
                        t.since_ms = *at_ms;
                    }
                    t.state = r.state;
                    t.health = health;
                    t.exit_code = r.exit_code;
                    t.restarts = restarts;
                    if !r.message.is_empty() || r.state == TaskState::Running {
                        t.message = r.message.clone();
                    }
                    applied += 1;
                }
            }
            Response::Reconciled { applied }
        }
        Command::Reconcile { changes, at_ms, rollouts } => {
            let mut held = Held {
                resources: state.allocations().into_iter().map(|(node, (held, _))| (node, held)).collect(),
                addresses: ipam::Addresses::of(state),
            };
            let applied = changes.iter().filter(|c| apply_change(state, &mut held, c, *at_ms)).count();
            Response::Reconciled { applied: applied + rollouts.iter().filter(|r| set_rollout(state, r)).count() }
        }
    }
}

/// A rollout's new state, if the service still rolls out that version.
fn set_rollout(state: &mut State, change: &RolloutChange) -> bool {
    let Some(svc) = state.services.get_mut(&change.service) else { return false };
    if state.templates.get(&change.service).copied().unwrap_or(svc.version) != change.version {
        return false;
    }
    let rollout = Rollout { state: change.state, version: change.version, message: change.message.clone() };
    if svc.rollout.as_ref() == Some(&rollout) {
        return false;
    }
    svc.rollout = Some(rollout);
    true
}

/// A node's volume list: at most `MAX_NODE_VOLUMES`, each a valid name, once.
pub fn check_volumes(volumes: &[NodeVolume]) -> Result<(), InvalidField> {
    if volumes.len() > MAX_NODE_VOLUMES {
        let expected = format!("at most {MAX_NODE_VOLUMES} volumes on a node");
        return Err(InvalidField::new("volumes", format!("{} volumes", volumes.len()), expected));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        if !volume_name_ok(&v.name) || !seen.insert(&v.name) {
            return Err(InvalidField::new(format!("volumes[{i}].name"), &v.name, "a volume name, listed once"));
        }
    }
    Ok(())
}

fn remove_node(state: &mut State, id: &str) -> Response {
    let Some(node) = state.nodes.get(id) else {
        return Response::Rejected(Rejection::NodeNotFound(id.to_owned()));
    };
    let in_use = |why: &str| Response::Rejected(Rejection::NodeInUse { id: id.to_owned(), why: why.to_owned() });
    if node.schedulable() {
        return in_use("is ready and active: drain it first, or wait until it is down");
    }
    let on_node = |t: &Task| t.node.as_deref() == Some(id);
    if node.status == NodeStatus::Ready && state.tasks.values().any(|t| on_node(t) && t.desired == Desired::Running) {
        return in_use("still runs tasks; wait until they have moved");
    }
    // Forgetting an exclusive copy in its stop grace would free its slot.
    let stopping = |t: &Task| t.spec.overrides.options.exclusive() && !t.ended();
    if node.status == NodeStatus::Ready && state.tasks.values().any(|t| on_node(t) && stopping(t)) {
        return in_use("still stops a task with an exclusive volume; wait until it has stopped");
    }
    state.nodes.remove(id);
    state.removed_nodes.insert(id.to_owned());
    state.volumes.remove(id);
    state.tasks.retain(|_, t| !on_node(t));
    Response::Deleted
}

/// Desired state becomes shutdown; a task never placed is shut down at
/// once (at `at_ms`, when known).
fn stop(t: &mut Task, reason: &str, at_ms: Option<u64>) {
    if t.desired == Desired::Running {
        t.desired = Desired::Shutdown;
        t.message = reason.to_owned();
        if t.node.is_none() {
            t.state = TaskState::Shutdown;
            t.since_ms = at_ms.unwrap_or(t.since_ms);
        }
    }
}

/// What the nodes' tasks hold while a `Reconcile` is applied.
struct Held {
    resources: BTreeMap<String, Resources>,
    addresses: ipam::Addresses,
}

/// A new task, unless its id is taken or its service gone.
fn create(state: &mut State, task: Task, at_ms: u64) -> bool {
    if state.tasks.contains_key(&task.id) || !state.services.contains_key(&task.service) {
        return false;
    }
    let slot = format!("{}.{}", task.service, task.slot);
    let last = state.generations.entry(slot).or_default();
    *last = (*last).max(task.generation);
    state.tasks.insert(task.id.clone(), Task { since_ms: at_ms, ..task });
    true
}

/// A pending task placed on `node`, if it still fits what the node has
/// left, so that no sequence of commits can overcommit a node.
fn assign(state: &mut State, held: &mut Held, id: &str, node: &str, at_ms: u64) -> bool {
    let (Some(n), Some(t)) = (state.nodes.get(node), state.tasks.get(id)) else { return false };
    let need = t.spec.resources;
    let used = held.resources.get(node).copied().unwrap_or_default();
    // Checked: a sum past u64 does not fit (and must not wrap into fitting).
    let within = |used: u64, need: u64, capacity: u64| used.checked_add(need).is_some_and(|sum| sum <= capacity);
    let fits = within(used.cpu_millis, need.cpu_millis, n.capacity.cpu_millis)
        && within(used.memory_bytes, need.memory_bytes, n.capacity.memory_bytes);
    if !(n.schedulable() && fits && t.desired == Desired::Running && t.node.is_none()) {
        return false;
    }
    // A full subnet refuses it like a full node.
    let Ok(address) = held.addresses.take(n) else { return false };
    *held.resources.entry(node.to_owned()).or_default() += need;
    let Some(t) = state.tasks.get_mut(id) else { return false };
    t.node = Some(node.to_owned());
    t.address = address;
    t.state = TaskState::Assigned;
    t.since_ms = at_ms;
    t.message.clear();
    true
}

/// Applies one reconciler decision if it still makes sense; says whether it did.
fn apply_change(state: &mut State, held: &mut Held, change: &TaskChange, at_ms: u64) -> bool {
    match change {
        TaskChange::Create(task) => create(state, (**task).clone(), at_ms),
        TaskChange::New(new) => {
            let Some(task) = new.task(state) else { return false };
            let id = task.id.clone();
            // Made even if its node no longer takes it: it waits, pending,
            // for the next pass (as a `Create` whose `Assign` failed).
            let made = create(state, task, at_ms);
            if let Some(node) = new.node.as_ref().filter(|_| made) {
                assign(state, held, &id, node, at_ms);
            }
            made
        }
        TaskChange::Assign { id, node } => assign(state, held, id, node, at_ms),
        TaskChange::Unplaced { id, reason } => match state.tasks.get_mut(id) {
            Some(t) if t.node.is_none() && t.desired == Desired::Running => {
                t.message = reason.clone();
                true
            }
            _ => false,
        },
        TaskChange::Shutdown { id, reason } => match state.tasks.get_mut(id) {
            Some(t) if t.desired == Desired::Running => {
                stop(t, reason, Some(at_ms));
                true
            }
            _ => false,
        },
        TaskChange::Remove { id } => {
            let stopped = state.tasks.get(id).is_some_and(|t| t.desired == Desired::Shutdown);
            stopped && state.tasks.remove(id).is_some()
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::state::{NewTask, QueryReply};
    use berth_proto::model::{ServiceSpec, TaskSpec};

    use super::*;

    use crate::testing::spec;

    fn node(id: &str) -> berth_proto::model::Node {
        berth_proto::model::Node {
            id: id.into(),
            name: id.into(),
            address: "198.18.0.1:7500".into(),
            labels: Default::default(),
            capacity: Default::default(),
            status: NodeStatus::Down,
            availability: Default::default(),
            subnet: None,
            overlay: None,
            reads: 0,
        }
    }

    #[test]
    fn a_published_port_belongs_to_one_service() {
        use berth_proto::model::PortSpec;
        let with = |name: &str, published: u16, protocol: Protocol| ServiceSpec {
            ports: vec![PortSpec { published: Some(published), target: 80, protocol, name: None }],
            ..spec(name, 1)
        };
        let mut s = State::default();
        apply(&mut s, &Command::CreateService(with("web", 8080, Protocol::Tcp)));
        let before = s.clone();
        let taken = apply(&mut s, &Command::CreateService(with("api", 8080, Protocol::Tcp)));
        assert_eq!(
            taken,
            Response::Rejected(Rejection::PortTaken { port: 8080, protocol: Protocol::Tcp, service: "web".into() })
        );
        assert!(taken_message(&taken).contains("8080/tcp") && taken_message(&taken).contains("\"web\""));
        assert_eq!(s, before, "a rejected service changes nothing");
        // The other protocol, another port, and the owner itself are fine.
        assert!(matches!(
            apply(&mut s, &Command::CreateService(with("dns", 8080, Protocol::Udp))),
            Response::Service { .. }
        ));
        assert!(matches!(
            apply(&mut s, &Command::ApplyService(with("web", 8080, Protocol::Tcp))),
            Response::Service { .. }
        ));
        assert!(matches!(
            apply(&mut s, &Command::CreateService(with("api", 8081, Protocol::Tcp))),
            Response::Service { .. }
        ));
        // Moving onto a taken port is refused too.
        assert!(matches!(
            apply(&mut s, &Command::UpdateService(with("api", 8080, Protocol::Tcp))),
            Response::Rejected(_)
        ));
        apply(&mut s, &Command::DeleteService { name: "web".into() });
        assert!(matches!(
            apply(&mut s, &Command::UpdateService(with("api", 8080, Protocol::Tcp))),
            Response::Service { .. }
        ));
    }

    #[test]
    fn ports_the_hosts_use_or_outside_the_range_cannot_be_published() {
        use berth_proto::model::{NetworkConfig, Overlay, PortRange, PortSpec};
        let with = |published: u16, protocol: Protocol| ServiceSpec {
            ports: vec![PortSpec { published: Some(published), target: 80, protocol, name: None }],
            ..spec("web", 1)
        };
        let mut s = State::default();
        let mut net = NetworkConfig::new("198.19.0.0/16".parse().unwrap(), 24).unwrap();
        net.published = "1000-40000".parse().unwrap();
        apply(&mut s, &Command::InitNetwork(net));
        let overlay = Some(Overlay { public_key: "k".into(), endpoint: "198.18.0.1:31820".into() });
        apply(&mut s, &Command::RegisterNode(berth_proto::model::Node { overlay, ..node("n1") }));
        let refused = |port, protocol| match apply(&mut s.clone(), &Command::CreateService(with(port, protocol))) {
            Response::Rejected(r @ Rejection::PortReserved { .. }) => r.to_string(),
            other => format!("accepted: {other:?}"),
        };
        assert!(refused(80, Protocol::Tcp).contains("outside the cluster's published port range 1000-40000"));
        assert!(refused(40001, Protocol::Tcp).contains("range"));
        assert!(refused(7500, Protocol::Tcp).contains("node n1's agent API"), "{}", refused(7500, Protocol::Tcp));
        assert!(refused(31820, Protocol::Udp).contains("node n1's WireGuard"));
        // The same numbers on the other protocol are free.
        assert!(refused(7500, Protocol::Udp).starts_with("accepted"));
        assert!(refused(31820, Protocol::Tcp).starts_with("accepted"));
        // 22 and 53 even when a range takes them in.
        let mut wide = State::default();
        let mut all = net;
        all.published = PortRange { low: 1, high: 65535 };
        apply(&mut wide, &Command::InitNetwork(all));
        for (port, protocol) in [(22, Protocol::Tcp), (53, Protocol::Udp), (53, Protocol::Tcp)] {
            let r = apply(&mut wide, &Command::CreateService(with(port, protocol)));
            assert!(matches!(r, Response::Rejected(Rejection::PortReserved { .. })), "{port}: {r:?}");
        }
        assert!(matches!(apply(&mut wide, &Command::CreateService(with(80, Protocol::Tcp))), Response::Service { .. }));
        // A cluster recorded before the range existed reads the default.
        let old: NetworkConfig =
            serde_json::from_str(r#"{"cidr":{"network":"198.19.0.0","prefix":16},"node_prefix":24}"#).unwrap();
        assert_eq!(old.published, PortRange::DEFAULT);
    }

    fn taken_message(r: &Response) -> String {
        match r {
            Response::Rejected(r) => r.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn nodes_register_drain_and_leave_only_when_idle() {
        use berth_proto::model::Availability;
        let mut s = State::default();
        assert!(
            matches!(apply(&mut s, &Command::RegisterNode(node("n1"))), Response::Node(n) if n.status == NodeStatus::Ready)
        );
        let drain = Command::SetAvailability { id: "n1".into(), availability: Availability::Drain };
        apply(&mut s, &drain);
        // A restart re-registers: still drained.
        apply(&mut s, &Command::RegisterNode(node("n1")));
        assert_eq!(s.nodes["n1"].availability, Availability::Drain);

        apply(&mut s, &Command::CreateService(spec("web", 1)));
        let mut t = Task::new("web", 1, 1, 1, TaskSpec::default());
        t.node = Some("n1".into());
        s.tasks.insert(t.id.clone(), t);
        let r = apply(&mut s, &Command::RemoveNode { id: "n1".into() });
        assert!(matches!(r, Response::Rejected(Rejection::NodeInUse { .. })), "{r:?}");
        apply(&mut s, &Command::SetNodeStatus { id: "n1".into(), status: NodeStatus::Down });
        assert_eq!(apply(&mut s, &Command::RemoveNode { id: "n1".into() }), Response::Deleted);
        assert!(s.nodes.is_empty() && s.tasks.is_empty(), "its tasks went with it");
        assert!(s.removed_nodes.contains("n1"), "and its certificate is worth nothing from now on");
        assert!(!s.removed_nodes.contains("n2"));
        assert_eq!(
            apply(&mut s, &Command::RemoveNode { id: "n1".into() }),
            Response::Rejected(Rejection::NodeNotFound("n1".into()))
        );
    }

    #[test]
    fn nodes_get_subnets_once_the_network_is_set_and_free_them_when_removed() {
        use berth_proto::model::NetworkConfig;
        let mut s = State::default();
        apply(&mut s, &Command::RegisterNode(node("a")));
        assert_eq!(s.nodes["a"].subnet, None, "no network yet");
        let net = NetworkConfig::new("198.19.0.0/23".parse().unwrap(), 24).unwrap();
        apply(&mut s, &Command::InitNetwork(net));
        assert_eq!(s.nodes["a"].subnet.unwrap().to_string(), "198.19.0.0/24", "existing nodes get one");
        let other = NetworkConfig::new("198.19.0.0/16".parse().unwrap(), 24).unwrap();
        assert!(matches!(apply(&mut s, &Command::InitNetwork(other)), Response::Rejected(Rejection::NetworkSet(..))));
        apply(&mut s, &Command::RegisterNode(node("b")));
        assert_eq!(s.nodes["b"].subnet.unwrap().to_string(), "198.19.1.0/24");
        apply(&mut s, &Command::RegisterNode(node("a")));
        assert_eq!(s.nodes["a"].subnet.unwrap().to_string(), "198.19.0.0/24", "a node keeps its subnet");
        let r = apply(&mut s, &Command::RegisterNode(node("c")));
        assert!(matches!(r, Response::Rejected(Rejection::NoSubnet(_))), "{r:?}");
        assert!(!s.nodes.contains_key("c"), "a refused node is not recorded");
        apply(&mut s, &Command::SetNodeStatus { id: "a".into(), status: NodeStatus::Down });
        apply(&mut s, &Command::RemoveNode { id: "a".into() });
        apply(&mut s, &Command::RegisterNode(node("c")));
        assert_eq!(s.nodes["c"].subnet.unwrap().to_string(), "198.19.0.0/24", "a removed node's subnet is free again");
    }

    #[test]
    fn a_nodes_volumes_are_replaced_whole_shown_with_their_users_and_go_with_it() {
        let mut s = State::default();
        apply(&mut s, &Command::RegisterNode(node("n1")));
        let vol = |name: &str| NodeVolume { name: name.into(), created_at_ms: 5 };
        let report = |node: &str, volumes: Vec<NodeVolume>| Command::ReportVolumes { node: node.into(), volumes };
        assert!(matches!(apply(&mut s, &report("n9", vec![])), Response::Rejected(Rejection::NodeNotFound(_))));
        let bad = apply(&mut s, &report("n1", vec![vol("data"), vol("data")]));
        assert!(matches!(&bad, Response::Rejected(Rejection::Invalid(f)) if f.field == "volumes[1].name"), "{bad:?}");
        let bad = apply(&mut s, &report("n1", vec![vol("../x")]));
        assert!(matches!(bad, Response::Rejected(Rejection::Invalid(_))));
        assert!(s.volumes.is_empty(), "a rejected report changes nothing");
        assert_eq!(apply(&mut s, &report("n1", vec![vol("data-1"), vol("cache")])), Response::Done);
        // A task on n1 mounting its slot's volume uses it.
        apply(&mut s, &Command::CreateService(spec("db", 1)));
        let mut spec = TaskSpec::default();
        spec.overrides.options.mounts = vec![berth_proto::model::Mount {
            kind: berth_proto::model::MountKind::Volume,
            source: "data-{{.Task.Slot}}".into(),
            target: "/data".into(),
            readonly: false,
            pin: false,
            exclusive: false,
        }];
        let t = Task::new("db", 1, 1, 1, spec);
        let changes = vec![TaskChange::Create(Box::new(t.clone())), TaskChange::Assign { id: t.id, node: "n1".into() }];
        apply(&mut s, &Command::Reconcile { changes, at_ms: 1, rollouts: vec![] });
        let QueryReply::Volumes(listed) = super::super::query(&s, &super::super::Query::ListVolumes) else { panic!() };
        let seen: Vec<(&str, &str, Vec<String>)> =
            listed.iter().map(|v| (v.name.as_str(), v.node.as_str(), v.used_by.clone())).collect();
        assert_eq!(seen, [("cache", "n1", vec![]), ("data-1", "n1", vec!["db.1.1".to_owned()])]);
        apply(&mut s, &report("n1", vec![vol("cache")]));
        assert_eq!(s.volumes["n1"], [vol("cache")], "the whole list, replaced");
        apply(
            &mut s,
            &Command::Reconcile {
                changes: vec![TaskChange::Shutdown { id: "db.1.1".into(), reason: "x".into() }],
                at_ms: 2,
                rollouts: vec![],
            },
        );
        apply(&mut s, &Command::SetNodeStatus { id: "n1".into(), status: NodeStatus::Down });
        assert_eq!(apply(&mut s, &Command::RemoveNode { id: "n1".into() }), Response::Deleted);
        assert!(s.volumes.is_empty(), "a removed node's volumes are forgotten");
    }

    #[test]
    fn task_changes_apply_only_while_they_make_sense() {
        let mut s = State::default();
        apply(&mut s, &Command::CreateService(spec("web", 1)));
        apply(&mut s, &Command::RegisterNode(node("n1")));
        let t = Task::new("web", 1, 3, 1, TaskSpec::default());
        let changes = vec![
            TaskChange::Create(Box::new(t.clone())),
            TaskChange::Create(Box::new(t.clone())),
            TaskChange::Create(Box::new(Task::new("gone", 1, 1, 1, TaskSpec::default()))),
            TaskChange::Assign { id: t.id.clone(), node: "nowhere".into() },
            TaskChange::Assign { id: t.id.clone(), node: "n1".into() },
            TaskChange::Unplaced { id: t.id.clone(), reason: "late".into() },
            TaskChange::Remove { id: t.id.clone() },
        ];
        assert_eq!(
            apply(&mut s, &Command::Reconcile { changes, at_ms: 1, rollouts: vec![] }),
            Response::Reconciled { applied: 2 }
        );
        assert_eq!(s.tasks[&t.id].node.as_deref(), Some("n1"));
        assert_eq!(s.tasks[&t.id].state, TaskState::Assigned);
        assert_eq!(s.generations["web.1"], 3);
        let stop = vec![
            TaskChange::Shutdown { id: t.id.clone(), reason: "scaled down".into() },
            TaskChange::Remove { id: t.id.clone() },
        ];
        assert_eq!(
            apply(&mut s, &Command::Reconcile { changes: stop, at_ms: 1, rollouts: vec![] }),
            Response::Reconciled { applied: 2 }
        );
        assert!(s.tasks.is_empty());
        assert_eq!(s.generations["web.1"], 3, "generations outlive their tasks");
    }

    #[test]
    fn a_new_task_runs_its_services_spec_of_the_version_decided_and_is_placed_if_it_fits() {
        let mut s = State::default();
        apply(&mut s, &Command::CreateService(ServiceSpec { image: "busybox:2".into(), ..spec("web", 3) }));
        let small = berth_proto::model::Node { capacity: Resources { cpu_millis: 100, memory_bytes: 1 }, ..node("n1") };
        apply(&mut s, &Command::RegisterNode(small));
        let new = |slot, node: Option<&str>| {
            let node = node.map(str::to_owned);
            TaskChange::New(NewTask { service: "web".into(), slot, generation: 1, version: 1, pin: None, node })
        };
        let changes = vec![new(1, Some("n1")), new(2, None), new(1, Some("n1")), new(3, Some("nowhere"))];
        let entry = serde_json::to_vec(&changes[0]).unwrap();
        assert!(entry.len() < 120, "{}", String::from_utf8_lossy(&entry));
        assert_eq!(
            apply(&mut s, &Command::Reconcile { changes, at_ms: 7, rollouts: vec![] }),
            Response::Reconciled { applied: 3 },
            "the second web.1.1 is not made again"
        );
        let t = &s.tasks["web.1.1"];
        assert_eq!((t.node.as_deref(), t.state, t.since_ms), (Some("n1"), TaskState::Assigned, 7));
        assert_eq!((t.spec.image.as_str(), t.version), ("busybox:2", 1));
        assert_eq!((s.tasks["web.2.1"].node.as_deref(), s.tasks["web.2.1"].state), (None, TaskState::Pending));
        // Made, though its node is unknown: it waits for the next pass.
        assert_eq!(s.tasks["web.3.1"].node, None);
        assert_eq!(s.generations["web.1"], 1);

        // Decided for version 1, applied after an update: skipped, as
        // its expansion for the release before is dropped.
        apply(&mut s, &Command::UpdateService(ServiceSpec { image: "busybox:3".into(), ..spec("web", 3) }));
        let late = TaskChange::New(NewTask {
            service: "web".into(),
            slot: 2,
            generation: 2,
            version: 1,
            pin: None,
            node: Some("n1".into()),
        });
        assert!(super::super::expand(&s, vec![late.clone()]).is_empty());
        let r = apply(&mut s, &Command::Reconcile { changes: vec![late], at_ms: 8, rollouts: vec![] });
        assert_eq!(r, Response::Reconciled { applied: 0 });
        assert!(!s.tasks.contains_key("web.2.2"));
    }

    #[test]
    fn capacity_sums_that_would_overflow_do_not_fit() {
        let mut s = State::default();
        apply(&mut s, &Command::CreateService(spec("web", 2)));
        let huge = Resources { cpu_millis: 1, memory_bytes: u64::MAX - 10 };
        let n1 = berth_proto::model::Node { capacity: huge, ..node("n1") };
        apply(&mut s, &Command::RegisterNode(n1));
        let task = |slot, memory_bytes| {
            let resources = Resources { cpu_millis: 0, memory_bytes };
            Task::new("web", slot, 1, 1, TaskSpec { resources, ..TaskSpec::default() })
        };
        let (a, b) = (task(1, u64::MAX - 20), task(2, 100));
        let changes = vec![
            TaskChange::Create(Box::new(a.clone())),
            TaskChange::Create(Box::new(b.clone())),
            TaskChange::Assign { id: a.id.clone(), node: "n1".into() },
            // u64::MAX - 20 + 100 wraps to 79 without the check.
            TaskChange::Assign { id: b.id.clone(), node: "n1".into() },
        ];
        assert_eq!(
            apply(&mut s, &Command::Reconcile { changes, at_ms: 1, rollouts: vec![] }),
            Response::Reconciled { applied: 3 }
        );
        assert_eq!(s.tasks[&a.id].node.as_deref(), Some("n1"));
        assert_eq!(s.tasks[&b.id].node, None);
    }

    fn outcome(r: Response) -> (u64, Outcome) {
        match r {
            Response::Service { service, outcome } => (service.version, outcome),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_scale_changes_the_count_alone_and_keeps_an_update_made_meanwhile() {
        let mut s = State::default();
        apply(&mut s, &Command::CreateService(spec("web", 1)));
        // Another client changed the image after this one read the spec.
        apply(&mut s, &Command::UpdateService(ServiceSpec { image: "busybox:2".into(), ..spec("web", 1) }));
        let scale = |replicas| Command::ScaleService { name: "web".into(), replicas };
        assert_eq!(outcome(apply(&mut s, &scale(4))), (3, Outcome::Updated));
        let svc = &s.services["web"];
        assert_eq!((svc.spec.replicas, svc.spec.image.as_str()), (4, "busybox:2"));
        assert_eq!(s.templates["web"], 2, "a count is no new template: nothing rolls");
        assert_eq!(outcome(apply(&mut s, &scale(4))), (3, Outcome::Unchanged));
        let r = apply(&mut s, &Command::ScaleService { name: "api".into(), replicas: 1 });
        assert_eq!(r, Response::Rejected(Rejection::NotFound("api".into())));
        // Checked as any spec is: no count for a global service.
        apply(
            &mut s,
            &Command::CreateService(ServiceSpec { mode: berth_proto::model::Mode::Global, ..spec("all", 0) }),
        );
        let r = apply(&mut s, &Command::ScaleService { name: "all".into(), replicas: 2 });
        assert!(matches!(&r, Response::Rejected(Rejection::Invalid(e)) if e.field == "replicas"), "{r:?}");
        // The entry as the log carries it.
        let json = serde_json::to_string(&scale(2)).unwrap();
        assert_eq!(json, r#"{"ScaleService":{"name":"web","replicas":2}}"#);
    }

    #[test]
    fn create_update_delete() {
        let mut s = State::default();
        assert_eq!(outcome(apply(&mut s, &Command::CreateService(spec("web", 1)))), (1, Outcome::Created));
        assert_eq!(
            apply(&mut s, &Command::CreateService(spec("web", 2))),
            Response::Rejected(Rejection::AlreadyExists("web".into()))
        );
        assert_eq!(s.services["web"].spec.replicas, 1, "a rejected create changes nothing");
        assert_eq!(outcome(apply(&mut s, &Command::UpdateService(spec("web", 3)))), (2, Outcome::Updated));
        assert_eq!(outcome(apply(&mut s, &Command::UpdateService(spec("web", 3)))), (2, Outcome::Unchanged));
        assert_eq!(apply(&mut s, &Command::DeleteService { name: "web".into() }), Response::Deleted);
        assert!(s.services.is_empty());
        assert_eq!(
            apply(&mut s, &Command::DeleteService { name: "web".into() }),
            Response::Rejected(Rejection::NotFound("web".into()))
        );
        assert_eq!(
            apply(&mut s, &Command::UpdateService(spec("web", 1))),
            Response::Rejected(Rejection::NotFound("web".into()))
        );
    }

    #[test]
    fn apply_is_idempotent() {
        let mut s = State::default();
        assert_eq!(outcome(apply(&mut s, &Command::ApplyService(spec("db", 2)))), (1, Outcome::Created));
        let before = s.clone();
        assert_eq!(outcome(apply(&mut s, &Command::ApplyService(spec("db", 2)))), (1, Outcome::Unchanged));
        assert_eq!(s, before);
        assert_eq!(outcome(apply(&mut s, &Command::ApplyService(spec("db", 4)))), (2, Outcome::Updated));
    }

    #[test]
    fn invalid_spec_is_rejected_without_change() {
        let mut s = State::default();
        let r = apply(&mut s, &Command::CreateService(spec("Bad_Name", 1)));
        assert!(matches!(r, Response::Rejected(Rejection::Invalid(f)) if f.field == "name"));
        assert!(s.services.is_empty());
    }

    #[test]
    fn dependencies_must_exist_and_never_come_back_around() {
        use berth_proto::model::{Condition, Dependency};
        let with = |name: &str, deps: &[&str]| {
            let mut spec = spec(name, 1);
            spec.overrides.options.depends_on =
                deps.iter().map(|d| Dependency { service: (*d).into(), condition: Condition::Started }).collect();
            spec
        };
        let invalid = |r: Response| match r {
            Response::Rejected(Rejection::Invalid(f)) => (f.field, f.expected),
            other => panic!("{other:?}"),
        };
        let mut s = State::default();
        let (field, expected) = invalid(apply(&mut s, &Command::CreateService(with("shop_web", &["shop_db"]))));
        assert_eq!(
            (field.as_str(), expected.as_str()),
            ("depends_on[0].service", "an existing service (create it first)")
        );
        assert!(s.services.is_empty());
        apply(&mut s, &Command::CreateService(with("shop_db", &[])));
        apply(&mut s, &Command::CreateService(with("shop_cache", &["shop_db"])));
        assert_eq!(
            outcome(apply(&mut s, &Command::CreateService(with("shop_web", &["shop_cache"])))).1,
            Outcome::Created
        );
        // db -> web -> cache -> db would hold all three forever.
        let (field, expected) = invalid(apply(&mut s, &Command::UpdateService(with("shop_db", &["shop_web"]))));
        assert_eq!(field, "depends_on[0].service");
        assert!(expected.contains("does not wait for shop_db"), "{expected}");
        assert!(s.services["shop_db"].spec.overrides.options.depends_on.is_empty(), "nothing changed");
        // A dependency that went away does not stop the service changing otherwise.
        apply(&mut s, &Command::DeleteService { name: "shop_cache".into() });
        let mut scaled = with("shop_web", &["shop_cache"]);
        scaled.replicas = 3;
        assert_eq!(outcome(apply(&mut s, &Command::UpdateService(scaled))).1, Outcome::Updated);
    }
}
