//! What the cluster asks of one node, as its agent sees it: the tasks to
//! run there, each with its own spec, and what the node's network needs
//! (its subnet, the other nodes' overlay ends, every service's ports and
//! serving replicas). The control plane builds it from its state; the
//! task watch carries it (agent.proto's `AssignedTasks`). One element the
//! agent cannot read never costs the rest: a task is refused (and told
//! failed), a peer or service skipped; only a bad network for the node
//! refuses the whole message.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{Cidr, HealthState, InvalidField, PortSpec, TaskSpec, TaskState};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// By task id, which is also the container's name.
    pub tasks: BTreeMap<String, AssignedTask>,
    /// Tasks the node cannot take as they came (a field it does not
    /// understand, as from a newer server), by id: reported failed with
    /// the reason, neither started nor stopped.
    pub refused: BTreeMap<String, InvalidField>,
    /// Peers, services and tasks without a usable id that were left out,
    /// and why (the agent logs them).
    pub skipped: Vec<InvalidField>,
    /// None until the cluster's network is set.
    pub network: Option<NodeNetwork>,
    /// Every other node with an overlay: this one's WireGuard peers.
    pub peers: Vec<Peer>,
    /// Every service in the cluster, by name: its ports and where its
    /// serving replicas answer, on any node (for the mesh and DNS).
    pub services: Vec<ServiceEndpoints>,
    /// The node's named volumes as the cluster knows them; none until its
    /// agent has told (its agent compares, and tells when they differ).
    pub volumes: Option<std::collections::BTreeSet<String>>,
    /// Tasks with an exclusive volume taken out of `tasks` because the node
    /// holds no lease for them now (the agent's fence, never on the wire):
    /// not started, and stopped if they run.
    pub fenced: std::collections::BTreeSet<String>,
}

/// What changed in a node's assignment since the revision its watch last
/// sent (the task watch's deltas): tasks, peers and services that are new
/// or changed, whole, and those gone. The network and volumes are always
/// sent whole (they are small and per node).
///
/// A service of a thousand replicas is tens of kilobytes; one replica that
/// moves is a hundred bytes. So a service may also come partial, holding
/// only its replicas that are new or changed: `replicas` names those
/// services, each with the tasks whose replicas are gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub tasks: Vec<String>,
    pub peers: Vec<String>,
    pub services: Vec<String>,
    /// Services sent partial, by name: the tasks whose replicas are gone.
    pub replicas: BTreeMap<String, Vec<String>>,
    /// The changed tasks are the node's whole list: every other one is
    /// gone (a watch resumed on another server, which cannot know what
    /// the last one sent of the node's own).
    pub tasks_whole: bool,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        !self.tasks_whole
            && self.tasks.is_empty()
            && self.peers.is_empty()
            && self.services.is_empty()
            && self.replicas.is_empty()
    }
}

impl Assignment {
    /// Whether this delta (as `Assignment::try_from` read it) with
    /// `removed` would change `current`: a server's keepalive (an empty
    /// delta) does not. Cheap, so as not to compare whole assignments.
    pub fn news_for(&self, removed: &Removed, current: &Assignment) -> bool {
        !(removed.is_empty()
            && self.tasks.is_empty()
            && self.refused.is_empty()
            && self.peers.is_empty()
            && self.services.is_empty()
            && self.skipped == current.skipped
            && self.network == current.network
            && self.volumes == current.volumes)
    }

    /// Applies a delta: `changed` holds what is new or changed (as
    /// `Assignment::try_from` read it), `removed` what is gone. Peers and
    /// services stay in the order the full form has (by node id, by name),
    /// so an assignment kept up by deltas equals the full one.
    pub fn apply(&mut self, changed: Assignment, removed: Removed) {
        if removed.tasks_whole {
            self.tasks.clear();
            self.refused.clear();
        }
        for id in &removed.tasks {
            self.tasks.remove(id);
            self.refused.remove(id);
        }
        for (id, task) in changed.tasks {
            self.refused.remove(&id);
            self.tasks.insert(id, task);
        }
        for (id, why) in changed.refused {
            self.tasks.remove(&id);
            self.refused.insert(id, why);
        }
        self.skipped = changed.skipped;
        self.network = changed.network;
        self.volumes = changed.volumes;
        merge(&mut self.peers, changed.peers, &removed.peers, |p| &p.node_id);
        let (whole, partial): (Vec<_>, Vec<_>) =
            changed.services.into_iter().partition(|s| !removed.replicas.contains_key(&s.name));
        merge(&mut self.services, whole, &removed.services, |s| &s.name);
        for part in partial {
            let gone = &removed.replicas[&part.name];
            match self.services.binary_search_by(|s| s.name.cmp(&part.name)) {
                Ok(i) => self.services[i].patch(part, gone),
                // Replicas of a service it never had: a server's mistake;
                // the part is the best it knows (the next whole list mends it).
                Err(i) => self.services.insert(i, part),
            }
        }
    }
}

impl ServiceEndpoints {
    /// Takes a partial service: its ports and `started` whole, `part`'s
    /// replicas in place of those of their tasks, and `gone` taken out;
    /// kept in the full form's order (by slot, then task).
    pub fn patch(&mut self, part: ServiceEndpoints, gone: &[String]) {
        self.ports = part.ports;
        self.started = part.started;
        let replaced: std::collections::BTreeSet<&str> =
            gone.iter().chain(part.replicas.iter().map(|r| &r.task)).map(String::as_str).collect();
        let mut by: BTreeMap<(u32, String), Replica> = std::mem::take(&mut self.replicas)
            .into_iter()
            .filter(|r| !replaced.contains(r.task.as_str()))
            .map(|r| ((r.slot, r.task.clone()), r))
            .collect();
        by.extend(part.replicas.into_iter().map(|r| ((r.slot, r.task.clone()), r)));
        self.replicas = by.into_values().collect();
    }
}

/// `list` (sorted by `key`) with `removed` taken out and `changed` put in.
fn merge<T>(list: &mut Vec<T>, changed: Vec<T>, removed: &[String], key: impl Fn(&T) -> &String) {
    if changed.is_empty() && removed.is_empty() {
        return;
    }
    let mut by: BTreeMap<String, T> = std::mem::take(list).into_iter().map(|t| (key(&t).clone(), t)).collect();
    for r in removed {
        by.remove(r);
    }
    for c in changed {
        by.insert(key(&c).clone(), c);
    }
    *list = by.into_values().collect();
}

/// This node's containers' subnet (its first address is the node's
/// bridge) within the cluster's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeNetwork {
    pub subnet: Cidr,
    pub cluster: Cidr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedTask {
    /// `SERVICE.SLOT.GENERATION`.
    pub id: String,
    pub spec: TaskSpec,
    /// Restarts the cluster has counted (an agent that restarted goes on from there).
    pub restarts: u32,
    /// Its container's address in the node's subnet.
    pub address: Option<Ipv4Addr>,
    /// The values of the secrets and configs its spec names.
    pub files: super::Files,
}

/// Another node's end of the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    /// base64, as `wg` shows keys.
    pub public_key: String,
    /// Where its WireGuard listens, on the underlay.
    pub endpoint: SocketAddr,
    /// Its containers' subnet: what the peer is allowed to send from.
    pub subnet: Cidr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoints {
    pub name: String,
    pub ports: Vec<PortSpec>,
    /// Its replicas that serve now (`Task::serving_address`), by slot.
    pub replicas: Vec<Replica>,
    /// Whether any of its tasks runs now, serving or not.
    pub started: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub task: String,
    pub slot: u32,
    pub address: IpAddr,
}

/// An agent's word on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub id: String,
    /// Running, exited, failed or shutdown: what an agent can see.
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub restarts: u32,
    pub message: String,
    /// What its probes say, while it runs with a health check.
    #[serde(default)]
    pub health: Option<HealthState>,
}

impl TaskState {
    /// Whether an agent may report it (the others are the cluster's own):
    /// assigned is a task that waits for its dependencies to start.
    pub fn reported(self) -> bool {
        matches!(self, Self::Assigned | Self::Running | Self::Exited | Self::Failed | Self::Shutdown)
    }
}
