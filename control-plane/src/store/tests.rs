//! The store's formats, its key and its rewrite, on stores in temporary
//! data dirs.

use std::path::Path;

use serde_json::{json, Value};

use super::format::{Formats, Migration, DATA_KEY, FORMAT, KEY, STORE};
use super::seal::{Sealer, KEY_FILE};
use super::sm::SNAP_DATA;
use super::upgrade::{upgrade, DB};

fn db(dir: &Path) -> sled::Db {
    super::upgrade::open_db(&dir.join(DB)).unwrap()
}

fn number(db: &sled::Db, key: &[u8]) -> Option<u32> {
    db.open_tree("meta").unwrap().get(key).unwrap().map(|v| serde_json::from_slice(&v).unwrap())
}

/// The JSON at `key` of `tree`, opened with the data dir's key.
fn sealed_json(dir: &Path, tree: &str, key: &[u8]) -> Value {
    let sealer = Sealer::load(dir, None).unwrap().unwrap();
    let value = db(dir).open_tree(tree).unwrap().get(key).unwrap().unwrap();
    serde_json::from_slice(&sealer.open(&value, String::new).unwrap()).unwrap()
}

/// A store as releases before sealing wrote it, values in the clear: a
/// log entry and a snapshot with a secret in each, and no format record
/// (as before the record was kept).
fn clear_store(dir: &Path) {
    let db = db(dir);
    let entry = br#"{"payload":"old","env":{"PASSWORD":"hunter2"}}"#.to_vec();
    db.open_tree("log").unwrap().insert(7u64.to_be_bytes(), entry).unwrap();
    db.open_tree("snap").unwrap().insert(SNAP_DATA, br#"{"state":{"root_key":"hunter2"}}"#.to_vec()).unwrap();
    db.open_tree("meta").unwrap().insert(b"vote", br#"{"term":3}"#.to_vec()).unwrap();
    db.flush().unwrap();
}

/// Whether any file under `dir` holds `needle`.
fn anywhere(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            anywhere(&path, needle)
        } else {
            std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle)
        }
    })
}

fn rename(mut v: Value) -> Result<Value, String> {
    let obj = v.as_object_mut().ok_or("not an object")?;
    let old = obj.remove("payload").or_else(|| obj.remove("state")).ok_or("nothing to rename")?;
    v["renamed"] = old;
    Ok(v)
}

const TO_2: &[Migration] = &[Migration { to: 2, snapshot: rename, entry: rename }];
const FIRST: Formats = Formats { current: 1, migrations: &[] };

#[test]
fn a_new_store_is_marked_and_gets_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    upgrade(dir.path(), super::format::THIS, None).unwrap();
    let db = db(dir.path());
    assert_eq!((number(&db, KEY), number(&db, DATA_KEY)), (Some(STORE), Some(FORMAT)));
    assert!(dir.path().join(KEY_FILE).exists());
}

#[test]
fn a_store_in_the_clear_is_rewritten_sealed_and_no_secret_stays_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    clear_store(dir.path());
    assert!(anywhere(dir.path(), b"hunter2"), "the test's secret is on disk to begin with");
    upgrade(dir.path(), FIRST, None).unwrap();
    assert!(!anywhere(dir.path(), b"hunter2"), "a secret is left in the clear");
    assert_eq!(
        sealed_json(dir.path(), "log", &7u64.to_be_bytes()),
        json!({"payload": "old", "env": {"PASSWORD": "hunter2"}})
    );
    assert_eq!(sealed_json(dir.path(), "snap", SNAP_DATA), json!({"state": {"root_key": "hunter2"}, "format": 1}));
    let db = db(dir.path());
    assert_eq!((number(&db, KEY), number(&db, DATA_KEY)), (Some(STORE), Some(1)));
    assert_eq!(db.open_tree("meta").unwrap().get(b"vote").unwrap().unwrap().as_ref(), br#"{"term":3}"#, "kept");
    assert!(!dir.path().join("raft.sled.new").exists() && !dir.path().join("raft.sled.old").exists());
}

#[test]
fn an_older_data_format_is_migrated_whole_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    clear_store(dir.path());
    upgrade(dir.path(), Formats { current: 2, migrations: TO_2 }, None).unwrap();
    let renamed = json!({"renamed": "old", "env": {"PASSWORD": "hunter2"}});
    assert_eq!(sealed_json(dir.path(), "log", &7u64.to_be_bytes()), renamed);
    assert_eq!(sealed_json(dir.path(), "snap", SNAP_DATA), json!({"renamed": {"root_key": "hunter2"}, "format": 2}));
    assert_eq!(number(&db(dir.path()), DATA_KEY), Some(2));
    // Done once: opening again changes nothing.
    upgrade(dir.path(), Formats { current: 2, migrations: TO_2 }, None).unwrap();
    assert_eq!(sealed_json(dir.path(), "log", &7u64.to_be_bytes()), renamed);
}

#[test]
fn a_newer_store_or_data_format_is_refused_by_number_and_left_as_it_is() {
    for (key, text, expected) in [
        (KEY, "3", "the store has format 3, newer than this build's 2"),
        (DATA_KEY, "5", "the store's data has format 5, newer than this build's 1"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        clear_store(dir.path());
        db(dir.path()).open_tree("meta").unwrap().insert(key, text.as_bytes()).unwrap();
        let e = upgrade(dir.path(), FIRST, None).unwrap_err().to_string();
        assert!(e.contains(expected), "{e}");
        assert!(anywhere(dir.path(), b"hunter2"), "untouched");
        assert!(!dir.path().join(KEY_FILE).exists(), "no key made for a store it refused");
    }
}

#[test]
fn a_migration_that_fails_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    clear_store(dir.path());
    db(dir.path()).open_tree("log").unwrap().insert(8u64.to_be_bytes(), b"[1]".to_vec()).unwrap();
    let e = upgrade(dir.path(), Formats { current: 2, migrations: TO_2 }, None).unwrap_err().to_string();
    assert!(e.contains("log entry 8") && e.contains("not an object"), "{e}");
    let db = db(dir.path());
    assert_eq!(number(&db, KEY), None);
    let entry = db.open_tree("log").unwrap().get(7u64.to_be_bytes()).unwrap().unwrap();
    assert!(entry.starts_with(br#"{"payload":"old""#), "still in the clear, as it was");
}

#[test]
fn a_sealed_store_needs_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    clear_store(dir.path());
    upgrade(dir.path(), FIRST, None).unwrap();
    let key = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
    std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
    let e = upgrade(dir.path(), FIRST, None).unwrap_err().to_string();
    assert!(e.contains("store.key is missing: the store is encrypted with it"), "{e}");
    assert!(!dir.path().join(KEY_FILE).exists(), "no new key is made over a sealed store");
    // Another data dir's key: the store is refused, naming the value and the key.
    Sealer::make(dir.path()).unwrap();
    let e = super::open(dir.path(), None).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("log entry 7 does not open with") && e.contains("store.key"), "{e}");
    // Its own key back: all there.
    std::fs::write(dir.path().join(KEY_FILE), &key).unwrap();
    super::open(dir.path(), None).unwrap();
    assert_eq!(sealed_json(dir.path(), "log", &7u64.to_be_bytes())["env"]["PASSWORD"], "hunter2");
}

#[test]
fn a_rewrite_a_crash_interrupted_is_finished_or_undone() {
    // Crashed between the two renames: the new store is whole, and taken.
    let dir = tempfile::tempdir().unwrap();
    clear_store(dir.path());
    upgrade(dir.path(), FIRST, None).unwrap();
    std::fs::rename(dir.path().join(DB), dir.path().join("raft.sled.new")).unwrap();
    std::fs::create_dir(dir.path().join("raft.sled.old")).unwrap();
    upgrade(dir.path(), FIRST, None).unwrap();
    assert_eq!(sealed_json(dir.path(), "snap", SNAP_DATA)["state"]["root_key"], "hunter2");
    assert!(!dir.path().join("raft.sled.old").exists());
    // Crashed while writing the new one: it is dropped and made again.
    let dir = tempfile::tempdir().unwrap();
    clear_store(dir.path());
    std::fs::create_dir(dir.path().join("raft.sled.new")).unwrap();
    std::fs::write(dir.path().join("raft.sled.new/junk"), b"half").unwrap();
    upgrade(dir.path(), FIRST, None).unwrap();
    assert_eq!(sealed_json(dir.path(), "log", &7u64.to_be_bytes())["payload"], "old");
    assert!(!dir.path().join("raft.sled.new").exists());
}
