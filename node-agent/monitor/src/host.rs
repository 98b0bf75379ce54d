//! The monitor's kernel edge, narrow so that its order of work can be
//! tested with a fake: reap the init, read and remove its cgroup, unmount
//! and remove the run directory. [`Kernel`] is the real one.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::cgroup::Cgroups;
use crate::record::Dirs;

pub trait Host {
    /// Waits for the process to end: its exit code (128 + signal when a
    /// signal ended it) and the signal.
    fn reap(&mut self, pid: i32) -> (i32, Option<i32>);
    /// The same without waiting: none while it runs.
    fn try_reap(&mut self, pid: i32) -> Option<(i32, Option<i32>)>;
    fn oom_kills(&self, cgroup: &str) -> u64;
    fn remove_cgroup(&mut self, cgroup: &str) -> io::Result<()>;
    /// Leaves the shim's cgroup of the container whose cgroup is `cgroup`
    /// (for the root) and removes it (`cgroup::shim_path`).
    fn leave_shim_cgroup(&mut self, cgroup: &str) -> io::Result<()>;
    fn remove_run_dir(&mut self, dirs: &Dirs) -> io::Result<()>;
}

/// This host's kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel;

impl Host for Kernel {
    fn reap(&mut self, pid: i32) -> (i32, Option<i32>) {
        loop {
            match waitpid(Pid::from_raw(pid), None) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(WaitStatus::Exited(_, code)) => return (code, None),
                Ok(WaitStatus::Signaled(_, sig, _)) => return (128 + sig as i32, Some(sig as i32)),
                _ => return (255, None),
            }
        }
    }

    fn try_reap(&mut self, pid: i32) -> Option<(i32, Option<i32>)> {
        loop {
            match waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(WaitStatus::StillAlive) => return None,
                Ok(WaitStatus::Exited(_, code)) => return Some((code, None)),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Some((128 + sig as i32, Some(sig as i32))),
                _ => return Some((255, None)),
            }
        }
    }

    fn oom_kills(&self, cgroup: &str) -> u64 {
        Cgroups::detect().usage(cgroup).oom_kills
    }

    fn remove_cgroup(&mut self, cgroup: &str) -> io::Result<()> {
        Cgroups::detect().remove(cgroup)
    }

    fn leave_shim_cgroup(&mut self, cgroup: &str) -> io::Result<()> {
        let cgroups = Cgroups::detect();
        cgroups.enter("/", std::process::id());
        cgroups.remove(&crate::cgroup::shim_path(cgroup))
    }

    fn remove_run_dir(&mut self, dirs: &Dirs) -> io::Result<()> {
        remove_run_dir(dirs)
    }
}

/// Unmounts `RUN/rootfs` while anything is mounted there (mounts may be
/// stacked).
pub fn unmount_rootfs(dirs: &Dirs) -> io::Result<()> {
    unmount(&dirs.rootfs())
}

/// Unmounts `path` while anything is mounted there (mounts may be
/// stacked: a rootfs mounted twice, a namespace file bound again over
/// one left behind); a path with nothing mounted, or none, is fine.
pub fn unmount(path: &Path) -> io::Result<()> {
    for _ in 0..8 {
        if !is_mount_point(path)? {
            return Ok(());
        }
        umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| io::Error::other(format!("unmounting {}: {e}", path.display())))?;
    }
    Err(io::Error::other(format!("{} is still mounted after 8 unmounts", path.display())))
}

/// Unmounts the rootfs and whatever else is mounted in the run directory
/// (a container's idmapped layers and user namespace), then removes it.
/// Never deletes through a live mount: that would empty the container's
/// writable layer, or an image's layer.
pub fn remove_run_dir(dirs: &Dirs) -> io::Result<()> {
    unmount_rootfs(dirs)?;
    unmount_under(&dirs.run)?;
    if is_mount_point(&dirs.rootfs())? {
        return Err(io::Error::other(format!("{} is mounted; not removing it", dirs.rootfs().display())));
    }
    match fs::remove_dir_all(&dirs.run) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Unmounts every mount below `dir`, deepest first, and checks none is left.
fn unmount_under(dir: &Path) -> io::Result<()> {
    let dir = match fs::canonicalize(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for _ in 0..8 {
        let mut under: Vec<PathBuf> =
            mount_points()?.into_iter().filter(|p| p.starts_with(&dir) && *p != dir).collect();
        if under.is_empty() {
            return Ok(());
        }
        under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for path in under {
            match umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(io::Error::other(format!("unmounting {}: {e}", path.display()))),
            }
        }
    }
    Err(io::Error::other(format!("mounts are left under {} after 8 rounds of unmounting", dir.display())))
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
    Ok(mount_points()?.contains(&target))
}

/// Where things are mounted, from the mount table (its octal escapes
/// decoded).
fn mount_points() -> io::Result<Vec<PathBuf>> {
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape(p))).collect())
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
}
