//! How often nodes heartbeat, and how long one may stay silent, as the
//! cluster grows. Pure.
//!
//! Every heartbeat is a TLS call the servers answer and, on a follower,
//! pass on to the leader. At the agents' 1 s beat, 5,000 nodes made 5,000
//! calls a second; on 2 cores shared with the simulator, the servers fell
//! so far behind that 1,300 nodes at a time were taken for down. Nomad
//! meets this by spreading its clients' heartbeat TTL with the cluster's
//! size (`max_heartbeats_per_second`); berth does the same: the leader
//! answers each beat with the period to beat at, so that all nodes
//! together beat at most `max_per_second` times a second. Up to that many
//! nodes nothing changes (the agents' own period, 1 s by default).
//!
//! A node asked to beat less often has longer to be silent: `MISSED` of
//! its beats, and never less than the node-down timeout. The leader keeps
//! that per node (`Liveness`), from what it asked in the node's last
//! answer, so a cluster that shrinks never calls down a node still on the
//! longer period it was given, while one server leads. A new leader
//! settles for the period the cluster's size asks: a cluster that shrank
//! by `max_per_second` nodes or more less than one old period before its
//! leader changed may see nodes on the old period called down (the crowd
//! rule holds most of them). Every server must have the same
//! `--max-heartbeats-per-second` and `--node-down-after-ms` for the same
//! reason. A node holding a lease (a task with an exclusive volume) is
//! always asked for the ordinary beat: the lease's soundness rests on the
//! node-down timeout (`Node::lease`). Nor is any node asked while a server
//! of the release before is a member (`state::READS_PACED_BEATS`): as
//! leader it would keep the node-down timeout for everyone.
//!
//! The promise of at most `max_per_second` beats a second holds for
//! agents whose own period is 1 s or more (the default).

use std::time::Duration;

/// Beats a node asked for a period may miss before it is down.
pub const MISSED: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// The node-down timeout: how long a node beating at its own period
    /// may stay silent.
    pub down: Duration,
    /// The most heartbeats a second all nodes together are asked for.
    pub max_per_second: u32,
}

impl Default for Pace {
    fn default() -> Self {
        Self { down: Duration::from_secs(4), max_per_second: 1_000 }
    }
}

impl Pace {
    /// The period to ask of each of `nodes` nodes: zero (the agent's own)
    /// while they are at most `max_per_second`, else the period, in whole
    /// seconds, that keeps them to that many beats a second together.
    /// Whole seconds, so that it changes every `max_per_second` nodes
    /// joining or leaving, not with each one.
    pub fn beat(&self, nodes: usize) -> Duration {
        let per_second = u64::from(self.max_per_second.max(1));
        if nodes as u64 <= per_second {
            return Duration::ZERO;
        }
        Duration::from_secs((nodes as u64).div_ceil(per_second))
    }

    /// The period a heartbeat's answer asks for: none while some server
    /// of the cluster is of the release before (`cluster_paces` false: as
    /// leader it would keep the node-down timeout and call the slower
    /// nodes down), nor of a node with a lease (whose bound needs the
    /// node-down timeout), else `beat`.
    pub fn asked(&self, nodes: usize, leased: bool, cluster_paces: bool) -> Duration {
        if leased || !cluster_paces {
            return Duration::ZERO;
        }
        self.beat(nodes)
    }

    /// How long a node asked to beat every `beat` may stay silent.
    pub fn timeout(&self, beat: Duration) -> Duration {
        self.down.max(beat.saturating_mul(MISSED))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_beat_at_their_own_period_until_the_cluster_passes_the_rate_then_slower() {
        let pace = Pace { down: Duration::from_secs(4), max_per_second: 1_000 };
        assert_eq!(pace.beat(3), Duration::ZERO);
        assert_eq!(pace.beat(1_000), Duration::ZERO, "1000 nodes at 1 s is the rate itself");
        assert_eq!(pace.beat(1_001), Duration::from_secs(2), "whole seconds");
        assert_eq!(pace.beat(4_001), Duration::from_secs(5));
        assert_eq!(pace.beat(5_000), Duration::from_secs(5), "5000 nodes: 1000 beats a second together");
        assert_eq!(pace.timeout(Duration::ZERO), Duration::from_secs(4));
        assert_eq!(pace.timeout(Duration::from_secs(2)), Duration::from_secs(8));
        assert_eq!(pace.timeout(Duration::from_secs(5)), Duration::from_secs(20));
        // A longer node-down timeout than four beats is kept.
        let patient = Pace { down: Duration::from_secs(30), ..pace };
        assert_eq!(patient.timeout(patient.beat(5_000)), Duration::from_secs(30));
        // Nonsense in, no panic out.
        let zero = Pace { max_per_second: 0, ..pace };
        assert_eq!(zero.beat(2), Duration::from_secs(2));
        assert_eq!(pace.beat(usize::MAX), Duration::from_secs(u64::MAX.div_ceil(1_000)));
    }

    #[test]
    fn a_node_with_a_lease_or_a_cluster_with_a_server_before_is_asked_for_no_period() {
        let pace = Pace::default();
        assert_eq!(pace.asked(5_000, false, true), Duration::from_secs(5));
        assert_eq!(pace.asked(5_000, true, true), Duration::ZERO, "a lease keeps the ordinary beat");
        assert_eq!(pace.asked(5_000, false, false), Duration::ZERO, "a leader before would call it down");
        assert_eq!(pace.asked(3, false, true), Duration::ZERO);
    }
}
