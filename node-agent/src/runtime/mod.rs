//! Containers on this node: created from a pulled image, run by a shim
//! each, found again from their directories after an agent restart.
//!
//! ```text
//! ROOT/<name>/config.json ── Runtime::start ──▶ berth-shim ROOT/<name> RUN/<name>
//!            /started.json ◀── shim          ──▶ container (namespaces, cgroup, overlay)
//!            /exit.json    ◀── shim (by then exec'd into berth-monitor), last
//!            /container.log[.N], upper/, work/
//! RUN/<name>/bundle/, etc/, runtime/, rootfs   (tmpfs; gone once it exits)
//! ```
//!
//! The agent keeps no container state in memory: a container's status is
//! read from its directory and from whether its shim still lives.

pub mod etc;
pub mod exec;
pub mod files;
pub mod idmap;
pub mod mounts;
pub mod pidfd;
pub mod record;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod userns;
pub mod volumes;

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_proto::model::MountKind;
use libcontainer::container::Container as Lc;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};

pub use berth_monitor::{cgroup, logs};
pub use record::{ContainerConfig, Dirs, Exited, Limits, LogPolicy, NetworkMode, Seccomp, Started, UserNamespace};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no container named {0:?}")]
    NotFound(String),
    #[error("a container named {0:?} already exists; remove it or choose another name")]
    NameInUse(String),
    #[error(
        "container name {0:?} is not valid: use 1-63 of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
    )]
    BadName(String),
    #[error("container {0:?} is running; stop it first or remove it with --force")]
    Running(String),
    #[error("container {name:?} could not start: {message}")]
    Start { name: String, message: String },
    #[error("container {name:?}: {message}")]
    Other { name: String, message: String },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("volume {volume} is in use by {}; remove them first", users.join(", "))]
    VolumeInUse { volume: String, users: Vec<String> },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |error| RuntimeError::Io { path: path.display().to_string(), error }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Recorded, never started.
    Created,
    Running(Started),
    Exited(Exited),
    /// The shim died without recording an exit (killed, or the host crashed).
    Lost,
}

impl Status {
    /// One word: created, running, exited, failed (could not run) or lost.
    pub fn state(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running(_) => "running",
            Self::Exited(e) if e.error.is_some() => "failed",
            Self::Exited(_) => "exited",
            Self::Lost => "lost",
        }
    }

    /// The state with the exit code and OOM kill, for people.
    pub fn label(&self) -> String {
        match self {
            Self::Exited(e) if e.error.is_none() && e.oom_killed => format!("exited ({}, oom-killed)", e.code),
            Self::Exited(e) if e.error.is_none() => format!("exited ({})", e.code),
            other => other.state().into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Container {
    pub config: ContainerConfig,
    pub status: Status,
    /// The data directory (config, records, logs).
    pub dir: PathBuf,
}

/// A shim this agent started. Dropping it is fine: tokio reaps the process
/// when it exits, and the container runs on either way.
#[derive(Debug)]
pub struct Shim {
    /// The container's init process.
    pub pid: i32,
    child: tokio::process::Child,
}

impl Shim {
    /// Returns once the shim has exited, which it does just after writing
    /// the exit record (or on dying without one: see [`Status::Lost`]).
    pub async fn exited(&mut self) {
        let _ = self.child.wait().await;
    }
}

/// What a start needs besides the container's config (see [`Runtime::start`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Launch {
    pub files: Vec<Vec<u8>>,
    pub lease_ns: Option<u64>,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Launch {{ files: {}, lease_ns: {:?} }}", self.files.len(), self.lease_ns)
    }
}

#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    run_root: PathBuf,
    shim: PathBuf,
    ids: userns::IdRanges,
    volumes: volumes::Volumes,
}

pub fn validate_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::BadName(name.to_owned()))
    }
}

impl Runtime {
    /// `root` (on disk) and `run_root` (under /run) hold one directory per
    /// container (see [`Dirs`]); `shim` is the berth-shim binary; `ids`
    /// the host's claims of user namespace ids; `volumes` holds the node's
    /// named volumes. The roots are resolved to
    /// absolute paths without symlinks: they end up in mount options and
    /// are compared with the mount table (and name claims' holders).
    pub fn open(
        root: &Path,
        run_root: &Path,
        shim: PathBuf,
        ids: userns::IdRanges,
        volumes: &Path,
    ) -> Result<Self, RuntimeError> {
        let volumes = volumes::Volumes::open(volumes).map_err(io_err(volumes))?;
        volumes.sweep();
        let resolve = |dir: &Path| fs::create_dir_all(dir).and_then(|()| fs::canonicalize(dir)).map_err(io_err(dir));
        Ok(Self { root: resolve(root)?, run_root: resolve(run_root)?, shim, ids, volumes })
    }

    /// Moves a running container's lease deadline (see
    /// `berth_monitor::lease`); nothing for one that does not run.
    pub fn renew_lease(&self, name: &str, deadline_ns: u64) -> Result<(), RuntimeError> {
        let run = self.dirs(name).run;
        if !run.is_dir() {
            return Ok(());
        }
        let file = run.join(berth_monitor::lease::FILE);
        berth_monitor::lease::write(&file, deadline_ns).map_err(io_err(&file))
    }

    /// The node's named volumes.
    pub fn volumes(&self) -> &volumes::Volumes {
        &self.volumes
    }

    /// The node's named volumes, as it tells the cluster of them.
    pub fn node_volumes(&self) -> Result<Vec<berth_proto::model::NodeVolume>, RuntimeError> {
        let list = self.volumes.list().map_err(io_err(self.volumes.root()))?;
        Ok(list
            .into_iter()
            .map(|v| berth_proto::model::NodeVolume { name: v.name, created_at_ms: v.created_at_ms })
            .collect())
    }

    /// The containers that mount volume `name`, running or not.
    pub fn volume_users(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let mounts = |c: &Container| {
            c.config.overrides.options.mounts.iter().any(|m| m.kind == MountKind::Volume && m.source == name)
        };
        Ok(self.list()?.into_iter().filter(mounts).map(|c| c.config.name).collect())
    }

    /// Removes volume `name` and its files, unless a container mounts it
    /// (as `docker volume rm`); false when there was none.
    pub fn remove_volume(&self, name: &str) -> Result<bool, RuntimeError> {
        let _held = self.volumes.lock().map_err(io_err(self.volumes.root()))?;
        let users = self.volume_users(name)?;
        if !users.is_empty() {
            return Err(RuntimeError::VolumeInUse { volume: name.to_owned(), users });
        }
        self.volumes.remove(name).map_err(io_err(self.volumes.root()))
    }

    /// The host's claims of user namespace ids: containers' own, and task
    /// sandboxes' (see [`userns`]).
    pub fn id_ranges(&self) -> &userns::IdRanges {
        &self.ids
    }

    /// The container's data directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn dirs(&self, name: &str) -> Dirs {
        Dirs { data: self.root.join(name), run: self.run_root.join(name) }
    }

    /// Records a new container; the name must be free. The directory
    /// appears whole or not at all: it is made under a temporary name,
    /// its config written and synced, then renamed into place, so a full
    /// disk or a stop halfway never leaves a directory that holds a name
    /// without a container. What a host crash may still leave (the rename
    /// on disk, the config not; an older agent's half-made directory) has
    /// no readable config, and is swept when the name is wanted again.
    pub fn create(&self, config: &ContainerConfig) -> Result<Container, RuntimeError> {
        validate_name(&config.name)?;
        if let Some(init) = config.init_binary.as_ref().filter(|i| !i.is_file()) {
            return Err(RuntimeError::Other {
                name: config.name.clone(),
                message: format!(
                    "init: {} is not on this node; install tini (its static build), or point --init-path at a static init",
                    init.display()
                ),
            });
        }
        let dir = self.dir(&config.name);
        if dir.exists() {
            if !is_debris(&dir) {
                return Err(RuntimeError::NameInUse(config.name.clone()));
            }
            tracing::warn!(container = %config.name, "removing what an interrupted create left");
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let mut config = config.clone();
        // Its volumes made, under their lock until its config is in place.
        let named: Vec<&str> = config
            .overrides
            .options
            .mounts
            .iter()
            .filter(|m| m.kind == MountKind::Volume)
            .map(|m| m.source.as_str())
            .collect();
        let _held = match named.is_empty() {
            true => None,
            false => Some(self.volumes.lock().map_err(io_err(self.volumes.root()))?),
        };
        for name in &named {
            self.volumes.ensure(name).map_err(|e| RuntimeError::Other {
                name: config.name.clone(),
                message: format!("volume {name}: {e}"),
            })?;
        }
        if !named.is_empty() {
            config.volumes = Some(self.volumes.root().to_path_buf());
        }
        for m in config.overrides.options.mounts.iter().filter(|m| m.kind == MountKind::Bind) {
            if !Path::new(&m.source).exists() {
                return Err(RuntimeError::Other {
                    name: config.name.clone(),
                    message: format!("bind source {} does not exist on this node", m.source),
                });
            }
        }
        let mut fresh = false;
        if config.userns == UserNamespace::Auto {
            fresh = self.ids.held(&dir).map_err(io_err(&self.root))?.is_none();
            config.userns = UserNamespace::Own(self.ids.claim(&dir).map_err(io_err(&self.root))?);
        }
        match self.record_new(&config, &dir) {
            Ok(()) => Ok(Container { config, status: Status::Created, dir }),
            Err(e) => {
                // A create of the name that got there first holds the same claim.
                if fresh && !matches!(e, RuntimeError::NameInUse(_)) {
                    let _ = self.ids.release(&dir);
                }
                Err(e)
            }
        }
    }

    /// Writes the config under a temporary name, then renames it into place.
    fn record_new(&self, config: &ContainerConfig, dir: &Path) -> Result<(), RuntimeError> {
        let new = tempfile::Builder::new()
            .prefix(&format!("{NEW_PREFIX}{}-", config.name))
            .tempdir_in(&self.root)
            .map_err(io_err(&self.root))?;
        record::write_durable(new.path(), record::CONFIG, config).map_err(io_err(new.path()))?;
        match fs::rename(new.path(), dir) {
            // Another create of the name got there first.
            Err(e) if [Errno::ENOTEMPTY, Errno::EEXIST].iter().any(|n| e.raw_os_error() == Some(*n as i32)) => {
                return Err(RuntimeError::NameInUse(config.name.clone()))
            }
            other => other.map_err(io_err(dir))?,
        }
        let _ = new.keep();
        Ok(())
    }

    /// Removes what interrupted creates left: temporary directories and
    /// container directories without a config, older than `age` (a create
    /// under way takes milliseconds).
    pub fn sweep(&self, age: Duration) -> Vec<PathBuf> {
        let mut swept = Vec::new();
        let entries = fs::read_dir(&self.root).into_iter().flatten().flatten();
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            let debris = name.starts_with(NEW_PREFIX) || (!name.starts_with('.') && is_debris(&path));
            if debris && stale.is_some_and(|s| s >= age) && fs::remove_dir_all(&path).is_ok() {
                swept.push(path);
            }
        }
        swept
    }

    /// Holds the container's lock: starting, renewing and removing it
    /// exclude each other, so `rm -f` by hand and an agent restarting the
    /// container cannot interleave. NotFound once the container is gone.
    async fn lock(&self, name: &str) -> Result<Flock<fs::File>, RuntimeError> {
        validate_name(name)?;
        let (dir, owned) = (self.dir(name), name.to_owned());
        let locked = tokio::task::spawn_blocking(move || lock_dir(&dir, &owned)).await;
        locked.map_err(|e| RuntimeError::Other { name: name.into(), message: e.to_string() })?
    }

    /// Starts the container's shim and waits for its report. A container
    /// that ran before starts afresh.
    /// `launch` has the values of the secrets and configs its config names
    /// (see [`files`]), written to memory for this run only, and, for a
    /// container with an exclusive volume, its lease's deadline (see
    /// `berth_monitor::lease`).
    pub async fn start(&self, name: &str, launch: &Launch) -> Result<Shim, RuntimeError> {
        let _lock = self.lock(name).await?;
        let container = self.get(name)?;
        let dirs = self.dirs(name);
        match container.status {
            Status::Running(_) => return Err(RuntimeError::Running(name.to_owned())),
            Status::Lost => shim::cleanup(&dirs, None),
            Status::Created | Status::Exited(_) => {}
        }
        for stale in [record::STARTED, record::EXITED] {
            let _ = fs::remove_file(dirs.data.join(stale));
        }
        berth_monitor::remove_run_dir(&dirs).map_err(io_err(&dirs.run))?;
        // Owner only: its rootfs (with whatever setuid files its image has)
        // is mounted here, and no host user may reach it.
        fs::DirBuilder::new().mode(0o700).create(&dirs.run).map_err(io_err(&dirs.run))?;
        if let Err(e) = files::write(&dirs.run, &container.config, &launch.files) {
            let _ = berth_monitor::remove_run_dir(&dirs);
            return Err(RuntimeError::Start { name: name.into(), message: format!("secrets and configs: {e}") });
        }
        if let Some(deadline) = launch.lease_ns {
            let file = dirs.run.join(berth_monitor::lease::FILE);
            berth_monitor::lease::write(&file, deadline).map_err(io_err(&file))?;
        }
        let shim_log = dirs.data.join("shim.log");
        let log = fs::File::create(&shim_log).map_err(io_err(&shim_log))?;
        let mut child = tokio::process::Command::new(&self.shim)
            .arg(&dirs.data)
            .arg(&dirs.run)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| RuntimeError::Start {
                name: name.into(),
                message: format!("running {}: {e}", self.shim.display()),
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| RuntimeError::Start { name: name.into(), message: "no shim pipe".into() })?;
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(120), BufReader::new(stdout).read_line(&mut line)).await;
        let fail = |message: String| RuntimeError::Start { name: name.into(), message };
        match read {
            Err(_) => Err(fail("the shim did not report within 120 s".into())),
            Ok(Err(e)) => Err(fail(format!("reading the shim's report: {e}"))),
            Ok(Ok(_)) => {
                let line = line.trim_end();
                if let Some(pid) = line.strip_prefix("ok ") {
                    let pid = pid.parse().map_err(|_| fail(format!("the shim reported {line:?}")))?;
                    Ok(Shim { pid, child })
                } else if let Some(message) = line.strip_prefix("error ") {
                    Err(fail(message.to_owned()))
                } else {
                    let log = fs::read_to_string(&shim_log).unwrap_or_default();
                    Err(fail(format!("the shim exited without a report: {}", log.trim())))
                }
            }
        }
    }

    pub fn get(&self, name: &str) -> Result<Container, RuntimeError> {
        let dir = self.dir(name);
        let config: ContainerConfig = match record::read(&dir, record::CONFIG) {
            Ok(Some(c)) => c,
            Ok(None) => return Err(RuntimeError::NotFound(name.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Err(RuntimeError::NotFound(name.into())),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let status = status_of(&dir)?;
        Ok(Container { config, status, dir })
    }

    /// Every container, by name.
    pub fn list(&self) -> Result<Vec<Container>, RuntimeError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            if let Some(name) = entry.file_name().to_str().filter(|n| !n.starts_with('.')) {
                if let Ok(c) = self.get(name) {
                    out.push(c);
                }
            }
        }
        out.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        Ok(out)
    }

    /// Sends a signal to the container's init process, or with `all` to
    /// every process in its cgroup.
    pub fn kill(&self, name: &str, signal: Signal, all: bool) -> Result<(), RuntimeError> {
        let container = self.get(name)?;
        if !matches!(container.status, Status::Running(_)) {
            return Err(RuntimeError::Other { name: name.into(), message: "is not running".into() });
        }
        let other = |message: String| RuntimeError::Other { name: name.into(), message };
        let mut lc = Lc::load(self.dirs(name).libcontainer().join(name)).map_err(|e| other(format!("loading: {e}")))?;
        lc.kill(signal, all).map_err(|e| other(format!("sending {signal}: {e}")))
    }

    /// Its stop signal (SIGTERM unless its spec or image says otherwise),
    /// then SIGKILL to every process after `grace`; returns once the shim
    /// has recorded the exit.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<Exited, RuntimeError> {
        let container = self.get(name)?;
        if let Status::Running(_) = container.status {
            let signal = container.config.stop_signal().unwrap_or(Signal::SIGTERM);
            let _ = self.kill(name, signal, false);
            if let Some(exited) = self.wait_for(name, grace).await? {
                return Ok(exited);
            }
            let _ = self.kill(name, Signal::SIGKILL, true);
        }
        self.wait(name).await
    }

    /// Waits for the container's exit record.
    pub async fn wait(&self, name: &str) -> Result<Exited, RuntimeError> {
        loop {
            if let Some(exited) = self.wait_for(name, Duration::from_secs(3600)).await? {
                return Ok(exited);
            }
        }
    }

    /// The exit record once there is one, or None after `limit`.
    pub async fn wait_for(&self, name: &str, limit: Duration) -> Result<Option<Exited>, RuntimeError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pause = Duration::from_millis(2);
        loop {
            match self.get(name)?.status {
                Status::Exited(e) => return Ok(Some(e)),
                Status::Lost => return Err(RuntimeError::Other { name: name.into(), message: "its shim died".into() }),
                Status::Created | Status::Running(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Readies a container that has stopped for a fresh start: a clean
    /// writable layer, as a new container would have (a task that crashed
    /// on what it wrote must not meet it again), but the same config and
    /// the same log, so its earlier runs' output stays readable.
    pub fn renew(&self, name: &str) -> Result<(), RuntimeError> {
        validate_name(name)?;
        let _lock = lock_dir(&self.dir(name), name)?;
        let dirs = self.dirs(name);
        match self.get(name)?.status {
            Status::Running(_) => return Err(RuntimeError::Running(name.to_owned())),
            Status::Lost => shim::cleanup(&dirs, None),
            Status::Created | Status::Exited(_) => {}
        }
        berth_monitor::remove_run_dir(&dirs).map_err(io_err(&dirs.run))?;
        for layer in ["upper", "work"] {
            let dir = dirs.data.join(layer);
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&dir)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes the container and everything it left; a running one only
    /// with `force` (it is killed first).
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), RuntimeError> {
        let _lock = self.lock(name).await?;
        let container = self.get(name)?;
        match container.status {
            Status::Running(_) if !force => return Err(RuntimeError::Running(name.to_owned())),
            Status::Running(_) => {
                let _ = self.kill(name, Signal::SIGKILL, true);
                // Bounded: the lock held meanwhile must not be held forever.
                if self.wait_for(name, KILL_PATIENCE).await?.is_none() {
                    let message = format!("did not exit within {KILL_PATIENCE:?} of SIGKILL; try again");
                    return Err(RuntimeError::Other { name: name.into(), message });
                }
            }
            Status::Lost => shim::cleanup(&self.dirs(name), None),
            Status::Created | Status::Exited(_) => {}
        }
        let dirs = self.dirs(name);
        berth_monitor::remove_run_dir(&dirs).map_err(io_err(&dirs.run))?;
        // What a monitor that died left of its cgroup (it removes it itself).
        let shim = berth_monitor::cgroup::shim_path(&container.config.cgroup_path());
        let _ = berth_monitor::cgroup::Cgroups::detect().remove(&shim);
        // A large writable layer takes long to delete: off the caller's thread.
        let data = dirs.data.clone();
        let removed = tokio::task::spawn_blocking(move || fs::remove_dir_all(&data)).await;
        removed.unwrap_or_else(|e| Err(std::io::Error::other(e))).map_err(io_err(&dirs.data))?;
        if let UserNamespace::Own(_) = container.config.userns {
            self.ids.release(&dirs.data).map_err(io_err(&self.root))?;
        }
        Ok(())
    }
}

/// Temporary directories of creates under way start with this.
const NEW_PREFIX: &str = ".new-";

/// A container directory without a readable config: what an interrupted
/// create left.
fn is_debris(dir: &Path) -> bool {
    dir.is_dir() && !matches!(record::read::<ContainerConfig>(dir, record::CONFIG), Ok(Some(_)))
}

/// How long a removal waits for a killed container's exit record.
const KILL_PATIENCE: Duration = Duration::from_secs(30);
/// How long a start, renewal or removal waits for another to let go of
/// the container.
const LOCK_PATIENCE: Duration = Duration::from_secs(60);

/// Takes the lock of a container's directory (flock on the directory),
/// then checks it is still the one at its path.
fn lock_dir(dir: &Path, name: &str) -> Result<Flock<fs::File>, RuntimeError> {
    use std::os::unix::fs::MetadataExt;
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    let mut file = match fs::File::open(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RuntimeError::NotFound(name.into())),
        other => other.map_err(io_err(dir))?,
    };
    let locked = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => break locked,
            Err((back, Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                file = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                let message = format!("is busy: another berth-agent has held it for {LOCK_PATIENCE:?}");
                return Err(RuntimeError::Other { name: name.into(), message });
            }
            Err((_, e)) => return Err(io_err(dir)(e.into())),
        }
    };
    let same = match (fs::metadata(dir), locked.metadata()) {
        (Ok(now), Ok(held)) => now.ino() == held.ino() && now.dev() == held.dev(),
        _ => false,
    };
    if same {
        Ok(locked)
    } else {
        Err(RuntimeError::NotFound(name.into()))
    }
}

fn status_of(dir: &Path) -> Result<Status, RuntimeError> {
    if let Some(exited) = record::read::<Exited>(dir, record::EXITED).map_err(io_err(dir))? {
        return Ok(Status::Exited(exited));
    }
    match record::read::<Started>(dir, record::STARTED).map_err(io_err(dir))? {
        None => Ok(Status::Created),
        Some(s) if record::process_start(s.shim_pid) == Some(s.shim_start) => Ok(Status::Running(s)),
        // The shim may have written exit.json between our two reads.
        Some(_) => match record::read::<Exited>(dir, record::EXITED).map_err(io_err(dir))? {
            Some(exited) => Ok(Status::Exited(exited)),
            None => Ok(Status::Lost),
        },
    }
}

#[cfg(test)]
mod tests;
