//! `query`: linearizable reads, answered from the applied state.

use berth_proto::model::Service;
use serde::{Deserialize, Serialize};

use super::State;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    GetService(String),
    ListServices,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryReply {
    Service(Option<Service>),
    Services(Vec<Service>),
}

pub fn query(state: &State, q: &Query) -> QueryReply {
    match q {
        Query::GetService(name) => QueryReply::Service(state.services.get(name).cloned()),
        Query::ListServices => QueryReply::Services(state.services.values().cloned().collect()),
    }
}
