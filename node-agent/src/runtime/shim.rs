//! The shim: one single-threaded process per container, its parent for
//! life, in the manner of conmon and containerd's shims.
//!
//! ```text
//! agent ──spawn──▶ berth-shim DATA RUN ──libcontainer (clone)──▶ container init
//!   ▲  "ok PID" / "error …" on stdout │
//!   └──────────────────────────────── │ exec (same pid, children, pipes)
//!                                     ▼
//!                              berth-monitor: pipes ─▶ DATA/container.log,
//!                              waitpid ─▶ OOM count ─▶ release ─▶ DATA/exit.json
//! ```
//!
//! The shim runs in its own session and its own cgroup (beside the
//! containers', not in the agent's: `berth_monitor::cgroup::shim_path`), so
//! the agent, or its systemd unit, can die or restart while the container
//! runs on. libcontainer forks, so it is only ever called
//! here, never from the multi-threaded agent. Once the container runs the
//! shim execs the small monitor (see the `berth_monitor` crate).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::{chown, Gid, Uid};

use berth_monitor::{Watch, Watched};

use super::record::{self, ContainerConfig, Dirs, Exited, NetworkMode, Started, UserNamespace};
use super::userns::IdMap;
use super::{files, mounts, rootfs, spec};

/// Runs the container to its end. Reports on stdout first (`ok PID` once
/// it runs, or `error MESSAGE`), then supervises.
pub fn main(dirs: &Dirs) -> i32 {
    let _ = nix::unistd::setsid();
    // The container inherits ignored signals through exec (and a shell
    // cannot trap a signal ignored at its start), so every signal keeps its
    // default until the container exists; Rust ignores SIGPIPE at startup.
    let _ = set_default(Signal::SIGPIPE);
    let mut report = io::stdout();
    let started = start(dirs);
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE, Signal::SIGTERM] {
        let _ = berth_monitor::ignore(sig);
    }
    match started {
        Ok((watch, watched)) => {
            let _ = writeln!(report, "ok {}", watched.pid);
            let _ = report.flush();
            // The agent may be gone by now; our stdout must not hold it.
            let _ = redirect_stdout_to_null();
            let error = exec_monitor(&watch, &watched);
            eprintln!("berth-shim: {error}; supervising without the monitor");
            berth_monitor::supervise(&watch, watched, &mut berth_monitor::Kernel);
            0
        }
        Err(message) => {
            cleanup(dirs, None);
            let exited = Exited {
                code: 125,
                signal: None,
                oom_killed: false,
                finished_at_ms: record::now_ms(),
                error: Some(message.clone()),
            };
            let _ = record::write(&dirs.data, record::EXITED, &exited);
            let _ = writeln!(report, "error {message}");
            1
        }
    }
}

#[allow(unsafe_code)]
fn set_default(sig: Signal) -> nix::Result<SigHandler> {
    // SAFETY: SIG_DFL installs no handler code.
    unsafe { signal(sig, SigHandler::SigDfl) }
}

fn redirect_stdout_to_null() -> io::Result<()> {
    let null = File::options().write(true).open("/dev/null")?;
    nix::unistd::dup2(null.as_raw_fd(), 1).map(|_| ()).map_err(io::Error::from)
}

/// Replaces this process with `berth-monitor` (`BERTH_MONITOR`, or beside
/// this binary), handing over the output pipes; returns only if that fails.
fn exec_monitor(watch: &Watch, watched: &Watched) -> String {
    for fd in [&watched.stdout, &watched.stderr] {
        if let Err(e) = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())) {
            return format!("keeping the output pipes open across exec: {e}");
        }
    }
    let monitor = match (std::env::var_os("BERTH_MONITOR"), std::env::current_exe()) {
        (Some(path), _) => path.into(),
        (None, Ok(exe)) => exe.with_file_name("berth-monitor"),
        (None, Err(e)) => return format!("finding this binary: {e}"),
    };
    let args = watch.args(watched.pid, watched.stdout.as_raw_fd(), watched.stderr.as_raw_fd());
    let error = std::process::Command::new(&monitor).args(args).exec();
    format!("running {}: {error}", monitor.display())
}

fn start(dirs: &Dirs) -> Result<(Watch, Watched), String> {
    let path = dirs.data.join(record::CONFIG);
    let config: ContainerConfig = record::read(&dirs.data, record::CONFIG)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .ok_or_else(|| format!("{} is missing", path.display()))?;
    // Out of the agent's cgroup before anything forks, so that the
    // container and its monitor outlive the agent's systemd unit
    // (`berth_monitor::cgroup::shim_path`); the monitor removes it.
    let shim_cgroup = berth_monitor::cgroup::shim_path(&config.cgroup_path());
    berth_monitor::cgroup::Cgroups::detect().enter(&shim_cgroup, std::process::id());
    let etc = write_etc_files(&dirs.run, &config).map_err(|e| format!("writing /etc files: {e}"))?;
    let userns = user_namespace(dirs, &config)?;
    let held = match &userns {
        Some((path, ids)) => {
            Some((fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?, *ids))
        }
        None => None,
    };
    let rootfs = rootfs::mount_rootfs(dirs, &config.layers, held.as_ref().map(|(f, ids)| (f, *ids)))
        .map_err(|e| e.to_string())?;
    let sources = mounts::ready(dirs, &config, &rootfs, held.as_ref().map(|(f, _)| f))?;
    let read_etc = |name: &str| fs::read_to_string(rootfs.join("etc").join(name)).unwrap_or_default();
    let userns_path = userns.as_ref().map(|(path, _)| path.as_path());
    let files = files::targets(&config, &dirs.run);
    let host = spec::Host { rootfs: rootfs.clone(), etc, userns: userns_path, mounts: &sources, files: &files };
    let spec = spec::build(&config, &read_etc("passwd"), &read_etc("group"), &host).map_err(|e| e.to_string())?;
    let process = spec.process().as_ref().ok_or("the spec has no process")?;
    let path_var =
        process.env().iter().flatten().find_map(|v| v.strip_prefix("PATH=")).unwrap_or(spec::DEFAULT_PATH).to_owned();
    // The command's own (under an init, after `/dev/init --`).
    let first = if config.init_binary.is_some() { 2 } else { 0 };
    let arg0 = process.args().iter().flatten().nth(first).ok_or(spec::SpecError::NoCommand.to_string())?;
    rootfs::find_executable(&rootfs, arg0, &path_var)?;
    let bundle = dirs.run.join("bundle");
    fs::create_dir_all(&bundle).map_err(|e| format!("creating {}: {e}", bundle.display()))?;
    spec.save(bundle.join("config.json")).map_err(|e| format!("writing the runtime spec: {e}"))?;

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let null = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
    let mut container = ContainerBuilder::new(config.name.clone(), SyscallType::Linux)
        .with_root_path(dirs.libcontainer())
        .map_err(|e| format!("libcontainer root: {e}"))?
        .with_executor(DefaultExecutor {})
        .with_stdin(null)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating the container: {}", crate::error_chain(&e)))?;
    container.start().map_err(|e| format!("starting the container: {}", crate::error_chain(&e)))?;
    let pid = container.pid().ok_or("the container has no pid")?.as_raw();
    let me = std::process::id() as i32;
    let started = Started {
        shim_pid: me,
        shim_start: record::process_start(me).unwrap_or(0),
        pid,
        started_at_ms: record::now_ms(),
    };
    record::write(&dirs.data, record::STARTED, &started).map_err(|e| format!("writing {}: {e}", record::STARTED))?;
    let leased = config.overrides.options.exclusive();
    let watch = Watch { dirs: dirs.clone(), cgroup: config.cgroup_path(), log: config.log, leased };
    Ok((watch, Watched { pid, stdout: out_r, stderr: err_r }))
}

/// The container's user namespace and its ids, if it has one of its own:
/// made now in its run directory, or the one made with its task's network
/// namespace. Its run directory and /etc files become its root's.
fn user_namespace(dirs: &Dirs, config: &ContainerConfig) -> Result<Option<(PathBuf, IdMap)>, String> {
    let (path, ids) = match &config.userns {
        UserNamespace::Host => return Ok(None),
        UserNamespace::Auto => return Err("its user namespace has no ids: it was recorded without a claim".into()),
        UserNamespace::Own(ids) => {
            let path = dirs.run.join("userns");
            crate::namespaces::user(&path, *ids).map_err(|e| e.to_string())?;
            (path, *ids)
        }
        UserNamespace::Joined { path, ids } => (path.clone(), *ids),
    };
    reachable(&dirs.run, ids)?;
    if let NetworkMode::Joined { netns, .. } = &config.network {
        reachable(netns, ids)?;
    }
    let (uid, gid) = (Some(Uid::from_raw(ids.host_id)), Some(Gid::from_raw(ids.host_id)));
    for owned in
        [dirs.run.clone(), dirs.run.join("etc")].into_iter().chain(ETC_FILES.map(|f| dirs.run.join("etc").join(f)))
    {
        chown(&owned, uid, gid).map_err(|e| format!("handing {} to the container's root: {e}", owned.display()))?;
    }
    Ok(Some((path, ids)))
}

/// A container with its own ids sets up its root (and joins its network
/// namespace) as its unprivileged root: every directory above its run dir
/// (and above its network namespace's file) must let others through.
fn reachable(path: &Path, ids: IdMap) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for dir in path.ancestors().skip(1) {
        let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if meta.mode() & 0o001 == 0 {
            return Err(format!(
                "{} is mode {:o}: a container with its own ids reaches its rootfs as host id {}, so every directory above the agent's run dir must be searchable by others (0711 or 0755)",
                dir.display(),
                meta.mode() & 0o777,
                ids.host_id
            ));
        }
    }
    Ok(())
}

/// Releases what the container held on the host: its processes, cgroup
/// and libcontainer state (through libcontainer), the rootfs mount and the
/// run directory. For a container that failed to start or whose shim died.
pub fn cleanup(dirs: &Dirs, container: Option<&mut Container>) {
    match container {
        Some(c) => {
            let _ = c.delete(true);
        }
        None => {
            if let Some(name) = fs::read_dir(dirs.libcontainer()).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()) {
                if let Ok(mut c) = Container::load(name.path()) {
                    let _ = c.delete(true);
                }
            }
        }
    }
    let _ = berth_monitor::remove_run_dir(dirs);
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))
}

/// The files under `RUN/etc` the container sees in its /etc.
const ETC_FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` for the container.
fn write_etc_files(run: &Path, config: &ContainerConfig) -> io::Result<spec::EtcFiles> {
    let etc = run.join("etc");
    fs::create_dir_all(&etc)?;
    let host = config.hostname();
    let [hostname, hosts, resolv_conf] = ETC_FILES.map(|f| etc.join(f));
    let files = spec::EtcFiles { hostname, hosts, resolv_conf };
    fs::write(&files.hostname, format!("{host}\n"))?;
    let own = match &config.network {
        NetworkMode::Joined { address, .. } => address.to_string(),
        _ => "127.0.1.1".to_owned(),
    };
    fs::write(&files.hosts, super::etc::hosts(&host, &own, &config.overrides.options))?;
    let resolv = match &config.network {
        NetworkMode::Host => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        NetworkMode::Joined { resolv_conf: Some(text), .. } => text.clone(),
        // The host's resolvers, less those on its loopback, which the
        // container cannot reach.
        NetworkMode::Joined { resolv_conf: None, .. } => fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .lines()
            .filter(|l| !(l.starts_with("nameserver") && (l.contains(" 127.") || l.contains(" ::1"))))
            .map(|l| format!("{l}\n"))
            .collect(),
        NetworkMode::None => String::new(),
    };
    fs::write(&files.resolv_conf, super::etc::resolv_conf(&resolv, &config.overrides.options))?;
    Ok(files)
}
