//! openraft's storage conformance suite, run against the sled store.

use berth_control_plane::store::{self, LogStore, NodeId, StateMachineStore, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = store::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_openraft_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(SledBuilder)
}

/// A proposal of several commands gives one response per command, and the
/// state machine reopens from disk with the same state and applied index.
#[tokio::test]
async fn proposals_apply_per_command_and_survive_reopen() -> anyhow::Result<()> {
    use berth_control_plane::state::{Command, Proposal, Rejection, Response};
    use berth_proto::model::ServiceSpec;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    let spec = |name: &str| ServiceSpec {
        name: name.into(),
        image: "busybox".into(),
        command: vec![],
        env: Default::default(),
        replicas: 1,
        resources: Default::default(),
        ports: vec![],
        restart: Default::default(),
    };
    let dir = tempfile::tempdir()?;
    let log_id = LogId::new(CommittedLeaderId::new(1, 1), 1);
    {
        let (_log, mut sm) = store::open(dir.path())?;
        let entry = Entry::<TypeConfig> {
            log_id,
            payload: EntryPayload::Normal(Proposal(vec![
                Command::CreateService(spec("a")),
                Command::CreateService(spec("a")),
                Command::CreateService(spec("b")),
            ])),
        };
        let replies = sm.apply([entry]).await?;
        assert_eq!(replies.len(), 1, "one reply list per entry");
        assert!(matches!(replies[0][0], Response::Service { .. }));
        assert_eq!(replies[0][1], Response::Rejected(Rejection::AlreadyExists("a".into())));
        assert!(matches!(replies[0][2], Response::Service { .. }));
    }
    let (_log, mut sm) = store::open(dir.path())?;
    let (applied, _) = sm.applied_state().await?;
    assert_eq!(applied, Some(log_id));
    let names: Vec<String> =
        sm.applied().read().map(|a| a.state.services.keys().cloned().collect()).unwrap_or_default();
    assert_eq!(names, ["a", "b"]);
    Ok(())
}
