//! The DNS server at the edge: hickory-server on UDP and TCP, asking the
//! [`Zone`] and forwarding what is not the cluster's to the upstream
//! resolvers, byte for byte (the reply's records are passed on as they
//! came).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{Name, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::warn;

use super::zone::{Answer, Zone};

/// How long an upstream resolver has to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay silent.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running DNS server; updating its zone changes every later answer.
#[derive(Debug, Clone)]
pub struct Dns {
    zone: Arc<RwLock<Zone>>,
}

impl Dns {
    /// Serves `zone` on UDP and TCP at each of `addresses`, forwarding
    /// other names to `upstreams`; until the process ends.
    pub async fn serve(zone: Zone, addresses: &[SocketAddr], upstreams: Vec<SocketAddr>) -> io::Result<Self> {
        let zone = Arc::new(RwLock::new(zone));
        let handler = Handler { zone: zone.clone(), upstreams: upstreams.into() };
        let mut server = Server::new(handler);
        for address in addresses {
            let udp = tokio::net::UdpSocket::bind(address)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("DNS on udp {address}: {e}")))?;
            let tcp = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("DNS on tcp {address}: {e}")))?;
            server.register_socket(udp);
            server.register_listener(tcp, TCP_TIMEOUT, 16);
        }
        tokio::spawn(async move {
            if let Err(e) = server.block_until_done().await {
                warn!("the DNS server stopped: {e}");
            }
        });
        Ok(Self { zone })
    }

    /// Lets `change` rewrite the zone; answers after it see the new one.
    pub fn update(&self, change: impl FnOnce(&mut Zone)) {
        if let Ok(mut zone) = self.zone.write() {
            change(&mut zone);
        }
    }
}

struct Handler {
    zone: Arc<RwLock<Zone>>,
    upstreams: Arc<[SocketAddr]>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let query = match request.request_info() {
            Ok(info)
                if request.metadata.message_type == MessageType::Query && request.metadata.op_code == OpCode::Query =>
            {
                info.query
            }
            Ok(_) => return reply_error(&mut response, builder, meta, ResponseCode::NotImp).await,
            Err(_) => return reply_error(&mut response, builder, meta, ResponseCode::FormErr).await,
        };
        let name = Name::from(query.name().clone());
        let answer = self.zone.read().map(|zone| zone.answer(&name, query.query_type())).ok();
        let Some(answer) = answer else {
            return reply_error(&mut response, builder, meta, ResponseCode::ServFail).await;
        };
        let none: [Record; 0] = [];
        let sent = match answer {
            Answer::Found { answers, additionals } => {
                meta.authoritative = true;
                response.send_response(builder.build(meta, &answers, &none, &none, &additionals)).await
            }
            Answer::NoData { soa } => {
                meta.authoritative = true;
                response.send_response(builder.build(meta, &none, &none, [&soa], &none)).await
            }
            Answer::NxDomain { soa } => {
                meta.authoritative = true;
                meta.response_code = ResponseCode::NXDomain;
                response.send_response(builder.build(meta, &none, &none, [&soa], &none)).await
            }
            Answer::Elsewhere => {
                let tcp = request.protocol() == Protocol::Tcp;
                match forward(request.as_slice(), request.metadata.id, &self.upstreams, tcp).await {
                    Some(reply) => {
                        meta.response_code = reply.metadata.response_code;
                        meta.authoritative = reply.metadata.authoritative;
                        meta.truncation = reply.metadata.truncation;
                        let built = builder.build(meta, &reply.answers, &reply.authorities, &none, &reply.additionals);
                        response.send_response(built).await
                    }
                    None => return reply_error(&mut response, builder, meta, ResponseCode::ServFail).await,
                }
            }
        };
        sent.unwrap_or_else(|_| failed(meta))
    }
}

async fn reply_error<R: ResponseHandler>(
    response: &mut R,
    builder: MessageResponseBuilder<'_>,
    mut meta: Metadata,
    code: ResponseCode,
) -> ResponseInfo {
    meta.response_code = code;
    response.send_response(builder.build_no_records(meta)).await.unwrap_or_else(|_| failed(meta))
}

fn failed(mut metadata: Metadata) -> ResponseInfo {
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
}

/// The first answer of the upstream resolvers, asked in turn with the
/// query as it came; over TCP when the client used TCP or the UDP answer
/// was truncated.
async fn forward(query: &[u8], id: u16, upstreams: &[SocketAddr], tcp: bool) -> Option<Message> {
    for upstream in upstreams {
        let mut bytes = if tcp { ask_tcp(query, *upstream).await } else { ask_udp(query, *upstream).await };
        let truncated = bytes.as_deref().and_then(|b| Message::from_vec(b).ok()).is_some_and(|m| m.metadata.truncation);
        if truncated && !tcp {
            bytes = ask_tcp(query, *upstream).await.or(bytes);
        }
        match bytes.as_deref().map(Message::from_vec) {
            Some(Ok(reply)) if reply.metadata.id == id => return Some(reply),
            _ => continue,
        }
    }
    None
}

async fn ask_udp(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = tokio::net::UdpSocket::bind(local).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut reply = vec![0; 65535];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut reply)).await.ok()?.ok()?;
    reply.truncate(n);
    Some(reply)
}

async fn ask_tcp(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(upstream).await.ok()?;
        let len = u16::try_from(query.len()).ok()?;
        conn.write_all(&[&len.to_be_bytes()[..], query].concat()).await.ok()?;
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).await.ok()?;
        let mut reply = vec![0; u16::from_be_bytes(len) as usize];
        conn.read_exact(&mut reply).await.ok()?;
        Some(reply)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, ask).await.ok()?
}
