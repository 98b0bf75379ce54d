//! A real renewal over mutual TLS against a small authority.

use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};

use super::*;
use crate::client::{Peer, Settings};
use crate::pb::agent as pb;
use crate::pki::{Ca, Role};
use crate::tls::{incoming, Caller};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Signs whoever calls, as themselves, with its current root.
#[derive(Debug, Clone)]
struct Authority(Arc<Mutex<(Ca, String, String)>>);

#[tonic::async_trait]
impl pb::agent_server::Agent for Authority {
    async fn join(&self, _: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        Err(Status::unimplemented("no"))
    }
    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::JoinReply>, Status> {
        let Some(Caller(Some(id))) = req.extensions().get::<Caller>().cloned() else {
            return Err(Status::unauthenticated("who?"));
        };
        let (ca, cross, roots) = self.0.lock().unwrap().clone();
        let issued = ca.issue(&req.into_inner().csr, &id.cluster, id.role, &id.name, DAY).unwrap();
        Ok(Response::new(pb::JoinReply {
            node_id: id.name,
            role: id.role.to_string(),
            certificate_chain: format!("{}{cross}", issued.chain),
            roots,
        }))
    }
    async fn register(&self, _: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        Err(Status::unimplemented("no"))
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

/// Polls `check` for up to 20 s (only to stop a hang).
async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen");
}

#[tokio::test]
async fn a_node_renews_when_the_roots_change_and_when_its_certificate_is_due() {
    let (old, new) = (Ca::new("c1").unwrap(), Ca::new("c1").unwrap());
    let both = format!("{}{}", new.cert, old.cert);
    let authority = Authority(Arc::new(Mutex::new((old.clone(), String::new(), old.cert.clone()))));
    let server = old.credentials("c1", Role::Server, "s1", DAY, &both).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = pb::agent_server::AgentServer::new(authority.clone());
    let serving = incoming(listener, Tls::new(&server).unwrap());
    tokio::spawn(crate::client::server(crate::client::MAX_STREAMS).add_service(service).serve_with_incoming(serving));

    // A node whose certificate has a day to go: it waits for news.
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let creds = old.credentials("c1", Role::Worker, "n1", DAY, &old.cert).unwrap();
    creds.save(&tls_dir).unwrap();
    let tls = Tls::new(&creds).unwrap();
    let servers =
        Servers::new(std::slice::from_ref(&addr), &Settings::calls(DAY), &tls.connector(Peer::Server)).unwrap();
    let (heard, roots) = watch::channel(String::new());
    let renewal =
        Renewal { tls: tls.clone(), dir: tls_dir.clone(), creds: creds.clone(), authority: Remote(servers), roots };
    let running = tokio::spawn(renewal.run());
    // Hearing the roots it already holds is no news.
    heard.send(roots_digest(&old.cert)).unwrap();

    // A rotation: the new root signs, both are trusted; the node hears it.
    let cross = old.cross_sign(&new).unwrap();
    *authority.0.lock().unwrap() = (new.clone(), cross, both.clone());
    heard.send(roots_digest(&both)).unwrap();
    let issuer = || Credentials::load(&tls_dir).unwrap().unwrap().identity().unwrap().issuer;
    eventually("the renewal under the new root", || issuer() == new.name()).await;
    let saved = Credentials::load(&tls_dir).unwrap().unwrap();
    assert_eq!(saved.roots, both);
    assert_eq!(saved.identity().unwrap().name, "n1");
    assert_ne!(saved.key, creds.key, "a renewal makes a new key");
    // The running TLS presents it to every new connection.
    assert_eq!(tls.identity().unwrap().issuer, new.name());
    running.abort();

    // A certificate two thirds through its life renews with no news at all.
    let short = new.credentials("c1", Role::Worker, "n2", Duration::from_secs(3), &both).unwrap();
    short.save(&tls_dir).unwrap();
    let tls = Tls::new(&short).unwrap();
    let servers = Servers::new(&[addr], &Settings::calls(DAY), &tls.connector(Peer::Server)).unwrap();
    let (_quiet, roots) = watch::channel(String::new());
    let renewal =
        Renewal { tls: tls.clone(), dir: tls_dir.clone(), creds: short.clone(), authority: Remote(servers), roots };
    tokio::spawn(renewal.run());
    let expiry = || Credentials::load(&tls_dir).unwrap().unwrap().identity().unwrap().not_after;
    let before = short.identity().unwrap().not_after;
    eventually("the renewal of a certificate that is due", || expiry() > before + 3600).await;
    assert_eq!(tls.identity().unwrap().name, "n2");
}
