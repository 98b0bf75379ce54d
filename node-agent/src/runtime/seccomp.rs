//! The seccomp filter in a container's runtime spec.
//!
//! The default profile has Docker's effect: every syscall this node's
//! libseccomp knows is allowed except those Docker's default denies, which
//! fail with EPERM, as do syscalls newer than that table. `clone` is allowed
//! without namespace flags, `clone3` answers ENOSYS (its flags sit in
//! memory a filter cannot read, so libc falls back to `clone`), and
//! `personality` takes only the values programs use. Rules that Docker
//! grants to containers with more capabilities (mount with CAP_SYS_ADMIN,
//! ...) are not needed: berth gives every container the same set.
//!
//! Only the native architecture is in the filter; a 32-bit (compat)
//! syscall is killed by libseccomp's bad-architecture action.
//!
//! libcontainer (0.7) reads `SCMP_CMP_MASKED_EQ` the other way round from
//! runc: `valueTwo` as the mask. [`for_runtime`] swaps the two, so that a
//! profile means what it means to runc and Docker.

use std::sync::OnceLock;

use berth_proto::model::Seccomp;
use libseccomp::{ScmpArch, ScmpSyscall};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// Syscalls a container may not make (EPERM): those Docker's default
/// profile denies, by what they reach. Kernel state shared by every
/// container (modules, clock, swap, keyrings, quotas, reboot, kexec,
/// accounting, syslog, NUMA policy); namespaces and mounts (including the
/// new mount API); BPF and perf; file handles that bypass path checks;
/// io_uring (its operations escape seccomp); and obsolete calls.
pub const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "migrate_pages",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pidfd_getfd",
    "pivot_root",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vm86",
    "vm86old",
];

/// The namespace flags `clone` may not carry: NEWNS, NEWCGROUP, NEWUTS,
/// NEWIPC, NEWUSER, NEWPID and NEWNET.
pub const CLONE_NAMESPACES: u64 = 0x7E02_0000;

/// `personality` values programs set: Linux, 32-bit Linux, the 2.6 uname,
/// both, and the query.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The argument of `clone` that holds its flags.
const CLONE_FLAGS_ARG: usize = if cfg!(target_arch = "s390x") { 1 } else { 0 };

/// The filter a container runs under, in the form this runtime reads;
/// `None` when unconfined.
pub fn filter(seccomp: &Seccomp) -> Result<Option<LinuxSeccomp>, String> {
    match seccomp {
        Seccomp::Default => default_profile(known_syscalls()).map(|p| Some(for_runtime(p))),
        Seccomp::Unconfined => Ok(None),
        Seccomp::Profile(json) => serde_json::from_str(json)
            .map(|p| Some(for_runtime(p)))
            .map_err(|e| format!("the seccomp profile cannot be read: {e}")),
    }
}

/// Docker's default, in effect, over the syscalls `known` (see the module doc).
pub fn default_profile(known: &[String]) -> Result<LinuxSeccomp, String> {
    let special = ["clone", "clone3", "personality"];
    let allowed: Vec<String> =
        known.iter().filter(|n| !DENIED.contains(&n.as_str()) && !special.contains(&n.as_str())).cloned().collect();
    let arg = |index: usize, value: u64, value_two: u64, op| {
        LinuxSeccompArgBuilder::default().index(index).value(value).value_two(value_two).op(op).build()
    };
    let args = |a: Result<LinuxSeccompArg, oci_spec::OciSpecError>| a.map(|a| vec![a]).map_err(|e| e.to_string());
    let rule = |names: Vec<String>, action, errno: Option<u32>, args: Vec<LinuxSeccompArg>| {
        let mut b = LinuxSyscallBuilder::default().names(names).action(action);
        if let Some(errno) = errno {
            b = b.errno_ret(errno);
        }
        if !args.is_empty() {
            b = b.args(args);
        }
        b.build()
    };
    let mut syscalls = vec![
        rule(allowed, LinuxSeccompAction::ScmpActAllow, None, vec![]),
        // (flags & CLONE_NAMESPACES) == 0, runc's way round: value is the mask.
        rule(
            vec!["clone".into()],
            LinuxSeccompAction::ScmpActAllow,
            None,
            args(arg(CLONE_FLAGS_ARG, CLONE_NAMESPACES, 0, LinuxSeccompOperator::ScmpCmpMaskedEq))?,
        ),
        rule(vec!["clone3".into()], LinuxSeccompAction::ScmpActErrno, Some(nix::libc::ENOSYS as u32), vec![]),
    ];
    // One rule per value: the rules of a syscall are alternatives.
    for value in PERSONALITIES {
        syscalls.push(rule(
            vec!["personality".into()],
            LinuxSeccompAction::ScmpActAllow,
            None,
            args(arg(0, value, 0, LinuxSeccompOperator::ScmpCmpEq))?,
        ));
    }
    let syscalls = syscalls.into_iter().collect::<Result<Vec<LinuxSyscall>, _>>().map_err(|e| e.to_string())?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(nix::libc::EPERM as u32)
        .syscalls(syscalls)
        .build()
        .map_err(|e| e.to_string())
}

/// Every syscall name libseccomp knows on this machine's architecture.
pub fn known_syscalls() -> &'static [String] {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let arch = ScmpArch::native();
        // Syscall numbers on every Linux architecture stay below 1024 (above
        // their per-architecture base, which libseccomp's names take care of).
        (0..1024).filter_map(|n| ScmpSyscall::from(n).get_name_by_arch(arch).ok()).collect()
    })
}

/// The profile as libcontainer reads it: `SCMP_CMP_MASKED_EQ`'s two values
/// swapped (see the module doc).
pub fn for_runtime(mut profile: LinuxSeccomp) -> LinuxSeccomp {
    let swap = |a: LinuxSeccompArg| {
        if a.op() != LinuxSeccompOperator::ScmpCmpMaskedEq {
            return a;
        }
        LinuxSeccompArgBuilder::default()
            .index(a.index())
            .value(a.value_two().unwrap_or(0))
            .value_two(a.value())
            .op(a.op())
            .build()
            .unwrap_or(a)
    };
    if let Some(syscalls) = profile.syscalls().clone() {
        let syscalls = syscalls
            .into_iter()
            .map(|mut s| {
                let args = s.args().clone().map(|args| args.into_iter().map(swap).collect());
                s.set_args(args);
                s
            })
            .collect();
        profile.set_syscalls(Some(syscalls));
    }
    profile
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_allows_what_libseccomp_knows_but_the_denied() {
        let known = known_syscalls();
        for name in ["read", "execve", "mount", "keyctl", "clone", "openat"] {
            assert!(known.iter().any(|k| k == name), "{name} is not in the table");
        }
        let profile = default_profile(known).unwrap();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(profile.default_errno_ret(), Some(1));
        let rules = profile.syscalls().clone().unwrap();
        let allowed = rules[0].names();
        assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActAllow);
        assert!(allowed.iter().any(|n| n == "read") && allowed.iter().any(|n| n == "ptrace"));
        for name in DENIED.iter().chain(&["clone", "clone3", "personality"]) {
            assert!(!allowed.iter().any(|n| n == name), "{name} is allowed outright");
        }
        let clone = rules.iter().find(|r| *r.names() == ["clone"]).unwrap();
        let arg = clone.args().clone().unwrap()[0];
        assert_eq!(
            (arg.value(), arg.value_two(), arg.op()),
            (CLONE_NAMESPACES, Some(0), LinuxSeccompOperator::ScmpCmpMaskedEq)
        );
        let clone3 = rules.iter().find(|r| *r.names() == ["clone3"]).unwrap();
        assert_eq!((clone3.action(), clone3.errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(38)));
        assert_eq!(rules.iter().filter(|r| *r.names() == ["personality"]).count(), PERSONALITIES.len());
    }

    #[test]
    fn the_runtime_gets_masked_comparisons_the_other_way_round() {
        let json = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 0, "value": 7, "valueTwo": 1, "op": "SCMP_CMP_MASKED_EQ"},
                     {"index": 1, "value": 7, "op": "SCMP_CMP_EQ"}]}]}"#;
        let own = filter(&Seccomp::Profile(json.into())).unwrap().unwrap();
        let args = own.syscalls().clone().unwrap()[0].args().clone().unwrap();
        assert_eq!((args[0].value(), args[0].value_two()), (1, Some(7)));
        assert_eq!((args[1].value(), args[1].value_two()), (7, None));
        assert_eq!(filter(&Seccomp::Unconfined).unwrap(), None);
    }
}
