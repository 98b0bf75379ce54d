//! Conversions of the agent protocol (agent.proto): what the task watch
//! carries to a node and what its agent reports back. Into the model with
//! `TryFrom`, naming the first bad field (`tasks[2].restart`); out of it
//! with `From`.

use crate::model::{
    validate_image, validate_service_name, AssignedTask, Assignment, Files, HealthState, InvalidField, NodeNetwork,
    NodeVolume, Overrides, Peer, PortSpec, Protocol, Removed, Replica, Resources, RestartPolicy, Seccomp,
    ServiceEndpoints, TaskReport, TaskSpec, TaskState, Userns,
};
use crate::pb::agent as pb;

/// `field` of the `i`th element of `list`, for an element's own error.
fn within(list: &str, i: usize, e: InvalidField) -> InvalidField {
    InvalidField { field: format!("{list}[{i}].{}", e.field), ..e }
}

impl TryFrom<pb::AssignedTasks> for Assignment {
    type Error = InvalidField;

    /// Fails only on the node's network; a bad task is refused, a bad peer
    /// or service skipped (see [`Assignment`]).
    fn try_from(p: pb::AssignedTasks) -> Result<Self, Self::Error> {
        let network = match (p.subnet.as_str(), p.cluster_cidr.as_str()) {
            ("", "") => None,
            (subnet, cluster) => {
                let cidr = |field: &str, v: &str| {
                    v.parse().map_err(|_| InvalidField::new(field, v, "an IPv4 network like 198.19.1.0/24"))
                };
                Some(NodeNetwork { subnet: cidr("subnet", subnet)?, cluster: cidr("cluster_cidr", cluster)? })
            }
        };
        let volumes = p.volumes_known.then(|| p.volumes.into_iter().collect());
        let mut a = Assignment { network, volumes, ..Assignment::default() };
        for (i, t) in p.tasks.into_iter().enumerate() {
            let id = t.id.clone();
            if check_task_id(&id).is_err() || a.tasks.contains_key(&id) || a.refused.contains_key(&id) {
                let expected = "SERVICE.SLOT.GENERATION, listed once";
                a.skipped.push(InvalidField::new(format!("tasks[{i}].id"), &id, expected));
                continue;
            }
            match AssignedTask::try_from(t) {
                Ok(task) => drop(a.tasks.insert(id, task)),
                Err(e) => drop(a.refused.insert(id, e)),
            }
        }
        for (i, peer) in p.peers.into_iter().enumerate() {
            match Peer::try_from(peer) {
                Ok(peer) => a.peers.push(peer),
                Err(e) => a.skipped.push(within("peers", i, e)),
            }
        }
        for (i, service) in p.services.into_iter().enumerate() {
            match ServiceEndpoints::try_from(service) {
                Ok(service) => a.services.push(service),
                Err(e) => a.skipped.push(within("services", i, e)),
            }
        }
        Ok(a)
    }
}

impl TryFrom<pb::AssignedTask> for AssignedTask {
    type Error = InvalidField;

    fn try_from(t: pb::AssignedTask) -> Result<Self, Self::Error> {
        check_task_id(&t.id)?;
        validate_image(&t.image)
            .map_err(|why| InvalidField::new("image", &t.image, format!("an image reference (it {why})")))?;
        if t.command.iter().any(|a| a.contains('\0')) {
            return Err(InvalidField::new("command", format!("{:?}", t.command), "arguments without NUL bytes"));
        }
        for (k, v) in &t.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(InvalidField::new(format!("env.{k}"), v, "NAME=VALUE without NUL, NAME without '='"));
            }
        }
        let restart = RestartPolicy::parse(&t.restart)
            .ok_or_else(|| InvalidField::new("restart", &t.restart, "one of always, on-failure, never"))?;
        let seccomp = Seccomp::from_wire("seccomp", &t.seccomp, &t.seccomp_profile)?;
        let userns = Userns::parse("userns", &t.userns)?;
        let overrides = Overrides::from_pb(t.overrides.unwrap_or_default())?;
        overrides.validate()?;
        let address = match t.address.as_str() {
            "" => None,
            a => Some(a.parse().map_err(|_| InvalidField::new("address", a, "an IPv4 address"))?),
        };
        Ok(Self {
            id: t.id,
            spec: TaskSpec {
                image: t.image,
                command: t.command,
                env: t.env.into_iter().collect(),
                resources: Resources { cpu_millis: t.cpu_millis, memory_bytes: t.memory_bytes },
                restart,
                pids_limit: Some(t.pids_limit).filter(|n| *n > 0),
                seccomp,
                userns,
                overrides: Box::new(overrides),
            },
            restarts: t.restarts,
            address,
            files: Files {
                secrets: t.secrets.into_iter().map(|f| (f.name, f.data)).collect(),
                configs: t.configs.into_iter().map(|f| (f.name, f.data)).collect(),
            },
        })
    }
}

/// A task id is `SERVICE.SLOT.GENERATION`: it names a container and a
/// network namespace on the node, so nothing else may pass.
fn check_task_id(id: &str) -> Result<(), InvalidField> {
    let mut parts = id.rsplitn(3, '.');
    let (generation, slot, service) = (parts.next(), parts.next(), parts.next());
    let number = |s: Option<&str>| s.is_some_and(|s| s.parse::<u32>().is_ok() && !s.starts_with('+'));
    let ok = number(generation) && number(slot) && service.is_some_and(|s| validate_service_name(s).is_ok());
    if ok {
        Ok(())
    } else {
        Err(InvalidField::new("id", id, "SERVICE.SLOT.GENERATION, such as web.1.1"))
    }
}

impl TryFrom<pb::Peer> for Peer {
    type Error = InvalidField;

    fn try_from(p: pb::Peer) -> Result<Self, Self::Error> {
        if p.node_id.is_empty() {
            return Err(InvalidField::new("node_id", "", "the peer's node id"));
        }
        let key_ok = p.public_key.len() == 44
            && p.public_key.ends_with('=')
            && p.public_key[..43].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
        if !key_ok {
            return Err(InvalidField::new(
                "public_key",
                &p.public_key,
                "a WireGuard public key (44 characters of base64)",
            ));
        }
        let endpoint =
            p.endpoint.parse().map_err(|_| InvalidField::new("endpoint", &p.endpoint, "IP:PORT on the underlay"))?;
        let subnet = p
            .subnet
            .parse()
            .map_err(|_| InvalidField::new("subnet", &p.subnet, "an IPv4 network like 198.19.1.0/24"))?;
        Ok(Self { node_id: p.node_id, public_key: p.public_key, endpoint, subnet })
    }
}

impl TryFrom<pb::ServiceEndpoints> for ServiceEndpoints {
    type Error = InvalidField;

    fn try_from(s: pb::ServiceEndpoints) -> Result<Self, Self::Error> {
        validate_service_name(&s.name)?;
        let ports = s
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| port(p).map_err(|e| within("ports", i, e)))
            .collect::<Result<_, _>>()?;
        let replicas: Vec<Replica> = s
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let address = e.address.parse().map_err(|_| InvalidField::new("address", &e.address, "an IP address"));
                Ok(Replica { task: e.task, slot: e.slot, address: address.map_err(|err| within("endpoints", i, err))? })
            })
            .collect::<Result<_, _>>()?;
        // A serving replica runs, whatever a server that does not tell says.
        let started = s.started || !replicas.is_empty();
        Ok(Self { name: s.name, ports, replicas, started })
    }
}

fn port(p: &pb::EndpointPort) -> Result<PortSpec, InvalidField> {
    let number = |field: &str, v: u32| {
        u16::try_from(v).ok().filter(|v| *v > 0).ok_or_else(|| InvalidField::new(field, v, "a port from 1 to 65535"))
    };
    let published = if p.published == 0 { None } else { Some(number("published", p.published)?) };
    let protocol =
        Protocol::parse(&p.protocol).ok_or_else(|| InvalidField::new("protocol", &p.protocol, "tcp or udp"))?;
    Ok(PortSpec {
        published,
        target: number("target", p.target)?,
        protocol,
        name: Some(p.name.clone()).filter(|n| !n.is_empty()),
    })
}

impl From<Assignment> for pb::AssignedTasks {
    fn from(a: Assignment) -> Self {
        let text = |c: Option<crate::model::Cidr>| c.map(|c| c.to_string()).unwrap_or_default();
        Self {
            tasks: a.tasks.into_values().map(Into::into).collect(),
            subnet: text(a.network.map(|n| n.subnet)),
            cluster_cidr: text(a.network.map(|n| n.cluster)),
            peers: a
                .peers
                .into_iter()
                .map(|p| pb::Peer {
                    node_id: p.node_id,
                    public_key: p.public_key,
                    endpoint: p.endpoint.to_string(),
                    subnet: p.subnet.to_string(),
                })
                .collect(),
            services: a.services.into_iter().map(Into::into).collect(),
            volumes_known: a.volumes.is_some(),
            volumes: a.volumes.unwrap_or_default().into_iter().collect(),
            revision: 0,
            delta: false,
            removed_tasks: vec![],
            removed_peers: vec![],
            removed_services: vec![],
            tasks_whole: false,
            shared: Default::default(),
        }
    }
}

impl pb::AssignedTasks {
    /// A delta message: `changed` and what is gone, as of `revision`.
    pub fn delta(changed: Assignment, mut removed: Removed, revision: u64) -> Self {
        let mut message = Self {
            revision,
            delta: true,
            removed_tasks: removed.tasks,
            removed_peers: removed.peers,
            removed_services: removed.services,
            tasks_whole: removed.tasks_whole,
            ..changed.into()
        };
        for s in &mut message.services {
            if let Some(gone) = removed.replicas.remove(&s.name) {
                s.partial = true;
                s.removed_endpoints = gone;
            }
        }
        message
    }

    /// Merges the message's shared part (`shared`) into it, leaving out
    /// `node`'s own peer, which the shared part lists with every other.
    pub fn merge_shared(&mut self, node: &str) -> Result<(), prost::DecodeError> {
        let shared = std::mem::take(&mut self.shared);
        if shared.is_empty() {
            return Ok(());
        }
        prost::Message::merge(self, shared)?;
        self.peers.retain(|p| p.node_id != node);
        self.removed_peers.retain(|p| p != node);
        Ok(())
    }

    /// Takes out the delta's removed lists (empty in a whole list),
    /// partial services' included.
    pub fn take_removed(&mut self) -> Removed {
        let replicas = self
            .services
            .iter_mut()
            .filter(|s| s.partial)
            .map(|s| (s.name.clone(), std::mem::take(&mut s.removed_endpoints)))
            .collect();
        Removed {
            tasks: std::mem::take(&mut self.removed_tasks),
            peers: std::mem::take(&mut self.removed_peers),
            services: std::mem::take(&mut self.removed_services),
            replicas,
            tasks_whole: std::mem::take(&mut self.tasks_whole),
        }
    }
}

impl From<AssignedTask> for pb::AssignedTask {
    fn from(t: AssignedTask) -> Self {
        let (seccomp, seccomp_profile) = t.spec.seccomp.to_wire();
        let overrides = Some(t.spec.overrides.to_pb());
        Self {
            id: t.id,
            image: t.spec.image,
            command: t.spec.command,
            env: t.spec.env.into_iter().collect(),
            cpu_millis: t.spec.resources.cpu_millis,
            memory_bytes: t.spec.resources.memory_bytes,
            restart: t.spec.restart.to_string(),
            restarts: t.restarts,
            address: t.address.map(|a| a.to_string()).unwrap_or_default(),
            pids_limit: t.spec.pids_limit.unwrap_or(0),
            seccomp,
            seccomp_profile,
            userns: t.spec.userns.to_wire(),
            overrides,
            secrets: t.files.secrets.into_iter().map(|(name, data)| pb::FileData { name, data }).collect(),
            configs: t.files.configs.into_iter().map(|(name, data)| pb::FileData { name, data }).collect(),
        }
    }
}

impl From<NodeVolume> for pb::NodeVolume {
    fn from(v: NodeVolume) -> Self {
        Self { name: v.name, created_at_ms: v.created_at_ms }
    }
}

impl From<ServiceEndpoints> for pb::ServiceEndpoints {
    fn from(s: ServiceEndpoints) -> Self {
        Self {
            name: s.name,
            ports: s
                .ports
                .into_iter()
                .map(|p| pb::EndpointPort {
                    published: p.published.map_or(0, u32::from),
                    target: p.target.into(),
                    protocol: p.protocol.to_string(),
                    name: p.name.unwrap_or_default(),
                })
                .collect(),
            started: s.started,
            partial: false,
            removed_endpoints: vec![],
            endpoints: s
                .replicas
                .into_iter()
                .map(|r| pb::Endpoint { task: r.task, slot: r.slot, address: r.address.to_string() })
                .collect(),
        }
    }
}

impl TryFrom<pb::TaskReport> for TaskReport {
    type Error = InvalidField;

    fn try_from(r: pb::TaskReport) -> Result<Self, Self::Error> {
        let state = TaskState::parse(&r.state)
            .filter(|s| s.reported())
            .ok_or_else(|| InvalidField::new("state", &r.state, "assigned, running, exited, failed or shutdown"))?;
        Ok(Self {
            id: r.id,
            state,
            exit_code: r.has_exit_code.then_some(r.exit_code),
            restarts: r.restarts,
            message: r.message,
            // Only a running task has a health to speak of.
            health: match (state, r.health.as_str()) {
                (_, "") => None,
                (TaskState::Running, h) => Some(
                    HealthState::parse(h)
                        .ok_or_else(|| InvalidField::new("health", h, "starting, healthy, unhealthy or empty"))?,
                ),
                (_, h) => return Err(InvalidField::new("health", h, "empty unless the task is running")),
            },
        })
    }
}

impl From<TaskReport> for pb::TaskReport {
    fn from(r: TaskReport) -> Self {
        Self {
            id: r.id,
            state: r.state.to_string(),
            has_exit_code: r.exit_code.is_some(),
            exit_code: r.exit_code.unwrap_or(0),
            restarts: r.restarts,
            message: r.message,
            health: r.health.map(|h| h.to_string()).unwrap_or_default(),
        }
    }
}

impl pb::HeartbeatReply {
    /// The longest period between heartbeats a server may ask for: past
    /// it, the node keeps to this (a lease or a failover is never that
    /// patient).
    pub const MAX_BEAT: std::time::Duration = std::time::Duration::from_secs(60);

    /// How often to beat: `own`, or the longer period the leader asks
    /// (`beat_ms`, 0: none asked), at most `MAX_BEAT`.
    pub fn period(&self, own: std::time::Duration) -> std::time::Duration {
        own.max(std::time::Duration::from_millis(self.beat_ms).min(Self::MAX_BEAT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_beats_at_its_own_period_or_the_longer_one_asked_never_past_a_minute() {
        let s = std::time::Duration::from_secs;
        let asked = |beat_ms| pb::HeartbeatReply { beat_ms, ..Default::default() };
        assert_eq!(asked(0).period(s(1)), s(1), "nothing asked");
        assert_eq!(asked(500).period(s(1)), s(1), "never faster than its own");
        assert_eq!(asked(5_000).period(s(1)), s(5));
        assert_eq!(asked(u64::MAX).period(s(1)), pb::HeartbeatReply::MAX_BEAT);
    }
    use crate::model::{Health, Probe};

    const KEY: &str = "qnvDeyTcnW2qQyOLzmmH+X5TI8tSrZwNzGnE4ujCz1o=";

    fn wire() -> pb::AssignedTasks {
        pb::AssignedTasks {
            tasks: vec![pb::AssignedTask {
                id: "web.1.2".into(),
                image: "registry:5000/web:1".into(),
                command: vec!["serve".into()],
                env: [("A".to_owned(), "b".to_owned())].into(),
                cpu_millis: 500,
                memory_bytes: 1 << 20,
                restart: "on-failure".into(),
                restarts: 3,
                address: "198.19.1.2".into(),
                pids_limit: 128,
                seccomp: "unconfined".into(),
                seccomp_profile: String::new(),
                userns: "auto".into(),
                overrides: Some(crate::pb::cluster::Overrides {
                    set_entrypoint: true,
                    entrypoint: vec![],
                    user: "www".into(),
                    workdir: "/srv".into(),
                    hostname: "web".into(),
                    read_only: true,
                    cap_add: vec!["NET_ADMIN".into()],
                    cap_drop: vec!["ALL".into()],
                    stop_signal: "SIGINT".into(),
                    stop_grace_ms: Some(2500),
                    health: Some(crate::pb::cluster::HealthCheck {
                        probe: Some(crate::pb::cluster::health_check::Probe::Tcp(crate::pb::cluster::TcpProbe {
                            port: 80,
                        })),
                        retries: Some(1),
                        ..Default::default()
                    }),
                    options: None,
                    init: true,
                }),
                secrets: vec![pb::FileData { name: "db".into(), data: b"hunter2".to_vec() }],
                configs: vec![],
            }],
            subnet: "198.19.1.0/24".into(),
            cluster_cidr: "198.19.0.0/16".into(),
            peers: vec![pb::Peer {
                node_id: "n2".into(),
                public_key: KEY.into(),
                endpoint: "198.18.0.2:51820".into(),
                subnet: "198.19.2.0/24".into(),
            }],
            services: vec![pb::ServiceEndpoints {
                name: "web".into(),
                ports: vec![pb::EndpointPort {
                    published: 8080,
                    target: 80,
                    protocol: "udp".into(),
                    name: "dns".into(),
                }],
                endpoints: vec![pb::Endpoint { task: "web.1.2".into(), slot: 1, address: "198.19.1.2".into() }],
                started: true,
                ..Default::default()
            }],
            volumes_known: true,
            volumes: vec!["data".into()],
            ..Default::default()
        }
    }

    /// What became of the message: the field of the first task refused,
    /// else of the first element skipped, else of the error.
    fn field(p: pb::AssignedTasks) -> String {
        match Assignment::try_from(p) {
            Err(e) => e.field,
            Ok(a) => match (a.refused.values().next(), a.skipped.first()) {
                (Some(refused), _) => format!("tasks[0].{}", refused.field),
                (None, Some(skipped)) => skipped.field.clone(),
                (None, None) => panic!("nothing was refused"),
            },
        }
    }

    #[test]
    fn an_assignment_round_trips() {
        let a = Assignment::try_from(wire()).unwrap();
        let t = &a.tasks["web.1.2"];
        assert_eq!(
            (t.spec.restart, t.restarts, t.address),
            (RestartPolicy::OnFailure, 3, Some([198, 19, 1, 2].into()))
        );
        assert_eq!(a.network.unwrap().subnet.to_string(), "198.19.1.0/24");
        assert_eq!(a.services[0].ports[0].protocol, Protocol::Udp);
        assert_eq!(a.volumes, Some(["data".to_owned()].into()));
        assert_eq!(t.files.get(crate::model::FileKind::Secret, "db"), Some(&b"hunter2"[..]));
        assert!(a.refused.is_empty() && a.skipped.is_empty());
        let cleared = Overrides {
            entrypoint: Some(vec![]),
            user: Some("www".into()),
            workdir: Some("/srv".into()),
            hostname: Some("web".into()),
            read_only: true,
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["ALL".into()],
            stop_signal: Some("SIGINT".into()),
            stop_grace_ms: Some(2500),
            health: Health { probe: Some(Probe::Tcp { port: 80 }), retries: Some(1), ..Health::default() },
            options: Default::default(),
            init: true,
        };
        assert_eq!(*t.spec.overrides, cleared, "an entrypoint set empty stays set");
        assert_eq!(pb::AssignedTasks::from(a.clone()), wire());
        let empty = Assignment::try_from(pb::AssignedTasks::default()).unwrap();
        assert_eq!(empty, Assignment::default(), "no network yet, no tasks");
    }

    #[test]
    fn every_bad_field_is_named_and_nothing_falls_back_to_a_default() {
        let mut cases: Vec<(pb::AssignedTasks, &str)> = Vec::new();
        let mut task = |f: &dyn Fn(&mut pb::AssignedTask), name| {
            let mut w = wire();
            f(&mut w.tasks[0]);
            cases.push((w, name));
        };
        task(&|t| t.restart = "sometimes".into(), "tasks[0].restart");
        task(&|t| t.id = "../etc".into(), "tasks[0].id");
        task(&|t| t.id = "web.1".into(), "tasks[0].id");
        task(&|t| t.id = "Web.1.1".into(), "tasks[0].id");
        task(&|t| t.image = String::new(), "tasks[0].image");
        task(&|t| t.address = "198.19.1".into(), "tasks[0].address");
        task(&|t| t.command = vec!["a\0b".into()], "tasks[0].command");
        task(&|t| t.env = [("A=B".to_owned(), "c".to_owned())].into(), "tasks[0].env.A=B");
        task(&|t| t.overrides.get_or_insert_default().user = "a b".into(), "tasks[0].user");
        task(&|t| t.overrides.get_or_insert_default().workdir = "srv".into(), "tasks[0].workdir");
        task(&|t| t.overrides.get_or_insert_default().cap_add = vec!["FLY".into()], "tasks[0].cap_add[0]");
        task(&|t| t.overrides.get_or_insert_default().hostname = "a_b".into(), "tasks[0].hostname");
        let mut twice = wire();
        twice.tasks.push(twice.tasks[0].clone());
        cases.push((twice, "tasks[1].id"));
        cases.push((pb::AssignedTasks { subnet: "nope".into(), ..wire() }, "subnet"));
        cases.push((pb::AssignedTasks { cluster_cidr: String::new(), ..wire() }, "cluster_cidr"));
        let mut peer = wire();
        peer.peers[0].public_key = "short".into();
        cases.push((peer.clone(), "peers[0].public_key"));
        peer = wire();
        peer.peers[0].endpoint = "198.18.0.2".into();
        cases.push((peer, "peers[0].endpoint"));
        let mut service = wire();
        service.services[0].ports[0].protocol = "sctp".into();
        cases.push((service.clone(), "services[0].ports[0].protocol"));
        service = wire();
        service.services[0].ports[0].target = 70000;
        cases.push((service.clone(), "services[0].ports[0].target"));
        service = wire();
        service.services[0].endpoints[0].address = "not an address".into();
        cases.push((service, "services[0].endpoints[0].address"));
        for (bad, name) in cases {
            assert_eq!(field(bad), name);
        }
    }

    #[test]
    fn one_bad_element_costs_only_itself() {
        let mut w = wire();
        let mut odd = w.tasks[0].clone();
        (odd.id, odd.restart) = ("api.1.1".into(), "sometimes".into());
        w.tasks.push(odd);
        w.services.push(pb::ServiceEndpoints { name: "Bad Name".into(), ..Default::default() });
        let a = Assignment::try_from(w).unwrap();
        assert_eq!(a.tasks.keys().collect::<Vec<_>>(), ["web.1.2"]);
        assert_eq!(a.refused["api.1.1"].field, "restart");
        assert_eq!((a.services.len(), a.skipped.len(), a.peers.len()), (1, 1, 1));
        assert_eq!(a.skipped[0].field, "services[1].name");
    }

    #[test]
    fn a_partial_service_patches_the_replicas_it_names() {
        let mut whole = wire();
        let endpoint =
            |task: &str, slot, address: &str| pb::Endpoint { task: task.into(), slot, address: address.into() };
        whole.services[0].endpoints.push(endpoint("web.2.1", 2, "198.19.1.3"));
        whole.services[0].endpoints.push(endpoint("web.3.1", 3, "198.19.1.4"));
        let mut agent = Assignment::try_from(whole).unwrap();
        // web.2.1 went, web.3.1 moved, web.2.2 came; "db" is a service this
        // agent never had, and a bad partial one is skipped alone.
        let web = pb::ServiceEndpoints {
            name: "web".into(),
            endpoints: vec![endpoint("web.3.1", 3, "198.19.2.9"), endpoint("web.2.2", 2, "198.19.1.5")],
            started: true,
            partial: true,
            removed_endpoints: vec!["web.2.1".into()],
            ..Default::default()
        };
        let db = pb::ServiceEndpoints { name: "db".into(), partial: true, started: true, ..Default::default() };
        let bad = pb::ServiceEndpoints { name: "Bad".into(), partial: true, ..Default::default() };
        let mut message = pb::AssignedTasks { services: vec![web, db, bad], ..wire() };
        message.tasks.clear();
        let removed = message.take_removed();
        assert_eq!(removed.replicas.keys().collect::<Vec<_>>(), ["Bad", "db", "web"]);
        agent.apply(Assignment::try_from(message).unwrap(), removed);
        let replicas: Vec<(&str, String)> =
            agent.services[1].replicas.iter().map(|r| (r.task.as_str(), r.address.to_string())).collect();
        assert_eq!(
            replicas,
            [("web.1.2", "198.19.1.2".into()), ("web.2.2", "198.19.1.5".into()), ("web.3.1", "198.19.2.9".into())],
            "by slot, web.2.1 gone, web.3.1 moved"
        );
        assert!(agent.services[1].ports.is_empty(), "the part's ports replace the service's");
        assert_eq!(agent.services[0].name, "db", "a service it never had is taken as it comes, in order");
        assert_eq!(agent.services.len(), 2);
    }

    /// A keepalive (an empty delta with the same network and volumes)
    /// has no news; a task, a removal, a peer or a network change has.
    #[test]
    fn only_a_delta_that_changes_something_is_news() {
        let current = Assignment::try_from(wire()).unwrap();
        let empty = || pb::AssignedTasks { tasks: vec![], peers: vec![], services: vec![], delta: true, ..wire() };
        let read = |mut m: pb::AssignedTasks| {
            let removed = m.take_removed();
            (Assignment::try_from(m).unwrap(), removed)
        };
        let news = |m| {
            let (changed, removed) = read(m);
            changed.news_for(&removed, &current)
        };
        assert!(!news(empty()), "a keepalive");
        assert!(news(pb::AssignedTasks { tasks: wire().tasks, ..empty() }));
        assert!(news(pb::AssignedTasks { peers: wire().peers, ..empty() }));
        assert!(news(pb::AssignedTasks { removed_tasks: vec!["web.1.2".into()], ..empty() }));
        assert!(news(pb::AssignedTasks { subnet: "198.19.9.0/24".into(), ..empty() }));
    }

    /// A message with its shared part as bytes reads as the one with it
    /// copied in, less the node's own peer (the shared part lists it).
    #[test]
    fn a_shared_part_merges_in_without_the_nodes_own_peer() {
        let whole = wire();
        let mut own = pb::AssignedTasks { peers: vec![], services: vec![], ..whole.clone() };
        let me = pb::Peer { node_id: "n1".into(), ..whole.peers[0].clone() };
        let shared = pb::AssignedTasks {
            peers: vec![me, whole.peers[0].clone()],
            services: whole.services.clone(),
            removed_peers: vec!["n1".into(), "n3".into()],
            ..Default::default()
        };
        own.shared = prost::Message::encode_to_vec(&shared).into();
        own.merge_shared("n1").unwrap();
        assert_eq!(own, pb::AssignedTasks { removed_peers: vec!["n3".into()], ..whole.clone() });
        // Nothing shared: unchanged; garbage: an error, not a panic.
        let mut plain = whole.clone();
        plain.merge_shared("n1").unwrap();
        assert_eq!(plain, whole);
        let mut garbage = pb::AssignedTasks { shared: vec![0x0a, 0xff].into(), ..Default::default() };
        assert!(garbage.merge_shared("n1").is_err());
    }

    #[test]
    fn reports_carry_only_what_an_agent_can_see() {
        let report = TaskReport {
            id: "web.1.1".into(),
            state: TaskState::Exited,
            exit_code: Some(3),
            restarts: 2,
            message: "x".into(),
            health: None,
        };
        assert_eq!(TaskReport::try_from(pb::TaskReport::from(report.clone())).unwrap(), report);
        let healthy = TaskReport { state: TaskState::Running, health: Some(HealthState::Unhealthy), ..report.clone() };
        assert_eq!(TaskReport::try_from(pb::TaskReport::from(healthy.clone())).unwrap(), healthy);
        for bad in ["pending", "", "RUNNING"] {
            let p = pb::TaskReport { state: bad.into(), ..Default::default() };
            assert_eq!(TaskReport::try_from(p).unwrap_err().field, "state", "{bad:?}");
        }
        for (state, health) in [("running", "sick"), ("exited", "healthy")] {
            let p = pb::TaskReport { state: state.into(), health: health.into(), ..Default::default() };
            assert_eq!(TaskReport::try_from(p).unwrap_err().field, "health", "{state} {health}");
        }
    }
}
