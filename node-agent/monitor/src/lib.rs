//! berth-monitor: what a container's shim becomes once the container
//! runs. It copies the container's output into the log, reaps it, releases
//! what it held on the host and records the exit.
//!
//! The shim needs libcontainer to create a container, and with it several
//! megabytes of mapped code; a running container needs none of that. So the
//! shim execs `berth-monitor`, built from this small crate alone: exec keeps
//! the pid, the children and the pipes, and drops the rest. A hundred
//! containers then cost a hundred small processes, not a hundred copies of
//! the runtime. Release builds link it statically (`build_release` in
//! `deploy/lib/setup.sh`), so it maps no shared libraries either. Should the exec fail, the shim runs the
//! same code itself.
//!
//! The agent uses this crate too, for what both sides must agree on: the
//! exit record, the log format and the cgroup files.

pub mod cgroup;
pub mod logs;
pub mod record;

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::mount::{umount2, MntFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use cgroup::Cgroups;
use logs::{LogWriter, Stream};
use record::{Dirs, Exited, LogPolicy};

/// A container that runs: its init's pid and the read ends of its output.
#[derive(Debug)]
pub struct Watched {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What the monitor needs to know of its container, passed on its command
/// line (it reads no config file, so it shares no schema with the agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub dirs: Dirs,
    /// The container's cgroup, as the runtime spec names it.
    pub cgroup: String,
    pub log: LogPolicy,
}

impl Watch {
    /// The command line: `DATA RUN CGROUP LOG_MAX_BYTES LOG_MAX_FILES PID
    /// STDOUT_FD STDERR_FD`.
    pub fn args(&self, pid: i32, stdout: RawFd, stderr: RawFd) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![self.dirs.data.clone().into(), self.dirs.run.clone().into()];
        args.extend(
            [
                self.cgroup.clone(),
                self.log.max_bytes.to_string(),
                self.log.max_files.to_string(),
                pid.to_string(),
                stdout.to_string(),
                stderr.to_string(),
            ]
            .map(Into::into),
        );
        args
    }

    /// Parses [`Watch::args`]: the watch, the pid and the two descriptors.
    /// Paths may be any bytes; the rest must be text.
    pub fn parse(args: &[OsString]) -> Result<(Self, i32, RawFd, RawFd), String> {
        let [data, run, cgroup, max_bytes, max_files, pid, out, err] = args else {
            return Err(format!("expected 8 arguments, got {}", args.len()));
        };
        let text = |what: &str, arg: &OsString| -> Result<String, String> {
            arg.to_str().map(str::to_owned).ok_or_else(|| format!("{what} {arg:?} is not text"))
        };
        fn number<T: TryFrom<u64>>(what: &str, text: &str) -> Result<T, String> {
            text.parse::<u64>()
                .ok()
                .and_then(|n| T::try_from(n).ok())
                .ok_or_else(|| format!("{what} {text:?} is not a number in range"))
        }
        let log = LogPolicy {
            max_bytes: number("LOG_MAX_BYTES", &text("LOG_MAX_BYTES", max_bytes)?)?,
            max_files: number("LOG_MAX_FILES", &text("LOG_MAX_FILES", max_files)?)?,
        };
        let pid = number("PID", &text("PID", pid)?)?;
        let fd = |what: &str, arg: &OsString| -> Result<RawFd, String> {
            let text = text(what, arg)?;
            number::<RawFd>(what, &text).ok().filter(|fd| *fd > 2).ok_or(format!("{what} {text:?} is not a descriptor"))
        };
        let dirs = Dirs { data: data.into(), run: run.into() };
        let watch = Self { dirs, cgroup: text("CGROUP", cgroup)?, log };
        Ok((watch, pid, fd("STDOUT_FD", out)?, fd("STDERR_FD", err)?))
    }
}

/// `berth-monitor` with its arguments, as the shim execs it.
pub fn main(args: &[OsString]) -> Result<(), String> {
    let (watch, pid, out, err) = Watch::parse(args)
        .map_err(|e| format!("{e}\nusage: berth-monitor DATA RUN CGROUP LOG_MAX_BYTES LOG_MAX_FILES PID STDOUT_FD STDERR_FD (exec'd by berth-shim)"))?;
    let watched = Watched { pid, stdout: inherited_fd(out)?, stderr: inherited_fd(err)? };
    // A shim ignores these already (and exec keeps ignored dispositions);
    // said again so the monitor does not depend on it.
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE, Signal::SIGTERM] {
        let _ = ignore(sig);
    }
    supervise(&watch, watched);
    Ok(())
}

/// Takes ownership of a descriptor the shim left open across exec.
fn inherited_fd(fd: RawFd) -> Result<OwnedFd, String> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).map_err(|e| format!("descriptor {fd}: {e}"))?;
    #[allow(unsafe_code)]
    // SAFETY: the descriptor is open (checked above) and nothing else in
    // this process owns it: the shim handed it over through exec.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[allow(unsafe_code)]
pub fn ignore(sig: Signal) -> nix::Result<SigHandler> {
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { signal(sig, SigHandler::SigIgn) }
}

/// Unmounts `RUN/rootfs` while anything is mounted there (mounts may be
/// stacked).
pub fn unmount_rootfs(dirs: &Dirs) -> io::Result<()> {
    let rootfs = dirs.rootfs();
    for _ in 0..8 {
        if !is_mount_point(&rootfs)? {
            return Ok(());
        }
        umount2(&rootfs, MntFlags::MNT_DETACH)
            .map_err(|e| io::Error::other(format!("unmounting {}: {e}", rootfs.display())))?;
    }
    Err(io::Error::other(format!("{} is still mounted after 8 unmounts", rootfs.display())))
}

/// Unmounts the rootfs, then removes the run directory. Never deletes
/// through a live mount: that would empty the container's writable layer.
pub fn remove_run_dir(dirs: &Dirs) -> io::Result<()> {
    unmount_rootfs(dirs)?;
    if is_mount_point(&dirs.rootfs())? {
        return Err(io::Error::other(format!("{} is mounted; not removing it", dirs.rootfs().display())));
    }
    match fs::remove_dir_all(&dirs.run) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether something is mounted at `path`. Asks twice: a path on another
/// device than its parent is a mount point (overlay, tmpfs); a bind mount
/// keeps its device, so the mount table is read too, for the path with
/// symlinks resolved and the table's octal escapes decoded. A missing path
/// is not mounted.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let here = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let parent = path.parent().ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))?;
    if here.dev() != fs::metadata(parent)?.dev() {
        return Ok(true);
    }
    let target = fs::canonicalize(path)?;
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table.lines().filter_map(|l| l.split(' ').nth(4)).any(|p| Path::new(&unescape(p)) == target))
}

/// Undoes the mount table's escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs to the container's end: output into the log until every writer is
/// gone, reap, release the cgroup, libcontainer's state and the rootfs
/// mount, then write the exit record, last.
pub fn supervise(watch: &Watch, watched: Watched) {
    let dirs = &watch.dirs;
    let mut log = LogWriter::open(&dirs.data, watch.log).ok();
    copy_output(&mut log, &watched.stdout, &watched.stderr);
    let status = loop {
        match waitpid(Pid::from_raw(watched.pid), None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    let (code, signal) = match status {
        Ok(WaitStatus::Exited(_, code)) => (code, None),
        Ok(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let cgroups = Cgroups::detect();
    let oom_killed = cgroups.usage(&watch.cgroup).oom_kills > 0;
    // When the init of a PID namespace is reaped, every other process of
    // the namespace is gone too, so the cgroup is empty and can go.
    // Failures go to stderr, which is the shim's log.
    if let Err(e) = cgroups.remove(&watch.cgroup) {
        eprintln!("berth-monitor: removing cgroup {}: {e}", watch.cgroup);
    }
    if let Err(e) = remove_run_dir(dirs) {
        eprintln!("berth-monitor: {e}");
    }
    let exited = Exited { code, signal, oom_killed, finished_at_ms: record::now_ms(), error: None };
    let _ = record::write(&dirs.data, record::EXITED, &exited);
}

/// Copies both pipes into the log until both reach end of file, which
/// happens when every process of the container's PID namespace is gone.
fn copy_output(log: &mut Option<LogWriter>, stdout: &OwnedFd, stderr: &OwnedFd) {
    let mut open = [true, true];
    let mut buf = vec![0u8; 64 * 1024];
    let streams = [Stream::Stdout, Stream::Stderr];
    let fds = [stdout, stderr];
    while open.iter().any(|o| *o) {
        let polled: Vec<usize> = (0..2).filter(|&i| open[i]).collect();
        let mut pfds: Vec<PollFd> = polled.iter().map(|&i| PollFd::new(fds[i].as_fd(), PollFlags::POLLIN)).collect();
        match poll(&mut pfds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
            Ok(_) => {}
        }
        for (&i, p) in polled.iter().zip(&pfds) {
            if p.revents().is_none_or(|r| r.is_empty()) {
                continue;
            }
            match nix::unistd::read(fds[i].as_raw_fd(), &mut buf) {
                Err(nix::errno::Errno::EINTR) => {}
                Ok(0) | Err(_) => {
                    open[i] = false;
                    if let Some(l) = log.as_mut() {
                        let _ = l.finish(streams[i]);
                    }
                }
                Ok(n) => {
                    if let Some(l) = log.as_mut() {
                        let _ = l.write(streams[i], &buf[..n]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (as the test suite runs): a real bind mount.
    #[test]
    fn the_run_dir_goes_only_once_nothing_is_mounted_in_it_even_through_a_symlink() {
        use nix::mount::{mount, MsFlags};
        let tmp = tempfile::tempdir().unwrap();
        let precious = tmp.path().join("upper");
        fs::create_dir_all(&precious).unwrap();
        fs::write(precious.join("data"), "keep").unwrap();
        let real_run = tmp.path().join("run");
        fs::create_dir_all(real_run.join("rootfs")).unwrap();
        let link = tmp.path().join("run-link");
        std::os::unix::fs::symlink(&real_run, &link).unwrap();
        let dirs = Dirs { data: tmp.path().into(), run: link.clone() };

        mount(Some(&precious), &real_run.join("rootfs"), None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        assert!(is_mount_point(&dirs.rootfs()).unwrap(), "seen through the symlink");
        remove_run_dir(&dirs).unwrap();
        assert_eq!(fs::read_to_string(precious.join("data")).unwrap(), "keep", "deleted through the mount");
        assert!(!is_mount_point(&real_run.join("rootfs")).unwrap());
        assert!(!link.exists() || fs::read_dir(&link).is_err(), "the run dir is gone");
        remove_run_dir(&dirs).unwrap();
    }

    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(unescape("/run/a\\040b/c\\134d"), "/run/a b/c\\d");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn the_command_line_round_trips_and_bad_ones_are_named() {
        let watch = Watch {
            dirs: Dirs { data: "/var/lib/c/web".into(), run: "/run/c/web".into() },
            cgroup: "/berth/web".into(),
            log: LogPolicy { max_bytes: 4096, max_files: 3 },
        };
        let args = watch.args(42, 5, 6);
        assert_eq!(Watch::parse(&args).unwrap(), (watch, 42, 5, 6));
        let mut bad = args.clone();
        bad[3] = "lots".into();
        assert!(Watch::parse(&bad).unwrap_err().contains("LOG_MAX_BYTES \"lots\""));
        bad = args.clone();
        bad[4] = "99999999999".into();
        assert!(Watch::parse(&bad).unwrap_err().contains("LOG_MAX_FILES \"99999999999\" is not a number in range"));
        bad = args.clone();
        bad[7] = "1".into();
        assert!(Watch::parse(&bad).unwrap_err().contains("STDERR_FD \"1\" is not a descriptor"));
        assert!(Watch::parse(&args[..7]).unwrap_err().contains("expected 8 arguments"));
    }
}
