//! Address bookkeeping for `apply`: which node subnets and task addresses
//! are taken, and the lowest free one. Taken means held by a node, or by a
//! task still in the state: a task's address is free again only once the
//! task is forgotten, so a container that is still stopping never shares
//! its address with its successor.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use berth_proto::model::{Cidr, Node};

use super::State;

/// The lowest node subnet no node holds; None when all are taken or the
/// cluster has no network yet.
pub fn free_subnet(state: &State) -> Option<Cidr> {
    let net = state.network?;
    let taken: BTreeSet<Cidr> = state.nodes.values().filter_map(|n| n.subnet).collect();
    let free = net.subnets().find(|s| !taken.contains(s));
    free
}

/// Task addresses in use, per node id; made once per command.
#[derive(Debug, Default)]
pub struct Addresses {
    used: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

impl Addresses {
    pub fn of(state: &State) -> Self {
        let mut used: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        for t in state.tasks.values() {
            if let (Some(node), Some(addr)) = (&t.node, t.address) {
                match used.get_mut(node) {
                    Some(set) => {
                        set.insert(addr);
                    }
                    None => {
                        used.insert(node.clone(), BTreeSet::from([addr]));
                    }
                }
            }
        }
        Self { used }
    }

    /// Takes the lowest free address of the node's subnet: `Ok(None)` when
    /// the node has no subnet (the cluster has no network), `Err` when its
    /// subnet is full.
    pub fn take(&mut self, node: &Node) -> Result<Option<Ipv4Addr>, ()> {
        let Some(subnet) = node.subnet else { return Ok(None) };
        let used = self.used.entry(node.id.clone()).or_default();
        let addr = subnet.task_addresses().find(|a| !used.contains(a)).ok_or(())?;
        used.insert(addr);
        Ok(Some(addr))
    }
}
