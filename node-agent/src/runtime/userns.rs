//! Which host ids a container's ids are, when it has a user namespace of
//! its own (`userns: auto`).
//!
//! Each such container, or each task's network sandbox (whose user
//! namespace outlives the task's containers), holds a block of 65536 host
//! ids that no other holds: its root is an unprivileged host id that owns
//! nothing outside it, and two containers cannot reach each other's files
//! or processes as the same id. Blocks start at 2^31, above the ids that
//! people and `/etc/subuid` hand out, and stop short of the invalid id
//! 2^32-1 (Kubernetes' kubelet picks its blocks the same way).
//!
//! A claim is a file in the host's claims directory (`--userns-dir`, one
//! for every agent on the host, so two agents' containers never share a
//! block), named by a hash of its holder's path (a container's directory,
//! or a sandbox's user namespace file) and holding the block's first host
//! id and that path. Claims are made under a lock on the directory, so two
//! never race, and outlive agent restarts; a claim whose holder's path is
//! gone (an agent stopped between a claim and its use, or between a
//! removal and its release) is swept.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Ids in a block: a container's ids 0-65535.
pub const BLOCK: u32 = 65536;
/// The first host id handed out.
pub const FIRST_ID: u32 = 1 << 31;
/// How many blocks there are: up to the last whole block below 2^32-1.
pub const BLOCKS: u32 = (u32::MAX - FIRST_ID) / BLOCK;

/// Container ids `0..size` are host ids `host_id..host_id + size`, for
/// users and groups alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub host_id: u32,
    pub size: u32,
}

impl IdMap {
    /// The map as `/proc/PID/uid_map` and the OCI spec take it: `0 HOST SIZE`.
    pub fn proc_line(&self) -> String {
        format!("0 {} {}\n", self.host_id, self.size)
    }
}

/// The lowest block not in `used` (first host ids), if one is left.
pub fn free_block(used: &BTreeSet<u32>) -> Option<IdMap> {
    (0..BLOCKS)
        .map(|i| FIRST_ID + i * BLOCK)
        .find(|id| !used.contains(id))
        .map(|host_id| IdMap { host_id, size: BLOCK })
}

/// The host's claims, one file per holder.
#[derive(Debug, Clone)]
pub struct IdRanges {
    dir: PathBuf,
}

/// One claim: the block, and the path of what holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub ids: IdMap,
    pub holder: PathBuf,
}

impl IdRanges {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The block `holder` has, claimed now if it has none.
    pub fn claim(&self, holder: &Path) -> io::Result<IdMap> {
        let _lock = self.lock()?;
        if let Some(ids) = self.held(holder)? {
            return Ok(ids);
        }
        let used = self.all()?.into_iter().map(|c| c.ids.host_id).collect();
        let ids = free_block(&used)
            .ok_or_else(|| io::Error::other(format!("all {BLOCKS} blocks of user namespace ids are taken")))?;
        let claim = format!("{} {}\n", ids.host_id, holder.display());
        crate::durable::write(&self.dir.join(file_name(holder)), claim.as_bytes())?;
        Ok(ids)
    }

    /// Gives `holder`'s block back; having none is fine.
    pub fn release(&self, holder: &Path) -> io::Result<()> {
        let _lock = self.lock()?;
        remove(&self.dir.join(file_name(holder)))
    }

    /// The block `holder` has, if any.
    pub fn held(&self, holder: &Path) -> io::Result<Option<IdMap>> {
        Ok(read_claim(&self.dir.join(file_name(holder)))?.map(|c| c.ids))
    }

    /// Every claim on the host.
    pub fn all(&self) -> io::Result<Vec<Claim>> {
        Ok(self.files()?.into_iter().map(|(_, claim)| claim).collect())
    }

    /// Gives back claims older than `age` whose holder's path is gone;
    /// returns those holders.
    pub fn sweep(&self, age: Duration) -> io::Result<Vec<PathBuf>> {
        let _lock = self.lock()?;
        let mut swept = Vec::new();
        for (file, claim) in self.files()? {
            let old = fs::metadata(&file).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if !claim.holder.exists() && old.is_some_and(|o| o >= age) {
                remove(&file)?;
                swept.push(claim.holder);
            }
        }
        Ok(swept)
    }

    /// Each claim with its file (temporary files of a claim being made,
    /// `.NAME.tmp`, are not claims).
    fn files(&self) -> io::Result<Vec<(PathBuf, Claim)>> {
        let mut claims = Vec::new();
        for entry in fs::read_dir(&self.dir).into_iter().flatten() {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with('.') {
                claims.extend(read_claim(&entry.path())?.map(|claim| (entry.path(), claim)));
            }
        }
        Ok(claims)
    }

    fn lock(&self) -> io::Result<Flock<fs::File>> {
        fs::create_dir_all(&self.dir)?;
        let dir = fs::File::open(&self.dir)?;
        Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))
    }
}

/// A claim's file name: its holder's path hashed (any length of path fits).
fn file_name(holder: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(holder.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..16])
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_claim(path: &Path) -> io::Result<Option<Claim>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (id, holder) = text.trim_end_matches('\n').split_once(' ').unwrap_or((&text, ""));
    match id.parse::<u32>() {
        Ok(host_id) => Ok(Some(Claim { ids: IdMap { host_id, size: BLOCK }, holder: holder.into() })),
        Err(_) => Err(io::Error::other(format!("{}: {text:?} is not a claim (HOST_ID PATH)", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_unprivileged_and_stop_short_of_the_invalid_id() {
        let first = free_block(&BTreeSet::new()).unwrap();
        assert_eq!(first, IdMap { host_id: 2_147_483_648, size: 65536 });
        let last = FIRST_ID + (BLOCKS - 1) * BLOCK;
        assert!(u64::from(last) + u64::from(BLOCK) - 1 < u64::from(u32::MAX), "the last block holds no 2^32-1");
        let all: BTreeSet<u32> = (0..BLOCKS).map(|i| FIRST_ID + i * BLOCK).collect();
        assert_eq!(free_block(&all), None);
        let gap: BTreeSet<u32> = all.iter().copied().filter(|id| *id != FIRST_ID + 7 * BLOCK).collect();
        assert_eq!(free_block(&gap).unwrap().host_id, FIRST_ID + 7 * BLOCK);
    }

    #[test]
    fn claims_are_one_per_holder_kept_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = IdRanges::new(dir.path().join("ids"));
        let (a, b) = (dir.path().join("agent1/containers/a"), dir.path().join("agent2/containers/a"));
        let ida = ranges.claim(&a).unwrap();
        let idb = ranges.claim(&b).unwrap();
        assert_ne!(ida.host_id, idb.host_id, "two holders (two agents' containers of one name) never share a block");
        assert_eq!(ranges.claim(&a).unwrap(), ida, "a holder keeps its block");
        // Another agent process (a restart) sees the same claims.
        let again = IdRanges::new(dir.path().join("ids"));
        assert_eq!(again.held(&b).unwrap(), Some(idb));
        ranges.release(&a).unwrap();
        ranges.release(&a).unwrap();
        assert_eq!(ranges.held(&a).unwrap(), None);
        assert_eq!(ranges.claim(&dir.path().join("c")).unwrap(), ida, "a released block is handed out again");
        assert_eq!(ranges.all().unwrap().len(), 2);
    }

    #[test]
    fn claims_whose_holder_is_gone_are_swept_once_old() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = IdRanges::new(dir.path().join("ids"));
        let (gone, here) = (dir.path().join("gone"), dir.path().join("here"));
        fs::create_dir(&here).unwrap();
        ranges.claim(&gone).unwrap();
        let kept = ranges.claim(&here).unwrap();
        assert!(ranges.sweep(Duration::from_secs(600)).unwrap().is_empty(), "too young: its holder may be on its way");
        assert_eq!(ranges.sweep(Duration::ZERO).unwrap(), [gone.as_path()]);
        assert_eq!(ranges.held(&gone).unwrap(), None);
        assert_eq!(ranges.held(&here).unwrap(), Some(kept));
    }

    #[test]
    fn concurrent_claims_never_share_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = IdRanges::new(dir.path().join("ids"));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let r = ranges.clone();
                std::thread::spawn(move || r.claim(Path::new(&format!("/c/{i}"))).unwrap().host_id)
            })
            .collect();
        let ids: BTreeSet<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(ids.len(), 8);
    }
}
