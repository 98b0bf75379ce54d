//! Keeping a node's certificate fresh, the same for a server and an agent.
//!
//! A node renews through `Agent.Renew`, authenticated by the certificate it
//! still holds: once two thirds of its life has passed (less a random
//! part, so that nodes that joined together do not renew together), and
//! whenever the cluster's roots are no longer the ones it holds, which is
//! how a CA rotation reaches every node. The node hears the cluster's
//! roots from its heartbeats (an agent) or its own state (a server). An
//! agent asks a server (`Remote`); a server asks its own cluster member,
//! in process (see `control-plane/src/rotation.rs`). The new set is saved
//! before it is used, and the running `Tls` takes it for every new
//! connection; nothing restarts.
//!
//! ```text
//! wait ── due, or the roots heard change ──▶ new key + CSR ──▶ Renew ──▶ save ──▶ Tls::update
//!   ▲                                                 failure: pause, 1 s doubling to 1 min
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::client::{Servers, Tls};
use crate::pb::agent::agent_client::AgentClient;
use crate::pb::agent::{JoinReply, RenewRequest};
use crate::pki::{certificates, Credentials, Request};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(60);
/// The longest sleep between looks at the clock (it may jump).
const LOOK: Duration = Duration::from_secs(3600);

/// SHA-256 (hex) of a PEM bundle of roots, over their DER in order: what
/// heartbeats carry, to tell a node its roots are not the cluster's.
pub fn roots_digest(pem: &str) -> String {
    let mut hash = Sha256::new();
    for der in certificates(pem).unwrap_or_default() {
        hash.update(&der);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What signs a renewal: the answer to `Agent.Renew` for this CSR.
pub trait Authority: Send {
    fn renew(&mut self, csr: String) -> Pin<Box<dyn Future<Output = Result<JoinReply, String>> + Send + '_>>;
}

/// An agent's authority: the cluster's servers, one at a time (the next
/// one after a failure), through the node's own TLS.
#[derive(Debug)]
pub struct Remote(pub Servers);

impl Authority for Remote {
    fn renew(&mut self, csr: String) -> Pin<Box<dyn Future<Output = Result<JoinReply, String>> + Send + '_>> {
        Box::pin(async move {
            match AgentClient::new(self.0.channel()).renew(RenewRequest { csr }).await {
                Ok(reply) => Ok(reply.into_inner()),
                Err(status) => {
                    let why = format!("{}: {}", self.0.current(), crate::client::reason(&status));
                    self.0.failed().await;
                    Err(why)
                }
            }
        })
    }
}

/// What a renewing node holds and where it asks.
#[derive(Debug)]
pub struct Renewal<A> {
    /// The node's TLS, updated in place.
    pub tls: Tls,
    /// Where its credentials live (`DATA_DIR/tls`).
    pub dir: PathBuf,
    pub creds: Credentials,
    pub authority: A,
    /// The digest of the cluster's roots as last heard ("" before any).
    pub roots: watch::Receiver<String>,
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl<A: Authority> Renewal<A> {
    /// Renews for as long as the node runs.
    pub async fn run(mut self) {
        let mut due = self.due();
        // The roots digest a renewal was last made for: hearing it again
        // (from a server that had not applied the change yet) is no news.
        let mut acted_on = String::new();
        let mut retry = FIRST_RETRY;
        loop {
            let heard = self.roots.borrow_and_update().clone();
            let stale = !heard.is_empty() && heard != acted_on && heard != roots_digest(&self.creds.roots);
            let wait = Duration::from_secs(due.saturating_sub(now()).max(0).unsigned_abs());
            if !stale && !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(LOOK)) => {}
                    changed = self.roots.changed() => if changed.is_err() {
                        // Nobody tells us about roots any more: expiry only.
                        tokio::time::sleep(wait.min(LOOK)).await;
                    },
                }
                continue;
            }
            match self.renew().await {
                Ok(()) => {
                    acted_on = heard;
                    due = self.due();
                    retry = FIRST_RETRY;
                }
                Err(e) => {
                    warn!("renewing this node's certificate: {e}; trying again in {retry:?}");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(LAST_RETRY);
                }
            }
        }
    }

    /// When to renew: two thirds in, less up to a quarter of what is left then.
    fn due(&self) -> i64 {
        match self.creds.identity() {
            Ok(id) => {
                let at = id.renew_at();
                let spread = (id.not_after - at).max(0) / 4;
                at - if spread > 0 { rand::random::<u32>() as i64 % (spread + 1) } else { 0 }
            }
            Err(_) => now(),
        }
    }

    async fn renew(&mut self) -> Result<(), String> {
        let before = self.creds.identity().map_err(|e| e.to_string())?;
        let request = Request::new().map_err(|e| e.to_string())?;
        let reply = self.authority.renew(request.csr.clone()).await?;
        let creds = request.complete(reply.certificate_chain, reply.roots).map_err(|e| e.to_string())?;
        let after = creds.identity().map_err(|e| e.to_string())?;
        if (after.name.as_str(), after.role, after.cluster.as_str())
            != (before.name.as_str(), before.role, before.cluster.as_str())
        {
            return Err(format!("the cluster answered with a certificate for {after}, not for {before}"));
        }
        creds.save(&self.dir).map_err(|e| format!("saving {}: {e}", self.dir.display()))?;
        self.tls.update(&creds).map_err(|e| e.to_string())?;
        info!(root = %after.issuer, expires = after.not_after, "this node's certificate is renewed");
        self.creds = creds;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
