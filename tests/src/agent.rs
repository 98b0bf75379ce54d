//! A berth-agent on this host with its own data dir and cgroup parent,
//! driven through its command line. Dropping it force-removes every
//! container it made, so a failing test leaves no process, mount, cgroup
//! or directory behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::registry::{Auth, Registry, PASSWORD, USER};

#[derive(Debug)]
pub struct Agent {
    pub data: tempfile::TempDir,
    /// Its run dir's parent: searchable by others (0711), as `/run` is, so
    /// containers with their own ids reach their rootfs.
    pub run: tempfile::TempDir,
    pub cgroup_parent: String,
    /// The berth-shim binary it runs (the workspace's, unless a test swaps it).
    pub shim: PathBuf,
    /// Its node's bridge when it joins a cluster (unique, so agents on this
    /// one host do not share one).
    pub bridge: String,
    /// The network namespace of the host it runs on (see `hosts`), if not this one.
    pub netns: Option<String>,
    registries: PathBuf,
}

#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Agent {
    /// An agent that may pull over plain HTTP from `registry`, with its
    /// account when it needs one.
    pub fn new(registry: Option<&Registry>) -> Self {
        let text = registry.map(|r| {
            let mut text = format!("[[registry]]\nhost = \"{}\"\ninsecure = true\n", r.addr);
            if r.auth != Auth::Anonymous {
                text += &format!("username = \"{USER}\"\npassword = \"{PASSWORD}\"\n");
            }
            text
        });
        Self::with_registries(&text.unwrap_or_default())
    }

    /// An agent with this registries.toml.
    pub fn with_registries(text: &str) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let registries = data.path().join("registries.toml");
        std::fs::write(&registries, text).expect("write registries.toml");
        let unique =
            data.path().file_name().and_then(|n| n.to_str()).unwrap_or("x").trim_start_matches('.').to_lowercase();
        let short: String = unique.chars().filter(char::is_ascii_alphanumeric).take(10).collect();
        let run = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(run.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).expect("chmod");
        Self {
            data,
            run,
            cgroup_parent: format!("berth-test-{unique}"),
            shim: crate::bin("berth-shim"),
            bridge: format!("bt{short}"),
            netns: None,
            registries,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(crate::bin("berth-agent"));
                c
            }
            None => Command::new(crate::bin("berth-agent")),
        };
        cmd.args(args)
            .env("BERTH_AGENT_DATA_DIR", self.data.path())
            .env("BERTH_AGENT_RUN_DIR", self.run_root())
            .env("BERTH_REGISTRIES", &self.registries)
            .env("BERTH_CGROUP_PARENT", &self.cgroup_parent)
            .env("BERTH_SHIM", &self.shim);
        // The join token of the cluster under test, if there is one.
        if let Some(token) = crate::KEYS.lock().ok().and_then(|k| k.as_ref().and_then(|k| k.worker_token.clone())) {
            cmd.env("BERTH_TOKEN", token);
        }
        cmd
    }

    /// Runs berth-agent to completion.
    pub fn run(&self, args: &[&str]) -> Ran {
        self.command(args).output().expect("run berth-agent").into()
    }

    /// Runs berth-agent and insists it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let ran = self.run(args);
        assert_eq!(ran.code, 0, "berth-agent {args:?} failed: {}{}", ran.stdout, ran.stderr);
        ran.stdout
    }

    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.data.path().join("containers").join(name)
    }

    /// Starts the agent's daemon joined to `servers` as node `name`,
    /// answering on a loopback port of its own; its log is `daemon_log`.
    pub fn join(&self, servers: &[String], name: &str, extra: &[&str]) -> anyhow::Result<crate::Process> {
        self.join_at(servers, name, &format!("127.0.0.1:{}", crate::free_port()), extra)
    }

    /// An agent on a host of a test network (see `hosts`), answering on its address.
    pub fn on(registry: Option<&Registry>, host: &crate::hosts::Host) -> Self {
        let mut agent = Self::new(registry);
        agent.netns = Some(host.netns.clone());
        agent
    }

    /// `join`, advertising `advertise`.
    pub fn join_at(
        &self,
        servers: &[String],
        name: &str,
        advertise: &str,
        extra: &[&str],
    ) -> anyhow::Result<crate::Process> {
        let servers = servers.join(",");
        let mut args = vec!["--server", &servers, "--name", name, "--advertise", &advertise, "--heartbeat-ms", "300"];
        let port = crate::free_port().to_string();
        args.extend_from_slice(&["--bridge", &self.bridge, "--wireguard-port", &port]);
        args.extend_from_slice(extra);
        let mut daemon = crate::Process::new(self.data.path().join("daemon.log"));
        daemon.start(self.command(&args).env("BERTH_LOG", "info,libcgroups=error,libcontainer=error"))?;
        Ok(daemon)
    }

    /// The log of a daemon started with `Process::new(data/daemon.log)`.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("daemon.log")).unwrap_or_default()
    }

    /// Claims of user namespace ids on this host (`--userns-dir`, shared by
    /// every agent) held by this agent's containers and sandboxes.
    pub fn userns_claims(&self) -> Vec<String> {
        let entries = std::fs::read_dir("/var/lib/berth/userns").into_iter().flatten().flatten();
        let claims = entries.filter_map(|e| std::fs::read_to_string(e.path()).ok());
        let ours = |c: &String| {
            let holder = c.split_once(' ').map(|(_, h)| h.trim()).unwrap_or_default();
            std::path::Path::new(holder).starts_with(self.data.path())
                || std::path::Path::new(holder).starts_with(self.run.path())
        };
        claims.filter(ours).collect()
    }

    /// The agent's `--run-dir`.
    pub fn run_root(&self) -> PathBuf {
        self.run.path().join("run")
    }

    /// Where the container's runtime state lives while it runs.
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.run_root().join("containers").join(name)
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.data.path().join("images/layers/sha256")
    }

    /// `ps -o json` as values.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ps", "-o", "json"])).expect("ps json")
    }

    pub fn ps_one(&self, name: &str) -> serde_json::Value {
        self.ps().into_iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no container {name}"))
    }

    /// Cgroup directories of container `name` that exist now.
    pub fn cgroup_dirs(&self, name: &str) -> Vec<PathBuf> {
        cgroup_roots().into_iter().map(|r| r.join(&self.cgroup_parent).join(name)).filter(|p| p.exists()).collect()
    }

    /// Cgroup directories left of container `name`: its own and its shim's.
    pub fn leftover_cgroups(&self, name: &str) -> Vec<PathBuf> {
        let shims = format!("{}-shims", self.cgroup_parent);
        let mut dirs = self.cgroup_dirs(name);
        dirs.extend(cgroup_roots().into_iter().map(|r| r.join(&shims).join(name)).filter(|p| p.exists()));
        dirs
    }
}

/// Joins each agent to the cluster at `servers` under its name and waits
/// until `node ls` shows them all ready; answers the daemons (drop them
/// before the agents, so they stop before the agents clean up).
pub async fn join_ready(servers: &[String], agents: &[(&Agent, &str)]) -> anyhow::Result<Vec<crate::Process>> {
    let mut daemons = Vec::new();
    for (agent, name) in agents {
        daemons.push(agent.join(servers, name, &[])?);
    }
    crate::wait_for(std::time::Duration::from_secs(30), "the nodes ready", async || {
        let (ok, out, _) = crate::berthctl(servers, &["node", "ls"]).ok()?;
        (ok && out.matches(" ready ").count() == agents.len()).then_some(())
    })
    .await?;
    Ok(daemons)
}

/// Every hierarchy a container cgroup could live under.
pub fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut roots = vec![base.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(base) {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir() && !p.is_symlink()));
    }
    roots
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(out) = self.command(&["ps", "-o", "json"]).output() {
            let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for c in list {
                if let Some(name) = c["name"].as_str() {
                    let _ = self.command(&["rm", "-f", name]).output();
                }
            }
        }
        for root in cgroup_roots() {
            let _ = std::fs::remove_dir(root.join(&self.cgroup_parent));
            let _ = std::fs::remove_dir(root.join(format!("{}-shims", self.cgroup_parent)));
        }
        // Task namespaces the agent's daemon did not get to remove.
        let netns = self.run_root().join("netns");
        for dir in [netns.join("users"), netns] {
            for ns in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let _ = Command::new("umount").arg("-l").arg(ns.path()).stderr(std::process::Stdio::null()).status();
                let _ = std::fs::remove_file(ns.path());
            }
        }
        remove_bridge(&self.bridge);
        remove_stale_wireguard_sockets();
    }
}

/// Removes WireGuard UAPI sockets nobody answers on: what agents killed
/// with SIGKILL leave (a clean stop removes its own).
pub fn remove_stale_wireguard_sockets() {
    for entry in std::fs::read_dir("/var/run/wireguard").into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "sock") && std::os::unix::net::UnixStream::connect(&path).is_err() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Removes a node's bridge, the iptables jumps its agent tagged with it
/// (`berth:BRIDGE`) and the chains they lead to, as an operator would after
/// removing the node.
pub fn remove_bridge(bridge: &str) {
    let _ = Command::new("ip").args(["link", "del", "dev", bridge]).stderr(std::process::Stdio::null()).status();
    let tag = format!("berth:{bridge}");
    for table in ["filter", "nat"] {
        let Ok(out) = Command::new("iptables").args(["-w", "-t", table, "-S"]).output() else { continue };
        for rule in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&tag)) {
            let Some(spec) = rule.strip_prefix("-A ") else { continue };
            let mut args = vec!["-w".to_owned(), "-t".into(), table.into(), "-D".into()];
            args.extend(shell_words(spec));
            let _ = Command::new("iptables").args(&args).status();
        }
    }
    // The node's chains, unreferenced now.
    for (table, chain) in [("filter", "FWD"), ("nat", "POST"), ("nat", "MESH")] {
        let chain = format!("BERTH-{chain}-{bridge}");
        for op in ["-F", "-X"] {
            let args = ["-w", "-t", table, op, &chain];
            let _ = Command::new("iptables").args(args).stderr(std::process::Stdio::null()).status();
        }
    }
}

/// Splits an `iptables -S` line into its words (quotes hold spaces).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The hierarchies systemd keeps track of its units' processes in: the
/// unified one (all of /sys/fs/cgroup on a v2 host, `unified` on a hybrid
/// one) and, on v1 hosts, its own named one (`systemd`).
pub fn tracking_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    ["unified", "systemd"].into_iter().map(|h| base.join(h)).filter(|p| p.join("cgroup.procs").exists()).collect()
}
