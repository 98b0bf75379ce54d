//! A container's cgroup after libcontainer made it: memory and CPU usage,
//! whether the kernel's OOM killer struck, and removal once it is empty.
//! libcontainer creates the cgroup and applies limits; this is the part a
//! monitor needs without linking libcontainer.
//!
//! | what      | cgroup v1 (legacy/hybrid)                  | cgroup v2                  |
//! |-----------|--------------------------------------------|----------------------------|
//! | memory    | memory/PATH/memory.usage_in_bytes          | PATH/memory.current        |
//! | OOM kills | memory/PATH/memory.oom_control `oom_kill`  | PATH/memory.events `oom_kill` |
//! | CPU time  | cpuacct/PATH/cpuacct.usage (ns)            | PATH/cpu.stat `usage_usec` |
//!
//! The root is a parameter, so tests point it at a temp dir for both.

use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    pub root: PathBuf,
    pub version: Version,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: u64,
    pub cpu_ns: u64,
    pub oom_kills: u64,
}

impl Cgroups {
    /// The host's hierarchy: v2 only when /sys/fs/cgroup itself is cgroup2
    /// (unified); hybrid hosts keep their controllers on v1, as libcgroups
    /// also decides.
    pub fn detect() -> Self {
        let root = PathBuf::from("/sys/fs/cgroup");
        let unified = nix::sys::statfs::statfs(&root)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
        Self { root, version: if unified { Version::V2 } else { Version::V1 } }
    }

    /// The directory of the cgroup at `path` in each hierarchy.
    fn dirs(&self, path: &str) -> std::io::Result<Vec<PathBuf>> {
        let rel = path.trim_start_matches('/');
        Ok(match self.version {
            Version::V2 => vec![self.root.join(rel)],
            // v1 mounts one hierarchy per controller (or group of them)
            // under the root, systemd's own (name=systemd, and on hybrid
            // hosts the unified one) among them; aliases such as cpu ->
            // cpu,cpuacct repeat one.
            Version::V1 => fs::read_dir(&self.root)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .map(|p| p.join(rel))
                .collect(),
        })
    }

    /// Moves process `pid` into the cgroup at `path` in every hierarchy
    /// that takes it, making the cgroup where it is missing; answers how
    /// many did. A hierarchy that refuses (a v1 cpuset with no CPUs of its
    /// own) keeps the process where it was, and loses the cgroup made for it.
    pub fn enter(&self, path: &str, pid: u32) -> usize {
        let mut entered = 0;
        for dir in self.dirs(path).unwrap_or_default() {
            let made = !dir.exists() && fs::create_dir_all(&dir).is_ok();
            match fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                Ok(()) => entered += 1,
                Err(_) if made => {
                    let _ = fs::remove_dir(&dir);
                }
                Err(_) => {}
            }
        }
        entered
    }

    /// Moves `pid` into the cgroups that process `of` is in, in the
    /// hierarchies without resource controllers: systemd's named one
    /// (`name=systemd`) and, on a hybrid host, the unified one. libcontainer
    /// joins a process to a container's cgroups in the hierarchies it
    /// manages; in these a process it joins would stay where it was (an
    /// exec'd command in the agent's cgroup, outside the container's
    /// cgroup namespace). On a v2 host libcontainer manages the one
    /// hierarchy: nothing to do. Answers how many it joined.
    pub fn join_tracking(&self, of: u32, pid: u32) -> usize {
        if self.version == Version::V2 {
            return 0;
        }
        let text = fs::read_to_string(format!("/proc/{of}/cgroup")).unwrap_or_default();
        tracking_dirs(&text)
            .into_iter()
            .filter(|(hierarchy, path)| {
                let dir = self.root.join(hierarchy).join(path.trim_start_matches('/'));
                fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok()
            })
            .count()
    }

    /// Removes the (empty) cgroup at `path` from every hierarchy that has
    /// it; one that is already gone is not an error. Goes through every
    /// hierarchy even when one fails, and returns the first failure.
    pub fn remove(&self, path: &str) -> std::io::Result<()> {
        let mut first_error = None;
        for dir in self.dirs(path)? {
            if let Err(e) = remove_dir(&dir) {
                first_error.get_or_insert(std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Usage of the cgroup at `path` (as in the runtime spec, `/parent/name`);
    /// missing files read as zero (the cgroup may already be gone).
    pub fn usage(&self, path: &str) -> Usage {
        let rel = path.trim_start_matches('/');
        match self.version {
            Version::V1 => Usage {
                memory_bytes: read_u64(&self.root.join("memory").join(rel).join("memory.usage_in_bytes")),
                cpu_ns: read_u64(&self.root.join("cpuacct").join(rel).join("cpuacct.usage")),
                oom_kills: read_key(&self.root.join("memory").join(rel).join("memory.oom_control"), "oom_kill"),
            },
            Version::V2 => {
                let dir = self.root.join(rel);
                Usage {
                    memory_bytes: read_u64(&dir.join("memory.current")),
                    cpu_ns: read_key(&dir.join("cpu.stat"), "usage_usec").saturating_mul(1000),
                    oom_kills: read_key(&dir.join("memory.events"), "oom_kill"),
                }
            }
        }
    }
}

/// From a v1 or hybrid host's `/proc/PID/cgroup`, the hierarchies with no
/// resource controllers (their directory under the root) and the path in
/// each: `N:name=systemd:/x` -> (`systemd`, `/x`), `0::/x` -> (`unified`, `/x`).
fn tracking_dirs(proc_cgroup: &str) -> Vec<(String, String)> {
    proc_cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hierarchy = match controllers {
                "" => "unified",
                named => named.strip_prefix("name=")?,
            };
            Some((hierarchy.to_owned(), path.to_owned()))
        })
        .collect()
}

/// The cgroup a container's shim, then its monitor, lives in: beside its
/// parent, `/PARENT/NAME` -> `/PARENT-shims/NAME`. Not the agent's (under
/// systemd, its unit's): stopping or restarting the agent's unit kills
/// every process in the unit's cgroup, and a monitor killed leaves its
/// container unwatched and its output unread. Nor the container's own:
/// its limits and usage are the container's alone.
pub fn shim_path(container: &str) -> String {
    match container.trim_matches('/').rsplit_once('/') {
        Some((parent, name)) => format!("/{parent}-shims/{name}"),
        None => format!("/shims/{}", container.trim_matches('/')),
    }
}

/// rmdir, retried briefly: the kernel may still be releasing the last
/// task of a cgroup when its owner has been reaped.
fn remove_dir(dir: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn read_key(path: &Path, key: &str) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: PathBuf, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn v1_files_are_read_per_controller() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        put(r.join("memory/berth/c1/memory.usage_in_bytes"), "4096\n");
        put(r.join("memory/berth/c1/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
        put(r.join("cpuacct/berth/c1/cpuacct.usage"), "1500000\n");
        let cg = Cgroups { root: r.to_path_buf(), version: Version::V1 };
        assert_eq!(cg.usage("/berth/c1"), Usage { memory_bytes: 4096, cpu_ns: 1_500_000, oom_kills: 2 });
    }

    #[test]
    fn v2_files_are_read_from_one_directory() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        put(r.join("berth/c1/memory.current"), "8192\n");
        put(r.join("berth/c1/memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n");
        put(r.join("berth/c1/cpu.stat"), "usage_usec 250\nuser_usec 200\nsystem_usec 50\n");
        let cg = Cgroups { root: r.to_path_buf(), version: Version::V2 };
        assert_eq!(cg.usage("/berth/c1"), Usage { memory_bytes: 8192, cpu_ns: 250_000, oom_kills: 1 });
        assert_eq!(cg.usage("/berth/gone"), Usage::default());
    }

    #[test]
    fn removal_covers_every_v1_hierarchy_and_tolerates_gone_ones() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for hierarchy in ["memory", "cpu,cpuacct", "pids"] {
            fs::create_dir_all(r.join(hierarchy).join("berth/c1")).unwrap();
        }
        fs::create_dir_all(r.join("freezer/berth")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", r.join("cpu")).unwrap();
        let cg = Cgroups { root: r.to_path_buf(), version: Version::V1 };
        cg.remove("/berth/c1").unwrap();
        for hierarchy in ["memory", "cpu,cpuacct", "pids", "freezer"] {
            assert!(!r.join(hierarchy).join("berth/c1").exists(), "{hierarchy}");
            assert!(r.join(hierarchy).join("berth").is_dir(), "the parent stays in {hierarchy}");
        }
        cg.remove("/berth/c1").unwrap();
    }

    #[test]
    fn a_shim_lives_beside_its_containers_parent() {
        assert_eq!(shim_path("/berth/web.1.ab"), "/berth-shims/web.1.ab");
        assert_eq!(shim_path("/berth/agent1/c"), "/berth/agent1-shims/c");
        assert_eq!(shim_path("/c"), "/shims/c");
    }

    #[test]
    fn the_hierarchies_without_controllers_are_systemds_and_the_unified_one() {
        let text = "9:name=systemd:/berth-shims/c1\n4:memory:/berth/c1\n2:cpu,cpuacct:/berth/c1\n0::/berth-shims/c1\n";
        assert_eq!(
            tracking_dirs(text),
            [
                ("systemd".to_owned(), "/berth-shims/c1".to_owned()),
                ("unified".to_owned(), "/berth-shims/c1".to_owned())
            ]
        );
    }

    #[test]
    fn entering_makes_the_cgroup_in_every_v1_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for hierarchy in ["memory", "systemd", "unified"] {
            fs::create_dir_all(r.join(hierarchy)).unwrap();
        }
        let cg = Cgroups { root: r.to_path_buf(), version: Version::V1 };
        assert_eq!(cg.enter("/berth-shims/c1", 42), 3);
        for hierarchy in ["memory", "systemd", "unified"] {
            let procs = r.join(hierarchy).join("berth-shims/c1/cgroup.procs");
            assert_eq!(fs::read_to_string(procs).unwrap(), "42", "{hierarchy}");
        }
        let v2 = Cgroups { root: r.join("unified"), version: Version::V2 };
        assert_eq!(v2.enter("/", 7), 1);
        assert_eq!(fs::read_to_string(r.join("unified/cgroup.procs")).unwrap(), "7");
    }

    #[test]
    fn removal_refuses_a_cgroup_that_is_not_empty() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("berth/c1/child")).unwrap();
        let cg = Cgroups { root: r.to_path_buf(), version: Version::V2 };
        assert!(cg.remove("/berth/c1").is_err());
        fs::remove_dir(r.join("berth/c1/child")).unwrap();
        cg.remove("/berth/c1").unwrap();
        assert!(!r.join("berth/c1").exists());
    }
}
