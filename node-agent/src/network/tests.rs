use std::sync::Mutex;

use super::*;

/// Records what would be done; fails `ip` lines that contain `fail_on`.
#[derive(Debug, Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    fail_on: Option<&'static str>,
}

impl Host for Fake {
    fn ip(&self, netns: Option<&Path>, lines: &[String]) -> io::Result<()> {
        let at = netns.map_or("node".to_owned(), |p| p.display().to_string());
        self.calls.lock().unwrap().push(format!("ip@{at}: {}", lines.join("; ")));
        match self.fail_on {
            Some(f) if lines.iter().any(|l| l.contains(f)) => Err(io::Error::other("boom")),
            _ => Ok(()),
        }
    }
    fn link_exists(&self, _: &str) -> bool {
        false
    }
    fn new_netns(&self, path: &Path, owner: Option<&Path>) -> io::Result<()> {
        std::fs::write(path, "")?;
        let owner = owner.map(|o| format!(" in {}", o.display())).unwrap_or_default();
        self.calls.lock().unwrap().push(format!("netns+ {}{owner}", path.display()));
        Ok(())
    }
    fn new_userns(&self, path: &Path, ids: IdMap) -> io::Result<()> {
        std::fs::write(path, "")?;
        self.calls.lock().unwrap().push(format!("userns+ {} {}", path.display(), ids.host_id));
        Ok(())
    }
    fn remove_netns(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)?;
        self.calls.lock().unwrap().push(format!("netns- {}", path.display()));
        Ok(())
    }
    fn forward(&self, bridge: &str, subnet: Cidr, cluster: Cidr) -> io::Result<()> {
        self.calls.lock().unwrap().push(format!("forward {bridge} {subnet} {cluster}"));
        Ok(())
    }
    fn conntrack_delete(&self, filter: &[String]) -> io::Result<()> {
        self.calls.lock().unwrap().push(format!("conntrack -D {}", filter.join(" ")));
        Ok(())
    }
    fn iptables_restore(&self, input: &str) -> io::Result<()> {
        self.calls.lock().unwrap().push(format!("iptables-restore {}", input.lines().nth(1).unwrap_or_default()));
        Ok(())
    }
}

fn net(dir: &Path, fail_on: Option<&'static str>) -> NodeNet<Fake> {
    NodeNet {
        bridge: "berth0".into(),
        subnet: "198.19.1.0/24".parse().unwrap(),
        cluster: "198.19.0.0/16".parse().unwrap(),
        mtu: 1420,
        netns_dir: dir.join("netns"),
        ids: IdRanges::new(dir.join("ids")),
        host: Fake { fail_on, ..Fake::default() },
    }
}

#[test]
fn veth_names_fit_and_differ() {
    let a = veth_name("web.1.1");
    assert_eq!(a.len(), 13);
    assert!(a.starts_with("vb") && a.chars().skip(2).all(|c| c.is_ascii_hexdigit()));
    assert_eq!(a, veth_name("web.1.1"), "stable");
    assert_ne!(a, veth_name("web.1.2"));
}

#[test]
fn a_task_gets_a_namespace_with_eth0_and_keeps_it_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let n = net(dir.path(), None);
    n.ensure().unwrap();
    let addr = Ipv4Addr::new(198, 19, 1, 7);
    let path = n.attach("web.1.1", addr, false).unwrap().netns;
    assert_eq!(path, dir.path().join("netns/web.1.1"));
    n.attach("web.1.1", addr, false).unwrap();
    let calls = n.host.calls.lock().unwrap().clone();
    let veth = veth_name("web.1.1");
    assert_eq!(
        calls,
        [
            "ip@node: link add name berth0 type bridge".to_owned(),
            "ip@node: link set dev berth0 mtu 1420 up; addr replace 198.19.1.1/24 dev berth0".to_owned(),
            "ip@node: route replace unreachable 198.19.0.0/16 metric 4096".to_owned(),
            "forward berth0 198.19.1.0/24 198.19.0.0/16".to_owned(),
            format!("netns+ {}", path.display()),
            format!("ip@node: link add {veth} mtu 1420 type veth peer name eth0 netns {}; link set dev {veth} master berth0 up; link set dev {veth} type bridge_slave hairpin on", path.display()),
            format!("ip@{}: link set dev lo up; addr add 198.19.1.7/24 dev eth0; link set dev eth0 mtu 1420 up; route add default via 198.19.1.1", path.display()),
        ],
        "the second attach (a restart) changes nothing"
    );
    assert_eq!(n.attached(), ["web.1.1"]);
    n.detach("web.1.1").unwrap();
    n.detach("web.1.1").unwrap();
    assert!(n.attached().is_empty());
}

#[test]
fn a_task_with_its_own_ids_gets_its_network_namespace_inside_its_user_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let n = net(dir.path(), None);
    let addr = Ipv4Addr::new(198, 19, 1, 8);
    let made = n.attach("web.1.1", addr, true).unwrap();
    let (user, ids) = made.userns.clone().expect("a user namespace");
    assert_eq!(user, dir.path().join("netns/users/web.1.1"));
    assert_eq!(n.ids.held(&user).unwrap(), Some(ids));
    let calls = n.host.calls.lock().unwrap().clone();
    assert_eq!(calls[0], format!("userns+ {} {}", user.display(), ids.host_id));
    assert_eq!(calls[1], format!("netns+ {} in {}", made.netns.display(), user.display()), "made inside it");
    assert_eq!(n.attach("web.1.1", addr, true).unwrap(), made, "a restart keeps both");
    let other = n.attach("web.1.2", Ipv4Addr::new(198, 19, 1, 9), true).unwrap();
    assert_ne!(other.userns.unwrap().1, ids, "each task its own block");
    assert_eq!(n.attached().len(), 2, "user namespaces are not tasks");
    // A sandbox made otherwise than asked is made again, never reused.
    let plain = n.attach("web.1.2", Ipv4Addr::new(198, 19, 1, 9), false).unwrap();
    assert_eq!(plain.userns, None);
    let old = dir.path().join("netns/users/web.1.2");
    assert!(!old.exists() && n.ids.held(&old).unwrap().is_none(), "the old sandbox went whole");
    n.detach("web.1.1").unwrap();
    assert!(!user.exists() && !made.netns.exists());
    assert_eq!(n.ids.held(&user).unwrap(), None, "its block is given back");
    // A user namespace left without its network namespace is still listed, so it goes.
    std::fs::write(dir.path().join("netns/users/web.1.3"), "").unwrap();
    assert_eq!(n.attached(), ["web.1.2", "web.1.3"]);
}

#[test]
fn a_half_made_namespace_is_undone_and_bad_addresses_refused() {
    let dir = tempfile::tempdir().unwrap();
    let n = net(dir.path(), Some("route add"));
    let err = n.attach("web.1.1", Ipv4Addr::new(198, 19, 1, 7), true).unwrap_err();
    assert!(err.to_string().contains("boom"));
    assert!(n.attached().is_empty(), "nothing left behind");
    assert!(n.ids.all().unwrap().is_empty(), "its ids are given back");
    assert!(!dir.path().join("netns/users/web.1.1").exists());
    for bad in [Ipv4Addr::new(198, 19, 1, 1), Ipv4Addr::new(198, 19, 2, 7), Ipv4Addr::new(198, 19, 1, 255)] {
        let err = n.attach("web.1.2", bad, false).unwrap_err();
        assert!(err.to_string().contains("not a task address"), "{bad}: {err}");
    }
}
