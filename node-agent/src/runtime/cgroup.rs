//! Reading a container's cgroup: memory and CPU usage, and whether the
//! kernel's OOM killer struck. libcontainer creates the cgroup and applies
//! limits; this only reads, from whichever hierarchy the host runs.
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
    /// The host's hierarchy: v2 only when it is unified; hybrid hosts keep
    /// their controllers on v1, as libcgroups also decides.
    pub fn detect() -> Self {
        let root = PathBuf::from("/sys/fs/cgroup");
        let version = match libcgroups::common::get_cgroup_setup() {
            Ok(libcgroups::common::CgroupSetup::Unified) => Version::V2,
            _ => Version::V1,
        };
        Self { root, version }
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
}
