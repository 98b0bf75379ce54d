//! Server-to-server gRPC clients: openraft's network, and the channels to
//! other servers that forwarding shares with it.
//!
//! Raft messages are JSON inside `pb::raft::Payload`; a remote Raft error
//! comes back inside the payload as `Result::Err`, a transport failure as a
//! gRPC status, which becomes `Unreachable` so openraft backs off.

use std::time::Duration;

use berth_proto::client::{Channels, Peer, Settings, Tls};
use berth_proto::pb::raft::raft_client::RaftClient;
use berth_proto::pb::raft::Payload;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::quiet::{self, Quiet};
use crate::store::{NodeId, TypeConfig};

pub use berth_proto::client::MAX_MESSAGE;

/// Channels to other servers and to agents, one per address
/// (`berth_proto::client`), each end checked to be what we called.
#[derive(Debug, Clone)]
pub struct Peers {
    channels: Channels,
    agents: Channels,
}

impl Peers {
    pub fn new(tls: &Tls) -> Self {
        Self::dialing(tls, Peer::Server)
    }

    /// Raft's own: its connections ask for `RAFT_NAME`, which the other
    /// server serves on its Raft runtime (`tls::incoming_split`).
    pub fn for_raft(tls: &Tls) -> Self {
        Self::dialing(tls, Peer::Raft)
    }

    fn dialing(tls: &Tls, servers: Peer) -> Self {
        Self {
            channels: Channels::new(Settings::peers(), tls.connector(servers)),
            agents: Channels::new(Settings::peers(), tls.connector(Peer::Worker)),
        }
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::Status> {
        self.channels.get(addr).map_err(|e| tonic::Status::invalid_argument(e.to_string()))
    }

    /// A channel to the agent answering at `addr`.
    pub fn agent(&self, addr: &str) -> Result<Channel, tonic::Status> {
        self.agents.get(addr).map_err(|e| tonic::Status::invalid_argument(e.to_string()))
    }

    pub fn raft(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::Status> {
        Ok(RaftClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

pub fn encode<T: Serialize>(v: &T) -> Result<Payload, tonic::Status> {
    serde_json::to_vec(v)
        .map(|json| Payload { json })
        .map_err(|e| tonic::Status::internal(format!("cannot encode message: {e}")))
}

pub fn decode<T: DeserializeOwned>(p: &Payload) -> Result<T, tonic::Status> {
    serde_json::from_slice(&p.json).map_err(|e| tonic::Status::invalid_argument(format!("malformed payload: {e}")))
}

/// The most an append carries when it holds more than one entry. openraft
/// sends up to 300 entries at once and gives an append one deadline (about
/// 200 ms) whatever its size; a follower that fell behind by large entries
/// (a thousand-task service is about 1 MB) was sent hundreds of MB, which
/// never arrived in time, and again on every retry, so it never caught up
/// and the cluster lost its leader (1000 simulated nodes, berth-sim).
const MAX_APPEND_BYTES: usize = 1 << 20;

/// How many of `entries` to send instead, when `bytes` are too many.
fn too_large(bytes: usize, entries: usize) -> Option<u64> {
    (bytes > MAX_APPEND_BYTES && entries > 1).then(|| (entries * MAX_APPEND_BYTES / bytes).max(1) as u64)
}

/// openraft's network: makes one client per target server.
#[derive(Debug, Clone)]
pub struct Network {
    pub peers: Peers,
    /// What the heartbeats promise, and who heeds it (`quiet`).
    pub quiet: Quiet,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient { target, client: self.peers.raft(&node.addr), quiet: self.quiet.clone() }
    }
}

#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    client: Result<RaftClient<Channel>, tonic::Status>,
    quiet: Quiet,
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(req).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        self.send(rpc, payload, option, None).await
    }

    async fn send<Resp, E>(
        &mut self,
        rpc: Rpc,
        payload: Payload,
        option: &RPCOption,
        promise: Option<Duration>,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self.client.as_mut().map_err(|s| RPCError::Unreachable(Unreachable::new(s)))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        if let Some(gap) = promise {
            request.metadata_mut().insert(quiet::PROMISE, (gap.as_millis() as u64).into());
        }
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| RPCError::Unreachable(Unreachable::new(&s)))?;
        if let Rpc::Append = rpc {
            self.quiet.answered(self.target, reply.metadata().contains_key(quiet::HEEDED));
        }
        let payload = reply.into_inner();
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&payload).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let payload = encode(&rpc).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        if let Some(fit) = too_large(payload.json.len(), rpc.entries.len()) {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
        }
        // Only a heartbeat promises: an append with entries means the
        // ordinary beat to whoever takes it, and from its leader before
        // the entries are acknowledged (its loop would see them a moment later).
        let promise = if rpc.entries.is_empty() {
            self.quiet.promising()
        } else {
            self.quiet.promise(None);
            None
        };
        self.send(Rpc::Append, payload, &option, promise).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A dead peer is retried quickly enough that a restarted server catches up at once.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_past_the_limit_is_split_in_proportion_but_one_entry_goes_whole() {
        assert_eq!(too_large(MAX_APPEND_BYTES, 300), None, "at the limit it goes");
        assert_eq!(too_large(MAX_APPEND_BYTES * 4, 300), Some(75));
        assert_eq!(too_large(MAX_APPEND_BYTES * 1000, 300), Some(1), "at least one entry");
        assert_eq!(too_large(MAX_APPEND_BYTES * 8, 1), None, "one entry cannot be split");
    }
}
