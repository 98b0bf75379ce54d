//! A cluster client that knows several servers and moves on when one is down.
//!
//! Any live server can answer any call (servers forward to the leader), so
//! the client only needs failover, not redirects. It moves to the next
//! server when a call fails in transport (refused, reset, timed out), and
//! never when a server answered: a server's UNAVAILABLE is already the
//! cluster's verdict after waiting for a quorum.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use berth_proto::pb::cluster::cluster_client::ClusterClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

#[derive(Debug)]
pub struct Client {
    servers: Vec<String>,
    timeout: Duration,
}

impl Client {
    pub fn new(servers: Vec<String>, timeout: Duration) -> Result<Self> {
        if servers.is_empty() {
            bail!("no server given: use --server ADDR or BERTH_SERVER=addr1,addr2");
        }
        Ok(Self { servers, timeout })
    }

    fn connect(&self, addr: &str) -> Result<ClusterClient<Channel>> {
        let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
        let channel = Endpoint::from_shared(url)
            .map_err(|e| anyhow!("bad server address {addr:?}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.timeout)
            .connect_lazy();
        // A list of every service may be large.
        Ok(ClusterClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// Calls `f` on each server in turn until one answers.
    pub async fn call<T, F>(&self, what: &str, f: F) -> Result<T>
    where
        F: AsyncFn(ClusterClient<Channel>) -> Result<tonic::Response<T>, Status>,
    {
        let mut failures = Vec::new();
        for addr in &self.servers {
            match f(self.connect(addr)?).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if is_transport(&status) => failures.push(format!("{addr}: {}", describe(&status))),
                Err(status) => bail!("{what} failed: {}", status.message()),
            }
        }
        bail!(
            "{what} failed: no berth server answered ({}); start one, or point --server / BERTH_SERVER at a running server",
            failures.join("; ")
        )
    }
}

/// A status made on this side of the wire (no connection, broken stream,
/// deadline) rather than sent by a server.
fn is_transport(status: &Status) -> bool {
    let from_server = status.metadata().contains_key("content-type");
    !from_server
        && matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Internal
        )
}

/// The root cause of a transport failure, such as "Connection refused (os error 111)".
fn describe(status: &Status) -> String {
    use std::error::Error;
    let mut root: Option<&dyn Error> = status.source();
    while let Some(next) = root.and_then(|e| e.source()) {
        root = Some(next);
    }
    root.map_or_else(|| status.message().to_string(), |e| e.to_string())
}
