//! Quiet heartbeats: a leader with nothing to replicate beats once every
//! `--quiet-heartbeat-ms` (1 s) instead of every `--heartbeat-ms` (100 ms),
//! having said so in each such heartbeat, and its followers wait that much
//! longer before they stand.
//!
//! Why: at rest, Raft's heartbeats were most of what an idle cluster cost
//! (bench/idle.sh): ten gRPC calls a second to each follower, each a few
//! packets over mutual TLS. The ordinary beat comes back with the first
//! entry appended, so failover while anything is written is as fast as
//! before; a leader lost while quiet is replaced about one quiet beat
//! later (TiKV's hibernating regions and CockroachDB's quiesced ranges
//! make the same trade).
//!
//! When: nothing appended for `AFTER`, every member has every entry, every
//! other voter heeds the promise (below), and no node holds a lease (a
//! lease is sound only with the ordinary beat's quorum acks, see
//! `Node::lease`: a task with an exclusive volume keeps the cluster at
//! the ordinary beat).
//!
//! How, one release apart: the promise rides in a heartbeat's gRPC
//! metadata (`PROMISE`, the gap in ms); a follower that reads it says so
//! in its answer (`HEEDED`). A leader promises only while every other
//! voter's last answer said so, so a follower of the release before (which
//! would stand at its ordinary timeout) keeps its leader at the ordinary
//! beat; a leader of the release before never promises.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::store::NodeId;

/// The metadata of a heartbeat that promises the next within this many ms.
pub const PROMISE: &str = "berth-next-beat-ms";
/// The metadata of an answer from a server that heeds promises.
pub const HEEDED: &str = "berth-quiet";
/// How long nothing must be appended before the leader goes quiet.
pub const AFTER: Duration = Duration::from_secs(3);
/// The longest promise a follower takes (a longer one is taken as this).
pub const MAX_PROMISE: Duration = Duration::from_secs(10);

/// Whether a leader may beat quietly now: nothing appended for `AFTER`
/// (`still_for`), every member's matched index at the last one, every
/// other voter heeding promises, and no lease in use (`held`).
pub fn may_rest(
    still_for: Duration,
    last: Option<u64>,
    matched: impl IntoIterator<Item = Option<u64>>,
    all_heed: bool,
    held: bool,
) -> bool {
    still_for >= AFTER && all_heed && !held && matched.into_iter().all(|m| m == last)
}

/// The gap a heartbeat's `PROMISE` metadata names, if any and sound.
pub fn promise_of(value: Option<&str>) -> Option<Duration> {
    let ms: u64 = value?.trim().parse().ok()?;
    (ms > 0).then(|| Duration::from_millis(ms).min(MAX_PROMISE))
}

/// What this server promised (as leader) or was promised (as follower),
/// shared by its election loop, its Raft client and its Raft service.
#[derive(Debug, Clone, Default)]
pub struct Quiet(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    /// The gap this leader's heartbeats promise now, in ms (0: none).
    promising: AtomicU64,
    /// The gap its leader's last heartbeat promised this follower, in ms.
    promised: AtomicU64,
    /// The servers whose last answer to an append said they heed promises.
    heeding: Mutex<BTreeSet<NodeId>>,
    /// Until when a lease keeps the ordinary beat.
    held_until: Mutex<Option<Instant>>,
}

impl Quiet {
    /// Leader: the heartbeats from now on promise the next within `gap`.
    pub fn promise(&self, gap: Option<Duration>) {
        self.0.promising.store(gap.map_or(0, |g| g.as_millis() as u64), Ordering::Relaxed);
    }

    /// Leader: what a heartbeat sent now promises.
    pub fn promising(&self) -> Option<Duration> {
        ms(self.0.promising.load(Ordering::Relaxed))
    }

    /// Leader: `target` answered an append, saying it heeds promises or not.
    pub fn answered(&self, target: NodeId, heeds: bool) {
        let mut heeding = lock(&self.0.heeding);
        match heeds {
            true => heeding.insert(target),
            false => heeding.remove(&target),
        };
    }

    /// Leader: whether each of `voters` said it heeds promises.
    pub fn all_heed(&self, mut voters: impl Iterator<Item = NodeId>) -> bool {
        let heeding = lock(&self.0.heeding);
        voters.all(|v| heeding.contains(&v))
    }

    /// Leader: a node needs a lease; the ordinary beat for `this long`.
    pub fn hold(&self, this_long: Duration) {
        let until = Instant::now() + this_long;
        let mut held = lock(&self.0.held_until);
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
    }

    /// Leader: whether a lease keeps the ordinary beat now.
    pub fn held(&self) -> bool {
        lock(&self.0.held_until).is_some_and(|until| Instant::now() < until)
    }

    /// Follower: its leader's last heartbeat promised the next within `gap`
    /// (None: the ordinary beat, or an append with entries).
    pub fn heard(&self, gap: Option<Duration>) {
        self.0.promised.store(gap.map_or(0, |g| g.as_millis() as u64), Ordering::Relaxed);
    }

    /// How much longer than its election timeout this server's leader may
    /// be silent now: the gap promised to it as a follower, or promised by
    /// it as leader (its quorum then answers that much less often).
    pub fn grace(&self) -> Duration {
        let promised = ms(self.0.promised.load(Ordering::Relaxed));
        promised.max(self.promising()).unwrap_or_default()
    }
}

fn ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_leader_rests_only_when_nothing_moves_everyone_has_everything_and_every_voter_heeds() {
        let all = [Some(9), Some(9), Some(9)];
        assert!(may_rest(AFTER, Some(9), all, true, false));
        assert!(!may_rest(AFTER - S, Some(9), all, true, false), "appended lately");
        assert!(!may_rest(AFTER, Some(9), [Some(9), Some(8), Some(9)], true, false), "a follower behind");
        assert!(!may_rest(AFTER, Some(9), [Some(9), None], true, false), "a follower with nothing yet");
        assert!(!may_rest(AFTER, Some(9), all, false, false), "a voter of the release before");
        assert!(!may_rest(AFTER, Some(9), all, true, true), "a lease in use");
    }

    #[test]
    fn promises_are_read_within_bounds() {
        assert_eq!(promise_of(Some("1000")), Some(S));
        assert_eq!(promise_of(Some("0")), None);
        assert_eq!(promise_of(Some("soon")), None);
        assert_eq!(promise_of(Some("-5")), None);
        assert_eq!(promise_of(None), None);
        assert_eq!(promise_of(Some("99999999999999")), Some(MAX_PROMISE));
    }

    #[test]
    fn grace_is_what_was_promised_either_way_and_answers_keep_who_heeds() {
        let q = Quiet::default();
        assert_eq!(q.grace(), Duration::ZERO);
        q.heard(Some(S));
        assert_eq!(q.grace(), S);
        q.heard(None);
        q.promise(Some(2 * S));
        assert_eq!((q.grace(), q.promising()), (2 * S, Some(2 * S)));
        q.promise(None);
        assert_eq!(q.grace(), Duration::ZERO);

        q.answered(2, true);
        q.answered(3, true);
        assert!(q.all_heed([2, 3].into_iter()));
        q.answered(3, false);
        assert!(!q.all_heed([2, 3].into_iter()), "its last answer counts");
        assert!(q.all_heed(std::iter::empty()), "a single server");

        assert!(!q.held());
        q.hold(S);
        q.hold(Duration::ZERO);
        assert!(q.held(), "a shorter hold does not shorten one");
    }
}
