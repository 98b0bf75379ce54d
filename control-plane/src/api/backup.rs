//! `Cluster.Backup`: the replicated state as a backup file (`crate::backup`),
//! written by the leader and sent in pieces.
//!
//! Only the leader writes it, after confirming with a quorum that it still
//! leads (as a linearizable read does), so the file holds every write
//! acknowledged before the call. A follower passes the call on, once, and
//! relays the pieces.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::pb::cluster::cluster_client::ClusterClient;
use berth_proto::pb::cluster::{BackupChunk, BackupRequest};
use tonic::codegen::tokio_stream::{self, Stream};
use tonic::{Request, Status};

use crate::network::MAX_MESSAGE;
use crate::node::Node;

/// The pieces of a backup, as the API streams them.
pub type Chunks = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send>>;

/// The size of each piece: well under any message limit.
const CHUNK: usize = 1 << 20;

/// The backup, written here if this server leads, else by the leader
/// (unless this call was already passed on: `forwarded`).
pub async fn backup(node: &Arc<Node>, forwarded: bool) -> Result<Chunks, Status> {
    let m = node.metrics();
    if m.current_leader != Some(node.id) {
        if forwarded {
            return Err(Status::unavailable("the server asked no longer leads; try again"));
        }
        let leader = m.current_leader.ok_or_else(|| Status::unavailable("no leader is elected yet; try again"))?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| Status::unavailable(format!("leader {leader} has no known address; try again")))?;
        let channel = node.peers.channel(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
        let mut req = Request::new(BackupRequest {});
        req.metadata_mut().insert(super::cluster::FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        let pieces = ClusterClient::new(channel).max_decoding_message_size(MAX_MESSAGE).backup(req).await?;
        return Ok(Box::pin(pieces.into_inner()));
    }
    node.confirm_leading().await?;
    let applied = node.applied.clone();
    let taken = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // A copy under the lock, the file made from it on a blocking thread,
    // as a snapshot is built.
    let file = tokio::task::spawn_blocking(move || {
        let copy = applied.read().map_err(|_| Status::internal("state lock poisoned"))?.clone();
        crate::backup::encode(&copy, taken).map_err(|e| Status::unavailable(format!("{e:#}")))
    })
    .await
    .map_err(|e| Status::internal(format!("writing the backup: {e}")))??;
    let pieces: Vec<_> = file.chunks(CHUNK).map(|c| Ok(BackupChunk { data: c.to_vec() })).collect();
    tracing::info!(bytes = file.len(), "a backup was taken");
    Ok(Box::pin(tokio_stream::iter(pieces)))
}
