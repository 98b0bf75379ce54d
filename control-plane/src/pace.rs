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
//! longer period it was given. A node holding a lease (a task with an
//! exclusive volume) is always asked for the ordinary beat: the lease's
//! soundness rests on the node-down timeout (`Node::lease`).

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
    /// while they are at most `max_per_second`, else the period that keeps
    /// them to that many beats a second together.
    pub fn beat(&self, nodes: usize) -> Duration {
        let per_second = u64::from(self.max_per_second.max(1));
        if nodes as u64 <= per_second {
            return Duration::ZERO;
        }
        Duration::from_millis((nodes as u64).saturating_mul(1_000).div_ceil(per_second))
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
        assert_eq!(pace.beat(1_001), Duration::from_millis(1_001));
        assert_eq!(pace.beat(5_000), Duration::from_secs(5), "5000 nodes: 1000 beats a second together");
        assert_eq!(pace.timeout(Duration::ZERO), Duration::from_secs(4));
        assert_eq!(pace.timeout(Duration::from_millis(1_001)), Duration::from_millis(4_004));
        assert_eq!(pace.timeout(Duration::from_secs(5)), Duration::from_secs(20));
        // A longer node-down timeout than four beats is kept.
        let patient = Pace { down: Duration::from_secs(30), ..pace };
        assert_eq!(patient.timeout(patient.beat(5_000)), Duration::from_secs(30));
        // Nonsense in, no panic out.
        let zero = Pace { max_per_second: 0, ..pace };
        assert_eq!(zero.beat(2), Duration::from_secs(2));
        assert_eq!(pace.beat(usize::MAX), Duration::from_millis(u64::MAX.div_ceil(1_000)));
    }
}
