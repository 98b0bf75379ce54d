//! What the probes say of each running task, decided without IO, as
//! Docker decides it, with Docker's start interval: a run starts
//! `starting`; it is probed as soon as it runs and, until its first pass,
//! every [`START_INTERVAL_MS`] (or its interval, if shorter), so it serves
//! as soon as it is ready, not an interval later; after that every
//! `interval`. A pass makes it `healthy`; `retries` failures in a row make
//! it `unhealthy`, counted at most one per interval (the quicker probes
//! of a starting run do not use up its retries), and failures within
//! `start_period` of its start, before any pass, do not count. A probe
//! that outlasts its `timeout` has failed.
//!
//! A run is told apart by when it started (its record's start time), so a
//! restarted container starts over as `starting`. A run the agent finds
//! already running (an agent restart) is probed at once and says nothing
//! of its health until that probe is back, so the cluster keeps what it
//! knew instead of seeing every checked task `starting` for an interval.

use berth_proto::model::{Check, HealthState, Probe};

/// How often a run is probed until its first pass (Docker's
/// start_interval, shortened: a rollout waits on it).
pub const START_INTERVAL_MS: u64 = 100;

/// A run that has been running this long when the agent first sees it
/// was found, not started (an agent restart): probed at once.
pub const INHERITED_AFTER_MS: u64 = 1000;

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
    /// When the last failure that counted was (monotonic ms).
    pub counted_at: u64,
    /// Found running, not yet probed: its health is not known here yet.
    pub unknown: bool,
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
    /// A run seen first at `now`, after running for `ran_ms` already
    /// (by its record), whose first probe waits `backoff` more (restarts
    /// in a row of an unhealthy task back off like crashes).
    pub fn new(run: u64, check: &Check, now: u64, ran_ms: u64, backoff: u64) -> Self {
        // The first probe as soon as it runs (Kubernetes' readiness probes
        // start so too): a task serves the moment it is ready.
        let inherited = ran_ms >= INHERITED_AFTER_MS;
        let first = if inherited { 0 } else { backoff };
        Self {
            check: check.clone(),
            run,
            // Its start, as far as the agent's clock can say.
            since: now.saturating_sub(ran_ms),
            counted_at: now.saturating_sub(ran_ms),
            unknown: inherited,
            state: HealthState::Starting,
            failures: 0,
            next_at: now.saturating_add(first),
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

    /// A probe ended at `now`; the next is due one interval later (one
    /// start interval while it is still starting).
    pub fn probed(&mut self, outcome: Outcome, now: u64) {
        let check = &self.check;
        self.probing = false;
        match outcome {
            Ok(()) => {
                self.state = HealthState::Healthy;
                self.failures = 0;
                self.why.clear();
            }
            Err(_) if self.state == HealthState::Starting && now < self.since.saturating_add(check.start_period_ms) => {
            }
            // A starting run's quicker probes count one failure an interval.
            Err(_)
                if self.state == HealthState::Starting && now < self.counted_at.saturating_add(check.interval_ms) => {}
            Err(output) => {
                self.counted_at = now;
                self.failures = self.failures.saturating_add(1);
                if self.failures >= check.retries && self.state != HealthState::Unhealthy {
                    self.state = HealthState::Unhealthy;
                    self.why = format!("unhealthy after {} failed probes: {}", self.failures, clip(&output));
                }
            }
        }
        // A run found running stays unreported until it passes or turns
        // unhealthy: one failed probe says nothing the cluster did not know.
        if self.state != HealthState::Starting {
            self.unknown = false;
        }
        let pause =
            if self.state == HealthState::Starting { start_interval(&self.check) } else { self.check.interval_ms };
        self.next_at = now.saturating_add(pause);
    }
}

/// How often a run is probed before its first pass.
fn start_interval(check: &Check) -> u64 {
    check.interval_ms.min(START_INTERVAL_MS)
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
    fn probes_come_every_start_interval_until_a_pass_then_every_interval() {
        let c = check(1000, 3, 0);
        let mut t = Tracker::new(7, &c, 100, 0, 0);
        let job = t.due("a.1.1", 100).expect("due as soon as it runs");
        assert_eq!((job.run, job.timeout_ms, job.probe), (7, 500, Probe::Tcp { port: 80 }));
        assert_eq!(t.due("a.1.1", 5000), None, "one under way");
        t.probed(fail("not yet"), 210);
        assert_eq!((t.state, t.failures), (HealthState::Starting, 0), "a quick probe's failure does not count");
        assert!(t.due("a.1.1", 310).is_some(), "again a start interval later");
        t.probed(Ok(()), 320);
        assert_eq!(t.state, HealthState::Healthy);
        assert_eq!(t.due("a.1.1", 1319), None, "now every interval");
        assert!(t.due("a.1.1", 1320).is_some());
        // A backoff (restarts in a row) holds the first probe back.
        let mut t = Tracker::new(8, &c, 0, 0, 400);
        assert_eq!(t.due("a.1.1", 399), None);
        assert!(t.due("a.1.1", 400).is_some());
    }

    #[test]
    fn a_starting_run_uses_a_retry_an_interval_at_most() {
        let c = check(1000, 2, 0);
        let mut t = Tracker::new(1, &c, 0, 0, 0);
        for at in (100..1000).step_by(100) {
            t.probed(fail("refused"), at);
        }
        assert_eq!((t.state, t.failures), (HealthState::Starting, 0), "nine quick failures in its first interval");
        t.probed(fail("refused"), 1000);
        t.probed(fail("refused"), 1500);
        assert_eq!(t.failures, 1);
        t.probed(fail("refused"), 2000);
        assert_eq!(t.state, HealthState::Unhealthy, "two intervals, two failures");
    }

    #[test]
    fn a_run_found_running_is_probed_at_once_and_unknown_until_then() {
        let c = check(30_000, 3, 0);
        let mut t = Tracker::new(1, &c, 500, 60_000, 0);
        assert!(t.unknown);
        assert!(t.due("a.1.1", 500).is_some(), "at once");
        t.probed(fail("hiccup"), 510);
        assert!(t.unknown, "one failure says nothing yet");
        t.probed(Ok(()), 620);
        assert!(!t.unknown && t.state == HealthState::Healthy);
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy_and_a_pass_heals_it() {
        let c = check(1000, 3, 0);
        let mut t = Tracker::new(1, &c, 0, 0, 0);
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
        let mut t = Tracker::new(1, &c, 10_000, 0, 0);
        t.probed(fail("booting"), 11_000);
        t.probed(fail("booting"), 14_999);
        assert_eq!((t.state, t.failures), (HealthState::Starting, 0));
        t.probed(fail("late"), 15_000);
        assert_eq!(t.state, HealthState::Unhealthy, "the period is over");
        let mut t = Tracker::new(1, &c, 10_000, 0, 0);
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
