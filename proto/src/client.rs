//! How every berth process reaches another over gRPC, in one place: the
//! channel settings (connect timeout, HTTP/2 keepalive, deadlines, message
//! limits), failing over between the servers a client knows, and the
//! backoff between tries. Every channel is mutual TLS (`crate::tls`): a
//! `Connector` says what we present and whom we expect at the other end.
//!
//! ```text
//! berthctl, agent (join, heartbeat, watch, report) ─▶ Servers: addresses, one in use,
//!                                                      next on failure after Backoff
//! server ─▶ server (Raft, forward), server ─▶ agent ─▶ Channels: one per address, cached
//!                                            both ──▶ channel(addr, Settings) ─▶ tonic Channel
//! ```
//!
//! A failure "in transport" (refused, reset, timed out, no answer) moves a
//! client on to the next server; an answer from a server never does: a
//! server's UNAVAILABLE is already the cluster's verdict after waiting for
//! a quorum.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};

pub use crate::tls::{Connector, Peer, Tls};

/// The largest message any berth process sends or accepts (a list of
/// every service, a node's assignment in a large cluster).
pub const MAX_MESSAGE: usize = 64 << 20;

/// How a channel behaves; see the presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// The deadline of each call (a stream's: until its first answer).
    /// None for callers that set one per request.
    pub request_timeout: Option<Duration>,
    /// HTTP/2 pings, also while idle: a peer that does not answer one
    /// within `keepalive_timeout` (frozen, or its host gone) ends the
    /// connection, and every call and stream on it fails at once.
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
}

impl Settings {
    /// Calls to a cluster's servers that must answer within `timeout`.
    pub const fn calls(timeout: Duration) -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Some(timeout),
            keepalive: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
        }
    }

    /// Server to server and server to agent: each request sets its own deadline.
    pub const fn peers() -> Self {
        Self { connect_timeout: Duration::from_secs(1), request_timeout: None, ..Self::calls(Duration::ZERO) }
    }
}

/// An address that cannot name a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server address {addr:?} is not valid: expected HOST:PORT ({why})")]
pub struct BadAddress {
    pub addr: String,
    pub why: String,
}

/// A channel to `addr` (`HOST:PORT`, or a URL), connected on first use
/// and again after a failure.
pub fn channel(addr: &str, settings: &Settings, connector: &Connector) -> Result<Channel, BadAddress> {
    let bad = |why: String| BadAddress { addr: addr.to_owned(), why };
    if addr.is_empty() || addr.contains(char::is_whitespace) {
        return Err(bad("empty or with spaces".into()));
    }
    let url = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(url).map_err(|e| bad(e.to_string()))?;
    if endpoint.uri().port_u16().is_none() {
        return Err(bad("no port".into()));
    }
    let endpoint = endpoint
        .connect_timeout(settings.connect_timeout)
        .http2_keep_alive_interval(settings.keepalive)
        .keep_alive_timeout(settings.keepalive_timeout)
        .keep_alive_while_idle(true);
    let endpoint = match settings.request_timeout {
        Some(t) => endpoint.timeout(t),
        None => endpoint,
    };
    Ok(endpoint.connect_with_connector_lazy(connector.clone()))
}

/// Calls one connection may have open at once, unless a server is told
/// otherwise: Go's gRPC and Kubernetes' API server allow 250-1000; each
/// open call holds a task and buffers here.
pub const MAX_STREAMS: u32 = 256;

/// The server side of the same settings: pings to notice a client that
/// froze or vanished mid-stream (a log follower, a watching agent), and at
/// most `max_streams` calls open per connection (HTTP/2's
/// MAX_CONCURRENT_STREAMS: a client's next call waits). Serve it
/// `tls::incoming`.
pub fn server(max_streams: u32) -> Server {
    let s = Settings::peers();
    Server::builder()
        .http2_keepalive_interval(Some(s.keepalive))
        .http2_keepalive_timeout(Some(s.keepalive_timeout))
        .max_concurrent_streams(Some(max_streams))
}

/// Pauses between tries: `first`, doubling up to `max`, from `first`
/// again after a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, next: first }
    }

    /// The pause before the next try.
    pub fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

impl Default for Backoff {
    /// 100 ms to 5 s: what every client of the cluster uses.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// The servers of a cluster as one client sees them: one in use at a
/// time, the next after a failure. Clones share connections, not the
/// choice of server.
#[derive(Debug, Clone)]
pub struct Servers {
    list: Vec<(String, Channel)>,
    at: usize,
    backoff: Backoff,
}

/// Why no server gave an answer: each one's transport failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no berth server answered ({})", .0.iter().map(|(a, why)| format!("{a}: {why}")).collect::<Vec<_>>().join("; "))]
pub struct Unreachable(pub Vec<(String, String)>);

/// A call that did not succeed: a server's answer, or none at all.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{}", .0.message())]
    Answered(Status),
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
}

impl Servers {
    pub fn new(addrs: &[String], settings: &Settings, connector: &Connector) -> Result<Self, BadAddress> {
        if addrs.is_empty() {
            return Err(BadAddress { addr: String::new(), why: "no server given".into() });
        }
        let list = addrs.iter().map(|a| Ok((a.clone(), channel(a, settings, connector)?))).collect::<Result<_, _>>()?;
        Ok(Self { list, at: 0, backoff: Backoff::default() })
    }

    /// Starts at the server `key` falls on (FNV-1a of it, modulo), so that
    /// many nodes given the same list spread over the servers instead of
    /// all calling the first (one server serving every watch and beat).
    pub fn spread(mut self, key: &str) -> Self {
        let hash =
            key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        self.at = (hash % self.list.len() as u64) as usize;
        self
    }

    /// The channel to the server in use.
    pub fn channel(&self) -> Channel {
        self.list[self.at].1.clone()
    }

    /// The address of the server in use.
    pub fn current(&self) -> &str {
        &self.list[self.at].0
    }

    /// The server in use answered: the next failure pauses briefly again.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
    }

    /// The server in use failed: move to the next one, after a pause that
    /// grows while failures go on.
    pub async fn failed(&mut self) {
        self.at = (self.at + 1) % self.list.len();
        tokio::time::sleep(self.backoff.pause()).await;
    }

    /// Calls `f` on each server in turn, from the first, until one answers;
    /// only a failure in transport moves on.
    pub async fn first_answer<T, F>(&self, f: F) -> Result<T, CallError>
    where
        F: AsyncFn(Channel) -> Result<tonic::Response<T>, Status>,
    {
        let mut failures = Vec::new();
        for (addr, channel) in &self.list {
            match f(channel.clone()).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if is_transport(&status) => failures.push((addr.clone(), root_cause(&status))),
                Err(status) => return Err(CallError::Answered(status)),
            }
        }
        Err(Unreachable(failures).into())
    }
}

/// Channels to addresses learnt as a process runs (servers of its Raft
/// cluster, agents of its nodes), made once per address and shared.
#[derive(Debug, Clone)]
pub struct Channels {
    settings: Settings,
    connector: Connector,
    map: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    pub fn new(settings: Settings, connector: Connector) -> Self {
        Self { settings, connector, map: Arc::default() }
    }

    pub fn get(&self, addr: &str) -> Result<Channel, BadAddress> {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let made = channel(addr, &self.settings, &self.connector)?;
        map.insert(addr.to_owned(), made.clone());
        Ok(made)
    }
}

/// A status made on this side of the wire (no connection, a broken
/// stream, a deadline passed) rather than one a server sent.
pub fn is_transport(status: &Status) -> bool {
    let from_server = status.metadata().contains_key("content-type");
    !from_server
        && matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Internal
        )
}

/// Why a call failed, for a person: the root cause of a failure in
/// transport, else what the server said.
pub fn reason(status: &Status) -> String {
    if is_transport(status) {
        root_cause(status)
    } else {
        status.message().to_owned()
    }
}

/// The root cause of a failure, such as "Connection refused (os error 111)".
pub fn root_cause(status: &Status) -> String {
    use std::error::Error;
    let mut root: Option<&dyn Error> = status.source();
    while let Some(next) = root.and_then(|e| e.source()) {
        root = Some(next);
    }
    let cause = root.map_or_else(|| status.message().to_owned(), |e| e.to_string());
    // What a locked server (autolock) answers every call but Unlock with.
    if cause.contains("mapped from HTTP status code 503") {
        return "not serving (HTTP 503): a server locked by autolock waits for `berthctl cluster unlock`".into();
    }
    cause
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_starts_over_after_a_success() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..8).map(|_| b.pause().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.pause(), Duration::from_millis(100));
    }

    /// A root, a server's TLS and a worker's connector to servers.
    fn trust() -> (Tls, Connector) {
        use crate::pki::{Ca, Role};
        let day = Duration::from_secs(86400);
        let ca = Ca::new("c").unwrap();
        let server = Tls::new(&ca.credentials("c", Role::Server, "s", day, &ca.cert).unwrap()).unwrap();
        let worker = Tls::new(&ca.credentials("c", Role::Worker, "w", day, &ca.cert).unwrap()).unwrap();
        (server, worker.connector(Peer::Server))
    }

    #[tokio::test]
    async fn addresses_are_checked_and_failures_move_on_in_turn() {
        let s = Settings::calls(Duration::from_secs(1));
        let (_, c) = trust();
        for bad in ["", "a b:1", "host-without-port", "http://"] {
            assert!(channel(bad, &s, &c).is_err(), "{bad:?}");
        }
        assert!(Servers::new(&[], &s, &c).is_err());
        let mut servers = Servers::new(&["127.0.0.1:1".into(), "127.0.0.1:2".into()], &s, &c).unwrap();
        assert_eq!(servers.current(), "127.0.0.1:1");
        servers.failed().await;
        assert_eq!(servers.current(), "127.0.0.1:2");
        servers.failed().await;
        assert_eq!(servers.current(), "127.0.0.1:1");
    }

    #[tokio::test]
    async fn nodes_given_the_same_list_spread_over_the_servers() {
        let s = Settings::calls(Duration::from_secs(1));
        let (_, c) = trust();
        let list: Vec<String> = (1..=3).map(|p| format!("127.0.0.1:{p}")).collect();
        let servers = Servers::new(&list, &s, &c).unwrap();
        let mut count: std::collections::BTreeMap<String, usize> = Default::default();
        for n in 0..999 {
            *count.entry(servers.clone().spread(&format!("node-{n}")).current().to_owned()).or_default() += 1;
        }
        assert_eq!(count.len(), 3, "{count:?}");
        assert!(count.values().all(|n| *n > 250), "{count:?}");
        // The same node always starts at the same server.
        assert_eq!(servers.clone().spread("node-7").current(), servers.clone().spread("node-7").current());
    }

    /// An agent service that refuses to register and never answers heartbeats.
    #[derive(Debug)]
    struct Refusing;

    #[tonic::async_trait]
    impl crate::pb::agent::agent_server::Agent for Refusing {
        async fn join(&self, _: tonic::Request<pb::JoinRequest>) -> Result<tonic::Response<pb::JoinReply>, Status> {
            Err(Status::unimplemented("no"))
        }
        async fn register(
            &self,
            _: tonic::Request<pb::RegisterRequest>,
        ) -> Result<tonic::Response<pb::RegisterReply>, Status> {
            Err(Status::unavailable("no quorum"))
        }
        async fn heartbeat(
            &self,
            _: tonic::Request<pb::HeartbeatRequest>,
        ) -> Result<tonic::Response<pb::HeartbeatReply>, Status> {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(tonic::Response::new(pb::HeartbeatReply::default()))
        }
        async fn renew(&self, _: tonic::Request<pb::RenewRequest>) -> Result<tonic::Response<pb::JoinReply>, Status> {
            Err(Status::unimplemented("no"))
        }
        type WatchTasksStream = tonic::codegen::tokio_stream::Empty<Result<pb::AssignedTasks, Status>>;
        async fn watch_tasks(
            &self,
            _: tonic::Request<pb::WatchTasksRequest>,
        ) -> Result<tonic::Response<Self::WatchTasksStream>, Status> {
            Err(Status::unimplemented("no"))
        }
        async fn report_tasks(
            &self,
            _: tonic::Request<pb::ReportTasksRequest>,
        ) -> Result<tonic::Response<pb::ReportTasksReply>, Status> {
            Err(Status::invalid_argument("no"))
        }
        async fn report_volumes(
            &self,
            _: tonic::Request<pb::ReportVolumesRequest>,
        ) -> Result<tonic::Response<pb::ReportVolumesReply>, Status> {
            Err(Status::invalid_argument("no"))
        }
    }

    use crate::pb::agent as pb;
    use crate::pb::agent::agent_client::AgentClient;

    #[tokio::test]
    async fn a_closed_port_and_a_deadline_move_on_and_a_servers_answer_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap().to_string();
        let (tls, c) = trust();
        let incoming = crate::tls::incoming(listener, tls);
        let service = crate::pb::agent::agent_server::AgentServer::new(Refusing);
        tokio::spawn(server(MAX_STREAMS).add_service(service).serve_with_incoming(incoming));
        // A port nobody listens on: bound, then let go.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let settings = Settings::calls(Duration::from_millis(500));
        let servers = Servers::new(&[closed.clone(), live.clone()], &settings, &c).unwrap();
        let tried = std::sync::Mutex::new(Vec::new());
        let register = async |c: Channel| {
            tried.lock().unwrap().push(());
            AgentClient::new(c).register(pb::RegisterRequest::default()).await
        };
        match servers.first_answer(register).await {
            Err(CallError::Answered(s)) => assert_eq!((s.code(), s.message()), (Code::Unavailable, "no quorum")),
            other => panic!("the live server's answer is final: {other:?}"),
        }
        assert_eq!(tried.lock().unwrap().len(), 2, "the closed port was tried first, and left");
        // A server that does not answer within the deadline is as good as none.
        let beat = async |c: Channel| AgentClient::new(c).heartbeat(pb::HeartbeatRequest::default()).await;
        match Servers::new(&[live, closed], &settings, &c).unwrap().first_answer(beat).await {
            Err(CallError::Unreachable(Unreachable(all))) => {
                assert_eq!(all.len(), 2, "{all:?}");
                assert!(all[1].1.contains("refused"), "{all:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_connection_holds_at_most_max_streams_open_calls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tls, c) = trust();
        let service = crate::pb::agent::agent_server::AgentServer::new(Refusing);
        tokio::spawn(server(2).add_service(service).serve_with_incoming(crate::tls::incoming(listener, tls)));
        // One channel is one HTTP/2 connection; heartbeats here hang for 30 s.
        let channel = channel(&addr, &Settings::peers(), &c).unwrap();
        let hang = || {
            let mut client = AgentClient::new(channel.clone());
            tokio::spawn(async move { client.heartbeat(pb::HeartbeatRequest::default()).await })
        };
        let held = [hang(), hang()];
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut client = AgentClient::new(channel.clone());
        let third = tokio::spawn(async move { client.register(pb::RegisterRequest::default()).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!third.is_finished(), "a third call waits while two are open");
        held[0].abort(); // the caller gives up one: its stream is reset
        let answered = tokio::time::timeout(Duration::from_secs(20), third).await.expect("answered once one ended");
        assert_eq!(answered.unwrap().unwrap_err().message(), "no quorum");
    }
}
