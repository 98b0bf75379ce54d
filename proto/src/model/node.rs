//! Nodes: hosts that run an agent. The leader tracks their liveness from
//! heartbeats in memory and records only transitions (ready <-> down).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Cidr, Resources};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Chosen by the cluster at first registration; kept in the agent's data dir.
    pub id: String,
    pub name: String,
    /// Where the agent answers (host:port).
    pub address: String,
    pub labels: BTreeMap<String, String>,
    /// What the node offers to tasks.
    pub capacity: Resources,
    pub status: NodeStatus,
    pub availability: Availability,
    /// Its containers' addresses, from the cluster CIDR (see `network`);
    /// none before the cluster's network is set.
    pub subnet: Option<Cidr>,
    /// Its end of the overlay, if it has one.
    pub overlay: Option<Overlay>,
    /// The newest task fields its agent understands (`AGENT_READS` of its
    /// release; 0 from one before agents said): a task that needs more is
    /// not placed there.
    #[serde(default)]
    pub reads: u32,
}

/// What this release's agents understand: 3 is stacks' `STACK_SERVICE`
/// task names and `depends_on`.
pub const AGENT_READS: u32 = 3;

/// A node's WireGuard identity and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    /// The public key, base64 (as `wg` shows it).
    pub public_key: String,
    /// IP:PORT on the underlay.
    pub endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Ready,
    /// No heartbeat within the timeout; its tasks are placed elsewhere.
    Down,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Takes none, and its tasks move elsewhere.
    Drain,
}

/// A node with what its tasks hold, as `node ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: Node,
    pub allocated: Resources,
    pub tasks: u32,
}

impl Availability {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "drain" => Some(Self::Drain),
            _ => None,
        }
    }
}

impl NodeStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(Self::Ready),
            "down" => Some(Self::Down),
            _ => None,
        }
    }
}

impl Node {
    /// Ready and active: the scheduler may place tasks here.
    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Ready && self.availability == Availability::Active
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ready => "ready",
            Self::Down => "down",
        })
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Drain => "drain",
        })
    }
}
