//! The ways back after a loss, as a server starts.
//!
//! - `--restore FILE --bootstrap` on a new data dir: a new cluster whose
//!   state is a backup's (`crate::backup`). This server becomes its only
//!   member, with a certificate from the backup's own root, so the nodes,
//!   users and servers that hold certificates of the old cluster still
//!   valid are trusted by the new one, and agents pick up where they were
//!   when a server answers at an address they know.
//! - `--force-new-cluster` on a surviving server, when a majority is lost
//!   for good: it keeps all it holds and becomes the only member of a
//!   cluster of its own, which other servers then join with a token.
//!
//! Both are `store::recover::reseat` underneath. Forcing is done once: it
//! leaves `forced.json` in the data dir, and a later start that still has
//! the flag, after servers have joined, is refused rather than dropping them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use berth_proto::pki::{Credentials, Request, Role};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{Config, Identity};
use crate::server::TLS_DIR;
use crate::store::seal::UnlockKey;
use crate::store::{self, LogStore, NodeId, StateMachineStore};

/// The record a forced start leaves in the data dir.
pub const FORCED: &str = "forced.json";

/// The server id a restored cluster's first server has.
const FIRST: NodeId = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Forced {
    /// The log index the cluster of one started from.
    index: u64,
}

/// Makes a new data dir hold the backup in `file`, then this server's
/// certificate and identity (last: until it is written, a start with the
/// same flags does all of it again).
pub async fn restore(
    cfg: &Config,
    file: &Path,
    listen: SocketAddr,
    advertise: &str,
) -> Result<(Identity, Credentials)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read the backup {}", file.display()))?;
    let unlock = cfg.unlock_key_file.as_deref().map(unlock_key).transpose()?;
    let (header, applied) = crate::backup::decode(&bytes, unlock.as_ref())
        .with_context(|| format!("cannot restore from {}", file.display()))?;
    let trust = applied.state.trust.clone().context("the backup holds no cluster identity: nothing to restore")?;
    let request = Request::new()?;
    let name = crate::trust::new_node_id();
    let issued = trust.issue(&request.csr, Role::Server, &name, Duration::from_secs(trust.validity_secs))?;
    let creds = request.complete(issued.chain, trust.roots_pem())?;

    let (log, sm) = store::open(&cfg.data_dir, None)?;
    let last = store::recover::reseat(&log, &sm, applied, FIRST, advertise).await?;
    drop((log, sm));
    let tls = cfg.data_dir.join(TLS_DIR);
    creds.save(&tls).with_context(|| format!("cannot write {}", tls.display()))?;
    let identity =
        Identity { id: FIRST, listen, advertise: advertise.to_owned(), bootstrap: true, pending_promotion: None };
    identity.save(&cfg.data_dir)?;
    info!(
        cluster = header.cluster,
        index = last.index,
        taken = header.taken,
        "restored the backup {}: this server is the only member of the cluster; join others with a server token",
        file.display()
    );
    Ok((identity, creds))
}

/// Makes this surviving server the only member of a cluster of its own,
/// keeping every entry it holds (see `store::recover`).
pub async fn force_new_cluster(
    dir: &Path,
    identity: &mut Identity,
    log: &LogStore,
    sm: &StateMachineStore,
) -> Result<()> {
    let all = store::recover::everything_held(log, sm).await?;
    let others: Vec<NodeId> = all.membership.membership().voter_ids().filter(|v| *v != identity.id).collect();
    if let Some(done) = read_forced(dir)? {
        if !others.is_empty() {
            bail!(
                "--force-new-cluster was carried out on this data dir at log index {}, and servers {others:?} have \
                 joined since: remove the flag, which would drop them. If a majority is lost once more, delete {} \
                 and start with the flag again",
                done.index,
                dir.join(FORCED).display()
            );
        }
    }
    let last = store::recover::reseat(log, sm, all, identity.id, &identity.advertise).await?;
    let path = dir.join(FORCED);
    berth_proto::pki::write_private(&path, &serde_json::to_vec(&Forced { index: last.index })?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if identity.pending_promotion.take().is_some() {
        identity.save(dir)?;
    }
    warn!(
        id = identity.id,
        index = last.index,
        dropped = ?others,
        "forced a new cluster: this server is its only member, with all it held; join others with a server \
         token and new data dirs, and remove --force-new-cluster from this server's flags"
    );
    Ok(())
}

fn read_forced(dir: &Path) -> Result<Option<Forced>> {
    let path = dir.join(FORCED);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("corrupt {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn unlock_key(path: &Path) -> Result<UnlockKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    UnlockKey::parse(&text)
        .with_context(|| format!("{} does not hold an unlock key (BERTH-UNLOCK-1- and 64 hex digits)", path.display()))
}
