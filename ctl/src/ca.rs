//! `cluster ca rotate` and `cluster ca status`: replacing the cluster's root.
//!
//! The rotation itself is the cluster's work (every node renews on its own,
//! the leader drops the old root once none is left behind); berthctl asks
//! for it, keeps its own credential current (the caller's new certificate
//! comes in the same answer and replaces the old one in the config file),
//! and shows the rotation's progress until it ends.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use berth_proto::contexts::ClientConfig;
use berth_proto::pb::cluster as pb;
use berth_proto::pki::Request;

use crate::client::Client;
use crate::output::Format;

/// How often the rotation's progress is asked.
const POLL: Duration = Duration::from_secs(1);

/// Short form of a digest, as people read them.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(16)]
}

/// Starts a rotation, saves the caller's new credential into the context
/// `context` of the config at `path`, then waits up to `wait` for the
/// rotation to end.
pub async fn rotate(
    client: &Client,
    path: &Path,
    context: &str,
    servers: &[String],
    timeout: Duration,
    wait: Duration,
) -> Result<String> {
    let request = Request::new()?;
    let req = pb::RotateCaRequest { csr: request.csr.clone() };
    let reply = client.call("CA rotation", async |mut c| c.rotate_ca(req.clone()).await).await?;
    let creds =
        request.complete(reply.certificate_chain, reply.roots).context("the server sent an invalid certificate")?;
    let mut config = ClientConfig::load(path)?;
    let Some(mine) = config.contexts.iter_mut().find(|c| c.name == context) else {
        bail!("{} lost its context {context:?} meanwhile; the rotation goes on without saving", path.display());
    };
    mine.ca = creds.roots.clone();
    mine.certificate = creds.chain.clone();
    mine.key = creds.key.clone();
    config.save(path)?;
    let mut out = format!(
        "CA rotation started: root {} signs from now on; both roots are trusted until every node has renewed.\n\
         Your credential in {} is renewed. Other users' credentials stop working when the rotation ends: \
         give them new ones (`berthctl user rm` and `user add`).\n",
        short(&reply.root),
        path.display()
    );
    if wait.is_zero() {
        out.push_str("Follow it with `berthctl cluster ca status`.\n");
        return Ok(out);
    }
    print!("{out}");
    // The old certificate stops working when the rotation ends: ask with the new one.
    let client = Client::new(servers, timeout, &creds)?;
    let deadline = Instant::now() + wait;
    let mut last = None;
    loop {
        let status = client.call("CA status", async |mut c| c.ca_status(pb::CaStatusRequest {}).await).await?;
        if status.trusted.len() <= 1 {
            return Ok(format!("CA rotation finished: only root {} is trusted.\n", short(&status.root)));
        }
        if last.as_ref() != Some(&status.pending) {
            println!("waiting for {} node(s) to renew: {}", status.pending.len(), status.pending.join(", "));
            last = Some(status.pending.clone());
        }
        if Instant::now() > deadline {
            bail!(
                "the rotation goes on after {wait:?}, waiting for {}; a node that is down holds it up until it \
                 comes back or is removed (`berthctl node rm`); see `berthctl cluster ca status`",
                status.pending.join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn status(client: &Client, fmt: Format) -> Result<String> {
    let s = client.call("CA status", async |mut c| c.ca_status(pb::CaStatusRequest {}).await).await?;
    Ok(match fmt {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({
                "root": s.root, "trusted": s.trusted, "rotating": s.trusted.len() > 1, "pending": s.pending,
            }))?
        ),
        Format::Table => {
            let mut out = format!("ROOT      {}\n", s.root);
            for old in s.trusted.iter().filter(|t| **t != s.root) {
                out.push_str(&format!("RETIRING  {old}\n"));
            }
            if s.trusted.len() > 1 {
                out.push_str(&format!("rotation under way; waiting for: {}\n", s.pending.join(", ")));
            }
            out
        }
    })
}
