//! openraft's storage conformance suite, run against the sled store.

use berth_control_plane::store::{self, LogStore, NodeId, StateMachineStore, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = store::open(dir.path(), None).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_openraft_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(SledBuilder)
}

/// A proposal of several commands gives one response per command; after a
/// reopen the state is the last snapshot's (openraft re-applies the log
/// after it).
#[tokio::test]
async fn proposals_apply_per_command_and_reopen_from_snapshot() -> anyhow::Result<()> {
    use berth_control_plane::state::{Command, Proposal, Rejection, Response};
    use berth_proto::model::ServiceSpec;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};

    let spec = |name: &str| ServiceSpec {
        name: name.into(),
        image: "busybox".into(),
        command: vec![],
        env: Default::default(),
        replicas: 1,
        resources: Default::default(),
        ports: vec![],
        restart: Default::default(),
        constraints: vec![],
        pids_limit: None,
        seccomp: Default::default(),
        userns: Default::default(),
        overrides: Default::default(),
        update_config: berth_proto::model::UpdateConfig::UPDATE,
        rollback_config: berth_proto::model::UpdateConfig::ROLLBACK,
        mode: Default::default(),
        placement: Default::default(),
    };
    let entry = |index, commands| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal(commands)),
    };
    let names = |sm: &berth_control_plane::store::StateMachineStore| -> Vec<String> {
        sm.applied().read().map(|a| a.state.services.keys().cloned().collect()).unwrap_or_default()
    };
    let dir = tempfile::tempdir()?;
    {
        let (_log, mut sm) = store::open(dir.path(), None)?;
        let create = |n: &str| Command::CreateService(spec(n));
        let replies = sm.apply([entry(1, vec![create("a"), create("a"), create("b")])]).await?;
        assert_eq!(replies.len(), 1, "one reply list per entry");
        assert!(matches!(replies[0][0], Response::Service { .. }));
        assert_eq!(replies[0][1], Response::Rejected(Rejection::AlreadyExists("a".into())));
        assert!(matches!(replies[0][2], Response::Service { .. }));
        let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(1));
        sm.apply([entry(2, vec![create("c")])]).await?;
        assert_eq!(names(&sm), ["a", "b", "c"]);
    }
    let (_log, mut sm) = store::open(dir.path(), None)?;
    let (applied, _) = sm.applied_state().await?;
    assert_eq!(applied.map(|l| l.index), Some(1), "reopens at the snapshot");
    assert_eq!(names(&sm), ["a", "b"]);
    assert!(sm.get_current_snapshot().await?.is_some());
    Ok(())
}
