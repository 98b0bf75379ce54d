//! The DNS server at the edge: hickory-server on UDP and TCP, asking the
//! [`Zone`] and forwarding what is not the cluster's to the upstream
//! resolvers, byte for byte (the reply's records are passed on as they
//! came).
//!
//! Bounded against a flooding container: at most `MAX_FORWARDS` questions
//! are with the upstreams at once (each holds a socket), and any more are
//! answered SERVFAIL at once; TCP takes at most `tcp::MAX_CONNECTIONS`.
//! So a container cannot use up the agent's file descriptors through its
//! DNS, and the cluster's own names, answered from memory, keep coming.
//!
//! It runs on a thread of its own with its own one-thread runtime: the
//! agent's runtime is one thread too, and whatever holds that up (a pass
//! of the worker, a large watch message, an overlay update) must not hold
//! up the names containers are waiting for.

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
use crate::stats::AgentStats;

/// How long an upstream resolver has to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay silent.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// Questions with the upstream resolvers at once (Docker's embedded DNS
/// allows 1024 per container network; this is per node).
pub const MAX_FORWARDS: usize = 256;

/// A running DNS server; updating its zone changes every later answer.
/// Dropping it stops the server and closes its sockets.
#[derive(Debug)]
pub struct Dns {
    zone: Arc<RwLock<Zone>>,
    /// Dropped with the server: its thread then ends.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Dns {
    /// Serves `zone` on UDP and TCP at each of `addresses`, forwarding
    /// other names to `upstreams`, on a thread of its own; an address that
    /// cannot be bound is an error here, before anything runs.
    pub fn serve(
        zone: Zone,
        addresses: &[SocketAddr],
        upstreams: Vec<SocketAddr>,
        stats: AgentStats,
    ) -> io::Result<Self> {
        let mut sockets = Vec::new();
        for address in addresses {
            let named = |proto: &'static str| {
                move |e: io::Error| io::Error::new(e.kind(), format!("DNS on {proto} {address}: {e}"))
            };
            let udp = std::net::UdpSocket::bind(address).map_err(named("udp"))?;
            let tcp = std::net::TcpListener::bind(address).map_err(named("tcp"))?;
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
            sockets.push((udp, tcp));
        }
        let zone = Arc::new(RwLock::new(zone));
        let handler = Handler {
            zone: zone.clone(),
            upstreams: upstreams.into(),
            forwards: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS)),
            stats,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name("dns".into()).spawn(move || {
            runtime.block_on(async move {
                let mut server = Server::new(handler.clone());
                let handler = Arc::new(handler);
                for (udp, tcp) in sockets {
                    match (tokio::net::UdpSocket::from_std(udp), tokio::net::TcpListener::from_std(tcp)) {
                        (Ok(udp), Ok(tcp)) => {
                            server.register_socket(udp);
                            tokio::spawn(super::tcp::serve(tcp, handler.clone(), TCP_TIMEOUT));
                        }
                        (Err(e), _) | (_, Err(e)) => warn!("DNS: {e}"),
                    }
                }
                tokio::select! {
                    done = server.block_until_done() => if let Err(e) = done { warn!("the DNS server stopped: {e}") },
                    _ = stopped => {}
                }
            })
        })?;
        Ok(Self { zone, _stop: stop })
    }

    /// Lets `change` rewrite the zone; answers after it see the new one.
    pub fn update(&self, change: impl FnOnce(&mut Zone)) {
        if let Ok(mut zone) = self.zone.write() {
            change(&mut zone);
        }
    }
}

#[derive(Clone)]
struct Handler {
    zone: Arc<RwLock<Zone>>,
    upstreams: Arc<[SocketAddr]>,
    /// A permit per question with the upstreams.
    forwards: Arc<tokio::sync::Semaphore>,
    stats: AgentStats,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, response: R) -> ResponseInfo {
        let started = std::time::Instant::now();
        let info = self.answer(request, response).await;
        self.stats.dns_queries.get_or_create(&[("rcode", rcode(info.response_code))]).inc();
        self.stats.dns_seconds.observe(started.elapsed().as_secs_f64());
        info
    }
}

/// A response code as the `rcode` label names it.
fn rcode(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "noerror",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::ServFail => "servfail",
        ResponseCode::FormErr => "formerr",
        ResponseCode::NotImp => "notimp",
        ResponseCode::Refused => "refused",
        _ => "other",
    }
}

impl Handler {
    async fn answer<R: ResponseHandler>(&self, request: &Request, mut response: R) -> ResponseInfo {
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
            Answer::NotReady => return reply_error(&mut response, builder, meta, ResponseCode::ServFail).await,
            Answer::Elsewhere => {
                let Ok(_permit) = self.forwards.try_acquire() else {
                    return reply_error(&mut response, builder, meta, ResponseCode::ServFail).await;
                };
                self.stats.dns_forwarded.inc();
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

#[cfg(test)]
mod tests {
    //! The real server on loopback, fed what a hostile or broken client
    //! sends: it must keep answering real questions.
    use hickory_server::proto::op::Query;
    use hickory_server::proto::rr::{RData, RecordType};

    use super::*;
    use crate::dns::zone::Service;

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        message.to_vec().unwrap()
    }

    async fn ask(socket: &tokio::net::UdpSocket, bytes: &[u8]) -> Option<Message> {
        socket.send(bytes).await.ok()?;
        let mut reply = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut reply)).await.ok()?.ok()?;
        Message::from_vec(&reply[..n]).ok()
    }

    #[tokio::test]
    async fn malformed_truncated_and_oversized_messages_do_not_disturb_the_server() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let at: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut zone = Zone::new("berth.local", 5).unwrap();
        let web = Service { name: "web".into(), replicas: vec![(1, [198, 19, 1, 2].into())], ports: vec![] };
        zone.update(None, vec![web]);
        let stats = AgentStats::default();
        let dns = Dns::serve(zone, &[at], vec![], stats.clone()).unwrap();
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(at).await.unwrap();
        let answered = |m: &Message, id: u16| {
            m.metadata.id == id
                && matches!(m.answers.first().map(|r| &r.data), Some(RData::A(a)) if a.0 == std::net::Ipv4Addr::new(198, 19, 1, 2))
        };
        assert!(ask(&client, &query(1, "web.berth.local.")).await.is_some_and(|m| answered(&m, 1)));

        // Every prefix of a real question, random bytes of many lengths (a
        // fixed generator: the same cases every run), a header that promises
        // questions it lacks, a name that points at itself, and the largest
        // datagram UDP carries.
        let whole = query(2, "web.berth.local.");
        let mut cases: Vec<Vec<u8>> = (0..whole.len()).map(|n| whole[..n].to_vec()).collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in (0..600).step_by(7) {
            cases.push(
                (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect(),
            );
        }
        cases.push([&[0, 3, 1, 0, 0, 10, 0, 0, 0, 0, 0, 0][..], &[0; 4]].concat());
        cases.push([&[0, 4, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0][..], &[0xc0, 12, 0, 1, 0, 1]].concat());
        cases.push(vec![0xff; 65_507]);
        for case in &cases {
            let _ = client.send(case).await;
        }
        // Over TCP: a length that promises more than comes, then garbage.
        if let Ok(mut conn) = tokio::net::TcpStream::connect(at).await {
            let _ = conn.write_all(&[0xff, 0xff, 1, 2, 3]).await;
        }
        if let Ok(mut conn) = tokio::net::TcpStream::connect(at).await {
            let _ = conn.write_all(&[0, 5, 9, 9, 9, 9, 9]).await;
        }

        // The server has read them all: it answers what it can parse (a
        // format error, for most) and the answers stop coming.
        let mut errors = 0;
        let mut buf = vec![0; 4096];
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf)).await {
            errors += 1;
        }
        assert!(errors > 0, "no answer to any malformed message");
        // Still answering, over UDP (from a fresh socket: the old one holds
        // the errors the server sent back) and TCP.
        let fresh = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        fresh.connect(at).await.unwrap();
        let reply = ask(&fresh, &query(100, "web.berth.local.")).await;
        assert!(reply.is_some_and(|m| answered(&m, 100)), "the server stopped answering after malformed input");
        // Each question answered is counted by its code (the two before
        // this line were answered, so counted, before their replies came).
        assert!(stats.dns_queries.get_or_create(&[("rcode", "noerror")]).get() >= 2);
        assert_eq!(stats.dns_forwarded.get(), 0, "nothing was asked outside the zone");
        let question = query(200, "web.berth.local.");
        let reply = ask_tcp(&question, at).await.expect("a TCP answer");
        assert!(answered(&Message::from_vec(&reply).unwrap(), 200));

        // Dropped, it stops and lets go of its address (as when the node's
        // network changes and the agent starts it again).
        drop(dns);
        let mut again = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            again = Dns::serve(Zone::new("berth.local", 5).unwrap(), &[at], vec![], AgentStats::default()).ok();
            if again.is_some() {
                break;
            }
        }
        assert!(again.is_some(), "the address was still held after the server was dropped");
    }

    /// Descriptors this process holds now (other tests' included: hence
    /// the slack in the bounds below).
    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[tokio::test]
    async fn a_flooding_client_cannot_use_up_descriptors_and_the_zone_keeps_answering() {
        const SLACK: usize = 100;
        // An upstream that takes every question and answers none: each
        // forwarded question holds its socket for the whole timeout.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let at: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut zone = Zone::new("berth.local", 5).unwrap();
        zone.update(
            None,
            vec![Service { name: "web".into(), replicas: vec![(1, [198, 19, 1, 2].into())], ports: vec![] }],
        );
        let _dns = Dns::serve(zone, &[at], vec![silent.local_addr().unwrap()], AgentStats::default()).unwrap();
        let before = open_fds();

        // 2000 questions for names elsewhere, in bursts the socket buffers hold.
        let client = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        client.connect(at).await.unwrap();
        let reader = client.clone();
        let failed = tokio::spawn(async move {
            let (mut servfail, mut buf) = (0, vec![0; 4096]);
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), reader.recv(&mut buf)).await {
                servfail += usize::from(
                    Message::from_vec(&buf[..n]).is_ok_and(|m| m.metadata.response_code == ResponseCode::ServFail),
                );
            }
            servfail
        });
        let mut most = 0;
        for burst in 0..20u16 {
            for i in 0..100 {
                let id = burst * 100 + i;
                client.send(&query(id, &format!("n{id}.example."))).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            most = most.max(open_fds());
        }
        assert!(
            most <= before + MAX_FORWARDS + SLACK,
            "{} descriptors opened by the flood; at most {MAX_FORWARDS} forwards at once",
            most - before
        );
        // Past the cap, an answer at once: SERVFAIL.
        let fresh = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        fresh.connect(at).await.unwrap();
        let reply = ask(&fresh, &query(9999, "more.example.")).await.expect("an answer while the upstreams are full");
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        // The cluster's own names answer all along.
        let reply = ask(&fresh, &query(7, "web.berth.local.")).await.expect("the zone answers during a flood");
        assert_eq!(reply.answers.len(), 1);
        assert!(failed.await.unwrap() > 1000, "most of the flood was answered SERVFAIL, not left hanging");

        // TCP: 300 connections held open are 300 descriptors of the
        // client's here, and at most MAX_CONNECTIONS of the server's.
        let before = open_fds();
        let mut conns = Vec::new();
        for _ in 0..300 {
            conns.push(tokio::net::TcpStream::connect(at).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held = open_fds() - before;
        assert!(held <= 300 + super::super::tcp::MAX_CONNECTIONS + SLACK, "{held} descriptors for 300 connections");
        // They are one address's: another (a neighbour container) is still served.
        let neighbour = async {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind(([127, 0, 0, 2], 0).into()).ok()?;
            let mut conn = socket.connect(at).await.ok()?;
            let question = query(9, "web.berth.local.");
            conn.write_all(&[&(question.len() as u16).to_be_bytes()[..], &question].concat()).await.ok()?;
            let mut len = [0u8; 2];
            conn.read_exact(&mut len).await.ok()?;
            let mut reply = vec![0; u16::from_be_bytes(len).into()];
            conn.read_exact(&mut reply).await.ok()?;
            Message::from_vec(&reply).ok()
        };
        let reply = tokio::time::timeout(Duration::from_secs(10), neighbour).await.ok().flatten();
        assert!(reply.is_some_and(|m| m.answers.len() == 1), "one address took every TCP slot");
        drop(conns);
        let answered = async {
            loop {
                if let Some(reply) = ask_tcp(&query(8, "web.berth.local."), at).await {
                    return Message::from_vec(&reply).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let reply = tokio::time::timeout(Duration::from_secs(30), answered).await.expect("TCP answers again");
        assert_eq!(reply.answers.len(), 1);
    }
}
