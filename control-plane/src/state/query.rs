//! `query`: linearizable reads, answered from the applied state.

use std::collections::BTreeMap;

use berth_proto::model::{Desired, Endpoint, FileInfo, FileKind, NodeInfo, Resources, Service, TaskInfo, VolumeInfo};
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
    /// Every node's named volumes, with the tasks that mount them.
    ListVolumes,
    /// Secrets or configs, without their values.
    ListFiles(FileKind),
    /// A config with its value (a secret's is never read back).
    GetConfig(String),
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
    Volumes(Vec<VolumeInfo>),
    Files(Vec<FileInfo>),
    /// A config and its value (hex, as stored).
    Config(Option<(FileInfo, String)>),
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
        Query::ListVolumes => QueryReply::Volumes(volumes(state)),
        Query::ListFiles(kind) => {
            let kind = *kind;
            let map = if kind == FileKind::Secret { &state.secrets } else { &state.configs };
            QueryReply::Files(map.iter().map(|(name, f)| file_info(state, kind, name, f)).collect())
        }
        Query::GetConfig(name) => QueryReply::Config(
            state.configs.get(name).map(|f| (file_info(state, FileKind::Config, name, f), f.data.clone())),
        ),
        Query::ListNodes => {
            let allocations = state.allocations();
            let mut nodes: Vec<NodeInfo> = state.nodes.values().map(|n| info(n, &allocations)).collect();
            nodes.sort_by(|a, b| a.node.name.cmp(&b.node.name));
            QueryReply::Nodes(nodes)
        }
    }
}

/// What the read APIs show of a secret or config: never a secret's value.
fn file_info(state: &State, kind: FileKind, name: &str, f: &super::StoredFile) -> FileInfo {
    FileInfo {
        name: name.to_owned(),
        created_at_ms: f.created_at_ms,
        bytes: f.bytes,
        digest: f.digest.clone(),
        used_by: super::files::users(state, kind, name).into_iter().collect(),
    }
}

/// Each node's volumes, by name then node name, and the tasks meant to
/// run there that mount them.
fn volumes(state: &State) -> Vec<VolumeInfo> {
    let mut users: BTreeMap<(&str, String), Vec<String>> = BTreeMap::new();
    for t in state.tasks.values().filter(|t| t.desired == Desired::Running) {
        let Some(node) = t.node.as_deref() else { continue };
        for name in t.spec.overrides.options.mounts.iter().filter_map(|m| m.volume(t.slot)) {
            users.entry((node, name)).or_default().push(t.id.clone());
        }
    }
    let mut out: Vec<VolumeInfo> = state
        .volumes
        .iter()
        .flat_map(|(node_id, volumes)| {
            let node = state.nodes.get(node_id).map_or_else(|| node_id.clone(), |n| n.name.clone());
            let users = &users;
            volumes.iter().map(move |v| VolumeInfo {
                name: v.name.clone(),
                node_id: node_id.clone(),
                node: node.clone(),
                created_at_ms: v.created_at_ms,
                used_by: users.get(&(node_id.as_str(), v.name.clone())).cloned().unwrap_or_default(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.node).cmp(&(&b.name, &b.node)));
    out
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
