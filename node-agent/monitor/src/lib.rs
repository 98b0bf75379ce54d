//! berth-monitor: what a container's shim becomes once the container
//! runs. It copies the container's output into the log, reaps it, releases
//! what it held on the host and records the exit.
//!
//! The shim needs libcontainer to create a container, and with it several
//! megabytes of mapped code; a running container needs none of that. So the
//! shim execs `berth-monitor`, built from this small crate alone: exec keeps
//! the pid, the children and the pipes, and drops the rest. A hundred
//! containers then cost a hundred small processes, not a hundred copies of
//! the runtime. Release builds link it statically (`bench/build.sh`), so it
//! maps no shared libraries either. Should the exec fail, the shim runs the
//! same code itself.
//!
//! The agent uses this crate too, for what both sides must agree on: the
//! exit record, the log format and the cgroup files.

pub mod cgroup;
pub mod logs;
pub mod record;

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
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
    pub fn args(&self, pid: i32, stdout: RawFd, stderr: RawFd) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![self.dirs.data.clone().into(), self.dirs.run.clone().into()];
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
    pub fn parse(args: &[String]) -> Result<(Self, i32, RawFd, RawFd), String> {
        let [data, run, cgroup, max_bytes, max_files, pid, out, err] = args else {
            return Err(format!("expected 8 arguments, got {}", args.len()));
        };
        let number = |what: &str, text: &str| -> Result<u64, String> {
            text.parse().map_err(|_| format!("{what} {text:?} is not a number"))
        };
        let log = LogPolicy {
            max_bytes: number("LOG_MAX_BYTES", max_bytes)?,
            max_files: u32::try_from(number("LOG_MAX_FILES", max_files)?).map_err(|e| e.to_string())?,
        };
        let pid = i32::try_from(number("PID", pid)?).map_err(|e| e.to_string())?;
        let fd = |what: &str, text: &str| -> Result<RawFd, String> {
            RawFd::try_from(number(what, text)?)
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or(format!("{what} {text:?} is not a descriptor"))
        };
        let watch = Self { dirs: Dirs { data: data.into(), run: run.into() }, cgroup: cgroup.clone(), log };
        Ok((watch, pid, fd("STDOUT_FD", out)?, fd("STDERR_FD", err)?))
    }
}

/// `berth-monitor` with its arguments, as the shim execs it.
pub fn main(args: &[String]) -> Result<(), String> {
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

/// Unmounts `RUN/rootfs` if it is mounted.
pub fn unmount_rootfs(dirs: &Dirs) -> io::Result<()> {
    let rootfs = dirs.rootfs();
    if is_mounted(&rootfs) {
        umount2(&rootfs, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    Ok(())
}

/// Unmounts the rootfs, then removes the run directory; never deletes
/// through a live mount.
pub fn remove_run_dir(dirs: &Dirs) -> io::Result<()> {
    unmount_rootfs(dirs)?;
    match fs::remove_dir_all(&dirs.run) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let target = path.display().to_string();
    info.lines().any(|l| l.split(' ').nth(4) == Some(target.as_str()))
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
    let _ = cgroups.remove(&watch.cgroup);
    let _ = remove_run_dir(dirs);
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

    #[test]
    fn the_command_line_round_trips_and_bad_ones_are_named() {
        let watch = Watch {
            dirs: Dirs { data: "/var/lib/c/web".into(), run: "/run/c/web".into() },
            cgroup: "/berth/web".into(),
            log: LogPolicy { max_bytes: 4096, max_files: 3 },
        };
        let args: Vec<String> = watch.args(42, 5, 6).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(Watch::parse(&args).unwrap(), (watch, 42, 5, 6));
        let mut bad = args.clone();
        bad[3] = "lots".into();
        assert!(Watch::parse(&bad).unwrap_err().contains("LOG_MAX_BYTES \"lots\""));
        bad = args.clone();
        bad[7] = "1".into();
        assert!(Watch::parse(&bad).unwrap_err().contains("STDERR_FD \"1\" is not a descriptor"));
        assert!(Watch::parse(&args[..7]).unwrap_err().contains("expected 8 arguments"));
    }
}
