//! What a service sets over its image's config and the node's container
//! defaults, as `docker service create --entrypoint/--user/--workdir/
//! --hostname/--read-only/--cap-add/--cap-drop` do: the entrypoint
//! (Docker's rule: a replaced entrypoint drops the image's Cmd too), the
//! user its process runs as, its working directory, its hostname, a
//! read-only root, capabilities added to or dropped from Docker's default
//! set, and how it is stopped (`--stop-signal`, `--stop-grace-period`).
//! Unset, the image's and the node's defaults hold.

use serde::{Deserialize, Serialize};

use super::options::host_name;
use super::{Health, InvalidField, Options};
use crate::pb::cluster as pb;

/// Bounds, with the command's: a spec stays small whatever a client sends.
pub const USER_BYTES: usize = 256;
pub const WORKDIR_BYTES: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    /// Replaces the image's Entrypoint (an empty one clears it).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `user`, `uid`, `user:group` or `uid:gid`, looked up in the image.
    #[serde(default)]
    pub user: Option<String>,
    /// An absolute path inside the container.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Its hostname (default: the task's name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The root filesystem mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Capabilities over the default set, by name without `CAP_`
    /// (`NET_ADMIN`); `ALL` in `cap_drop` starts from none.
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// The signal that asks it to stop (`SIGTERM` unless the image says
    /// otherwise), as `SIGNAME` or a number.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// How long a stop waits for it before SIGKILL (the node's default,
    /// 10 s, otherwise).
    #[serde(default)]
    pub stop_grace_ms: Option<u64>,
    /// Its health check, over the image's.
    #[serde(default)]
    pub health: Health,
    /// Labels, hosts, DNS, ulimits, tmpfs, restart attempts.
    #[serde(default, skip_serializing_if = "Options::is_empty")]
    pub options: Options,
    /// A tiny init as PID 1 that reaps orphans and passes signals on
    /// (`docker run --init`; the node's tini).
    #[serde(default)]
    pub init: bool,
}

/// The longest stop grace a spec may ask for.
pub const MAX_STOP_GRACE_MS: u64 = 3_600_000;

/// Signals a stop may send, by name.
pub const SIGNALS: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// A signal as people write it (`term`, `TERM`, `SIGTERM`, `15`), as
/// [`SIGNALS`] names it (numbers stay numbers).
pub fn signal_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.parse::<u32>().is_ok() || upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    }
}

/// Linux's capabilities, as `cap_add` and `cap_drop` name them.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability as people write it (`net_admin`, `CAP_NET_ADMIN`), as
/// [`CAPABILITIES`] names it; `ALL` stays `ALL`.
pub fn capability_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").map(str::to_owned).unwrap_or(upper)
}

impl Overrides {
    /// Checks each field; the first that is wrong is named. Entrypoint
    /// sizes count with the command's (see `limits`), by the caller.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if let Some(entrypoint) = &self.entrypoint {
            if entrypoint.iter().any(|a| a.contains('\0')) {
                return Err(InvalidField::new("entrypoint", format!("{entrypoint:?}"), "arguments without NUL bytes"));
            }
        }
        if let Some(user) = &self.user {
            let part = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            let ok = user.len() <= USER_BYTES
                && match user.split_once(':') {
                    Some((u, g)) => part(u) && part(g),
                    None => part(user),
                };
            if !ok {
                return Err(InvalidField::new(
                    "user",
                    user,
                    format!("a user or uid, optionally :group or :gid (letters, digits, '_', '.', '-'; at most {USER_BYTES} bytes)"),
                ));
            }
        }
        if let Some(host) = &self.hostname {
            if !host_name(host) {
                return Err(InvalidField::new(
                    "hostname",
                    host,
                    "a host name: dot-separated labels of 1-63 letters, digits or '-'",
                ));
            }
        }
        for (field, caps) in [("cap_add", &self.cap_add), ("cap_drop", &self.cap_drop)] {
            for (i, cap) in caps.iter().enumerate() {
                let all = cap == "ALL";
                if !(CAPABILITIES.contains(&cap.as_str()) || all) || (all && field == "cap_add") {
                    return Err(InvalidField::new(
                        format!("{field}[{i}]"),
                        cap,
                        format!(
                            "a capability name such as NET_ADMIN{}",
                            if field == "cap_drop" { " or ALL" } else { "" }
                        ),
                    ));
                }
            }
            if caps.len() > CAPABILITIES.len() + 1 {
                return Err(InvalidField::new(field, caps.len(), format!("at most {} names", CAPABILITIES.len() + 1)));
            }
        }
        if let Some(signal) = &self.stop_signal {
            let number = signal.parse::<u32>().is_ok_and(|n| (1..=64).contains(&n));
            if !(number || SIGNALS.contains(&signal.as_str())) {
                return Err(InvalidField::new(
                    "stop_signal",
                    signal,
                    "a signal such as SIGTERM, SIGINT or a number from 1 to 64",
                ));
            }
        }
        if let Some(ms) = self.stop_grace_ms.filter(|ms| *ms > MAX_STOP_GRACE_MS) {
            return Err(InvalidField::new(
                "stop_grace_period",
                format!("{ms} ms"),
                format!("at most {} s", MAX_STOP_GRACE_MS / 1000),
            ));
        }
        self.health.validate()?;
        self.options.validate()?;
        if let Some(dir) = &self.workdir {
            if !dir.starts_with('/') || dir.contains('\0') || dir.len() > WORKDIR_BYTES {
                return Err(InvalidField::new(
                    "workdir",
                    dir,
                    format!("an absolute path without NUL bytes, at most {WORKDIR_BYTES} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// From the wire (capability and signal names as people write them).
    pub fn from_pb(w: pb::Overrides) -> Result<Self, InvalidField> {
        let names = |caps: Vec<String>| caps.iter().map(|c| capability_name(c)).collect();
        Ok(Self {
            entrypoint: w.set_entrypoint.then_some(w.entrypoint),
            user: Some(w.user).filter(|u| !u.is_empty()),
            workdir: Some(w.workdir).filter(|d| !d.is_empty()),
            hostname: Some(w.hostname).filter(|h| !h.is_empty()),
            read_only: w.read_only,
            cap_add: names(w.cap_add),
            cap_drop: names(w.cap_drop),
            stop_signal: Some(w.stop_signal).filter(|s| !s.is_empty()).map(|s| signal_name(&s)),
            stop_grace_ms: w.stop_grace_ms,
            health: w.health.map(Health::from_pb).unwrap_or_default(),
            options: Options::from_pb(w.options.unwrap_or_default())?,
            init: w.init,
        })
    }

    /// As the wire carries it; unset fields are its zero values.
    pub fn to_pb(&self) -> pb::Overrides {
        pb::Overrides {
            set_entrypoint: self.entrypoint.is_some(),
            entrypoint: self.entrypoint.clone().unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
            workdir: self.workdir.clone().unwrap_or_default(),
            hostname: self.hostname.clone().unwrap_or_default(),
            read_only: self.read_only,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            stop_signal: self.stop_signal.clone().unwrap_or_default(),
            stop_grace_ms: self.stop_grace_ms,
            health: Some(self.health.to_pb()).filter(|_| !self.health.is_unset()),
            options: Some(self.options.to_pb()).filter(|_| !self.options.is_empty()),
            init: self.init,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_an_empty_entrypoint_apart_from_none() {
        for o in [
            Overrides::default(),
            Overrides { entrypoint: Some(vec![]), ..Overrides::default() },
            Overrides {
                entrypoint: Some(vec!["sh".into(), "-c".into()]),
                user: Some("1000:1000".into()),
                workdir: Some("/srv".into()),
                hostname: Some("web-1.example".into()),
                read_only: true,
                cap_add: vec!["NET_ADMIN".into()],
                cap_drop: vec!["ALL".into()],
                stop_signal: Some("SIGUSR1".into()),
                stop_grace_ms: Some(0),
                health: Health { retries: Some(2), ..Health::default() },
                options: Options { restart_max_attempts: Some(2), ..Options::default() },
                init: true,
            },
        ] {
            assert_eq!(Overrides::from_pb(o.to_pb()), Ok(o));
        }
        let written = pb::Overrides { cap_add: vec!["cap_net_raw".into(), "sys_time".into()], ..Default::default() };
        assert_eq!(Overrides::from_pb(written).unwrap().cap_add, ["NET_RAW", "SYS_TIME"], "named as people write them");
        for (written, named) in [("usr1", "SIGUSR1"), ("SIGINT", "SIGINT"), ("15", "15")] {
            let o = Overrides::from_pb(pb::Overrides { stop_signal: written.into(), ..Default::default() }).unwrap();
            assert_eq!(o.stop_signal.as_deref(), Some(named));
        }
    }

    #[test]
    fn bad_values_are_named() {
        let field = |o: Overrides| o.validate().unwrap_err().field;
        assert_eq!(field(Overrides { entrypoint: Some(vec!["a\0".into()]), ..Default::default() }), "entrypoint");
        for user in ["", ":", "a:", "root user", "a:b:c", "$(id)"] {
            assert_eq!(field(Overrides { user: Some(user.into()), ..Default::default() }), "user", "{user:?}");
        }
        for dir in ["srv", "", "/a\0"] {
            assert_eq!(field(Overrides { workdir: Some(dir.into()), ..Default::default() }), "workdir", "{dir:?}");
        }
        for host in ["-a", "a_b", "a..b", &"x".repeat(64)] {
            assert_eq!(field(Overrides { hostname: Some(host.into()), ..Default::default() }), "hostname", "{host:?}");
        }
        assert_eq!(
            field(Overrides { cap_add: vec!["NET_ADMIN".into(), "FLY".into()], ..Default::default() }),
            "cap_add[1]"
        );
        assert_eq!(field(Overrides { cap_add: vec!["ALL".into()], ..Default::default() }), "cap_add[0]");
        assert_eq!(field(Overrides { stop_signal: Some("SIGFOO".into()), ..Default::default() }), "stop_signal");
        assert_eq!(field(Overrides { stop_signal: Some("65".into()), ..Default::default() }), "stop_signal");
        assert_eq!(
            field(Overrides { stop_grace_ms: Some(MAX_STOP_GRACE_MS + 1), ..Default::default() }),
            "stop_grace_period"
        );
        let good = Overrides {
            entrypoint: Some(vec!["redis-cli".into()]),
            user: Some("www-data:adm".into()),
            workdir: Some("/var/www".into()),
            hostname: Some("cache-1".into()),
            read_only: true,
            cap_add: vec!["NET_BIND_SERVICE".into()],
            cap_drop: vec!["ALL".into()],
            stop_signal: Some("SIGQUIT".into()),
            stop_grace_ms: Some(30_000),
            health: Health::default(),
            options: Options::default(),
            init: false,
        };
        assert_eq!(good.validate(), Ok(()));
    }
}
