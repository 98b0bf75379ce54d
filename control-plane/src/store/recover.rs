//! Starting over from a state: a backup restored into a new data dir, or
//! the survivor of a lost majority forced into a cluster of its own
//! (`berth-server --restore`, `--force-new-cluster`; see `crate::recovery`).
//!
//! Both leave the same store behind: the state as its only snapshot, at
//! the last log id the state applied, with a membership of this server
//! alone; an empty log; and a vote for this server in a term no lower than
//! any it holds, so that the term it is elected in is above every entry it
//! has. openraft starts from that as from any snapshot, `elect` makes the
//! one voter leader, and other servers join it as they join any cluster,
//! catching up from the snapshot.
//!
//! Forcing keeps every entry the survivor's log holds, applied in order,
//! and not only those it knew to be committed: a write the old leader
//! acknowledged was on a majority, of which this server may be the only
//! one left, and it may not have learned of the commit yet. An entry that
//! was never committed can come back with them, as with etcd's
//! `--force-new-cluster`: a write whose client saw it time out may appear.

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::RaftLogReader as _;
use openraft::{BasicNode, StorageError, StoredMembership};

use super::sm::{apply_entries, Applied};
use super::{write_err, LogId, LogStore, NodeId, SnapshotMeta, StateMachineStore};
use crate::stats::Stats;

/// Makes `applied` the whole of the store, with server `id` at `addr` its
/// only member; answers the log id the store now starts from.
pub async fn reseat(
    log: &LogStore,
    sm: &StateMachineStore,
    mut applied: Applied,
    id: NodeId,
    addr: &str,
) -> Result<LogId, StorageError<NodeId>> {
    let Some(last) = applied.last_applied else {
        return Err(write_err(std::io::Error::other("the state has applied nothing: there is nothing to start from")));
    };
    let alone = openraft::Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, BasicNode::new(addr))]));
    applied.membership = StoredMembership::new(Some(last), alone);
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: applied.membership.clone(),
        snapshot_id: format!("{}-{}-started-over", last.leader_id.term, last.index),
    };
    // The snapshot first: a crash before the log is emptied leaves entries
    // at or below it, which openraft does not apply again.
    sm.replace(&meta, applied).await?;
    log.start_over(last, id).await?;
    Ok(last)
}

/// The survivor's state with every entry of its log applied, as it would be
/// had all of them committed (see the module's docs). Changes nothing on
/// disk: [`reseat`] with it does.
pub async fn everything_held(log: &LogStore, sm: &StateMachineStore) -> Result<Applied, StorageError<NodeId>> {
    let applied = sm.applied();
    let from = applied.read().map_err(|_| write_err(std::io::Error::other("state lock poisoned")))?.last_applied;
    let entries = log.clone().try_get_log_entries(from.map_or(0, |l| l.index + 1)..).await?;
    apply_entries(&applied, &Stats::default(), entries)?;
    let all = applied.read().map_err(|_| write_err(std::io::Error::other("state lock poisoned")))?.clone();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, Membership, Vote};

    use super::*;
    use crate::state::{Command, Proposal};
    use crate::store::TypeConfig;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
        Entry { log_id: log_id(term, index), payload }
    }

    fn service(name: &str) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(Proposal(vec![Command::CreateService(crate::testing::spec(name, 1))]))
    }

    #[tokio::test]
    async fn a_forced_store_keeps_every_entry_it_held_and_has_one_voter() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = crate::store::open(dir.path(), None).unwrap();
        let three = Membership::new(vec![BTreeSet::from([1, 2, 3])], ());
        log.put(&[
            entry(1, 1, EntryPayload::Membership(three)),
            entry(1, 2, service("committed")),
            // Never known here to be committed: applied all the same.
            entry(2, 3, service("tail")),
        ]);
        // This server applied up to 2 before the others were lost.
        sm.apply(log.clone().try_get_log_entries(1..3).await.unwrap()).await.unwrap();
        log.save_vote(&Vote::new_committed(5, 2)).await.unwrap();

        let all = everything_held(&log, &sm).await.unwrap();
        assert_eq!(all.state.services.keys().collect::<Vec<_>>(), ["committed", "tail"]);
        let last = reseat(&log, &sm, all, 1, "198.18.0.1:7400").await.unwrap();
        assert_eq!(last, log_id(2, 3));
        drop((log, sm));

        // What Raft finds at the next start.
        let (mut log, mut sm) = crate::store::open(dir.path(), None).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(last), Some(last)));
        assert!(log.try_get_log_entries(0..).await.unwrap().is_empty(), "the log is empty");
        let vote = log.read_vote().await.unwrap().unwrap();
        assert_eq!((vote.leader_id.term, vote.leader_id.node_id, vote.committed), (5, 1, false));
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(last));
        assert_eq!(membership.membership().voter_ids().collect::<Vec<_>>(), [1]);
        assert_eq!(membership.membership().get_node(&1).unwrap().addr, "198.18.0.1:7400");
        let snapshot = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(last));
        assert!(sm.applied().read().unwrap().state.services.contains_key("tail"));
    }

    #[tokio::test]
    async fn a_state_that_applied_nothing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = crate::store::open(dir.path(), None).unwrap();
        let err = reseat(&log, &sm, Applied::default(), 1, "198.18.0.1:7400").await.unwrap_err();
        assert!(err.to_string().contains("nothing to start from"), "{err}");
    }
}
