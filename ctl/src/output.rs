//! Output for people (aligned tables) and for scripts (`-o json`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::model::{format_memory, Endpoint, Mode, NodeInfo, Service, TaskInfo, UpdateConfig};
use berth_proto::pb::cluster as pb;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Left-aligned columns separated by three spaces, header first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}   ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn ports(s: &Service) -> String {
    let list: Vec<String> = s
        .spec
        .ports
        .iter()
        .map(|p| {
            let name = p.name.as_ref().map(|n| format!("{n}=")).unwrap_or_default();
            match p.published {
                Some(pp) => format!("{name}{pp}:{}/{}", p.target, p.protocol),
                None => format!("{name}{}/{}", p.target, p.protocol),
            }
        })
        .collect();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

pub fn services(list: &[Service], format: Format) -> String {
    match format {
        Format::Json => pretty(&json!(list)),
        Format::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.spec.name.clone(),
                        // The tag it was pinned from (inspect shows the digest).
                        s.spec.image.split('@').next().unwrap_or_default().to_owned(),
                        match s.spec.mode {
                            Mode::Global => "global".into(),
                            Mode::Replicated => s.spec.replicas.to_string(),
                        },
                        ports(s),
                        s.version.to_string(),
                    ]
                })
                .collect();
            table(&["NAME", "IMAGE", "REPLICAS", "PORTS", "VERSION"], &rows)
        }
    }
}

/// A service's spec, and its endpoints: the replicas that answer for it
/// now, with the name each has in DNS (`SLOT.SERVICE`, in the cluster
/// domain).
pub fn service(s: &Service, endpoints: &[Endpoint], format: Format) -> String {
    if format == Format::Json {
        let mut v = json!(s);
        v["endpoints"] = json!(endpoints);
        return pretty(&v);
    }
    let spec = &s.spec;
    let mut out = String::new();
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{:<10} {v}", format!("{k}:"));
    };
    kv("Name", spec.name.clone());
    kv("Version", s.version.to_string());
    kv("Image", spec.image.clone());
    if let Some(entrypoint) = &spec.overrides.entrypoint {
        kv("Entrypoint", if entrypoint.is_empty() { "(none)".into() } else { shell_words(entrypoint) });
    }
    kv("Command", if spec.command.is_empty() { "(image default)".into() } else { shell_words(&spec.command) });
    let o = &spec.overrides;
    for (key, value) in [("User", &o.user), ("Workdir", &o.workdir), ("Hostname", &o.hostname)] {
        if let Some(value) = value {
            kv(key, value.clone());
        }
    }
    if o.read_only {
        kv("Root", "read-only".into());
    }
    if let Some(signal) = &o.stop_signal {
        kv("Stop with", signal.clone());
    }
    if let Some(ms) = o.stop_grace_ms {
        kv("Stop grace", format!("{:.1}s", ms as f64 / 1000.0));
    }
    if !o.health.is_unset() {
        kv("Health", health(&o.health));
    }
    let opts = &o.options;
    let joined = |items: Vec<String>| items.join(", ");
    for (key, value) in [
        ("Labels", joined(opts.labels.iter().map(|(k, v)| format!("{k}={v}")).collect())),
        ("Hosts", joined(opts.extra_hosts.iter().map(|(n, a)| format!("{n}:{a}")).collect())),
        ("DNS", joined(opts.dns.iter().map(ToString::to_string).collect())),
        ("DNS search", opts.dns_search.join(", ")),
        ("DNS opts", opts.dns_options.join(", ")),
        ("Ulimits", joined(opts.ulimits.iter().map(|(k, u)| format!("{k}={}:{}", u.soft, u.hard)).collect())),
        (
            "Tmpfs",
            joined(
                opts.tmpfs
                    .iter()
                    .map(|t| match t.size_bytes {
                        Some(b) => format!("{} ({})", t.target, format_memory(b)),
                        None => t.target.clone(),
                    })
                    .collect(),
            ),
        ),
        (
            "Mounts",
            joined(
                opts.mounts
                    .iter()
                    .map(|m| {
                        let flags = [(m.readonly, "read-only"), (m.pin, "pinned"), (m.exclusive, "exclusive")];
                        let flags: Vec<&str> = flags.iter().filter(|(on, _)| *on).map(|(_, f)| *f).collect();
                        let flags = if flags.is_empty() { String::new() } else { format!(" ({})", flags.join(", ")) };
                        format!("{} {} -> {}{flags}", m.kind, m.source, m.target)
                    })
                    .collect(),
            ),
        ),
        ("Secrets", files(&opts.secrets, berth_proto::model::FileKind::Secret)),
        ("Configs", files(&opts.configs, berth_proto::model::FileKind::Config)),
    ] {
        if !value.is_empty() {
            kv(key, value);
        }
    }
    if opts.pull != berth_proto::model::Pull::Missing {
        kv("Pull", opts.pull.to_string());
    }
    if let Some(n) = opts.restart_max_attempts {
        let window = opts.restart_window_ms.map_or(String::new(), |ms| format!(" within {}s", ms as f64 / 1000.0));
        kv("Restarts", format!("at most {n}{window}"));
    }
    for (key, caps) in [("Cap add", &o.cap_add), ("Cap drop", &o.cap_drop)] {
        if !caps.is_empty() {
            kv(key, caps.join(", "));
        }
    }
    if spec.userns == berth_proto::model::Userns::Auto {
        kv("Userns", "auto (a user namespace per task)".into());
    }
    match spec.mode {
        Mode::Global => kv("Mode", "global (a task on every eligible node)".into()),
        Mode::Replicated => kv("Replicas", spec.replicas.to_string()),
    }
    let p = &spec.placement;
    if !p.spread.is_empty() {
        kv("Spread", p.spread.iter().map(|k| format!("node.labels.{k}")).collect::<Vec<_>>().join(", "));
    }
    if let Some(n) = p.max_per_node {
        kv("Per node", format!("at most {n}"));
    }
    if !p.rebalance {
        kv("Rebalance", "off".into());
    }
    kv("Restart", spec.restart.to_string());
    if let Some(r) = &s.rollout {
        let why = if r.message.is_empty() { String::new() } else { format!(": {}", r.message) };
        kv("Rollout", format!("{} (version {}){why}", r.state, r.version));
    }
    for (key, config, default) in [
        ("Update", &spec.update_config, UpdateConfig::UPDATE),
        ("Rollback", &spec.rollback_config, UpdateConfig::ROLLBACK),
    ] {
        if *config != default {
            kv(key, update_config(config));
        }
    }
    if !spec.constraints.is_empty() {
        kv("Constraints", spec.constraints.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    }
    let cpus = if spec.resources.cpu_millis == 0 {
        "-".into()
    } else {
        format!("{}", spec.resources.cpu_millis as f64 / 1000.0)
    };
    let mem = if spec.resources.memory_bytes == 0 { "-".into() } else { format_memory(spec.resources.memory_bytes) };
    kv("Resources", format!("cpus {cpus}, memory {mem}"));
    kv("Ports", ports(s));
    if spec.env.is_empty() {
        kv("Env", "-".into());
    } else {
        let _ = writeln!(out, "Env:");
        for (k, v) in &spec.env {
            let _ = writeln!(out, "  {k}={v}");
        }
    }
    if endpoints.is_empty() {
        let _ = writeln!(out, "{:<11}- (no replica runs)", "Endpoints:");
    } else {
        let _ = writeln!(out, "Endpoints:");
        let rows: Vec<Vec<String>> = endpoints
            .iter()
            .map(|e| {
                vec![
                    format!("{}.{}", e.slot, spec.name),
                    e.address.to_string(),
                    e.node_name.clone().unwrap_or_else(|| "-".into()),
                    e.task.clone(),
                ]
            })
            .collect();
        for line in table(&["DNS", "ADDRESS", "NODE", "TASK"], &rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

pub fn tasks(list: &[TaskInfo], format: Format, now: SystemTime) -> String {
    match format {
        Format::Json => pretty(&json!(list)),
        Format::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|i| {
                    let t = &i.task;
                    vec![
                        t.id.clone(),
                        // The tag it was pinned from (-o json has the digest).
                        t.spec.image.split('@').next().unwrap_or_default().to_owned(),
                        i.node_name.clone().unwrap_or_else(|| "-".into()),
                        t.desired.to_string(),
                        match t.health {
                            // As `docker ps` shows it: running (healthy).
                            Some(health) => format!("{} ({health})", t.state),
                            None => t.state.to_string(),
                        },
                        ago(t.since_ms, now),
                        t.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                        t.restarts.to_string(),
                        t.address.map_or_else(|| "-".into(), |a| a.to_string()),
                        if t.message.is_empty() { "-".into() } else { t.message.clone() },
                    ]
                })
                .collect();
            table(
                &["TASK", "IMAGE", "NODE", "DESIRED", "STATE", "SINCE", "EXIT", "RESTARTS", "ADDRESS", "MESSAGE"],
                &rows,
            )
        }
    }
}

/// An update or rollback config on one line.
fn update_config(c: &UpdateConfig) -> String {
    let batch = match c.parallelism {
        0 => "all".to_owned(),
        n => n.to_string(),
    };
    format!(
        "{batch} at a time, {}, delay {}s, monitor {}s, on failure {} (tolerating {:.0}%)",
        c.order,
        c.delay_ms as f64 / 1000.0,
        c.monitor_ms as f64 / 1000.0,
        c.failure_action,
        c.max_failure_ratio * 100.0
    )
}

/// A spec's health check on one line: `tcp :6379 every 1s, timeout 2s`.
fn health(h: &berth_proto::model::Health) -> String {
    let mut parts = vec![h.probe.as_ref().map_or_else(|| "the image's test".to_owned(), ToString::to_string)];
    let secs = |ms: u64| format!("{}s", ms as f64 / 1000.0);
    for (label, ms) in [("every", h.interval_ms), ("timeout", h.timeout_ms), ("start period", h.start_period_ms)] {
        if let Some(ms) = ms {
            parts.push(format!("{label} {}", secs(ms)));
        }
    }
    if let Some(r) = h.retries {
        parts.push(format!("{r} retries"));
    }
    parts.join(", ")
}

/// A service's secrets or configs as `service inspect` shows them: where
/// each is and whose, never a value.
fn files(refs: &[berth_proto::model::FileRef], kind: berth_proto::model::FileKind) -> String {
    let shown: Vec<String> = refs
        .iter()
        .map(|r| format!("{} -> {} ({}:{}, {:04o})", r.source, r.path(kind), r.uid, r.gid, r.mode))
        .collect();
    shown.join(", ")
}

/// How long ago a Unix-ms time was, the way people say it: `12s ago`.
pub fn ago(at_ms: u64, now: SystemTime) -> String {
    let Ok(now) = now.duration_since(UNIX_EPOCH) else { return "-".into() };
    if at_ms == 0 {
        return "-".into();
    }
    let secs = (now.as_millis() as u64).saturating_sub(at_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn cpus(millis: u64) -> String {
    format!("{}", millis as f64 / 1000.0)
}

pub fn nodes(list: &[NodeInfo], format: Format) -> String {
    match format {
        Format::Json => pretty(&json!(list)),
        Format::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|i| {
                    let n = &i.node;
                    vec![
                        n.name.clone(),
                        n.address.clone(),
                        n.status.to_string(),
                        n.availability.to_string(),
                        format!("{}/{}", cpus(i.allocated.cpu_millis), cpus(n.capacity.cpu_millis)),
                        format!(
                            "{}/{}",
                            format_memory(i.allocated.memory_bytes),
                            format_memory(n.capacity.memory_bytes)
                        ),
                        i.tasks.to_string(),
                        n.subnet.map_or_else(|| "-".into(), |s| s.to_string()),
                    ]
                })
                .collect();
            table(&["NAME", "ADDRESS", "STATUS", "AVAILABILITY", "CPUS", "MEMORY", "TASKS", "SUBNET"], &rows)
        }
    }
}

pub fn node(i: &NodeInfo, format: Format) -> String {
    if format == Format::Json {
        return pretty(&json!(i));
    }
    let n = &i.node;
    let mut out = String::new();
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{:<14}{v}", format!("{k}:"));
    };
    kv("Name", n.name.clone());
    kv("ID", n.id.clone());
    kv("Address", n.address.clone());
    kv("Status", n.status.to_string());
    kv("Availability", n.availability.to_string());
    kv("CPUs", format!("{} of {} allocated", cpus(i.allocated.cpu_millis), cpus(n.capacity.cpu_millis)));
    kv(
        "Memory",
        format!("{} of {} allocated", format_memory(i.allocated.memory_bytes), format_memory(n.capacity.memory_bytes)),
    );
    kv("Tasks", i.tasks.to_string());
    kv("Subnet", n.subnet.map_or_else(|| "-".into(), |s| s.to_string()));
    kv("WireGuard", n.overlay.as_ref().map_or_else(|| "-".into(), |o| format!("{} at {}", o.public_key, o.endpoint)));
    let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    kv("Labels", if labels.is_empty() { "-".into() } else { labels.join(", ") });
    out
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| if a.is_empty() || a.contains(char::is_whitespace) { format!("{a:?}") } else { a.clone() })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cluster_status(s: &pb::ClusterStatusReply, format: Format) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    if format == Format::Json {
        let members: Vec<Value> = s
            .members
            .iter()
            .map(|m| json!({"id": m.id, "address": m.address, "role": m.role, "matched_index": m.matched_index}))
            .collect();
        return pretty(&json!({
            "answered_by": s.answered_by,
            "leader_id": s.leader_id,
            "term": s.term,
            "commit_index": s.commit_index,
            "applied_index": s.applied_index,
            "last_log_index": s.last_log_index,
            "snapshot_index": s.snapshot_index,
            "members": members,
            "warnings": voter_warnings(s),
            "figures": s.figures.as_ref().map(|f| json!({
                "services": f.services,
                "tasks": f.tasks.iter().collect::<BTreeMap<_, _>>(),
                "nodes": f.nodes.iter().collect::<BTreeMap<_, _>>(),
                "leader_changes": f.leader_changes,
                "proposals": f.proposals,
                "commit_ms_mean": f.commit_ms_mean,
                "snapshot_bytes": f.snapshot_bytes,
                "watch_streams": f.watch_streams,
                "heartbeats": f.heartbeats,
            })),
        }));
    }
    let mut out = format!(
        "Leader: {}   Term: {}   Commit: {}   Applied: {}   Last log: {}   Snapshot: {}\n\n",
        s.leader_id.map_or_else(|| "none".to_string(), |l| l.to_string()),
        s.term,
        opt(s.commit_index),
        opt(s.applied_index),
        opt(s.last_log_index),
        opt(s.snapshot_index),
    );
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| vec![m.id.to_string(), m.address.clone(), m.role.clone(), opt(m.matched_index)])
        .collect();
    out.push_str(&table(&["ID", "ADDRESS", "ROLE", "MATCHED"], &rows));
    for w in voter_warnings(s) {
        out.push_str(&format!("\nWARNING: {w}\n"));
    }
    if let Some(f) = &s.figures {
        out.push('\n');
        out.push_str(&figures(f, s.answered_by));
    }
    out
}

/// What is wrong with the number of voters: fewer than three survive no
/// loss, and an even number survives no more losses than one fewer does.
fn voter_warnings(s: &pb::ClusterStatusReply) -> Vec<String> {
    let voters = s.members.iter().filter(|m| m.role != "learner").count();
    let mut out = Vec::new();
    if voters < 3 {
        out.push(format!(
            "{voters} voting server{}: losing one stops the cluster; run three or five (`berthctl cluster join-token server`)",
            if voters == 1 { "" } else { "s" }
        ));
    } else if voters % 2 == 0 {
        out.push(format!(
            "{voters} voting servers: an even number tolerates no more failures than {} do, and needs one more for \
             every write; add or remove one",
            voters - 1
        ));
    }
    out
}

/// The cluster's counts, then the answering server's work.
fn figures(f: &pb::Figures, server: u64) -> String {
    // Non-zero counts, in a fixed order.
    let some = |m: &std::collections::HashMap<String, u64>| {
        let sorted: BTreeMap<&String, &u64> = m.iter().filter(|(_, n)| **n > 0).collect();
        let parts: Vec<String> = sorted.iter().map(|(k, n)| format!("{n} {k}")).collect();
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    };
    let snapshot = match f.snapshot_bytes {
        0 => "none built".to_string(),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    };
    format!(
        "Services: {}   Tasks: {}   Nodes: {}\n\
         Server {server} since it started: {} proposals (commit {:.1} ms mean), {} leader changes seen, \
         {} agent watches, {} heartbeats, last snapshot {snapshot}\n",
        f.services,
        some(&f.tasks),
        some(&f.nodes),
        f.proposals,
        f.commit_ms_mean,
        f.leader_changes,
        f.watch_streams,
        f.heartbeats,
    )
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn cluster_status_shows_the_main_figures_and_none_from_an_older_server() {
        let mut s = pb::ClusterStatusReply { answered_by: 2, leader_id: Some(2), term: 3, ..Default::default() };
        let older = cluster_status(&s, Format::Table);
        assert!(!older.contains("Services:"), "{older}");
        s.figures = Some(pb::Figures {
            services: 2,
            tasks: [("running".to_string(), 5), ("pending".to_string(), 1), ("failed".to_string(), 0)].into(),
            nodes: [("ready".to_string(), 3), ("down".to_string(), 0)].into(),
            leader_changes: 1,
            proposals: 40,
            commit_ms_mean: 2.5,
            snapshot_bytes: 0,
            watch_streams: 3,
            heartbeats: 900,
        });
        let out = cluster_status(&s, Format::Table);
        assert!(out.contains("Services: 2   Tasks: 1 pending, 5 running   Nodes: 3 ready\n"), "{out}");
        assert!(out.contains("Server 2 since it started: 40 proposals (commit 2.5 ms mean), 1 leader changes seen, 3 agent watches, 900 heartbeats, last snapshot none built\n"), "{out}");
        let json: Value = serde_json::from_str(&cluster_status(&s, Format::Json)).unwrap();
        assert_eq!(json["figures"]["tasks"]["running"], 5);
        assert_eq!(json["figures"]["watch_streams"], 3);
    }

    #[test]
    fn cluster_status_warns_of_too_few_or_an_even_number_of_voters() {
        let member = |id: u64, role: &str| pb::Member { id, role: role.into(), ..Default::default() };
        let with = |roles: &[&str]| pb::ClusterStatusReply {
            members: roles.iter().enumerate().map(|(i, r)| member(i as u64 + 1, r)).collect(),
            ..Default::default()
        };
        let one = cluster_status(&with(&["leader"]), Format::Table);
        assert!(one.contains("WARNING: 1 voting server: losing one stops the cluster"), "{one}");
        let learner = cluster_status(&with(&["leader", "follower", "learner"]), Format::Table);
        assert!(learner.contains("WARNING: 2 voting servers"), "a learner does not vote: {learner}");
        let four = cluster_status(&with(&["leader", "follower", "follower", "follower"]), Format::Table);
        assert!(four.contains("WARNING: 4 voting servers: an even number tolerates no more failures than 3"), "{four}");
        for fine in
            [&["leader", "follower", "follower"][..], &["leader", "follower", "follower", "follower", "follower"]]
        {
            let out = cluster_status(&with(fine), Format::Table);
            assert!(!out.contains("WARNING"), "{out}");
            let json: Value = serde_json::from_str(&cluster_status(&with(fine), Format::Json)).unwrap();
            assert_eq!(json["warnings"], serde_json::json!([]));
        }
        let json: Value = serde_json::from_str(&cluster_status(&with(&["leader", "follower"]), Format::Json)).unwrap();
        assert!(json["warnings"][0].as_str().unwrap().starts_with("2 voting servers"));
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xxxx".into(), "1".into()], vec!["y".into(), "2".into()]]);
        assert_eq!(t, "A      LONGER\nxxxx   1\ny      2\n");
    }

    #[test]
    fn a_service_shows_its_endpoints_with_their_dns_names() {
        let spec = berth_proto::model::ServiceSpec {
            name: "web".into(),
            image: "registry:5000/web:1".into(),
            command: vec![],
            env: Default::default(),
            replicas: 2,
            resources: Default::default(),
            ports: vec![],
            restart: Default::default(),
            constraints: vec![],
            pids_limit: None,
            seccomp: Default::default(),
            userns: Default::default(),
            overrides: Default::default(),
            update_config: berth_proto::model::UpdateConfig::UPDATE,
            rollback_config: berth_proto::model::UpdateConfig::ROLLBACK,
            mode: Default::default(),
            placement: Default::default(),
        };
        let s = Service { spec, version: 3, previous: None, rollout: None };
        let e = |slot: u32, address: &str, node: &str| Endpoint {
            task: format!("web.{slot}.1"),
            slot,
            address: address.parse().unwrap(),
            node_name: Some(node.into()),
        };
        let endpoints = [e(1, "198.19.1.2", "alpha"), e(2, "198.19.2.2", "beta")];
        let text = service(&s, &endpoints, Format::Table);
        let tail: Vec<&str> = text.lines().skip_while(|l| *l != "Endpoints:").collect();
        assert_eq!(
            tail,
            [
                "Endpoints:",
                "  DNS     ADDRESS      NODE    TASK",
                "  1.web   198.19.1.2   alpha   web.1.1",
                "  2.web   198.19.2.2   beta    web.2.1",
            ]
        );
        assert!(service(&s, &[], Format::Table).contains("Endpoints: - (no replica runs)"));
        let json: Value = serde_json::from_str(&service(&s, &endpoints, Format::Json)).unwrap();
        assert_eq!((json["version"].as_u64(), json["endpoints"][1]["address"].as_str()), (Some(3), Some("198.19.2.2")));
    }

    #[test]
    fn tasks_show_their_health_beside_their_state() {
        use berth_proto::model::{HealthState, Task, TaskState};
        let mut t = Task::new("web", 1, 1, 1, Default::default());
        t.state = TaskState::Running;
        t.health = Some(HealthState::Unhealthy);
        let list = [TaskInfo { task: t, node_name: None }];
        let text = tasks(&list, Format::Table, UNIX_EPOCH);
        assert!(text.lines().nth(1).unwrap().contains("running (unhealthy)"), "{text}");
        let json: Value = serde_json::from_str(&tasks(&list, Format::Json, UNIX_EPOCH)).unwrap();
        assert_eq!(json[0]["task"]["health"], "unhealthy");
        let h = berth_proto::model::Health {
            probe: Some(berth_proto::model::Probe::Tcp { port: 6379 }),
            interval_ms: Some(1000),
            retries: Some(2),
            ..Default::default()
        };
        assert_eq!(health(&h), "tcp :6379, every 1s, 2 retries");
    }

    #[test]
    fn times_read_as_ages() {
        let now = UNIX_EPOCH + Duration::from_millis(10_000_000);
        assert_eq!(ago(10_000_000 - 12_500, now), "12s ago");
        assert_eq!(ago(10_000_000 - 125_000, now), "2m ago");
        assert_eq!(ago(10_000_000 + 5_000, now), "0s ago", "a leader clock ahead of ours");
        assert_eq!(ago(0, now), "-", "never set");
        assert_eq!(ago(1, now + Duration::from_secs(3 * 86400)), "3d ago");
    }
}
