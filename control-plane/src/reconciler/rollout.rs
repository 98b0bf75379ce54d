//! One service's rollout, decided without IO (the reconciler's part for a
//! service whose tasks run an older spec): which outdated slots to replace
//! now, whether its new tasks failed beyond what its config tolerates and
//! what to do about it, and whether it is done.
//!
//! ```text
//! new tasks failed > max_failure_ratio × replicas ─▶ failure_action: rollback | pause | continue
//! paused                                          ─▶ nothing new replaced
//! free = parallelism − in flight, delay over     ─▶ replace that many outdated slots
//! nothing outdated, nothing in flight, every new
//! task serving for `monitor`                      ─▶ completed (or rolled back)
//! ```
//!
//! "In flight": a slot whose newest task runs the current spec but does
//! not serve yet (not running, or not yet healthy). Times are the
//! leader's wall clock (Unix ms), as tasks' `since_ms` are; a decision
//! that waits for one (a delay, a monitor) says when to look again.

use berth_proto::model::{FailureAction, Rollout, RolloutState, Task, TaskState, UpdateConfig};

/// What the reconciler knows of one service's rollout.
#[derive(Debug)]
pub struct View<'a> {
    /// The spec version its tasks should run.
    pub current: u64,
    pub replicas: u32,
    pub rollout: Option<&'a Rollout>,
    pub update: UpdateConfig,
    pub rollback: UpdateConfig,
    /// Whether it has a previous spec to roll back to.
    pub has_previous: bool,
    /// The newest live task of each slot that runs the current spec
    /// (made for this version, or kept from before as it runs the same).
    pub new_tasks: Vec<&'a Task>,
    /// Slots whose task runs an older spec (and runs), in slot order.
    pub outdated: Vec<u32>,
    /// Slots being replaced whose new task does not serve yet.
    pub in_flight: usize,
}

#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Outdated slots to replace now.
    pub replace: Vec<u32>,
    /// The rollout's new state, and why.
    pub state: Option<(RolloutState, String)>,
    /// Put the previous spec back, and why.
    pub rollback: Option<String>,
    /// When to look again without news (Unix ms).
    pub wake_at: Option<u64>,
}

/// Which config rules the rollout: its rollback's once rolling back.
pub fn config(view: &View) -> UpdateConfig {
    match view.rollout {
        Some(r) if r.version == view.current && r.state.rolling_back() => view.rollback,
        _ => view.update,
    }
}

pub fn decide(view: &View, now: u64) -> Decision {
    let mut d = Decision::default();
    // A rollout of this version, or one begun before rollouts were
    // recorded; a service never updated has none.
    let state = match view.rollout.filter(|r| r.version == view.current) {
        Some(r) => r.state,
        None if view.outdated.is_empty() => return d,
        None => RolloutState::Updating,
    };
    let cfg = config(view);
    // Only tasks made for this version can fail it.
    let failed: Vec<(&Task, String)> = view
        .new_tasks
        .iter()
        .filter(|t| t.version == view.current)
        .filter_map(|t| failure(t, cfg.monitor_ms, now).map(|why| (*t, why)))
        .collect();
    if state.moving() {
        let tolerated = (cfg.max_failure_ratio * f64::from(view.replicas)).floor() as usize;
        if failed.len() > tolerated && cfg.failure_action != FailureAction::Continue {
            let why = format!("{} of {} new tasks failed: {}", failed.len(), view.replicas, failed[0].1);
            match (state, cfg.failure_action) {
                (RolloutState::Updating, FailureAction::Rollback) if view.has_previous => d.rollback = Some(why),
                (RolloutState::Updating, _) => d.state = Some((RolloutState::Paused, why)),
                _ => d.state = Some((RolloutState::RollbackPaused, why)),
            }
            return d;
        }
        // A new task waiting for a node fails once it has waited `monitor`:
        // look again then, even if nothing else happens.
        d.wake_at = view
            .new_tasks
            .iter()
            .filter(|t| t.version == view.current && t.state == TaskState::Pending && !t.message.is_empty())
            .map(|t| t.since_ms.saturating_add(cfg.monitor_ms))
            .filter(|at| *at > now)
            .min();
    }
    // Failures borne (within the ratio, or `continue`) hold back neither the
    // next batch nor the end.
    let borne = |t: &Task| failed.iter().any(|(f, _)| f.id == t.id);
    let in_flight = view.in_flight.saturating_sub(failed.iter().filter(|(t, _)| !t.serving()).count());
    if matches!(state, RolloutState::Paused | RolloutState::RollbackPaused) {
        return d;
    }
    if !view.outdated.is_empty() {
        let free = match cfg.parallelism {
            0 => view.outdated.len(),
            n => (n as usize).saturating_sub(in_flight),
        };
        // The delay counts from the latest new task that serves.
        let settled = view.new_tasks.iter().filter(|t| t.serving()).map(|t| t.since_ms).max();
        let ready_at = settled.map_or(0, |s| s.saturating_add(cfg.delay_ms));
        if free > 0 && now >= ready_at {
            d.replace = view.outdated.iter().take(free).copied().collect();
        } else if free > 0 {
            d.wake_at = Some(d.wake_at.map_or(ready_at, |w| w.min(ready_at)));
        }
        return d;
    }
    if state.moving() && in_flight == 0 {
        // Done once every task made for it has served for the monitor
        // period (or failed within what the config bears); tasks a
        // rollback kept had served before it began.
        // (A borne failure that keeps restarting must not keep moving it.)
        let made = view.new_tasks.iter().filter(|t| t.version == view.current && t.serving());
        let latest = made.map(|t| t.since_ms).max().unwrap_or(0);
        let done_at = latest.saturating_add(cfg.monitor_ms);
        let all_serve =
            view.new_tasks.iter().all(|t| t.serving() || borne(t)) && view.new_tasks.len() == view.replicas as usize;
        if all_serve && now >= done_at {
            let done =
                if state == RolloutState::RollingBack { RolloutState::RolledBack } else { RolloutState::Completed };
            let this = view.rollout.filter(|r| r.version == view.current);
            if this.is_none_or(|r| r.state != done) {
                // Why it rolled back stays said.
                d.state = Some((done, this.map(|r| r.message.clone()).unwrap_or_default()));
            }
        } else if all_serve {
            d.wake_at = Some(done_at);
        }
    }
    d
}

/// Why a new task counts as a failure of its rollout, if it does: it could
/// not run, stopped, restarted, is unhealthy, or has waited `monitor` for
/// a node that fits.
pub fn failure(t: &Task, monitor_ms: u64, now: u64) -> Option<String> {
    let said = |what: String| match t.message.as_str() {
        "" => what,
        m => format!("{what}: {m}"),
    };
    match t.state {
        TaskState::Failed => Some(said(format!("{} failed", t.id))),
        TaskState::Exited => Some(said(format!("{} exited with {}", t.id, t.exit_code.unwrap_or(-1)))),
        TaskState::Pending if !t.message.is_empty() && now >= t.since_ms.saturating_add(monitor_ms) => {
            Some(format!("{} cannot be placed: {}", t.id, t.message))
        }
        _ if t.health == Some(berth_proto::model::HealthState::Unhealthy) => {
            Some(said(format!("{} is unhealthy", t.id)))
        }
        _ if t.restarts > 0 => Some(said(format!("{} restarted {} times", t.id, t.restarts))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::model::{HealthState, TaskSpec};

    fn task(slot: u32, state: TaskState, since_ms: u64) -> Task {
        let mut t = Task::new("web", slot, 2, 2, TaskSpec::default());
        t.state = state;
        t.since_ms = since_ms;
        t
    }

    fn view<'a>(
        new_tasks: Vec<&'a Task>,
        outdated: Vec<u32>,
        in_flight: usize,
        rollout: Option<&'a Rollout>,
    ) -> View<'a> {
        View {
            current: 2,
            replicas: 4,
            rollout,
            update: UpdateConfig { parallelism: 2, delay_ms: 1000, monitor_ms: 3000, ..UpdateConfig::UPDATE },
            rollback: UpdateConfig::ROLLBACK,
            has_previous: true,
            new_tasks,
            outdated,
            in_flight,
        }
    }

    #[test]
    fn batches_of_parallelism_after_the_delay() {
        // Nothing replaced yet: the first batch at once.
        assert_eq!(decide(&view(vec![], vec![1, 2, 3, 4], 0, None), 10_000).replace, [1, 2]);
        // One of the batch still starting: one more may go, once the delay
        // after the one that serves is over.
        let (serving, starting) = (task(1, TaskState::Running, 10_000), task(2, TaskState::Assigned, 10_000));
        let v = view(vec![&serving, &starting], vec![3, 4], 1, None);
        assert_eq!(decide(&v, 10_500), Decision { wake_at: Some(11_000), ..Decision::default() });
        assert_eq!(decide(&v, 11_000).replace, [3]);
        // Both in flight: none.
        let v = view(vec![&starting, &starting], vec![3, 4], 2, None);
        assert_eq!(decide(&v, 20_000), Decision::default());
        // Parallelism 0: every outdated slot at once.
        let mut all = view(vec![], vec![1, 2, 3, 4], 0, None);
        all.update.parallelism = 0;
        assert_eq!(decide(&all, 0).replace, [1, 2, 3, 4]);
    }

    #[test]
    fn a_failed_new_task_rolls_back_pauses_or_is_borne_as_configured() {
        let mut crashed = task(1, TaskState::Running, 10_000);
        crashed.restarts = 2;
        crashed.message = "exit 1".into();
        let ok = task(2, TaskState::Running, 10_000);
        let v = view(vec![&crashed, &ok], vec![3, 4], 0, None);
        let d = decide(&v, 10_100);
        assert_eq!(d.rollback.as_deref(), Some("1 of 4 new tasks failed: web.1.2 restarted 2 times: exit 1"));
        assert!(d.replace.is_empty(), "nothing more replaced");
        let mut paused = view(vec![&crashed, &ok], vec![3, 4], 0, None);
        paused.update.failure_action = FailureAction::Pause;
        assert_eq!(decide(&paused, 10_100).state.map(|s| s.0), Some(RolloutState::Paused));
        paused.has_previous = false;
        paused.update.failure_action = FailureAction::Rollback;
        assert_eq!(decide(&paused, 10_100).state.map(|s| s.0), Some(RolloutState::Paused), "nothing to go back to");
        let mut borne = view(vec![&crashed, &ok], vec![3, 4], 0, None);
        borne.update.max_failure_ratio = 0.25;
        assert_eq!(decide(&borne, 11_000).replace, [3, 4], "one of four is within a 0.25 ratio");
        let mut unhealthy = task(1, TaskState::Running, 0);
        unhealthy.health = Some(HealthState::Unhealthy);
        assert!(decide(&view(vec![&unhealthy], vec![2], 0, None), 1)
            .rollback
            .unwrap()
            .contains("web.1.2 is unhealthy"));
        let mut unplaced = task(1, TaskState::Pending, 1000);
        unplaced.message = "no node has 4 CPUs free".into();
        assert!(decide(&view(vec![&unplaced], vec![2], 1, None), 2000).rollback.is_none(), "within the monitor");
        let why = decide(&view(vec![&unplaced], vec![2], 1, None), 4000).rollback.unwrap();
        assert!(why.ends_with("web.1.2 cannot be placed: no node has 4 CPUs free"), "{why}");
        // A rollback that fails pauses.
        let back = Rollout { state: RolloutState::RollingBack, version: 2, message: String::new() };
        let d = decide(&view(vec![&crashed], vec![2], 0, Some(&back)), 10_100);
        assert_eq!(d.state.map(|s| s.0), Some(RolloutState::RollbackPaused));
    }

    #[test]
    fn a_rollback_that_kept_every_task_is_done_at_once() {
        let mut kept: Vec<Task> = (1..=4).map(|s| task(s, TaskState::Running, 10_000)).collect();
        for t in &mut kept {
            t.version = 1;
        }
        let refs: Vec<&Task> = kept.iter().collect();
        let back = Rollout { state: RolloutState::RollingBack, version: 2, message: "x".into() };
        let d = decide(&view(refs, vec![], 0, Some(&back)), 10_001);
        assert_eq!(d.state, Some((RolloutState::RolledBack, "x".into())), "nothing new to watch");
    }

    #[test]
    fn failures_borne_hold_back_neither_the_next_batch_nor_the_end() {
        let mut failed = task(1, TaskState::Failed, 10_000);
        failed.message = "exit 1".into();
        let ok = task(2, TaskState::Running, 10_000);
        let mut v = view(vec![&failed, &ok], vec![3, 4], 1, None);
        v.update.failure_action = FailureAction::Continue;
        assert_eq!(decide(&v, 11_000).replace, [3, 4], "the failed one is not in flight");
        let (three, four) = (task(3, TaskState::Running, 11_000), task(4, TaskState::Running, 11_000));
        let going = Rollout { state: RolloutState::Updating, version: 2, message: String::new() };
        let mut v = view(vec![&failed, &ok, &three, &four], vec![], 1, Some(&going));
        v.update.failure_action = FailureAction::Continue;
        assert_eq!(decide(&v, 14_000).state.map(|s| s.0), Some(RolloutState::Completed));
    }

    #[test]
    fn a_new_task_waiting_for_a_node_is_looked_at_again_when_its_monitor_ends() {
        let mut waiting = task(1, TaskState::Pending, 1000);
        waiting.message = "no node fits".into();
        let d = decide(&view(vec![&waiting], vec![2, 3, 4], 2, None), 2000);
        assert_eq!((d.wake_at, d.replace.len()), (Some(4000), 0), "{d:?}");
    }

    #[test]
    fn a_paused_rollout_replaces_nothing_and_a_done_one_is_said_once() {
        let paused = Rollout { state: RolloutState::Paused, version: 2, message: "x".into() };
        assert_eq!(decide(&view(vec![], vec![1, 2], 0, Some(&paused)), 0), Decision::default());
        let tasks: Vec<Task> = (1..=4).map(|s| task(s, TaskState::Running, 10_000)).collect();
        let refs: Vec<&Task> = tasks.iter().collect();
        let going = Rollout { state: RolloutState::Updating, version: 2, message: String::new() };
        let v = view(refs.clone(), vec![], 0, Some(&going));
        assert_eq!(decide(&v, 12_000).wake_at, Some(13_000), "monitoring");
        assert_eq!(decide(&v, 13_000).state, Some((RolloutState::Completed, "".into())));
        assert_eq!(decide(&view(refs.clone(), vec![], 0, None), 13_000), Decision::default(), "never updated");
        let done = Rollout { state: RolloutState::Completed, version: 2, message: String::new() };
        assert_eq!(decide(&view(refs.clone(), vec![], 0, Some(&done)), 20_000), Decision::default());
        let back = Rollout { state: RolloutState::RollingBack, version: 2, message: "rolled back: x".into() };
        let v = view(refs, vec![], 0, Some(&back));
        assert_eq!(decide(&v, 14_999).wake_at, Some(15_000), "by the rollback's monitor");
        assert_eq!(decide(&v, 15_000).state, Some((RolloutState::RolledBack, "rolled back: x".into())));
    }
}
