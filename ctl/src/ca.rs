//! `cluster ca rotate` and `cluster ca status`: replacing the cluster's root.
//!
//! The rotation itself is the cluster's work (every node renews on its own,
//! the leader drops the old root once none is left behind); berthctl asks
//! for it, keeps its own credential current (the caller's new certificate
//! comes in the same answer, replaces the old one in the config file, and
//! is then confirmed with a call made with it: until then the rotation
//! waits, so a lost answer locks nobody out, and running the command again
//! during the rotation gets a new one), shows the rotation's progress until
//! it ends, and then trusts only the new root.

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
/// How many times the new credential is offered before giving up.
const CONFIRM_TRIES: u32 = 20;

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
    let req = pb::RotateCaRequest { csr: request.csr.clone(), confirm: false };
    let reply = client.call("CA rotation", async |mut c| c.rotate_ca(req.clone()).await).await?;
    let creds =
        request.complete(reply.certificate_chain, reply.roots).context("the server sent an invalid certificate")?;
    save(path, context, |c| {
        c.ca = creds.roots.clone();
        c.certificate = creds.chain.clone();
        c.key = creds.key.clone();
    })?;
    // The old certificate stops working when the rotation ends: from now
    // on, ask with the new one, and first say that it is in hand.
    let client = Client::new(servers, timeout, &creds)?;
    // (A server that has not applied the rotation yet does not know the new
    // certificate: a few tries.)
    let confirm = pb::RotateCaRequest { csr: String::new(), confirm: true };
    let mut tries = 0;
    while let Err(e) =
        client.call("confirming the new credential", async |mut c| c.rotate_ca(confirm.clone()).await).await
    {
        tries += 1;
        if tries == CONFIRM_TRIES {
            return Err(e).with_context(|| {
                format!("the new credential is saved in {}; run `berthctl cluster ca rotate` again", path.display())
            });
        }
        tokio::time::sleep(POLL / 4).await;
    }
    let mut out = format!(
        "CA rotation: root {} signs; both roots are trusted until every node has renewed.\n\
         Your credential in {} is renewed. Other admins get theirs by running this command before the rotation \
         ends; other users' credentials stop working when it ends: give them new ones (`berthctl user rm` and \
         `user add`).\n",
        short(&reply.root),
        path.display()
    );
    if wait.is_zero() {
        out.push_str("Follow it with `berthctl cluster ca status`.\n");
        return Ok(out);
    }
    print!("{out}");
    let deadline = Instant::now() + wait;
    let mut last = None;
    loop {
        let status = client.call("CA status", async |mut c| c.ca_status(pb::CaStatusRequest {}).await).await?;
        if status.trusted.len() <= 1 {
            save(path, context, |c| c.ca = status.roots.clone())?;
            return Ok(format!(
                "CA rotation finished: only root {} is trusted, here too ({}).\n",
                short(&status.root),
                path.display()
            ));
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

/// Changes the context `context` of the config at `path`, and saves it.
fn save(path: &Path, context: &str, change: impl FnOnce(&mut berth_proto::contexts::Context)) -> Result<()> {
    let mut config = ClientConfig::load(path)?;
    let Some(mine) = config.contexts.iter_mut().find(|c| c.name == context) else {
        bail!("{} lost its context {context:?} meanwhile", path.display());
    };
    change(mine);
    Ok(config.save(path)?)
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
