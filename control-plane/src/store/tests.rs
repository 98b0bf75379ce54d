//! The store's format record and its migration, on temporary sled stores.

use serde_json::{json, Value};

use super::format::{Formats, Migration, FORMAT, KEY};
use super::sm::SNAP_DATA;
use super::upgrade;

fn db() -> sled::Db {
    sled::Config::new().temporary(true).open().unwrap()
}

fn marker(db: &sled::Db) -> Option<u32> {
    db.open_tree("meta").unwrap().get(KEY).unwrap().map(|v| serde_json::from_slice(&v).unwrap())
}

fn json_at(tree: &sled::Tree, key: &[u8]) -> Value {
    serde_json::from_slice(&tree.get(key).unwrap().unwrap()).unwrap()
}

/// A store as the releases before the format record wrote it: a log entry
/// and a snapshot, no marker.
fn unmarked() -> sled::Db {
    let db = db();
    db.open_tree("log").unwrap().insert(7u64.to_be_bytes(), br#"{"payload":"old"}"#.to_vec()).unwrap();
    db.open_tree("snap").unwrap().insert(SNAP_DATA, br#"{"state":{"old":1}}"#.to_vec()).unwrap();
    db
}

fn rename(mut v: Value) -> Result<Value, String> {
    let obj = v.as_object_mut().ok_or("not an object")?;
    let old = obj.remove("payload").or_else(|| obj.remove("state")).ok_or("nothing to rename")?;
    v["renamed"] = old;
    Ok(v)
}

const TO_2: &[Migration] = &[Migration { to: 2, snapshot: rename, entry: rename }];

#[test]
fn a_new_store_is_marked_with_this_builds_format() {
    let db = db();
    upgrade(&db, super::format::THIS).unwrap();
    assert_eq!(marker(&db), Some(FORMAT));
}

#[test]
fn a_store_from_before_the_record_is_the_first_format() {
    let db = unmarked();
    upgrade(&db, Formats { current: 1, migrations: &[] }).unwrap();
    assert_eq!(marker(&db), Some(1));
    assert_eq!(json_at(&db.open_tree("log").unwrap(), &7u64.to_be_bytes()), json!({"payload": "old"}));
}

#[test]
fn an_older_store_is_migrated_whole_and_marked() {
    let db = unmarked();
    upgrade(&db, Formats { current: 2, migrations: TO_2 }).unwrap();
    assert_eq!(marker(&db), Some(2));
    assert_eq!(json_at(&db.open_tree("log").unwrap(), &7u64.to_be_bytes()), json!({"renamed": "old"}));
    assert_eq!(json_at(&db.open_tree("snap").unwrap(), SNAP_DATA), json!({"renamed": {"old": 1}, "format": 2}));
    // Done once: opening again changes nothing.
    upgrade(&db, Formats { current: 2, migrations: TO_2 }).unwrap();
    assert_eq!(json_at(&db.open_tree("log").unwrap(), &7u64.to_be_bytes()), json!({"renamed": "old"}));
}

#[test]
fn a_newer_store_is_refused_by_number_and_left_as_it_is() {
    let db = unmarked();
    db.open_tree("meta").unwrap().insert(KEY, b"3".to_vec()).unwrap();
    let e = upgrade(&db, Formats { current: 2, migrations: TO_2 }).unwrap_err().to_string();
    assert!(e.contains("format 3, newer than this build's 2"), "{e}");
    assert_eq!(marker(&db), Some(3));
    assert_eq!(json_at(&db.open_tree("log").unwrap(), &7u64.to_be_bytes()), json!({"payload": "old"}));
}

#[test]
fn a_migration_that_fails_changes_nothing() {
    let db = unmarked();
    db.open_tree("log").unwrap().insert(8u64.to_be_bytes(), b"[1]".to_vec()).unwrap();
    let e = upgrade(&db, Formats { current: 2, migrations: TO_2 }).unwrap_err().to_string();
    assert!(e.contains("log entry 8") && e.contains("not an object"), "{e}");
    assert_eq!(marker(&db), None);
    assert_eq!(json_at(&db.open_tree("log").unwrap(), &7u64.to_be_bytes()), json!({"payload": "old"}));
}
