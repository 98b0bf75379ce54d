use berth_proto::model::{AssignedTask, Check, HealthState, RestartPolicy, TaskSpec};

use super::*;
use crate::runtime::{Exited, Started};

fn task(id: &str, restart: RestartPolicy) -> AssignedTask {
    let spec = TaskSpec { image: "registry:5000/web:1".into(), restart, ..Default::default() };
    AssignedTask { id: id.into(), spec, restarts: 0, address: None, files: Default::default() }
}

fn wanted(list: &[AssignedTask]) -> Assignment {
    Assignment { tasks: list.iter().map(|t| (t.id.clone(), t.clone())).collect(), ..Assignment::default() }
}

/// A job for `task` (its kind matters only for a Detach).
fn a_job(task: &str) -> Job {
    Job::Remove(task.into())
}

fn running(task: &str) -> Observed {
    let started = Started { shim_pid: 1, shim_start: 1, pid: 2, started_at_ms: 0 };
    Observed {
        task: task.into(),
        status: Status::Running(started),
        ran_for: Duration::ZERO,
        check: None,
        exclusive: false,
    }
}

/// Exited after a short run; its record's wall-clock time is far in the
/// future, as after the wall clock stepped back: only the agent's
/// monotonic clock may count.
fn exited(task: &str, code: i32) -> Observed {
    let exit = Exited { code, signal: None, oom_killed: false, finished_at_ms: u64::MAX / 4, error: None };
    Observed {
        task: task.into(),
        status: Status::Exited(exit),
        ran_for: Duration::from_millis(50),
        check: None,
        exclusive: false,
    }
}

fn ids(step: &Step) -> Vec<String> {
    step.jobs
        .iter()
        .map(|j| format!("{j:?}").split('(').next().unwrap_or_default().to_owned() + " " + j.task())
        .collect()
}

fn states(step: &Step) -> Vec<(String, TaskState)> {
    step.reports.iter().map(|r| (r.id.clone(), r.state)).collect()
}

#[test]
fn a_new_task_starts_once_while_its_job_runs() {
    let tasks = wanted(&[task("web.1.1", RestartPolicy::Always)]);
    let mut books = Books::default();
    let first = step(&tasks, &[], &[], &mut books, 0);
    assert_eq!(first.jobs, [Job::Start(tasks.tasks["web.1.1"].clone())]);
    assert!(first.reports.is_empty(), "nothing to say before it runs");
    assert!(step(&tasks, &[], &[], &mut books, 10).jobs.is_empty(), "its start is under way");
    books.job_ended(&a_job("web.1.1"), Ok(()), tasks.tasks.get("web.1.1"), 20);
    let after = step(&tasks, &[running("web.1.1")], &[], &mut books, 30);
    assert!(after.jobs.is_empty());
    assert_eq!(states(&after), [("web.1.1".into(), TaskState::Running)]);
}

#[test]
fn restarts_back_off_on_the_monotonic_clock_whatever_the_records_say() {
    let tasks = wanted(&[task("a.1.1", RestartPolicy::Always)]);
    let mut books = Books::default();
    // First exit: restarted at once.
    let s = step(&tasks, &[exited("a.1.1", 1)], &[], &mut books, 1000);
    assert_eq!(ids(&s), ["Restart a.1.1"]);
    assert_eq!(s.reports[0].restarts, 1);
    assert_eq!(s.reports[0].exit_code, Some(1));
    books.job_ended(&a_job("a.1.1"), Ok(()), tasks.tasks.get("a.1.1"), 1010);
    let steady = step(&tasks, &[running("a.1.1")], &[], &mut books, 1020);
    assert!(steady.jobs.is_empty() && !steady.waiting, "running: nothing waits on time");
    // It crashes again, seen at 1050: 100 ms later, counted from then, and
    // the driver is told to look at its tick meanwhile, not at rest's pause.
    let backing_off = step(&tasks, &[exited("a.1.1", 1)], &[], &mut books, 1050);
    assert!(backing_off.jobs.is_empty() && backing_off.waiting);
    assert!(step(&tasks, &[exited("a.1.1", 1)], &[], &mut books, 1149).jobs.is_empty());
    let s = step(&tasks, &[exited("a.1.1", 1)], &[], &mut books, 1150);
    assert_eq!(ids(&s), ["Restart a.1.1"]);
    assert_eq!(s.reports[0].restarts, 2);
    // Seen exited again without a running pass between: 200 ms this time.
    books.job_ended(&a_job("a.1.1"), Ok(()), tasks.tasks.get("a.1.1"), 1160);
    assert!(step(&tasks, &[exited("a.1.1", 1)], &[], &mut books, 1200).jobs.is_empty());
    assert_eq!(ids(&step(&tasks, &[exited("a.1.1", 1)], &[], &mut books, 1400)), ["Restart a.1.1"]);
}

#[test]
fn counts_go_on_from_the_clusters_after_an_agent_restart() {
    let mut t = task("a.1.1", RestartPolicy::OnFailure);
    t.restarts = 7;
    let tasks = wanted(&[t]);
    let mut books = Books::default();
    let s = step(&tasks, &[running("a.1.1")], &[], &mut books, 0);
    assert!(s.jobs.is_empty(), "a running container is left alone");
    assert_eq!(s.reports[0].restarts, 7);
    let s = step(&tasks, &[exited("a.1.1", 0)], &[], &mut books, 5);
    assert!(s.jobs.is_empty(), "on-failure leaves a clean exit");
    assert_eq!((s.reports[0].state, s.reports[0].restarts), (TaskState::Exited, 7));
    let s = step(&tasks, &[exited("a.1.1", 2)], &[], &mut books, 6);
    assert_eq!((ids(&s), s.reports[0].restarts), (vec!["Restart a.1.1".to_owned()], 8));
}

#[test]
fn a_failed_job_is_reported_and_backs_off_before_anything_else() {
    let tasks = wanted(&[task("a.1.1", RestartPolicy::Always)]);
    let mut books = Books::default();
    assert_eq!(step(&tasks, &[], &[], &mut books, 0).jobs.len(), 1);
    books.job_ended(&a_job("a.1.1"), Err("pulling x: not found".into()), tasks.tasks.get("a.1.1"), 100);
    let s = step(&tasks, &[], &[], &mut books, 150);
    assert!(s.jobs.is_empty(), "waits 100 ms after the first failure");
    assert_eq!((s.reports[0].state, s.reports[0].message.as_str()), (TaskState::Failed, "pulling x: not found"));
    assert_eq!(step(&tasks, &[], &[], &mut books, 200).jobs.len(), 1);
    books.job_ended(&a_job("a.1.1"), Err("again".into()), tasks.tasks.get("a.1.1"), 210);
    assert!(step(&tasks, &[], &[], &mut books, 400).jobs.is_empty(), "then 200 ms");
    assert_eq!(step(&tasks, &[], &[], &mut books, 410).jobs.len(), 1);
    // Running clears the failure.
    books.job_ended(&a_job("a.1.1"), Ok(()), tasks.tasks.get("a.1.1"), 420);
    let s = step(&tasks, &[running("a.1.1")], &[], &mut books, 430);
    assert_eq!(states(&s), [("a.1.1".into(), TaskState::Running)]);
    assert!(books.failed.is_empty());
}

#[test]
fn a_stop_is_told_once_its_job_is_done_and_the_cluster_heard_it_once() {
    let mut books = Books::default();
    let none = Assignment::default();
    let s = step(&none, &[running("old.1.1"), exited("gone.1.1", 0)], &[], &mut books, 0);
    assert_eq!(ids(&s), ["Stop old.1.1", "Remove gone.1.1"]);
    assert!(s.reports.is_empty(), "nothing is shut down while its container is there");
    // The stop's grace goes on; the removal is done.
    books.job_ended(&a_job("gone.1.1"), Ok(()), None, 5);
    let s = step(&none, &[running("old.1.1")], &[], &mut books, 10);
    assert!(s.jobs.is_empty(), "a stop under way is not started twice");
    assert_eq!(states(&s), [("gone.1.1".into(), TaskState::Shutdown)]);
    // The container is gone but the job (which frees its namespace) is not over.
    let s = step(&none, &[], &[], &mut books, 20);
    assert_eq!(states(&s), [("gone.1.1".into(), TaskState::Shutdown)]);
    books.job_ended(&a_job("old.1.1"), Ok(()), None, 30);
    let s = step(&none, &[], &[], &mut books, 40);
    assert_eq!(states(&s), [("gone.1.1".into(), TaskState::Shutdown), ("old.1.1".into(), TaskState::Shutdown)]);
    books.reported(&s.reports, &none.tasks);
    assert!(step(&none, &[], &[], &mut books, 50).reports.is_empty(), "told once");
}

#[test]
fn a_start_that_failed_for_a_task_that_left_is_told_as_shut_down() {
    let tasks = wanted(&[task("a.1.1", RestartPolicy::Always)]);
    let mut books = Books::default();
    step(&tasks, &[], &[], &mut books, 0);
    books.job_ended(&a_job("a.1.1"), Err("pulling: refused".into()), None, 10);
    let s = step(&Assignment::default(), &[], &[], &mut books, 20);
    assert_eq!(states(&s), [("a.1.1".into(), TaskState::Shutdown)]);
    books.reported(&s.reports, &BTreeMap::new());
    assert!(step(&Assignment::default(), &[], &[], &mut books, 30).reports.is_empty());
    step(&Assignment::default(), &[], &[], &mut books, 200);
    assert!(books.streaks.is_empty() && books.failed.is_empty(), "books forget a task once gone and backed off");
}

#[test]
fn namespaces_of_no_task_and_no_container_go() {
    let tasks = wanted(&[task("a.1.1", RestartPolicy::Always)]);
    let mut books = Books::default();
    let namespaces = ["a.1.1".to_owned(), "b.1.1".to_owned(), "c.1.1".to_owned()];
    let s = step(&tasks, &[running("a.1.1"), exited("b.1.1", 0)], &namespaces, &mut books, 0);
    assert_eq!(ids(&s), ["Remove b.1.1", "Detach c.1.1"], "b's namespace goes with its container's removal");
    assert!(step(&tasks, &[running("a.1.1")], &namespaces[..1], &mut books, 1).jobs.is_empty());
}

#[test]
fn lost_and_failed_containers_say_why() {
    let tasks = wanted(&[task("a.1.1", RestartPolicy::Never), task("b.1.1", RestartPolicy::Never)]);
    let mut books = Books::default();
    let lost =
        Observed { task: "a.1.1".into(), status: Status::Lost, ran_for: Duration::ZERO, check: None, exclusive: false };
    let mut oom = exited("b.1.1", 137);
    if let Status::Exited(e) = &mut oom.status {
        e.oom_killed = true;
    }
    let s = step(&tasks, &[lost, oom], &[], &mut books, 0);
    assert!(s.jobs.is_empty(), "never restarts neither");
    let said: Vec<(TaskState, Option<i32>, &str)> =
        s.reports.iter().map(|r| (r.state, r.exit_code, r.message.as_str())).collect();
    assert_eq!(
        said,
        [(TaskState::Failed, None, "its shim died"), (TaskState::Exited, Some(137), "killed: out of memory")]
    );
}

#[test]
fn a_namespace_that_will_not_go_backs_off_and_is_no_task_of_ours() {
    let mut books = Books::default();
    let none = Assignment::default();
    let stray = ["stray".to_owned()];
    assert_eq!(ids(&step(&none, &[], &stray, &mut books, 0)), ["Detach stray"]);
    books.job_ended(&Job::Detach("stray".into()), Err("busy".into()), None, 10);
    let s = step(&none, &[], &stray, &mut books, 20);
    assert!(s.jobs.is_empty(), "not again before its backoff");
    assert!(s.reports.is_empty(), "a namespace is not a task to tell shut down");
    assert_eq!(ids(&step(&none, &[], &stray, &mut books, 110)), ["Detach stray"]);
}

#[test]
fn a_task_this_agent_cannot_take_is_told_failed_and_left_alone() {
    let mut a = wanted(&[task("a.1.1", RestartPolicy::Always)]);
    let why = berth_proto::model::InvalidField::new("restart", "sometimes", "one of always, on-failure, never");
    a.refused.insert("b.1.1".into(), why);
    let mut books = Books::default();
    let s = step(&a, &[running("a.1.1"), running("b.1.1")], &["b.1.1".to_owned()], &mut books, 0);
    assert!(s.jobs.is_empty(), "b.1.1's container and namespace are not touched: {:?}", s.jobs);
    let b = s.reports.iter().find(|r| r.id == "b.1.1").unwrap();
    assert_eq!(b.state, TaskState::Failed);
    assert!(b.message.contains("restart: \"sometimes\" is not valid"), "{}", b.message);
}

#[test]
fn a_container_seen_stopped_while_its_restart_runs_keeps_its_first_time() {
    let tasks = wanted(&[task("a.1.1", RestartPolicy::Always)]);
    let mut books = Books::default();
    assert_eq!(ids(&step(&tasks, &[exited("a.1.1", 1)], &[], &mut books, 0)), ["Restart a.1.1"]);
    // The restart is slow (its old layer takes long to delete): the old
    // exit is still on record at later passes.
    for now in [500, 1000, 1500] {
        assert!(step(&tasks, &[exited("a.1.1", 1)], &[], &mut books, now).jobs.is_empty());
    }
    books.job_ended(&a_job("a.1.1"), Ok(()), tasks.tasks.get("a.1.1"), 1600);
    // It crashed again at once: 100 ms from when that was seen, not at once.
    assert!(step(&tasks, &[exited("a.1.1", 1)], &[], &mut books, 1650).jobs.is_empty());
    assert_eq!(ids(&step(&tasks, &[exited("a.1.1", 1)], &[], &mut books, 1750)), ["Restart a.1.1"]);
}

/// Running its `run`th run, with a tcp check every second, 2 retries.
fn checked(task: &str, run: u64) -> Observed {
    let check = Check {
        probe: berth_proto::model::Probe::Tcp { port: 80 },
        interval_ms: 1000,
        timeout_ms: 500,
        retries: 2,
        start_period_ms: 0,
    };
    let started = Started { shim_pid: 1, shim_start: 1, pid: 2, started_at_ms: run };
    Observed {
        task: task.into(),
        status: Status::Running(started),
        ran_for: Duration::ZERO,
        check: Some(check),
        exclusive: false,
    }
}

fn health(step: &Step) -> Vec<(String, Option<HealthState>, String)> {
    step.reports.iter().map(|r| (r.id.clone(), r.health, r.message.clone())).collect()
}

#[test]
fn a_checked_task_is_probed_reported_and_replaced_when_unhealthy() {
    let tasks = wanted(&[task("web.1.1", RestartPolicy::Always)]);
    let mut books = Books::default();
    let first = step(&tasks, &[checked("web.1.1", 1)], &[], &mut books, 0);
    assert_eq!(first.probes.len(), 1, "probed as soon as it runs");
    assert_eq!(health(&first), [("web.1.1".into(), Some(HealthState::Starting), String::new())]);
    assert!(step(&tasks, &[checked("web.1.1", 1)], &[], &mut books, 50).probes.is_empty(), "one at a time");
    books.probed(&first.probes[0], Ok(()), 60);
    let healthy = step(&tasks, &[checked("web.1.1", 1)], &[], &mut books, 100);
    assert_eq!(health(&healthy), [("web.1.1".into(), Some(HealthState::Healthy), String::new())]);
    assert!(healthy.probes.is_empty(), "healthy: the next an interval later");

    // Two failures in a row: unhealthy, and replaced under its policy.
    for at in [1100, 2200] {
        let due = step(&tasks, &[checked("web.1.1", 1)], &[], &mut books, at);
        books.probed(&due.probes[0], Err("connection refused".into()), at + 10);
    }
    let sick = step(&tasks, &[checked("web.1.1", 1)], &[], &mut books, 2300);
    let why = "unhealthy after 2 failed probes: connection refused".to_owned();
    assert_eq!(health(&sick), [("web.1.1".into(), Some(HealthState::Unhealthy), why.clone())]);
    assert_eq!(sick.jobs, [Job::Replace(tasks.tasks["web.1.1"].clone())]);
    assert_eq!(sick.reports[0].restarts, 1, "counted as a restart");
    assert!(sick.probes.is_empty(), "not probed while it is being replaced");
    books.job_ended(&sick.jobs[0], Ok(()), tasks.tasks.get("web.1.1"), 2400);
    let again = step(&tasks, &[checked("web.1.1", 2)], &[], &mut books, 2500);
    assert!(again.jobs.is_empty());
    assert_eq!(again.probes.len(), 1, "a first replacement, as a first crash restart, waits nothing");
    let restarted = format!("restarted: {why}");
    assert_eq!(health(&again), [("web.1.1".into(), Some(HealthState::Starting), restarted)], "a new run starts over");

    // A probe of the run before counts for nothing.
    books.probed(&first.probes[0], Ok(()), 2650);
    let still = step(&tasks, &[checked("web.1.1", 2)], &[], &mut books, 2660);
    assert_eq!(still.reports[0].health, Some(HealthState::Starting));
}

#[test]
fn an_unhealthy_task_that_never_restarts_keeps_running_unhealthy() {
    let tasks = wanted(&[task("web.1.1", RestartPolicy::Never)]);
    let mut books = Books::default();
    let first = step(&tasks, &[checked("web.1.1", 1)], &[], &mut books, 0);
    books.probed(&first.probes[0], Err("not yet".into()), 0);
    for at in [1000, 2000] {
        let due = step(&tasks, &[checked("web.1.1", 1)], &[], &mut books, at);
        books.probed(&due.probes[0], Err("no".into()), at);
    }
    let sick = step(&tasks, &[checked("web.1.1", 1)], &[], &mut books, 2100);
    assert!(sick.jobs.is_empty(), "its policy says never");
    assert_eq!(sick.reports[0].health, Some(HealthState::Unhealthy));
    let unchecked = step(&tasks, &[running("web.1.1")], &[], &mut books, 2200);
    assert_eq!(unchecked.reports[0].health, None, "no check, no health");
}

#[test]
fn a_task_that_leaves_without_a_container_is_told_shut_down_once() {
    // Fenced before it was ever made, then moved away by the cluster.
    let fenced = Assignment { fenced: ["db.1.1".to_owned()].into(), ..Assignment::default() };
    let mut books = Books::default();
    let first = step(&fenced, &[], &[], &mut books, 0);
    assert!(first.jobs.is_empty() && first.reports.is_empty(), "{first:?}");
    let gone = step(&Assignment::default(), &[], &[], &mut books, 10);
    assert_eq!(states(&gone), [("db.1.1".to_owned(), TaskState::Shutdown)]);
    // Once the cluster has taken it, it is not told again.
    books.reported(&gone.reports, &Default::default());
    assert!(step(&Assignment::default(), &[], &[], &mut books, 20).reports.is_empty());
}

#[test]
fn a_task_waits_for_its_dependencies_at_every_start_and_a_running_one_is_left_alone() {
    use berth_proto::model::{Condition, Dependency, Replica, ServiceEndpoints};
    let mut web = task("shop_web.1.1", RestartPolicy::Always);
    web.spec.overrides.options.depends_on =
        vec![Dependency { service: "shop_db".into(), condition: Condition::Healthy }];
    let mut a = wanted(&[web]);
    let db = |serving: bool| ServiceEndpoints {
        name: "shop_db".into(),
        ports: vec![],
        replicas: match serving {
            true => vec![Replica { task: "shop_db.1.1".into(), slot: 1, address: "198.19.1.3".parse().unwrap() }],
            false => vec![],
        },
        started: true,
    };
    a.services = vec![db(false)];
    let mut books = Books::default();
    let first = step(&a, &[], &[], &mut books, 0);
    assert!(first.jobs.is_empty(), "db runs but is not healthy yet");
    assert_eq!(first.reports[0].state, TaskState::Assigned);
    assert_eq!(first.reports[0].message, "waiting for shop_db to be healthy");
    a.services = vec![db(true)];
    let go = step(&a, &[], &[], &mut books, 10);
    assert_eq!(go.jobs, [Job::Start(a.tasks["shop_web.1.1"].clone())]);
    books.job_ended(&a_job("shop_web.1.1"), Ok(()), a.tasks.get("shop_web.1.1"), 20);
    a.services = vec![db(false)];
    let running = step(&a, &[running("shop_web.1.1")], &[], &mut books, 30);
    assert!(running.jobs.is_empty(), "a running task is not stopped for its dependency");
    assert_eq!(states(&running), [("shop_web.1.1".into(), TaskState::Running)]);
    // It crashes while db is down: no restart until db serves again.
    let crashed = step(&a, &[exited("shop_web.1.1", 1)], &[], &mut books, 40);
    let later = step(&a, &[exited("shop_web.1.1", 1)], &[], &mut books, 600_000);
    assert!(crashed.jobs.is_empty() && later.jobs.is_empty(), "{:?}", later.jobs);
    assert_eq!(later.reports[0].message, "waiting for shop_db to be healthy");
    a.services = vec![db(true)];
    let back = step(&a, &[exited("shop_web.1.1", 1)], &[], &mut books, 600_010);
    assert_eq!(ids(&back), ["Restart shop_web.1.1"]);
}
