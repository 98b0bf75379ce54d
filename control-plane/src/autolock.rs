//! Autolock, on this server: its store key kept sealed as the cluster says
//! ([`keep`]), and, when it starts with a sealed one, the locked phase in
//! which it serves only `Lock.Unlock` ([`wait_for_unlock`]).
//!
//! While locked, the server has no store, no Raft and no state, so every
//! other call is answered as a down server's would be (HTTP 503, no gRPC
//! status): clients, agents and peers move on to the next server instead
//! of taking it as an answer. Who may unlock: whoever holds the unlock key
//! and a certificate of this cluster (the handshake checks that; the
//! users and their roles are in the locked state).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use berth_proto::client::Tls;
use berth_proto::pb::cluster::lock_server::{Lock, LockServer};
use berth_proto::pb::cluster::{UnlockReply, UnlockRequest};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::node::Node;
use crate::store::seal::{KeyError, Sealer, UnlockKey};

fn parse(text: &str) -> Result<UnlockKey, Status> {
    UnlockKey::parse(text).ok_or_else(|| {
        Status::invalid_argument(
            "unlock key: expected BERTH-UNLOCK-1- and 64 hex digits (`berthctl cluster unlock-key`)",
        )
    })
}

/// The `Lock` service of a server that is not locked.
#[derive(Debug, Clone, Copy)]
pub struct Unlocked;

#[tonic::async_trait]
impl Lock for Unlocked {
    async fn unlock(&self, _: Request<UnlockRequest>) -> Result<Response<UnlockReply>, Status> {
        Err(Status::failed_precondition("this server is not locked"))
    }
}

/// The `Lock` service of a locked server: a key that opens its store key
/// is passed on, and the server goes on to start.
#[derive(Debug)]
struct Locked {
    dir: PathBuf,
    opened: mpsc::Sender<UnlockKey>,
}

#[tonic::async_trait]
impl Lock for Locked {
    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockReply>, Status> {
        if !matches!(req.extensions().get::<berth_proto::tls::Caller>(), Some(berth_proto::tls::Caller(Some(_)))) {
            return Err(Status::unauthenticated("unlocking needs a certificate of this cluster"));
        }
        let key = parse(&req.into_inner().unlock_key)?;
        match Sealer::load(&self.dir, Some(&key)) {
            Ok(Some(_)) => {
                let _ = self.opened.send(key).await;
                Ok(Response::new(UnlockReply {}))
            }
            Ok(None) => Err(Status::failed_precondition("this server has no store key to unlock")),
            Err(e @ KeyError::WrongKey(_)) => Err(Status::permission_denied(e.to_string())),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

/// Every call but `Unlock`, while locked.
async fn down() -> http::Response<tonic::body::Body> {
    let mut reply = http::Response::new(tonic::body::Body::default());
    *reply.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    reply
}

/// Serves only `Lock.Unlock` on `listener` until a caller gives the key
/// that opens the store key in `dir`; answers that key.
pub async fn wait_for_unlock(listener: TcpListener, tls: Tls, dir: PathBuf, max_streams: u32) -> Result<UnlockKey> {
    let (opened, mut keys) = mpsc::channel(1);
    let mut routes = Routes::new(LockServer::new(Locked { dir, opened }));
    let router = std::mem::take(routes.axum_router_mut()).fallback(down);
    *routes.axum_router_mut() = router;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = berth_proto::client::server(max_streams).add_routes(routes).serve_with_incoming_shutdown(
        berth_proto::tls::incoming(listener, tls),
        async {
            let _ = stopped.await;
        },
    );
    let mut server = tokio::spawn(server);
    let key = keys.recv().await.context("the locked server stopped before it was unlocked")?;
    let _ = stop.send(());
    // The unlock's answer goes out before the port is let go; a connection
    // that lingers is cut, so the listener is dropped either way.
    if tokio::time::timeout(Duration::from_secs(5), &mut server).await.is_err() {
        warn!("the locked server's connections did not close within 5 s: closing them");
        server.abort();
    }
    info!("unlocked");
    Ok(key)
}

/// Keeps this server's store key as the cluster's autolock setting says:
/// sealed by the unlock key while it is on (again when it changes), in the
/// clear when off. It first waits for the state to catch up with the local
/// log as it was at start (`start`, its last index, read from the store
/// before Raft runs), so an older view never unseals a key the cluster has
/// since locked.
pub async fn keep(node: Arc<Node>, sealer: Sealer, start: Option<u64>) {
    let mut seen = node.last_applied();
    while seen.map(|l| l.index) < start {
        seen = node.applied_after(seen, Duration::from_secs(5)).await;
    }
    let mut written: Option<Option<String>> = None;
    loop {
        let now = node.applied.read().ok().and_then(|a| a.state.trust.as_ref().map(|t| t.autolock.clone()));
        if let Some(now) = now.filter(|now| written.as_ref() != Some(now)) {
            let unlock = now.as_deref().and_then(UnlockKey::parse);
            match sealer.save(unlock.as_ref()) {
                Ok(()) => {
                    info!(autolock = unlock.is_some(), "store key saved");
                    written = Some(now);
                }
                Err(e) => warn!("cannot save the store key: {e}"),
            }
        }
        seen = node.applied_after(seen, Duration::from_secs(5)).await;
    }
}
