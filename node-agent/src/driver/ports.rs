//! The narrow traits the driver acts through: the node's containers, its
//! images and its network. The real ones (`super::host`) wrap the runtime,
//! the image store and the kernel's network; the recording fakes
//! (`super::fake`) let the worker run in-process in tests.

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use berth_proto::model::{NodeVolume, Probe, Pull};

use crate::image::{Image, ImageRef, PullError};
use crate::network::plan::NetStep;
use crate::runtime::userns::IdMap;
use crate::runtime::{ContainerConfig, Launch, RuntimeError, Started};
use crate::tasks::health::Outcome;
use crate::tasks::step::Observed;

/// Ends when a running container's shim does (just after its exit record).
pub type Ended = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The node's task containers. Calls never block the caller's thread.
pub trait Containers: Send + Sync + 'static {
    /// Every container made for a task.
    fn list(&self) -> impl Future<Output = Result<Vec<Observed>, RuntimeError>> + Send;
    /// Records a new container (its name must be free).
    fn create(&self, config: ContainerConfig) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Starts it with the values of the secrets and configs it names and
    /// its lease's end (see `Runtime::start`), and returns once it runs.
    fn start(&self, name: &str, launch: Launch) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Ends when its run that `running` describes does (its shim, just
    /// after the exit record), whoever started it; None when that run is
    /// over already. Does not block.
    fn end_of(&self, name: &str, running: &Started) -> Result<Option<Ended>, RuntimeError>;
    /// Moves a running leased container's deadline (ns, host monotonic clock).
    fn renew_lease(&self, name: &str, deadline_ns: u64) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// SIGTERM, then SIGKILL after `grace`; returns once it has exited.
    fn stop(&self, name: &str, grace: Duration) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// SIGTERM, then SIGKILL after `grace` whatever its own; returns once
    /// it has exited. It is kept.
    fn fence(&self, name: &str, grace: Duration) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes it and all it left, killing it first if it runs.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Readies a stopped container for a fresh start: a clean writable
    /// layer, the same config and log.
    fn renew(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// The node's named volumes.
    fn volumes(&self) -> impl Future<Output = Result<Vec<NodeVolume>, RuntimeError>> + Send;
    /// Runs one health probe of its running container: an exec inside
    /// it, or a connection from the node to `address` (a task without one
    /// fails tcp and http probes).
    fn probe(
        &self,
        name: &str,
        probe: &Probe,
        address: Option<Ipv4Addr>,
        timeout: Duration,
    ) -> impl Future<Output = Outcome> + Send;
}

/// An image in the node's store, with its unpacked layers.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: Image,
    /// Layer directories, bottom first.
    pub layers: Vec<PathBuf>,
}

pub trait Images: Send + Sync + 'static {
    /// The image from the store, asking the registry as `pull` says:
    /// when it is not there, every time, or never.
    fn ensure(&self, image: &ImageRef, pull: Pull) -> impl Future<Output = Result<Pulled, PullError>> + Send;
}

/// A task's network namespace, ready for its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub netns: PathBuf,
    /// The node's bridge: the task's default route, and its DNS.
    pub gateway: Ipv4Addr,
    /// The user namespace that owns `netns` and its ids, when the task
    /// has one of its own.
    pub userns: Option<(PathBuf, IdMap)>,
}

/// The node's network. Calls block (they run commands and syscalls): the
/// driver makes them on tokio's blocking pool.
pub trait Network: Send + Sync + 'static {
    /// Carries out one step of the network's plan (`network::plan`).
    fn apply(&self, step: &NetStep) -> io::Result<()>;
    /// Upkeep on every pass of the network loop (the overlay's sockets
    /// made since the last one get their buffers).
    fn refresh(&self);
    /// The task's namespace with `eth0` at `address`, inside a user
    /// namespace of its own with `userns` (kept as it is if it exists).
    fn attach(&self, task: &str, address: Ipv4Addr, userns: bool) -> io::Result<Attached>;
    /// Removes the task's namespaces, if it has any, and gives back its ids.
    fn detach(&self, task: &str) -> io::Result<()>;
    /// Tasks that have a namespace here.
    fn attached(&self) -> Vec<String>;
}
