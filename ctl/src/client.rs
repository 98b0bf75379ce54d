//! berthctl's calls to the cluster: each goes to the first server that
//! answers (`berth_proto::client`); only a failure in transport moves on.

use std::time::Duration;

use anyhow::{bail, Result};
use berth_proto::client::{CallError, Peer, Servers, Settings, Tls, MAX_MESSAGE};
use berth_proto::pb::cluster::cluster_client::ClusterClient;
use berth_proto::pki::Credentials;
use tonic::transport::Channel;
use tonic::Status;

#[derive(Debug)]
pub struct Client {
    servers: Servers,
}

impl Client {
    /// `timeout` bounds each server's answer before the next is tried;
    /// every call presents `creds`.
    pub fn new(servers: &[String], timeout: Duration, creds: &Credentials) -> Result<Self> {
        if servers.is_empty() {
            bail!("no server given: use --server ADDR or BERTH_SERVER=addr1,addr2, or list servers in the config");
        }
        let tls = Tls::new(creds)?;
        Ok(Self { servers: Servers::new(servers, &Settings::calls(timeout), &tls.connector(Peer::Server))? })
    }

    /// Calls `f` on each server in turn until one answers.
    pub async fn call<T, F>(&self, what: &str, f: F) -> Result<T>
    where
        F: AsyncFn(ClusterClient<Channel>) -> Result<tonic::Response<T>, Status>,
    {
        let client = |channel| {
            ClusterClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
        };
        match self.servers.first_answer(async |channel| f(client(channel)).await).await {
            Ok(reply) => Ok(reply),
            Err(CallError::Answered(status)) => bail!("{what} failed: {}", status.message()),
            Err(CallError::Unreachable(none)) => {
                bail!("{what} failed: {none}; start one, or point --server / BERTH_SERVER at a running server")
            }
        }
    }
}
