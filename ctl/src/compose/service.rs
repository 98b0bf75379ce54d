//! One Compose service as a berth service spec: the keys that matter for
//! running across hosts become the spec's fields; keys berth does not do
//! are told back with their path and why (`Report::unsupported`), and a
//! key that is not Compose's at all is an error. Names the file gives
//! (the service, its volumes, secrets and configs) are the stack's
//! (`STACK_NAME`) unless the file says they are external or named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use berth_proto::model::Seccomp;
use berth_proto::pb::cluster::{self as pb, health_check::Probe};
use serde_yaml_ng::{Mapping, Value};

use super::interpolate::{env_file, Vars};
use super::merge::{as_map, join, kind, scalar};
use super::Report;
use crate::health::duration_value;
use crate::mounts::{self, Parsed};
use crate::options::OptionsFile;
use crate::rollout::UpdateConfigFile;

/// What the whole file names, for its services to refer to.
pub struct Names<'a> {
    pub stack: &'a str,
    /// By the file's name: the name berth knows it by.
    pub volumes: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub configs: BTreeMap<String, String>,
    /// The file's services.
    pub services: BTreeSet<String>,
    /// Relative paths (env files, binds, seccomp profiles) are from here.
    pub dir: &'a Path,
    pub vars: &'a Vars,
}

/// Keys berth reads.
const SUPPORTED: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "healthcheck",
    "depends_on",
    "deploy",
    "volumes",
    "secrets",
    "configs",
    "user",
    "working_dir",
    "hostname",
    "stop_signal",
    "stop_grace_period",
    "read_only",
    "init",
    "tmpfs",
    "cap_add",
    "cap_drop",
    "labels",
    "extra_hosts",
    "dns",
    "dns_search",
    "dns_opt",
    "ulimits",
    "pull_policy",
    "restart",
    "networks",
    "security_opt",
];

/// Compose keys berth does not do, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("build", "berth runs images: build and push it, then name it in image"),
    ("network_mode", "every task joins the cluster's one overlay network"),
    ("privileged", "berth runs no privileged containers; grant what is needed with cap_add"),
    ("devices", "berth passes no host devices to containers"),
    ("device_cgroup_rules", "berth passes no host devices to containers"),
    ("gpus", "berth passes no host devices to containers"),
    ("pid", "each task has its own namespaces"),
    ("ipc", "each task has its own namespaces"),
    ("uts", "each task has its own namespaces"),
    ("userns_mode", "berth's user namespaces are per task (berth's own spec: userns: auto)"),
    ("cgroup", "each task has its own cgroup"),
    ("cgroupns_mode", "each task has its own cgroup"),
    ("cgroup_parent", "each node's agent chooses its cgroup parent"),
    ("container_name", "berth names each task SERVICE.SLOT.GENERATION"),
    ("links", "services find each other by name in DNS"),
    ("external_links", "services find each other by name in DNS"),
    ("domainname", "a task's domain is the cluster's"),
    ("mac_address", "the overlay gives addresses"),
    ("shm_size", "/dev/shm has the runtime's size"),
    ("sysctls", "not supported by berth's runtime"),
    ("logging", "each node's agent keeps its tasks' logs (berthctl service logs)"),
    ("platform", "nodes pull the image for their own platform"),
    ("profiles", "a stack deploys every service of its file"),
    ("stdin_open", "tasks run without a terminal"),
    ("tty", "tasks run without a terminal"),
    ("oom_kill_disable", "not supported by berth's runtime"),
    ("oom_score_adj", "not supported by berth's runtime"),
    ("group_add", "not supported by berth's runtime"),
    ("isolation", "not supported by berth's runtime"),
    ("runtime", "berth has one runtime"),
    ("storage_opt", "not supported by berth's runtime"),
    ("credential_spec", "not supported by berth's runtime"),
    ("blkio_config", "not supported by berth's runtime"),
    ("cpu_count", "set deploy.resources.limits.cpus"),
    ("cpu_percent", "set deploy.resources.limits.cpus"),
    ("cpu_shares", "set deploy.resources.limits.cpus"),
    ("cpu_period", "set deploy.resources.limits.cpus"),
    ("cpu_quota", "set deploy.resources.limits.cpus"),
    ("cpu_rt_runtime", "set deploy.resources.limits.cpus"),
    ("cpu_rt_period", "set deploy.resources.limits.cpus"),
    ("cpus", "set deploy.resources.limits.cpus"),
    ("cpuset", "set deploy.resources.limits.cpus"),
    ("mem_limit", "set deploy.resources.limits.memory"),
    ("mem_reservation", "set deploy.resources.limits.memory"),
    ("memswap_limit", "set deploy.resources.limits.memory"),
    ("mem_swappiness", "set deploy.resources.limits.memory"),
    ("pids_limit", "set deploy.resources.limits.pids"),
    ("scale", "set deploy.replicas"),
    ("volumes_from", "name the volumes in each service"),
    ("extends", "merge files with several -c instead"),
    ("develop", "berth has no development mode"),
    ("annotations", "not supported by berth's runtime"),
    ("attach", "follow logs with berthctl service logs"),
    ("label_file", "write the labels in the file"),
    ("post_start", "not supported by berth's runtime"),
    ("pre_stop", "not supported by berth's runtime"),
    ("provider", "berth runs containers only"),
    ("models", "berth runs containers only"),
    ("use_api_socket", "berth has no engine socket to give"),
    ("volume_driver", "berth's volumes are local to their node"),
];

/// `services.NAME` of the file as the spec of the stack's `STACK_NAME`.
pub fn spec(name: &str, service: &Value, names: &Names, report: &mut Report) -> Result<pb::ServiceSpec> {
    let at = format!("services.{name}");
    let Value::Mapping(m) = service else { bail!("{at}: expected a map of keys, got {}", kind(service)) };
    check_keys(m, &at, SUPPORTED, UNSUPPORTED, report)?;
    let key = |k: &str| m.get(k).filter(|v| !v.is_null());
    let path = |k: &str| format!("{at}.{k}");
    let text = |k: &str| -> Result<Option<String>> {
        key(k).map(|v| scalar(v).ok_or_else(|| anyhow!("{}: expected text, got {}", path(k), kind(v)))).transpose()
    };
    let flag = |k: &str| -> Result<bool> {
        match key(k) {
            None => Ok(false),
            Some(v) => boolean(v).ok_or_else(|| anyhow!("{}: expected true or false, got {v:?}", path(k))),
        }
    };
    let list = |k: &str| -> Result<Vec<String>> { key(k).map_or(Ok(vec![]), |v| strings(v, &path(k))) };

    let image = text("image")?.ok_or_else(|| anyhow!("{at}: no image (berth runs images; build is not supported)"))?;
    let entrypoint = key("entrypoint").map(|v| command(v, &path("entrypoint"))).transpose()?;
    let command = key("command").map(|v| command(v, &path("command"))).transpose()?.unwrap_or_default();
    let env = environment(m, &at, names, report)?;
    let mut ports = key("ports").map_or(Ok(vec![]), |v| ports(v, &path("ports"), report))?;
    for (i, item) in key("expose").map_or(Ok(vec![]), |v| strings(v, &path("expose")))?.iter().enumerate() {
        let (port, protocol) = item.split_once('/').unwrap_or((item, ""));
        let target: i64 = port.parse().map_err(|_| anyhow!("{}[{i}]: {item:?} is not PORT[/udp]", path("expose")))?;
        let same = |p: &pb::PortSpec| {
            p.target == target && p.protocol.trim_start_matches("tcp") == protocol.trim_start_matches("tcp")
        };
        if !ports.iter().any(same) {
            ports.push(pb::PortSpec { target, protocol: protocol.into(), ..Default::default() });
        }
    }
    let deploy = match key("deploy") {
        None => Deploy::default(),
        Some(d) => deploy(d, &path("deploy"), report)?,
    };
    let restart = match (&deploy.restart, text("restart")?) {
        (Some(policy), _) => policy.clone(),
        (None, None) => String::new(),
        (None, Some(r)) => match r.as_str() {
            "no" => "never".into(),
            "always" | "unless-stopped" => "always".into(),
            r if r.starts_with("on-failure") => "on-failure".into(),
            other => bail!(
                "{}: {other:?} is not a policy: expected no, always, on-failure or unless-stopped",
                path("restart")
            ),
        },
    };
    let restart_max_attempts = deploy.max_attempts.or_else(|| {
        let r = m.get("restart").and_then(Value::as_str)?;
        r.strip_prefix("on-failure:")?.parse().ok()
    });
    let (mounts, mut tmpfs) = volumes(key("volumes"), &path("volumes"), names, report)?;
    let tmpfs_key = match key("tmpfs") {
        None => vec![],
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        Some(Value::Sequence(items)) => items.clone(),
        Some(other) => bail!("{}: expected a path or a list of them, got {}", path("tmpfs"), kind(other)),
    };
    for (i, t) in tmpfs_key.iter().enumerate() {
        let Some(t) = t.as_str() else { bail!("{}[{i}]: expected a path", path("tmpfs")) };
        // `/run:size=64m,mode=1777`: the size is kept, the rest is the runtime's.
        let (target, opts) = t.split_once(':').unwrap_or((t, ""));
        let mut size_bytes = None;
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("size", s)) => size_bytes = Some(bytes(s).with_context(|| format!("{}[{i}]", path("tmpfs")))?),
                _ => report.unsupported.push(format!("{}[{i}]: {opt}: only size is supported", path("tmpfs"))),
            }
        }
        tmpfs.push(pb::Tmpfs { target: target.into(), size_bytes });
    }
    let secrets = refs(key("secrets"), &path("secrets"), &names.secrets, "/run/secrets/")?;
    let configs = refs(key("configs"), &path("configs"), &names.configs, "/")?;
    let mut labels = labels(key("labels"), &path("labels"))?;
    labels.extend(deploy.labels);
    let depends_on = depends_on(key("depends_on"), &path("depends_on"), names, report)?;
    if let Some(networks) = key("networks") {
        let named = as_map(networks, &path("networks"))?;
        if named.keys().any(|k| k.as_str() != Some("default")) {
            report.unsupported.push(format!(
                "{}: berth has one overlay network, where every service reaches every other; the networks are \
                 ignored",
                path("networks")
            ));
        }
    }
    let options = OptionsFile {
        labels: Some(labels),
        extra_hosts: key("extra_hosts").map(|v| as_map(v, &path("extra_hosts")).map(Value::Mapping)).transpose()?,
        dns: Some(list("dns")?),
        dns_search: Some(list("dns_search")?),
        dns_options: Some(list("dns_opt")?),
        ulimits: key("ulimits")
            .map(|v| serde_yaml_ng::from_value(v.clone()).with_context(|| path("ulimits")))
            .transpose()?,
        restart_max_attempts,
        restart_window: deploy.window,
        pull: match text("pull_policy")?.as_deref() {
            None => None,
            Some("always") => Some("always".into()),
            Some("never") => Some("never".into()),
            Some("missing" | "if_not_present") => Some("missing".into()),
            Some(other) => {
                report.unsupported.push(format!("{}: {other}: expected always, missing or never", path("pull_policy")));
                None
            }
        },
        ..OptionsFile::default()
    }
    .into_wire()
    .with_context(|| at.clone())?;
    let mut options = options.unwrap_or_default();
    options.tmpfs.append(&mut tmpfs);
    (options.mounts, options.secrets, options.configs, options.depends_on) = (mounts, secrets, configs, depends_on);
    let seccomp = security_opt(key("security_opt"), &path("security_opt"), names.dir, report)?;
    Ok(pb::ServiceSpec {
        name: format!("{}_{name}", names.stack),
        image,
        command,
        env: env.into_iter().collect(),
        replicas: deploy.replicas.unwrap_or(if deploy.mode == "global" { 0 } else { 1 }),
        resources: Some(pb::Resources { cpus: deploy.cpus, memory_bytes: deploy.memory }),
        ports,
        restart,
        constraints: deploy.constraints,
        pids_limit: deploy.pids,
        security: seccomp.map(|s| berth_proto::convert::security_to_pb(&s, Default::default())),
        overrides: Some(pb::Overrides {
            set_entrypoint: entrypoint.is_some(),
            entrypoint: entrypoint.unwrap_or_default(),
            user: text("user")?.unwrap_or_default(),
            workdir: text("working_dir")?.unwrap_or_default(),
            hostname: text("hostname")?.unwrap_or_default(),
            read_only: flag("read_only")?,
            cap_add: list("cap_add")?,
            cap_drop: list("cap_drop")?,
            stop_signal: text("stop_signal")?.unwrap_or_default(),
            stop_grace_ms: duration_value(key("stop_grace_period").cloned())
                .with_context(|| path("stop_grace_period"))?,
            health: key("healthcheck").map(|h| healthcheck(h, &path("healthcheck"), report)).transpose()?,
            options: Some(options).filter(|o| *o != pb::Options::default()),
            init: flag("init")?,
        }),
        update_config: deploy.update_config,
        rollback_config: deploy.rollback_config,
        mode: deploy.mode,
        placement: Some(deploy.placement),
    })
}

/// Tells unsupported keys, errs on unknown ones; `x-` keys are the file's own.
pub fn check_keys(
    m: &Mapping,
    at: &str,
    supported: &[&str],
    unsupported: &[(&str, &str)],
    report: &mut Report,
) -> Result<()> {
    for k in m.keys() {
        let Some(k) = k.as_str() else { bail!("{at}: {k:?} is not a key") };
        if k.starts_with("x-") || supported.contains(&k) {
            continue;
        }
        match unsupported.iter().find(|(u, _)| *u == k) {
            Some((_, why)) => report.unsupported.push(format!("{}: not supported: {why}", join(at, k))),
            None => bail!("{}: not a key Compose knows here (expected one of {})", join(at, k), supported.join(", ")),
        }
    }
    Ok(())
}

/// YAML 1.2 booleans, and the strings an interpolated value leaves.
fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" => Some(true),
            "false" | "no" | "off" | "n" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A list of strings, or one string as a list of one.
fn strings(v: &Value, at: &str) -> Result<Vec<String>> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| scalar(item).ok_or_else(|| anyhow!("{at}[{i}]: expected text, got {}", kind(item))))
            .collect(),
        other => Ok(vec![scalar(other).ok_or_else(|| anyhow!("{at}: expected text or a list, got {}", kind(other)))?]),
    }
}

/// `command`/`entrypoint`: a list as it is, a string split as a shell
/// would split it, without running one (quotes and backslashes; no `$`).
fn command(v: &Value, at: &str) -> Result<Vec<String>> {
    match v {
        Value::String(s) => split_words(s).with_context(|| at.to_owned()),
        other => strings(other, at),
    }
}

pub fn split_words(s: &str) -> Result<Vec<String>> {
    let (mut words, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => bail!("{s:?}: a ' without its closing '"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => bail!("{s:?}: a \" without its closing \""),
                        },
                        Some(c) => word.push(c),
                        None => bail!("{s:?}: a \" without its closing \""),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `env_file` then `environment` (which wins); a variable without a value
/// takes the project's, and is left out when it has none.
fn environment(m: &Mapping, at: &str, names: &Names, report: &mut Report) -> Result<Vec<(String, String)>> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let files = match m.get("env_file") {
        None | Some(Value::Null) => vec![],
        Some(Value::Sequence(items)) => items.clone(),
        Some(one) => vec![one.clone()],
    };
    for (i, f) in files.iter().enumerate() {
        let (file, required) = match f {
            Value::String(p) => (p.clone(), true),
            Value::Mapping(long) => {
                let file =
                    long.get("path").and_then(Value::as_str).ok_or_else(|| anyhow!("{at}.env_file[{i}]: no path"))?;
                (file.to_owned(), long.get("required").and_then(boolean).unwrap_or(true))
            }
            other => bail!("{at}.env_file[{i}]: expected a path, got {}", kind(other)),
        };
        let full = names.dir.join(&file);
        let text = match std::fs::read_to_string(&full) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => bail!("{at}.env_file[{i}]: cannot read {}: {e}", full.display()),
        };
        env.extend(env_file(&text, names.vars, &file, &mut report.warnings)?);
    }
    if let Some(v) = m.get("environment") {
        for (k, v) in as_map(v, &format!("{at}.environment"))? {
            let k = scalar(&k).unwrap_or_default();
            match v {
                Value::Null => match names.vars.get(&k) {
                    Some(value) => env.insert(k, value.clone()),
                    None => env.remove(&k),
                },
                v => env.insert(
                    k.clone(),
                    scalar(&v).ok_or_else(|| anyhow!("{at}.environment.{k}: expected text, got {}", kind(&v)))?,
                ),
            };
        }
    }
    Ok(env.into_iter().collect())
}

/// `ports`: `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]`, a number, or the
/// long form. Published ports answer on every node (Swarm's ingress).
fn ports(v: &Value, at: &str, report: &mut Report) -> Result<Vec<pb::PortSpec>> {
    let Value::Sequence(items) = v else { bail!("{at}: expected a list, got {}", kind(v)) };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let port = match item {
            Value::Number(n) => pb::PortSpec { target: n.as_i64().unwrap_or(-1), ..Default::default() },
            Value::String(s) => {
                let parts: Vec<&str> = s.rsplitn(3, ':').collect();
                let short = match parts.len() {
                    3 => {
                        report
                            .unsupported
                            .push(format!("{at}: {s}: a host address: published ports answer on every node's"));
                        format!("{}:{}", parts[1], parts[0])
                    }
                    _ => s.clone(),
                };
                if short.split(['/', ':']).any(|p| p.contains('-')) {
                    bail!("{at}: {s:?}: port ranges are not supported; list each port");
                }
                crate::spec::parse_publish(&short).with_context(|| at.clone())?
            }
            Value::Mapping(m) => {
                check_keys(
                    m,
                    &at,
                    &["target", "published", "protocol", "mode", "name", "app_protocol", "host_ip"],
                    &[],
                    report,
                )?;
                let number = |k: &str| -> Result<i64> {
                    match m.get(k) {
                        None | Some(Value::Null) => Ok(0),
                        Some(v) => scalar(v)
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| anyhow!("{at}.{k}: expected a port number, got {v:?}")),
                    }
                };
                if m.get("mode").and_then(Value::as_str) == Some("host") {
                    report.unsupported.push(format!("{at}.mode: host: published ports answer on every node (ingress)"));
                }
                if m.contains_key("host_ip") {
                    report.unsupported.push(format!("{at}.host_ip: published ports answer on every node's address"));
                }
                pb::PortSpec {
                    target: number("target")?,
                    published: number("published")?,
                    protocol: m.get("protocol").and_then(scalar).unwrap_or_default(),
                    name: m.get("name").and_then(scalar).unwrap_or_default(),
                }
            }
            other => bail!("{at}: expected \"[PUBLISHED:]TARGET[/udp]\" or a map, got {}", kind(other)),
        };
        out.push(port);
    }
    Ok(out)
}

/// What `deploy` sets.
#[derive(Default)]
struct Deploy {
    mode: String,
    replicas: Option<i64>,
    cpus: f64,
    memory: i64,
    pids: i64,
    constraints: Vec<String>,
    placement: pb::Placement,
    update_config: Option<pb::UpdateConfig>,
    rollback_config: Option<pb::UpdateConfig>,
    restart: Option<String>,
    max_attempts: Option<u32>,
    window: Option<Value>,
    labels: BTreeMap<String, String>,
}

fn deploy(v: &Value, at: &str, report: &mut Report) -> Result<Deploy> {
    let Value::Mapping(m) = v else { bail!("{at}: expected a map, got {}", kind(v)) };
    let keys = [
        "mode",
        "replicas",
        "resources",
        "placement",
        "update_config",
        "rollback_config",
        "restart_policy",
        "labels",
        "endpoint_mode",
    ];
    check_keys(m, at, &keys, &[], report)?;
    let mut d = Deploy::default();
    let sub = |k: &str| m.get(k).filter(|v| !v.is_null());
    if let Some(mode) = sub("mode") {
        d.mode = match scalar(mode).as_deref() {
            Some(mode @ ("replicated" | "global")) => mode.to_owned(),
            Some(job @ ("replicated-job" | "global-job")) => bail!("{at}.mode: {job}: berth runs services, not jobs"),
            _ => bail!("{at}.mode: expected replicated or global, got {mode:?}"),
        };
    }
    if let Some(r) = sub("replicas") {
        d.replicas = Some(
            scalar(r)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("{at}.replicas: expected a number, got {r:?}"))?,
        );
    }
    if let Some(Value::Mapping(res)) = sub("resources") {
        check_keys(res, &format!("{at}.resources"), &["limits", "reservations"], &[], report)?;
        // berth reserves what it limits: the limits, else the reservations.
        let limits = res.get("limits").filter(|l| !l.is_null());
        let reservations = res.get("reservations").filter(|l| !l.is_null());
        for (name, block) in [("limits", limits), ("reservations", reservations)] {
            let Some(block) = block else { continue };
            let at = format!("{at}.resources.{name}");
            let Value::Mapping(b) = block else { bail!("{at}: expected a map") };
            check_keys(
                b,
                &at,
                &["cpus", "memory", "pids"],
                &[
                    ("devices", "berth passes no host devices"),
                    ("generic_resources", "berth schedules by CPU and memory"),
                ],
                report,
            )?;
            let taken = name == "limits" || limits.is_none();
            if !taken {
                report.warnings.push(format!("{at}: berth reserves what it limits; the limits are used for both"));
                continue;
            }
            if let Some(c) = b.get("cpus") {
                d.cpus = scalar(c)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("{at}.cpus: expected a number such as 0.5, got {c:?}"))?;
            }
            if let Some(mem) = b.get("memory") {
                let text = scalar(mem).ok_or_else(|| anyhow!("{at}.memory: expected a size such as 50M"))?;
                d.memory = i64::try_from(bytes(&text).with_context(|| format!("{at}.memory"))?).unwrap_or(i64::MAX);
            }
            if let Some(p) = b.get("pids") {
                d.pids =
                    scalar(p).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("{at}.pids: expected a number"))?;
            }
        }
    }
    if let Some(p) = sub("placement") {
        let Value::Mapping(p) = p else { bail!("{at}.placement: expected a map") };
        check_keys(
            p,
            &format!("{at}.placement"),
            &["constraints", "preferences", "max_replicas_per_node"],
            &[],
            report,
        )?;
        let constraints =
            p.get("constraints").map_or(Ok(vec![]), |c| strings(c, &format!("{at}.placement.constraints")))?;
        // Swarm's node.hostname is berth's node.name.
        d.constraints = constraints.into_iter().map(|c| c.replacen("node.hostname", "node.name", 1)).collect();
        if let Some(Value::Sequence(prefs)) = p.get("preferences") {
            for (i, pref) in prefs.iter().enumerate() {
                match pref.get("spread").and_then(Value::as_str) {
                    Some(label) => d.placement.spread.push(label.to_owned()),
                    None => bail!("{at}.placement.preferences[{i}]: expected {{spread: node.labels.KEY}}"),
                }
            }
        }
        if let Some(n) = p.get("max_replicas_per_node") {
            d.placement.max_replicas_per_node = Some(
                scalar(n)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("{at}.placement.max_replicas_per_node: expected a number"))?,
            );
        }
    }
    for (k, out) in [("update_config", &mut d.update_config), ("rollback_config", &mut d.rollback_config)] {
        if let Some(c) = sub(k) {
            let file: UpdateConfigFile = serde_yaml_ng::from_value(c.clone()).with_context(|| format!("{at}.{k}"))?;
            *out = Some(file.into_wire(&format!("{at}.{k}"))?);
        }
    }
    if let Some(r) = sub("restart_policy") {
        let Value::Mapping(r) = r else { bail!("{at}.restart_policy: expected a map") };
        let at = format!("{at}.restart_policy");
        check_keys(r, &at, &["condition", "delay", "max_attempts", "window"], &[], report)?;
        d.restart = Some(match r.get("condition").and_then(scalar).as_deref() {
            None | Some("any") => "always".into(),
            Some("on-failure") => "on-failure".into(),
            Some("none") => "never".into(),
            Some(other) => bail!("{at}.condition: {other:?}: expected none, on-failure or any"),
        });
        if r.contains_key("delay") {
            report
                .unsupported
                .push(format!("{at}.delay: a node restarts a task after an exponential backoff of its own"));
        }
        if let Some(n) = r.get("max_attempts") {
            d.max_attempts = Some(
                scalar(n)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("{at}.max_attempts: expected a number"))?,
            );
        }
        d.window = r.get("window").cloned();
    }
    d.labels = labels(sub("labels"), &format!("{at}.labels"))?;
    Ok(d)
}

/// Labels in either form, `null` values as empty ones.
fn labels(v: Option<&Value>, at: &str) -> Result<BTreeMap<String, String>> {
    let Some(v) = v else { return Ok(BTreeMap::new()) };
    as_map(v, at)?
        .into_iter()
        .map(|(k, v)| {
            let k = scalar(&k).unwrap_or_default();
            let v = if v.is_null() { Some(String::new()) } else { scalar(&v) };
            Ok((k.clone(), v.ok_or_else(|| anyhow!("{at}.{k}: expected text"))?))
        })
        .collect()
}

/// A size as Compose writes one: `512`, `50m`, `1.5GB`, `64MiB` (binary).
pub fn bytes(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => bail!("{text:?} is not a size: expected bytes or a number with k, m, g or t, such as 50m"),
    };
    let n: f64 = num.parse().map_err(|_| anyhow!("{text:?} is not a size such as 50m"))?;
    Ok((n * scale as f64).round() as u64)
}

/// Volumes: a named one is the stack's (`STACK_NAME`) unless the file's
/// top-level `volumes` says external or names it; a relative bind is from
/// the project's directory, as Compose resolves it.
fn volumes(
    v: Option<&Value>,
    at: &str,
    names: &Names,
    report: &mut Report,
) -> Result<(Vec<pb::Mount>, Vec<pb::Tmpfs>)> {
    let Some(v) = v else { return Ok((vec![], vec![])) };
    let Value::Sequence(items) = v else { bail!("{at}: expected a list, got {}", kind(v)) };
    let mut parsed = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut item = item.clone();
        if let Value::Mapping(m) = &mut item {
            for (k, why) in
                [("consistency", "not supported"), ("bind", "binds take no options"), ("image", "not supported")]
            {
                if m.remove(k).is_some() {
                    report.unsupported.push(format!("{at}[{i}].{k}: {why}"));
                }
            }
            if let Some(Value::Mapping(vol)) = m.get_mut("volume") {
                for k in ["nocopy", "subpath", "labels"] {
                    if vol.remove(k).is_some() {
                        report.unsupported.push(format!("{at}[{i}].volume.{k}: not supported"));
                    }
                }
            }
            if m.get("tmpfs").and_then(|t| t.get("mode")).is_some() {
                report.unsupported.push(format!("{at}[{i}].tmpfs.mode: not supported"));
                if let Some(Value::Mapping(t)) = m.get_mut("tmpfs") {
                    t.remove("mode");
                }
            }
        }
        if let Value::String(s) = &item {
            if !s.contains(':') {
                bail!("{at}[{i}]: {s:?} is an anonymous volume: name it (data:{s}); berth keeps no anonymous volumes");
            }
        }
        let p = mounts::entry(i, &item).map_err(|e| anyhow!("{at}{}", e.to_string().trim_start_matches("volumes")))?;
        parsed.push(match p {
            Parsed::Mount(mut m) if m.r#type == "volume" => {
                m.source = names.volumes.get(&m.source).cloned().ok_or_else(|| {
                    anyhow!("{at}[{i}]: the volume {:?} is not in the file's top-level volumes", m.source)
                })?;
                Parsed::Mount(m)
            }
            Parsed::Mount(mut m) => {
                let source = m
                    .source
                    .strip_prefix('~')
                    .map_or(m.source.clone(), |rest| std::env::var("HOME").unwrap_or_default() + rest);
                let path = names.dir.join(&source);
                m.source = clean(&path);
                Parsed::Mount(m)
            }
            tmpfs => tmpfs,
        });
    }
    Ok(mounts::split(parsed))
}

/// `path` without `.` and `..` parts (the node checks that it exists).
fn clean(path: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(p) => parts.push(p),
            _ => {}
        }
    }
    let joined: std::path::PathBuf = parts.iter().collect();
    format!("/{}", joined.display())
}

/// Secrets or configs: the name berth knows, at the file name the service
/// asked for (`/run/secrets/db_password` for `db_password`, whatever the
/// stack calls it).
fn refs(v: Option<&Value>, at: &str, known: &BTreeMap<String, String>, _dir: &str) -> Result<Vec<pb::FileRef>> {
    let Some(v) = v else { return Ok(vec![]) };
    let Value::Sequence(items) = v else { bail!("{at}: expected a list, got {}", kind(v)) };
    let field = at.rsplit('.').next().unwrap_or(at);
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut r = crate::files::entry(field, i, item)
                .map_err(|e| anyhow!("{at}{}", e.to_string().trim_start_matches(field)))?;
            let name = std::mem::take(&mut r.source);
            r.source = known
                .get(&name)
                .cloned()
                .ok_or_else(|| anyhow!("{at}[{i}]: {name:?} is not in the file's top-level {field}"))?;
            if r.target.is_empty() {
                r.target = name;
            }
            Ok(r)
        })
        .collect()
}

/// `depends_on` as berth's dependencies on the stack's services.
fn depends_on(v: Option<&Value>, at: &str, names: &Names, report: &mut Report) -> Result<Vec<pb::Dependency>> {
    let Some(v) = v else { return Ok(vec![]) };
    let mut out = Vec::new();
    for (service, long) in as_map(v, at)? {
        let service = scalar(&service).unwrap_or_default();
        let at = format!("{at}.{service}");
        if let Value::Mapping(l) = &long {
            check_keys(l, &at, &["condition", "restart", "required"], &[], report)?;
        }
        let required = long.get("required").and_then(boolean).unwrap_or(true);
        if !names.services.contains(&service) {
            match required {
                true => bail!("{at}: {service:?} is not a service of the file"),
                false => continue,
            }
        }
        if long.get("restart").and_then(boolean) == Some(true) {
            report.unsupported.push(format!("{at}.restart: berth restarts no task when another restarts"));
        }
        let condition = match long.get("condition").and_then(Value::as_str) {
            None | Some("service_started") => "started",
            Some("service_healthy") => "healthy",
            Some("service_completed_successfully") => {
                // Waiting for it to start would wait for ever once it has run.
                report.unsupported.push(format!(
                    "{at}.condition: service_completed_successfully: berth has no run-to-completion jobs; the \
                     dependency is left out"
                ));
                continue;
            }
            Some(other) => bail!("{at}.condition: {other:?}: expected service_started or service_healthy"),
        };
        out.push(pb::Dependency { service: format!("{}_{service}", names.stack), condition: condition.into() });
    }
    Ok(out)
}

/// `healthcheck`: `test` as `[CMD, ...]`, `[CMD-SHELL, "..."]`, a string
/// (a shell's) or `[NONE]`; its timings; `disable`.
fn healthcheck(v: &Value, at: &str, report: &mut Report) -> Result<pb::HealthCheck> {
    let Value::Mapping(m) = v else { bail!("{at}: expected a map, got {}", kind(v)) };
    check_keys(
        m,
        at,
        &["test", "interval", "timeout", "retries", "start_period", "disable"],
        &[("start_interval", "probes keep their interval while starting")],
        report,
    )?;
    let shell = |cmd: String| Probe::Exec(pb::ExecProbe { command: vec!["/bin/sh".into(), "-c".into(), cmd] });
    let disabled = m.get("disable").and_then(boolean) == Some(true);
    let probe = match m.get("test") {
        _ if disabled => Some(Probe::Disable(true)),
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(shell(s.clone())),
        Some(test) => {
            let words = strings(test, &format!("{at}.test"))?;
            match words.split_first() {
                Some((first, [])) if first == "NONE" => Some(Probe::Disable(true)),
                Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                    Some(Probe::Exec(pb::ExecProbe { command: rest.to_vec() }))
                }
                Some((first, rest)) if first == "CMD-SHELL" && !rest.is_empty() => Some(shell(rest.join(" "))),
                _ => bail!("{at}.test: expected [CMD, ...], [CMD-SHELL, COMMAND], [NONE] or a string"),
            }
        }
    };
    let ms = |k: &str| duration_value(m.get(k).cloned()).with_context(|| format!("{at}.{k}"));
    Ok(pb::HealthCheck {
        probe,
        interval_ms: ms("interval")?,
        timeout_ms: ms("timeout")?,
        retries: m
            .get("retries")
            .map(|r| scalar(r).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("{at}.retries: expected a number")))
            .transpose()?,
        start_period_ms: ms("start_period")?,
    })
}

/// `security_opt`: `seccomp=unconfined` or a profile file; nothing else.
fn security_opt(v: Option<&Value>, at: &str, dir: &Path, report: &mut Report) -> Result<Option<Seccomp>> {
    let Some(v) = v else { return Ok(None) };
    let mut seccomp = None;
    for (i, opt) in strings(v, at)?.iter().enumerate() {
        match opt.split_once(['=', ':']) {
            Some(("seccomp", _)) => {
                seccomp = Some(Seccomp::from_option(opt, dir).map_err(|e| anyhow!("{at}[{i}]: {e}"))?);
            }
            _ => report.unsupported.push(format!("{at}[{i}]: {opt}: only seccomp=... is supported")),
        }
    }
    Ok(seccomp)
}
