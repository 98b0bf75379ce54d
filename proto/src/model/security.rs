//! A container's seccomp filter, as a service or `berth-agent run` asks
//! for it: the node's default profile (Docker's, in effect), none, or a
//! profile of the user's own in the OCI runtime spec's JSON form; and
//! whether its root is the host's root or an unprivileged host id
//! ([`Userns`]).
//!
//! A profile is checked here, where it enters (the server, or `run`), so a
//! task never reaches a node with a filter the node cannot load. Docker's
//! own profile files are refused: their `includes`/`excludes` make a rule
//! depend on the container's capabilities, and a runtime that ignored them
//! would allow what they only allow to privileged containers.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::InvalidField;

/// The largest profile accepted, in bytes (Docker's default is ~20 KiB).
pub const MAX_PROFILE_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seccomp {
    /// The node's default profile: Docker's denials, returning EPERM.
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A profile in the OCI runtime spec's form (`linux.seccomp`), as JSON,
    /// checked by [`Seccomp::profile`].
    Profile(String),
}

impl Seccomp {
    /// From the wire's two fields: the mode (`""`/`default`/`unconfined`)
    /// and a profile's JSON, which may be given only with an empty mode.
    pub fn from_wire(field: &str, mode: &str, profile: &str) -> Result<Self, InvalidField> {
        match (mode, profile.is_empty()) {
            ("" | "default", true) => Ok(Self::Default),
            ("unconfined", true) => Ok(Self::Unconfined),
            ("", false) => Self::profile(field, profile),
            (_, true) => Err(InvalidField::new(field, mode, "default, unconfined or a profile")),
            (_, false) => Err(InvalidField::new(field, mode, "no mode when a profile is given")),
        }
    }

    /// The wire's two fields: the mode and the profile's JSON.
    pub fn to_wire(&self) -> (String, String) {
        match self {
            Self::Default => (String::new(), String::new()),
            Self::Unconfined => ("unconfined".into(), String::new()),
            Self::Profile(json) => (String::new(), json.clone()),
        }
    }

    /// A user's profile, if it is one the runtime can load as it means.
    pub fn profile(field: &str, json: &str) -> Result<Self, InvalidField> {
        if json.len() > MAX_PROFILE_BYTES {
            return Err(InvalidField::new(
                field,
                format!("{} bytes", json.len()),
                format!("a profile of at most {MAX_PROFILE_BYTES} bytes"),
            ));
        }
        let profile: Profile = serde_json::from_str(json).map_err(|e| {
            InvalidField::new(field, e, "a seccomp profile in the OCI runtime spec's JSON form (Docker's includes, excludes and archMap are not supported)")
        })?;
        profile.check().map_err(|why| InvalidField::new(field, why, "a seccomp profile the runtime can load"))?;
        Ok(Self::Profile(json.to_owned()))
    }

    /// A `--security-opt` as people give it, `seccomp=default`,
    /// `seccomp=unconfined` or `seccomp=PATH` (a profile file, relative to
    /// `dir`), read and checked.
    pub fn from_option(option: &str, dir: &Path) -> Result<Self, String> {
        let value = option
            .strip_prefix("seccomp=")
            .ok_or_else(|| format!("{option:?} is not a security option: expected seccomp=default|unconfined|PATH"))?;
        Self::from_value(value, dir)
    }

    /// `default`, `unconfined`, or the path of a profile file relative to `dir`.
    pub fn from_value(value: &str, dir: &Path) -> Result<Self, String> {
        match value {
            "default" => Ok(Self::Default),
            "unconfined" => Ok(Self::Unconfined),
            "" => Err("seccomp: expected default, unconfined or the path of a profile file".into()),
            path => {
                let path = dir.join(path);
                let json = std::fs::read_to_string(&path)
                    .map_err(|e| format!("seccomp: reading the profile {}: {e}", path.display()))?;
                Self::profile("seccomp", &json).map_err(|e| format!("{} ({})", e, path.display()))
            }
        }
    }

    /// `default`, `unconfined` or `profile`, for people.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Unconfined => "unconfined",
            Self::Profile(_) => "profile",
        }
    }
}

/// Whose ids a container's processes and files have on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Userns {
    /// The host's: root in the container is root on the host (Docker's
    /// and Kubernetes' default).
    #[default]
    Host,
    /// A user namespace of its own: its ids 0-65535 are a block of host
    /// ids that no other container on the node has and no host user owns.
    Auto,
}

impl Userns {
    /// From the wire or a flag: `""`/`host` or `auto`.
    pub fn parse(field: &str, value: &str) -> Result<Self, InvalidField> {
        match value {
            "" | "host" => Ok(Self::Host),
            "auto" => Ok(Self::Auto),
            other => Err(InvalidField::new(field, other, "host or auto")),
        }
    }

    /// The wire's form: `""` for the host's, `auto`.
    pub fn to_wire(self) -> String {
        match self {
            Self::Host => String::new(),
            Self::Auto => "auto".into(),
        }
    }
}

/// What an OCI seccomp profile may hold; anything else is refused by name.
/// Fields only checked by deserializing are never read.
#[derive(Deserialize)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Profile {
    default_action: Action,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    flags: Vec<Flag>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    names: Vec<String>,
    action: Action,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Arg>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: Option<u64>,
    op: Op,
}

/// Every action but `SCMP_ACT_NOTIFY`: berth runs no notify listener.
#[derive(Deserialize)]
#[allow(clippy::enum_variant_names)]
enum Action {
    #[serde(rename = "SCMP_ACT_KILL")]
    Kill,
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    #[serde(rename = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
}

#[derive(Deserialize)]
enum Op {
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

#[derive(Deserialize)]
enum Flag {
    #[serde(rename = "SECCOMP_FILTER_FLAG_LOG")]
    Log,
    #[serde(rename = "SECCOMP_FILTER_FLAG_SPEC_ALLOW")]
    SpecAllow,
    #[serde(rename = "SECCOMP_FILTER_FLAG_TSYNC")]
    Tsync,
    #[serde(rename = "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV")]
    WaitKillableRecv,
}

/// The architectures the OCI runtime spec names.
const ARCHITECTURES: [&str; 24] = [
    "SCMP_ARCH_NATIVE",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
];

/// The largest errno Linux uses.
const MAX_ERRNO: u32 = 4095;

impl Profile {
    fn check(&self) -> Result<(), String> {
        if let Some(arch) = self.architectures.iter().find(|a| !ARCHITECTURES.contains(&a.as_str())) {
            return Err(format!("architecture {arch:?} is not one of the OCI runtime spec's SCMP_ARCH_ names"));
        }
        let errno_ok = |e: &Option<u32>| e.is_none_or(|e| (1..=MAX_ERRNO).contains(&e));
        if !errno_ok(&self.default_errno_ret) {
            return Err(format!("defaultErrnoRet must be from 1 to {MAX_ERRNO}"));
        }
        for (i, rule) in self.syscalls.iter().enumerate() {
            if rule.names.is_empty() {
                return Err(format!("syscalls[{i}] names no syscall"));
            }
            if let Some(name) = rule.names.iter().find(|n| !valid_syscall_name(n)) {
                return Err(format!("syscalls[{i}] names {name:?}, which is not a syscall name"));
            }
            if !errno_ok(&rule.errno_ret) {
                return Err(format!("syscalls[{i}].errnoRet must be from 1 to {MAX_ERRNO}"));
            }
            if let Some(arg) = rule.args.iter().find(|a| a.index > 5) {
                return Err(format!("syscalls[{i}] compares argument {}, but a syscall has 6 (0 to 5)", arg.index));
            }
        }
        Ok(())
    }
}

/// Syscall names are short lowercase identifiers (`_llseek`, `mmap2`).
fn valid_syscall_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_modes_round_trip_and_a_profile_excludes_a_mode() {
        for s in [
            Seccomp::Default,
            Seccomp::Unconfined,
            Seccomp::profile("p", r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap(),
        ] {
            let (mode, profile) = s.to_wire();
            assert_eq!(Seccomp::from_wire("f", &mode, &profile).unwrap(), s);
        }
        assert_eq!(Seccomp::from_wire("f", "default", "").unwrap(), Seccomp::Default);
        for u in [Userns::Host, Userns::Auto] {
            assert_eq!(Userns::parse("userns", &u.to_wire()).unwrap(), u);
        }
        assert_eq!(Userns::parse("userns", "host").unwrap(), Userns::Host);
        let e = Userns::parse("security.userns", "keep-id").unwrap_err();
        assert_eq!((e.field.as_str(), e.value.as_str()), ("security.userns", "keep-id"));
        let e = Seccomp::from_wire("security.seccomp", "strict", "").unwrap_err();
        assert_eq!((e.field.as_str(), e.value.as_str()), ("security.seccomp", "strict"));
        assert!(Seccomp::from_wire("f", "unconfined", r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).is_err());
    }

    #[test]
    fn an_oci_profile_is_accepted_as_given() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["read", "write", "_llseek"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        }"#;
        assert_eq!(Seccomp::profile("p", json).unwrap(), Seccomp::Profile(json.to_owned()));
    }

    #[test]
    fn what_the_runtime_would_misread_is_refused_by_name() {
        let cases = [
            // Docker's conditionals would be dropped, allowing what they guard.
            (
                r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}}]}"#,
                "includes",
            ),
            (r#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[]}"#, "archMap"),
            (r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#, "SCMP_ACT_NOTIFY"),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_LIKE"}]}]}"#,
                "SCMP_CMP_LIKE",
            ),
            (r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_VAX"]}"#, "SCMP_ARCH_VAX"),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
                "argument 6",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["Read;"],"action":"SCMP_ACT_ERRNO"}]}"#,
                "Read;",
            ),
            (r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":0}"#, "defaultErrnoRet"),
            ("not json", "expected"),
        ];
        for (json, named) in cases {
            let e = Seccomp::profile("security.seccomp", json).unwrap_err();
            assert_eq!(e.field, "security.seccomp");
            assert!(e.to_string().contains(named), "{json}: {e}");
        }
        let big = format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":[{}],"action":"SCMP_ACT_LOG"}}]}}"#,
            vec!["\"read\""; MAX_PROFILE_BYTES / 6].join(",")
        );
        assert!(Seccomp::profile("p", &big).unwrap_err().to_string().contains("at most"));
    }
}
