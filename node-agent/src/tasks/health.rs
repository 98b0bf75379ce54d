//! What the probes say of each running task, decided without IO, as
//! Docker decides it: a run starts `starting`; its first probe comes one
//! `interval` after it started and then one every `interval`; a pass makes
//! it `healthy`; `retries` failures in a row make it `unhealthy`, except
//! that failures within `start_period` of its start, before any pass, do
//! not count. A probe that outlasts its `timeout` has failed.
//!
//! A run is told apart by when it started (its record's start time), so a
//! restarted container starts over as `starting`.

use berth_proto::model::{Check, HealthState, Probe};

/// The most of a probe's output kept (Docker keeps 4 KiB; the cluster
/// gets this much in the task's message when it turns unhealthy).
pub const OUTPUT_BYTES: usize = 512;

/// One run's health, between probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    pub check: Check,
    /// Which run of the container (its start time, by its record).
    pub run: u64,
    /// When the agent first saw this run (monotonic ms).
    pub since: u64,
    pub state: HealthState,
    /// Failures in a row that counted.
    pub failures: u32,
    /// When the next probe is due (monotonic ms).
    pub next_at: u64,
    /// A probe is under way.
    pub probing: bool,
    /// Why it is unhealthy: the last failed probe's output, for the
    /// cluster (kept from the turn, so later probes do not rewrite it);
    /// or why the run before was replaced, until this one passes.
    pub why: String,
}

/// A probe the driver should run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeJob {
    pub task: String,
    pub run: u64,
    pub probe: Probe,
    pub timeout_ms: u64,
}

/// How a probe went: passed, or failed with what it said.
pub type Outcome = Result<(), String>;

impl Tracker {
    pub fn new(run: u64, check: &Check, now: u64) -> Self {
        Self {
            check: check.clone(),
            run,
            since: now,
            state: HealthState::Starting,
            failures: 0,
            next_at: now.saturating_add(check.interval_ms),
            probing: false,
            why: String::new(),
        }
    }

    /// The probe to run at `now`, if one is due and none is under way.
    pub fn due(&mut self, task: &str, now: u64) -> Option<ProbeJob> {
        if self.probing || now < self.next_at {
            return None;
        }
        self.probing = true;
        let (probe, timeout_ms) = (self.check.probe.clone(), self.check.timeout_ms);
        Some(ProbeJob { task: task.to_owned(), run: self.run, probe, timeout_ms })
    }

    /// A probe ended at `now`; the next is due one interval later.
    pub fn probed(&mut self, outcome: Outcome, now: u64) {
        let check = &self.check;
        self.probing = false;
        self.next_at = now.saturating_add(check.interval_ms);
        match outcome {
            Ok(()) => {
                self.state = HealthState::Healthy;
                self.failures = 0;
                self.why.clear();
            }
            Err(_) if self.state == HealthState::Starting && now < self.since.saturating_add(check.start_period_ms) => {
            }
            Err(output) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= check.retries && self.state != HealthState::Unhealthy {
                    self.state = HealthState::Unhealthy;
                    self.why = format!("unhealthy after {} failed probes: {}", self.failures, clip(&output));
                }
            }
        }
    }
}

/// At most [`OUTPUT_BYTES`] of `output`, trimmed, on a char boundary.
pub fn clip(output: &str) -> String {
    let output = output.trim();
    let mut end = output.len().min(OUTPUT_BYTES);
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    output[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(interval_ms: u64, retries: u32, start_period_ms: u64) -> Check {
        Check { probe: Probe::Tcp { port: 80 }, interval_ms, timeout_ms: 500, retries, start_period_ms }
    }

    fn fail(why: &str) -> Outcome {
        Err(why.into())
    }

    #[test]
    fn probes_come_every_interval_one_at_a_time() {
        let c = check(1000, 3, 0);
        let mut t = Tracker::new(7, &c, 100);
        assert_eq!(t.due("a.1.1", 1099), None, "not before one interval");
        let job = t.due("a.1.1", 1100).expect("due");
        assert_eq!((job.run, job.timeout_ms, job.probe), (7, 500, Probe::Tcp { port: 80 }));
        assert_eq!(t.due("a.1.1", 5000), None, "one under way");
        t.probed(Ok(()), 1300);
        assert_eq!(t.state, HealthState::Healthy);
        assert_eq!(t.due("a.1.1", 2299), None);
        assert!(t.due("a.1.1", 2300).is_some());
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy_and_a_pass_heals_it() {
        let c = check(1000, 3, 0);
        let mut t = Tracker::new(1, &c, 0);
        t.probed(fail("a"), 1000);
        t.probed(Ok(()), 2000);
        t.probed(fail("b"), 3000);
        t.probed(fail("c"), 4000);
        assert_eq!(t.state, HealthState::Healthy, "two in a row are not three");
        t.probed(fail("  exit 1: no\n"), 5000);
        assert_eq!(t.state, HealthState::Unhealthy);
        assert_eq!(t.why, "unhealthy after 3 failed probes: exit 1: no");
        t.probed(fail("later"), 6000);
        assert_eq!(t.why, "unhealthy after 3 failed probes: exit 1: no", "kept from the turn");
        t.probed(Ok(()), 7000);
        assert_eq!((t.state, t.failures, t.why.as_str()), (HealthState::Healthy, 0, ""));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_until_a_pass() {
        let c = check(1000, 1, 5000);
        let mut t = Tracker::new(1, &c, 10_000);
        t.probed(fail("booting"), 11_000);
        t.probed(fail("booting"), 14_999);
        assert_eq!((t.state, t.failures), (HealthState::Starting, 0));
        t.probed(fail("late"), 15_000);
        assert_eq!(t.state, HealthState::Unhealthy, "the period is over");
        let mut t = Tracker::new(1, &c, 10_000);
        t.probed(Ok(()), 11_000);
        t.probed(fail("down"), 12_000);
        assert_eq!(t.state, HealthState::Unhealthy, "once it passed, the period no longer shields it");
    }

    #[test]
    fn output_is_clipped_on_a_char_boundary() {
        let long = "é".repeat(OUTPUT_BYTES);
        let clipped = clip(&long);
        assert!(clipped.len() <= OUTPUT_BYTES && clipped.chars().all(|c| c == 'é'));
    }
}
