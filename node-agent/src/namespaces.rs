//! Namespaces kept at files with no process in them, as `ip netns` keeps
//! network namespaces: a short-lived `cat` is started inside new
//! namespaces (it unshares them, after joining an owning user namespace
//! when one is given), its `/proc/PID/ns/*` file is bind-mounted at the
//! path, and its stdin closed.
//!
//! A task with its own user namespace needs its network namespace made
//! inside that user namespace: a process that has joined a user namespace
//! may only join, and mount sysfs for, network namespaces its user
//! namespace owns. So the two are made here, in that order, and the
//! container joins both by path.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::runtime::userns::IdMap;

/// Makes a user namespace whose ids 0..size are host ids host_id.., kept at `path`.
pub fn user(path: &Path, ids: IdMap) -> io::Result<()> {
    let enter = || unshare(CloneFlags::CLONE_NEWUSER).map_err(io::Error::from);
    keep(path, "user", enter, |pid| {
        // As root outside it: no setgroups "deny" needed, and any host ids.
        fs::write(format!("/proc/{pid}/uid_map"), ids.proc_line())?;
        fs::write(format!("/proc/{pid}/gid_map"), ids.proc_line())
    })
}

/// Makes a network namespace kept at `path`, owned by the user namespace
/// kept at `owner` when one is given (else by the agent's).
pub fn net(path: &Path, owner: Option<&Path>) -> io::Result<()> {
    let owner = owner.map(fs::File::open).transpose()?;
    let enter = move || {
        if let Some(user) = &owner {
            setns(user, CloneFlags::CLONE_NEWUSER)?;
        }
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
    };
    keep(path, "net", enter, |_| Ok(()))
}

/// Undoes [`user`] or [`net`]: the namespace goes once nothing else holds
/// it. Mounts stacked at the path (a make retried over one that was not
/// undone) come off one by one.
pub fn remove(path: &Path) -> io::Result<()> {
    berth_monitor::unmount(path)?;
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Starts a holder that runs `enter` before it execs, lets `setup` work
/// on it by pid, then binds its `kind` namespace at `path`.
fn keep(
    path: &Path,
    kind: &str,
    enter: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
    setup: impl FnOnce(u32) -> io::Result<()>,
) -> io::Result<()> {
    remove(path)?;
    fs::File::create(path)?;
    let mut holder = Command::new("cat");
    holder.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: `enter` only makes syscalls (unshare, setns) between fork and
    // exec; it allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        holder.pre_exec(enter);
    }
    let made = holder.spawn().and_then(|mut child| {
        let pid = child.id();
        let source = format!("/proc/{pid}/ns/{kind}");
        let done = setup(pid).and_then(|()| {
            mount(Some(source.as_str()), path, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(io::Error::from)
        });
        drop(child.stdin.take());
        let _ = child.wait();
        done
    });
    if made.is_err() {
        let _ = fs::remove_file(path);
    }
    made.map_err(|e| io::Error::new(e.kind(), format!("making the {kind} namespace {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root, as the agent does.
    #[test]
    fn a_network_namespace_made_inside_a_user_namespace_is_owned_by_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (user_ns, net_ns) = (dir.path().join("user"), dir.path().join("net"));
        let ids = IdMap { host_id: 3_000_000_000, size: 65536 };
        user(&user_ns, ids).unwrap();
        net(&net_ns, Some(&user_ns)).unwrap();
        // Root inside the user namespace may configure a network namespace
        // only if its user namespace owns it.
        let as_its_root = |net: &Path, args: &[&str]| {
            Command::new("nsenter")
                .arg(format!("--user={}", user_ns.display()))
                .arg(format!("--net={}", net.display()))
                .args(args)
                .output()
                .unwrap()
        };
        let map = as_its_root(&net_ns, &["cat", "/proc/self/uid_map"]);
        let map: Vec<String> = String::from_utf8_lossy(&map.stdout).split_whitespace().map(str::to_owned).collect();
        assert_eq!(map, ["0", "3000000000", "65536"]);
        let up = as_its_root(&net_ns, &["ip", "link", "set", "lo", "up"]);
        assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
        let plain = dir.path().join("plain");
        net(&plain, None).unwrap();
        let refused = as_its_root(&plain, &["ip", "link", "set", "lo", "up"]);
        assert!(!refused.status.success(), "a network namespace of the host's user namespace is not its to change");
        // Made again over itself, the old one does not stay mounted beneath.
        net(&plain, None).unwrap();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(mounts.matches(plain.to_str().unwrap()).count(), 1, "{mounts}");
        for p in [&net_ns, &plain, &user_ns] {
            remove(p).unwrap();
            assert!(!p.exists());
        }
        remove(&plain).unwrap();
    }
}
