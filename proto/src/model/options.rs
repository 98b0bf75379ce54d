//! More of what a service sets for its containers, as `docker service
//! create` does: labels, extra `/etc/hosts` entries, DNS settings, resource
//! limits (ulimits), tmpfs mounts, volumes and bind mounts, and how many times a task may restart
//! (`--restart-max-attempts` within `--restart-window`), and the services
//! its tasks wait for (`depends_on`). Part of the
//! spec's [`super::Overrides`]; all empty by default.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::files::{FileKind, MAX_FILE_REFS};
use super::mounts::{clean_path, reserved};
use super::{Dependency, FileRef, InvalidField, Mount};
use crate::pb::cluster as pb;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Labels of the service and its containers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `/etc/hosts` entries beyond the container's own (`--add-host`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// Nameservers in place of the node's (`--dns`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<IpAddr>,
    /// Search domains in place of the node's (`--dns-search`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// resolv.conf options (`--dns-option ndots:2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_options: Vec<String>,
    /// Resource limits of its processes, by name (`nofile`, `nproc`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// Memory filesystems mounted in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<Tmpfs>,
    /// Volumes and host paths mounted in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Secrets, each a read-only file in memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    /// Configs, the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    /// Restarts after which the agent gives up (none: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_max_attempts: Option<u32>,
    /// Restarts count within this window: a run at least this long starts
    /// the count over (none: every restart counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_window_ms: Option<u64>,
    /// When its node asks the registry for the image.
    #[serde(default, skip_serializing_if = "Pull::is_missing")]
    pub pull: Pull,
    /// Services that must be up before each start of its tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

/// When a node asks the registry for a task's image (Kubernetes'
/// `imagePullPolicy`, Docker's `--pull`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// Only when the node does not have it (a pinned digest names one image).
    #[default]
    Missing,
    /// Every time a task starts: the registry is asked (and its access
    /// checked) even when the node has the image.
    Always,
    /// Never: the image must be on the node already.
    Never,
}

impl Pull {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "missing" => Some(Self::Missing),
            "always" => Some(Self::Always),
            "never" => Some(Self::Never),
            _ => None,
        }
    }

    fn is_missing(&self) -> bool {
        *self == Self::Missing
    }
}

impl std::fmt::Display for Pull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "missing",
            Self::Always => "always",
            Self::Never => "never",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tmpfs {
    /// An absolute path in the container.
    pub target: String,
    /// Its most bytes (none: half the node's memory, the kernel's default).
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

/// Resource limits a container may set, as `docker run --ulimit` names them.
pub const ULIMITS: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// Bounds, with the command's: a spec stays small whatever a client sends.
pub const MAX_ENTRIES: usize = 64;
pub const LABEL_BYTES: usize = 4096;

impl Options {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Its secrets or its configs.
    pub fn refs(&self, kind: FileKind) -> &[FileRef] {
        match kind {
            FileKind::Secret => &self.secrets,
            FileKind::Config => &self.configs,
        }
    }

    /// Every secret, then every config, each with its kind: the order in
    /// which an agent hands their values to a container's start.
    pub fn files(&self) -> impl Iterator<Item = (FileKind, &FileRef)> {
        let secrets = self.secrets.iter().map(|r| (FileKind::Secret, r));
        secrets.chain(self.configs.iter().map(|r| (FileKind::Config, r)))
    }

    /// Whether it mounts a single-writer volume (see [`Mount::exclusive`]).
    pub fn exclusive(&self) -> bool {
        self.mounts.iter().any(|m| m.exclusive)
    }

    /// Checks each field, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), InvalidField> {
        let lists = [
            ("labels", self.labels.len()),
            ("extra_hosts", self.extra_hosts.len()),
            ("dns", self.dns.len()),
            ("dns_search", self.dns_search.len()),
            ("dns_options", self.dns_options.len()),
            ("tmpfs", self.tmpfs.len()),
            ("mounts", self.mounts.len()),
        ];
        for (field, n) in lists {
            if n > MAX_ENTRIES {
                return Err(InvalidField::new(field, format!("{n} entries"), format!("at most {MAX_ENTRIES}")));
            }
        }
        for (k, v) in &self.labels {
            let key_ok = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
            if !key_ok || k.len() + v.len() > LABEL_BYTES || v.contains('\0') {
                return Err(InvalidField::new(
                    format!("labels.{}", k.chars().take(64).collect::<String>()),
                    k,
                    format!("a key of letters, digits, '.', '_', '-', '/', with its value at most {LABEL_BYTES} bytes"),
                ));
            }
        }
        for (i, (name, _)) in self.extra_hosts.iter().enumerate() {
            if !host_name(name) {
                return Err(InvalidField::new(format!("extra_hosts[{i}]"), name, "a host name such as db.internal"));
            }
        }
        for (i, domain) in self.dns_search.iter().enumerate() {
            if !host_name(domain) {
                return Err(InvalidField::new(format!("dns_search[{i}]"), domain, "a domain such as example.com"));
            }
        }
        for (i, option) in self.dns_options.iter().enumerate() {
            let ok = !option.is_empty()
                && option.len() <= 64
                && option.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.".contains(c));
            if !ok {
                return Err(InvalidField::new(
                    format!("dns_options[{i}]"),
                    option,
                    "a resolv.conf option such as ndots:2",
                ));
            }
        }
        for (name, limit) in &self.ulimits {
            if !ULIMITS.contains(&name.as_str()) {
                return Err(InvalidField::new(
                    format!("ulimits.{}", name.chars().take(64).collect::<String>()),
                    name,
                    format!("one of {}", ULIMITS.join(", ")),
                ));
            }
            if limit.soft > limit.hard {
                return Err(InvalidField::new(
                    format!("ulimits.{name}"),
                    format!("{}:{}", limit.soft, limit.hard),
                    "a soft limit no higher than the hard one",
                ));
            }
        }
        for (i, t) in self.tmpfs.iter().enumerate() {
            if !clean_path(&t.target) || reserved(&t.target) {
                return Err(InvalidField::new(
                    format!("tmpfs[{i}]"),
                    &t.target,
                    "an absolute path other than / without '.', '..' or '//', outside /proc, /sys and /dev",
                ));
            }
            if t.size_bytes == Some(0) {
                return Err(InvalidField::new(format!("tmpfs[{i}].size"), 0, "a size above 0"));
            }
        }
        let mut targets = std::collections::BTreeSet::new();
        for (i, m) in self.mounts.iter().enumerate() {
            m.validate(i)?;
            if !targets.insert(m.target.trim_end_matches('/')) {
                return Err(InvalidField::new(format!("mounts[{i}].target"), &m.target, "a target no other mount has"));
            }
        }
        for (i, t) in self.tmpfs.iter().enumerate() {
            if !targets.insert(t.target.trim_end_matches('/')) {
                return Err(InvalidField::new(format!("tmpfs[{i}]"), &t.target, "a target no other mount has"));
            }
        }
        let mut paths: std::collections::BTreeSet<String> = targets.iter().map(|t| (*t).to_owned()).collect();
        for (kind, refs) in [(FileKind::Secret, &self.secrets), (FileKind::Config, &self.configs)] {
            let field = if kind == FileKind::Secret { "secrets" } else { "configs" };
            if refs.len() > MAX_FILE_REFS {
                let expected = format!("at most {MAX_FILE_REFS}");
                return Err(InvalidField::new(field, format!("{} entries", refs.len()), expected));
            }
            for (i, r) in refs.iter().enumerate() {
                r.validate(kind, i)?;
                if !paths.insert(r.path(kind)) {
                    let expected = "a target no other mount, secret or config has";
                    return Err(InvalidField::new(format!("{field}[{i}].target"), &r.target, expected));
                }
            }
        }
        Ok(())
    }

    pub fn from_pb(w: pb::Options) -> Result<Self, InvalidField> {
        let extra_hosts = w
            .extra_hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let bad = || InvalidField::new(format!("extra_hosts[{i}]"), h, "NAME:ADDRESS such as db:198.18.0.5");
                let (name, address) = h.split_once(':').ok_or_else(bad)?;
                Ok((name.to_owned(), address.parse().map_err(|_| bad())?))
            })
            .collect::<Result<_, _>>()?;
        let dns = w
            .dns
            .iter()
            .enumerate()
            .map(|(i, a)| a.parse().map_err(|_| InvalidField::new(format!("dns[{i}]"), a, "an IP address")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            labels: w.labels.into_iter().collect(),
            extra_hosts,
            dns,
            dns_search: w.dns_search,
            dns_options: w.dns_options,
            ulimits: w.ulimits.into_iter().map(|(k, u)| (k, Ulimit { soft: u.soft, hard: u.hard })).collect(),
            tmpfs: w.tmpfs.into_iter().map(|t| Tmpfs { target: t.target, size_bytes: t.size_bytes }).collect(),
            mounts: w.mounts.into_iter().enumerate().map(|(i, m)| Mount::from_pb(i, m)).collect::<Result<_, _>>()?,
            secrets: files(FileKind::Secret, w.secrets)?,
            configs: files(FileKind::Config, w.configs)?,
            // As Swarm's: 0 attempts is no limit, a 0 s window no window.
            restart_max_attempts: w.restart_max_attempts.filter(|n| *n > 0),
            restart_window_ms: w.restart_window_ms.filter(|ms| *ms > 0),
            pull: Pull::parse(&w.pull).ok_or_else(|| InvalidField::new("pull", &w.pull, "always, missing or never"))?,
            depends_on: w
                .depends_on
                .into_iter()
                .enumerate()
                .map(|(i, d)| Dependency::from_pb(i, d))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn to_pb(&self) -> pb::Options {
        pb::Options {
            labels: self.labels.clone().into_iter().collect(),
            extra_hosts: self.extra_hosts.iter().map(|(n, a)| format!("{n}:{a}")).collect(),
            dns: self.dns.iter().map(ToString::to_string).collect(),
            dns_search: self.dns_search.clone(),
            dns_options: self.dns_options.clone(),
            ulimits: self.ulimits.iter().map(|(k, u)| (k.clone(), pb::Ulimit { soft: u.soft, hard: u.hard })).collect(),
            tmpfs: self
                .tmpfs
                .iter()
                .map(|t| pb::Tmpfs { target: t.target.clone(), size_bytes: t.size_bytes })
                .collect(),
            mounts: self.mounts.iter().map(Mount::to_pb).collect(),
            secrets: self.secrets.iter().map(FileRef::to_pb).collect(),
            configs: self.configs.iter().map(FileRef::to_pb).collect(),
            restart_max_attempts: self.restart_max_attempts,
            restart_window_ms: self.restart_window_ms,
            pull: if self.pull.is_missing() { String::new() } else { self.pull.to_string() },
            depends_on: self.depends_on.iter().map(Dependency::to_pb).collect(),
        }
    }
}

fn files(kind: FileKind, wire: Vec<pb::FileRef>) -> Result<Vec<FileRef>, InvalidField> {
    wire.into_iter().enumerate().map(|(i, r)| FileRef::from_pb(kind, i, r)).collect()
}

/// Dot-separated labels of 1-63 letters, digits and '-' (not at either
/// end), at most 253 bytes: a host name, as RFC 1123 has it.
pub(super) fn host_name(name: &str) -> bool {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Options {
        Options {
            labels: [("com.example.team".to_owned(), "web".to_owned())].into(),
            extra_hosts: vec![("db.internal".into(), "198.18.0.5".parse().unwrap())],
            dns: vec!["198.18.0.53".parse().unwrap()],
            dns_search: vec!["example.com".into()],
            dns_options: vec!["ndots:2".into()],
            ulimits: [("nofile".to_owned(), Ulimit { soft: 1024, hard: 2048 })].into(),
            tmpfs: vec![Tmpfs { target: "/cache".into(), size_bytes: Some(64 << 20) }],
            mounts: vec![Mount {
                kind: super::super::MountKind::Volume,
                source: "data".into(),
                target: "/data".into(),
                readonly: false,
                pin: false,
                exclusive: false,
            }],
            secrets: vec![FileRef { mode: 0o400, uid: 1000, ..FileRef::named("db") }],
            configs: vec![FileRef { target: "/etc/app.conf".into(), ..FileRef::named("app") }],
            restart_max_attempts: Some(3),
            restart_window_ms: Some(60_000),
            pull: Pull::Always,
            depends_on: vec![Dependency { service: "shop_db".into(), condition: super::super::Condition::Healthy }],
        }
    }

    #[test]
    fn wire_round_trip_and_good_values_pass() {
        assert_eq!(Options::from_pb(full().to_pb()), Ok(full()));
        assert_eq!(Options::from_pb(Options::default().to_pb()), Ok(Options::default()));
        let zeros = pb::Options { restart_max_attempts: Some(0), restart_window_ms: Some(0), ..Default::default() };
        assert_eq!(Options::from_pb(zeros), Ok(Options::default()), "0 means no limit, as Swarm's");
        assert_eq!(full().validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_named() {
        let field = |o: Options| o.validate().unwrap_err().field;
        assert_eq!(
            field(Options { extra_hosts: vec![("a b".into(), "1.2.3.4".parse().unwrap())], ..full() }),
            "extra_hosts[0]"
        );
        assert_eq!(field(Options { dns_search: vec!["-x".into()], ..full() }), "dns_search[0]");
        assert_eq!(field(Options { dns_options: vec!["a b".into()], ..full() }), "dns_options[0]");
        let ulimit = |name: &str, soft, hard| [(name.to_owned(), Ulimit { soft, hard })].into();
        assert_eq!(field(Options { ulimits: ulimit("files", 1, 1), ..full() }), "ulimits.files");
        assert_eq!(field(Options { ulimits: ulimit("nofile", 2, 1), ..full() }), "ulimits.nofile");
        for target in ["cache", "/", "/a/../b"] {
            let tmpfs = vec![Tmpfs { target: target.into(), size_bytes: None }];
            assert_eq!(field(Options { tmpfs, ..full() }), "tmpfs[0]", "{target}");
        }
        let mut twice = full();
        twice.mounts.push(twice.mounts[0].clone());
        assert_eq!(field(twice), "mounts[1].target");
        let mut clash = full();
        clash.configs[0].target = "/data".into();
        assert_eq!(field(clash), "configs[0].target", "a config over a volume");
        let mut over_tmpfs = full();
        over_tmpfs.tmpfs[0].target = "/data/".into();
        assert_eq!(field(over_tmpfs), "tmpfs[0]", "one target, two mounts");
        assert_eq!(field(Options { labels: [("a b".to_owned(), String::new())].into(), ..full() }), "labels.a b");
        let wire = pb::Options { extra_hosts: vec!["db".into()], ..Default::default() };
        assert_eq!(Options::from_pb(wire).unwrap_err().field, "extra_hosts[0]");
        let wire = pb::Options { dns: vec!["resolver".into()], ..Default::default() };
        assert_eq!(Options::from_pb(wire).unwrap_err().field, "dns[0]");
        let wire = pb::Options { pull: "sometimes".into(), ..Default::default() };
        assert_eq!(Options::from_pb(wire).unwrap_err().field, "pull");
        // The default is left out of stored specs, as before the field.
        assert_eq!(serde_json::to_string(&Options::default()).unwrap(), "{}");
        assert_eq!(Pull::parse("never"), Some(Pull::Never));
    }
}
