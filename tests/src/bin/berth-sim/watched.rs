//! A watch message as a simulated node reads it.
//!
//! A real agent decodes every service and peer it is sent, on its own
//! machine. Here a thousand simulated nodes share the servers' two cores,
//! and decoding every node's copy of every endpoint was half of the
//! simulator's CPU (a profile at 1000 nodes): CPU taken from the servers
//! it measures. A simulated node runs nothing, so it reads only its own
//! tasks' ids and the removals, and skips the rest of each message over
//! the wire format without allocating. What the servers build, encode and
//! send is unchanged, and the bytes counted are the whole message's.

use std::hash::{DefaultHasher, Hash, Hasher};

use berth_proto::pb::agent::WatchTasksRequest;
use prost::bytes::Buf;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, ProstCodec};
use tonic::Status;

/// `AssignedTasks` less what a simulated node does not use (same tags).
#[derive(Clone, PartialEq, Message)]
pub struct Watched {
    #[prost(message, repeated, tag = "1")]
    pub tasks: Vec<TaskId>,
    #[prost(message, repeated, tag = "4")]
    pub peers: Vec<PeerId>,
    #[prost(message, repeated, tag = "5")]
    pub services: Vec<Skipped>,
    #[prost(uint64, tag = "8")]
    pub revision: u64,
    #[prost(bool, tag = "9")]
    pub delta: bool,
    #[prost(string, repeated, tag = "10")]
    pub removed_tasks: Vec<String>,
    #[prost(string, repeated, tag = "11")]
    pub removed_peers: Vec<String>,
    #[prost(string, repeated, tag = "12")]
    pub removed_services: Vec<String>,
    #[prost(bool, tag = "13")]
    pub tasks_whole: bool,
    /// The part every node is sent alike, merged in as it is read.
    #[prost(bytes = "bytes", tag = "14")]
    pub shared: prost::bytes::Bytes,
}

/// An `AssignedTask`'s id alone.
#[derive(Clone, PartialEq, Message)]
pub struct TaskId {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// A `Peer`'s node id alone (the shared part lists the node's own).
#[derive(Clone, PartialEq, Message)]
pub struct PeerId {
    #[prost(string, tag = "1")]
    pub node_id: String,
}

/// A message whose fields are all skipped: only that it came is kept.
#[derive(Clone, PartialEq, Message)]
pub struct Skipped {}

/// One message: its encoded size, a hash of its bytes (for a whole list,
/// to tell a repeat from a change; 0 for a delta) and what was read.
pub struct Received {
    pub bytes: u64,
    pub hash: u64,
    pub message: Watched,
}

/// The watch's codec: requests as tonic's, replies read as `Received`.
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchTasksRequest;
    type Decode = Received;
    type Encoder = <ProstCodec<WatchTasksRequest, Skipped> as Codec>::Encoder;
    type Decoder = WatchDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<WatchTasksRequest, Skipped>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        WatchDecoder
    }
}

pub struct WatchDecoder;

impl Decoder for WatchDecoder {
    type Item = Received;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Received>, Status> {
        let len = buf.remaining();
        let raw = buf.copy_to_bytes(len);
        let bad = |e: prost::DecodeError| Status::internal(format!("watch message: {e}"));
        let mut message = Watched::decode(raw.clone()).map_err(bad)?;
        let shared = std::mem::take(&mut message.shared);
        message.merge(shared).map_err(bad)?;
        let hash = match message.delta {
            true => 0,
            false => {
                let mut h = DefaultHasher::new();
                raw.hash(&mut h);
                h.finish()
            }
        };
        Ok(Some(Received { bytes: len as u64, hash, message }))
    }
}
