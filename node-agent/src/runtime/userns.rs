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
//! A claim is a file in the claims directory named for its holder and
//! holding the block's first host id, made under a lock on the directory,
//! so claims survive agent restarts and two claims never race.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

/// The holder name of a container's own block.
pub fn container(name: &str) -> String {
    format!("container:{name}")
}

/// The holder name of a task's network sandbox's block.
pub fn sandbox(task: &str) -> String {
    format!("netns:{task}")
}

/// The lowest block not in `used` (first host ids), if one is left.
pub fn free_block(used: &BTreeSet<u32>) -> Option<IdMap> {
    (0..BLOCKS)
        .map(|i| FIRST_ID + i * BLOCK)
        .find(|id| !used.contains(id))
        .map(|host_id| IdMap { host_id, size: BLOCK })
}

/// The node's claims, one file per holder.
#[derive(Debug, Clone)]
pub struct IdRanges {
    dir: PathBuf,
}

impl IdRanges {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The block `holder` has, claimed now if it has none.
    pub fn claim(&self, holder: &str) -> io::Result<IdMap> {
        let _lock = self.lock()?;
        if let Some(ids) = self.held(holder)? {
            return Ok(ids);
        }
        let used = self.all()?.into_values().map(|ids| ids.host_id).collect();
        let ids = free_block(&used)
            .ok_or_else(|| io::Error::other(format!("all {BLOCKS} blocks of user namespace ids are taken")))?;
        let path = self.dir.join(holder);
        let tmp = self.dir.join(format!(".{holder}.tmp"));
        let mut file = fs::File::create(&tmp)?;
        file.write_all(ids.host_id.to_string().as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(ids)
    }

    /// Gives `holder`'s block back; having none is fine.
    pub fn release(&self, holder: &str) -> io::Result<()> {
        let _lock = self.lock()?;
        match fs::remove_file(self.dir.join(holder)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The block `holder` has, if any.
    pub fn held(&self, holder: &str) -> io::Result<Option<IdMap>> {
        read_claim(&self.dir.join(holder))
    }

    /// Every claim, by holder.
    pub fn all(&self) -> io::Result<std::collections::BTreeMap<String, IdMap>> {
        let mut claims = std::collections::BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().filter(|n| !n.starts_with('.')).map(str::to_owned) else {
                continue;
            };
            if let Some(ids) = read_claim(&entry.path())? {
                claims.insert(name, ids);
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

fn read_claim(path: &Path) -> io::Result<Option<IdMap>> {
    match fs::read_to_string(path) {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(host_id) => Ok(Some(IdMap { host_id, size: BLOCK })),
            Err(_) => Err(io::Error::other(format!("{}: {text:?} is not a host id", path.display()))),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
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
        let a = ranges.claim("container:a").unwrap();
        let b = ranges.claim("netns:a").unwrap();
        assert_ne!(a.host_id, b.host_id, "two holders never share a block");
        assert_eq!(ranges.claim("container:a").unwrap(), a, "a holder keeps its block");
        // Another agent process (a restart) sees the same claims.
        let again = IdRanges::new(dir.path().join("ids"));
        assert_eq!(again.held("netns:a").unwrap(), Some(b));
        ranges.release("container:a").unwrap();
        ranges.release("container:a").unwrap();
        assert_eq!(ranges.held("container:a").unwrap(), None);
        assert_eq!(ranges.claim("container:c").unwrap(), a, "a released block is handed out again");
        assert_eq!(ranges.all().unwrap().len(), 2);
    }

    #[test]
    fn concurrent_claims_never_share_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = IdRanges::new(dir.path().join("ids"));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let r = ranges.clone();
                std::thread::spawn(move || r.claim(&format!("container:{i}")).unwrap().host_id)
            })
            .collect();
        let ids: BTreeSet<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(ids.len(), 8);
    }
}
