//! What the agent and a container's shim write about the container, one
//! file each, so that either can die and the other still knows the truth:
//!
//! ```text
//! containers/<name>/config.json   agent: what to run (written once, fsync'd)
//! containers/<name>/started.json  shim: its pid, the container's pid
//! containers/<name>/exit.json     shim: exit code, signal, OOM; written last,
//!                                 after the cgroup and mount are gone
//! ```
//!
//! started.json and exit.json describe processes, which a host crash ends
//! anyway, so they are written atomically but not fsync'd. The exit record,
//! the log policy and the file helpers live in `berth_monitor::record`,
//! which the monitor shares.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use serde::{Deserialize, Serialize};

pub use berth_monitor::record::{now_ms, process_start, read, write, write_durable, Dirs, Exited, LogPolicy, EXITED};

use berth_proto::model::Check;
pub use berth_proto::model::{Overrides, Seccomp};

use super::userns::IdMap;
use crate::image::ImageConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub image_config: ImageConfig,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    pub layer_digests: Vec<String>,
    /// Replaces the image's Cmd when not empty.
    pub command: Vec<String>,
    /// What its spec sets over the image's config and the defaults:
    /// entrypoint, user, workdir, hostname, read-only root, capabilities
    /// (flattened: the same keys the config had before they were grouped).
    #[serde(flatten)]
    pub overrides: Overrides,
    /// `KEY=VALUE`, over the image's environment.
    pub env: Vec<String>,
    pub limits: Limits,
    pub network: NetworkMode,
    /// Cgroup of the container: `<cgroup_parent>/<name>`.
    pub cgroup_parent: String,
    pub log: LogPolicy,
    pub created_at_ms: u64,
    /// The cluster task this container runs, if the agent made it for one.
    #[serde(default)]
    pub task: Option<String>,
    /// Its syscall filter; containers recorded before seccomp get the default.
    #[serde(default)]
    pub seccomp: Seccomp,
    /// Whose ids it has; containers recorded before user namespaces have the host's.
    #[serde(default)]
    pub userns: UserNamespace,
    /// The host's init binary, run as PID 1 with the command under it
    /// (`--init`); none for containers recorded before it. (Not `init`:
    /// the overrides, flattened above, have that key.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_binary: Option<PathBuf>,
    /// Where the node's named volumes are, for its volume mounts
    /// ([`crate::runtime::Runtime::create`] sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<PathBuf>,
}

/// A container's user namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserNamespace {
    /// The host's: its root is the host's root.
    #[default]
    Host,
    /// One of its own, asked for: [`crate::runtime::Runtime::create`]
    /// claims it a block of ids and records [`UserNamespace::Own`].
    Auto,
    /// One of its own, with these ids, made each time it starts.
    Own(IdMap),
    /// One made beforehand with the task's network namespace (which must
    /// be owned by it), at `path`, with these ids.
    Joined { path: PathBuf, ids: IdMap },
}

impl UserNamespace {
    /// Its ids, once claimed.
    pub fn ids(&self) -> Option<IdMap> {
        match self {
            Self::Own(ids) | Self::Joined { ids, .. } => Some(*ids),
            Self::Host | Self::Auto => None,
        }
    }
}

impl ContainerConfig {
    /// A plain config for tests: no layers, no limits, no network.
    #[cfg(test)]
    pub fn sample(name: &str) -> Self {
        Self {
            name: name.into(),
            image: "reg/app:v1".into(),
            image_digest: "sha256:00".into(),
            image_config: ImageConfig::default(),
            layers: vec![],
            layer_digests: vec![],
            command: vec![],
            overrides: Overrides::default(),
            env: vec![],
            limits: Limits::default(),
            network: NetworkMode::None,
            cgroup_parent: "berth".into(),
            log: LogPolicy::default(),
            created_at_ms: 0,
            task: None,
            seccomp: Seccomp::Default,
            userns: UserNamespace::Host,
            init_binary: None,
            volumes: None,
        }
    }

    /// The signal that asks it to stop: its spec's, its image's, or SIGTERM.
    pub fn stop_signal(&self) -> Result<Signal, String> {
        let given = self.overrides.stop_signal.as_deref().filter(|s| !s.is_empty());
        match given.or(Some(self.image_config.stop_signal.as_str()).filter(|s| !s.is_empty())) {
            Some(name) => parse_signal(name).ok_or_else(|| format!("stop signal {name:?} is not a signal")),
            None => Ok(Signal::SIGTERM),
        }
    }

    /// How long a stop waits for it before SIGKILL: its spec's, or `default`.
    pub fn stop_grace(&self, default: Duration) -> Duration {
        self.overrides.stop_grace_ms.map_or(default, Duration::from_millis)
    }

    /// Its health check: its spec's over its image's, if either has one.
    pub fn health_check(&self) -> Option<Check> {
        self.overrides.health.resolve(self.image_config.health.as_ref())
    }

    /// The container's cgroup, as the runtime spec names it: `/<parent>/<name>`.
    pub fn cgroup_path(&self) -> String {
        format!("/{}/{}", self.cgroup_parent.trim_matches('/'), self.name)
    }

    /// The container's hostname: the one given, or its name cut to a DNS
    /// label's 63 bytes.
    pub fn hostname(&self) -> String {
        match &self.overrides.hostname {
            Some(host) => host.clone(),
            None => self.name.chars().take(63).collect(),
        }
    }
}

/// `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    berth_proto::model::signal_name(s).parse().ok()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own network namespace with only loopback.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// A namespace made for it beforehand (see `crate::network`), where
    /// `eth0` has `address`.
    Joined {
        netns: PathBuf,
        address: std::net::Ipv4Addr,
        /// Its `/etc/resolv.conf` (the node's DNS); without one, the
        /// host's resolvers less those on its loopback.
        #[serde(default)]
        resolv_conf: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Started {
    pub shim_pid: i32,
    /// The shim's start time in clock ticks since boot (/proc/PID/stat field
    /// 22): with the pid it names the shim even after pid reuse.
    pub shim_start: u64,
    pub pid: i32,
    pub started_at_ms: u64,
}

pub const CONFIG: &str = "config.json";
pub const STARTED: &str = "started.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        for s in ["TERM", "sigterm", "SIGTERM", "15"] {
            assert_eq!(parse_signal(s), Some(Signal::SIGTERM), "{s}");
        }
        assert_eq!(parse_signal("kill"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("0"), None);
    }

    #[test]
    fn a_stop_is_the_specs_the_images_or_sigterm_and_the_nodes_grace() {
        let mut c = ContainerConfig::sample("web-1");
        assert_eq!(c.stop_signal(), Ok(Signal::SIGTERM));
        c.image_config.stop_signal = "SIGQUIT".into();
        assert_eq!(c.stop_signal(), Ok(Signal::SIGQUIT), "the image's");
        c.overrides.stop_signal = Some("SIGUSR1".into());
        assert_eq!(c.stop_signal(), Ok(Signal::SIGUSR1), "the spec's over the image's");
        let default = Duration::from_secs(10);
        assert_eq!(c.stop_grace(default), default);
        c.overrides.stop_grace_ms = Some(0);
        assert_eq!(c.stop_grace(default), Duration::ZERO, "0 is its own grace");
    }
}
