//! A three-member etcd cluster on loopback (Debian's etcd-server), for
//! running the same load against etcd and berth side by side. Like berth,
//! it runs with mutual TLS on every connection, peers and clients alike:
//! its own CA and one P-256 certificate (made with openssl), verified both
//! ways.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};

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
    /// What a client presents and trusts.
    pub tls: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

/// A lazily connecting channel to the member at `addr` (127.0.0.1:PORT).
pub fn channel(addr: &str, tls: &Arc<rustls::ClientConfig>) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(Dial(tls.clone())))
}

/// Dials TLS for tonic, checking the member's certificate against its IP address.
#[derive(Debug, Clone)]
struct Dial(Arc<rustls::ClientConfig>);

type Dialed = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<Uri> for Dial {
    type Response = Dialed;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Dialed>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.0.clone();
        Box::pin(async move {
            let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned());
            let ip: std::net::IpAddr = uri.host().unwrap_or_default().parse().map_err(|_| bad("not an IP"))?;
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let tcp = tokio::net::TcpStream::connect((ip, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(ServerName::IpAddress(ip.into()), tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// A CA and one certificate for 127.0.0.1 (server and client use) in `dir`:
/// ca.crt, etcd.crt, etcd.key.
fn make_certificates(dir: &Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output().context("openssl")?;
        ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &p256,
        &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=bench etcd CA"],
    ]
    .concat())?;
    run(&[&["req"][..], &p256, &["-keyout", "etcd.key", "-out", "etcd.csr", "-subj", "/CN=etcd"]].concat())?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "etcd.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "etcd.crt",
    ])
}

fn client_config(dir: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.crt"))? {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_file_iter(dir.join("etcd.crt"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("etcd.key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
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
        make_certificates(dir.path())?;
        let file = |name: &str| dir.path().join(name).display().to_string();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("e{i}=https://127.0.0.1:{peer}")).collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("https://127.0.0.1:{client}");
            let peer_url = format!("https://127.0.0.1:{peer}");
            let args = vec![
                format!("--cert-file={}", file("etcd.crt")),
                format!("--key-file={}", file("etcd.key")),
                format!("--trusted-ca-file={}", file("ca.crt")),
                "--client-cert-auth".into(),
                format!("--peer-cert-file={}", file("etcd.crt")),
                format!("--peer-key-file={}", file("etcd.key")),
                format!("--peer-trusted-ca-file={}", file("ca.crt")),
                "--peer-client-cert-auth".into(),
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
        let tls = client_config(dir.path())?;
        let mut cluster = Self { members, tls, _dir: dir };
        cluster.leader().await?;
        Ok(cluster)
    }

    /// Index of the member that leads, once there is one.
    pub async fn leader(&mut self) -> Result<usize> {
        let tls = self.tls.clone();
        wait_for(Duration::from_secs(30), "an etcd leader", async || {
            for (i, m) in self.members.iter_mut().enumerate() {
                if !m.is_running() {
                    continue;
                }
                let mut c = pb::maintenance_client::MaintenanceClient::new(channel(&m.client_addr, &tls).ok()?);
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
