//! A server's part in keeping the cluster's certificates fresh: its own
//! certificate renews like an agent's (`berth_proto::renew`, asking this
//! very server, which passes it to the leader); it reports which root its
//! certificate is from (only it knows its Raft id); and the leader ends a
//! CA rotation once no node is left holding an old root's certificate.
//!
//! ```text
//! each PERIOD (roots change rarely; a second is soon enough, and waking on
//! every commit would cost the write path):
//!   roots in the state ──▶ the renewal (a change means: renew now)
//!   my root ≠ holders["server/<id>"] ──▶ Holds
//!   leader, rotating, nobody pending ──▶ FinishRotation
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::client::{Peer, Servers, Settings, Tls};
use berth_proto::pki::Credentials;
use berth_proto::renew::{roots_digest, Renewal};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::node::Node;
use crate::state::Command;

/// How often the state is looked at without news.
const PERIOD: Duration = Duration::from_secs(1);
/// How long this server has to answer its own renewal (the leader signs it).
const RENEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts both tasks; aborting the handle stops them.
pub fn spawn(
    node: Arc<Node>,
    tls: Tls,
    creds: Credentials,
    dir: PathBuf,
    advertise: &str,
) -> anyhow::Result<JoinHandle<()>> {
    let servers = Servers::new(&[advertise.to_owned()], &Settings::calls(RENEW_TIMEOUT), &tls.connector(Peer::Server))?;
    let (roots_tx, roots) = tokio::sync::watch::channel(String::new());
    let renewal = Renewal { tls: tls.clone(), dir, creds, servers, roots };
    Ok(tokio::spawn(async move {
        let renewing = tokio::spawn(renewal.run());
        watch(node, tls, roots_tx).await;
        renewing.abort();
    }))
}

async fn watch(node: Arc<Node>, tls: Tls, roots: tokio::sync::watch::Sender<String>) {
    let me = format!("server/{}", node.id);
    loop {
        tokio::time::sleep(PERIOD).await;
        let Some(trust) = node.applied.read().ok().and_then(|a| a.state.trust.clone()) else { continue };
        let digest = roots_digest(&trust.roots_pem());
        roots.send_if_modified(|heard| std::mem::replace(heard, digest.clone()) != digest);

        if let Some(mine) = tls.identity().map(|i| i.issuer) {
            if trust.holders.get(&me) != Some(&mine) {
                if let Err(e) = node.write(Command::Holds { holder: me.clone(), root: mine }).await {
                    warn!("recording which root this server's certificate is from: {e}");
                }
            }
        }

        let leads = node.metrics().current_leader == Some(node.id);
        if leads && trust.rotating() {
            let nodes: Vec<String> =
                node.applied.read().map(|a| a.state.nodes.keys().cloned().collect()).unwrap_or_default();
            if trust.pending(nodes.iter().map(String::as_str), &node.server_ids()).is_empty() {
                let root = trust.ca.digest();
                match node.write(Command::FinishRotation { root: root.clone() }).await {
                    Ok(_) => info!(%root, "CA rotation finished: every node holds the new root's certificate"),
                    Err(e) => warn!("finishing the CA rotation: {e}"),
                }
            }
        }
    }
}
