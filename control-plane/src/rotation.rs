//! A server's part in keeping the cluster's certificates fresh: its own
//! certificate renews like an agent's (`berth_proto::renew`), asked of its
//! own cluster member in process (no address to reach, the op goes to the
//! leader as any other); it reports which root its certificate is from
//! (only it knows its Raft id); and the leader ends a CA rotation once no
//! node is left holding an old root's certificate and every renewed user
//! has confirmed.
//!
//! ```text
//! at most each PERIOD, and only on news while no rotation is under way:
//!   roots in the state ──▶ the renewal (a change means: renew now)
//!   my root ≠ holders["server/<id>"] ──▶ Holds
//!   leader, rotating, nobody pending ──▶ FinishRotation
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::client::Tls;
use berth_proto::pb::agent::JoinReply;
use berth_proto::pki::Credentials;
use berth_proto::renew::{roots_digest, Authority, Renewal};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::node::{LeaderOp, Node};
use crate::state::Command;

/// The most often the state is looked at (roots change rarely; a second
/// is soon enough, and a look on every commit would cost the write path).
const PERIOD: Duration = Duration::from_secs(1);
/// Between rotations nothing changes but what is applied: the loop waits
/// for an applied entry, or this long (a look every second woke each idle
/// server for nothing).
const AT_REST: Duration = Duration::from_secs(60);

/// Starts both tasks; aborting the handle stops them.
pub fn spawn(node: Arc<Node>, tls: Tls, creds: Credentials, dir: PathBuf) -> JoinHandle<()> {
    let (roots_tx, roots) = tokio::sync::watch::channel(String::new());
    let authority = Member { node: node.clone(), tls: tls.clone() };
    let renewal = Renewal { tls: tls.clone(), dir, creds, authority, roots };
    tokio::spawn(async move {
        let renewing = tokio::spawn(renewal.run());
        watch(node, tls, roots_tx).await;
        renewing.abort();
    })
}

/// This server's own cluster member, as the authority for its renewal.
struct Member {
    node: Arc<Node>,
    tls: Tls,
}

impl Authority for Member {
    fn renew(&mut self, csr: String) -> Pin<Box<dyn Future<Output = Result<JoinReply, String>> + Send + '_>> {
        Box::pin(async move {
            let me = self.tls.identity().ok_or("this server holds no certificate")?;
            let op = LeaderOp::Renew { name: me.name, role: me.role.to_string(), csr };
            self.node.certificate(op).await.map(JoinReply::from).map_err(|e| e.to_string())
        })
    }
}

async fn watch(node: Arc<Node>, tls: Tls, roots: tokio::sync::watch::Sender<String>) {
    let me = format!("server/{}", node.id);
    loop {
        tokio::time::sleep(PERIOD).await;
        // Taken before the look: whatever is applied during it brings another.
        let before = node.last_applied();
        if !look(&node, &tls, &roots, &me).await {
            node.applied_after(before, AT_REST).await;
        }
    }
}

/// One look; true while something is under way that the applied state
/// alone does not announce (a rotation, in which this server's own
/// certificate changes, or a write that failed and must be tried again).
async fn look(node: &Node, tls: &Tls, roots: &tokio::sync::watch::Sender<String>, me: &str) -> bool {
    let Some(trust) = node.applied.read().ok().and_then(|a| a.state.trust.clone()) else { return false };
    let digest = roots_digest(&trust.roots_pem());
    roots.send_if_modified(|heard| std::mem::replace(heard, digest.clone()) != digest);
    let rotating = trust.rotating();
    let mut busy = rotating;

    if let Some(mine) = tls.identity().map(|i| i.issuer) {
        if trust.holders.get(me) != Some(&mine) {
            if let Err(e) = node.write(Command::Holds { holder: me.to_owned(), root: mine }).await {
                warn!("recording which root this server's certificate is from: {e}");
                busy = true;
            }
        }
    }

    let leads = node.metrics().current_leader == Some(node.id);
    if leads && rotating {
        let servers = node.server_ids();
        let done = node.applied.read().map(|a| a.state.rotation_pending(&servers).is_empty()).unwrap_or(false);
        if done {
            let root = trust.ca.digest();
            match node.write(Command::FinishRotation { root: root.clone() }).await {
                Ok(_) => info!(%root, "CA rotation finished: every node holds the new root's certificate"),
                Err(e) => warn!("finishing the CA rotation: {e}"),
            }
        }
    }
    busy
}
