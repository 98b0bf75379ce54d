//! Containers on this node: created from a pulled image, run by a shim
//! each, found again from their directories after an agent restart.
//!
//! ```text
//! ROOT/<name>/config.json ── Runtime::start ──▶ berth-shim ROOT/<name>
//!            /started.json ◀── shim          ──▶ container (namespaces, cgroup, overlay)
//!            /exit.json    ◀── shim, last
//!            /container.log[.N]
//! ```
//!
//! The agent keeps no container state in memory: a container's status is
//! read from its directory and from whether its shim still lives.

pub mod cgroup;
pub mod logs;
pub mod record;
pub mod rootfs;
pub mod shim;
pub mod spec;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use libcontainer::container::Container as Lc;
use libcontainer::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};

pub use record::{ContainerConfig, Exited, Limits, LogPolicy, NetworkMode, Started};

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
    pub fn label(&self) -> String {
        match self {
            Self::Created => "created".into(),
            Self::Running(_) => "running".into(),
            Self::Exited(e) if e.error.is_some() => "failed".into(),
            Self::Exited(e) if e.oom_killed => format!("exited ({}, oom-killed)", e.code),
            Self::Exited(e) => format!("exited ({})", e.code),
            Self::Lost => "lost".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Container {
    pub config: ContainerConfig,
    pub status: Status,
    pub dir: PathBuf,
}

impl Container {
    pub fn cgroup_path(&self) -> String {
        format!("/{}/{}", self.config.cgroup_parent.trim_matches('/'), self.config.name)
    }
}

#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    shim: PathBuf,
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
    /// `root` holds one directory per container; `shim` is the berth-shim binary.
    pub fn open(root: &Path, shim: PathBuf) -> Result<Self, RuntimeError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        Ok(Self { root: root.to_path_buf(), shim })
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Records a new container; the name must be free.
    pub fn create(&self, config: &ContainerConfig) -> Result<Container, RuntimeError> {
        validate_name(&config.name)?;
        let dir = self.dir(&config.name);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::NameInUse(config.name.clone()))
            }
            other => other.map_err(io_err(&dir))?,
        }
        record::write(&dir, record::CONFIG, config).map_err(io_err(&dir))?;
        Ok(Container { config: config.clone(), status: Status::Created, dir })
    }

    /// Starts the container's shim and waits for its report. Returns the
    /// container's pid. A container that ran before starts afresh.
    pub async fn start(&self, name: &str) -> Result<i32, RuntimeError> {
        let container = self.get(name)?;
        match container.status {
            Status::Running(_) => return Err(RuntimeError::Running(name.to_owned())),
            Status::Lost => shim::cleanup(&container.dir, None),
            Status::Created | Status::Exited(_) => {}
        }
        let dir = container.dir;
        for stale in [record::STARTED, record::EXITED] {
            let _ = fs::remove_file(dir.join(stale));
        }
        let _ = fs::remove_dir_all(dir.join("runtime"));
        let shim_log = dir.join("shim.log");
        let log = fs::File::create(&shim_log).map_err(io_err(&shim_log))?;
        let mut child = tokio::process::Command::new(&self.shim)
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
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
                // A shim that ran to its end already is reaped here; one
                // still supervising is reaped by tokio when it exits.
                let _ = child.try_wait();
                let line = line.trim_end();
                if let Some(pid) = line.strip_prefix("ok ") {
                    pid.parse().map_err(|_| fail(format!("the shim reported {line:?}")))
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
            if let Some(name) = entry.file_name().to_str() {
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
    pub fn kill(&self, name: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let container = self.get(name)?;
        if !matches!(container.status, Status::Running(_)) {
            return Err(RuntimeError::Other { name: name.into(), message: "is not running".into() });
        }
        let other = |message: String| RuntimeError::Other { name: name.into(), message };
        let sig = Signal::try_from(signal).map_err(|e| other(format!("signal {signal}: {e}")))?;
        let mut lc = Lc::load(container.dir.join("runtime").join(name)).map_err(|e| other(format!("loading: {e}")))?;
        lc.kill(sig, all).map_err(|e| other(format!("sending signal {signal}: {e}")))
    }

    /// SIGTERM, then SIGKILL to every process after `grace`; returns once
    /// the shim has recorded the exit.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<Exited, RuntimeError> {
        if let Status::Running(_) = self.get(name)?.status {
            let _ = self.kill(name, libc::SIGTERM, false);
            if let Some(exited) = self.wait_for(name, grace).await? {
                return Ok(exited);
            }
            let _ = self.kill(name, libc::SIGKILL, true);
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

    /// Removes the container and everything it left; a running one only
    /// with `force` (it is killed first).
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), RuntimeError> {
        let container = self.get(name)?;
        match container.status {
            Status::Running(_) if !force => return Err(RuntimeError::Running(name.to_owned())),
            Status::Running(_) => {
                let _ = self.kill(name, libc::SIGKILL, true);
                self.wait(name).await?;
            }
            Status::Lost => shim::cleanup(&container.dir, None),
            Status::Created | Status::Exited(_) => {}
        }
        // Never delete through a live mount.
        rootfs::unmount_rootfs(&container.dir).map_err(io_err(&container.dir))?;
        fs::remove_dir_all(&container.dir).map_err(io_err(&container.dir))
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
