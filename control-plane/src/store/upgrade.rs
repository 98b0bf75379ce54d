//! Bringing a store to this build's layout and data format as it opens.
//!
//! A store of an older one is rewritten whole into a new sled database
//! beside it (`raft.sled.new`): each log entry and the snapshot opened as
//! the old layout keeps them, migrated as JSON, sealed, and the formats
//! recorded. Only then are the two swapped (`raft.sled` to `raft.sled.old`,
//! the new one into place, the old one deleted), so a crash leaves the old
//! store or the new one, and no value of the old one stays on disk in the
//! clear (sled keeps overwritten values in its segments until it cleans
//! them, so rewriting in place would not do).

use std::io;
use std::path::{Path, PathBuf};

use super::format::{self, Formats, DATA_KEY, KEY, SEALED, STORE};
use super::log::entry_name;
use super::seal::{Sealer, UnlockKey, KEY_FILE};
use super::sm::SNAP_DATA;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The store's database, in the data dir.
pub const DB: &str = "raft.sled";

fn with(dir: &Path, suffix: &str) -> PathBuf {
    dir.join(format!("{DB}{suffix}"))
}

/// Opens the database at `path`. A handle on it just dropped holds its
/// lock until sled's own threads let go, a moment later: wait for that.
///
/// sled's background flusher stays on, though every write that must
/// survive a crash is flushed where it is made (see the module doc of
/// `store`): it is also what runs sled's segment cleaning
/// (`attempt_gc`), which nothing else does.
pub(super) fn open_db(path: &Path) -> io::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::Config::new().path(path).flush_every_ms(Some(500)).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(io::Error::other(format!("cannot open {}: {e}", path.display()))),
        }
    }
}

/// Completes or undoes a rewrite a crash interrupted.
fn finish_interrupted(dir: &Path) -> io::Result<()> {
    let (db, new, old) = (dir.join(DB), with(dir, ".new"), with(dir, ".old"));
    if new.exists() {
        if db.exists() {
            std::fs::remove_dir_all(&new)?; // not finished: it is made again
        } else {
            std::fs::rename(&new, &db)?; // finished, and half swapped
        }
    }
    if old.exists() && db.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// What a store records of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    layout: u32,
    data: u32,
}

fn found(db: &sled::Db) -> Result<Option<Found>, Error> {
    let meta = db.open_tree("meta")?;
    let number = |key: &[u8]| -> Result<Option<u32>, Error> {
        Ok(meta.get(key)?.map(|v| serde_json::from_slice(&v)).transpose()?)
    };
    let (layout, data) = (number(KEY)?, number(DATA_KEY)?);
    let empty = ["log", "snap", "meta"].iter().all(|t| db.open_tree(t).is_ok_and(|t| t.is_empty()));
    if layout.is_none() && empty {
        return Ok(None);
    }
    Ok(Some(Found { layout: layout.unwrap_or(format::UNMARKED), data: data.unwrap_or(format::UNMARKED) }))
}

/// Brings the store in `dir` to `STORE` and `formats.current`, making its
/// key if it has none yet, and answers the key (a locked one opened with
/// `unlock`). A store of a newer layout or data format is refused by
/// number and left as it is.
pub fn upgrade(dir: &Path, formats: Formats, unlock: Option<&UnlockKey>) -> Result<(sled::Db, Sealer), Error> {
    finish_interrupted(dir)?;
    let db = open_db(&dir.join(DB))?;
    let found = found(&db)?;
    if let Some(f) = found {
        if f.layout > STORE {
            return Err(format::FormatError::Newer { what: "the store".into(), found: f.layout, current: STORE }.into());
        }
        formats.path("the store's data", f.data)?;
    }
    let sealer = match (Sealer::load(dir, unlock)?, found) {
        (Some(key), _) => key,
        (None, Some(f)) if f.layout >= SEALED => {
            return Err(format!(
                "{} is missing: the store is encrypted with it; restore it from where this data dir was backed up",
                dir.join(KEY_FILE).display()
            )
            .into())
        }
        (None, _) => Sealer::make(dir)?,
    };
    if found.is_some_and(|f| f.layout >= SEALED) {
        check_key(&db, &sealer)?;
    }
    match found {
        None => {
            mark(&db, formats)?;
            db.flush()?;
        }
        Some(f) if f == (Found { layout: STORE, data: formats.current }) => {}
        Some(f) => {
            let new = with(dir, ".new");
            let (entries, snapshot) = rewrite(&db, &new, f, formats, &sealer)?;
            drop(db);
            std::fs::rename(dir.join(DB), with(dir, ".old"))?;
            std::fs::rename(&new, dir.join(DB))?;
            std::fs::File::open(dir)?.sync_all()?;
            // Not fatal: sled's threads may still be closing it; the next
            // start removes what is left (`finish_interrupted`).
            if let Err(e) = std::fs::remove_dir_all(with(dir, ".old")) {
                tracing::warn!("cannot remove the store before the rewrite yet: {e}");
            }
            tracing::info!(
                from = f.layout,
                to = STORE,
                data_from = f.data,
                data_to = formats.current,
                entries,
                snapshot,
                "store rewritten"
            );
            return Ok((open_db(&dir.join(DB))?, sealer));
        }
    }
    Ok((db, sealer))
}

/// Records this build's layout and `formats.current` in `db`.
fn mark(db: &sled::Db, formats: Formats) -> Result<(), Error> {
    let meta = db.open_tree("meta")?;
    meta.insert(KEY, serde_json::to_vec(&STORE)?)?;
    meta.insert(DATA_KEY, serde_json::to_vec(&formats.current)?)?;
    Ok(())
}

/// Refuses a key that does not open the store's newest value (a key
/// from another data dir), before Raft would find out mid-start.
fn check_key(db: &sled::Db, sealer: &Sealer) -> Result<(), Error> {
    if let Some((key, value)) = db.open_tree("log")?.last()? {
        sealer.open(&value, || entry_name(&key))?;
    } else if let Some(value) = db.open_tree("snap")?.get(SNAP_DATA)? {
        sealer.open(&value, || "the stored snapshot".into())?;
    }
    Ok(())
}

/// Writes `db`, as `found` says it is kept, into a new database at `to` in
/// this build's layout and data format; answers the entries and whether a
/// snapshot were carried over.
fn rewrite(db: &sled::Db, to: &Path, found: Found, formats: Formats, sealer: &Sealer) -> Result<(usize, bool), Error> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    let new = open_db(to)?;
    let plain = |value: &[u8], what: &dyn Fn() -> String| -> Result<Vec<u8>, Error> {
        Ok(if found.layout >= SEALED { sealer.open(value, what)? } else { value.to_vec() })
    };
    let (mut entries, mut snapshot) = (0, false);
    for name in db.tree_names() {
        let (from, into) = (db.open_tree(&name)?, new.open_tree(&name)?);
        for kv in from.iter() {
            let (key, value) = kv?;
            let value = match (name.as_ref(), key.as_ref()) {
                (b"log", index) => {
                    let what = || entry_name(index);
                    let json = serde_json::from_slice(&plain(&value, &what)?)?;
                    let entry = formats.migrate(&what(), found.data, json, |m| m.entry)?;
                    entries += 1;
                    sealer.seal(&serde_json::to_vec(&entry)?)
                }
                (b"snap", SNAP_DATA) => {
                    let json = serde_json::from_slice(&plain(&value, &|| "the snapshot".into())?)?;
                    let mut data = formats.migrate_snapshot(json)?;
                    data["format"] = formats.current.into();
                    snapshot = true;
                    sealer.seal(&serde_json::to_vec(&data)?)
                }
                (b"meta", KEY | DATA_KEY) => continue,
                _ => value.to_vec(),
            };
            into.insert(key, value)?;
        }
    }
    mark(&new, formats)?;
    new.flush()?;
    drop(new);
    // sled syncs its files, not the directories that name them.
    for dir in [to.to_path_buf(), to.join("blobs")] {
        if dir.is_dir() {
            std::fs::File::open(&dir)?.sync_all()?;
        }
    }
    Ok((entries, snapshot))
}
