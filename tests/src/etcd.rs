//! A three-member etcd cluster on loopback (Debian's etcd-server), for
//! running the same load against etcd and berth side by side.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use tonic::transport::{Channel, Endpoint};

use crate::{free_port, wait_for, Process};

/// The generated etcd v3 client (only the RPCs the benchmark uses).
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

#[derive(Debug)]
pub struct EtcdMember {
    pub client_addr: String,
    args: Vec<String>,
    process: Process,
}

#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    _dir: tempfile::TempDir,
}

pub fn channel(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

impl EtcdMember {
    fn spawn(&mut self) -> Result<()> {
        self.process.start(Command::new("etcd").args(&self.args)).context("etcd comes with Debian's etcd-server")
    }

    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    pub fn restart(&mut self) -> Result<()> {
        self.spawn()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

impl EtcdCluster {
    /// Starts `n` members with etcd's default durability and waits for a leader.
    pub async fn start(n: usize) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("berth-etcd-").tempdir()?;
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}")).collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args = vec![
                format!("--name=e{i}"),
                format!("--data-dir={}", dir.path().join(format!("e{i}")).display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=berth-bench".into(),
                "--log-level=error".into(),
            ];
            let mut m = EtcdMember {
                client_addr: format!("127.0.0.1:{client}"),
                args,
                process: Process::new(dir.path().join(format!("e{i}.log"))),
            };
            m.spawn()?;
            members.push(m);
        }
        let mut cluster = Self { members, _dir: dir };
        cluster.leader().await?;
        Ok(cluster)
    }

    /// Index of the member that leads, once there is one.
    pub async fn leader(&mut self) -> Result<usize> {
        wait_for(Duration::from_secs(30), "an etcd leader", async || {
            for (i, m) in self.members.iter_mut().enumerate() {
                if !m.is_running() {
                    continue;
                }
                let mut c = pb::maintenance_client::MaintenanceClient::new(channel(&m.client_addr).ok()?);
                let mut req = tonic::Request::new(pb::StatusRequest {});
                req.set_timeout(Duration::from_secs(1));
                if let Ok(st) = c.status(req).await {
                    let st = st.into_inner();
                    if st.leader != 0 && st.header.is_some_and(|h| h.member_id == st.leader) {
                        return Some(i);
                    }
                }
            }
            None
        })
        .await
    }
}
