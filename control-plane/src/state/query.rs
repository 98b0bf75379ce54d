//! `query`: linearizable reads, answered from the applied state.

use berth_proto::model::{NodeInfo, Resources, Service, TaskInfo};
use serde::{Deserialize, Serialize};

use super::State;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    GetService(String),
    ListServices,
    /// By name or id.
    GetNode(String),
    ListNodes,
    /// A service's tasks.
    ListTasks(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryReply {
    Service(Option<Service>),
    Services(Vec<Service>),
    Node(Option<NodeInfo>),
    Nodes(Vec<NodeInfo>),
    Tasks(Vec<TaskInfo>),
}

pub fn query(state: &State, q: &Query) -> QueryReply {
    match q {
        Query::GetService(name) => QueryReply::Service(state.services.get(name).cloned()),
        Query::ListServices => QueryReply::Services(state.services.values().cloned().collect()),
        Query::GetNode(key) => {
            let node = state.nodes.get(key).or_else(|| state.nodes.values().find(|n| &n.name == key));
            QueryReply::Node(node.map(|n| info(state, n)))
        }
        Query::ListTasks(service) => {
            let mut tasks: Vec<TaskInfo> = state
                .tasks
                .values()
                .filter(|t| &t.service == service)
                .map(|t| TaskInfo {
                    task: t.clone(),
                    node_name: t.node.as_ref().and_then(|id| state.nodes.get(id)).map(|n| n.name.clone()),
                })
                .collect();
            tasks.sort_by_key(|i| (i.task.slot, i.task.generation));
            QueryReply::Tasks(tasks)
        }
        Query::ListNodes => {
            let mut nodes: Vec<NodeInfo> = state.nodes.values().map(|n| info(state, n)).collect();
            nodes.sort_by(|a, b| a.node.name.cmp(&b.node.name));
            QueryReply::Nodes(nodes)
        }
    }
}

/// A node with what the tasks placed on it hold.
fn info(state: &State, node: &berth_proto::model::Node) -> NodeInfo {
    let mut allocated = Resources::default();
    let mut tasks = 0;
    for t in state.tasks.values().filter(|t| t.node.as_ref() == Some(&node.id) && t.holds_resources()) {
        allocated.cpu_millis += t.resources.cpu_millis;
        allocated.memory_bytes += t.resources.memory_bytes;
        tasks += 1;
    }
    NodeInfo { node: node.clone(), allocated, tasks }
}
