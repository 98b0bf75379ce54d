//! Several hosts on one machine: a network namespace per host, joined by a
//! veth to a bridge in the test's own namespace, with addresses from
//! 198.18.0.0/16 only (DESIGN.md). Processes run in a host with `nsenter
//! --net` (not `ip netns exec`, which remounts /sys and so hides the
//! cgroup hierarchies), so each host has its own interfaces, routes,
//! iptables rules and bridges, and shares the machine's filesystem. A host can be cut off the network and healed; everything is
//! removed when the `Hosts` is dropped, on success and on failure.
//!
//! ```text
//!  test namespace: bridge bhNN 198.18.N.254/24
//!     ├── veth ── host 1 (netns bhNN-1): eth0 198.18.N.1/24, default via .254
//!     ├── veth ── host 2 (netns bhNN-2): eth0 198.18.N.2/24
//!     └── …
//! ```

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One host: a network namespace with one address on the test network.
/// A clone names the same host (`Hosts` owns and removes it).
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    /// The namespace's name under /run/netns.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The test-side end of its veth, whose state cuts it off or heals it.
    link: String,
}

#[derive(Debug)]
pub struct Hosts {
    pub bridge: String,
    /// The test namespace's address on the test network (the hosts' gateway).
    pub gateway: Ipv4Addr,
    pub hosts: Vec<Host>,
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Hosts {
    /// `n` hosts named host1…hostN on a test network of their own.
    pub fn new(n: usize) -> Result<Self> {
        // A /24 of 198.18.0.0/16 per test network: the process and a counter
        // keep concurrent test binaries and tests apart.
        let net = (std::process::id() % 100 + 100 * (NEXT.fetch_add(1, Ordering::Relaxed) % 2) + 1) as u8;
        let bridge = format!("bh{net}");
        let gateway = Ipv4Addr::new(198, 18, net, 254);
        let mut hosts = Self { bridge: bridge.clone(), gateway, hosts: Vec::new() };
        let _ = sh(&["ip", "link", "del", "dev", &bridge]); // left by a killed run
        sh(&["ip", "link", "add", "name", &bridge, "type", "bridge"])?;
        sh(&["ip", "addr", "add", &format!("{gateway}/24"), "dev", &bridge])?;
        sh(&["ip", "link", "set", "dev", &bridge, "up"])?;
        // Bridged packets pass iptables' FORWARD where br_netfilter is
        // loaded (Docker loads it and sets FORWARD's policy to DROP).
        sh(&["iptables", "-w", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"])?;
        for i in 1..=n {
            let netns = format!("{bridge}-{i}");
            let link = format!("{bridge}v{i}");
            let ip = Ipv4Addr::new(198, 18, net, i as u8);
            let _ = sh(&["ip", "netns", "del", &netns]);
            sh(&["ip", "netns", "add", &netns])?;
            hosts.hosts.push(Host { name: format!("host{i}"), netns: netns.clone(), ip, link: link.clone() });
            sh(&["ip", "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
            sh(&["ip", "link", "set", "dev", &link, "master", &bridge, "up"])?;
            let net = format!("--net=/run/netns/{netns}");
            let inside = |args: &[&str]| {
                let mut all = vec!["nsenter", &net];
                all.extend_from_slice(args);
                sh(&all)
            };
            inside(&["ip", "link", "set", "dev", "lo", "up"])?;
            inside(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            inside(&["ip", "link", "set", "dev", "eth0", "up"])?;
            inside(&["ip", "route", "add", "default", "via", &gateway.to_string()])?;
        }
        Ok(hosts)
    }
}

impl Host {
    /// `program args…` to run inside this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns)).arg(program);
        cmd
    }

    /// Runs a command inside this host; its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.command(program).args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("{program} {} in {} failed: {}", args.join(" "), self.name, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The test-side end of its link: what a capture of its underlay traffic listens on.
    pub fn link(&self) -> &str {
        &self.link
    }

    /// Cuts the host off the test network (its link goes down), as a
    /// pulled cable would; `heal` plugs it back.
    pub fn cut(&self) -> Result<()> {
        sh(&["ip", "link", "set", "dev", &self.link, "down"]).context("cutting a host off")
    }

    pub fn heal(&self) -> Result<()> {
        sh(&["ip", "link", "set", "dev", &self.link, "up"]).context("healing a host")
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = sh(&["ip", "netns", "del", &h.netns]);
            let _ = sh(&["ip", "link", "del", "dev", &h.link]);
        }
        let _ = sh(&["ip", "link", "del", "dev", &self.bridge]);
        let _ = sh(&["iptables", "-w", "-D", "FORWARD", "-i", &self.bridge, "-o", &self.bridge, "-j", "ACCEPT"]);
    }
}
