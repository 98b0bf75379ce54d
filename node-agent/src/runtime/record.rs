//! What the agent and a container's shim write about the container, one
//! file each, so that either can die and the other still knows the truth:
//!
//! ```text
//! containers/<name>/config.json   agent: what to run (written once, fsync'd)
//! containers/<name>/started.json  shim: its pid, the container's pid
//! containers/<name>/exit.json     shim: exit code, signal, OOM; written last,
//!                                 after the cgroup and mount are gone
//! ```
//!
//! started.json and exit.json describe processes, which a host crash ends
//! anyway, so they are written atomically but not fsync'd.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::image::ImageConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub image_config: ImageConfig,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    pub layer_digests: Vec<String>,
    /// Replaces the image's Cmd when not empty.
    pub command: Vec<String>,
    /// Replaces the image's Entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE`, over the image's environment.
    pub env: Vec<String>,
    pub limits: Limits,
    pub network: NetworkMode,
    /// Cgroup of the container: `<cgroup_parent>/<name>`.
    pub cgroup_parent: String,
    pub log: LogPolicy,
    pub created_at_ms: u64,
}

impl ContainerConfig {
    /// The container's cgroup, as the runtime spec names it: `/<parent>/<name>`.
    pub fn cgroup_path(&self) -> String {
        format!("/{}/{}", self.cgroup_parent.trim_matches('/'), self.name)
    }

    /// The container's hostname: its name, cut to a DNS label's 63 bytes.
    pub fn hostname(&self) -> String {
        self.name.chars().take(63).collect()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own network namespace with only loopback.
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPolicy {
    /// The live log file is rotated when it would pass this size.
    pub max_bytes: u64,
    /// Rotated files kept besides the live one.
    pub max_files: u32,
}

impl Default for LogPolicy {
    fn default() -> Self {
        Self { max_bytes: 10 * 1024 * 1024, max_files: 2 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub shim_pid: i32,
    /// The shim's start time in clock ticks since boot (/proc/PID/stat field
    /// 22): with the pid it names the shim even after pid reuse.
    pub shim_start: u64,
    pub pid: i32,
    pub started_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    /// The exit status, or 128 + signal when killed by one.
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at_ms: u64,
    /// Set when the container could not be run at all.
    pub error: Option<String>,
}

/// Where a container's files live. `data` is on disk and outlives the
/// host: config, records, logs, the writable layer. `run` is under /run
/// (tmpfs) and matters only while the container runs: the runtime spec,
/// its /etc files, libcontainer's state, the rootfs mount point. Keeping
/// the short-lived files off the disk saves a start several milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    pub data: PathBuf,
    pub run: PathBuf,
}

impl Dirs {
    /// libcontainer's state directory.
    pub fn libcontainer(&self) -> PathBuf {
        self.run.join("runtime")
    }

    pub fn rootfs(&self) -> PathBuf {
        self.run.join("rootfs")
    }
}

pub const CONFIG: &str = "config.json";
pub const STARTED: &str = "started.json";
pub const EXITED: &str = "exit.json";

pub fn read<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    match fs::read(dir.join(name)) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(io::Error::from),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes atomically (temp file, rename): a reader sees all or nothing.
pub fn write<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    write_file(dir, name, value, false)
}

/// As [`write`], and on disk before it returns.
pub fn write_durable<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    write_file(dir, name, value, true)
}

fn write_file<T: Serialize>(dir: &Path, name: &str, value: &T, sync: bool) -> io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(value).map_err(io::Error::from)?)?;
    if sync {
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Start time of a process in clock ticks since boot, if it exists.
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}
