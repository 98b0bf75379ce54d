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
mod host;
pub mod lease;
pub mod logs;
pub mod record;

pub use host::{is_mount_point, remove_run_dir, unmount, unmount_rootfs, Host, Kernel};

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{signal, SigHandler, Signal};

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
    /// It runs only under a lease (an exclusive volume): see [`lease`].
    pub leased: bool,
}

impl Watch {
    /// The command line: `DATA RUN CGROUP LOG_MAX_BYTES LOG_MAX_FILES PID
    /// STDOUT_FD STDERR_FD [leased]`.
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
        if self.leased {
            args.push("leased".into());
        }
        args
    }

    /// Parses [`Watch::args`]: the watch, the pid and the two descriptors.
    /// Paths may be any bytes; the rest must be text.
    pub fn parse(args: &[OsString]) -> Result<(Self, i32, RawFd, RawFd), String> {
        let (args, leased) = match args {
            [first @ .., last] if last == "leased" => (first, true),
            all => (all, false),
        };
        let [data, run, cgroup, max_bytes, max_files, pid, out, err] = args else {
            return Err(format!("expected 8 arguments (and `leased`), got {}", args.len()));
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
        let watch = Self { dirs, cgroup: text("CGROUP", cgroup)?, log, leased };
        Ok((watch, pid, fd("STDOUT_FD", out)?, fd("STDERR_FD", err)?))
    }
}

/// `berth-monitor` with its arguments, as the shim execs it.
pub fn main(args: &[OsString]) -> Result<(), String> {
    let (watch, pid, out, err) = Watch::parse(args)
        .map_err(|e| format!("{e}\nusage: berth-monitor DATA RUN CGROUP LOG_MAX_BYTES LOG_MAX_FILES PID STDOUT_FD STDERR_FD [leased] (exec'd by berth-shim)"))?;
    let watched = Watched { pid, stdout: inherited_fd(out)?, stderr: inherited_fd(err)? };
    // A shim ignores these already (and exec keeps ignored dispositions);
    // said again so the monitor does not depend on it.
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE, Signal::SIGTERM] {
        let _ = ignore(sig);
    }
    supervise(&watch, watched, &mut Kernel);
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

/// Runs to the container's end: output into the log until every writer is
/// gone, reap, release the cgroup, libcontainer's state and the rootfs
/// mount, then write the exit record, last. Release failures go to stderr
/// (the shim's log) and never keep the exit record from being written.
pub fn supervise(watch: &Watch, watched: Watched, host: &mut impl Host) {
    let dirs = &watch.dirs;
    let mut log = LogWriter::open(&dirs.data, watch.log).ok();
    let lease = watch.leased.then(|| dirs.run.join(lease::FILE));
    let mut fenced = false;
    let mut check = || {
        if let Some(file) = lease.as_deref().filter(|_| !fenced) {
            if lease::lapsed(file, lease::now_ns()) {
                eprintln!("berth-monitor: its lease lapsed: killing the container (its volume is exclusive)");
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(watched.pid), Signal::SIGKILL);
                fenced = true;
            }
        }
    };
    check();
    copy_output(&mut log, &watched.stdout, &watched.stderr, lease.is_some(), &mut check);
    // Output may end before the container does (it closed its stdout and
    // stderr): a leased one is watched on until it is reaped.
    let (code, signal) = match lease.is_some() {
        false => host.reap(watched.pid),
        true => loop {
            check();
            if let Some(reaped) = host.try_reap(watched.pid) {
                break reaped;
            }
            std::thread::sleep(std::time::Duration::from_millis(lease::POLL_MS.into()));
        },
    };
    let oom_killed = host.oom_kills(&watch.cgroup) > 0;
    // When the init of a PID namespace is reaped, every other process of
    // the namespace is gone too, so the cgroup is empty and can go.
    if let Err(e) = host.remove_cgroup(&watch.cgroup) {
        eprintln!("berth-monitor: removing cgroup {}: {e}", watch.cgroup);
    }
    if let Err(e) = host.leave_shim_cgroup(&watch.cgroup) {
        eprintln!("berth-monitor: removing the shim's cgroup of {}: {e}", watch.cgroup);
    }
    if let Err(e) = host.remove_run_dir(dirs) {
        eprintln!("berth-monitor: {e}");
    }
    let exited = Exited { code, signal, oom_killed, finished_at_ms: record::now_ms(), error: None };
    if let Err(e) = record::write(&dirs.data, record::EXITED, &exited) {
        eprintln!("berth-monitor: writing {}: {e}", record::EXITED);
    }
}

/// Copies both pipes into the log until both reach end of file, which
/// happens when every process of the container's PID namespace is gone.
/// With `leased`, `check` runs at least every `lease::POLL`.
fn copy_output(
    log: &mut Option<LogWriter>,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
    leased: bool,
    check: &mut impl FnMut(),
) {
    let mut open = [true, true];
    let mut buf = vec![0u8; 64 * 1024];
    let streams = [Stream::Stdout, Stream::Stderr];
    let fds = [stdout, stderr];
    while open.iter().any(|o| *o) {
        let polled: Vec<usize> = (0..2).filter(|&i| open[i]).collect();
        let mut pfds: Vec<PollFd> = polled.iter().map(|&i| PollFd::new(fds[i].as_fd(), PollFlags::POLLIN)).collect();
        let timeout = if leased { PollTimeout::from(lease::POLL_MS) } else { PollTimeout::NONE };
        let polled_now = poll(&mut pfds, timeout);
        check();
        match polled_now {
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

    /// A host that records what the monitor asked of it, and whether the
    /// exit record existed at each step.
    struct Fake {
        exit_file: std::path::PathBuf,
        calls: Vec<String>,
    }

    impl Host for Fake {
        fn reap(&mut self, pid: i32) -> (i32, Option<i32>) {
            self.calls.push(format!("reap {pid} exit-record={}", self.exit_file.exists()));
            (3, None)
        }
        fn try_reap(&mut self, pid: i32) -> Option<(i32, Option<i32>)> {
            Some(self.reap(pid))
        }
        fn oom_kills(&self, _cgroup: &str) -> u64 {
            1
        }
        fn remove_cgroup(&mut self, cgroup: &str) -> std::io::Result<()> {
            self.calls.push(format!("rmcg {cgroup} exit-record={}", self.exit_file.exists()));
            Err(std::io::Error::other("busy"))
        }
        fn leave_shim_cgroup(&mut self, cgroup: &str) -> std::io::Result<()> {
            self.calls.push(format!("leave shim cgroup of {cgroup} exit-record={}", self.exit_file.exists()));
            Ok(())
        }
        fn remove_run_dir(&mut self, _dirs: &Dirs) -> std::io::Result<()> {
            self.calls.push(format!("rmrun exit-record={}", self.exit_file.exists()));
            Err(std::io::Error::other("still mounted"))
        }
    }

    #[test]
    fn output_is_logged_then_release_then_the_exit_record_last_even_when_release_fails() {
        use std::io::Write;
        let data = tempfile::tempdir().unwrap();
        let watch = Watch {
            dirs: Dirs { data: data.path().into(), run: data.path().join("run") },
            cgroup: "/berth/c".into(),
            log: LogPolicy::default(),
            leased: false,
        };
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        std::fs::File::from(out_w).write_all(b"hello\n").unwrap();
        std::fs::File::from(err_w).write_all(b"oops\n").unwrap();
        let mut host = Fake { exit_file: data.path().join(record::EXITED), calls: vec![] };
        supervise(&watch, Watched { pid: 42, stdout: out_r, stderr: err_r }, &mut host);
        assert_eq!(
            host.calls,
            [
                "reap 42 exit-record=false",
                "rmcg /berth/c exit-record=false",
                "leave shim cgroup of /berth/c exit-record=false",
                "rmrun exit-record=false"
            ]
        );
        let exited: Exited = record::read(data.path(), record::EXITED).unwrap().unwrap();
        assert_eq!((exited.code, exited.oom_killed), (3, true));
        let lines: Vec<String> = logs::read(data.path(), None).unwrap().into_iter().map(|l| l.text).collect();
        assert_eq!(lines, ["hello", "oops"]);
    }

    #[test]
    fn the_command_line_round_trips_and_bad_ones_are_named() {
        let watch = Watch {
            dirs: Dirs { data: "/var/lib/c/web".into(), run: "/run/c/web".into() },
            cgroup: "/berth/web".into(),
            log: LogPolicy { max_bytes: 4096, max_files: 3 },
            leased: false,
        };
        let args = watch.args(42, 5, 6);
        assert_eq!(Watch::parse(&args).unwrap(), (watch.clone(), 42, 5, 6));
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
        let leased = Watch { leased: true, ..watch };
        let args = leased.args(42, 5, 6);
        assert_eq!(args.last().map(|a| a.to_str()), Some(Some("leased")));
        assert_eq!(Watch::parse(&args).unwrap(), (leased, 42, 5, 6));
    }
}
