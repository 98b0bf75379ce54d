//! A scripted fake of the cluster's agent service, served over real gRPC on
//! loopback: the test says what the node is assigned, can make the server
//! go silent (its watch streams stay open and say nothing, as a frozen
//! server's would), and reads what the worker reported.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::pb::agent::agent_server::{Agent, AgentServer};
use berth_proto::pb::agent::*;
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// How often a watch repeats its list, like a real server's keepalive.
const REFRESH: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct FakeCluster {
    pub addr: String,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    assignment: watch::Sender<AssignedTasks>,
    silent: AtomicBool,
    watches: AtomicUsize,
    reports: Mutex<Vec<Vec<TaskReport>>>,
    volume_reports: Mutex<Vec<Vec<String>>>,
}

impl FakeCluster {
    pub async fn start(assignment: AssignedTasks) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let inner = Arc::new(Inner {
            assignment: watch::channel(assignment).0,
            silent: AtomicBool::new(false),
            watches: AtomicUsize::new(0),
            reports: Mutex::default(),
            volume_reports: Mutex::default(),
        });
        let service = AgentServer::new(Api(inner.clone()));
        let incoming = berth_proto::tls::incoming(listener, trust().0.clone());
        tokio::spawn(
            berth_proto::client::server(berth_proto::client::MAX_STREAMS)
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        Self { addr, inner }
    }

    pub fn assign(&self, assignment: AssignedTasks) {
        self.inner.assignment.send_replace(assignment);
    }

    /// From now on its watches send nothing, and stay open.
    pub fn go_silent(&self) {
        self.inner.silent.store(true, Ordering::SeqCst);
    }

    /// Its watches send again.
    pub fn speak(&self) {
        self.inner.silent.store(false, Ordering::SeqCst);
    }

    /// Watches opened on it so far.
    pub fn watches(&self) -> usize {
        self.inner.watches.load(Ordering::SeqCst)
    }

    /// The last report it took.
    pub fn last_report(&self) -> Vec<TaskReport> {
        self.inner.reports.lock().unwrap().last().cloned().unwrap_or_default()
    }

    /// Every volume list it took, by name.
    pub fn volume_reports(&self) -> Vec<Vec<String>> {
        self.inner.volume_reports.lock().unwrap().clone()
    }

    /// Every report it took.
    pub fn reports(&self) -> Vec<Vec<TaskReport>> {
        self.inner.reports.lock().unwrap().clone()
    }
}

#[derive(Debug)]
struct Api(Arc<Inner>);

/// One root for every test here: a server's TLS and the worker n1's.
pub fn trust() -> &'static (berth_proto::tls::Tls, berth_proto::tls::Tls) {
    use berth_proto::pki::{Ca, Role};
    use berth_proto::tls::Tls;
    static TRUST: std::sync::OnceLock<(Tls, Tls)> = std::sync::OnceLock::new();
    TRUST.get_or_init(|| {
        let day = std::time::Duration::from_secs(86_400);
        let ca = Ca::new("test").unwrap();
        let creds = |role, name| Tls::new(&ca.credentials("test", role, name, day, &ca.cert).unwrap()).unwrap();
        (creds(Role::Server, "s1"), creds(Role::Worker, "n1"))
    })
}

#[tonic::async_trait]
impl Agent for Api {
    async fn join(
        &self,
        _: Request<berth_proto::pb::agent::JoinRequest>,
    ) -> Result<Response<berth_proto::pb::agent::JoinReply>, Status> {
        Err(Status::unimplemented("the fake cluster takes no joins"))
    }

    async fn renew(
        &self,
        _: Request<berth_proto::pb::agent::RenewRequest>,
    ) -> Result<Response<berth_proto::pb::agent::JoinReply>, Status> {
        Err(Status::unimplemented("the fake cluster renews nothing"))
    }

    async fn register(&self, _: Request<RegisterRequest>) -> Result<Response<RegisterReply>, Status> {
        Ok(Response::new(RegisterReply { node_id: "n1".into() }))
    }

    async fn heartbeat(&self, _: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        Ok(Response::new(HeartbeatReply::default()))
    }

    type WatchTasksStream = ReceiverStream<Result<AssignedTasks, Status>>;

    async fn watch_tasks(&self, _: Request<WatchTasksRequest>) -> Result<Response<Self::WatchTasksStream>, Status> {
        self.0.watches.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(4);
        let inner = self.0.clone();
        tokio::spawn(async move {
            let mut changes = inner.assignment.subscribe();
            loop {
                if !inner.silent.load(Ordering::SeqCst) {
                    let current = changes.borrow_and_update().clone();
                    if tx.send(Ok(current)).await.is_err() {
                        return;
                    }
                }
                let _ = tokio::time::timeout(REFRESH, changes.changed()).await;
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_tasks(&self, req: Request<ReportTasksRequest>) -> Result<Response<ReportTasksReply>, Status> {
        self.0.reports.lock().unwrap().push(req.into_inner().tasks);
        Ok(Response::new(ReportTasksReply {}))
    }

    /// Taken as a cluster takes it: its watches say so from then on.
    async fn report_volumes(&self, req: Request<ReportVolumesRequest>) -> Result<Response<ReportVolumesReply>, Status> {
        let names: Vec<String> = req.into_inner().volumes.into_iter().map(|v| v.name).collect();
        self.0.volume_reports.lock().unwrap().push(names.clone());
        self.0.assignment.send_modify(|a| (a.volumes_known, a.volumes) = (true, names));
        Ok(Response::new(ReportVolumesReply {}))
    }
}
