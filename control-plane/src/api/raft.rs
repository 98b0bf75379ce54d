//! The `Raft` gRPC service: openraft's RPCs and forwarded leader work.

use std::sync::Arc;

use berth_proto::pb::raft::raft_server::Raft as RaftService;
use berth_proto::pb::raft::Payload;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use crate::elect::{Elections, PreVote};
use crate::network::{decode, encode};
use crate::node::{LeaderOp, Node};
use crate::store::{NodeId, TypeConfig};

#[derive(Debug, Clone)]
pub struct RaftApi {
    pub node: Arc<Node>,
    pub elections: Elections,
}

type Reply = Result<Response<Payload>, Status>;

#[tonic::async_trait]
impl RaftService for RaftApi {
    async fn append_entries(&self, req: Request<Payload>) -> Reply {
        super::auth::server(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        Ok(Response::new(encode(&self.node.raft.append_entries(rpc).await)?))
    }

    async fn vote(&self, req: Request<Payload>) -> Reply {
        super::auth::server(&req)?;
        let rpc: VoteRequest<NodeId> = decode(req.get_ref())?;
        Ok(Response::new(encode(&self.node.raft.vote(rpc).await)?))
    }

    async fn pre_vote(&self, req: Request<Payload>) -> Reply {
        super::auth::server(&req)?;
        let ask: PreVote = decode(req.get_ref())?;
        let yes = self.elections.answer(&ask).await.map_err(|e| Status::unavailable(format!("Raft stopped: {e}")))?;
        Ok(Response::new(encode(&yes)?))
    }

    async fn install_snapshot(&self, req: Request<Payload>) -> Reply {
        super::auth::server(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        Ok(Response::new(encode(&self.node.raft.install_snapshot(rpc).await)?))
    }

    async fn forward(&self, req: Request<Payload>) -> Reply {
        super::auth::server(&req)?;
        let op: LeaderOp = decode(req.get_ref())?;
        Ok(Response::new(encode(&self.node.here(&op).await)?))
    }
}
