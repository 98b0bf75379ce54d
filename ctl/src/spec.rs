//! Service specs as people write them: `berthctl service create` flags and
//! `berthctl apply -f` YAML files, turned into wire specs.
//!
//! Parsing here is about form (unknown keys, unreadable numbers); the
//! server validates values and names the field it rejects, so the rules
//! live in one place.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use berth_proto::convert::security_to_pb;
use berth_proto::model::{parse_memory, Seccomp, Userns};
use berth_proto::pb::cluster as pb;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::health::{duration_value, HealthFile};
use crate::options::OptionsFile;
use crate::rollout::UpdateConfigFile;

/// One service in a spec file. Unknown keys are an error, not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: String,
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Default 1; none for a global service.
    #[serde(default)]
    replicas: Option<i64>,
    /// `replicated` (the default) or `global`.
    #[serde(default)]
    mode: Option<String>,
    /// `node.labels.KEY`, or a list of them: spread replicas over their values.
    #[serde(default)]
    spread: Option<Value>,
    #[serde(default)]
    max_replicas_per_node: Option<u32>,
    /// Whether the leader moves replicas back when a node returns (default true).
    #[serde(default)]
    rebalance: Option<bool>,
    #[serde(default)]
    resources: ResourcesFile,
    #[serde(default)]
    ports: Vec<Value>,
    #[serde(default)]
    restart: String,
    /// `node.labels.zone == a`, `node.name != x`.
    #[serde(default)]
    constraints: Vec<String>,
    #[serde(default)]
    security: SecurityFile,
    /// `auto`: a user namespace per task; `host` (the default): the host's ids.
    #[serde(default)]
    userns: Option<String>,
    /// Replaces the image's entrypoint: a list, or one string (one argument).
    #[serde(default)]
    entrypoint: Option<Value>,
    /// `user`, `uid`, `user:group`, `uid:gid`.
    #[serde(default)]
    user: Option<Value>,
    /// The working directory, an absolute path.
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    read_only: bool,
    /// A tiny init as PID 1 (`docker run --init`).
    #[serde(default)]
    init: bool,
    /// Capability names (`NET_ADMIN`) over Docker's default set.
    #[serde(default)]
    cap_add: Vec<String>,
    /// Capability names, or `ALL`.
    #[serde(default)]
    cap_drop: Vec<String>,
    /// `SIGINT`, `INT`, `2`.
    #[serde(default)]
    stop_signal: Option<String>,
    /// `30s`, `1m30s`, `500ms`, or a number of seconds.
    #[serde(default)]
    stop_grace_period: Option<Value>,
    /// Its health check (see `crate::health::HealthFile`).
    #[serde(default)]
    health: Option<HealthFile>,
    /// Container options (see `crate::options`).
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    extra_hosts: Option<Value>,
    #[serde(default)]
    dns: Option<Vec<String>>,
    #[serde(default)]
    dns_search: Option<Vec<String>>,
    #[serde(default)]
    dns_options: Option<Vec<String>>,
    #[serde(default)]
    ulimits: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    tmpfs: Option<Vec<Value>>,
    /// Volumes and binds: `[data:/data, {type: bind, source: /srv, target: /srv}]`.
    #[serde(default)]
    volumes: Option<Vec<Value>>,
    /// `[db_password, {source: tls, target: /etc/tls.key, mode: 0400}]`.
    #[serde(default)]
    secrets: Option<Vec<Value>>,
    #[serde(default)]
    configs: Option<Vec<Value>>,
    #[serde(default)]
    restart_max_attempts: Option<u32>,
    #[serde(default)]
    restart_window: Option<Value>,
    /// When nodes ask the registry: `missing` (default), `always`, `never`.
    #[serde(default)]
    pull: Option<String>,
    /// How tasks move to a new spec, and back (see `crate::rollout`).
    #[serde(default)]
    update_config: Option<UpdateConfigFile>,
    #[serde(default)]
    rollback_config: Option<UpdateConfigFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecurityFile {
    /// `default`, `unconfined`, or a profile file's path (relative to the spec file).
    #[serde(default)]
    seccomp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesFile {
    #[serde(default)]
    cpus: f64,
    #[serde(default)]
    memory: Option<Value>,
    /// The most processes each task may have.
    #[serde(default)]
    pids: i64,
}

/// Parses every YAML document in `text` (separated by `---`) as a service,
/// and checks every spec the way the server will, so that a bad document
/// stops the whole file before anything is written. Files a spec names
/// (seccomp profiles) are read relative to `dir`.
pub fn parse_file(text: &str, dir: &Path) -> Result<Vec<pb::ServiceSpec>> {
    let mut specs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).with_context(|| format!("document {}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let file: SpecFile = serde_yaml_ng::from_value(value).with_context(|| format!("document {}", i + 1))?;
        let spec = file.into_wire(dir).with_context(|| format!("document {}", i + 1))?;
        check(&spec).with_context(|| format!("document {} (service {:?})", i + 1, spec.name))?;
        specs.push(spec);
    }
    if specs.is_empty() {
        bail!("the file holds no service spec");
    }
    Ok(specs)
}

impl SpecFile {
    fn into_wire(self, dir: &Path) -> Result<pb::ServiceSpec> {
        let memory_bytes = match self.resources.memory {
            None => 0,
            Some(Value::Number(n)) => {
                n.as_i64().ok_or_else(|| anyhow!("resources.memory: {n} is not a whole number of bytes"))?
            }
            Some(Value::String(s)) => memory(&s).context("resources.memory")?,
            Some(other) => bail!("resources.memory: expected a size such as 64Mi, got {other:?}"),
        };
        let ports = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, v)| port_value(v).with_context(|| format!("ports[{i}]")))
            .collect::<Result<_>>()?;
        Ok(pb::ServiceSpec {
            name: self.name,
            image: self.image,
            command: self.command,
            env: self.env.into_iter().collect(),
            replicas: self.replicas.unwrap_or(if self.mode.as_deref() == Some("global") { 0 } else { 1 }),
            resources: Some(pb::Resources { cpus: self.resources.cpus, memory_bytes }),
            ports,
            restart: self.restart,
            constraints: self.constraints,
            pids_limit: self.resources.pids,
            security: security(self.security.seccomp.as_deref(), self.userns.as_deref(), dir)?,
            overrides: Some(pb::Overrides {
                set_entrypoint: self.entrypoint.is_some(),
                entrypoint: self.entrypoint.map(|e| strings(&e).context("entrypoint")).transpose()?.unwrap_or_default(),
                user: match self.user {
                    None => String::new(),
                    Some(Value::String(s)) => s,
                    Some(Value::Number(n)) => n.to_string(),
                    Some(other) => bail!("user: expected a user or uid such as www-data or 1000:1000, got {other:?}"),
                },
                workdir: self.workdir.unwrap_or_default(),
                hostname: self.hostname.unwrap_or_default(),
                read_only: self.read_only,
                cap_add: self.cap_add,
                cap_drop: self.cap_drop,
                stop_signal: self.stop_signal.unwrap_or_default(),
                stop_grace_ms: duration_value(self.stop_grace_period).context("stop_grace_period")?,
                health: self.health.map(HealthFile::into_wire).transpose()?,
                options: OptionsFile {
                    labels: self.labels,
                    extra_hosts: self.extra_hosts,
                    dns: self.dns,
                    dns_search: self.dns_search,
                    dns_options: self.dns_options,
                    ulimits: self.ulimits,
                    tmpfs: self.tmpfs,
                    volumes: self.volumes,
                    secrets: self.secrets,
                    configs: self.configs,
                    restart_max_attempts: self.restart_max_attempts,
                    restart_window: self.restart_window,
                    pull: self.pull,
                }
                .into_wire()?,
                init: self.init,
            }),
            update_config: self.update_config.map(|c| c.into_wire("update_config")).transpose()?,
            rollback_config: self.rollback_config.map(|c| c.into_wire("rollback_config")).transpose()?,
            mode: self.mode.unwrap_or_default(),
            placement: Some(crate::placement::from_file(self.spread, self.max_replicas_per_node, self.rebalance)?),
        })
    }
}

/// A duration as Docker writes it: `1h`, `1m30s`, `30s`, `500ms` (parts
/// added), in milliseconds.
pub fn duration_ms(text: &str) -> Result<u64> {
    let bad = || anyhow!("{text:?} is not a duration: expected e.g. 30s, 1m30s or 500ms");
    let (mut total, mut rest) = (0u64, text.trim());
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        total = value.checked_mul(scale).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        rest = &rest[unit..];
    }
    Ok(total)
}

/// A list of strings, or one string as a list of one.
pub fn strings(v: &Value) -> Result<Vec<String>> {
    match v {
        // As Docker's: an empty entrypoint clears the image's.
        Value::String(s) if s.is_empty() => Ok(vec![]),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Sequence(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => bail!("expected strings, got {other:?}"),
            })
            .collect(),
        other => bail!("expected a list of strings or one string, got {other:?}"),
    }
}

/// A seccomp mode or profile file (`default`, `unconfined` or a path
/// relative to `dir`) and a user namespace mode, as the wire carries them;
/// none when neither is given.
fn security(seccomp: Option<&str>, userns: Option<&str>, dir: &Path) -> Result<Option<pb::Security>> {
    if seccomp.is_none() && userns.is_none() {
        return Ok(None);
    }
    let seccomp = seccomp.map(|v| Seccomp::from_value(v, dir).map_err(|e| anyhow!(e))).transpose();
    let userns = Userns::parse("userns", userns.unwrap_or_default())?;
    Ok(Some(security_to_pb(&seccomp.context("security")?.unwrap_or_default(), userns)))
}

/// `--security-opt seccomp=...` and `--userns` as the wire carries them; a
/// profile file is read from the working directory.
pub fn security_flags(option: Option<&str>, userns: Option<&str>) -> Result<Option<pb::Security>> {
    if option.is_none() && userns.is_none() {
        return Ok(None);
    }
    let seccomp = option.map(|o| Seccomp::from_option(o, Path::new(".")).map_err(|e| anyhow!(e))).transpose();
    let userns = Userns::parse("--userns", userns.unwrap_or_default())?;
    Ok(Some(security_to_pb(&seccomp.context("--security-opt")?.unwrap_or_default(), userns)))
}

fn port_value(v: &Value) -> Result<pb::PortSpec> {
    match v {
        Value::String(s) => parse_publish(s),
        Value::Number(n) => Ok(pb::PortSpec { target: n.as_i64().unwrap_or(-1), ..Default::default() }),
        Value::Mapping(m) => {
            let mut port = pb::PortSpec::default();
            for (k, v) in m {
                let key = k.as_str().unwrap_or_default();
                let num = || v.as_i64().ok_or_else(|| anyhow!("{key}: expected a port number, got {v:?}"));
                match key {
                    "published" => port.published = num()?,
                    "target" => port.target = num()?,
                    "protocol" => {
                        port.protocol = v.as_str().ok_or_else(|| anyhow!("protocol: expected tcp or udp"))?.into()
                    }
                    "name" => port.name = v.as_str().ok_or_else(|| anyhow!("name: expected a port name"))?.into(),
                    other => {
                        bail!("unknown field `{other}`, expected one of `published`, `target`, `protocol`, `name`")
                    }
                }
            }
            Ok(port)
        }
        other => {
            bail!(
                "expected \"[NAME=]PUBLISHED:TARGET[/udp]\" or a mapping with target, published, protocol and name; got {other:?}"
            )
        }
    }
}

/// Validates a wire spec with the server's own rules (`berth_proto::convert`).
pub fn check(spec: &pb::ServiceSpec) -> Result<()> {
    berth_proto::model::ServiceSpec::try_from(spec.clone())
        .map(|_| ())
        .map_err(|e| anyhow!("invalid service spec: {e}"))
}

/// Parses `[NAME=]PUBLISHED:TARGET[/PROTOCOL]` or `[NAME=]TARGET[/PROTOCOL]`.
pub fn parse_publish(s: &str) -> Result<pb::PortSpec> {
    let (name, rest) = s.split_once('=').unwrap_or(("", s));
    let (ports, protocol) = rest.split_once('/').unwrap_or((rest, ""));
    let num = |p: &str| p.trim().parse::<i64>().map_err(|_| anyhow!("{s:?}: {p:?} is not a port number"));
    let (published, target) = match ports.split_once(':') {
        Some((p, t)) => (num(p)?, num(t)?),
        None => (0, num(ports)?),
    };
    Ok(pb::PortSpec { published, target, protocol: protocol.to_string(), name: name.to_string() })
}

/// Parses a memory size such as `64Mi`, naming the expected form on failure.
pub fn memory(s: &str) -> Result<i64> {
    parse_memory(s).and_then(|b| i64::try_from(b).ok()).ok_or_else(|| {
        anyhow!("{s:?} is not a size: expected bytes or a number with Ki, Mi, Gi, K, M or G, such as 64Mi")
    })
}

/// Parses `KEY=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| anyhow!("--env {s:?}: expected KEY=VALUE"))
}

/// `NAME=N` of `service scale`.
pub fn parse_scale(target: &str) -> Result<(String, i64)> {
    let (name, n) = target
        .split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| anyhow!("{target:?} is not NAME=REPLICAS (e.g. web=5)"))?;
    let n = n.trim().parse().map_err(|_| anyhow!("{target:?}: {n:?} is not a number of replicas"))?;
    Ok((name.to_owned(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_targets() {
        assert_eq!(parse_scale("web=5").unwrap(), ("web".into(), 5));
        assert!(parse_scale("web").unwrap_err().to_string().contains("NAME=REPLICAS"));
        assert!(parse_scale("web=lots").unwrap_err().to_string().contains("\"lots\" is not a number"));
        assert!(parse_scale("=3").is_err());
    }

    #[test]
    fn full_spec_file() {
        let specs = parse_file(
            "name: web\nimage: busybox:1.36\ncommand: [httpd, -f]\nreplicas: 3\nenv: {A: \"1\"}\n\
             resources: {cpus: 0.5, memory: 64Mi}\nports: [\"8080:80\", {target: 53, protocol: udp}]\nrestart: on-failure\n\
             constraints: [\"node.labels.zone == a\"]\n\
             ---\nname: db\nimage: busybox\n",
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(specs.len(), 2);
        let web = &specs[0];
        assert_eq!(web.replicas, 3);
        assert_eq!(web.constraints, ["node.labels.zone == a"]);
        assert_eq!(web.resources.as_ref().map(|r| r.memory_bytes), Some(64 << 20));
        assert_eq!(
            web.ports[0],
            pb::PortSpec { published: 8080, target: 80, protocol: String::new(), name: String::new() }
        );
        assert_eq!(
            web.ports[1],
            pb::PortSpec { published: 0, target: 53, protocol: "udp".into(), name: String::new() }
        );
        assert_eq!(specs[1].replicas, 1, "replicas default to 1");
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse_file(text, Path::new(".")).expect_err("must be rejected"))
    }

    #[test]
    fn unknown_and_malformed_fields_are_named() {
        assert!(err("name: web\nimage: x\nreplica: 3\n").contains("replica"));
        assert!(err("name: web\nimage: x\nresources: {cpu: 1}\n").contains("cpu"));
        assert!(err("name: web\nimage: x\nresources: {memory: 12Zi}\n").contains("resources.memory"));
        assert!(err("name: web\nimage: x\nports: [\"80:x\"]\n").contains("ports[0]"));
        assert!(err("name: web\nimage: x\nports: [{target: 80, host: 1}]\n").contains("host"));
        assert!(err("image: x\n").contains("name"));
        assert!(err("").contains("no service"));
        let second_bad = err("name: ok\nimage: busybox\n---\nname: bad\nimage: busybox\nreplicas: -2\n");
        assert!(second_bad.contains("document 2") && second_bad.contains("replicas"), "{second_bad}");
    }

    #[test]
    fn security_and_pids_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile =
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#;
        std::fs::write(dir.path().join("p.json"), profile).expect("write");
        let text = "name: a\nimage: busybox\nresources: {pids: 50}\nsecurity: {seccomp: p.json}\n\
                    ---\nname: b\nimage: busybox\nsecurity: {seccomp: unconfined}\n---\nname: c\nimage: busybox\n";
        let specs = parse_file(text, dir.path()).expect("valid");
        assert_eq!(specs[0].pids_limit, 50);
        assert_eq!(
            specs[0].security,
            Some(pb::Security { seccomp: String::new(), seccomp_profile: profile.into(), userns: String::new() })
        );
        assert_eq!(specs[1].security.as_ref().map(|s| s.seccomp.as_str()), Some("unconfined"));
        assert_eq!((specs[2].pids_limit, specs[2].security.clone()), (0, None));

        assert!(err("name: a\nimage: b\nsecurity: {seccomp: missing.json}\n").contains("missing.json"));
        assert!(err("name: a\nimage: b\nsecurity: {apparmor: x}\n").contains("apparmor"));
        assert!(err("name: a\nimage: b\nresources: {pids: -1}\n").contains("pids_limit"));
        std::fs::write(dir.path().join("docker.json"), r#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[]}"#)
            .expect("write");
        let docker = format!(
            "{:#}",
            parse_file("name: a\nimage: b\nsecurity: {seccomp: docker.json}\n", dir.path()).expect_err("refused")
        );
        assert!(docker.contains("archMap"), "{docker}");
        assert!(security_flags(Some("apparmor=x"), None).is_err());
        let flags = security_flags(Some("seccomp=unconfined"), None).expect("ok").expect("some");
        assert_eq!((flags.seccomp.as_str(), flags.userns.as_str()), ("unconfined", ""));
        assert_eq!(security_flags(None, None).expect("ok"), None);
    }

    #[test]
    fn entrypoint_user_and_workdir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "name: a\nimage: b\nentrypoint: [sh, -c]\nuser: 1000\nworkdir: /srv\n---\n\
                    name: c\nimage: b\nentrypoint: \"\"\nuser: www:adm\n---\nname: d\nimage: b\n";
        let specs = parse_file(text, dir.path()).expect("parses");
        let got = |s: &pb::ServiceSpec| {
            let o = s.overrides.clone().unwrap_or_default();
            (o.set_entrypoint, o.entrypoint, o.user, o.workdir)
        };
        assert_eq!(got(&specs[0]), (true, vec!["sh".into(), "-c".into()], "1000".into(), "/srv".into()));
        assert_eq!(got(&specs[1]), (true, vec![], "www:adm".into(), String::new()), "\"\" clears it");
        assert_eq!(got(&specs[2]), (false, vec![], String::new(), String::new()));
        let text = "name: a\nimage: b\nhostname: cache-1\nread_only: true\ncap_add: [net_admin]\ncap_drop: [ALL]\n";
        let o = parse_file(text, dir.path()).expect("parses")[0].overrides.clone().unwrap_or_default();
        assert_eq!((o.hostname.as_str(), o.read_only), ("cache-1", true));
        assert_eq!((o.cap_add, o.cap_drop), (vec!["net_admin".to_owned()], vec!["ALL".to_owned()]));
        assert!(err("name: a\nimage: b\ncap_add: [fly]\n").contains("cap_add[0]"));
        let text = "name: a\nimage: b\nstop_signal: int\nstop_grace_period: 1m30s\n---\nname: c\nimage: b\nstop_grace_period: 0\n";
        let specs = parse_file(text, dir.path()).expect("parses");
        let o: Vec<pb::Overrides> = specs.iter().map(|s| s.overrides.clone().unwrap_or_default()).collect();
        assert_eq!((o[0].stop_signal.as_str(), o[0].stop_grace_ms), ("int", Some(90_000)));
        assert_eq!(o[1].stop_grace_ms, Some(0), "0 s is a grace of its own, not the default");
        assert!(err("name: a\nimage: b\nstop_grace_period: soon\n").contains("stop_grace_period"));
        assert!(err("name: a\nimage: b\nstop_signal: SIGFOO\n").contains("stop_signal"));
        assert_eq!(duration_ms("500ms").unwrap(), 500);
        assert_eq!(duration_ms("1h2m3s").unwrap(), 3_723_000);
        for bad in ["", "10", "s", "1x", "1.5s"] {
            assert!(duration_ms(bad).is_err(), "{bad:?}");
        }
        let err = |t: &str| format!("{:#}", parse_file(t, dir.path()).unwrap_err());
        assert!(err("name: a\nimage: b\nworkdir: srv\n").contains("workdir"));
        assert!(err("name: a\nimage: b\nuser: 'a b'\n").contains("user"));
        assert!(err("name: a\nimage: b\nentrypoint: {x: 1}\n").contains("entrypoint"));
    }

    #[test]
    fn userns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs = parse_file("name: a\nimage: b\nuserns: auto\n", dir.path()).expect("parses");
        let security = specs[0].security.clone().expect("security");
        assert_eq!((security.seccomp.as_str(), security.userns.as_str()), ("", "auto"));
        let err = format!("{:#}", parse_file("name: a\nimage: b\nuserns: keep-id\n", dir.path()).unwrap_err());
        assert!(err.contains("userns") && err.contains("keep-id") && err.contains("host or auto"), "{err}");
        let flags = security_flags(None, Some("auto")).expect("ok").expect("some");
        assert_eq!((flags.seccomp.as_str(), flags.userns.as_str()), ("", "auto"));
        assert!(format!("{:#}", security_flags(None, Some("x")).unwrap_err()).contains("--userns"));
    }

    #[test]
    fn publish_flag() {
        assert_eq!(parse_publish("8080:80/udp").expect("ok").protocol, "udp");
        assert_eq!(parse_publish("80").expect("ok").published, 0);
        let named = parse_publish("dns=5353:53/udp").expect("ok");
        assert_eq!(
            (named.name.as_str(), named.published, named.target, named.protocol.as_str()),
            ("dns", 5353, 53, "udp")
        );
        assert!(parse_publish("a:80").is_err());
    }
}
