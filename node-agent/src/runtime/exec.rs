//! A command run inside a running container, as `docker exec` runs one:
//! `berth-agent exec`, and the exec probes of health checks.
//!
//! ```text
//! agent ──spawn──▶ berth-shim --exec TIMEOUT_MS DATA RUN -- ARGS…
//!                    │ libcontainer tenant: the container's namespaces, cgroup,
//!                    │ user, groups, capabilities, no_new_privs, cwd and env
//!                    ▼
//!                  ARGS (its child) ── stdout and stderr ──▶ the helper's stdout
//! ```
//!
//! libcontainer forks, so the tenant is made in a helper process of its
//! own (the berth-shim binary), never in the multi-threaded agent. The
//! helper waits for the command (a pidfd, polled with the timeout),
//! SIGKILLs it when the time is up, and exits with its code (128 + the
//! signal when killed). The helper's own failures go to its stderr with
//! [`HELPER_FAILED`] or [`TIMED_OUT`] as its code.
//!
//! One difference from the container's own process: libcontainer 0.7's
//! tenant does not carry the container's seccomp filter over (it rebuilds
//! the spec's `linux` section with namespaces and cgroups only).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::process::Stdio;
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::record::{self, ContainerConfig, Dirs};
use super::{Runtime, RuntimeError, Status};

/// The helper's code when its command outlived the timeout (as timeout(1)).
pub const TIMED_OUT: i32 = 124;
/// The helper's code when it could not run the command.
pub const HELPER_FAILED: i32 = 125;

/// How a command run in a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code (128 + signal when a signal ended it).
    pub code: i32,
    /// Its stdout and stderr together, at most `keep` bytes of it.
    pub output: String,
}

impl Runtime {
    /// Runs `args` in the running container `name`, waiting at most
    /// `timeout` for it; keeps at most `keep` bytes of its output. Err when
    /// it could not be run or timed out.
    pub async fn exec(
        &self,
        name: &str,
        args: &[String],
        timeout: Duration,
        keep: usize,
    ) -> Result<ExecOutput, RuntimeError> {
        let fail = |message: String| RuntimeError::Other { name: name.into(), message };
        if !matches!(self.get(name)?.status, Status::Running(_)) {
            return Err(fail("is not running".into()));
        }
        let mut child = self
            .exec_command(name, args, timeout)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("running {}: {e}", self.shim.display())))?;
        let output = tokio::spawn(read_bounded(child.stdout.take(), keep));
        let helper = tokio::spawn(read_bounded(child.stderr.take(), keep));
        // The helper enforces the timeout; this only bounds a helper that hangs.
        let code = match tokio::time::timeout(timeout + Duration::from_secs(10), child.wait()).await {
            Ok(Ok(status)) => status.code().unwrap_or(-1),
            ended => {
                output.abort();
                helper.abort();
                return Err(fail(match ended {
                    Ok(Err(e)) => format!("waiting for the exec helper: {e}"),
                    _ => format!("the exec helper did not return within {timeout:?}"),
                }));
            }
        };
        // What it left running in the container may hold the pipe open: its
        // output is what came by shortly after it ended.
        let collected = |read: tokio::task::JoinHandle<String>| async move {
            let abort = read.abort_handle();
            let said = tokio::time::timeout(Duration::from_millis(200), read).await;
            abort.abort();
            said.ok().and_then(Result::ok).unwrap_or_default()
        };
        let (output, helper) = tokio::join!(collected(output), collected(helper));
        let helper = helper.trim();
        match code {
            TIMED_OUT if !helper.is_empty() => Err(fail(helper.to_owned())),
            HELPER_FAILED if !helper.is_empty() => Err(fail(format!("exec: {helper}"))),
            code => Ok(ExecOutput { code, output }),
        }
    }

    /// The helper's command line, for `args` in container `name`.
    pub fn exec_command(&self, name: &str, args: &[String], timeout: Duration) -> tokio::process::Command {
        let dirs = self.dirs(name);
        let mut command = tokio::process::Command::new(&self.shim);
        command.arg("--exec").arg(timeout.as_millis().to_string()).arg(&dirs.data).arg(&dirs.run).arg("--");
        command.args(args);
        command
    }
}

/// At most `keep` bytes of `pipe` (the rest is read and dropped, so the
/// writer never blocks).
async fn read_bounded(pipe: Option<impl AsyncRead + Unpin + Send>, keep: usize) -> String {
    let Some(mut pipe) = pipe else { return String::new() };
    let (mut kept, mut buf) = (Vec::new(), [0u8; 4096]);
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = keep.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&buf[..room]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The helper (`berth-shim --exec`): runs `args` in the container of
/// `dirs`, returns the code to exit with.
pub fn main(dirs: &Dirs, timeout: Duration, args: Vec<String>) -> i32 {
    match run(dirs, timeout, args) {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("{message}");
            code
        }
    }
}

fn run(dirs: &Dirs, timeout: Duration, args: Vec<String>) -> Result<i32, (i32, String)> {
    let failed = |message: String| (HELPER_FAILED, message);
    if args.is_empty() {
        return Err(failed("no command to run".into()));
    }
    let config: ContainerConfig = record::read(&dirs.data, record::CONFIG)
        .map_err(|e| failed(format!("reading its config: {e}")))?
        .ok_or_else(|| failed("no such container".into()))?;
    // Into the container's cgroups where libcontainer will not put the
    // command (systemd's hierarchies on v1 and hybrid hosts), as the
    // container's own processes are.
    if let Ok(Some(started)) = record::read::<record::Started>(&dirs.data, record::STARTED) {
        let cgroups = berth_monitor::cgroup::Cgroups::detect();
        cgroups.join_tracking(started.pid as u32, std::process::id());
    }
    let bundle = dirs.run.join("bundle").join("config.json");
    let spec = Spec::load(&bundle).map_err(|e| failed(format!("{} (is it running?): {e}", bundle.display())))?;
    let process = spec.process().as_ref().ok_or_else(|| failed("its spec has no process".into()))?;
    let user = process.user();
    let null = File::open("/dev/null").map_err(|e| failed(format!("opening /dev/null: {e}")))?;
    let out = std::io::stdout().as_fd().try_clone_to_owned().map_err(|e| failed(format!("stdout: {e}")))?;
    let err = out.try_clone().map_err(|e| failed(format!("stdout: {e}")))?;
    let pid = ContainerBuilder::new(config.name.clone(), SyscallType::Linux)
        .with_root_path(dirs.libcontainer())
        .map_err(|e| failed(format!("libcontainer root: {e}")))?
        .with_stdin(null)
        .with_stdout(out)
        .with_stderr(err)
        .as_tenant()
        .with_container_args(args)
        .with_user(Some(user.uid()))
        .with_group(Some(user.gid()))
        .with_additional_gids(user.additional_gids().clone().unwrap_or_default())
        .with_cwd(Some(process.cwd()))
        .build()
        .map_err(|e| failed(crate::error_chain(&e)))?;
    wait(pid, timeout)
}

/// Waits for `pid` (our child) at most `timeout`, then kills it.
fn wait(pid: Pid, timeout: Duration) -> Result<i32, (i32, String)> {
    if !exited_within(pid, timeout).map_err(|e| (HELPER_FAILED, format!("watching the command: {e}")))? {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err((TIMED_OUT, format!("timed out after {timeout:?}")));
    }
    match waitpid(pid, None) {
        Ok(WaitStatus::Exited(_, code)) => Ok(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => Ok(128 + signal as i32),
        Ok(other) => Err((HELPER_FAILED, format!("the command ended oddly: {other:?}"))),
        Err(e) => Err((HELPER_FAILED, format!("waiting for the command: {e}"))),
    }
}

/// Whether `pid` ends within `timeout`, by polling its pidfd (Linux 5.3).
#[allow(unsafe_code)]
fn exited_within(pid: Pid, timeout: Duration) -> std::io::Result<bool> {
    let fd = super::pidfd::open(pid.as_raw())?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, for the call's duration.
        match unsafe { libc::poll(&mut poll, 1, ms) } {
            n if n > 0 => return Ok(true),
            0 => return Ok(false),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}
