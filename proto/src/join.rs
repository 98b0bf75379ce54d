//! A node's first start, the same for a server and an agent: trade a join
//! token for a certificate. The key pair is made here; the connection pins
//! the cluster's root by the token's digest and presents no certificate
//! (`tls::Peer::Join`); the node's id comes from the authority.

use std::time::Duration;

use crate::client::{BadAddress, CallError, Peer, Servers, Settings, Tls};
use crate::pb::agent::agent_client::AgentClient;
use crate::pb::agent::JoinRequest;
use crate::pki::{Credentials, JoinToken, PkiError, Request, Role, TokenError};

/// How long one server has to answer a join (it signs behind a leader's read barrier).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between rounds of the servers while none admits the node.
const PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Address(#[from] BadAddress),
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The cluster's answer, final: a wrong, rotated or foreign token, a bad request.
    #[error("the cluster refused to admit this node: {}", .0.message())]
    Refused(tonic::Status),
    /// Every server's root is another than the token's: the wrong
    /// cluster, or a token older than a CA rotation.
    #[error("the cluster refused to admit this node: {0}")]
    NotPinned(crate::client::Unreachable),
    #[error("no server admitted this node within {0:?}: {1}")]
    Unreachable(Duration, CallError),
}

/// Asks the servers at `addrs` (the first that answers) to admit this
/// process as `role`, trying again while none answers or the cluster is
/// not ready yet, for at most `patience`. Answers the node's id and its
/// credentials; nothing is written anywhere.
pub async fn admit(
    addrs: &[String],
    token: &str,
    role: Role,
    patience: Duration,
) -> Result<(String, Credentials), AdmitError> {
    let pinned = Tls::pinned(&token.parse::<JoinToken>()?.digest)?;
    let servers = Servers::new(addrs, &Settings::calls(CALL_TIMEOUT), &pinned.connector(Peer::Join))?;
    let request = Request::new()?;
    let ask = JoinRequest { token: token.to_owned(), csr: request.csr.clone(), role: role.to_string() };
    let deadline = tokio::time::Instant::now() + patience;
    let reply = loop {
        match servers.first_answer(async |c| AgentClient::new(c).join(ask.clone()).await).await {
            Ok(reply) => break reply,
            Err(CallError::Answered(s)) if s.code() != tonic::Code::Unavailable => return Err(AdmitError::Refused(s)),
            Err(CallError::Unreachable(u)) if u.0.iter().all(|(_, why)| why.contains(crate::tls::NOT_PINNED)) => {
                return Err(AdmitError::NotPinned(u))
            }
            Err(e) if tokio::time::Instant::now() > deadline => return Err(AdmitError::Unreachable(patience, e)),
            Err(e) => tracing::warn!("joining: {e}"),
        }
        tokio::time::sleep(PAUSE).await;
    };
    let creds = request.complete(reply.certificate_chain, reply.roots)?;
    Ok((reply.node_id, creds))
}
