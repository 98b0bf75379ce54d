//! The `Agent` gRPC service that berth-agents call: registration,
//! heartbeats, the watch of a node's tasks and reports of what they do.
//! Any server answers; heartbeats go on to the leader, which keeps them in
//! memory (see `liveness`); watches are served from the answering server's
//! applied state; reports are written through the leader as one command.

use std::sync::Arc;

use berth_proto::model::{validate_name, Availability, Node as NodeRecord, NodeStatus, NodeVolume, Overlay, Resources};
use berth_proto::pb::agent::agent_server::Agent;
use berth_proto::pb::agent::*;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth;
use crate::node::{LeaderOp, LeaderReply, Node};
use crate::state::{now_ms, Command, Response as Applied, TaskReport as Report};

/// The most a node may offer: a million CPUs' worth of millis, and 1 PiB.
const MAX_CPU_MILLIS: u64 = 1_000_000_000;
const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Labels on one node.
const MAX_LABELS: usize = 64;

#[derive(Debug, Clone)]
pub struct AgentApi {
    pub node: Arc<Node>,
    /// What the watches send (see `publish` and `watch`).
    pub watches: super::watch::Watches,
    /// The cluster's level, shared with the Cluster API's.
    pub levels: super::levels::Levels,
}

/// Checks a registration and turns it into the node to record; a node
/// without an id gets a new one.
pub fn node_from(req: RegisterRequest) -> Result<NodeRecord, Status> {
    let bad = |field: &str, value: &dyn std::fmt::Display, expected: &str| {
        Status::invalid_argument(format!("{field}: {:?} is not valid: expected {expected}", value.to_string()))
    };
    validate_name(&req.name).map_err(|e| Status::invalid_argument(format!("node {e}")))?;
    if req.advertise_address.is_empty()
        || req.advertise_address.len() > 255
        || req.advertise_address.contains(char::is_whitespace)
    {
        return Err(bad("advertise_address", &req.advertise_address, "host:port"));
    }
    let capacity = req.capacity.unwrap_or_default();
    if capacity.cpu_millis == 0 || capacity.memory_bytes == 0 {
        return Err(bad("capacity", &format!("{capacity:?}"), "some CPU and memory"));
    }
    // Sums of capacities must never overflow: no host has a million CPUs
    // or an exbibyte of memory.
    if capacity.cpu_millis > MAX_CPU_MILLIS || capacity.memory_bytes > MAX_MEMORY_BYTES {
        let expected = format!("at most {MAX_CPU_MILLIS} CPU millis and {MAX_MEMORY_BYTES} bytes of memory");
        return Err(bad("capacity", &format!("{capacity:?}"), &expected));
    }
    if req.labels.len() > MAX_LABELS {
        return Err(bad("labels", &format!("{} labels", req.labels.len()), &format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in &req.labels {
        if k.len() > 253 || v.len() > 253 {
            let key: String = k.chars().take(64).collect();
            return Err(bad(
                &format!("labels.{key}"),
                &format!("{} bytes", k.len() + v.len()),
                "a key and a value of at most 253 bytes each",
            ));
        }
        if k.is_empty() || k.contains(['=', '!', ' ']) || v.contains(['=', '!', ' ']) {
            return Err(bad(&format!("labels.{k}"), v, "KEY=VALUE without spaces, '=' or '!' in either"));
        }
    }
    let overlay = match (req.wireguard_public_key.as_str(), req.wireguard_port) {
        ("", 0) => None,
        (key, port) => {
            let key_ok = key.len() == 44
                && key.ends_with('=')
                && key[..43].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
            if !key_ok {
                return Err(bad("wireguard_public_key", &key, "a WireGuard public key (44 characters of base64)"));
            }
            let port = u16::try_from(port).ok().filter(|p| *p > 0);
            let port = port.ok_or_else(|| bad("wireguard_port", &req.wireguard_port, "a UDP port from 1 to 65535"))?;
            let ip = req.advertise_address.rsplit_once(':').and_then(|(h, _)| h.parse::<std::net::Ipv4Addr>().ok());
            let ip = ip.ok_or_else(|| {
                bad(
                    "advertise_address",
                    &req.advertise_address,
                    "an IPv4 address and port when the node has an overlay",
                )
            })?;
            Some(Overlay { public_key: key.to_owned(), endpoint: format!("{ip}:{port}") })
        }
    };
    let id = if req.node_id.is_empty() {
        format!("{:016x}", rand::random::<u64>())
    } else if req.node_id.len() <= 64 && req.node_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        req.node_id
    } else {
        return Err(bad("node_id", &req.node_id, "the id this cluster gave the node"));
    };
    Ok(NodeRecord {
        id,
        name: req.name,
        address: req.advertise_address,
        labels: req.labels.into_iter().collect(),
        capacity: Resources { cpu_millis: capacity.cpu_millis, memory_bytes: capacity.memory_bytes },
        status: NodeStatus::Ready,
        availability: Availability::Active,
        subnet: None,
        overlay,
        reads: req.reads,
    })
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let JoinRequest { token, csr, role } = req.into_inner();
        // A malformed token costs nothing more: no leader, no read barrier.
        token.parse::<berth_proto::pki::JoinToken>().map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(self.node.certificate(LeaderOp::Admit { token, csr, role }).await?.into()))
    }

    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterReply>, Status> {
        // The node is who its certificate names: an empty id means "that one".
        let me = auth::caller(&req)?.name;
        let requested = if req.get_ref().node_id.is_empty() { me.clone() } else { req.get_ref().node_id.clone() };
        auth::node(&self.node, &req, &requested)?;
        let mut req = req.into_inner();
        req.node_id = me;
        let record = node_from(req)?;
        let taken = |n: &NodeRecord| n.name == record.name && n.id != record.id;
        let clash = self.node.applied.read().ok().and_then(|a| a.state.nodes.values().find(|n| taken(n)).cloned());
        if let Some(other) = clash.filter(|n| n.status == NodeStatus::Ready) {
            return Err(Status::already_exists(format!(
                "a ready node named {:?} exists (id {}); choose another --name, or remove that node once it is down",
                other.name, other.id
            )));
        }
        match self.node.write(Command::RegisterNode(record)).await? {
            Applied::Node(n) => {
                // A fresh registration counts as a heartbeat.
                let _ = self.node.run(LeaderOp::Heartbeat { node: n.id.clone(), lease: false }).await;
                Ok(Response::new(RegisterReply { node_id: n.id }))
            }
            Applied::Rejected(r) => Err(r.into()),
            other => Err(Status::internal(format!("unexpected state machine reply {other:?}"))),
        }
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        auth::node(&self.node, &req, &req.get_ref().node_id)?;
        self.node.stats.heartbeats.inc();
        let HeartbeatRequest { node_id, root } = req.into_inner();
        let (lease_ms, exclusive, beat_ms) =
            match self.node.run(LeaderOp::Heartbeat { node: node_id.clone(), lease: true }).await? {
                LeaderReply::Lease { ms, exclusive, beat_ms } => (ms, exclusive, beat_ms),
                _ => (0, vec![], 0),
            };
        // The roots this server's state trusts: a node holding others renews.
        // During a rotation, which root the node's certificate is from (as
        // the node has saved it) is recorded when it changes.
        let view = self.node.beat_view();
        if view.rotating && !root.is_empty() {
            let holder = format!("node/{node_id}");
            let behind = self
                .node
                .applied
                .read()
                .is_ok_and(|a| a.state.trust.as_ref().is_some_and(|t| t.holders.get(&holder) != Some(&root)));
            if behind {
                self.node.write(Command::Holds { holder, root }).await?;
            }
        }
        let roots_digest = view.roots_digest.clone();
        Ok(Response::new(HeartbeatReply { roots_digest, lease_ms, exclusive, beat_ms }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<JoinReply>, Status> {
        let me = auth::caller(&req)?;
        let csr = req.into_inner().csr;
        let op = LeaderOp::Renew { name: me.name, role: me.role.to_string(), csr };
        Ok(Response::new(self.node.certificate(op).await?.into()))
    }

    type WatchTasksStream = ReceiverStream<Result<AssignedTasks, Status>>;

    async fn watch_tasks(&self, req: Request<WatchTasksRequest>) -> Result<Response<Self::WatchTasksStream>, Status> {
        auth::node(&self.node, &req, &req.get_ref().node_id)?;
        Ok(Response::new(self.watches.stream(self.node.clone(), req.into_inner())))
    }

    async fn report_tasks(&self, req: Request<ReportTasksRequest>) -> Result<Response<ReportTasksReply>, Status> {
        auth::node(&self.node, &req, &req.get_ref().node_id)?;
        let ReportTasksRequest { node_id, tasks } = req.into_inner();
        let reports = tasks
            .into_iter()
            .enumerate()
            .map(|(i, t)| Report::try_from(t).map_err(|e| Status::invalid_argument(format!("tasks[{i}].{e}"))))
            .collect::<Result<Vec<_>, Status>>()?;
        self.node.write(Command::ReportTasks { node: node_id, reports, at_ms: now_ms() }).await?;
        Ok(Response::new(ReportTasksReply {}))
    }

    /// Refused until every member reads volumes: the agent tells again
    /// while its watch shows the cluster without them.
    async fn report_volumes(&self, req: Request<ReportVolumesRequest>) -> Result<Response<ReportVolumesReply>, Status> {
        auth::node(&self.node, &req, &req.get_ref().node_id)?;
        let ReportVolumesRequest { node_id, volumes } = req.into_inner();
        let volumes = volumes_from(volumes)?;
        self.levels.require(&self.node, 2, "volumes").await?;
        match self.node.write(Command::ReportVolumes { node: node_id, volumes }).await? {
            Applied::Rejected(r) => Err(r.into()),
            _ => Ok(Response::new(ReportVolumesReply {})),
        }
    }
}

/// A node's volume list from the wire, checked.
pub fn volumes_from(volumes: Vec<berth_proto::pb::agent::NodeVolume>) -> Result<Vec<NodeVolume>, Status> {
    let volumes: Vec<NodeVolume> =
        volumes.into_iter().map(|v| NodeVolume { name: v.name, created_at_ms: v.created_at_ms }).collect();
    crate::state::check_volumes(&volumes).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(volumes)
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{AssignedTask, RestartPolicy, ServiceSpec, Task, TaskSpec, TaskState};

    use super::*;
    use crate::publish::assigned;
    use crate::state::{apply, State, TaskChange};

    #[test]
    fn tasks_keep_their_own_spec_and_say_since_when() {
        let mut spec = ServiceSpec {
            image: "registry:5000/web:1".into(),
            command: vec!["serve".into()],
            restart: RestartPolicy::OnFailure,
            ..crate::testing::spec("web", 1)
        };
        let mut s = State::default();
        apply(&mut s, &Command::CreateService(spec.clone()));
        let node = node_from(req()).unwrap();
        apply(&mut s, &Command::RegisterNode(node.clone()));
        let t = Task::new("web", 1, 1, 1, TaskSpec::from(&spec));
        let changes = vec![
            TaskChange::Create(Box::new(t.clone())),
            TaskChange::Assign { id: t.id.clone(), node: node.id.clone() },
        ];
        apply(&mut s, &Command::Reconcile { changes, at_ms: 1000, rollouts: vec![] });
        assert_eq!(s.tasks[&t.id].since_ms, 1000);

        // The service moves on to a new image; the old task still runs the old one.
        spec.image = "registry:5000/web:2".into();
        apply(&mut s, &Command::UpdateService(spec));
        let report = |state, restarts, at_ms| Command::ReportTasks {
            node: node.id.clone(),
            reports: vec![Report {
                id: t.id.clone(),
                state,
                exit_code: None,
                restarts,
                message: String::new(),
                health: None,
            }],
            at_ms,
        };
        apply(&mut s, &report(TaskState::Running, 2, 2000));
        apply(&mut s, &report(TaskState::Running, 2, 3000));
        assert_eq!(s.tasks[&t.id].since_ms, 2000, "an unchanged report is not a change");
        apply(&mut s, &report(TaskState::Running, 3, 4000));
        assert_eq!(s.tasks[&t.id].since_ms, 4000, "a restart is");
        apply(&mut s, &report(TaskState::Running, 0, 5000));
        assert_eq!((s.tasks[&t.id].restarts, s.tasks[&t.id].since_ms), (3, 4000), "a count never goes back");

        let list: Vec<AssignedTask> = assigned(&s, &node.id).tasks.into_values().collect();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].spec.image, "registry:5000/web:1");
        assert_eq!(
            (list[0].spec.command.as_slice(), list[0].spec.restart),
            (&["serve".to_owned()][..], RestartPolicy::OnFailure)
        );
        assert_eq!(list[0].restarts, 3);
        assert!(assigned(&s, "another-node").tasks.is_empty());
    }

    #[test]
    fn endpoints_are_the_running_replicas_with_addresses_on_any_node() {
        use berth_proto::model::{Cidr, NetworkConfig, PortSpec, Protocol};
        let spec = ServiceSpec {
            image: "registry:5000/web:1".into(),
            ports: vec![PortSpec { published: Some(8080), target: 80, protocol: Protocol::Tcp, name: None }],
            ..crate::testing::spec("web", 3)
        };
        let mut s = State::default();
        let net = NetworkConfig::new("198.19.0.0/16".parse::<Cidr>().unwrap(), 24).unwrap();
        apply(&mut s, &Command::InitNetwork(net));
        apply(&mut s, &Command::CreateService(spec.clone()));
        apply(&mut s, &Command::CreateService(ServiceSpec { name: "idle".into(), ports: vec![], ..spec.clone() }));
        let (a, b) =
            (node_from(req()).unwrap(), node_from(RegisterRequest { name: "worker-2".into(), ..req() }).unwrap());
        apply(&mut s, &Command::RegisterNode(a.clone()));
        apply(&mut s, &Command::RegisterNode(b.clone()));
        let tasks: Vec<Task> = (1..=3).map(|slot| Task::new("web", slot, 1, 1, TaskSpec::from(&spec))).collect();
        let mut changes: Vec<TaskChange> = tasks.iter().map(|t| TaskChange::Create(Box::new(t.clone()))).collect();
        for (t, n) in tasks.iter().zip([&a, &b, &b]) {
            changes.push(TaskChange::Assign { id: t.id.clone(), node: n.id.clone() });
        }
        apply(&mut s, &Command::Reconcile { changes, at_ms: 1, rollouts: vec![] });
        let report = |node: &NodeRecord, id: &str, state| Command::ReportTasks {
            node: node.id.clone(),
            reports: vec![Report {
                id: id.into(),
                state,
                exit_code: None,
                restarts: 0,
                message: String::new(),
                health: None,
            }],
            at_ms: 2,
        };
        apply(&mut s, &report(&a, &tasks[0].id, TaskState::Running));
        apply(&mut s, &report(&b, &tasks[1].id, TaskState::Running));
        apply(&mut s, &report(&b, &tasks[2].id, TaskState::Failed));

        let all = assigned(&s, &a.id).services;
        assert_eq!(all, assigned(&s, &b.id).services, "every node sees the same endpoints");
        assert_eq!(all.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["idle", "web"]);
        let web = &all[1];
        assert_eq!(web.ports, spec.ports);
        let expected: Vec<(u32, String)> =
            tasks[..2].iter().map(|t| (t.slot, s.tasks[&t.id].address.unwrap().to_string())).collect();
        let got: Vec<(u32, String)> = web.replicas.iter().map(|e| (e.slot, e.address.to_string())).collect();
        assert_eq!(got, expected, "the failed replica is not an endpoint; the others are, on both nodes");
        assert_ne!(got[0].1, got[1].1);
        // `service inspect` reads the same replicas, with their nodes' names.
        use crate::state::{query, Query, QueryReply};
        let QueryReply::Service(Some(_), inspected) = query(&s, &Query::GetService("web".into())) else { panic!() };
        let seen: Vec<(u32, String, Option<String>)> =
            inspected.iter().map(|e| (e.slot, e.address.to_string(), e.node_name.clone())).collect();
        let names = [Some(a.name.clone()), Some(b.name.clone())];
        let want: Vec<(u32, String, Option<String>)> =
            expected.into_iter().zip(names).map(|((slot, address), node)| (slot, address, node)).collect();
        assert_eq!(seen, want);
    }

    fn req() -> RegisterRequest {
        RegisterRequest {
            node_id: String::new(),
            name: "worker-1".into(),
            advertise_address: "198.18.0.2:7500".into(),
            labels: [("zone".to_owned(), "a".to_owned())].into(),
            capacity: Some(NodeCapacity { cpu_millis: 2000, memory_bytes: 1 << 30 }),
            wireguard_public_key: KEY.into(),
            wireguard_port: 51820,
            reads: 3,
        }
    }

    const KEY: &str = "qnvDeyTcnW2qQyOLzmmH+X5TI8tSrZwNzGnE4ujCz1o=";

    #[test]
    fn registrations_are_checked_and_new_nodes_get_ids() {
        let n = node_from(req()).unwrap();
        assert_eq!(n.id.len(), 16);
        let overlay = n.overlay.unwrap();
        assert_eq!((overlay.public_key.as_str(), overlay.endpoint.as_str()), (KEY, "198.18.0.2:51820"));
        let plain = RegisterRequest { wireguard_public_key: String::new(), wireguard_port: 0, ..req() };
        assert_eq!(node_from(plain).unwrap().overlay, None, "a node may have no overlay");
        assert_eq!(n.labels["zone"], "a");
        assert_eq!(node_from(RegisterRequest { node_id: "abc123".into(), ..req() }).unwrap().id, "abc123");
        for (bad, field) in [
            (RegisterRequest { name: "Bad Name".into(), ..req() }, "name"),
            (RegisterRequest { advertise_address: String::new(), ..req() }, "advertise_address"),
            (RegisterRequest { capacity: None, ..req() }, "capacity"),
            (RegisterRequest { node_id: "../etc".into(), ..req() }, "node_id"),
            (RegisterRequest { labels: [("a=b".to_owned(), "c".to_owned())].into(), ..req() }, "labels.a=b"),
            (RegisterRequest { wireguard_public_key: "short".into(), ..req() }, "wireguard_public_key"),
            (RegisterRequest { wireguard_port: 70000, ..req() }, "wireguard_port"),
            (RegisterRequest { advertise_address: "worker-1:7500".into(), ..req() }, "advertise_address"),
            (RegisterRequest { advertise_address: format!("{}:1", "a".repeat(300)), ..req() }, "advertise_address"),
            (
                RegisterRequest {
                    capacity: Some(NodeCapacity { cpu_millis: u64::MAX, memory_bytes: 1 << 30 }),
                    ..req()
                },
                "capacity",
            ),
            (
                RegisterRequest { capacity: Some(NodeCapacity { cpu_millis: 1000, memory_bytes: u64::MAX }), ..req() },
                "capacity",
            ),
            (
                RegisterRequest { labels: (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect(), ..req() },
                "labels",
            ),
            (RegisterRequest { labels: [("k".to_owned(), "v".repeat(300))].into(), ..req() }, "labels.k"),
        ] {
            let err = node_from(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains(field), "{field}: {}", err.message());
        }
    }
}
