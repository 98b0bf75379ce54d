//! Conversions between wire types and the domain model: the cluster API
//! (cluster.proto) here, the agent protocol in [`agent`].
//!
//! Into the model: `TryFrom`, checking every field and naming the first bad
//! one. Out of the model: `From`, which cannot fail.

mod agent;

use crate::model::{self, InvalidField, PortSpec, Protocol, Resources, RestartPolicy, UpdateConfig};
use crate::pb::cluster as pb;

/// The largest CPU request accepted: far above any host, low enough that
/// the millicpu count cannot overflow.
const MAX_CPUS: f64 = 1_000_000.0;

impl TryFrom<pb::ServiceSpec> for model::ServiceSpec {
    type Error = InvalidField;

    fn try_from(p: pb::ServiceSpec) -> Result<Self, Self::Error> {
        let replicas = u32::try_from(p.replicas).ok().filter(|r| *r <= model::MAX_REPLICAS).ok_or_else(|| {
            InvalidField::new("replicas", p.replicas, format!("an integer from 0 to {}", model::MAX_REPLICAS))
        })?;
        let resources = resources_from_pb("resources", p.resources)?;
        let ports = p.ports.iter().enumerate().map(|(i, port)| port_from_pb(i, port)).collect::<Result<_, _>>()?;
        let restart = RestartPolicy::parse(&p.restart)
            .ok_or_else(|| InvalidField::new("restart", &p.restart, "one of always, on-failure, never"))?;
        let constraints = p
            .constraints
            .iter()
            .enumerate()
            .map(|(i, c)| c.parse().map_err(|e| InvalidField { field: format!("constraints[{i}]"), ..e }))
            .collect::<Result<_, _>>()?;
        let pids_limit = match p.pids_limit {
            0 => None,
            n => Some(u64::try_from(n).map_err(|_| InvalidField::new("pids_limit", n, "a number of processes >= 0"))?),
        };
        let security = p.security.unwrap_or_default();
        let seccomp = model::Seccomp::from_wire("security.seccomp", &security.seccomp, &security.seccomp_profile)?;
        let userns = model::Userns::parse("security.userns", &security.userns)?;
        let spec = model::ServiceSpec {
            name: p.name,
            image: p.image,
            command: p.command,
            env: p.env.into_iter().collect(),
            replicas,
            resources,
            ports,
            restart,
            constraints,
            pids_limit,
            seccomp,
            userns,
            overrides: Box::new(model::Overrides::from_pb(p.overrides.unwrap_or_default())?),
            update_config: UpdateConfig::from_pb(p.update_config, UpdateConfig::UPDATE, "update_config")?,
            rollback_config: UpdateConfig::from_pb(p.rollback_config, UpdateConfig::ROLLBACK, "rollback_config")?,
            mode: model::Mode::parse(&p.mode)
                .ok_or_else(|| InvalidField::new("mode", &p.mode, "replicated or global"))?,
            placement: Box::new(model::Placement::from_pb(p.placement)?),
        };
        spec.validate()?;
        Ok(spec)
    }
}

fn port_from_pb(i: usize, p: &pb::PortSpec) -> Result<PortSpec, InvalidField> {
    let port = |field: &str, v: i64| {
        u16::try_from(v)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| InvalidField::new(format!("ports[{i}].{field}"), v, "a port from 1 to 65535"))
    };
    let published = if p.published == 0 { None } else { Some(port("published", p.published)?) };
    let target = port("target", p.target)?;
    let protocol = Protocol::parse(&p.protocol)
        .ok_or_else(|| InvalidField::new(format!("ports[{i}].protocol"), &p.protocol, "tcp or udp"))?;
    let name = Some(p.name.clone()).filter(|n| !n.is_empty());
    Ok(PortSpec { published, target, protocol, name })
}

impl From<model::ServiceSpec> for pb::ServiceSpec {
    fn from(s: model::ServiceSpec) -> Self {
        let overrides = Some(s.overrides.to_pb());
        Self {
            name: s.name,
            image: s.image,
            command: s.command,
            env: s.env.into_iter().collect(),
            replicas: i64::from(s.replicas),
            resources: Some(resources_to_pb(s.resources)),
            ports: s
                .ports
                .into_iter()
                .map(|p| pb::PortSpec {
                    published: p.published.map_or(0, i64::from),
                    target: i64::from(p.target),
                    protocol: p.protocol.to_string(),
                    name: p.name.unwrap_or_default(),
                })
                .collect(),
            restart: s.restart.to_string(),
            constraints: s.constraints.iter().map(ToString::to_string).collect(),
            pids_limit: s.pids_limit.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            security: Some(security_to_pb(&s.seccomp, s.userns)),
            overrides,
            update_config: Some(s.update_config.to_pb()),
            rollback_config: Some(s.rollback_config.to_pb()),
            mode: s.mode.to_string(),
            placement: Some(s.placement.to_pb()),
        }
    }
}

impl From<model::Service> for pb::Service {
    fn from(s: model::Service) -> Self {
        Self {
            spec: Some(s.spec.into()),
            version: s.version,
            rollout: s.rollout.map(|r| pb::Rollout {
                state: r.state.to_string(),
                version: r.version,
                message: r.message,
            }),
            previous: s.previous.map(|p| (*p).into()),
        }
    }
}

impl TryFrom<pb::Service> for model::Service {
    type Error = InvalidField;

    fn try_from(s: pb::Service) -> Result<Self, Self::Error> {
        let spec = s.spec.ok_or_else(|| InvalidField::new("spec", "", "a service spec"))?;
        let rollout = match s.rollout {
            None => None,
            Some(r) => Some(model::Rollout {
                state: model::RolloutState::parse(&r.state)
                    .ok_or_else(|| InvalidField::new("rollout.state", &r.state, "a rollout state such as updating"))?,
                version: r.version,
                message: r.message,
            }),
        };
        let previous = match s.previous {
            None => None,
            Some(p) => Some(Box::new(
                model::ServiceSpec::try_from(p)
                    .map_err(|e| InvalidField { field: format!("previous.{}", e.field), ..e })?,
            )),
        };
        Ok(Self { spec: spec.try_into()?, version: s.version, previous, rollout })
    }
}

/// A spec's security settings as the wire carries them.
pub fn security_to_pb(seccomp: &model::Seccomp, userns: model::Userns) -> pb::Security {
    let (seccomp, seccomp_profile) = seccomp.to_wire();
    pb::Security { seccomp, seccomp_profile, userns: userns.to_wire() }
}

fn resources_to_pb(r: Resources) -> pb::Resources {
    pb::Resources {
        cpus: r.cpu_millis as f64 / 1000.0,
        memory_bytes: i64::try_from(r.memory_bytes).unwrap_or(i64::MAX),
    }
}

fn resources_from_pb(field: &str, r: Option<pb::Resources>) -> Result<Resources, InvalidField> {
    let r = r.unwrap_or_default();
    if !(r.cpus.is_finite() && (0.0..=MAX_CPUS).contains(&r.cpus)) {
        return Err(InvalidField::new(format!("{field}.cpus"), r.cpus, "a number of CPUs >= 0, such as 0.5"));
    }
    let memory_bytes = u64::try_from(r.memory_bytes)
        .map_err(|_| InvalidField::new(format!("{field}.memory"), r.memory_bytes, "a size >= 0, such as 64Mi"))?;
    Ok(Resources { cpu_millis: (r.cpus * 1000.0).round() as u64, memory_bytes })
}

impl From<model::NodeInfo> for pb::Node {
    fn from(i: model::NodeInfo) -> Self {
        let n = i.node;
        Self {
            id: n.id,
            name: n.name,
            address: n.address,
            labels: n.labels.into_iter().collect(),
            capacity: Some(resources_to_pb(n.capacity)),
            status: n.status.to_string(),
            availability: n.availability.to_string(),
            allocated: Some(resources_to_pb(i.allocated)),
            tasks: i.tasks,
            subnet: n.subnet.map(|s| s.to_string()).unwrap_or_default(),
            wireguard_public_key: n.overlay.as_ref().map(|o| o.public_key.clone()).unwrap_or_default(),
            wireguard_endpoint: n.overlay.map(|o| o.endpoint).unwrap_or_default(),
            agent_reads: n.reads,
        }
    }
}

impl TryFrom<pb::Node> for model::NodeInfo {
    type Error = InvalidField;

    fn try_from(p: pb::Node) -> Result<Self, Self::Error> {
        let status = model::NodeStatus::parse(&p.status)
            .ok_or_else(|| InvalidField::new("status", &p.status, "ready or down"))?;
        let availability = model::Availability::parse(&p.availability)
            .ok_or_else(|| InvalidField::new("availability", &p.availability, "active or drain"))?;
        let node = model::Node {
            id: p.id,
            name: p.name,
            address: p.address,
            labels: p.labels.into_iter().collect(),
            capacity: resources_from_pb("capacity", p.capacity)?,
            status,
            availability,
            subnet: optional(&p.subnet, "subnet", |s| s.parse().ok(), "an IPv4 network like 198.19.1.0/24")?,
            overlay: (!p.wireguard_public_key.is_empty())
                .then_some(model::Overlay { public_key: p.wireguard_public_key, endpoint: p.wireguard_endpoint }),
            reads: p.agent_reads,
        };
        Ok(Self { node, allocated: resources_from_pb("allocated", p.allocated)?, tasks: p.tasks })
    }
}

impl From<model::TaskInfo> for pb::Task {
    fn from(i: model::TaskInfo) -> Self {
        let t = i.task;
        Self {
            id: t.id,
            service: t.service,
            slot: t.slot,
            generation: t.generation,
            version: t.version,
            node_id: t.node.unwrap_or_default(),
            node_name: i.node_name.unwrap_or_default(),
            desired: t.desired.to_string(),
            state: t.state.to_string(),
            message: t.message,
            has_exit_code: t.exit_code.is_some(),
            exit_code: t.exit_code.unwrap_or(0),
            restarts: t.restarts,
            resources: Some(resources_to_pb(t.spec.resources)),
            image: t.spec.image,
            command: t.spec.command,
            env: t.spec.env.into_iter().collect(),
            restart: t.spec.restart.to_string(),
            since_unix_ms: t.since_ms,
            address: t.address.map(|a| a.to_string()).unwrap_or_default(),
            health: t.health.map(|h| h.to_string()).unwrap_or_default(),
            pin: t.pin.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::Task> for model::TaskInfo {
    type Error = InvalidField;

    fn try_from(p: pb::Task) -> Result<Self, Self::Error> {
        let desired = model::Desired::parse(&p.desired)
            .ok_or_else(|| InvalidField::new("desired", &p.desired, "running or shutdown"))?;
        let state = model::TaskState::parse(&p.state).ok_or_else(|| {
            InvalidField::new("state", &p.state, "pending, assigned, running, exited, failed or shutdown")
        })?;
        let task = model::Task {
            id: p.id,
            service: p.service,
            slot: p.slot,
            generation: p.generation,
            version: p.version,
            spec: model::TaskSpec {
                image: p.image,
                command: p.command,
                env: p.env.into_iter().collect(),
                resources: resources_from_pb("resources", p.resources)?,
                restart: RestartPolicy::parse(&p.restart)
                    .ok_or_else(|| InvalidField::new("restart", &p.restart, "one of always, on-failure, never"))?,
                // The task view does not carry the service's limits and filter.
                ..Default::default()
            },
            node: Some(p.node_id).filter(|n| !n.is_empty()),
            desired,
            state,
            message: p.message,
            exit_code: p.has_exit_code.then_some(p.exit_code),
            restarts: p.restarts,
            since_ms: p.since_unix_ms,
            address: optional(&p.address, "address", |a| a.parse().ok(), "an IPv4 address")?,
            health: optional(&p.health, "health", model::HealthState::parse, "starting, healthy or unhealthy")?,
            pin: Some(p.pin).filter(|n| !n.is_empty()),
        };
        Ok(Self { task, node_name: Some(p.node_name).filter(|n| !n.is_empty()) })
    }
}

impl From<model::Endpoint> for pb::ServiceEndpoint {
    fn from(e: model::Endpoint) -> Self {
        Self { task: e.task, slot: e.slot, address: e.address.to_string(), node: e.node_name.unwrap_or_default() }
    }
}

impl TryFrom<pb::ServiceEndpoint> for model::Endpoint {
    type Error = InvalidField;

    fn try_from(e: pb::ServiceEndpoint) -> Result<Self, Self::Error> {
        let address = e.address.parse().map_err(|_| InvalidField::new("address", &e.address, "an IPv4 address"))?;
        Ok(Self { task: e.task, slot: e.slot, address, node_name: Some(e.node).filter(|n| !n.is_empty()) })
    }
}

/// An optional field that is empty on the wire when absent.
fn optional<T>(
    value: &str,
    field: &str,
    parse: impl Fn(&str) -> Option<T>,
    expected: &str,
) -> Result<Option<T>, InvalidField> {
    if value.is_empty() {
        return Ok(None);
    }
    parse(value).map(Some).ok_or_else(|| InvalidField::new(field, value, expected))
}

/// Extracts and converts the spec of a request, naming a missing one.
pub fn spec_from_request(spec: Option<pb::ServiceSpec>) -> Result<model::ServiceSpec, InvalidField> {
    spec.ok_or_else(|| InvalidField::new("spec", "", "a service spec"))?.try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> pb::ServiceSpec {
        pb::ServiceSpec {
            name: "web".into(),
            image: "busybox".into(),
            replicas: 2,
            resources: Some(pb::Resources { cpus: 0.25, memory_bytes: 1 << 20 }),
            ports: vec![pb::PortSpec { published: 8080, target: 80, protocol: String::new(), name: String::new() }],
            pids_limit: 100,
            security: Some(pb::Security {
                seccomp: String::new(),
                seccomp_profile: r#"{"defaultAction": "SCMP_ACT_LOG"}"#.into(),
                userns: "auto".into(),
            }),
            ..Default::default()
        }
    }

    fn field(p: pb::ServiceSpec) -> String {
        model::ServiceSpec::try_from(p).expect_err("should be rejected").field
    }

    #[test]
    fn round_trip() {
        let m = model::ServiceSpec::try_from(wire()).expect("valid");
        assert_eq!(m.resources.cpu_millis, 250);
        assert_eq!(m.ports[0].protocol, Protocol::Tcp);
        assert_eq!(m.pids_limit, Some(100));
        assert!(matches!(m.seccomp, model::Seccomp::Profile(_)));
        assert_eq!(m.userns, model::Userns::Auto);
        let unset = model::ServiceSpec::try_from(pb::ServiceSpec { pids_limit: 0, security: None, ..wire() });
        let unset = unset.expect("valid");
        assert_eq!(
            (unset.pids_limit, unset.seccomp, unset.userns),
            (None, model::Seccomp::Default, model::Userns::Host)
        );
        let back = pb::ServiceSpec::from(m.clone());
        assert_eq!(model::ServiceSpec::try_from(back).expect("valid"), m);
    }

    #[test]
    fn out_of_range_numbers_are_named() {
        assert_eq!(field(pb::ServiceSpec { replicas: -1, ..wire() }), "replicas");
        assert_eq!(field(pb::ServiceSpec { replicas: 1 << 40, ..wire() }), "replicas");
        let res = |cpus, memory_bytes| Some(pb::Resources { cpus, memory_bytes });
        assert_eq!(field(pb::ServiceSpec { resources: res(-0.5, 0), ..wire() }), "resources.cpus");
        assert_eq!(field(pb::ServiceSpec { resources: res(f64::NAN, 0), ..wire() }), "resources.cpus");
        assert_eq!(field(pb::ServiceSpec { resources: res(1.0, -5), ..wire() }), "resources.memory");
        let port = |published, target, protocol: &str| {
            vec![pb::PortSpec { published, target, protocol: protocol.into(), name: String::new() }]
        };
        assert_eq!(field(pb::ServiceSpec { ports: port(70000, 80, ""), ..wire() }), "ports[0].published");
        assert_eq!(field(pb::ServiceSpec { ports: port(-1, 80, ""), ..wire() }), "ports[0].published");
        assert_eq!(field(pb::ServiceSpec { ports: port(80, 0, ""), ..wire() }), "ports[0].target");
        assert_eq!(field(pb::ServiceSpec { ports: port(80, 80, "sctp"), ..wire() }), "ports[0].protocol");
        assert_eq!(field(pb::ServiceSpec { restart: "sometimes".into(), ..wire() }), "restart");
        let constraints = vec!["node.name == a".into(), "zone = b".into()];
        assert_eq!(field(pb::ServiceSpec { constraints, ..wire() }), "constraints[1]");
        assert_eq!(field(pb::ServiceSpec { pids_limit: -1, ..wire() }), "pids_limit");
        let security = |mode: &str, profile: &str| {
            Some(pb::Security { seccomp: mode.into(), seccomp_profile: profile.into(), userns: String::new() })
        };
        assert_eq!(field(pb::ServiceSpec { security: security("off", ""), ..wire() }), "security.seccomp");
        assert_eq!(field(pb::ServiceSpec { security: security("", "{}"), ..wire() }), "security.seccomp");
        let userns = Some(pb::Security { userns: "keep-id".into(), ..Default::default() });
        assert_eq!(field(pb::ServiceSpec { security: userns, ..wire() }), "security.userns");
    }
}
