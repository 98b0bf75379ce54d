//! [`Host`] on a real node: iproute2's `ip` (run in a task's namespace
//! through `nsenter`), `iptables`, and namespace files (see
//! [`crate::namespaces`]) kept as `ip netns` keeps them, but under the
//! agent's run dir so agents on hosts that share a filesystem never collide.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use berth_proto::model::Cidr;

use super::{rules, Host};
use crate::namespaces;
use crate::runtime::userns::IdMap;

#[derive(Debug, Clone, Default)]
pub struct IpRoute;

fn run(cmd: &mut Command, stdin: Option<&str>) -> io::Result<()> {
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running {:?}: {e}", cmd.get_program())))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(());
    }
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    Err(io::Error::other(format!(
        "{} {} failed: {}{}",
        cmd.get_program().to_string_lossy(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim(),
        stdin.map(|s| format!(" (commands: {})", s.trim().replace('\n', "; "))).unwrap_or_default()
    )))
}

impl Host for IpRoute {
    fn ip(&self, netns: Option<&Path>, lines: &[String]) -> io::Result<()> {
        let batch = lines.join("\n") + "\n";
        let mut cmd = match netns {
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", path.display())).arg("ip");
                c
            }
            None => Command::new("ip"),
        };
        run(cmd.args(["-batch", "-"]), Some(&batch))
    }

    fn link_exists(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn new_netns(&self, path: &Path, owner: Option<&Path>) -> io::Result<()> {
        namespaces::net(path, owner)
    }

    fn new_userns(&self, path: &Path, ids: IdMap) -> io::Result<()> {
        namespaces::user(path, ids)
    }

    fn remove_netns(&self, path: &Path) -> io::Result<()> {
        namespaces::remove(path)
    }

    fn forward(&self, bridge: &str, subnet: Cidr, cluster: Cidr) -> io::Result<()> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
        self.iptables_restore(&rules::restore_input(bridge, subnet, cluster))?;
        // The mesh's chain is made empty once; its rules are the worker's.
        let mesh = super::mesh::chain(bridge);
        if !quiet(Command::new("iptables").args(["-w", "-t", "nat", "-n", "-L", &mesh]))? {
            run(Command::new("iptables").args(["-w", "-t", "nat", "-N", &mesh]), None)?;
        }
        for (table, chain, rule) in rules::jumps(bridge) {
            if !quiet(Command::new("iptables").args(["-w", "-t", table, "-C", chain]).args(&rule))? {
                run(Command::new("iptables").args(["-w", "-t", table, "-A", chain]).args(&rule), None)?;
            }
        }
        Ok(())
    }

    fn iptables_restore(&self, input: &str) -> io::Result<()> {
        run(Command::new("iptables-restore").args(["-w", "--noflush"]), Some(input))
    }

    fn conntrack_delete(&self, filter: &[String]) -> io::Result<()> {
        let out = Command::new("conntrack")
            .arg("-D")
            .args(filter)
            .stdout(Stdio::null())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("running conntrack (Debian package conntrack): {e}")))?;
        // It says how many it deleted, and fails when that is none.
        let said = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || said.contains("0 flow entries") {
            return Ok(());
        }
        Err(io::Error::other(format!("conntrack -D {} failed: {}", filter.join(" "), said.trim())))
    }
}

/// Whether a command that only checks something succeeds.
fn quiet(cmd: &mut Command) -> io::Result<bool> {
    Ok(cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?.success())
}
