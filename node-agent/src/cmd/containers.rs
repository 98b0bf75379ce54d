//! `ps`, `logs`, `stop`, `kill`, `rm` on this host's containers.

use std::time::Duration;

use anyhow::{bail, Context};
use berth_node_agent::runtime::cgroup::Cgroups;
use berth_node_agent::runtime::logs::{self, Follower};
use berth_node_agent::runtime::record::parse_signal;
use berth_node_agent::runtime::{Container, Status};
use berth_proto::model::format_memory;
use nix::sys::signal::Signal;
use serde_json::json;

use super::{print_lines, Node, Output};

pub fn ps(node: &Node, output: Output) -> anyhow::Result<u8> {
    let containers = node.runtime.list()?;
    let cgroups = Cgroups::detect();
    match output {
        Output::Json => {
            let rows: Vec<_> = containers.iter().map(|c| to_json(c, &cgroups)).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table => {
            println!("{:<20} {:<36} {:<26} {:>8} {:>10} {:>10}", "NAME", "IMAGE", "STATUS", "PID", "CPU", "MEMORY");
            for c in &containers {
                let (pid, cpu, mem) = match &c.status {
                    Status::Running(s) => {
                        let u = cgroups.usage(&c.config.cgroup_path());
                        (s.pid.to_string(), format!("{:.2}s", u.cpu_ns as f64 / 1e9), format_memory(u.memory_bytes))
                    }
                    _ => ("-".into(), "-".into(), "-".into()),
                };
                println!(
                    "{:<20} {:<36} {:<26} {:>8} {:>10} {:>10}",
                    c.config.name,
                    c.config.image,
                    c.status.label(),
                    pid,
                    cpu,
                    mem
                );
            }
        }
    }
    Ok(0)
}

fn to_json(c: &Container, cgroups: &Cgroups) -> serde_json::Value {
    let mut v = json!({
        "name": c.config.name,
        "image": c.config.image,
        "image_digest": c.config.image_digest,
        "command": c.config.command,
        "state": c.status.state(),
        "created_at_ms": c.config.created_at_ms,
        "limits": {
            "memory_bytes": c.config.limits.memory_bytes,
            "cpu_millis": c.config.limits.cpu_millis,
            "pids": c.config.limits.pids,
        },
    });
    match &c.status {
        Status::Running(s) => {
            let u = cgroups.usage(&c.config.cgroup_path());
            v["pid"] = json!(s.pid);
            v["started_at_ms"] = json!(s.started_at_ms);
            v["cpu_ns"] = json!(u.cpu_ns);
            v["memory_bytes"] = json!(u.memory_bytes);
        }
        Status::Exited(e) => {
            v["exit_code"] = json!(e.code);
            v["signal"] = json!(e.signal);
            v["oom_killed"] = json!(e.oom_killed);
            v["finished_at_ms"] = json!(e.finished_at_ms);
            v["error"] = json!(e.error);
        }
        Status::Created | Status::Lost => {}
    }
    v
}

pub async fn logs(node: &Node, name: &str, tail: Option<usize>, follow: bool) -> anyhow::Result<u8> {
    let container = node.runtime.get(name)?;
    let mut follower = Follower::from_end(&container.dir)?;
    let _ = print_lines(logs::read(&container.dir, tail)?);
    if follow {
        loop {
            let done = node.runtime.wait_for(name, Duration::from_millis(100)).await?.is_some();
            let _ = print_lines(follower.poll()?);
            if done {
                break;
            }
        }
    }
    Ok(0)
}

pub async fn stop(node: &Node, names: &[String], grace: Option<u64>) -> anyhow::Result<u8> {
    if names.is_empty() {
        bail!("name at least one container to stop");
    }
    for name in names {
        let grace = match grace {
            Some(secs) => Duration::from_secs(secs),
            None => node.runtime.get(name)?.config.stop_grace(Duration::from_secs(10)),
        };
        let exited = node.runtime.stop(name, grace).await?;
        println!("{name}\texited with {}", exited.code);
    }
    Ok(0)
}

/// Runs `command` in the running container `name`, its output on ours;
/// exits with its code.
pub async fn exec(node: &Node, name: &str, command: &[String], timeout: Option<u64>) -> anyhow::Result<u8> {
    if !matches!(node.runtime.get(name)?.status, Status::Running(_)) {
        bail!("container {name:?} is not running");
    }
    // Without --timeout, a year: the helper always has a bound.
    let timeout = Duration::from_secs(timeout.unwrap_or(365 * 86400));
    let status = node.runtime.exec_command(name, command, timeout).stdin(std::process::Stdio::null()).status().await?;
    Ok(status.code().map_or(125, |c| c.clamp(0, 255) as u8))
}

pub fn kill(node: &Node, name: &str, signal: &str) -> anyhow::Result<u8> {
    let sig = parse_signal(signal)
        .with_context(|| format!("signal {signal:?} is not known; expected a name like TERM or KILL, or a number"))?;
    node.runtime.kill(name, sig, sig == Signal::SIGKILL)?;
    Ok(0)
}

pub async fn rm(node: &Node, names: &[String], force: bool) -> anyhow::Result<u8> {
    if names.is_empty() {
        bail!("name at least one container to remove");
    }
    for name in names {
        node.runtime.remove(name, force).await?;
        println!("{name}");
    }
    Ok(0)
}
