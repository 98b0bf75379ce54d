//! What the node's network should do next, as a pure function of what the
//! cluster assigns and what is set up already: the bridge for the node's
//! subnet, the overlay and its peers, the routing mesh, DNS and its zone,
//! in that order. The driver asks for the next step, carries it out,
//! records it, and asks again; a step that fails is left out until the
//! next pass, and what depends on it plans without it (the mesh balances
//! only over replicas this node can reach).
//!
//! ```text
//! assignment.network ─▶ Bridge ─▶ Overlay ─▶ Peers(assignment.peers)
//! assignment.services ─▶ Mesh(published ports ∩ reachable replicas) ─▶ Dns ─▶ Zone(services)
//! ```

use std::net::{IpAddr, Ipv4Addr};

use berth_proto::model::{Assignment, Cidr, NodeNetwork, Peer, ServiceEndpoints};

use super::mesh::Published;
use crate::dns::zone;

/// What this node has: an overlay (WireGuard keys and a port) and DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub overlay: bool,
    pub dns: bool,
}

/// What is set up now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub bridge: Option<NodeNetwork>,
    pub overlay: bool,
    pub peers: Option<Vec<Peer>>,
    pub mesh: Option<Vec<Published>>,
    pub dns: bool,
    pub zone: Option<Vec<zone::Service>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NetStep {
    /// Make the bridge for this subnet; what was set up for another goes.
    Bridge(NodeNetwork),
    /// Bring up the overlay's interface and its route.
    Overlay,
    Peers(Vec<Peer>),
    /// Make the mesh send these ports to these replicas; `before` is what
    /// it sent them to until now, when known.
    Mesh {
        before: Option<Vec<Published>>,
        wanted: Vec<Published>,
    },
    Dns,
    Zone(Vec<zone::Service>),
}

/// Which step, to leave out what failed in this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bridge,
    Overlay,
    Peers,
    Mesh,
    Dns,
    Zone,
}

impl NetStep {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Bridge(_) => Kind::Bridge,
            Self::Overlay => Kind::Overlay,
            Self::Peers(_) => Kind::Peers,
            Self::Mesh { .. } => Kind::Mesh,
            Self::Dns => Kind::Dns,
            Self::Zone(_) => Kind::Zone,
        }
    }
}

impl Applied {
    /// `step` was carried out.
    pub fn record(&mut self, step: NetStep) {
        match step {
            // A new subnet: nothing set up for the old one holds.
            NetStep::Bridge(net) => *self = Self { bridge: Some(net), ..Self::default() },
            NetStep::Overlay => self.overlay = true,
            NetStep::Peers(p) => self.peers = Some(p),
            NetStep::Mesh { wanted, .. } => self.mesh = Some(wanted),
            NetStep::Dns => {
                self.dns = true;
                self.zone = None;
            }
            NetStep::Zone(z) => self.zone = Some(z),
        }
    }
}

/// The next step towards `assignment`, leaving out the kinds in `failed`;
/// None when all is set up (or waits on a step that failed).
pub fn next(assignment: &Assignment, applied: &Applied, features: Features, failed: &[Kind]) -> Option<NetStep> {
    let ok = |k: Kind| !failed.contains(&k);
    let net = assignment.network?;
    if applied.bridge != Some(net) {
        return ok(Kind::Bridge).then_some(NetStep::Bridge(net));
    }
    if features.overlay && !applied.overlay && ok(Kind::Overlay) {
        return Some(NetStep::Overlay);
    }
    if applied.overlay && applied.peers.as_ref() != Some(&assignment.peers) && ok(Kind::Peers) {
        return Some(NetStep::Peers(assignment.peers.clone()));
    }
    let wanted = reachable(&published(&assignment.services), net.subnet, &assignment.peers, applied.overlay);
    if applied.mesh.as_ref() != Some(&wanted) && ok(Kind::Mesh) {
        return Some(NetStep::Mesh { before: applied.mesh.clone(), wanted });
    }
    if features.dns && !applied.dns && ok(Kind::Dns) {
        return Some(NetStep::Dns);
    }
    let zone = zone_services(&assignment.services);
    (applied.dns && applied.zone.as_ref() != Some(&zone) && ok(Kind::Zone)).then_some(NetStep::Zone(zone))
}

/// Every service's serving replicas and named ports, as DNS names them.
pub fn zone_services(services: &[ServiceEndpoints]) -> Vec<zone::Service> {
    services
        .iter()
        .map(|s| zone::Service {
            name: s.name.clone(),
            replicas: s.replicas.iter().map(|r| (r.slot, r.address)).collect(),
            ports: s
                .ports
                .iter()
                .filter_map(|p| Some(zone::NamedPort { name: p.name.clone()?, protocol: p.protocol, port: p.target }))
                .collect(),
        })
        .collect()
}

/// The published ports among the cluster's services, each with its
/// replicas' addresses, in a stable order (an unchanged cluster gives an
/// unchanged list, and the mesh is left alone).
pub fn published(services: &[ServiceEndpoints]) -> Vec<Published> {
    let mut out: Vec<Published> = services
        .iter()
        .flat_map(|s| {
            let backends: Vec<Ipv4Addr> = s
                .replicas
                .iter()
                .filter_map(|r| match r.address {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                })
                .collect();
            s.ports.iter().filter_map(move |p| {
                Some(Published {
                    port: p.published?,
                    protocol: p.protocol,
                    target: p.target,
                    service: s.name.clone(),
                    backends: backends.clone(),
                })
            })
        })
        .collect();
    out.sort();
    out
}

/// The published ports with only the replicas this node can reach: on its
/// own subnet, or behind a peer of a running overlay (a node without one,
/// or one whose key was not taken, would swallow its share).
pub fn reachable(published: &[Published], own: Cidr, peers: &[Peer], overlay: bool) -> Vec<Published> {
    let peers = peers.iter().map(|p| p.subnet).filter(|_| overlay);
    let subnets: Vec<Cidr> = std::iter::once(own).chain(peers).collect();
    let mut published = published.to_vec();
    for p in &mut published {
        p.backends.retain(|b| subnets.iter().any(|s| s.contains(*b)));
    }
    published
}

#[cfg(test)]
mod tests;
