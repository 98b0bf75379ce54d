//! Recording fakes of the driver's ports, for running the real worker
//! in-process. Containers behave by their image's name: `stubborn:*`
//! ignores SIGTERM (a stop takes the whole grace), `crash:*` exits with 1
//! as soon as it starts, anything else runs until stopped. Images named
//! `missing:*` cannot be pulled. Health probes pass until a test says a
//! container is sick. Every call is logged with its time.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_proto::model::{Check, Probe, Pull};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ports::{Attached, Containers, Ended, Images, Network, Pulled};
use crate::image::{Image, ImageConfig, ImageRef, PullError};
use crate::network::plan::NetStep;
use crate::runtime::{ContainerConfig, Exited, RuntimeError, Started, Status, UserNamespace};
use crate::tasks::health::Outcome;
use crate::tasks::step::Observed;

/// What happened, in order: `("start", "web.1.1", when)`.
pub type Event = (&'static str, String, Instant);

#[derive(Debug, Clone, Default)]
pub struct FakeContainers {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    containers: BTreeMap<String, Fake>,
    events: Vec<Event>,
    /// Starts so far: each run's start time, so runs are told apart.
    starts: u64,
    /// Named volumes, made as the runtime makes them: by a create that mounts one.
    volumes: std::collections::BTreeSet<String>,
}

#[derive(Debug)]
struct Fake {
    image: String,
    userns: UserNamespace,
    status: Status,
    started: Option<Instant>,
    ran_for: Duration,
    /// Told when this run ends (`end_of`).
    ended: Vec<oneshot::Sender<()>>,
    check: Option<Check>,
    sick: bool,
    exclusive: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn exit(code: i32) -> Status {
    Status::Exited(Exited { code, signal: None, oom_killed: false, finished_at_ms: 0, error: None })
}

impl Inner {
    fn log(&mut self, what: &'static str, name: &str) {
        self.events.push((what, name.to_owned(), Instant::now()));
    }

    fn end(&mut self, name: &str, status: Status) {
        if let Some(c) = self.containers.get_mut(name) {
            c.status = status;
            c.ran_for = c.started.map_or(Duration::ZERO, |s| s.elapsed());
            for ended in c.ended.drain(..) {
                let _ = ended.send(());
            }
        }
        self.log("exited", name);
    }
}

impl FakeContainers {
    /// A container for `task` that runs already (made before the agent started).
    pub fn running(&self, task: &str, image: &str) {
        let mut inner = lock(&self.inner);
        let started = Status::Running(Started { shim_pid: 1, shim_start: 1, pid: 2, started_at_ms: 1 });
        let fake = Fake {
            image: image.into(),
            userns: UserNamespace::Host,
            status: started,
            started: Some(Instant::now()),
            ran_for: Duration::ZERO,
            ended: Vec::new(),
            check: None,
            sick: false,
            exclusive: false,
        };
        inner.containers.insert(task.to_owned(), fake);
    }

    /// Its probes fail from now on (or pass again); its runs to come too.
    pub fn sick(&self, task: &str, sick: bool) {
        if let Some(c) = lock(&self.inner).containers.get_mut(task) {
            c.sick = sick;
        }
    }

    /// Whether its run's end is awaited (`end_of`).
    pub fn watched(&self, task: &str) -> bool {
        lock(&self.inner).containers.get(task).is_some_and(|c| c.ended.iter().any(|e| !e.is_closed()))
    }

    /// Its shim dies without a record.
    pub fn lost(&self, task: &str) {
        lock(&self.inner).end(task, Status::Lost);
    }

    pub fn events(&self) -> Vec<Event> {
        lock(&self.inner).events.clone()
    }

    /// The times of `what` happening to `task`.
    pub fn times(&self, what: &str, task: &str) -> Vec<Instant> {
        self.events().into_iter().filter(|(w, t, _)| *w == what && t == task).map(|(_, _, at)| at).collect()
    }

    pub fn status(&self, task: &str) -> Option<Status> {
        lock(&self.inner).containers.get(task).map(|c| c.status.clone())
    }

    /// The user namespace its container was made with.
    pub fn userns(&self, task: &str) -> Option<UserNamespace> {
        lock(&self.inner).containers.get(task).map(|c| c.userns.clone())
    }
}

impl Containers for FakeContainers {
    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        let inner = lock(&self.inner);
        let list = inner.containers.iter().map(|(name, c)| Observed {
            task: name.clone(),
            status: c.status.clone(),
            ran_for: match (&c.status, c.started) {
                (Status::Running(_), Some(started)) => started.elapsed(),
                _ => c.ran_for,
            },
            check: c.check.clone(),
            exclusive: c.exclusive,
        });
        Ok(list.collect())
    }

    async fn create(&self, config: ContainerConfig) -> Result<(), RuntimeError> {
        let mut inner = lock(&self.inner);
        if inner.containers.contains_key(&config.name) {
            return Err(RuntimeError::NameInUse(config.name));
        }
        let fake = Fake {
            image: config.image.clone(),
            userns: config.userns.clone(),
            status: Status::Created,
            started: None,
            ran_for: Duration::ZERO,
            ended: Vec::new(),
            check: config.health_check(),
            sick: false,
            exclusive: config.overrides.options.exclusive(),
        };
        inner.containers.insert(config.name.clone(), fake);
        inner.volumes.extend(config.overrides.options.mounts.iter().filter_map(|m| m.volume(0)));
        inner.log("create", &config.name);
        Ok(())
    }

    async fn fence(&self, name: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut inner = lock(&self.inner);
        inner.log("fence", name);
        inner.end(name, exit(137));
        Ok(())
    }

    async fn volumes(&self) -> Result<Vec<berth_proto::model::NodeVolume>, RuntimeError> {
        let volumes = lock(&self.inner).volumes.clone();
        Ok(volumes.into_iter().map(|name| berth_proto::model::NodeVolume { name, created_at_ms: 1 }).collect())
    }

    async fn renew_lease(&self, name: &str, _deadline_ns: u64) -> Result<(), RuntimeError> {
        lock(&self.inner).log("renew", name);
        Ok(())
    }

    async fn start(&self, name: &str, _launch: crate::runtime::Launch) -> Result<(), RuntimeError> {
        let mut inner = lock(&self.inner);
        let c = inner.containers.get_mut(name).ok_or_else(|| RuntimeError::NotFound(name.into()))?;
        if matches!(c.status, Status::Running(_)) {
            return Err(RuntimeError::Running(name.into()));
        }
        inner.starts += 1;
        let started_at_ms = inner.starts;
        let c = inner.containers.get_mut(name).ok_or_else(|| RuntimeError::NotFound(name.into()))?;
        c.status = Status::Running(Started { shim_pid: 1, shim_start: 1, pid: 2, started_at_ms });
        c.started = Some(Instant::now());
        let crashes = c.image.contains("crash:");
        inner.log("start", name);
        if crashes {
            inner.end(name, exit(1));
        }
        Ok(())
    }

    fn end_of(&self, name: &str, running: &Started) -> Result<Option<Ended>, RuntimeError> {
        let mut inner = lock(&self.inner);
        let c = inner.containers.get_mut(name).ok_or_else(|| RuntimeError::NotFound(name.into()))?;
        if c.status != Status::Running(*running) {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        c.ended.push(tx);
        Ok(Some(Box::pin(async move {
            let _ = rx.await;
        })))
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let stubborn = {
            let mut inner = lock(&self.inner);
            let c = inner.containers.get(name).ok_or_else(|| RuntimeError::NotFound(name.into()))?;
            let (running, stubborn) = (matches!(c.status, Status::Running(_)), c.image.contains("stubborn:"));
            inner.log("stop", name);
            if !running {
                return Ok(());
            }
            stubborn
        };
        if stubborn {
            tokio::time::sleep(grace).await;
        }
        lock(&self.inner).end(name, exit(if stubborn { 137 } else { 0 }));
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let mut inner = lock(&self.inner);
        let c = inner.containers.get(name).ok_or_else(|| RuntimeError::NotFound(name.into()))?;
        if matches!(c.status, Status::Running(_)) {
            inner.end(name, exit(137));
        }
        inner.containers.remove(name);
        inner.log("remove", name);
        Ok(())
    }

    async fn renew(&self, name: &str) -> Result<(), RuntimeError> {
        let mut inner = lock(&self.inner);
        let c = inner.containers.get_mut(name).ok_or_else(|| RuntimeError::NotFound(name.into()))?;
        if matches!(c.status, Status::Running(_)) {
            return Err(RuntimeError::Running(name.into()));
        }
        // As the runtime's: the exit stays on record until the next start.
        inner.log("renew", name);
        Ok(())
    }

    async fn probe(&self, name: &str, _: &Probe, _: Option<Ipv4Addr>, _: Duration) -> Outcome {
        let mut inner = lock(&self.inner);
        inner.log("probe", name);
        match inner.containers.get(name) {
            Some(c) if matches!(c.status, Status::Running(_)) && !c.sick => Ok(()),
            Some(c) if c.sick => Err("fake: sick".into()),
            _ => Err("fake: not running".into()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct FakeImages;

impl Images for FakeImages {
    async fn ensure(&self, image: &ImageRef, _pull: Pull) -> Result<Pulled, PullError> {
        let reference = image.to_string();
        if reference.contains("missing:") {
            return Err(PullError::NotFound(format!("{reference}: manifest unknown")));
        }
        let image = Image {
            reference,
            digest: "sha256:0".into(),
            config: ImageConfig::default(),
            layers: vec![],
            size: 0,
            pulled_at: 0,
        };
        Ok(Pulled { image, layers: vec![] })
    }
}

/// Records the network's steps and keeps its namespaces in a set.
#[derive(Debug, Clone, Default)]
pub struct FakeNetwork {
    pub steps: Arc<Mutex<Vec<NetStep>>>,
    namespaces: Arc<Mutex<BTreeSet<String>>>,
}

impl FakeNetwork {
    pub fn steps(&self) -> Vec<NetStep> {
        lock(&self.steps).clone()
    }

    pub fn namespaces(&self) -> BTreeSet<String> {
        lock(&self.namespaces).clone()
    }
}

impl Network for FakeNetwork {
    fn apply(&self, step: &NetStep) -> io::Result<()> {
        lock(&self.steps).push(step.clone());
        Ok(())
    }

    fn refresh(&self) {}

    fn attach(&self, task: &str, address: Ipv4Addr, userns: bool) -> io::Result<Attached> {
        lock(&self.namespaces).insert(task.to_owned());
        let [a, b, c, _] = address.octets();
        let ids = crate::runtime::userns::IdMap { host_id: crate::runtime::userns::FIRST_ID, size: 65536 };
        Ok(Attached {
            netns: PathBuf::from("/fake/netns").join(task),
            gateway: Ipv4Addr::new(a, b, c, 1),
            userns: userns.then(|| (PathBuf::from("/fake/netns/users").join(task), ids)),
        })
    }

    fn detach(&self, task: &str) -> io::Result<()> {
        lock(&self.namespaces).remove(task);
        Ok(())
    }

    fn attached(&self) -> Vec<String> {
        lock(&self.namespaces).iter().cloned().collect()
    }
}
