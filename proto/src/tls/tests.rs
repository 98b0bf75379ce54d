//! Real handshakes on loopback between real certificates.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::*;
use crate::client::{channel, Settings};
use crate::pb::agent as pb;
use crate::pb::agent::agent_client::AgentClient;
use crate::pki::{Ca, JoinToken};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Answers a registration with who the caller is, after its own name.
#[derive(Debug)]
struct WhoAmI(&'static str);

#[tonic::async_trait]
impl pb::agent_server::Agent for WhoAmI {
    async fn join(&self, _: tonic::Request<pb::JoinRequest>) -> Result<tonic::Response<pb::JoinReply>, Status> {
        Err(Status::unimplemented("no"))
    }
    async fn renew(&self, _: tonic::Request<pb::RenewRequest>) -> Result<tonic::Response<pb::JoinReply>, Status> {
        Err(Status::unimplemented("no"))
    }
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        let who = match req.extensions().get::<Caller>() {
            Some(Caller(Some(id))) => format!("{}{} {} of {}", self.0, id.role, id.name, id.cluster),
            Some(Caller(None)) => "anonymous".to_owned(),
            None => "no caller".to_owned(),
        };
        Ok(Response::new(pb::RegisterReply { node_id: who }))
    }
    async fn heartbeat(&self, _: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        Err(Status::unimplemented("no"))
    }
    type WatchTasksStream = tonic::codegen::tokio_stream::Empty<Result<pb::AssignedTasks, Status>>;
    async fn watch_tasks(&self, _: Request<pb::WatchTasksRequest>) -> Result<Response<Self::WatchTasksStream>, Status> {
        Err(Status::unimplemented("no"))
    }
    async fn report_tasks(&self, _: Request<pb::ReportTasksRequest>) -> Result<Response<pb::ReportTasksReply>, Status> {
        Err(Status::unimplemented("no"))
    }
    async fn report_volumes(
        &self,
        _: Request<pb::ReportVolumesRequest>,
    ) -> Result<Response<pb::ReportVolumesReply>, Status> {
        Err(Status::unimplemented("no"))
    }
}

struct World {
    ca: Ca,
    addr: String,
}

fn serve(incoming: Incoming, lane: &'static str) {
    let service = pb::agent_server::AgentServer::new(WhoAmI(lane));
    tokio::spawn(crate::client::server(crate::client::MAX_STREAMS).add_service(service).serve_with_incoming(incoming));
}

impl World {
    async fn start() -> Self {
        let ca = Ca::new("c1").unwrap();
        let server = ca.credentials("c1", Role::Server, "s1", DAY, &ca.cert).unwrap();
        Self::serving(ca, &server).await
    }

    /// A server presenting `server`; `ca` signs the callers.
    async fn serving(ca: Ca, server: &Credentials) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        serve(incoming(listener, Tls::new(server).unwrap()), "");
        World { ca, addr }
    }

    /// A server that serves Raft's connections apart, on a runtime of
    /// their own as berth-server does, each lane answering with its name.
    async fn split(ca: Ca, server: &Credentials) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (rest, raft) = incoming_split(listener, Tls::new(server).unwrap());
        serve(rest, "rest: ");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                serve(raft, "raft: ");
                std::future::pending::<()>().await
            })
        });
        World { ca, addr }
    }

    fn creds(&self, role: Role, name: &str) -> Credentials {
        self.ca.credentials("c1", role, name, DAY, &self.ca.cert).unwrap()
    }

    async fn call(&self, tls: &Tls, peer: Peer) -> Result<String, String> {
        let settings = Settings::calls(Duration::from_secs(5));
        let c = channel(&self.addr, &settings, &tls.connector(peer)).unwrap();
        match AgentClient::new(c).register(pb::RegisterRequest::default()).await {
            Ok(r) => Ok(r.into_inner().node_id),
            Err(s) => Err(crate::client::reason(&s)),
        }
    }
}

#[tokio::test]
async fn each_caller_is_known_by_its_certificate() {
    let w = World::start().await;
    let worker = Tls::new(&w.creds(Role::Worker, "n1")).unwrap();
    assert_eq!(w.call(&worker, Peer::Server).await.unwrap(), "worker n1 of c1");
    let user = Tls::new(&w.creds(Role::User, "alice")).unwrap();
    assert_eq!(w.call(&user, Peer::Server).await.unwrap(), "user alice of c1");
    // A server is not a worker: a client that expects one refuses it.
    let err = w.call(&worker, Peer::Worker).await.unwrap_err();
    assert!(err.contains("not valid for name \"berth-worker\""), "{err}");
    // A renewed certificate is used by the next connection.
    worker.update(&w.creds(Role::Worker, "n2")).unwrap();
    assert_eq!(w.call(&worker, Peer::Server).await.unwrap(), "worker n2 of c1");
}

#[tokio::test]
async fn raft_connections_are_served_apart_and_verified_as_a_servers() {
    let ca = Ca::new("c1").unwrap();
    let server = ca.credentials("c1", Role::Server, "s1", DAY, &ca.cert).unwrap();
    let worker = ca.credentials("c1", Role::Worker, "n1", DAY, &ca.cert).unwrap();
    let peer = Tls::new(&ca.credentials("c1", Role::Server, "s2", DAY, &ca.cert).unwrap()).unwrap();
    let split = World::split(ca, &server).await;
    assert_eq!(split.call(&peer, Peer::Raft).await.unwrap(), "raft: server s2 of c1");
    assert_eq!(split.call(&peer, Peer::Server).await.unwrap(), "rest: server s2 of c1");
    // A server that does not split (a release before) serves them with the rest.
    let unsplit = World::serving(split.ca, &server).await;
    assert_eq!(unsplit.call(&peer, Peer::Raft).await.unwrap(), "server s2 of c1");
    // The name is checked as a server's: a worker answering it is refused.
    let at_worker = World::serving(unsplit.ca, &worker).await;
    let err = at_worker.call(&peer, Peer::Raft).await.unwrap_err();
    assert!(err.contains("not valid for name \"berth-server\""), "{err}");
}

#[tokio::test]
async fn a_join_token_pins_the_root_and_nothing_else_is_trusted_without_a_certificate() {
    let w = World::start().await;
    let pinned = Tls::pinned(&w.ca.digest()).unwrap();
    assert_eq!(w.call(&pinned, Peer::Join).await.unwrap(), "anonymous");
    // The wrong digest: this is not the cluster the token is for.
    let other = Ca::new("c1").unwrap();
    let wrong = Tls::pinned(&JoinToken::new(&other.digest()).digest).unwrap();
    let err = w.call(&wrong, Peer::Join).await.unwrap_err();
    assert!(err.contains("not the one the join token names"), "{err}");
    // Without the join name, a certificate is required.
    let err = w.call(&pinned, Peer::Server).await.unwrap_err();
    // The server's alert, or its closing the connection, whichever the client reads first.
    assert!(err.contains("CertificateRequired") || err.contains("closed"), "{err}");
}

#[tokio::test]
async fn strangers_are_refused_and_do_not_disturb_anyone() {
    let w = World::start().await;
    // Signed by another root, even one that claims the same cluster id.
    let other = Ca::new("c1").unwrap();
    let stranger = Tls::new(&other.credentials("c1", Role::Worker, "n1", DAY, &w.ca.cert).unwrap()).unwrap();
    assert!(w.call(&stranger, Peer::Server).await.is_err());
    // Signed by our root, but naming another cluster.
    let foreign = Tls::new(&w.ca.credentials("c2", Role::Worker, "n1", DAY, &w.ca.cert).unwrap()).unwrap();
    assert!(w.call(&foreign, Peer::Server).await.is_err());
    // Expired.
    let short = Tls::new(&w.ca.credentials("c1", Role::Worker, "n1", Duration::ZERO, &w.ca.cert).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = w.call(&short, Peer::Server).await.unwrap_err();
    assert!(err.to_lowercase().contains("expired") || err.contains("alert"), "{err}");
    // Plain text and random bytes get nowhere, and hold up nobody.
    use tokio::io::AsyncWriteExt;
    let mut junk = TcpStream::connect(&w.addr).await.unwrap();
    junk.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x01\x02 random bytes").await.unwrap();
    let mut silent = TcpStream::connect(&w.addr).await.unwrap();
    silent.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let worker = Tls::new(&w.creds(Role::Worker, "n1")).unwrap();
    assert_eq!(w.call(&worker, Peer::Server).await.unwrap(), "worker n1 of c1");
}

/// Credentials signed by `ca` whose chain also carries `cross` (the
/// signing root certified by the root before it), trusting `roots`.
fn bridged(ca: &Ca, cross: &str, role: Role, name: &str, roots: &str) -> Credentials {
    let request = crate::pki::Request::new().unwrap();
    let issued = ca.issue(&request.csr, "c1", role, name, DAY).unwrap();
    request.complete(format!("{}{cross}", issued.chain), roots.to_owned()).unwrap()
}

#[tokio::test]
async fn during_a_rotation_old_and_new_certificates_verify_each_other_and_after_it_old_ones_do_not() {
    let (old, new) = (Ca::new("c1").unwrap(), Ca::new("c1").unwrap());
    assert_ne!(old.name(), new.name());
    let cross = old.cross_sign(&new).unwrap();
    let both = format!("{}{}", new.cert, old.cert);
    // A server that has renewed: the new root signed it, it trusts both.
    let w = World::serving(new.clone(), &bridged(&new, &cross, Role::Server, "s1", &both)).await;
    // A worker that has not renewed yet: old certificate, old root only;
    // it verifies the server through the cross-signed root.
    let stale = Tls::new(&old.credentials("c1", Role::Worker, "n1", DAY, &old.cert).unwrap()).unwrap();
    assert_eq!(w.call(&stale, Peer::Server).await.unwrap(), "worker n1 of c1");
    assert_eq!(stale.identity().unwrap().issuer, old.name());
    // One that has: new certificate, both roots.
    let renewed = Tls::new(&bridged(&new, &cross, Role::Worker, "n2", &both)).unwrap();
    assert_eq!(w.call(&renewed, Peer::Server).await.unwrap(), "worker n2 of c1");
    assert_eq!(renewed.identity().unwrap().issuer, new.name());
    // Trusting the new root alone is enough for a renewed server.
    let new_only = Tls::new(&bridged(&new, &cross, Role::Worker, "n3", &new.cert)).unwrap();
    assert_eq!(w.call(&new_only, Peer::Server).await.unwrap(), "worker n3 of c1");
    // A joining node pins the new root (the token's digest changed with it).
    assert_eq!(w.call(&Tls::pinned(&new.digest()).unwrap(), Peer::Join).await.unwrap(), "anonymous");

    // A server not yet renewed still verifies a renewed worker (through the cross).
    let o = World::serving(old.clone(), &old.credentials("c1", Role::Server, "s0", DAY, &old.cert).unwrap()).await;
    assert_eq!(o.call(&renewed, Peer::Server).await.unwrap(), "worker n2 of c1");

    // The rotation over: trusting only the new root, the old certificate is refused.
    let done = World::serving(new.clone(), &new.credentials("c1", Role::Server, "s1", DAY, &new.cert).unwrap()).await;
    assert!(done.call(&stale, Peer::Server).await.is_err());
    assert_eq!(done.call(&renewed, Peer::Server).await.unwrap(), "worker n2 of c1");
}
