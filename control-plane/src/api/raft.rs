//! The `Raft` gRPC service: openraft's RPCs and forwarded leader work.

use std::sync::Arc;

use berth_proto::pb::raft::raft_server::Raft as RaftService;
use berth_proto::pb::raft::Payload;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use crate::elect::{Elections, PreVote};
use crate::network::{decode, encode};
use crate::node::{LeaderOp, Node};
use crate::quiet;
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
        let promise = quiet::promise_of(req.metadata().get(quiet::PROMISE).and_then(|v| v.to_str().ok()));
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        let answer = self.node.raft.append_entries(rpc).await;
        // From our leader (not one of an older term): its promise holds.
        if matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
            self.elections.quiet().heard(promise);
        }
        let mut reply = Response::new(encode(&answer)?);
        reply.metadata_mut().insert(quiet::HEEDED, tonic::metadata::MetadataValue::from_static("1"));
        Ok(reply)
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
