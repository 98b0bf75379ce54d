//! Container networking on one node: a bridge holding the node's subnet's
//! gateway, and for each task container a network namespace of its own
//! joined to the bridge by a veth pair (`eth0` inside, default route via
//! the gateway). Packets leaving for the host's network are masqueraded;
//! packets for other nodes' subnets are routed (the overlay carries them).
//!
//! ```text
//!  container netns                 node (host) netns
//!  eth0 198.19.1.2/24 ── veth ── vb…  ─┐
//!  eth0 198.19.1.3/24 ── veth ── vb…  ─┴─ berth0 198.19.1.1/24 ── routing ── host / overlay
//! ```
//!
//! A task's namespace is made by the agent before its container starts and
//! outlives the container's restarts (same address, like a pod sandbox); it
//! goes when the task's container is removed. A task with a user namespace
//! of its own (`userns: auto`) gets that namespace here too, first, and
//! its network namespace inside it (see [`crate::namespaces`]): the pair
//! is its sandbox, with a block of ids claimed for it until it goes.
//! What is done to the kernel is
//! a list of `ip` commands made by the pure functions here and run through
//! the narrow [`Host`] trait (`iproute::IpRoute` on a real node), so the
//! plans are tested without a kernel and the real thing with one.

mod iproute;
pub mod mesh;
pub mod overlay;
pub mod plan;
pub mod rules;

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use berth_proto::model::Cidr;

use crate::runtime::userns::{IdMap, IdRanges};

pub use iproute::IpRoute;

/// WireGuard's overhead on a 1500-byte underlay, so a container's packet
/// still fits once the overlay has wrapped it.
pub const DEFAULT_MTU: u32 = 1420;

/// The metric of the cluster CIDR's fallback route, behind the overlay's.
pub const UNREACHABLE_METRIC: u32 = 4096;

/// What changes a node's network; each call is one step a real host can fail at.
pub trait Host: Send + Sync + std::fmt::Debug {
    /// Runs `ip -batch` with these lines, in `netns` when given (a path
    /// to a namespace), else in the agent's own.
    fn ip(&self, netns: Option<&Path>, lines: &[String]) -> io::Result<()>;
    /// Whether a link of that name exists in the agent's namespace.
    fn link_exists(&self, name: &str) -> bool;
    /// Makes a network namespace that persists at `path` with no process
    /// in it, owned by the user namespace at `owner` when given.
    fn new_netns(&self, path: &Path, owner: Option<&Path>) -> io::Result<()>;
    /// Makes a user namespace with these ids that persists at `path`.
    fn new_userns(&self, path: &Path, ids: IdMap) -> io::Result<()>;
    /// Undoes `new_netns` or `new_userns`; the namespace (and the veth in
    /// it) goes with it.
    fn remove_netns(&self, path: &Path) -> io::Result<()>;
    /// Turns on IPv4 forwarding and sets the node's iptables rules for this
    /// subnet ([`rules`]): forwarded, masqueraded when it leaves for outside
    /// the cluster, and the routing mesh's chain reached ([`mesh`]).
    fn forward(&self, bridge: &str, subnet: Cidr, cluster: Cidr) -> io::Result<()>;
    /// Runs `iptables-restore --noflush` with this input: one transaction.
    fn iptables_restore(&self, input: &str) -> io::Result<()>;
    /// Deletes the conntrack entries that match `filter` (`conntrack -D`
    /// arguments); none matching is no error.
    fn conntrack_delete(&self, filter: &[String]) -> io::Result<()>;
}

/// One node's container network.
#[derive(Debug)]
pub struct NodeNet<H: Host> {
    pub bridge: String,
    pub subnet: Cidr,
    pub cluster: Cidr,
    pub mtu: u32,
    /// Where task namespaces are kept, one file each (user namespaces in
    /// `users/`).
    pub netns_dir: PathBuf,
    /// Claims of user namespace ids, shared with the runtime.
    pub ids: IdRanges,
    pub host: H,
}

/// A task's namespaces, ready for its container to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub netns: PathBuf,
    /// Its user namespace and ids, when it has one of its own.
    pub userns: Option<(PathBuf, IdMap)>,
}

/// The host side of a task's veth pair: unique per task name on the node,
/// short enough for a link name (15 bytes).
pub fn veth_name(task: &str) -> String {
    // FNV-1a: stable across builds, no dependency.
    let hash = task.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("vb{:011x}", hash & 0x0fff_ffff_ffff)
}

/// `ip` lines that set up the bridge (it exists already).
pub fn bridge_lines(bridge: &str, subnet: Cidr, mtu: u32) -> Vec<String> {
    vec![
        format!("link set dev {bridge} mtu {mtu} up"),
        format!("addr replace {}/{} dev {bridge}", subnet.gateway(), subnet.prefix),
    ]
}

/// `ip` lines, in the node's namespace, that make a task's veth pair with
/// `eth0` in its namespace and plug the host end into the bridge.
pub fn veth_lines(bridge: &str, veth: &str, netns: &Path, mtu: u32) -> Vec<String> {
    vec![
        format!("link add {veth} mtu {mtu} type veth peer name eth0 netns {}", netns.display()),
        format!("link set dev {veth} master {bridge} up"),
        // A container reaching its own service through the mesh may be
        // sent back to itself: with br_netfilter that frame leaves by the
        // port it came in on.
        format!("link set dev {veth} type bridge_slave hairpin on"),
    ]
}

/// `ip` lines, in the task's namespace, that give `eth0` its address and
/// the default route.
pub fn inside_lines(address: Ipv4Addr, subnet: Cidr, mtu: u32) -> Vec<String> {
    vec![
        "link set dev lo up".to_owned(),
        format!("addr add {address}/{} dev eth0", subnet.prefix),
        format!("link set dev eth0 mtu {mtu} up"),
        format!("route add default via {}", subnet.gateway()),
    ]
}

impl<H: Host> NodeNet<H> {
    /// Makes the bridge (once) and the forwarding rules; safe to repeat.
    pub fn ensure(&self) -> io::Result<()> {
        if !self.host.link_exists(&self.bridge) {
            self.host.ip(None, &[format!("link add name {} type bridge", self.bridge)])?;
        }
        self.host.ip(None, &bridge_lines(&self.bridge, self.subnet, self.mtu))?;
        // While the overlay is down (the agent restarts), traffic for other
        // nodes is refused here instead of leaving in clear by the default route.
        self.host.ip(None, &[format!("route replace unreachable {} metric {UNREACHABLE_METRIC}", self.cluster)])?;
        self.host.forward(&self.bridge, self.subnet, self.cluster)
    }

    /// Makes the routing mesh send these published ports to these replicas
    /// (and nothing else), in one step; then forgets the UDP flows that
    /// `before` (what it sent until now, when known) routed otherwise. Only
    /// the rules can fail it: a flow that could not be forgotten is a
    /// warning (it goes once it idles out).
    pub fn publish(
        &self,
        reserved: &[(u16, berth_proto::model::Protocol)],
        before: Option<&[mesh::Published]>,
        published: &[mesh::Published],
    ) -> io::Result<()> {
        self.host.iptables_restore(&mesh::restore_input(&self.bridge, reserved, published))?;
        for filter in mesh::stale_udp(before, published) {
            if let Err(e) = self.host.conntrack_delete(&filter) {
                tracing::warn!("forgetting UDP flows of the routing mesh: {e}");
            }
        }
        Ok(())
    }

    pub fn netns_path(&self, task: &str) -> PathBuf {
        self.netns_dir.join(task)
    }

    /// The task's namespace with `eth0` at `address`, inside a user
    /// namespace of its own with `userns`; one that exists already (the
    /// task restarts) is kept as it is.
    pub fn attach(&self, task: &str, address: Ipv4Addr, userns: bool) -> io::Result<Sandbox> {
        if !self.subnet.task_addresses().any(|a| a == address) {
            return Err(io::Error::other(format!(
                "{address} is not a task address of this node's subnet {}",
                self.subnet
            )));
        }
        let path = self.netns_path(task);
        let user = userns_path(&self.netns_dir, task);
        if path.exists() {
            let ids = if user.exists() { self.ids.held(&user)? } else { None };
            if ids.is_some() == userns {
                return Ok(Sandbox { netns: path, userns: ids.map(|ids| (user, ids)) });
            }
            // Made otherwise than asked, or half made: never run a task that
            // asked for its own ids with the host's.
            self.detach(task)?;
        }
        std::fs::create_dir_all(user.parent().unwrap_or(&self.netns_dir))?;
        let made = self.make(task, &path, address, userns.then_some(&user));
        match made {
            Ok(ids) => Ok(Sandbox { netns: path, userns: ids.map(|ids| (user, ids)) }),
            Err(e) => {
                let _ = self.detach(task);
                Err(e)
            }
        }
    }

    fn make(&self, task: &str, path: &Path, address: Ipv4Addr, user: Option<&PathBuf>) -> io::Result<Option<IdMap>> {
        let ids = match user {
            Some(user) => {
                let ids = self.ids.claim(user)?;
                self.host.new_userns(user, ids)?;
                Some(ids)
            }
            None => None,
        };
        self.host.new_netns(path, user.map(PathBuf::as_path))?;
        let veth = veth_name(task);
        self.host.ip(None, &veth_lines(&self.bridge, &veth, path, self.mtu))?;
        self.host.ip(Some(path), &inside_lines(address, self.subnet, self.mtu))?;
        Ok(ids)
    }

    /// Removes the task's namespaces, if it has any, and gives back its ids.
    pub fn detach(&self, task: &str) -> io::Result<()> {
        detach(&self.host, &self.netns_dir, &self.ids, task)
    }

    /// Tasks that have a namespace here.
    pub fn attached(&self) -> Vec<String> {
        attached(&self.netns_dir)
    }
}

/// Removes a task's namespaces kept in `netns_dir`, if it has any, and
/// its claim of ids (no bridge needed: what an agent stopped halfway left
/// goes before its node network is set up).
pub fn detach(host: &impl Host, netns_dir: &Path, ids: &IdRanges, task: &str) -> io::Result<()> {
    let user = userns_path(netns_dir, task);
    for path in [&netns_dir.join(task), &user] {
        if path.exists() {
            host.remove_netns(path)?;
        }
    }
    ids.release(&user)
}

/// Where a task's user namespace is kept.
fn userns_path(netns_dir: &Path, task: &str) -> PathBuf {
    netns_dir.join("users").join(task)
}

/// Tasks that have a namespace in `netns_dir`: a network namespace, or a
/// user namespace left without one.
pub fn attached(netns_dir: &Path) -> Vec<String> {
    let files = |dir: PathBuf| {
        let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
        entries.filter(|e| e.file_type().is_ok_and(|t| !t.is_dir())).filter_map(|e| e.file_name().into_string().ok())
    };
    let all: std::collections::BTreeSet<String> =
        files(netns_dir.to_owned()).chain(files(netns_dir.join("users"))).collect();
    all.into_iter().collect()
}

#[cfg(test)]
mod tests;
