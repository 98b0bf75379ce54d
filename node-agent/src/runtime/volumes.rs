//! Named volumes: directories on the node that outlive the containers
//! mounting them, as Docker's `local` driver keeps them.
//!
//! ```text
//! DATA/volumes/.lock                 held while a volume is made for a container, or removed
//! DATA/volumes/<name>/volume.json    when it was made (durable)
//! DATA/volumes/<name>/data/          what containers see at their mount's target
//! ```
//!
//! A volume appears whole or not at all: it is made under a temporary name
//! and renamed into place, and removed by renaming it aside first. Making
//! one for a container and writing the container's config happen under
//! the lock, as do the check that no container uses a volume and its
//! removal, so a volume is never removed under a container being made.
//! Files are kept with the ids containers write them with; a container
//! with a user namespace of its own sees the volume through an idmapped
//! mount, as it sees its image's layers (see [`super::idmap`]).

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::record;

const RECORD: &str = "volume.json";
const DATA: &str = "data";
const NEW_PREFIX: &str = ".new-";
const GONE_PREFIX: &str = ".gone-";

#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
}

/// A volume on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub created_at_ms: u64,
    /// What containers mount.
    pub data: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    created_at_ms: u64,
}

/// The volumes' lock, held while it lives.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] Flock<fs::File>);

impl Volumes {
    /// Volumes under `root` (made, 0700: only root reaches their files),
    /// resolved to an absolute path: it ends up in mount options.
    pub fn open(root: &Path) -> io::Result<Self> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(root)?;
        Ok(Self { root: fs::canonicalize(root)? })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where volume `name`'s files are, made or not.
    pub fn data(&self, name: &str) -> PathBuf {
        self.root.join(name).join(DATA)
    }

    /// Waits for the volumes' lock.
    pub fn lock(&self) -> io::Result<Held> {
        let file = fs::File::create(self.root.join(".lock"))?;
        Flock::lock(file, FlockArg::LockExclusive).map(Held).map_err(|(_, e)| e.into())
    }

    /// Makes volume `name` unless it exists; true when it was made now.
    /// Call with the lock held.
    pub fn ensure(&self, name: &str) -> io::Result<bool> {
        if !berth_proto::model::volume_name_ok(name) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a volume name")));
        }
        let dir = self.root.join(name);
        if dir.join(RECORD).is_file() {
            return Ok(false);
        }
        if dir.exists() {
            // Half made by a release that crashed between rename and sync: its files stay.
            tracing::warn!(volume = name, "volume without its record; recording it again");
            fs::create_dir_all(dir.join(DATA))?;
            record::write_durable(&dir, RECORD, &Record { created_at_ms: record::now_ms() })?;
            return Ok(false);
        }
        let new = tempfile::Builder::new().prefix(&format!("{NEW_PREFIX}{name}-")).tempdir_in(&self.root)?;
        fs::DirBuilder::new().mode(0o755).create(new.path().join(DATA))?;
        record::write_durable(new.path(), RECORD, &Record { created_at_ms: record::now_ms() })?;
        fs::rename(new.path(), &dir)?;
        let _ = new.keep();
        fs::File::open(&self.root)?.sync_all()?;
        Ok(true)
    }

    /// Every volume, by name.
    pub fn list(&self) -> io::Result<Vec<Volume>> {
        let mut volumes = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let created_at_ms =
                record::read::<Record>(&entry.path(), RECORD).ok().flatten().map_or(0, |r| r.created_at_ms);
            volumes.push(Volume { data: entry.path().join(DATA), name, created_at_ms });
        }
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    /// Removes volume `name` and its files; false when there was none.
    /// Call with the lock held, once no container mounts it.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        let dir = self.root.join(name);
        if !berth_proto::model::volume_name_ok(name) || !dir.is_dir() {
            return Ok(false);
        }
        let gone = self.root.join(format!("{GONE_PREFIX}{name}-{}", record::now_ms()));
        fs::rename(&dir, &gone)?;
        fs::remove_dir_all(&gone)?;
        Ok(true)
    }

    /// Removes what an interrupted make or removal left.
    pub fn sweep(&self) {
        for entry in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(NEW_PREFIX) || name.starts_with(GONE_PREFIX) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_is_made_once_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = Volumes::open(&dir.path().join("volumes")).unwrap();
        let _held = volumes.lock().unwrap();
        assert!(volumes.ensure("data").unwrap(), "made now");
        fs::write(volumes.data("data").join("f"), "kept").unwrap();
        assert!(!volumes.ensure("data").unwrap(), "made before: its files stay");
        assert_eq!(fs::read_to_string(volumes.data("data").join("f")).unwrap(), "kept");
        assert!(volumes.ensure("../x").is_err());
        volumes.ensure("cache").unwrap();
        let listed = volumes.list().unwrap();
        assert_eq!(listed.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["cache", "data"]);
        assert!(listed.iter().all(|v| v.created_at_ms > 0));
        assert!(volumes.remove("data").unwrap());
        assert!(!volumes.remove("data").unwrap());
        assert!(!volumes.remove("..").unwrap());
        assert_eq!(volumes.list().unwrap().len(), 1);
        assert!(volumes.ensure("data").unwrap(), "made afresh, empty");
        assert!(!volumes.data("data").join("f").exists());
    }

    #[test]
    fn leftovers_are_swept_and_a_recordless_volume_keeps_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = Volumes::open(dir.path()).unwrap();
        fs::create_dir_all(dir.path().join(".new-data-abc/data")).unwrap();
        fs::create_dir_all(dir.path().join(".gone-old-1")).unwrap();
        fs::create_dir_all(dir.path().join("kept/data")).unwrap();
        fs::write(dir.path().join("kept/data/f"), "x").unwrap();
        volumes.sweep();
        assert_eq!(volumes.list().unwrap().iter().map(|v| v.name.clone()).collect::<Vec<_>>(), ["kept"]);
        assert!(!volumes.ensure("kept").unwrap());
        assert!(volumes.data("kept").join("f").exists());
        assert!(dir.path().join("kept/volume.json").exists());
    }
}
