//! What a container's monitor writes and the agent reads, and the file
//! helpers both use: records are JSON, replaced atomically (temp file,
//! rename) so a reader sees all or nothing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const EXITED: &str = "exit.json";

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

/// Replaces the file at `path` with `data` by a temp file beside it and a
/// rename, so a reader (or a restart after a crash) sees the old content
/// or the new, never a part; the data and the rename are on disk (file
/// and directory fsync'd) before it returns.
pub fn replace_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Start time of a process in clock ticks since boot, while it lives: a
/// zombie has ended and only waits to be reaped (its pidfd already says
/// so, and a shim's end must not be taken for a run).
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 2..].split(' ');
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}
