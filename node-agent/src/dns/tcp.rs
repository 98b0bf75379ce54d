//! DNS over TCP (RFC 7766), served here rather than by hickory's listener
//! because that one takes every connection it is offered: each holds one
//! of the agent's file descriptors for as long as its client keeps it
//! (up to the idle timeout, again and again), so a container opening
//! connections in a loop could leave the agent none to open its own
//! files, sockets and containers. Here at most `MAX_CONNECTIONS` are
//! served at once, `PER_SOURCE` of them from one address, each for at
//! most a minute, and any more are closed as they come; a client falls
//! back to UDP or tries again.
//!
//! Each message is a two-byte length and the query; the connection's
//! questions are answered in turn by the same handler as UDP's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::quota::Quota;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tracing::warn;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections served at once from one address (one container), so one
/// cannot take every slot from its neighbours.
pub const PER_SOURCE: usize = 8;
/// How long one connection is served, however busy: a client that keeps
/// asking just under the idle timeout does not hold its slot forever.
const LIFETIME: Duration = Duration::from_secs(60);

/// Accepts connections for as long as the runtime runs.
pub async fn serve<H: RequestHandler>(listener: TcpListener, handler: Arc<H>, idle: Duration) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let sources = Quota::new("DNS connections", PER_SOURCE);
    loop {
        let (conn, src) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or memory: wait rather than spin.
                warn!("DNS over TCP: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Full, or this source has its share: dropping it closes it.
        let Ok(mine) = sources.take(&src.ip().to_string()) else { continue };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _held = (slot, mine);
            let _ = tokio::time::timeout(LIFETIME, session(conn, src, &*handler, idle)).await;
        });
    }
}

/// Answers one connection's questions until it closes, stays silent for
/// `idle`, or sends what cannot be a question.
async fn session<H: RequestHandler>(mut conn: TcpStream, src: SocketAddr, handler: &H, idle: Duration) {
    loop {
        let mut len = [0u8; 2];
        if !matches!(timeout(idle, conn.read_exact(&mut len)).await, Ok(Ok(_))) {
            return;
        }
        let mut query = vec![0; usize::from(u16::from_be_bytes(len))];
        if !matches!(timeout(idle, conn.read_exact(&mut query)).await, Ok(Ok(_))) {
            return;
        }
        let reply = match Request::from_bytes(query.clone(), src, Protocol::Tcp) {
            Ok(request) => {
                let reply = Reply::default();
                handler.handle_request::<_, TokioTime>(&request, reply.clone()).await;
                reply.take()
            }
            Err(_) => format_error(&query),
        };
        let Some(reply) = reply else { return };
        let Ok(len) = u16::try_from(reply.len()) else { return };
        let sent = timeout(idle, conn.write_all(&[&len.to_be_bytes()[..], &reply].concat())).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}

/// FORMERR for a message with a header but no sense after it, as a UDP
/// one gets; nothing for one too short to hold a header.
fn format_error(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut message = Message::new(u16::from_be_bytes([query[0], query[1]]), MessageType::Response, OpCode::Query);
    message.metadata.response_code = ResponseCode::FormErr;
    message.to_vec().ok()
}

/// Keeps the encoded answer for the session to write.
#[derive(Clone, Default)]
struct Reply(Arc<Mutex<Option<Vec<u8>>>>);

impl Reply {
    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().ok()?.take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Reply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(u16::MAX);
        let info = response.destructive_emit(&mut encoder)?;
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(bytes);
        }
        Ok(info)
    }
}
