//! `query`: linearizable reads, answered from the applied state.

use std::collections::BTreeMap;

use berth_proto::model::{Endpoint, NodeInfo, Resources, Service, TaskInfo};
use serde::{Deserialize, Serialize};

use super::State;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// A service and its endpoints.
    GetService(String),
    ListServices,
    /// By name or id.
    GetNode(String),
    ListNodes,
    /// A service's tasks.
    ListTasks(String),
    /// The cluster's trust (servers only: it holds the root's key).
    Trust,
    ListUsers,
    /// The roots and the nodes a rotation waits for, given the servers'
    /// Raft ids (the membership is not part of the state).
    CaStatus {
        servers: Vec<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryReply {
    Service(Option<Service>, Vec<Endpoint>),
    Services(Vec<Service>),
    Node(Option<NodeInfo>),
    Nodes(Vec<NodeInfo>),
    Tasks(Vec<TaskInfo>),
    Trust(Option<super::Trust>),
    Users(Vec<super::User>),
    /// Root digests, the signing one first, and `Trust::pending`.
    CaStatus {
        root: String,
        trusted: Vec<String>,
        pending: Vec<String>,
        /// PEM.
        roots: String,
    },
}

pub fn query(state: &State, q: &Query) -> QueryReply {
    match q {
        Query::GetService(name) => {
            let mut endpoints: Vec<Endpoint> = state
                .tasks
                .values()
                .filter(|t| &t.service == name)
                .filter_map(|t| {
                    Some(Endpoint {
                        task: t.id.clone(),
                        slot: t.slot,
                        address: t.serving_address()?,
                        node_name: node_name(state, t),
                    })
                })
                .collect();
            endpoints.sort_by_key(|e| e.slot);
            QueryReply::Service(state.services.get(name).cloned(), endpoints)
        }
        Query::ListServices => QueryReply::Services(state.services.values().cloned().collect()),
        Query::Trust => QueryReply::Trust(state.trust.clone()),
        Query::ListUsers => QueryReply::Users(state.users.values().cloned().collect()),
        Query::CaStatus { servers } => match &state.trust {
            None => QueryReply::CaStatus {
                root: String::new(),
                trusted: Vec::new(),
                pending: Vec::new(),
                roots: String::new(),
            },
            Some(t) => QueryReply::CaStatus {
                root: t.ca.digest(),
                trusted: t.roots.iter().map(|r| berth_proto::pki::digest(r)).collect(),
                pending: state.rotation_pending(servers),
                roots: t.roots_pem(),
            },
        },
        Query::GetNode(key) => {
            let node = state.nodes.get(key).or_else(|| state.nodes.values().find(|n| &n.name == key));
            QueryReply::Node(node.map(|n| info(n, &state.allocations())))
        }
        Query::ListTasks(service) => {
            let mut tasks: Vec<TaskInfo> = state
                .tasks
                .values()
                .filter(|t| &t.service == service)
                .map(|t| TaskInfo { task: t.clone(), node_name: node_name(state, t) })
                .collect();
            tasks.sort_by_key(|i| (i.task.slot, i.task.generation));
            QueryReply::Tasks(tasks)
        }
        Query::ListNodes => {
            let allocations = state.allocations();
            let mut nodes: Vec<NodeInfo> = state.nodes.values().map(|n| info(n, &allocations)).collect();
            nodes.sort_by(|a, b| a.node.name.cmp(&b.node.name));
            QueryReply::Nodes(nodes)
        }
    }
}

/// The name of a task's node; a global task waiting for its node names it already.
fn node_name(state: &State, t: &berth_proto::model::Task) -> Option<String> {
    t.node.as_ref().or(t.pin.as_ref()).and_then(|id| state.nodes.get(id)).map(|n| n.name.clone())
}

/// A node with what the tasks placed on it hold.
fn info(node: &berth_proto::model::Node, allocations: &BTreeMap<String, (Resources, u32)>) -> NodeInfo {
    let (allocated, tasks) = allocations.get(&node.id).copied().unwrap_or_default();
    NodeInfo { node: node.clone(), allocated, tasks }
}
