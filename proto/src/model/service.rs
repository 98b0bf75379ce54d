//! Services: what a person declares. A service's spec is validated once, at
//! the edge, by `ServiceSpec::validate`; everything past it may assume a
//! valid spec.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    validate_image, Constraint, InvalidField, Mode, Overrides, Placement, Rollout, Seccomp, UpdateConfig, Userns,
};

/// A declared service: its spec and how many times the spec changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub spec: ServiceSpec,
    /// 1 at creation, +1 for every update that changes the spec.
    pub version: u64,
    /// The spec before the last change of what its tasks run: what a
    /// rollback puts back (boxed: rarely read, carried in every snapshot).
    #[serde(default)]
    pub previous: Option<Box<ServiceSpec>>,
    /// Where its last rollout stands; none before its first.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's Cmd when not empty.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub replicas: u32,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Where its tasks may run; every one must hold.
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// The most processes each task may have; `None` for the node's default
    /// (`berth-agent --pids-limit`).
    #[serde(default)]
    pub pids_limit: Option<u64>,
    #[serde(default)]
    pub seccomp: Seccomp,
    /// A user namespace per task, or the host's ids.
    #[serde(default)]
    pub userns: Userns,
    /// Entrypoint, user and working directory over the image's (boxed:
    /// rarely set, and a spec rides in every write command).
    #[serde(default)]
    pub overrides: Box<Overrides>,
    /// How its tasks move to a new spec.
    #[serde(default)]
    pub update_config: UpdateConfig,
    /// How they move back to the previous one.
    #[serde(default = "rollback_default")]
    pub rollback_config: UpdateConfig,
    /// Replicated (`replicas` tasks) or global (one per eligible node; then
    /// `replicas` is 0, so a server one release back, which reads no mode,
    /// runs none rather than the wrong number). Fixed at creation.
    #[serde(default)]
    pub mode: Mode,
    /// Spread preferences, a cap per node, rebalancing (boxed, as overrides).
    #[serde(default)]
    pub placement: Box<Placement>,
}

fn rollback_default() -> UpdateConfig {
    UpdateConfig::ROLLBACK
}

/// Requested resources; zero means "no request, no limit".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, other: Self) {
        self.cpu_millis = self.cpu_millis.saturating_add(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The port every node answers on; `None` when only the target is declared.
    pub published: Option<u16>,
    pub target: u16,
    pub protocol: Protocol,
    /// Its name in DNS SRV records (`_NAME._PROTOCOL.SERVICE.DOMAIN`).
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// The most replicas one service may ask for; a guard against typos.
pub const MAX_REPLICAS: u32 = 10_000;

/// Bounds on a spec's fields, so that a spec (and a Raft entry, and a
/// request) stays small whatever a client sends: together well under the
/// servers' request limit (`--max-request-bytes`, 1.5 MiB by default).
pub mod limits {
    /// The command's arguments, in bytes all together.
    pub const COMMAND_BYTES: usize = 128 << 10;
    /// Arguments in the command.
    pub const COMMAND_ARGS: usize = 1024;
    /// Environment variables.
    pub const ENV_VARS: usize = 1024;
    /// One variable's name and value together, in bytes.
    pub const ENV_VAR_BYTES: usize = 32 << 10;
    /// The whole environment, in bytes.
    pub const ENV_BYTES: usize = 256 << 10;
    /// Published and target ports.
    pub const PORTS: usize = 128;
    /// Placement constraints (each is at most ~520 bytes: its key and
    /// value are at most 253 each).
    pub const CONSTRAINTS: usize = 64;
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "always" => Some(Self::Always),
            "on-failure" => Some(Self::OnFailure),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        })
    }
}

/// A node's or user's name is a DNS label (RFC 1123): it becomes a DNS name later.
pub fn validate_name(name: &str) -> Result<(), InvalidField> {
    if dns_label(name) {
        Ok(())
    } else {
        Err(InvalidField::new(
            "name",
            name,
            "a DNS label: 1 to 63 lowercase letters, digits or '-', not starting or ending with '-'",
        ))
    }
}

fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A service's name: a DNS label, or `STACK_NAME` for a service of a stack
/// (`berthctl stack deploy`), as Swarm names them, each part a DNS label
/// and the whole at most 63 characters (it is one label in DNS).
pub fn validate_service_name(name: &str) -> Result<(), InvalidField> {
    let ok = match name.split_once('_') {
        // An all-digit name in a stack would read in DNS as a replica's slot.
        Some((stack, short)) => {
            name.len() <= 63 && dns_label(stack) && dns_label(short) && !short.bytes().all(|b| b.is_ascii_digit())
        }
        None => dns_label(name),
    };
    if ok {
        Ok(())
    } else {
        Err(InvalidField::new(
            "name",
            name,
            "a DNS label (1 to 63 lowercase letters, digits or '-', not starting or ending with '-'), or two \
             joined by '_' as STACK_SERVICE, SERVICE not all digits",
        ))
    }
}

/// The stack a service's name puts it in, and its name there: `shop_db`
/// is `db` of stack `shop`.
pub fn stack_of(name: &str) -> Option<(&str, &str)> {
    name.split_once('_')
}

impl ServiceSpec {
    /// Whether it uses what stacks brought: a `STACK_SERVICE` name or
    /// dependencies (servers and agents before them cannot read them).
    pub fn uses_stacks(&self) -> bool {
        stack_of(&self.name).is_some() || !self.overrides.options.depends_on.is_empty()
    }

    /// Whether tasks made for `other` would be the same as for this spec:
    /// everything but the replica count, how tasks are replaced and whether
    /// the leader rebalances them matters. Scaling replaces no task.
    pub fn same_tasks(&self, other: &Self) -> bool {
        let (update_config, rollback_config) = (other.update_config, other.rollback_config);
        // Rebalancing is the leader's business; it moves no task by itself.
        let placement = Box::new(Placement { rebalance: other.placement.rebalance, ..(*self.placement).clone() });
        Self { replicas: other.replicas, update_config, rollback_config, placement, ..self.clone() } == *other
    }

    /// Checks every field; the first one that is wrong is named.
    pub fn validate(&self) -> Result<(), InvalidField> {
        validate_service_name(&self.name)?;
        super::depends::validate(&self.name, &self.overrides.options.depends_on)?;
        validate_image(&self.image).map_err(|why| {
            InvalidField::new(
                "image",
                &self.image,
                format!("an image reference like registry:5000/repo/name:tag (it {why})"),
            )
        })?;
        if self.replicas > MAX_REPLICAS {
            return Err(InvalidField::new("replicas", self.replicas, format!("an integer from 0 to {MAX_REPLICAS}")));
        }
        if self.mode == Mode::Global && self.replicas != 0 {
            return Err(InvalidField::new(
                "replicas",
                self.replicas,
                "not set: a global service runs one task on every eligible node",
            ));
        }
        self.placement.validate(self.mode)?;
        for (i, m) in self.overrides.options.mounts.iter().enumerate().filter(|(_, m)| m.exclusive) {
            let field = format!("mounts[{i}].exclusive");
            if self.mode == Mode::Global {
                return Err(InvalidField::new(
                    field,
                    true,
                    "a replicated service: a global one's volumes are per node",
                ));
            }
            if self.replicas > 1 && !m.source.contains(super::SLOT) {
                return Err(InvalidField::new(
                    field,
                    true,
                    format!(
                        "a volume per replica for {} replicas (source: {}-{{{{.Task.Slot}}}}), or 1 replica",
                        self.replicas, m.source
                    ),
                ));
            }
        }
        let too_long = |field: &str, len: usize, limit: usize, what: &str| {
            InvalidField::new(field, format!("{len} {what}"), format!("at most {limit} {what}"))
        };
        // The entrypoint counts with the command: together they are what runs.
        let entrypoint = self.overrides.entrypoint.iter().flatten();
        let (args, bytes) = (
            self.command.iter().chain(entrypoint.clone()).count(),
            self.command.iter().chain(entrypoint).map(String::len).sum::<usize>(),
        );
        if args > limits::COMMAND_ARGS {
            return Err(too_long("command", args, limits::COMMAND_ARGS, "arguments"));
        }
        if bytes > limits::COMMAND_BYTES {
            return Err(too_long("command", bytes, limits::COMMAND_BYTES, "bytes"));
        }
        if self.env.len() > limits::ENV_VARS {
            return Err(too_long("env", self.env.len(), limits::ENV_VARS, "variables"));
        }
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if env_bytes > limits::ENV_BYTES {
            return Err(too_long("env", env_bytes, limits::ENV_BYTES, "bytes"));
        }
        if let Some((k, v)) = self.env.iter().find(|(k, v)| k.len() + v.len() > limits::ENV_VAR_BYTES) {
            let field = format!("env.{}", k.chars().take(64).collect::<String>());
            return Err(too_long(&field, k.len() + v.len(), limits::ENV_VAR_BYTES, "bytes"));
        }
        if self.ports.len() > limits::PORTS {
            return Err(too_long("ports", self.ports.len(), limits::PORTS, "ports"));
        }
        if self.constraints.len() > limits::CONSTRAINTS {
            return Err(too_long("constraints", self.constraints.len(), limits::CONSTRAINTS, "constraints"));
        }
        self.overrides.validate()?;
        self.update_config.validate("update_config")?;
        self.rollback_config.validate("rollback_config")?;
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(InvalidField::new("command", format!("{:?}", self.command), "arguments without NUL bytes"));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(InvalidField::new(
                    format!("env.{k}"),
                    k,
                    "a variable name that is not empty and has no '=' or NUL",
                ));
            }
            if v.contains('\0') {
                return Err(InvalidField::new(format!("env.{k}"), v, "a value without NUL bytes"));
            }
        }
        let mut published = BTreeSet::new();
        let mut targets = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.target == 0 {
                return Err(InvalidField::new(format!("ports[{i}].target"), 0, "a port from 1 to 65535"));
            }
            if p.published == Some(0) {
                return Err(InvalidField::new(format!("ports[{i}].published"), 0, "a port from 1 to 65535"));
            }
            if let Some(name) = &p.name {
                let ok = (1..=15).contains(&name.len())
                    && name.starts_with(|c: char| c.is_ascii_lowercase())
                    && !name.ends_with('-')
                    && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !ok {
                    return Err(InvalidField::new(
                        format!("ports[{i}].name"),
                        name,
                        "a port name: lowercase letters, digits and '-', at most 15, starting with a letter",
                    ));
                }
                if !names.insert((name.as_str(), p.protocol)) {
                    return Err(InvalidField::new(format!("ports[{i}].name"), name, "a name used once per protocol"));
                }
            }
            if !targets.insert((p.target, p.protocol)) {
                return Err(InvalidField::new(
                    format!("ports[{i}].target"),
                    format!("{}/{}", p.target, p.protocol),
                    "a target port declared once per protocol",
                ));
            }
            if let Some(pp) = p.published {
                if !published.insert((pp, p.protocol)) {
                    return Err(InvalidField::new(
                        format!("ports[{i}].published"),
                        format!("{pp}/{}", p.protocol),
                        "a published port used once per protocol",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stacks_service_is_two_labels_joined_by_one_underscore() {
        for ok in ["web", "shop_db", "a-1_b-2"] {
            assert!(validate_service_name(ok).is_ok(), "{ok}");
        }
        for bad in ["shop_", "_db", "a_b_c", "Shop_db", "shop_2", "web_-x", &format!("s_{}", "d".repeat(62))] {
            assert_eq!(validate_service_name(bad).unwrap_err().field, "name", "{bad}");
        }
        assert_eq!(stack_of("shop_db"), Some(("shop", "db")));
        assert!(validate_name("shop_db").is_err(), "a node's name is one label");
    }

    pub(crate) fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            image: "busybox:1.36".into(),
            command: vec!["httpd".into(), "-f".into()],
            env: BTreeMap::from([("A".into(), "1".into())]),
            replicas: 3,
            resources: Resources { cpu_millis: 500, memory_bytes: 64 << 20 },
            ports: vec![PortSpec { published: Some(8080), target: 80, protocol: Protocol::Tcp, name: None }],
            restart: RestartPolicy::Always,
            constraints: vec!["node.labels.zone == a".parse().unwrap()],
            pids_limit: Some(100),
            seccomp: Seccomp::Default,
            userns: Userns::Host,
            overrides: Box::default(),
            update_config: UpdateConfig::UPDATE,
            rollback_config: UpdateConfig::ROLLBACK,
            mode: Mode::Replicated,
            placement: Box::default(),
        }
    }

    fn field_of(s: ServiceSpec) -> String {
        s.validate().expect_err("should be invalid").field
    }

    #[test]
    fn valid_spec_passes() {
        assert_eq!(spec().validate(), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(ServiceSpec { name: "Web".into(), ..spec() }), "name");
        assert_eq!(field_of(ServiceSpec { name: "-web".into(), ..spec() }), "name");
        assert_eq!(field_of(ServiceSpec { name: "a".repeat(64), ..spec() }), "name");
        assert_eq!(field_of(ServiceSpec { image: "Bad Image".into(), ..spec() }), "image");
        assert_eq!(field_of(ServiceSpec { replicas: MAX_REPLICAS + 1, ..spec() }), "replicas");
        assert_eq!(field_of(ServiceSpec { mode: Mode::Global, ..spec() }), "replicas");
        assert_eq!(ServiceSpec { mode: Mode::Global, replicas: 0, ..spec() }.validate(), Ok(()));
        let capped = Placement { max_per_node: Some(0), ..Placement::default() };
        assert_eq!(field_of(ServiceSpec { placement: Box::new(capped), ..spec() }), "placement.max_replicas_per_node");
        assert_eq!(field_of(ServiceSpec { env: BTreeMap::from([("A=B".into(), "x".into())]), ..spec() }), "env.A=B");
        // Sizes: the error names the field and the limit, not the value.
        let err =
            ServiceSpec { command: vec!["x".repeat(limits::COMMAND_BYTES + 1)], ..spec() }.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "command: \"{} bytes\" is not valid: expected at most {} bytes",
                limits::COMMAND_BYTES + 1,
                limits::COMMAND_BYTES
            )
        );
        assert_eq!(field_of(ServiceSpec { command: vec!["a".into(); limits::COMMAND_ARGS + 1], ..spec() }), "command");
        let big = |n: usize, len: usize| (0..n).map(|i| (format!("V{i}"), "x".repeat(len))).collect::<BTreeMap<_, _>>();
        assert_eq!(field_of(ServiceSpec { env: big(1, limits::ENV_VAR_BYTES), ..spec() }), "env.V0");
        assert_eq!(field_of(ServiceSpec { env: big(limits::ENV_VARS + 1, 1), ..spec() }), "env");
        assert_eq!(field_of(ServiceSpec { env: big(16, limits::ENV_VAR_BYTES - 8), ..spec() }), "env");
        let port = PortSpec { published: None, target: 80, protocol: Protocol::Tcp, name: None };
        assert_eq!(field_of(ServiceSpec { ports: vec![port; limits::PORTS + 1], ..spec() }), "ports");
        assert_eq!(
            field_of(ServiceSpec {
                constraints: vec![spec().constraints[0].clone(); limits::CONSTRAINTS + 1],
                ..spec()
            }),
            "constraints"
        );
        // At the limits, a spec is valid.
        let full = ServiceSpec {
            command: vec!["x".repeat(limits::COMMAND_BYTES)],
            env: big(7, limits::ENV_VAR_BYTES - 8),
            ..spec()
        };
        assert_eq!(full.validate(), Ok(()));
        let dup = PortSpec { published: Some(8080), target: 81, protocol: Protocol::Tcp, name: None };
        assert_eq!(field_of(ServiceSpec { ports: vec![spec().ports[0].clone(), dup], ..spec() }), "ports[1].published");
        let dup_target = PortSpec { published: None, target: 80, protocol: Protocol::Tcp, name: None };
        assert_eq!(
            field_of(ServiceSpec { ports: vec![spec().ports[0].clone(), dup_target], ..spec() }),
            "ports[1].target"
        );
        let zero = PortSpec { published: None, target: 0, protocol: Protocol::Tcp, name: None };
        assert_eq!(field_of(ServiceSpec { ports: vec![zero], ..spec() }), "ports[0].target");
    }

    #[test]
    fn an_exclusive_volume_has_one_writer() {
        let with = |source: &str, replicas: u32, mode: Mode| {
            let mut s = ServiceSpec { replicas, mode, ..spec() };
            s.overrides.options.mounts = vec![super::super::Mount {
                kind: super::super::MountKind::Volume,
                source: source.into(),
                target: "/data".into(),
                readonly: false,
                pin: false,
                exclusive: true,
            }];
            s.validate()
        };
        assert_eq!(with("data", 1, Mode::Replicated), Ok(()));
        assert_eq!(with("data-{{.Task.Slot}}", 3, Mode::Replicated), Ok(()));
        let shared = with("data", 3, Mode::Replicated).unwrap_err();
        assert_eq!(shared.field, "mounts[0].exclusive");
        assert!(shared.expected.contains("data-{{.Task.Slot}}"), "{shared}");
        assert_eq!(with("data", 0, Mode::Global).unwrap_err().field, "mounts[0].exclusive");
    }

    #[test]
    fn port_names_are_short_labels_used_once() {
        let named = |name: &str| PortSpec { name: Some(name.into()), ..spec().ports[0].clone() };
        assert_eq!(ServiceSpec { ports: vec![named("http-2")], ..spec() }.validate(), Ok(()));
        for bad in ["", "Http", "2http", "http-", "a-very-long-port-name", "h_t"] {
            assert_eq!(field_of(ServiceSpec { ports: vec![named(bad)], ..spec() }), "ports[0].name", "{bad:?}");
        }
        let other = PortSpec { target: 81, published: None, ..named("http") };
        assert_eq!(field_of(ServiceSpec { ports: vec![named("http"), other], ..spec() }), "ports[1].name");
    }

    #[test]
    fn same_port_on_two_protocols_is_fine() {
        let udp = PortSpec { published: Some(8080), target: 80, protocol: Protocol::Udp, name: None };
        assert_eq!(ServiceSpec { ports: vec![spec().ports[0].clone(), udp], ..spec() }.validate(), Ok(()));
    }
}
