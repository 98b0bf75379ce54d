//! `cluster autolock`, `cluster unlock-key` and `cluster unlock`: the
//! servers' store keys sealed by a key people keep, and given back to a
//! restarted server.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use berth_proto::client::{self, Peer, Settings, Tls};
use berth_proto::pb::cluster as pb;
use berth_proto::pb::cluster::lock_client::LockClient;
use berth_proto::pki::Credentials;

use crate::client::Client;

fn shown(key: &str) -> String {
    format!(
        "The unlock key is:\n\n    {key}\n\nKeep it safe: a server that restarts opens its store only when given it \
         (`berthctl cluster unlock`).\n"
    )
}

/// Autolock on (printing the unlock key) or off.
pub async fn autolock(client: &Client, on: bool) -> Result<String> {
    let req = pb::AutolockRequest { enable: Some(on), rotate: false };
    let reply = client.call("autolock", async |mut c| c.autolock(req).await).await?;
    Ok(match on {
        true => format!("Autolock is on.\n{}", shown(&reply.unlock_key)),
        false => "Autolock is off: running servers keep their store keys in the clear from now on. A server that \
                  is down now still opens only with the unlock key it was sealed with: keep it until each has \
                  restarted.\n"
            .into(),
    })
}

/// The current unlock key, or a new one.
pub async fn unlock_key(client: &Client, rotate: bool, quiet: bool) -> Result<String> {
    let req = pb::AutolockRequest { enable: None, rotate };
    let reply = client.call("unlock key", async |mut c| c.autolock(req).await).await?;
    if reply.unlock_key.is_empty() {
        bail!("autolock is off: there is no unlock key (`berthctl cluster autolock on`)");
    }
    Ok(match (quiet, rotate) {
        (true, _) => format!("{}\n", reply.unlock_key),
        (false, true) => {
            format!(
                "The unlock key was replaced: every running server reseals its store key with the new one. A \
                 server that is down now still opens only with the old key: keep it until each has restarted.\n{}",
                shown(&reply.unlock_key)
            )
        }
        (false, false) => shown(&reply.unlock_key),
    })
}

/// Reads the unlock key from stdin and gives it to every server listed;
/// each says whether it was unlocked.
pub async fn unlock(servers: &[String], timeout: Duration, creds: &Credentials) -> Result<String> {
    if std::io::stdin().is_terminal() {
        eprint!("Unlock key: ");
    }
    let mut key = String::new();
    std::io::stdin().read_line(&mut key).context("reading the unlock key from stdin")?;
    let connector = Tls::new(creds)?.connector(Peer::Server);
    let settings = Settings::calls(timeout);
    let (mut out, mut failed) = (String::new(), false);
    for addr in servers {
        let channel = client::channel(addr, &settings, &connector)?;
        let said = match LockClient::new(channel).unlock(pb::UnlockRequest { unlock_key: key.trim().into() }).await {
            Ok(_) => "unlocked".to_owned(),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => s.message().to_owned(),
            Err(s) => {
                failed = true;
                client::reason(&s)
            }
        };
        out.push_str(&format!("{addr}: {said}\n"));
    }
    if failed {
        bail!("not every server was unlocked:\n{out}");
    }
    Ok(out)
}
