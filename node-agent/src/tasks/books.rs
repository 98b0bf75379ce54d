//! What the worker remembers about its node's tasks between passes, and
//! only what it cannot read again from the containers: restart counts,
//! when a container was first seen stopped, which tasks have a job under
//! way, jobs that failed and their backoff, and stops the cluster has not
//! heard of yet. Plain data: only
//! [`super::step`] and the driver's news (a job ended, a report was taken)
//! change it. An agent that restarts starts with empty books; counts go on
//! from the cluster's (`AssignedTask::restarts`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use berth_proto::model::{AssignedTask, TaskReport, TaskState};

use super::health::{Outcome, ProbeJob, Tracker};
use super::job::Job;
use super::restart;

#[derive(Debug, Default)]
pub struct Books {
    pub(super) streaks: HashMap<String, Streak>,
    /// When each task's container was first seen exited or lost since its
    /// last start (monotonic ms): its restart's backoff counts from there.
    pub(super) seen_stopped: HashMap<String, u64>,
    pub(super) failed: HashMap<String, Failure>,
    /// Tasks stopped here whose shutdown the cluster has not heard yet.
    pub(super) stopped: BTreeSet<String>,
    /// Tasks with a job under way: a pass leaves them alone.
    pub(super) busy: BTreeSet<String>,
    /// What the probes say of each task running with a health check.
    pub(super) health: HashMap<String, Tracker>,
    /// When each task was last restarted (monotonic ms), for a restart
    /// window; at most as many as its max attempts.
    pub(super) restarted_at: HashMap<String, Vec<u64>>,
    /// Why a task's last run was replaced (it turned unhealthy), for its
    /// next run to say until it passes.
    pub(super) replaced: HashMap<String, String>,
    /// Tasks stopped by the fence (see `super::fence`), until they run again.
    pub(super) fenced: BTreeSet<String>,
    /// Tasks the last pass's assignment named (wanted, fenced or refused).
    pub(super) assigned: BTreeSet<String>,
}

/// Restarts of one task: in a row (for the backoff) and in all (reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    pub row: u32,
    pub total: u32,
}

/// A job that failed: nothing more is tried for its task before `retry_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub retry_at: u64,
    pub why: String,
}

impl Books {
    /// `job` ended at `now`. A failure makes its task wait out the restart
    /// backoff before anything else is tried for it (a failing remove must
    /// not spin), and is its report meanwhile; a task that left while its
    /// start failed is told as shut down (it may have no container to stop).
    pub fn job_ended(&mut self, job: &Job, outcome: Result<(), String>, wanted: Option<&AssignedTask>, now: u64) {
        let task = job.task();
        self.busy.remove(task);
        let Err(why) = outcome else { return };
        if wanted.is_none() && !matches!(job, Job::Detach(_)) {
            self.stopped.insert(task.to_owned());
        }
        let counted = wanted.map_or(0, |t| t.restarts);
        let streak = self.streaks.entry(task.to_owned()).or_insert(Streak { row: 0, total: counted });
        streak.row = streak.row.saturating_add(1);
        let retry_at = now.saturating_add(u64::try_from(restart::delay(streak.row).as_millis()).unwrap_or(u64::MAX));
        self.failed.insert(task.to_owned(), Failure { retry_at, why });
    }

    /// A probe ended; one of a run that has since ended counts for nothing.
    pub fn probed(&mut self, probe: &ProbeJob, outcome: Outcome, now: u64) {
        if let Some(h) = self.health.get_mut(&probe.task).filter(|h| h.run == probe.run) {
            h.probed(outcome, now);
        }
    }

    /// The cluster took `reports`: stops it heard of are done with.
    pub fn reported(&mut self, reports: &[TaskReport], wanted: &BTreeMap<String, AssignedTask>) {
        let told: BTreeSet<&str> =
            reports.iter().filter(|r| r.state == TaskState::Shutdown).map(|r| r.id.as_str()).collect();
        self.stopped.retain(|t| wanted.contains_key(t) || !told.contains(t.as_str()));
    }

    /// Restarts of `task` that count against its max attempts: those within
    /// `window` of `now`, or all of them without one.
    pub(super) fn attempts(&self, task: &str, cluster: u32, window: Option<u64>, now: u64) -> u32 {
        match window {
            None => self.restarts(task, cluster),
            Some(w) => {
                let times = self.restarted_at.get(task).map(Vec::as_slice).unwrap_or_default();
                times.iter().filter(|at| now.saturating_sub(**at) < w).count() as u32
            }
        }
    }

    /// A restart of `task` at `now`; keeps the last `keep`.
    pub(super) fn restarted(&mut self, task: &str, now: u64, keep: u32) {
        let times = self.restarted_at.entry(task.to_owned()).or_default();
        times.push(now);
        let extra = times.len().saturating_sub(keep.max(1) as usize);
        times.drain(..extra);
    }

    /// Restarts of `task` so far, counting on from `cluster`'s count.
    pub(super) fn restarts(&self, task: &str, cluster: u32) -> u32 {
        self.streaks.get(task).map_or(cluster, |s| s.total)
    }

    /// Forgets tasks that are gone for good: not wanted, not here, no job,
    /// nothing left to tell, no failure still backing off.
    pub(super) fn forget_except(&mut self, keep: impl Fn(&str) -> bool, now: u64) {
        let (busy, stopped) = (&self.busy, &self.stopped);
        let kept = |t: &String| keep(t) || busy.contains(t) || stopped.contains(t);
        self.failed.retain(|t, f| kept(t) || now < f.retry_at);
        let failed = &self.failed;
        self.streaks.retain(|t, _| kept(t) || failed.contains_key(t));
        self.seen_stopped.retain(|t, _| kept(t));
        self.restarted_at.retain(|t, _| kept(t));
        self.replaced.retain(|t, _| kept(t));
        self.fenced.retain(|t| kept(t));
    }
}
