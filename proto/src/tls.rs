//! Mutual TLS for every gRPC connection between berth processes (rustls,
//! TLS 1.3 only, the ring provider).
//!
//! ```text
//! client: Connector ── TCP ── TLS (our certificate; theirs must chain to a
//!         trusted root, name the role we called and our cluster) ──▶ tonic
//! server: incoming() ── accept ── handshake on its own task ──▶ Conn
//!         (the caller's Identity rides along as the request's Caller)
//! ```
//!
//! One `Tls` holds what a process presents and trusts; it is swapped whole
//! when a certificate renews or the roots change, and each new connection
//! takes the current one. A server also answers handshakes that name
//! `JOIN_NAME` without asking for a certificate: that is how a node with a
//! join token and nothing else gets its first one (the only call such a
//! connection may make). Every other handshake must present a certificate.
//!
//! Servers dial each other's Raft with `RAFT_NAME`, and a server hands
//! those connections to a listener of their own (`incoming_split`): the
//! heartbeats that keep a leader are then served on Raft's runtime, not
//! behind agents' calls, with one thread woken per heartbeat instead of
//! several. A server that does not split (an older release) serves them
//! with the rest, as it did before: the name is verified as `SERVER_NAME`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::http::Uri;
use tonic::transport::server::Connected;

use crate::pki::{certificates, fingerprint, Credentials, Identity, PkiError, Role, SERVER_NAME, WORKER_NAME};

/// The name a joining node asks for: the handshake that needs no certificate.
pub const JOIN_NAME: &str = "berth-join";
/// The name a server's Raft connections ask for: verified as a server's
/// (`SERVER_NAME`), and served apart by a server that splits its listener.
pub const RAFT_NAME: &str = "berth-raft";
/// What a joining node's handshake fails with when the server's root is not
/// the one its token pins: no retry changes that.
pub const NOT_PINNED: &str = "the server's root certificate is not the one the join token names";
/// A handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client expects at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A server of our cluster.
    Server,
    /// A server of our cluster, for Raft's own connections (`RAFT_NAME`).
    Raft,
    /// A worker node of our cluster (servers reading an agent's logs).
    Worker,
    /// A server of the cluster whose root has this digest, for a node
    /// that holds only a join token.
    Join,
}

impl Peer {
    fn server_name(self) -> ServerName<'static> {
        let name = match self {
            Peer::Server => SERVER_NAME,
            Peer::Raft => RAFT_NAME,
            Peer::Worker => WORKER_NAME,
            Peer::Join => JOIN_NAME,
        };
        ServerName::try_from(name).unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
    }
}

/// Who called, as the server side of a connection saw it: None for a
/// joining node without a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Option<Identity>);

#[derive(Debug)]
struct Configs {
    client: Arc<ClientConfig>,
    server: Option<Arc<ServerConfig>>,
    join: Option<Arc<ServerConfig>>,
    identity: Option<Identity>,
}

/// What a process presents and trusts; clones share it.
#[derive(Debug, Clone)]
pub struct Tls(Arc<RwLock<Configs>>);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Tls(e.to_string())
}

const H2: &[u8] = b"h2";

impl Tls {
    /// Presents `creds` and trusts their roots, for our cluster only.
    pub fn new(creds: &Credentials) -> Result<Self, PkiError> {
        Ok(Tls(Arc::new(RwLock::new(configs(creds)?))))
    }

    /// No certificate of our own, trusting only the root whose SHA-256 is
    /// `digest`: how a node with a join token reaches a server.
    pub fn pinned(digest: &str) -> Result<Self, PkiError> {
        let verifier = Arc::new(Pinned { digest: digest.to_owned(), provider: provider() });
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        client.alpn_protocols = vec![H2.to_vec()];
        Ok(Tls(Arc::new(RwLock::new(Configs { client: Arc::new(client), server: None, join: None, identity: None }))))
    }

    /// From now on, new connections present and trust `creds`.
    pub fn update(&self, creds: &Credentials) -> Result<(), PkiError> {
        let next = configs(creds)?;
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }

    /// Who this process is, unless it only holds a join token.
    pub fn identity(&self) -> Option<Identity> {
        self.read().identity.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Configs> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A tonic connector to `peer`s.
    pub fn connector(&self, peer: Peer) -> Connector {
        Connector { tls: self.clone(), name: peer.server_name() }
    }
}

fn configs(creds: &Credentials) -> Result<Configs, PkiError> {
    let identity = creds.identity()?;
    let mut roots = RootCertStore::empty();
    for der in certificates(&creds.roots)? {
        roots.add(CertificateDer::from(der)).map_err(tls_err)?;
    }
    let roots = Arc::new(roots);
    let chain: Vec<CertificateDer<'static>> =
        certificates(&creds.chain)?.into_iter().map(CertificateDer::from).collect();
    let key = || PrivateKeyDer::from_pem_slice(creds.key.as_bytes()).map_err(|_| PkiError::Pem("private key"));
    let servers = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider()).build().map_err(tls_err)?;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(OfCluster { inner: servers, cluster: identity.cluster.clone() }))
        .with_client_auth_cert(chain.clone(), key()?)
        .map_err(tls_err)?;
    client.alpn_protocols = vec![H2.to_vec()];
    let (server, join) = if identity.role == Role::User {
        (None, None)
    } else {
        let clients = WebPkiClientVerifier::builder_with_provider(roots, provider()).build().map_err(tls_err)?;
        let clients = Arc::new(OfCluster { inner: clients, cluster: identity.cluster.clone() });
        let builder =
            || ServerConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13]);
        let mut server = builder()
            .map_err(tls_err)?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), key()?)
            .map_err(tls_err)?;
        server.alpn_protocols = vec![H2.to_vec()];
        let join = if identity.role == Role::Server {
            let mut join =
                builder().map_err(tls_err)?.with_no_client_auth().with_single_cert(chain, key()?).map_err(tls_err)?;
            join.alpn_protocols = vec![H2.to_vec()];
            Some(Arc::new(join))
        } else {
            None
        };
        (Some(Arc::new(server)), join)
    };
    Ok(Configs { client: Arc::new(client), server, join, identity: Some(identity) })
}

/// A certificate that chains to a trusted root must also name our cluster.
#[derive(Debug)]
struct OfCluster<V: ?Sized> {
    inner: Arc<V>,
    cluster: String,
}

fn check_cluster(der: &CertificateDer<'_>, cluster: &str) -> Result<(), rustls::Error> {
    let other = |why: String| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
            io::Error::new(io::ErrorKind::PermissionDenied, why),
        ))))
    };
    match Identity::from_der(der) {
        Ok(id) if id.cluster == cluster => Ok(()),
        Ok(id) => Err(other(format!("the certificate is of cluster {}, not of this cluster ({cluster})", id.cluster))),
        Err(e) => Err(other(e.to_string())),
    }
}

impl ServerCertVerifier for OfCluster<WebPkiServerVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Raft's connections ask for RAFT_NAME; the certificate is a server's.
        let server = Peer::Server.server_name();
        let name = if *server_name == Peer::Raft.server_name() { &server } else { server_name };
        let verified = self.inner.verify_server_cert(end_entity, intermediates, name, ocsp, now)?;
        check_cluster(end_entity, &self.cluster)?;
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl ClientCertVerifier for OfCluster<dyn ClientCertVerifier> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        check_cluster(end_entity, &self.cluster)?;
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Trusts the root, sent in the server's chain, whose digest a join token
/// carries; then checks the server's certificate against it as usual.
#[derive(Debug)]
struct Pinned {
    digest: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let root = intermediates.iter().find(|c| fingerprint(c) == self.digest).ok_or_else(|| {
            rustls::Error::General(format!(
                "{NOT_PINNED} ({}...): this is not the cluster the token is for, \
                 or the token was made before the cluster's CA was rotated",
                &self.digest[..self.digest.len().min(12)]
            ))
        })?;
        let mut roots = RootCertStore::empty();
        roots.add(root.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(SERVER_NAME).map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], &name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Dials a TLS connection for tonic (`Endpoint::connect_with_connector`).
#[derive(Debug, Clone)]
pub struct Connector {
    tls: Tls,
    name: ServerName<'static>,
}

type Dialed = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Dialed;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Dialed>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.read().client.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no port"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// One accepted connection, its handshake done.
#[derive(Debug)]
pub struct Conn {
    io: tokio_rustls::server::TlsStream<Socket>,
    caller: Caller,
}

impl Conn {
    /// Moves the socket to the reactor of the runtime this is called on.
    /// A socket is woken by the reactor it was accepted on, and a
    /// connection served on another runtime would cost a wake of each for
    /// every packet.
    fn rehome(&mut self) -> io::Result<()> {
        let socket = &mut self.io.get_mut().0;
        let tcp = socket.0.take().ok_or_else(|| io::Error::other("the socket was lost moving"))?;
        socket.0 = Some(TcpStream::from_std(tcp.into_std()?)?);
        Ok(())
    }
}

/// A TCP stream that can be taken out and registered again (`rehome`);
/// None only if that failed, and the connection is then dropped.
#[derive(Debug)]
struct Socket(Option<TcpStream>);

impl Socket {
    fn tcp(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.0 {
            Some(tcp) => Ok(Pin::new(tcp)),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.tcp()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.tcp()?.poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp()?.poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp()?.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.tcp()?.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(TcpStream::is_write_vectored)
    }
}

impl Connected for Conn {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connections accepted on `listener` whose TLS handshake succeeds.
/// Each handshake runs on its own task, so a slow or garbled one (random
/// bytes, a port scan) holds up nobody else.
pub fn incoming(listener: TcpListener, tls: Tls) -> Incoming {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(accept(listener, tls, tx, None));
    Incoming { rx, rehome: false }
}

/// As `incoming`, with the connections that asked for `RAFT_NAME` apart,
/// in the second stream: a server serves those on Raft's runtime. Each of
/// those moves to the reactor of the runtime that takes it from the stream.
pub fn incoming_split(listener: TcpListener, tls: Tls) -> (Incoming, Incoming) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let (raft_tx, raft_rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(accept(listener, tls, tx, Some(raft_tx)));
    (Incoming { rx, rehome: false }, Incoming { rx: raft_rx, rehome: true })
}

/// A stream of accepted connections, for tonic's `serve_with_incoming`.
#[derive(Debug)]
pub struct Incoming {
    rx: tokio::sync::mpsc::Receiver<io::Result<Conn>>,
    rehome: bool,
}

impl tonic::codegen::tokio_stream::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let conn = std::task::ready!(self.rx.poll_recv(cx));
            match conn {
                Some(Ok(mut conn)) if self.rehome => match conn.rehome() {
                    Ok(()) => return Poll::Ready(Some(Ok(conn))),
                    Err(e) => tracing::debug!("cannot move a connection to this runtime: {e}"),
                },
                other => return Poll::Ready(other),
            }
        }
    }
}

type Accepted = tokio::sync::mpsc::Sender<io::Result<Conn>>;

/// Accepts until `tx`'s stream is dropped; Raft's connections go to `raft`
/// when there is one.
async fn accept(listener: TcpListener, tls: Tls, tx: Accepted, raft: Option<Accepted>) {
    loop {
        // The server gone (its stream dropped), the listener goes too.
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tx.closed() => return,
        };
        let (tcp, from) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let (tx, raft, tls) = (tx.clone(), raft.clone(), tls.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, &tls)).await {
                Ok(Ok((conn, for_raft))) => {
                    let lane = match raft {
                        Some(raft) if for_raft => raft,
                        _ => tx,
                    };
                    let _ = lane.send(Ok(conn)).await;
                }
                Ok(Err(e)) => tracing::debug!(%from, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%from, "TLS handshake timed out"),
            }
        });
    }
}

/// The connection, and whether it asked for `RAFT_NAME`.
async fn handshake(tcp: TcpStream, tls: &Tls) -> io::Result<(Conn, bool)> {
    tcp.set_nodelay(true)?;
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), Socket(Some(tcp))).await?;
    let hello = start.client_hello();
    let (joining, for_raft) = (hello.server_name() == Some(JOIN_NAME), hello.server_name() == Some(RAFT_NAME));
    let config = {
        let configs = tls.read();
        if joining {
            configs.join.clone()
        } else {
            configs.server.clone()
        }
    };
    let config =
        config.ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "this process takes no joins"))?;
    let io = start.into_stream(config).await?;
    let caller = match io.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(cert) => Some(Identity::from_der(cert).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?),
        None => None,
    };
    Ok((Conn { io, caller: Caller(caller) }, for_raft))
}

#[cfg(test)]
mod tests;
