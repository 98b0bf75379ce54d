//! What the agent should do about its node's tasks: a pure function of
//! what the control plane wants here and what containers this node has
//! (the first half of [`super::step`]).
//!
//! Times are the agent's monotonic clock (ms since it started): when a
//! container was first seen stopped, not the wall-clock time its record
//! holds, so a step of the wall clock never delays a restart.
//!
//! ```text
//! wanted, no container                  ─▶ Start
//! wanted, running                       ─▶ nothing
//! wanted, running, unhealthy            ─▶ Replace, unless the policy is never
//! wanted, exited, policy says restart   ─▶ Restart at finish + backoff
//! wanted, exited, policy says no        ─▶ nothing (reported as exited)
//! wanted, exited by the fence           ─▶ Restart now (see `super::fence`)
//! wanted, created                       ─▶ Restart now
//! wanted, lost (its shim died)          ─▶ Restart after backoff, unless the policy is never
//! (any restart, once max attempts are used up ─▶ nothing: it stays as it is)
//! not wanted, running                   ─▶ Stop (grace, then remove)
//! not wanted, anything else             ─▶ Remove
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::model::RestartPolicy;

use super::restart;
use crate::runtime::Status;

/// A task the control plane wants running on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The task id, which is also its container's name.
    pub task: String,
    pub restart: RestartPolicy,
    /// Restarts after which it is left stopped (`--restart-max-attempts`).
    pub max_attempts: Option<u32>,
}

/// A container this node has for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Have {
    pub task: String,
    pub status: Status,
    /// How long its last run lasted, once it has exited (or so far, when
    /// it is unhealthy).
    pub ran_for: Duration,
    /// Restarts in a row so far (see [`restart`]).
    pub streak: u32,
    /// When the agent first saw it exited or lost (monotonic ms), since
    /// its last start; unused while it runs.
    pub since: u64,
    /// Running, and its health check says unhealthy.
    pub unhealthy: bool,
    /// Restarts that count against `Want::max_attempts` (within its window).
    pub attempts: u32,
    /// It was stopped because the node's lease lapsed (see `super::fence`):
    /// it starts again now, whatever its policy says.
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start a container for the task.
    Start { task: String },
    /// Start the task's container afresh once the monotonic clock reads
    /// `at`, recording `streak` restarts in a row.
    Restart { task: String, at: u64, streak: u32 },
    /// Stop its running container and start it afresh now, recording
    /// `streak` restarts in a row: it is unhealthy (the failed probes
    /// were its backoff).
    Replace { task: String, streak: u32 },
    /// Stop it (SIGTERM, grace, SIGKILL) and remove it: no longer ours.
    Stop { task: String },
    /// Remove a container that no longer runs and is no longer ours.
    Remove { task: String },
}

pub fn plan(want: &[Want], have: &[Have], now: u64) -> Vec<Action> {
    let have_by_task: BTreeMap<&str, &Have> = have.iter().map(|h| (h.task.as_str(), h)).collect();
    let wanted: BTreeMap<&str, &Want> = want.iter().map(|w| (w.task.as_str(), w)).collect();
    let mut actions = Vec::new();
    for (task, w) in &wanted {
        let task = (*task).to_owned();
        let may_restart = |h: &Have| w.max_attempts.is_none_or(|max| h.attempts < max);
        match have_by_task.get(task.as_str()).map(|h| (&h.status, *h)) {
            None => actions.push(Action::Start { task }),
            Some((Status::Running(_), h)) if h.unhealthy && w.restart != RestartPolicy::Never && may_restart(h) => {
                actions.push(Action::Replace { task, streak: restart::streak_after(h.streak, h.ran_for) })
            }
            Some((Status::Running(_), _)) => {}
            Some((Status::Exited(_), h)) if h.fenced => {
                actions.push(Action::Restart { task, at: now, streak: h.streak })
            }
            Some((Status::Exited(exit), h)) => {
                if restart::wanted(w.restart, exit) && may_restart(h) {
                    let streak = restart::streak_after(h.streak, h.ran_for);
                    let at = h.since.saturating_add(millis(restart::delay(streak.saturating_sub(1))));
                    actions.push(Action::Restart { task, at, streak });
                }
            }
            // Never started (the agent stopped halfway): start it.
            Some((Status::Created, h)) => actions.push(Action::Restart { task, at: now, streak: h.streak }),
            // Its shim died, so how it ended is unknown: a failure, with
            // the same backoff as any (a shim that keeps dying must not
            // spin), counted from when it was first seen lost: a fixed
            // time, so a later pass finds the restart due.
            Some((Status::Lost, h)) if w.restart != RestartPolicy::Never && may_restart(h) => {
                let streak = h.streak.saturating_add(1);
                let at = h.since.saturating_add(millis(restart::delay(streak - 1)));
                actions.push(Action::Restart { task, at, streak })
            }
            Some((Status::Lost, _)) => {}
        }
    }
    for h in have.iter().filter(|h| !wanted.contains_key(h.task.as_str())) {
        let task = h.task.clone();
        actions.push(match h.status {
            Status::Running(_) => Action::Stop { task },
            _ => Action::Remove { task },
        });
    }
    actions
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Exited, Started};

    fn want(task: &str, restart: RestartPolicy) -> Want {
        Want { task: task.into(), restart, max_attempts: None }
    }

    fn running(task: &str) -> Have {
        let started = Started { shim_pid: 1, shim_start: 1, pid: 2, started_at_ms: 0 };
        let status = Status::Running(started);
        Have {
            task: task.into(),
            status,
            ran_for: Duration::ZERO,
            streak: 0,
            since: 0,
            unhealthy: false,
            attempts: 0,
            fenced: false,
        }
    }

    /// Exited, first seen so at `since` on the agent's clock.
    fn exited(task: &str, code: i32, since: u64, ran_for_ms: u64, streak: u32) -> Have {
        // The record's wall-clock time plays no part: far from the agent's clock on purpose.
        let exit = Exited { code, signal: None, oom_killed: false, finished_at_ms: 1 << 50, error: None };
        let ran_for = Duration::from_millis(ran_for_ms);
        Have {
            task: task.into(),
            status: Status::Exited(exit),
            ran_for,
            streak,
            since,
            unhealthy: false,
            attempts: 0,
            fenced: false,
        }
    }

    #[test]
    fn missing_tasks_start_and_foreign_containers_go() {
        let actions = plan(
            &[want("web.1.1", RestartPolicy::Always), want("web.2.1", RestartPolicy::Always)],
            &[running("web.1.1"), running("old.1.1"), exited("gone.1.1", 0, 0, 0, 0)],
            1000,
        );
        assert_eq!(
            actions,
            [
                Action::Start { task: "web.2.1".into() },
                Action::Stop { task: "old.1.1".into() },
                Action::Remove { task: "gone.1.1".into() },
            ]
        );
        assert!(plan(&[want("web.1.1", RestartPolicy::Always)], &[running("web.1.1")], 5).is_empty(), "at rest");
    }

    #[test]
    fn exits_restart_by_policy_with_backoff() {
        let w = [want("a.1.1", RestartPolicy::Always)];
        // First quick exit: at once. Then 100 ms, 200 ms after it was seen.
        for (streak, at) in [(0, 5000), (1, 5100), (2, 5200), (3, 5400)] {
            let actions = plan(&w, &[exited("a.1.1", 1, 5000, 50, streak)], 5000);
            assert_eq!(actions, [Action::Restart { task: "a.1.1".into(), at, streak: streak + 1 }]);
        }
        // A steady run starts the count over: at once again, and a quick
        // crash after that waits 100 ms.
        let actions = plan(&w, &[exited("a.1.1", 1, 9000, 60_000, 7)], 9000);
        assert_eq!(actions, [Action::Restart { task: "a.1.1".into(), at: 9000, streak: 1 }]);
        let actions = plan(&w, &[exited("a.1.1", 1, 9500, 50, 1)], 9500);
        assert_eq!(actions, [Action::Restart { task: "a.1.1".into(), at: 9600, streak: 2 }]);
        // on-failure leaves a clean exit alone; never leaves any.
        assert!(plan(&[want("a.1.1", RestartPolicy::OnFailure)], &[exited("a.1.1", 0, 1, 1, 0)], 2).is_empty());
        assert!(plan(&[want("a.1.1", RestartPolicy::Never)], &[exited("a.1.1", 9, 1, 1, 0)], 2).is_empty());
        assert_eq!(
            plan(&[want("a.1.1", RestartPolicy::OnFailure)], &[exited("a.1.1", 9, 1, 1, 0)], 2),
            [Action::Restart { task: "a.1.1".into(), at: 1, streak: 1 }]
        );
    }

    #[test]
    fn lost_or_never_started_containers_restart_now() {
        let mut lost = running("a.1.1");
        lost.status = Status::Lost;
        lost.streak = 2;
        lost.since = 50;
        assert_eq!(
            plan(&[want("a.1.1", RestartPolicy::OnFailure)], std::slice::from_ref(&lost), 77),
            [Action::Restart { task: "a.1.1".into(), at: 50 + 200, streak: 3 }]
        );
        // The same on a later pass: the restart comes due (it once moved
        // ahead with the clock, and a shim that died twice never restarted).
        assert_eq!(
            plan(&[want("a.1.1", RestartPolicy::OnFailure)], std::slice::from_ref(&lost), 5000),
            [Action::Restart { task: "a.1.1".into(), at: 50 + 200, streak: 3 }]
        );
        assert!(plan(&[want("a.1.1", RestartPolicy::Never)], &[lost.clone()], 77).is_empty());
        lost.status = Status::Created;
        assert_eq!(
            plan(&[want("a.1.1", RestartPolicy::Never)], &[lost], 77),
            [Action::Restart { task: "a.1.1".into(), at: 77, streak: 2 }]
        );
    }
}

#[cfg(test)]
mod attempts {
    use super::*;
    use crate::runtime::Exited;

    #[test]
    fn max_attempts_used_up_leave_it_stopped() {
        let w = Want { task: "a.1.1".into(), restart: RestartPolicy::Always, max_attempts: Some(2) };
        let exit = Exited { code: 1, signal: None, oom_killed: false, finished_at_ms: 0, error: None };
        let mut h = Have {
            task: "a.1.1".into(),
            status: Status::Exited(exit),
            ran_for: Duration::ZERO,
            streak: 1,
            since: 0,
            unhealthy: false,
            attempts: 1,
            fenced: false,
        };
        assert_eq!(plan(std::slice::from_ref(&w), std::slice::from_ref(&h), 0).len(), 1, "one attempt left");
        h.attempts = 2;
        assert!(plan(std::slice::from_ref(&w), std::slice::from_ref(&h), 0).is_empty(), "none left");
        h.status = Status::Lost;
        assert!(plan(std::slice::from_ref(&w), std::slice::from_ref(&h), 0).is_empty(), "not even when lost");
        // Stopped by the fence, a task runs again whatever its policy and attempts.
        let never = Want { restart: RestartPolicy::Never, ..w.clone() };
        h.status = Status::Exited(Exited { code: 0, signal: None, oom_killed: false, finished_at_ms: 0, error: None });
        h.fenced = true;
        assert_eq!(
            plan(std::slice::from_ref(&never), std::slice::from_ref(&h), 7),
            [Action::Restart { task: "a.1.1".into(), at: 7, streak: 1 }]
        );
    }
}
