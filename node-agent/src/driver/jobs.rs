//! The task loop: runs [`step`] over the latest assignment and what the
//! node has, starts each job it returns on its own (a pass never waits for
//! one, so a task in its stop grace or a slow pull holds back no other),
//! and hands the reports to the reporter; runs the health probes it says
//! are due, each on its own too. A job's end, a container's end (watched
//! by its pidfd, see `watch_ends`), a probe's end, a new assignment, a
//! taken report and the tick each wake it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::model::{AssignedTask, Assignment, Task, TaskReport, Userns};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::warn;

use super::ports::{Attached, Containers, Images, Network, Pulled};
use super::{Leases, Worker};
use crate::dns;
use crate::image::ImageRef;
use crate::runtime::{
    record, ContainerConfig, Launch, Limits, LogPolicy, NetworkMode, RuntimeError, Started, Status, UserNamespace,
};
use crate::tasks::books::Books;
use crate::tasks::fence::fence;
use crate::tasks::health::ProbeJob;
use crate::tasks::step::{step, Job, Observed};

pub(super) async fn run<C: Containers, I: Images, N: Network>(
    worker: Arc<Worker<C, I, N>>,
    mut assignments: watch::Receiver<Option<Assignment>>,
    reports: watch::Sender<Vec<TaskReport>>,
    mut taken: watch::Receiver<Vec<TaskReport>>,
    lease: watch::Receiver<Leases>,
) {
    // The agent's own clock: a step of the wall clock never delays a restart.
    let origin = Instant::now();
    let now = || u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
    let wake = Arc::new(Notify::new());
    let mut books = Books::default();
    let (mut jobs, mut probes) = (Running::<Job>::default(), Running::<ProbeJob>::default());
    // Each leased container's deadline as last written (see `renew`).
    let mut renewed: HashMap<String, u64> = HashMap::new();
    // The runs whose end wakes the loop (see `watch_ends`).
    let mut watched: HashSet<(String, Started)> = HashSet::new();
    loop {
        let mut assignment = assignments.borrow_and_update().clone().unwrap_or_default();
        // Before the fence takes out those the lease does not name: a lease
        // that comes later wakes nothing, the tick finds it.
        let exclusive = assignment.tasks.values().any(|t| t.spec.overrides.options.exclusive());
        for (job, outcome) in jobs.finished("the agent's work on it") {
            if let Err(why) = &outcome {
                warn!(task = job.task(), "{why}");
            }
            books.job_ended(&job, outcome, assignment.tasks.get(job.task()), now());
        }
        for (probe, outcome) in probes.finished("the agent's probe") {
            let result = if outcome.is_ok() { "ok" } else { "failed" };
            worker.settings.stats.probes.get_or_create(&[("result", result)]).inc();
            books.probed(&probe, outcome, now());
        }
        // At the tick while something is under way, at rest's pause when
        // not; or when the next probe is due if sooner.
        let mut pause = worker.settings.tick;
        match worker.containers.list().await {
            // None would mean "restart and report every task": the pass is skipped.
            Err(e) => warn!("listing containers: {e}"),
            Ok(observed) => {
                worker.settings.stats.containers_now(observed.iter().map(|o| o.status.state()));
                watch_ends(&worker.containers, &observed, &mut watched, &wake);
                let leases = lease.borrow().clone();
                fence(&mut assignment, names(&leases, &observed, worker.settings.fence_grace).as_ref());
                renew(&worker, &leases, &observed, &mut renewed).await;
                let namespaces = worker.network(|n| Ok(n.attached())).await.unwrap_or_default();
                let pass = step(&assignment, &observed, &namespaces, &mut books, now());
                for job in pass.jobs {
                    let (todo, worker, lease) = (job.clone(), worker.clone(), lease.clone());
                    jobs.spawn(job, &wake, async move { run_job(&worker, todo, &lease).await });
                }
                for probe in pass.probes {
                    let address = assignment.tasks.get(&probe.task).and_then(|t| t.address);
                    let (todo, worker) = (probe.clone(), worker.clone());
                    probes.spawn(probe, &wake, async move {
                        let timeout = Duration::from_millis(todo.timeout_ms);
                        worker.containers.probe(&todo.task, &todo.probe, address, timeout).await
                    });
                }
                // A leased container's deadline is renewed on these looks.
                let leased = exclusive || observed.iter().any(|o| o.exclusive);
                if jobs.is_empty() && probes.is_empty() && !pass.waiting && !leased {
                    pause = worker.settings.rest;
                }
                if let Some(at) = pass.wake_at {
                    pause = pause.min(Duration::from_millis(at.saturating_sub(now())));
                }
                // The reporter sends the latest on its own, and says when it was taken.
                if pass.reports != *reports.borrow() {
                    reports.send_replace(pass.reports);
                }
            }
        }
        tokio::select! {
            changed = assignments.changed() => if changed.is_err() { return },
            changed = taken.changed() => match changed {
                Ok(()) => books.reported(&taken.borrow_and_update(), &assignment.tasks),
                Err(_) => return,
            },
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Makes the end of every running container wake the loop, once for each
/// run: those this agent started and those it found running after a
/// restart alike, so that a look at rest finds nothing new and can wait
/// (`Settings::rest`). A run that cannot be watched is seen to end at a
/// look.
fn watch_ends<C: Containers>(
    containers: &C,
    observed: &[Observed],
    watched: &mut HashSet<(String, Started)>,
    wake: &Arc<Notify>,
) {
    let running: HashSet<(&str, &Started)> = observed
        .iter()
        .filter_map(|o| match &o.status {
            Status::Running(s) => Some((o.task.as_str(), s)),
            _ => None,
        })
        .collect();
    watched.retain(|(task, s)| running.contains(&(task.as_str(), s)));
    for (task, started) in running {
        if !watched.insert((task.to_owned(), *started)) {
            continue;
        }
        match containers.end_of(task, started) {
            Ok(Some(end)) => {
                let wake = wake.clone();
                tokio::spawn(async move {
                    end.await;
                    wake.notify_one();
                });
            }
            // Over since the list: look again now.
            Ok(None) => wake.notify_one(),
            Err(e) => warn!(task, "{e}; its end is seen at a look"),
        }
    }
}

/// The exclusive tasks the node may run now: those its lease names while
/// it holds; before its first heartbeat is answered (an agent that just
/// started), those that run already (their monitors hold them to the
/// deadline they had), so nothing is fenced, nor started, unheard.
fn names(leases: &Leases, observed: &[Observed], grace: Duration) -> Option<BTreeSet<String>> {
    if !leases.heard {
        let running = observed.iter().filter(|o| o.exclusive && matches!(o.status, Status::Running(_)));
        return Some(running.map(|o| o.task.clone()).collect());
    }
    leases.valid(grace).map(|l| l.exclusive.clone())
}

/// Moves every running exclusive container's deadline to the lease's end
/// while the node holds one (see `berth_monitor::lease`). One the lease no
/// longer names is being stopped, and keeps its grace while the node is
/// in touch: the cluster starts it nowhere else until it reports it ended.
async fn renew<C: Containers, I: Images, N: Network>(
    worker: &Arc<Worker<C, I, N>>,
    leases: &Leases,
    observed: &[Observed],
    renewed: &mut HashMap<String, u64>,
) {
    renewed.retain(|task, _| observed.iter().any(|o| o.task == *task));
    let Some(lease) = leases.valid(Duration::ZERO) else { return };
    for o in observed.iter().filter(|o| o.exclusive && matches!(o.status, Status::Running(_))) {
        if renewed.get(&o.task) == Some(&lease.until) {
            continue;
        }
        match worker.containers.renew_lease(&o.task, lease.until).await {
            Ok(()) => drop(renewed.insert(o.task.clone(), lease.until)),
            Err(e) => warn!(task = o.task, "renewing its lease: {e}"),
        }
    }
}

/// Work under way on its own (jobs, probes), each known by what it is
/// for; each wakes the loop when it ends.
struct Running<T> {
    set: JoinSet<Result<(), String>>,
    what: HashMap<tokio::task::Id, T>,
}

impl<T> Default for Running<T> {
    fn default() -> Self {
        Self { set: JoinSet::new(), what: HashMap::new() }
    }
}

impl<T> Running<T> {
    fn is_empty(&self) -> bool {
        self.what.is_empty()
    }

    fn spawn(&mut self, what: T, wake: &Arc<Notify>, work: impl Future<Output = Result<(), String>> + Send + 'static) {
        let wake = wake.clone();
        let handle = self.set.spawn(async move {
            let outcome = work.await;
            wake.notify_one();
            outcome
        });
        self.what.insert(handle.id(), what);
    }

    /// What has ended and how; work that panicked failed (`kind` says what it was).
    fn finished(&mut self, kind: &str) -> Vec<(T, Result<(), String>)> {
        let mut out = Vec::new();
        while let Some(done) = self.set.try_join_next_with_id() {
            let (id, outcome) = match done {
                Ok((id, outcome)) => (id, outcome),
                Err(e) => (e.id(), Err(format!("{kind} failed: {e}"))),
            };
            out.extend(self.what.remove(&id).map(|what| (what, outcome)));
        }
        out
    }
}

/// Carries out one job.
async fn run_job<C: Containers, I: Images, N: Network>(
    worker: &Arc<Worker<C, I, N>>,
    job: Job,
    lease: &watch::Receiver<Leases>,
) -> Result<(), String> {
    let stats = &worker.settings.stats;
    let started = std::time::Instant::now();
    let timed = |outcome: Result<(), String>| {
        match &outcome {
            Ok(()) => stats.start_seconds.observe(started.elapsed().as_secs_f64()),
            Err(_) => {
                stats.start_failures.inc();
            }
        }
        outcome
    };
    match job {
        Job::Start(task) => timed(start(worker, &task, false, lease).await),
        Job::Restart(task) => {
            stats.restarts.inc();
            timed(start(worker, &task, true, lease).await)
        }
        Job::Replace(task) => {
            stats.restarts.inc();
            worker.containers.stop(&task.id, worker.settings.stop_grace).await.map_err(|e| e.to_string())?;
            timed(start(worker, &task, true, lease).await)
        }
        Job::Stop(task) => {
            let _ = worker.containers.stop(&task, worker.settings.stop_grace).await;
            remove(worker, &task).await
        }
        Job::Fence(task) => {
            warn!(task, "the node's lease lapsed: stopping this task, whose volume is exclusive");
            if let Err(e) = worker.containers.fence(&task, worker.settings.fence_grace).await {
                warn!(task, "fencing: {e}");
            }
            Ok(())
        }
        Job::Remove(task) => remove(worker, &task).await,
        Job::Detach(task) => detach(worker, task).await,
    }
}

/// Starts the task's container: when restarting, the one it has on a
/// fresh writable layer; otherwise (or when that cannot be done) a new one.
async fn start<C: Containers, I: Images, N: Network>(
    worker: &Arc<Worker<C, I, N>>,
    task: &AssignedTask,
    again: bool,
    lease: &watch::Receiver<Leases>,
) -> Result<(), String> {
    if again && worker.containers.renew(&task.id).await.is_ok() {
        return launch(worker, task, lease).await;
    }
    match worker.containers.remove(&task.id).await {
        Ok(()) | Err(RuntimeError::NotFound(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    let reference: ImageRef = task.spec.image.parse().map_err(|e: crate::image::BadReference| e.to_string())?;
    let pull = task.spec.overrides.options.pull;
    let image = worker.images.ensure(&reference, pull).await.map_err(|e| e.about(&reference))?;
    let own_ids = task.spec.userns == Userns::Auto;
    let (network, userns) = match task.address {
        // Without a network namespace made for it, the runtime claims its ids.
        None => (NetworkMode::None, if own_ids { UserNamespace::Auto } else { UserNamespace::Host }),
        Some(address) => {
            let (id, domain) = (task.id.clone(), worker.settings.dns_domain.clone());
            let attached =
                worker.network(move |n| n.attach(&id, address, own_ids)).await.map_err(|e| format!("network: {e}"))?;
            let userns = match attached.userns.clone() {
                Some((path, ids)) => UserNamespace::Joined { path, ids },
                None => UserNamespace::Host,
            };
            (joined(attached, address, domain.as_deref(), &task.id), userns)
        }
    };
    let config = container_config(task, &reference, image, (network, userns), &worker.settings);
    worker.containers.create(config).await.map_err(|e| e.to_string())?;
    launch(worker, task, lease).await
}

/// Starts a created container; one with an exclusive volume only while
/// the lease still names it (a pull may have outlasted it), its monitor
/// held to the lease's end.
async fn launch<C: Containers, I: Images, N: Network>(
    worker: &Arc<Worker<C, I, N>>,
    task: &AssignedTask,
    lease: &watch::Receiver<Leases>,
) -> Result<(), String> {
    let lease_ns = match task.spec.overrides.options.exclusive() {
        false => None,
        true => {
            let leases = lease.borrow();
            let named = leases.valid(worker.settings.fence_grace).filter(|l| l.exclusive.contains(&task.id));
            let why = "the node holds no lease for it from the cluster's leader (its volume is exclusive)";
            Some(named.ok_or(why)?.until)
        }
    };
    let launch = Launch { files: values(task)?, lease_ns };
    worker.containers.start(&task.id, launch).await.map_err(|e| e.to_string())
}

/// The values of the secrets and configs a task names, in order (see
/// `runtime::files`), from its assignment.
fn values(task: &AssignedTask) -> Result<Vec<Vec<u8>>, String> {
    task.spec
        .overrides
        .options
        .files()
        .map(|(kind, r)| {
            task.files
                .get(kind, &r.source)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| format!("{} {} was not sent with the task (was it removed?)", kind.as_str(), r.source))
        })
        .collect()
}

/// Removes the task's container (gone already is fine) and its namespace.
async fn remove<C: Containers, I: Images, N: Network>(worker: &Arc<Worker<C, I, N>>, task: &str) -> Result<(), String> {
    match worker.containers.remove(task).await {
        Ok(()) | Err(RuntimeError::NotFound(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    detach(worker, task.to_owned()).await
}

async fn detach<C: Containers, I: Images, N: Network>(
    worker: &Arc<Worker<C, I, N>>,
    task: String,
) -> Result<(), String> {
    worker.network(move |n| n.detach(&task)).await.map_err(|e| format!("removing its network namespace: {e}"))
}

/// A task's namespace as its container joins it: the node's DNS as its
/// resolver when the node runs one (searching its stack's names first).
fn joined(attached: Attached, address: Ipv4Addr, domain: Option<&str>, task: &str) -> NetworkMode {
    let stack = task.split('.').next().and_then(berth_proto::model::stack_of).map(|(stack, _)| stack);
    let resolv_conf = domain.map(|d| dns::resolv_conf(attached.gateway.into(), d, stack));
    NetworkMode::Joined { netns: attached.netns, address, resolv_conf }
}

/// The container a task runs as: its spec over its image.
fn container_config(
    task: &AssignedTask,
    reference: &ImageRef,
    pulled: Pulled,
    (network, userns): (NetworkMode, UserNamespace),
    settings: &super::Settings,
) -> ContainerConfig {
    let spec = &task.spec;
    let mut overrides = (*spec.overrides).clone();
    // Each replica's own volume, when the name holds the slot.
    let slot = Task::slot_of(&task.id).unwrap_or(0);
    for m in &mut overrides.options.mounts {
        m.source = m.volume(slot).unwrap_or(std::mem::take(&mut m.source));
    }
    ContainerConfig {
        name: task.id.clone(),
        image: reference.to_string(),
        image_digest: pulled.image.digest,
        layers: pulled.layers,
        layer_digests: pulled.image.layers,
        image_config: pulled.image.config,
        command: spec.command.clone(),
        overrides,
        env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        limits: Limits {
            memory_bytes: Some(spec.resources.memory_bytes).filter(|m| *m > 0),
            cpu_millis: Some(spec.resources.cpu_millis).filter(|c| *c > 0),
            pids: spec.pids_limit.or(settings.pids_limit),
        },
        network,
        cgroup_parent: settings.cgroup_parent.clone(),
        log: LogPolicy::default(),
        created_at_ms: record::now_ms(),
        task: Some(task.id.clone()),
        seccomp: spec.seccomp.clone(),
        userns,
        init_binary: spec.overrides.init.then(|| settings.init_path.clone()),
        volumes: None,
    }
}
