//! The node's own iptables rules, in three chains named after its bridge,
//! so that several agents' rules (hosts that share a kernel in tests)
//! never mix, and whoever removes a bridge finds what goes with it:
//!
//! ```text
//! filter FORWARD     ─▶ BERTH-FWD-<bridge>   accept to and from the bridge, and DNATed
//!                                            connections of the mesh (Docker may have
//!                                            left FORWARD's policy at DROP)
//! nat    POSTROUTING ─▶ BERTH-POST-<bridge>  masquerade what leaves the cluster; SNAT
//!                                            the mesh's marked connections to the gateway
//! nat    PREROUTING,
//!        OUTPUT      ─▶ BERTH-MESH-<bridge>  published ports (see `mesh`)
//! ```
//!
//! The jumps depend on the bridge alone: put in once, each tagged with the
//! comment `berth:<bridge>`. What the chains hold depends on the node's
//! subnet, so they are rewritten whole, in one `iptables-restore`
//! transaction, whenever the node network is set up: a node whose subnet
//! changed (removed, then registered again) keeps no rule of its old one.

use berth_proto::model::Cidr;

use super::mesh;

pub fn forward_chain(bridge: &str) -> String {
    format!("BERTH-FWD-{bridge}")
}

pub fn postrouting_chain(bridge: &str) -> String {
    format!("BERTH-POST-{bridge}")
}

/// The comment on the jumps into the node's chains.
pub fn tag(bridge: &str) -> String {
    format!("berth:{bridge}")
}

/// The jumps into the node's chains, as (table, built-in chain, rule).
pub fn jumps(bridge: &str) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let tag = tag(bridge);
    let rule = |words: &[&str]| -> Vec<String> {
        words.iter().copied().chain(["-m", "comment", "--comment", &tag]).map(String::from).collect()
    };
    let mesh = mesh::chain(bridge);
    vec![
        ("filter", "FORWARD", rule(&["-j", &forward_chain(bridge)])),
        ("nat", "POSTROUTING", rule(&["-j", &postrouting_chain(bridge)])),
        // Published ports on any address of the host; not to 127/8 from
        // the host itself, as a reply could not be routed back to loopback.
        ("nat", "PREROUTING", rule(&["-m", "addrtype", "--dst-type", "LOCAL", "-j", &mesh])),
        ("nat", "OUTPUT", rule(&["!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL", "-j", &mesh])),
    ]
}

/// `iptables-restore --noflush` input that (re)fills the forward and
/// postrouting chains for this subnet.
pub fn restore_input(bridge: &str, subnet: Cidr, cluster: Cidr) -> String {
    let (fwd, post) = (forward_chain(bridge), postrouting_chain(bridge));
    let gateway = subnet.gateway();
    [
        "*filter".to_owned(),
        format!(":{fwd} - [0:0]"),
        format!("-A {fwd} -i {bridge} -j ACCEPT"),
        format!("-A {fwd} -o {bridge} -j ACCEPT"),
        format!("-A {fwd} -d {cluster} -m conntrack --ctstate DNAT -j ACCEPT"),
        format!("-A {fwd} -s {cluster} -m conntrack --ctstate DNAT -j ACCEPT"),
        "COMMIT".to_owned(),
        "*nat".to_owned(),
        format!(":{post} - [0:0]"),
        format!("-A {post} -s {subnet} ! -d {cluster} -j MASQUERADE"),
        format!("-A {post} -m mark --mark {} -j SNAT --to-source {gateway}", mesh::MARK),
        "COMMIT".to_owned(),
    ]
    .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chains_follow_the_subnet_and_the_jumps_only_the_bridge() {
        let (subnet, cluster) = ("198.19.1.0/24".parse().unwrap(), "198.19.0.0/16".parse().unwrap());
        let text = restore_input("berth0", subnet, cluster);
        assert!(text.contains(":BERTH-FWD-berth0 - [0:0]\n") && text.contains(":BERTH-POST-berth0 - [0:0]\n"));
        assert!(text.contains("-A BERTH-POST-berth0 -s 198.19.1.0/24 ! -d 198.19.0.0/16 -j MASQUERADE\n"), "{text}");
        assert!(text.contains("-j SNAT --to-source 198.19.1.1\n"), "{text}");
        let other = restore_input("berth0", "198.19.7.0/24".parse().unwrap(), cluster);
        assert!(!other.contains("198.19.1."), "nothing of the old subnet: {other}");
        let jumps = jumps("berth0");
        assert!(jumps.iter().all(|(_, _, rule)| rule.ends_with(&["--comment".to_owned(), "berth:berth0".to_owned()])));
        assert!(jumps.iter().all(|(_, _, rule)| !rule.iter().any(|w| w.contains("198.19."))));
    }

    #[test]
    fn chain_names_fit_iptables() {
        for name in [forward_chain("abcdefghijklmno"), postrouting_chain("abcdefghijklmno")] {
            assert!(name.len() <= 28, "{name}");
        }
    }
}
