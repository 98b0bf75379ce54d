//! One pass of the worker over its node's tasks, as a pure function: what
//! the cluster assigns (tasks refused as unreadable are told failed and
//! left alone), what containers and namespaces the node has,
//! the worker's [`Books`] and the monotonic clock in; the jobs to start
//! and the reports to send out. The driver runs it after every change it
//! sees (a watch message, a job or a container ending, a tick) and carries
//! out what it returns.
//!
//! ```text
//! assignment.tasks ─▶ Want ─┐
//! observed         ─▶ Have ─┴▶ plan ─▶ due, not busy, not backing off ─▶ jobs
//! (a start of a task whose dependencies are not up waits: depends::waiting)
//! fenced, running ─────────────────────────────────────────────────────▶ Fence jobs
//! namespaces of no task, no container ─────────────────────────────────▶ Detach jobs
//! running with a check + books ─▶ health::Tracker, due ─────────────────▶ probes
//! observed + books ─────────────────────────────────────────────────────▶ reports
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth_proto::model::{Assignment, Check, HealthState, TaskReport, TaskState};

use super::books::{Books, Streak};
use super::health::{ProbeJob, Tracker};
pub use super::job::Job;
use super::plan::{millis, plan, Action, Have, Want};
use super::restart;
use crate::runtime::Status;

/// A container the node has for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The task, which is also the container's name.
    pub task: String,
    pub status: Status,
    /// How long its last run lasted, once it has exited; how long it has
    /// run so far, while it runs.
    pub ran_for: Duration,
    /// Its health check, if its spec or image has one.
    pub check: Option<Check>,
    /// It mounts an exclusive volume: it runs only under a lease.
    pub exclusive: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    pub jobs: Vec<Job>,
    /// Every task's state as the cluster should know it; sent when it
    /// differs from the last sent.
    pub reports: Vec<TaskReport>,
    /// Health probes due now.
    pub probes: Vec<ProbeJob>,
    /// When a starting run's next probe is due (monotonic ms), for the
    /// driver to look again then rather than at its tick.
    pub wake_at: Option<u64>,
    /// Whether something waits on time: a restart or a retry backing off,
    /// a start waiting for its dependencies. The driver then looks at its
    /// tick, not at rest's pause.
    pub waiting: bool,
}

/// One pass at `now` (monotonic ms): starts the jobs it returns in `books`.
pub fn step(
    assignment: &Assignment,
    observed: &[Observed],
    namespaces: &[String],
    books: &mut Books,
    now: u64,
) -> Step {
    let tasks = &assignment.tasks;
    for o in observed {
        match o.status {
            // A container with a job under way (a restart renewing it) is
            // not seen stopped anew: its backoff counts from before.
            Status::Exited(_) | Status::Lost if !books.busy.contains(&o.task) => {
                books.seen_stopped.entry(o.task.clone()).or_insert(now);
                // Ended while the node holds no lease for it: its monitor's fence.
                if assignment.fenced.contains(&o.task) {
                    books.fenced.insert(o.task.clone());
                }
            }
            Status::Running(_) => {
                books.failed.remove(&o.task);
                if !assignment.fenced.contains(&o.task) && !books.busy.contains(&o.task) {
                    books.fenced.remove(&o.task);
                }
            }
            _ => {}
        }
    }
    // A task this node cannot take is left as it is, and told failed.
    let observed: Vec<&Observed> = observed.iter().filter(|o| !assignment.refused.contains_key(&o.task)).collect();
    let here: BTreeSet<&str> = observed.iter().map(|o| o.task.as_str()).collect();
    // A task that left the assignment with no container here (never made:
    // fenced, refused, its start failed) is told shut down once, as a
    // stopped one is: its slot may be waiting for that word.
    let named =
        |t: &String| tasks.contains_key(t) || assignment.fenced.contains(t) || assignment.refused.contains_key(t);
    let left: Vec<String> =
        books.assigned.iter().filter(|t| !named(t) && !here.contains(t.as_str())).cloned().collect();
    books.stopped.extend(left);
    books.assigned = tasks.keys().chain(&assignment.fenced).chain(assignment.refused.keys()).cloned().collect();
    books.forget_except(|t| tasks.contains_key(t) || assignment.fenced.contains(t) || here.contains(t), now);
    let probes = track_health(tasks.keys(), &observed, books, now);

    let options = |task: &str| tasks.get(task).map(|t| &t.spec.overrides.options);
    let wants: Vec<Want> = tasks
        .values()
        .map(|t| Want {
            task: t.id.clone(),
            restart: t.spec.restart,
            max_attempts: t.spec.overrides.options.restart_max_attempts,
        })
        .collect();
    let have: Vec<Have> = observed
        .iter()
        .filter(|o| !assignment.fenced.contains(&o.task))
        .map(|o| Have {
            task: o.task.clone(),
            status: o.status.clone(),
            ran_for: match books.health.get(&o.task) {
                Some(h) if h.state == HealthState::Unhealthy => Duration::from_millis(now.saturating_sub(h.since)),
                _ => o.ran_for,
            },
            streak: books.streaks.get(&o.task).map_or(0, |s| s.row),
            since: books.seen_stopped.get(&o.task).copied().unwrap_or(now),
            unhealthy: books.health.get(&o.task).is_some_and(|h| h.state == HealthState::Unhealthy),
            fenced: books.fenced.contains(&o.task),
            attempts: {
                let (cluster, window) = match tasks.get(&o.task) {
                    Some(t) => (t.restarts, options(&o.task).and_then(|o| o.restart_window_ms)),
                    None => (0, None),
                };
                books.attempts(&o.task, cluster, window, now)
            },
        })
        .collect();
    let waiting = super::depends::waiting(assignment);
    let mut jobs = Vec::new();
    let mut held = false;
    for action in plan(&wants, &have, now) {
        let (Action::Start { task }
        | Action::Restart { task, .. }
        | Action::Replace { task, .. }
        | Action::Stop { task }
        | Action::Remove { task }) = &action;
        if books.busy.contains(task) {
            continue;
        }
        // A task whose last job failed waits out its backoff, whatever comes next.
        if books.failed.get(task).is_some_and(|f| now < f.retry_at) {
            held = true;
            continue;
        }
        // Whatever starts it, first or again, waits for its dependencies.
        if waiting.contains_key(task) && !matches!(action, Action::Stop { .. } | Action::Remove { .. }) {
            held = true;
            continue;
        }
        let replace = matches!(action, Action::Replace { .. });
        let job = match action {
            Action::Start { task } => match tasks.get(&task) {
                Some(t) => Job::Start(t.clone()),
                None => continue,
            },
            Action::Restart { at, .. } if now < at => {
                held = true;
                continue;
            }
            Action::Restart { task, streak, .. } | Action::Replace { task, streak } => {
                let Some(t) = tasks.get(&task) else { continue };
                let keep = t.spec.overrides.options.restart_max_attempts.unwrap_or(0);
                books.restarted(&task, now, keep);
                let counted = books.streaks.entry(task).or_insert(Streak { row: 0, total: t.restarts });
                *counted = Streak { row: streak, total: counted.total.saturating_add(1) };
                if replace {
                    Job::Replace(t.clone())
                } else {
                    Job::Restart(t.clone())
                }
            }
            Action::Stop { task } => {
                books.stopped.insert(task.clone());
                Job::Stop(task)
            }
            Action::Remove { task } => {
                books.stopped.insert(task.clone());
                Job::Remove(task)
            }
        };
        if matches!(job, Job::Start(_) | Job::Restart(_) | Job::Replace(_)) {
            books.seen_stopped.remove(job.task());
        }
        books.busy.insert(job.task().to_owned());
        jobs.push(job);
    }
    for o in observed.iter().filter(|o| assignment.fenced.contains(&o.task)) {
        // A lost one too: its processes may live on with nothing watching them.
        if matches!(o.status, Status::Running(_) | Status::Lost) && !books.busy.contains(&o.task) {
            books.busy.insert(o.task.clone());
            books.fenced.insert(o.task.clone());
            jobs.push(Job::Fence(o.task.clone()));
        }
    }
    for ns in namespaces {
        let keep = tasks.contains_key(ns)
            || assignment.refused.contains_key(ns)
            || assignment.fenced.contains(ns)
            || here.contains(ns.as_str());
        if keep || books.busy.contains(ns) {
            continue;
        }
        if books.failed.get(ns).is_none_or(|f| now >= f.retry_at) {
            books.busy.insert(ns.clone());
            jobs.push(Job::Detach(ns.clone()));
        } else {
            held = true;
        }
    }
    // Only a starting run's probes are due sooner than the tick matters for
    // (a rollout waits on them); waking for every probe made a pass, which
    // lists every container, per probe: 100 checked tasks cost 4x the CPU.
    let starting = books.health.values().filter(|h| !h.probing && h.state == HealthState::Starting);
    let wake_at = starting.map(|h| h.next_at).min();
    Step { jobs, reports: reports(assignment, &observed, books, &waiting), probes, wake_at, waiting: held }
}

/// Keeps a tracker for each wanted task running with a health check (a
/// new one for each run) and returns the probes due; a task with a job
/// under way is not probed.
fn track_health<'a>(
    wanted: impl Iterator<Item = &'a String>,
    observed: &[&Observed],
    books: &mut Books,
    now: u64,
) -> Vec<ProbeJob> {
    let wanted: BTreeSet<&String> = wanted.collect();
    let running: BTreeMap<&str, (u64, &Check, Duration)> = observed
        .iter()
        .filter(|o| wanted.contains(&o.task))
        .filter_map(|o| match (&o.status, &o.check) {
            (Status::Running(started), Some(check)) => {
                Some((o.task.as_str(), (started.started_at_ms, check, o.ran_for)))
            }
            _ => None,
        })
        .collect();
    // A run replaced for being unhealthy says so until the next turns
    // healthy (kept in the books: the container is seen stopped between).
    let replaced = &mut books.replaced;
    books.health.retain(|task, h| {
        let same = running.get(task.as_str()).is_some_and(|(run, ..)| *run == h.run);
        if !same && h.state == HealthState::Unhealthy {
            replaced.insert(task.clone(), format!("restarted: {}", h.why));
        }
        same
    });
    let mut due = Vec::new();
    for (task, (run, check, ran)) in running {
        if !books.health.contains_key(task) {
            // A run that replaced an unhealthy one backs off as a crash's
            // restart does (a crash's restart has waited already).
            let why = books.replaced.remove(task).unwrap_or_default();
            let row = books.streaks.get(task).map_or(0, |s| s.row);
            let backoff = if why.is_empty() { Duration::ZERO } else { restart::delay(row.saturating_sub(1)) };
            let (ran, backoff) = (millis(ran), millis(backoff));
            books.health.insert(task.to_owned(), Tracker { why, ..Tracker::new(run, check, now, ran, backoff) });
        }
        if books.busy.contains(task) {
            continue;
        }
        if let Some(tracker) = books.health.get_mut(task) {
            due.extend(tracker.due(task, now));
        }
    }
    due
}

/// What to tell the cluster about this node's tasks.
fn reports(
    assignment: &Assignment,
    observed: &[&Observed],
    books: &Books,
    waiting: &BTreeMap<String, String>,
) -> Vec<TaskReport> {
    let (tasks, status) = (&assignment.tasks, observed.iter().map(|o| (o.task.as_str(), &o.status)));
    let status: BTreeMap<&str, &Status> = status.collect();
    let mut out = Vec::new();
    for (task, assigned) in tasks {
        let report = |state, exit_code, message: &str| TaskReport {
            id: task.clone(),
            state,
            exit_code,
            restarts: books.restarts(task, assigned.restarts),
            message: message.to_owned(),
            health: None,
        };
        out.push(match status.get(task.as_str()) {
            Some(Status::Running(_)) => match books.health.get(task) {
                // Found running, not probed yet: the cluster keeps what it knew.
                Some(h) if h.unknown => continue,
                Some(h) => TaskReport { health: Some(h.state), ..report(TaskState::Running, None, &h.why) },
                None => report(TaskState::Running, None, ""),
            },
            Some(Status::Exited(e)) => match &e.error {
                Some(error) => report(TaskState::Failed, None, error),
                None if e.oom_killed => report(TaskState::Exited, Some(e.code), "killed: out of memory"),
                None => report(TaskState::Exited, Some(e.code), waiting.get(task).map_or("", String::as_str)),
            },
            Some(Status::Lost) => report(TaskState::Failed, None, "its shim died"),
            Some(Status::Created) => continue,
            None => match (books.failed.get(task), waiting.get(task)) {
                (Some(f), _) => report(TaskState::Failed, None, &f.why),
                (None, Some(why)) => report(TaskState::Assigned, None, why),
                (None, None) => continue,
            },
        });
    }
    for (task, why) in &assignment.refused {
        out.push(TaskReport {
            id: task.clone(),
            state: TaskState::Failed,
            exit_code: None,
            restarts: 0,
            message: format!("this agent cannot run it: {why}"),
            health: None,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    // Shut down once its container is gone and its job (which frees its
    // namespace, and with it the address) has ended.
    for task in books.stopped.iter().filter(|t| !status.contains_key(t.as_str()) && !books.busy.contains(*t)) {
        out.push(TaskReport {
            id: task.clone(),
            state: TaskState::Shutdown,
            exit_code: None,
            restarts: books.restarts(task, 0),
            message: String::new(),
            health: None,
        });
    }
    out
}

#[cfg(test)]
mod tests;
