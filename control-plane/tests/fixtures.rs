//! Every server data dir an earlier release saved (tests/fixtures/server/,
//! written by tests/tests/fixtures.rs) loads in this build and means what it
//! meant: the state its snapshot and log rebuild holds the services, nodes
//! and users that release reported, and its snapshot installs on a new
//! store as a leader's would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use berth_control_plane::store::{self, format, LogStore, StateMachineStore};
use berth_proto::model::{Service, TaskSpec};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::RaftLogReader;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/server");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    all.sort();
    assert!(!all.is_empty(), "no fixtures in {}", dir.display());
    all
}

/// A copy of a fixture's store (opening a store may write to it).
fn open_copy(fixture: &Path) -> (tempfile::TempDir, LogStore, StateMachineStore) {
    let dir = tempfile::tempdir().unwrap();
    // The store, and its key once releases sealed it (store.key).
    for file in ["raft.sled", "store.key"].map(|f| fixture.join(f)).into_iter().filter(|f| f.exists()) {
        let copied = std::process::Command::new("cp").arg("-a").arg(file).arg(dir.path()).status().unwrap();
        assert!(copied.success());
    }
    let (log, sm) = store::open(dir.path(), None).unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
    (dir, log, sm)
}

/// Whether any file under `dir` holds `needle`.
fn holds(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let path = e.path();
        match path.is_dir() {
            true => holds(&path, needle),
            false => std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle),
        }
    })
}

/// What starting a server does: the committed log re-applied after the snapshot.
async fn replay(log: &mut LogStore, sm: &mut StateMachineStore) {
    let (applied, _) = sm.applied_state().await.unwrap();
    let committed = log.read_committed().await.unwrap().or(log.get_log_state().await.unwrap().last_log_id);
    let from = applied.map_or(0, |l| l.index + 1);
    if let Some(to) = committed.filter(|c| c.index >= from) {
        let entries = log.try_get_log_entries(from..=to.index).await.unwrap();
        assert_eq!(entries.len() as u64, to.index + 1 - from, "a hole in the log");
        sm.apply(entries).await.unwrap();
    }
}

#[tokio::test]
async fn every_saved_data_dir_loads_and_holds_what_its_release_reported() {
    for fixture in fixtures() {
        let name = fixture.display().to_string();
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap()).unwrap();
        let (dir, mut log, mut sm) = open_copy(&fixture);
        // Opened, it is sealed: what its services say is nowhere in the clear.
        let image = expected["services"][0]["spec"]["image"].as_str().unwrap_or_else(|| panic!("{name}: an image"));
        if holds(&fixture, image.as_bytes()) {
            assert!(!holds(dir.path(), image.as_bytes()), "{name}: {image} is left in the clear");
        }
        replay(&mut log, &mut sm).await;
        let state = sm.applied().read().unwrap().state.clone();

        // Services as the release showed them, read with this build's model
        // (fields added since take their defaults, as the stored data does).
        let services: Vec<Service> = serde_json::from_value(expected["services"].clone()).unwrap();
        assert_eq!(state.services.values().cloned().collect::<Vec<_>>(), services, "{name}");
        let nodes: Vec<&str> = state.nodes.values().map(|n| n.name.as_str()).collect();
        assert_eq!(serde_json::json!(nodes), expected["nodes"], "{name}");
        assert_eq!(serde_json::json!(state.users.keys().collect::<Vec<_>>()), expected["users"], "{name}");
        assert!(state.trust.is_some(), "{name}: no trust");
        // Tasks run what their service says (limits and filter included).
        assert!(!state.tasks.is_empty(), "{name}: no tasks");
        for task in state.tasks.values() {
            if let Some(service) = state.services.get(&task.service) {
                assert_eq!(task.spec, TaskSpec::from(&service.spec), "{name}: {}", task.id);
            }
        }

        // Its snapshot installs on a new store and gives the state it held.
        let snapshot = sm.get_current_snapshot().await.unwrap().unwrap_or_else(|| panic!("{name}: no snapshot"));
        let fresh = tempfile::tempdir().unwrap();
        let (_, mut installed) = store::open(fresh.path(), None).unwrap();
        installed.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        let (at, _) = installed.applied_state().await.unwrap();
        assert_eq!(at, snapshot.meta.last_log_id, "{name}");
        assert!(!installed.applied().read().unwrap().state.services.is_empty(), "{name}");
    }
    assert_eq!(format::FORMAT, format::MIGRATIONS.last().map_or(1, |m| m.to));
}

/// Every backup an earlier release took (`backup.bak` beside its data dir)
/// decodes in this build, holds the services that release reported, and
/// restores into a new store whose only member is the restoring server.
#[tokio::test]
async fn every_saved_backup_restores_with_what_its_release_reported() {
    let with_backup: Vec<PathBuf> = fixtures().into_iter().filter(|f| f.join("backup.bak").exists()).collect();
    assert!(!with_backup.is_empty(), "no fixture holds a backup");
    for fixture in with_backup {
        let name = fixture.display().to_string();
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap()).unwrap();
        let file = std::fs::read(fixture.join("backup.bak")).unwrap();
        let (header, applied) =
            berth_control_plane::backup::decode(&file, None).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let services: Vec<Service> = serde_json::from_value(expected["services"].clone()).unwrap();
        assert_eq!(applied.state.services.values().cloned().collect::<Vec<_>>(), services, "{name}");
        assert_eq!(Some(&header.cluster), applied.state.trust.as_ref().map(|t| &t.cluster), "{name}");

        let fresh = tempfile::tempdir().unwrap();
        let (log, sm) = store::open(fresh.path(), None).unwrap();
        let last = store::recover::reseat(&log, &sm, applied, 1, "198.18.0.1:7400").await.unwrap();
        assert_eq!(last.index, header.index, "{name}");
        drop((log, sm));
        let (_, mut sm) = store::open(fresh.path(), None).unwrap();
        let (at, membership) = sm.applied_state().await.unwrap();
        assert_eq!((at, membership.membership().voter_ids().collect::<Vec<_>>()), (Some(last), vec![1]), "{name}");
        assert_eq!(sm.applied().read().unwrap().state.services.len(), services.len(), "{name}");
    }
}
