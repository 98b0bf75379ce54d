//! A backup file: the replicated state at one log position, as
//! `berthctl cluster backup` writes it and `berth-server --restore` reads it.
//!
//! ```text
//! berth-backup 1
//! {"format":1,"cluster":"…","index":N,"term":T,"taken":S,"release":"…","sealed":false,"bytes":B,"sha256":"…"}
//! <B bytes: the state as a snapshot holds it, sealed if autolock was on>
//! ```
//!
//! The first line is the file's own layout; `format` is the store's data
//! format (`store::format`), so a backup loads in later releases through
//! the same migrations as a snapshot. The digest finds a file cut short or
//! damaged before anything is made from it.
//!
//! The state holds the cluster's root key, the key its secrets are sealed
//! with and every user's record: whoever has the file can act as the
//! cluster. berthctl writes it owner-only; with autolock on, the body is
//! sealed with the unlock key as well, so that the file alone gives as
//! little as a server's disk does, and restoring it asks for that key.

use anyhow::{bail, ensure, Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::seal::UnlockKey;
use crate::store::{decode_state, encode_state, Applied};

/// The first line's word, and the layout this build writes and reads.
const MAGIC: &str = "berth-backup";
pub const LAYOUT: u32 = 1;

/// What the second line says of the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The store's data format the state is written in.
    pub format: u32,
    /// The cluster's id (its certificates name it).
    pub cluster: String,
    /// The log position the state is at.
    pub index: u64,
    pub term: u64,
    /// When it was taken, in seconds since the Unix epoch.
    pub taken: u64,
    /// The release of the server that wrote it.
    pub release: String,
    /// Sealed with the cluster's unlock key (autolock was on).
    pub sealed: bool,
    /// The body's length and SHA-256 (hex), as written.
    pub bytes: u64,
    pub sha256: String,
}

/// The backup of `applied`, taken at `taken` (seconds since the epoch).
pub fn encode(applied: &Applied, taken: u64) -> Result<Vec<u8>> {
    let trust = applied
        .state
        .trust
        .as_ref()
        .context("the cluster has not recorded its identity yet (a moment after bootstrap); try again")?;
    let last = applied.last_applied.context("the state has applied nothing yet")?;
    let mut body = encode_state(applied)?;
    let unlock = match &trust.autolock {
        Some(text) => Some(UnlockKey::parse(text).context("the cluster's unlock key in the state does not parse")?),
        None => None,
    };
    if let Some(key) = &unlock {
        body = key.seal(&body);
    }
    let header = Header {
        format: crate::store::format::FORMAT,
        cluster: trust.cluster.clone(),
        index: last.index,
        term: last.leader_id.term,
        taken,
        release: env!("CARGO_PKG_VERSION").into(),
        sealed: unlock.is_some(),
        bytes: body.len() as u64,
        sha256: hex::encode(Sha256::digest(&body)),
    };
    let mut out = format!("{MAGIC} {LAYOUT}\n").into_bytes();
    out.extend(serde_json::to_vec(&header)?);
    out.push(b'\n');
    out.extend(body);
    Ok(out)
}

/// The header alone, checked against the body it describes.
pub fn header(file: &[u8]) -> Result<(Header, &[u8])> {
    let (first, rest) = line(file).context("this is not a berth backup: it is empty or has no first line")?;
    let layout = first
        .strip_prefix(MAGIC)
        .and_then(|v| v.trim().parse::<u32>().ok())
        .with_context(|| format!("this is not a berth backup: it does not begin with \"{MAGIC} N\""))?;
    ensure!(
        layout <= LAYOUT,
        "this backup's layout is {layout}, newer than this build's {LAYOUT}: restore it with the release that wrote it or a later one"
    );
    let (second, body) = line(rest).context("the backup is cut short: its header line is missing")?;
    let header: Header = serde_json::from_str(second).context("the backup's header line is not valid")?;
    ensure!(
        body.len() as u64 == header.bytes,
        "the backup is cut short or has extra bytes: its body is {} bytes, its header says {}",
        body.len(),
        header.bytes
    );
    ensure!(
        hex::encode(Sha256::digest(body)) == header.sha256,
        "the backup is damaged: its body's SHA-256 is not the one its header records"
    );
    Ok((header, body))
}

/// The state a backup holds, opened with `unlock` if it is sealed, and
/// migrated to this build's format.
pub fn decode(file: &[u8], unlock: Option<&UnlockKey>) -> Result<(Header, Applied)> {
    let (header, body) = header(file)?;
    let opened;
    let plain = match (header.sealed, unlock) {
        (false, _) => body,
        (true, None) => bail!(
            "the backup is sealed with the cluster's unlock key (autolock was on): give it with --unlock-key-file"
        ),
        (true, Some(key)) => {
            opened = key.open(body).context("the unlock key given does not open this backup")?;
            &opened
        }
    };
    let applied = decode_state(plain).map_err(anyhow::Error::msg).context("the backup's state does not load")?;
    ensure!(
        applied.last_applied.map(|l| l.index) == Some(header.index),
        "the backup's state is at index {:?}, its header says {}",
        applied.last_applied.map(|l| l.index),
        header.index
    );
    Ok((header, applied))
}

fn line(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.iter().position(|b| *b == b'\n')?;
    Some((std::str::from_utf8(&bytes[..end]).ok()?, &bytes[end + 1..]))
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::store::LogId;

    fn applied(autolock: Option<&UnlockKey>) -> Applied {
        let (founding, _, _) = crate::trust::found(std::time::Duration::from_secs(3600)).unwrap();
        let mut trust = founding.trust;
        trust.autolock = autolock.map(ToString::to_string);
        let mut a = Applied { last_applied: Some(LogId::new(CommittedLeaderId::new(3, 1), 42)), ..Applied::default() };
        a.state.trust = Some(trust);
        crate::state::apply(&mut a.state, &crate::state::Command::CreateService(crate::testing::spec("web", 2)));
        a
    }

    #[test]
    fn a_backup_round_trips_and_says_what_it_holds() {
        let a = applied(None);
        let file = encode(&a, 1_700_000_000).unwrap();
        assert!(file.starts_with(b"berth-backup 1\n"));
        let (h, back) = decode(&file, None).unwrap();
        assert_eq!((h.index, h.term, h.taken, h.sealed), (42, 3, 1_700_000_000, false));
        assert_eq!(h.cluster, a.state.trust.as_ref().unwrap().cluster);
        assert_eq!(back.last_applied, a.last_applied);
        assert_eq!(serde_json::to_value(&back.state).unwrap(), serde_json::to_value(&a.state).unwrap());
    }

    #[test]
    fn an_autolocked_clusters_backup_opens_only_with_its_unlock_key() {
        let key = UnlockKey::generate();
        let a = applied(Some(&key));
        let file = encode(&a, 0).unwrap();
        let root_key = a.state.trust.as_ref().unwrap().ca.key.clone();
        assert!(!file.windows(root_key.len()).any(|w| w == root_key.as_bytes()), "the root key is not in the clear");
        let e = decode(&file, None).unwrap_err().to_string();
        assert!(e.contains("--unlock-key-file"), "{e}");
        let e = decode(&file, Some(&UnlockKey::generate())).unwrap_err().to_string();
        assert!(e.contains("does not open"), "{e}");
        let (h, back) = decode(&file, Some(&key)).unwrap();
        assert!(h.sealed && back.state.services.contains_key("web"));
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused_by_what_is_wrong() {
        let file = encode(&applied(None), 0).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "not a berth backup"),
            (b"PK\x03\x04 zip\n".to_vec(), "not a berth backup"),
            (b"berth-backup 9\n{}\n".to_vec(), "layout is 9, newer"),
            (b"berth-backup 1\n".to_vec(), "header line is missing"),
            (b"berth-backup 1\n{\"format\":1}\n".to_vec(), "header line is not valid"),
            (file[..file.len() - 10].to_vec(), "cut short"),
            (
                {
                    let mut f = file.clone();
                    let last = f.len() - 2;
                    f[last] ^= 1;
                    f
                },
                "damaged",
            ),
        ];
        for (bytes, want) in cases {
            let e = decode(&bytes, None).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn a_state_without_the_clusters_identity_is_not_backed_up() {
        let mut a = applied(None);
        a.state.trust = None;
        assert!(encode(&a, 0).unwrap_err().to_string().contains("has not recorded its identity"));
    }
}
