//! The monitor: what a shim becomes once its container runs. It copies the
//! container's output into the log, reaps it, releases what it held on the
//! host and records the exit.
//!
//! The shim needs libcontainer to create a container, and with it several
//! megabytes of mapped code; a running container needs none of that. So the
//! shim execs `berth-monitor`, a small binary built from this module alone:
//! exec keeps the pid, the children and the pipes, and drops the rest. A
//! hundred containers then cost a hundred small processes, not a hundred
//! copies of the runtime. Should that exec fail, the shim runs the same
//! code itself.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::cgroup::Cgroups;
use super::logs::{LogWriter, Stream};
use super::record::{self, ContainerConfig, Dirs, Exited};
use super::rootfs;

/// A container that runs: its init's pid and the read ends of its output.
#[derive(Debug)]
pub struct Watched {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// `berth-monitor DATA_DIR RUN_DIR PID STDOUT_FD STDERR_FD`, as the shim execs it.
pub fn main(args: &[String]) -> Result<(), String> {
    let [data, run, pid, out, err] = args else {
        return Err("usage: berth-monitor DATA_DIR RUN_DIR PID STDOUT_FD STDERR_FD (exec'd by berth-shim)".into());
    };
    let dirs = Dirs { data: PathBuf::from(data), run: PathBuf::from(run) };
    let pid: i32 = pid.parse().map_err(|_| format!("PID {pid:?} is not a number"))?;
    let watched = Watched { pid, stdout: inherited_fd(out)?, stderr: inherited_fd(err)? };
    let config = read_config(&dirs.data)?;
    // A shim ignores these already (and exec keeps ignored dispositions);
    // said again so the monitor does not depend on it.
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE, Signal::SIGTERM] {
        let _ = ignore(sig);
    }
    supervise(&dirs, &config, watched);
    Ok(())
}

pub fn read_config(dir: &Path) -> Result<ContainerConfig, String> {
    let path = dir.join(record::CONFIG);
    record::read(dir, record::CONFIG)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .ok_or_else(|| format!("{} is missing", path.display()))
}

/// Takes ownership of a descriptor the shim left open across exec.
fn inherited_fd(text: &str) -> Result<OwnedFd, String> {
    let fd: RawFd = text.parse().ok().filter(|fd| *fd > 2).ok_or_else(|| format!("{text:?} is not a descriptor"))?;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).map_err(|e| format!("descriptor {fd}: {e}"))?;
    #[allow(unsafe_code)]
    // SAFETY: the descriptor is open (checked above) and nothing else in
    // this process owns it: the shim handed it over through exec.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[allow(unsafe_code)]
pub(super) fn ignore(sig: Signal) -> nix::Result<SigHandler> {
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { signal(sig, SigHandler::SigIgn) }
}

/// Runs to the container's end: output into the log until every writer is
/// gone, reap, release the cgroup, libcontainer's state and the rootfs
/// mount, then write the exit record, last.
pub fn supervise(dirs: &Dirs, config: &ContainerConfig, watched: Watched) {
    let mut log = LogWriter::open(&dirs.data, config.log).ok();
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
    let cgroup = config.cgroup_path();
    let oom_killed = cgroups.usage(&cgroup).oom_kills > 0;
    // When the init of a PID namespace is reaped, every other process of
    // the namespace is gone too, so the cgroup is empty and can go.
    let _ = cgroups.remove(&cgroup);
    let _ = rootfs::remove_run_dir(dirs);
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
