use super::*;
use crate::image::ImageConfig;
use crate::runtime::record::{Limits, Seccomp};

fn config() -> ContainerConfig {
    ContainerConfig {
        image_config: ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "MODE=image".into()],
            working_dir: "/srv".into(),
            user: String::new(),
            exposed_ports: vec![],
            diff_ids: vec![],
            stop_signal: String::new(),
            health: None,
        },
        ..ContainerConfig::sample("web-1")
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n";
const GROUP: &str = "root:x:0:\nwww:x:33:\nlogs:x:40:www,other\nadm:x:4:www\n";

#[test]
fn command_follows_docker_rules() {
    let mut c = config();
    assert_eq!(command(&c).unwrap(), ["/entry", "serve"]);
    c.command = vec!["debug".into()];
    assert_eq!(command(&c).unwrap(), ["/entry", "debug"], "a command replaces Cmd and keeps Entrypoint");
    c.command.clear();
    c.overrides.entrypoint = Some(vec!["/bin/sh".into()]);
    assert_eq!(command(&c).unwrap(), ["/bin/sh"], "a new entrypoint drops the image's Cmd");
    c.overrides.entrypoint = Some(vec![]);
    assert_eq!(command(&c), Err(SpecError::NoCommand));
}

#[test]
fn given_environment_overrides_the_image_by_key() {
    let mut c = config();
    c.env = vec!["MODE=given".into(), "EXTRA=1".into()];
    let env = environment(&c, Some("/var/www"));
    assert_eq!(env, ["PATH=/bin", "MODE=given", "EXTRA=1", "HOSTNAME=web-1", "HOME=/var/www"]);
    c.image_config.env.clear();
    assert!(environment(&c, None).contains(&format!("PATH={DEFAULT_PATH}")));
}

#[test]
fn users_resolve_by_name_or_number() {
    let root = resolve_user("", PASSWD, GROUP).unwrap();
    assert_eq!((root.uid, root.gid, root.home.as_deref()), (0, 0, Some("/root")));
    let www = resolve_user("www", PASSWD, GROUP).unwrap();
    assert_eq!(www, User { uid: 33, gid: 33, groups: vec![4, 40], home: Some("/var/www".into()) });
    assert_eq!(resolve_user("33:logs", PASSWD, GROUP).unwrap().gid, 40);
    assert_eq!(
        resolve_user("1234:5678", PASSWD, GROUP).unwrap(),
        User { uid: 1234, gid: 5678, groups: vec![], home: None }
    );
    assert_eq!(resolve_user("nobody", PASSWD, GROUP), Err(SpecError::UnknownUser("nobody".into())));
    assert_eq!(resolve_user("www:staff", PASSWD, GROUP), Err(SpecError::UnknownGroup("staff".into())));
}

#[test]
fn a_given_user_and_workdir_replace_the_images() {
    let mut c = config();
    c.image_config.user = "www".into();
    let process = |c: &ContainerConfig| build(c, PASSWD, GROUP, &host(None)).unwrap().process().clone().unwrap();
    let p = process(&c);
    assert_eq!((p.user().uid(), p.user().gid(), p.cwd().to_str()), (33, 33, Some("/srv")), "the image's");
    c.overrides.user = Some("0:40".into());
    c.overrides.workdir = Some("/tmp".into());
    let p = process(&c);
    assert_eq!((p.user().uid(), p.user().gid(), p.cwd().to_str()), (0, 40, Some("/tmp")), "the given ones");
    c.overrides.user = Some("nobody-here".into());
    assert_eq!(build(&c, PASSWD, GROUP, &host(None)).unwrap_err(), SpecError::UnknownUser("nobody-here".into()));
}

#[test]
fn capabilities_hostname_and_a_read_only_root_follow_the_config() {
    let mut c = config();
    c.overrides.cap_drop = vec!["ALL".into()];
    c.overrides.cap_add = vec!["NET_BIND_SERVICE".into(), "NET_ADMIN".into()];
    c.overrides.hostname = Some("cache-1".into());
    c.overrides.read_only = true;
    let spec = build(&c, PASSWD, GROUP, &host(None)).unwrap();
    let caps = spec.process().as_ref().unwrap().capabilities().clone().unwrap();
    let want: HashSet<Capability> = [Capability::NetBindService, Capability::NetAdmin].into_iter().collect();
    assert_eq!((caps.bounding().clone().unwrap(), caps.effective().clone().unwrap()), (want.clone(), want));
    assert_eq!(spec.hostname().as_deref(), Some("cache-1"));
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    // Dropping one keeps the rest of Docker's set.
    let mut c = config();
    c.overrides.cap_drop = vec!["NET_RAW".into(), "CHOWN".into()];
    let caps = capabilities(&c).unwrap();
    assert_eq!(caps.len(), DEFAULT_CAPS.len() - 2);
    assert!(!caps.contains(&Capability::NetRaw) && caps.contains(&Capability::Kill));
    c.overrides.cap_add = vec!["FLY".into()];
    assert!(capabilities(&c).is_err());
}

fn etc() -> EtcFiles {
    EtcFiles { hostname: "/c/hostname".into(), hosts: "/c/hosts".into(), resolv_conf: "/c/resolv.conf".into() }
}

fn host(userns: Option<&Path>) -> Host<'_> {
    Host { rootfs: "/c/rootfs".into(), etc: etc(), userns, mounts: &[], files: &[] }
}

#[test]
fn volumes_and_binds_are_bind_mounts_without_suid_or_devices() {
    use berth_proto::model::{Mount, MountKind};
    let mut c = config();
    let mount = |kind, source: &str, target: &str, readonly| Mount {
        kind,
        source: source.into(),
        target: target.into(),
        readonly,
        pin: false,
        exclusive: false,
    };
    c.overrides.options.mounts =
        vec![mount(MountKind::Volume, "data", "/data", false), mount(MountKind::Bind, "/srv/conf", "/conf", true)];
    let sources = [PathBuf::from("/v/data/data"), PathBuf::from("/srv/conf")];
    let spec = build(&c, PASSWD, GROUP, &Host { mounts: &sources, ..host(None) }).unwrap();
    let mounts = spec.mounts().as_ref().unwrap();
    let found = |target: &str| mounts.iter().find(|m| m.destination() == Path::new(target)).unwrap().clone();
    let data = found("/data");
    assert_eq!(data.source().as_deref(), Some(Path::new("/v/data/data")));
    assert_eq!(data.options().clone().unwrap(), ["rbind", "rprivate", "nosuid", "nodev"]);
    let conf = found("/conf");
    assert_eq!(conf.source().as_deref(), Some(Path::new("/srv/conf")));
    assert!(conf.options().as_ref().unwrap().contains(&"ro".to_owned()));
    let files = [(PathBuf::from("/run/c/files/0"), "/run/secrets/db".to_owned())];
    let spec = build(&c, PASSWD, GROUP, &Host { mounts: &sources, files: &files, ..host(None) }).unwrap();
    let secret = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/run/secrets/db"))
        .unwrap()
        .clone();
    assert_eq!(secret.options().clone().unwrap(), ["rbind", "ro", "nosuid", "nodev", "noexec", "rprivate"]);
    // Parents first, whatever the order given.
    c.overrides.options.tmpfs = vec![berth_proto::model::Tmpfs { target: "/data/cache".into(), size_bytes: None }];
    let spec = build(&c, PASSWD, GROUP, &Host { mounts: &sources, ..host(None) }).unwrap();
    let order: Vec<&Path> = spec.mounts().as_ref().unwrap().iter().map(|m| m.destination().as_path()).collect();
    let at = |p: &str| order.iter().position(|d| *d == Path::new(p)).unwrap();
    assert!(at("/data") < at("/data/cache"), "{order:?}");
    let unready = build(&c, PASSWD, GROUP, &host(None)).unwrap_err();
    assert!(unready.to_string().contains("2 mounts, 0 sources"), "{unready}");
}

#[test]
fn spec_carries_limits_namespaces_and_hardening() {
    let mut c = config();
    c.limits = Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(500), pids: Some(20) };
    let spec = build(&c, PASSWD, GROUP, &host(None)).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let res = linux.resources().as_ref().unwrap();
    assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
    assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
    assert_eq!(res.cpu().as_ref().unwrap().period(), Some(100_000));
    assert_eq!(res.pids().as_ref().unwrap().limit(), 20);
    assert_eq!(linux.cgroups_path().as_deref(), Some(std::path::Path::new("/berth/web-1")));
    let ns: Vec<_> = linux.namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
    for t in [LinuxNamespaceType::Pid, LinuxNamespaceType::Mount, LinuxNamespaceType::Uts, LinuxNamespaceType::Ipc] {
        assert!(ns.contains(&t), "{t:?}");
    }
    assert!(ns.contains(&LinuxNamespaceType::Network));
    assert!(linux.masked_paths().as_ref().unwrap().iter().any(|p| p == "/proc/kcore"));
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.no_new_privileges(), Some(true));
    let caps = process.capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 13);
    for cap in [Capability::SysAdmin, Capability::Mknod] {
        assert!(!caps.bounding().as_ref().unwrap().contains(&cap), "{cap:?}");
    }
    assert_eq!(process.cwd(), std::path::Path::new("/srv"));
    assert_eq!(spec.hostname().as_deref(), Some("web-1"));
    let dests: Vec<_> = spec.mounts().as_ref().unwrap().iter().map(|m| m.destination().clone()).collect();
    assert!(dests.contains(&"/etc/resolv.conf".into()) && dests.contains(&"/sys".into()));
}

#[test]
fn an_init_runs_the_command_under_it_from_a_read_only_mount() {
    let mut c = config();
    c.init_binary = Some("/usr/bin/tini-static".into());
    let spec = build(&c, PASSWD, GROUP, &host(None)).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.args().as_ref().unwrap(), &["/dev/init", "--", "/entry", "serve"]);
    let init = spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == std::path::Path::new(INIT));
    let init = init.expect("the init is mounted");
    assert_eq!(init.source().as_deref(), Some(std::path::Path::new("/usr/bin/tini-static")));
    assert!(init.options().as_ref().unwrap().contains(&"ro".to_owned()));
    // The record of a container from before the field has none.
    let old: ContainerConfig = serde_json::from_value({
        let mut v = serde_json::to_value(config()).unwrap();
        v.as_object_mut().unwrap().remove("init_binary");
        v
    })
    .unwrap();
    assert_eq!(old.init_binary, None);
    // The record keeps both the asking (`init`, of the overrides) and the binary.
    let record = serde_json::to_value(&c).unwrap();
    assert_eq!((record["init"].clone(), record["init_binary"].clone()), (false.into(), "/usr/bin/tini-static".into()));
    let back: ContainerConfig = serde_json::from_value(record).unwrap();
    assert_eq!(back, c);
}

/// What guards devices on either cgroup version, as generated: no
/// CAP_MKNOD (above), a deny-all device rule (which libcontainer opens to
/// the standard character devices on v1), and the default filter.
#[test]
fn devices_are_denied_and_the_default_filter_is_on_unless_unconfined() {
    let mut c = config();
    let spec = build(&c, PASSWD, GROUP, &host(None)).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let devices = linux.resources().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(devices.len(), 1);
    assert!(!devices[0].allow() && devices[0].typ().is_none() && devices[0].access().as_deref() == Some("rwm"));
    let filter = linux.seccomp().as_ref().expect("a filter by default");
    assert_eq!(filter.default_action(), oci_spec::runtime::LinuxSeccompAction::ScmpActErrno);
    let allowed = &filter.syscalls().as_ref().unwrap()[0];
    assert!(allowed.names().iter().any(|n| n == "execve"));
    assert!(!allowed.names().iter().any(|n| n == "mount"));

    c.seccomp = Seccomp::Unconfined;
    let spec = build(&c, PASSWD, GROUP, &host(None)).unwrap();
    assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
    c.seccomp = Seccomp::Profile("{\"defaultAction\": \"SCMP_ACT_BOGUS\"}".into());
    assert!(matches!(build(&c, PASSWD, GROUP, &host(None)), Err(SpecError::Seccomp(_))));
}

#[test]
fn host_network_drops_only_the_network_namespace() {
    let mut c = config();
    c.network = NetworkMode::Host;
    let spec = build(&c, PASSWD, GROUP, &host(None)).unwrap();
    let ns: Vec<_> = spec.linux().as_ref().unwrap().namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
    assert!(!ns.contains(&LinuxNamespaceType::Network));
    assert!(ns.contains(&LinuxNamespaceType::Pid));
}

#[test]
fn a_joined_network_uses_the_namespace_made_for_it() {
    let mut c = config();
    c.network = NetworkMode::Joined {
        netns: "/run/berth-agent/netns/web.1.1".into(),
        address: [198, 19, 1, 2].into(),
        resolv_conf: None,
    };
    let spec = build(&c, PASSWD, GROUP, &host(None)).unwrap();
    let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    let net: Vec<_> = namespaces.iter().filter(|n| n.typ() == LinuxNamespaceType::Network).collect();
    assert_eq!(net.len(), 1);
    assert_eq!(net[0].path().as_deref(), Some(std::path::Path::new("/run/berth-agent/netns/web.1.1")));
    assert!(namespaces.iter().filter(|n| n.typ() != LinuxNamespaceType::Network).all(|n| n.path().is_none()));
}

#[test]
fn a_user_namespace_is_joined_by_path_with_its_ids_recorded() {
    use crate::runtime::record::UserNamespace;
    use crate::runtime::userns::IdMap;
    let ids = IdMap { host_id: 2_147_549_184, size: 65536 };
    let mut c = config();
    c.userns = UserNamespace::Own(ids);
    let path = Path::new("/run/berth-agent/containers/web-1/userns");
    let spec = build(&c, PASSWD, GROUP, &host(Some(path))).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let namespaces = linux.namespaces().clone().unwrap();
    let user: Vec<_> = namespaces.iter().filter(|n| n.typ() == LinuxNamespaceType::User).collect();
    assert_eq!(user.len(), 1);
    assert_eq!(user[0].path().as_deref(), Some(path));
    for maps in [linux.uid_mappings(), linux.gid_mappings()] {
        let map = &maps.as_ref().unwrap()[0];
        assert_eq!((map.container_id(), map.host_id(), map.size()), (0, 2_147_549_184, 65536));
    }
    // Its own network namespace, made after the user namespace is joined,
    // is owned by it; the host's network cannot be.
    assert!(namespaces.iter().any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none()));
    c.network = NetworkMode::Host;
    let refused = build(&c, PASSWD, GROUP, &host(Some(path))).unwrap_err();
    assert!(refused.to_string().contains("host's network"), "{refused}");
    // The host's ids: no user namespace, no maps.
    let spec = build(&config(), PASSWD, GROUP, &host(None)).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert!(linux.namespaces().as_ref().unwrap().iter().all(|n| n.typ() != LinuxNamespaceType::User));
    assert!(linux.uid_mappings().is_none());
}

/// This host runs cgroup v1, so the v2 path is exercised on a temp-dir
/// hierarchy laid out as the kernel lays out cgroup2: the spec's limits,
/// applied by libcgroups' v2 manager as libcontainer does, land in the
/// files the kernel reads; our reader and remover work on the same tree.
#[test]
fn limits_reach_cgroup_v2_files() {
    use libcgroups::common::{CgroupManager, ControllerOpt};

    use crate::runtime::cgroup::{Cgroups, Version};

    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::write(r.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
    let leaf = r.join("berth/web-1");
    std::fs::create_dir_all(&leaf).unwrap();
    for dir in [r, &r.join("berth")] {
        std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
    }
    for file in ["cgroup.procs", "cpu.max", "memory.max", "memory.swap.max", "pids.max"] {
        std::fs::write(leaf.join(file), "").unwrap();
    }
    let mut c = config();
    c.limits = Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(500), pids: Some(20) };
    let spec = build(&c, PASSWD, GROUP, &host(None)).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let cgroup = linux.cgroups_path().as_ref().unwrap();
    let manager = libcgroups::v2::manager::Manager::new(r.to_path_buf(), cgroup.clone()).unwrap();
    manager.add_task(nix::unistd::Pid::from_raw(4242)).unwrap();
    let resources = linux.resources().as_ref().unwrap();
    let opt = ControllerOpt { resources, disable_oom_killer: false, oom_score_adj: None, freezer_state: None };
    manager.apply(&opt).unwrap();
    let read = |file: &str| std::fs::read_to_string(leaf.join(file)).unwrap();
    assert_eq!(read("memory.max"), "67108864");
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(read("pids.max"), "20");
    assert_eq!(read("cgroup.procs"), "4242");

    let cgroups = Cgroups { root: r.to_path_buf(), version: Version::V2 };
    std::fs::write(leaf.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
    assert_eq!(cgroups.usage(&c.cgroup_path()).oom_kills, 1);
    for entry in std::fs::read_dir(&leaf).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap(); // the kernel's files vanish with the cgroup
    }
    cgroups.remove(&c.cgroup_path()).unwrap();
    assert!(!leaf.exists() && r.join("berth").exists());
}
