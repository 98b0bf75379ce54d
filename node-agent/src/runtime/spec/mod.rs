//! The OCI runtime spec of a container, as a pure function of what to run
//! (its [`ContainerConfig`]) and the image's `/etc/passwd` and `/etc/group`.
//!
//! Defaults follow Docker's: its capability set less CAP_MKNOD (as
//! Podman's), its seccomp profile (see [`super::seccomp`]), no_new_privs,
//! runc's masked and read-only paths, a device cgroup that allows only the
//! standard character devices (cgroup v1; libcontainer adds those to the
//! deny-all here), private PID/mount/UTS/IPC/cgroup namespaces and a
//! private network namespace unless the host's is asked for. A container
//! with a user namespace of its own joins it by path (it is made before,
//! see [`crate::namespaces`]); the spec's id maps record what it holds.
//!
//! Why not CAP_MKNOD: cgroup v2 guards devices with a BPF program that this
//! build of libcontainer does not load (it would bring libbpf and libelf).
//! Without the capability a container cannot make a device node; the root
//! is mounted `nodev` (see [`super::rootfs`]), so nodes shipped in an
//! image's layers do not open either. /dev is libcontainer's tmpfs with
//! only the standard nodes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, UserBuilder,
};

use super::record::{ContainerConfig, NetworkMode};

/// Why a container cannot have both.
pub const USERNS_WITH_HOST_NETWORK: &str =
    "a user namespace of its own cannot go with the host's network (its root could not configure it)";

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CPU quota period: 100 ms, as Docker and Kubernetes use.
const CPU_PERIOD_US: u64 = 100_000;

/// Docker's default capability set, less CAP_MKNOD.
pub const DEFAULT_CAPS: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("no command to run: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    #[error("user {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
    #[error("building the runtime spec: {0}")]
    Build(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// Where a container sees its init (`ContainerConfig::init`).
pub const INIT: &str = "/dev/init";

/// Files the container sees at `/etc/hostname`, `/etc/hosts`,
/// `/etc/resolv.conf`, bind-mounted from the container's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

/// What the host has readied for a container before its spec is built.
#[derive(Debug, Clone)]
pub struct Host<'a> {
    /// Its mounted root.
    pub rootfs: PathBuf,
    pub etc: EtcFiles,
    /// Its user namespace, when it has its own ids.
    pub userns: Option<&'a Path>,
    /// The host source of each of its mounts, in order (see [`super::mounts`]).
    pub mounts: &'a [PathBuf],
    /// Its secrets and configs: each file's host path and target (see [`super::files`]).
    pub files: &'a [(PathBuf, String)],
}

pub fn build(config: &ContainerConfig, passwd: &str, group: &str, host: &Host) -> Result<Spec, SpecError> {
    let (etc, userns) = (&host.etc, host.userns);
    let image = &config.image_config;
    let mut args = command(config)?;
    if config.init_binary.is_some() {
        args.splice(0..0, [INIT.to_owned(), "--".to_owned()]);
    }
    let user = resolve_user(config.overrides.user.as_deref().unwrap_or(&image.user), passwd, group)?;
    let env = environment(config, user.home.as_deref());
    let caps = capabilities(config)?;
    let err = |e: oci_spec::OciSpecError| SpecError::Build(e.to_string());
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(err)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(env)
        .cwd(match (&config.overrides.workdir, image.working_dir.as_str()) {
            (Some(dir), _) => dir.clone(),
            (None, "") => "/".to_owned(),
            (None, dir) => dir.to_owned(),
        })
        .user(UserBuilder::default().uid(user.uid).gid(user.gid).additional_gids(user.groups).build().map_err(err)?)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(rlimits(config)?)
        .build()
        .map_err(err)?;

    // Deny every device; libcontainer allows the standard ones over this.
    let deny_devices = LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().map_err(err)?;
    let mut resources = LinuxResourcesBuilder::default().devices(vec![deny_devices]);
    let limits = config.limits;
    if let Some(bytes) = limits.memory_bytes {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        resources = resources.memory(LinuxMemoryBuilder::default().limit(bytes).build().map_err(err)?);
    }
    if let Some(millis) = limits.cpu_millis {
        let quota = i64::try_from(millis * CPU_PERIOD_US / 1000).unwrap_or(i64::MAX).max(1000);
        resources = resources.cpu(LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).build().map_err(err)?);
    }
    if let Some(pids) = limits.pids {
        let pids = i64::try_from(pids).unwrap_or(i64::MAX);
        resources = resources.pids(LinuxPidsBuilder::default().limit(pids).build().map_err(err)?);
    }
    let mut linux = Spec::default().linux().clone().unwrap_or_default();
    let mut namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| !(config.network == NetworkMode::Host && ns.typ() == LinuxNamespaceType::Network))
        .map(|ns| match &config.network {
            NetworkMode::Joined { netns, .. } if ns.typ() == LinuxNamespaceType::Network => {
                LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(netns.clone()).build()
            }
            _ => Ok(ns),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let mut builder = LinuxBuilder::default();
    match (config.userns.ids(), userns) {
        (Some(ids), Some(path)) => {
            if config.network == NetworkMode::Host {
                return Err(SpecError::Build(USERNS_WITH_HOST_NETWORK.into()));
            }
            let user = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User).path(path).build();
            namespaces.push(user.map_err(err)?);
            let map = LinuxIdMappingBuilder::default().container_id(0u32).host_id(ids.host_id).size(ids.size);
            let map = map.build().map_err(err)?;
            builder = builder.uid_mappings(vec![map]).gid_mappings(vec![map]);
        }
        (None, None) => {}
        _ => return Err(SpecError::Build("a user namespace needs both its ids and its path".into())),
    }
    if let Some(filter) = super::seccomp::filter(&config.seccomp).map_err(SpecError::Seccomp)? {
        builder = builder.seccomp(filter);
    }
    linux = builder
        .namespaces(namespaces)
        .resources(resources.build().map_err(err)?)
        .cgroups_path(PathBuf::from(config.cgroup_path()))
        .masked_paths(linux.masked_paths().clone().unwrap_or_default())
        .readonly_paths(linux.readonly_paths().clone().unwrap_or_default())
        .build()
        .map_err(err)?;

    let mut mounts: Vec<Mount> = Spec::default().mounts().clone().unwrap_or_default();
    for (source, destination) in
        [(&etc.hostname, "/etc/hostname"), (&etc.hosts, "/etc/hosts"), (&etc.resolv_conf, "/etc/resolv.conf")]
    {
        mounts.push(
            MountBuilder::default()
                .destination(destination)
                .typ("bind")
                .source(source)
                .options(vec!["rbind".to_owned(), "rprivate".to_owned()])
                .build()
                .map_err(err)?,
        );
    }

    // The init, read-only on the runtime's /dev tmpfs: nothing of the
    // image's root is touched, read-only or not.
    if let Some(init) = &config.init_binary {
        let options = ["bind", "ro", "nosuid", "nodev", "rprivate"].map(str::to_owned).to_vec();
        let mount = MountBuilder::default().destination(INIT).typ("bind").source(init).options(options);
        mounts.push(mount.build().map_err(err)?);
    }

    // What the spec mounts, parents before what lies under them (as Docker
    // sorts them): a volume at /data never hides a tmpfs at /data/cache.
    let mut own: Vec<Mount> = Vec::new();
    for t in &config.overrides.options.tmpfs {
        let mut options = vec!["nosuid".to_owned(), "nodev".to_owned(), "mode=1777".to_owned()];
        options.extend(t.size_bytes.map(|b| format!("size={b}")));
        let mount = MountBuilder::default().destination(&t.target).typ("tmpfs").source("tmpfs").options(options);
        own.push(mount.build().map_err(err)?);
    }

    let wanted = &config.overrides.options.mounts;
    if wanted.len() != host.mounts.len() {
        return Err(SpecError::Build(format!("{} mounts, {} sources readied", wanted.len(), host.mounts.len())));
    }
    for (m, source) in wanted.iter().zip(host.mounts) {
        // nosuid and nodev: data, never a way to run as someone else or reach a device.
        let mut options = ["rbind", "rprivate", "nosuid", "nodev"].map(str::to_owned).to_vec();
        if m.readonly {
            options.push("ro".to_owned());
        }
        let mount = MountBuilder::default().destination(&m.target).typ("bind").source(source).options(options);
        own.push(mount.build().map_err(err)?);
    }

    for (source, target) in host.files {
        let options = ["rbind", "ro", "nosuid", "nodev", "noexec", "rprivate"].map(str::to_owned).to_vec();
        let mount = MountBuilder::default().destination(target).typ("bind").source(source).options(options);
        own.push(mount.build().map_err(err)?);
    }
    own.sort_by_key(|m| m.destination().components().count());
    mounts.extend(own);

    let mut spec = Spec::default();
    spec.set_hostname(Some(config.hostname()))
        .set_process(Some(process))
        .set_root(Some(
            RootBuilder::default().path(&host.rootfs).readonly(config.overrides.read_only).build().map_err(err)?,
        ))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux));
    Ok(spec)
}

/// The spec's ulimits as the runtime spec's rlimits.
fn rlimits(config: &ContainerConfig) -> Result<Vec<PosixRlimit>, SpecError> {
    config
        .overrides
        .options
        .ulimits
        .iter()
        .map(|(name, limit)| {
            let typ = match name.as_str() {
                "core" => PosixRlimitType::RlimitCore,
                "cpu" => PosixRlimitType::RlimitCpu,
                "data" => PosixRlimitType::RlimitData,
                "fsize" => PosixRlimitType::RlimitFsize,
                "locks" => PosixRlimitType::RlimitLocks,
                "memlock" => PosixRlimitType::RlimitMemlock,
                "msgqueue" => PosixRlimitType::RlimitMsgqueue,
                "nice" => PosixRlimitType::RlimitNice,
                "nofile" => PosixRlimitType::RlimitNofile,
                "nproc" => PosixRlimitType::RlimitNproc,
                "rss" => PosixRlimitType::RlimitRss,
                "rtprio" => PosixRlimitType::RlimitRtprio,
                "rttime" => PosixRlimitType::RlimitRttime,
                "sigpending" => PosixRlimitType::RlimitSigpending,
                "stack" => PosixRlimitType::RlimitStack,
                other => return Err(SpecError::Build(format!("ulimit {other:?} is not known"))),
            };
            let rlimit = PosixRlimitBuilder::default().typ(typ).soft(limit.soft).hard(limit.hard).build();
            rlimit.map_err(|e| SpecError::Build(e.to_string()))
        })
        .collect()
}

/// Docker's default set, with the config's `cap_drop` taken out (`ALL`:
/// everything) and its `cap_add` put in, as `docker run --cap-add/--cap-drop`.
pub fn capabilities(config: &ContainerConfig) -> Result<HashSet<Capability>, SpecError> {
    let parse = |name: &String| {
        name.parse::<Capability>().map_err(|_| SpecError::Build(format!("{name:?} is not a capability")))
    };
    let mut caps: HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
    if config.overrides.cap_drop.iter().any(|c| c == "ALL") {
        caps.clear();
    }
    for name in config.overrides.cap_drop.iter().filter(|c| *c != "ALL") {
        caps.remove(&parse(name)?);
    }
    for name in &config.overrides.cap_add {
        caps.insert(parse(name)?);
    }
    Ok(caps)
}

/// Docker's rule: the entrypoint (given, or the image's) followed by the
/// command (given, or the image's Cmd unless the entrypoint was replaced).
pub fn command(config: &ContainerConfig) -> Result<Vec<String>, SpecError> {
    let image = &config.image_config;
    let entrypoint = config.overrides.entrypoint.clone().unwrap_or_else(|| image.entrypoint.clone());
    let cmd = match (&config.command, &config.overrides.entrypoint) {
        (given, _) if !given.is_empty() => given.clone(),
        (_, Some(_)) => Vec::new(),
        (_, None) => image.cmd.clone(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// The image's environment, then the given one over it (by key), with
/// PATH, HOSTNAME and HOME filled in when missing.
pub fn environment(config: &ContainerConfig, home: Option<&str>) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    for var in config.image_config.env.iter().chain(&config.env) {
        let key = var.split('=').next().unwrap_or_default();
        env.retain(|v| v.split('=').next() != Some(key));
        env.push(var.clone());
    }
    let has = |env: &[String], key: &str| env.iter().any(|v| v.split('=').next() == Some(key));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={}", config.hostname()));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", home.unwrap_or("/root")));
    }
    env
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: Option<String>,
}

/// Resolves an image's `User` (`""`, `name`, `uid`, `name:group`,
/// `uid:gid`) against the image's own passwd and group files.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<User, SpecError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == user || f[2] == user));
    let (uid, mut gid, name, home) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse().map_err(|_| SpecError::UnknownUser(user.to_owned()))?,
            f[3].parse().unwrap_or(0),
            Some(f[0]),
            Some(f[5].to_owned()),
        ),
        (None, Ok(uid)) => (uid, 0, None, None),
        (None, Err(_)) => return Err(SpecError::UnknownUser(user.to_owned())),
    };
    let groups: Vec<Vec<&str>> =
        group.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 4).collect();
    if let Some(g) = grp.filter(|g| !g.is_empty()) {
        gid = match (groups.iter().find(|f| f[0] == g || f[2] == g), g.parse::<u32>()) {
            (Some(f), _) => f[2].parse().map_err(|_| SpecError::UnknownGroup(g.to_owned()))?,
            (None, Ok(gid)) => gid,
            (None, Err(_)) => return Err(SpecError::UnknownGroup(g.to_owned())),
        };
    }
    let mut extra: Vec<u32> = match name {
        Some(name) => groups
            .iter()
            .filter(|f| f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        None => Vec::new(),
    };
    extra.sort_unstable();
    extra.dedup();
    Ok(User { uid, gid, groups: extra, home })
}

#[cfg(test)]
mod tests;
