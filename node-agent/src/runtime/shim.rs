//! The shim: one small single-threaded process per container, its parent
//! for life, in the manner of conmon and containerd's shims.
//!
//! ```text
//! agent ──spawn──▶ berth-shim DIR ──libcontainer (clone)──▶ container init
//!   ▲  "ok PID" / "error …" on stdout │ poll stdout/stderr pipes ─▶ DIR/container.log
//!   └──────────────────────────────── │ waitpid ─▶ cgroup OOM count ─▶ delete cgroup,
//!                                     │            unmount rootfs ─▶ DIR/exit.json
//! ```
//!
//! The shim runs in its own session, so the agent can die or restart while
//! the container runs on. libcontainer forks, so it is only ever called
//! here, never from the multi-threaded agent.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::cgroup::Cgroups;
use super::logs::{LogWriter, Stream};
use super::record::{self, ContainerConfig, Exited, NetworkMode, Started};
use super::{rootfs, spec};

/// Runs the container in `dir` to its end. Reports on stdout first
/// (`ok PID` once it runs, or `error MESSAGE`), then supervises.
pub fn main(dir: &Path) -> i32 {
    let _ = nix::unistd::setsid();
    // The container inherits ignored signals through exec (and a shell
    // cannot trap a signal ignored at its start), so every signal keeps its
    // default until the container exists; Rust ignores SIGPIPE at startup.
    let _ = set_disposition(Signal::SIGPIPE, SigHandler::SigDfl);
    let mut report = io::stdout();
    let started = start(dir);
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE, Signal::SIGTERM] {
        let _ = set_disposition(sig, SigHandler::SigIgn);
    }
    match started {
        Ok(running) => {
            let _ = writeln!(report, "ok {}", running.pid);
            let _ = report.flush();
            // The agent may be gone by now; our stdout must not hold it.
            let _ = redirect_stdout_to_null();
            supervise(dir, running)
        }
        Err(message) => {
            cleanup(dir, None);
            let exited = Exited {
                code: 125,
                signal: None,
                oom_killed: false,
                finished_at_ms: record::now_ms(),
                error: Some(message.clone()),
            };
            let _ = record::write(dir, record::EXITED, &exited);
            let _ = writeln!(report, "error {message}");
            1
        }
    }
}

#[allow(unsafe_code)]
fn set_disposition(sig: Signal, how: SigHandler) -> nix::Result<SigHandler> {
    // SAFETY: SIG_IGN and SIG_DFL install no handler code.
    unsafe { signal(sig, how) }
}

fn redirect_stdout_to_null() -> io::Result<()> {
    let null = File::options().write(true).open("/dev/null")?;
    nix::unistd::dup2(null.as_raw_fd(), 1).map(|_| ()).map_err(io::Error::from)
}

struct Running {
    config: ContainerConfig,
    container: Container,
    pid: i32,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

fn start(dir: &Path) -> Result<Running, String> {
    let config: ContainerConfig = record::read(dir, record::CONFIG)
        .map_err(|e| format!("reading {}: {e}", dir.join(record::CONFIG).display()))?
        .ok_or_else(|| format!("{} is missing", dir.join(record::CONFIG).display()))?;
    let etc = write_etc_files(dir, &config).map_err(|e| format!("writing /etc files: {e}"))?;
    let rootfs = rootfs::mount_rootfs(dir, &config.layers).map_err(|e| e.to_string())?;
    let read_etc = |name: &str| fs::read_to_string(rootfs.join("etc").join(name)).unwrap_or_default();
    let spec = spec::build(&config, &read_etc("passwd"), &read_etc("group"), rootfs.clone(), &etc)
        .map_err(|e| e.to_string())?;
    let process = spec.process().as_ref().ok_or("the spec has no process")?;
    let path_var =
        process.env().iter().flatten().find_map(|v| v.strip_prefix("PATH=")).unwrap_or(spec::DEFAULT_PATH).to_owned();
    let arg0 = process.args().iter().flatten().next().ok_or(spec::SpecError::NoCommand.to_string())?;
    rootfs::find_executable(&rootfs, arg0, &path_var)?;
    let bundle = dir.join("bundle");
    fs::create_dir_all(&bundle).map_err(|e| format!("creating {}: {e}", bundle.display()))?;
    spec.save(bundle.join("config.json")).map_err(|e| format!("writing the runtime spec: {e}"))?;

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let null = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
    let mut container = ContainerBuilder::new(config.name.clone(), SyscallType::Linux)
        .with_root_path(dir.join("runtime"))
        .map_err(|e| format!("libcontainer root: {e}"))?
        .with_executor(DefaultExecutor {})
        .with_stdin(null)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating the container: {}", chain(&e)))?;
    container.start().map_err(|e| format!("starting the container: {}", chain(&e)))?;
    let pid = container.pid().ok_or("the container has no pid")?.as_raw();
    let me = std::process::id() as i32;
    let started = Started {
        shim_pid: me,
        shim_start: record::process_start(me).unwrap_or(0),
        pid,
        started_at_ms: record::now_ms(),
    };
    record::write(dir, record::STARTED, &started).map_err(|e| format!("writing {}: {e}", record::STARTED))?;
    Ok(Running { config, container, pid, stdout: out_r, stderr: err_r })
}

fn supervise(dir: &Path, mut running: Running) -> i32 {
    let mut log = LogWriter::open(dir, running.config.log).ok();
    copy_output(&mut log, &running.stdout, &running.stderr);
    let status = loop {
        match waitpid(Pid::from_raw(running.pid), None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    let (code, signal) = match status {
        Ok(WaitStatus::Exited(_, code)) => (code, None),
        Ok(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let cgroup = format!("/{}/{}", running.config.cgroup_parent.trim_matches('/'), running.config.name);
    let oom_killed = Cgroups::detect().usage(&cgroup).oom_kills > 0;
    cleanup(dir, Some(&mut running.container));
    let exited = Exited { code, signal, oom_killed, finished_at_ms: record::now_ms(), error: None };
    let _ = record::write(dir, record::EXITED, &exited);
    0
}

/// Copies both pipes into the log until both reach end of file, which
/// happens when every process of the container's PID namespace is gone.
fn copy_output(log: &mut Option<LogWriter>, stdout: &OwnedFd, stderr: &OwnedFd) {
    let mut open = [true, true];
    let mut buf = vec![0u8; 64 * 1024];
    let streams = [Stream::Stdout, Stream::Stderr];
    let fds = [stdout, stderr];
    while open.iter().any(|o| *o) {
        let mut polled: Vec<(usize, PollFd)> =
            (0..2).filter(|&i| open[i]).map(|i| (i, PollFd::new(fds[i].as_fd(), PollFlags::POLLIN))).collect();
        let mut pfds: Vec<PollFd> = polled.iter().map(|(_, p)| *p).collect();
        match poll(&mut pfds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
            Ok(_) => {}
        }
        for ((i, _), p) in polled.iter_mut().zip(&pfds) {
            if p.revents().is_some_and(|r| !r.is_empty()) {
                match nix::unistd::read(fds[*i].as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => {
                        open[*i] = false;
                        if let Some(l) = log.as_mut() {
                            let _ = l.finish(streams[*i]);
                        }
                    }
                    Ok(n) => {
                        if let Some(l) = log.as_mut() {
                            let _ = l.write(streams[*i], &buf[..n]);
                        }
                    }
                }
            }
        }
    }
}

/// Releases what the container held on the host: its cgroup and
/// libcontainer state (through libcontainer), and the rootfs mount.
pub fn cleanup(dir: &Path, container: Option<&mut Container>) {
    match container {
        Some(c) => {
            let _ = c.delete(true);
        }
        None => {
            if let Some(name) = fs::read_dir(dir.join("runtime")).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()) {
                if let Ok(mut c) = Container::load(name.path()) {
                    let _ = c.delete(true);
                }
            }
        }
    }
    let _ = rootfs::unmount_rootfs(dir);
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out = format!("{out}: {c}");
        cause = c.source();
    }
    out
}

/// `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` for the container.
fn write_etc_files(dir: &Path, config: &ContainerConfig) -> io::Result<spec::EtcFiles> {
    let etc = dir.join("etc");
    fs::create_dir_all(&etc)?;
    let host: String = config.name.chars().take(63).collect();
    let files = spec::EtcFiles {
        hostname: etc.join("hostname"),
        hosts: etc.join("hosts"),
        resolv_conf: etc.join("resolv.conf"),
    };
    fs::write(&files.hostname, format!("{host}\n"))?;
    fs::write(
        &files.hosts,
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{host}\n"),
    )?;
    let resolv = match config.network {
        NetworkMode::Host => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        NetworkMode::None => String::new(),
    };
    fs::write(&files.resolv_conf, resolv)?;
    Ok(files)
}
