//! The routing mesh: a service's published port answers on every address
//! of every node, balanced over the service's running replicas wherever
//! they run, like Swarm's ingress network.
//!
//! It is done by the kernel, as kube-proxy's iptables mode does it, so the
//! data path never passes through the agent (connections to replicas on
//! the node outlive an agent restart; those through the overlay pause
//! while it is down) and costs one conntrack lookup per packet:
//!
//! ```text
//! nat PREROUTING/OUTPUT, to any address of this host ─▶ BERTH-MESH-<bridge>
//!   -p tcp --dport 8080 ─▶ MARK, then DNAT to one replica (random, evenly)
//! nat POSTROUTING, marked ─▶ SNAT to the bridge's gateway address
//! ```
//!
//! The source becomes this node's gateway (an address of its subnet) so the
//! reply comes back through this node, also from a replica on another node:
//! the overlay only carries addresses of the nodes' subnets. Each change of
//! the endpoints rewrites the mesh chain in one `iptables-restore`
//! transaction (a chain declared in it is flushed first), so a packet sees
//! either the old rules or the new. The jumps, the SNAT and the FORWARD
//! accepts are the node's fixed rules (`rules`).

use std::fmt::Write;
use std::net::Ipv4Addr;

use berth_proto::model::Protocol;

/// The packet mark that asks for the SNAT; one bit, clear of the bits
/// kube-proxy (0x4000, 0x8000) and Docker use.
pub const MARK: &str = "0x1000000/0x1000000";

/// One published port and the replicas it balances over.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    pub port: u16,
    pub protocol: Protocol,
    /// The container port the replicas listen on.
    pub target: u16,
    pub service: String,
    pub backends: Vec<Ipv4Addr>,
}

/// The mesh chain of the agent that owns `bridge` (at most 26 characters,
/// within iptables' 28).
pub fn chain(bridge: &str) -> String {
    format!("BERTH-MESH-{bridge}")
}

/// `iptables-restore --noflush` input that replaces the mesh chain's rules
/// with these ports'. The `reserved` ports (the agent's own) come first and
/// are left alone, whatever a service publishes. A port without a running
/// replica gets no rule: the connection is refused, as by a host with
/// nothing listening.
pub fn restore_input(bridge: &str, reserved: &[(u16, Protocol)], published: &[Published]) -> String {
    let chain = chain(bridge);
    let mut out = format!("*nat\n:{chain} - [0:0]\n");
    for (port, proto) in reserved {
        let _ = writeln!(out, "-A {chain} -p {proto} -m {proto} --dport {port} -j RETURN");
    }
    for p in published.iter().filter(|p| !p.backends.is_empty()) {
        let head = format!(
            "-A {chain} -p {proto} -m {proto} --dport {port} -m comment --comment {service}",
            proto = p.protocol,
            port = p.port,
            service = p.service,
        );
        let _ = writeln!(out, "{head} -j MARK --set-xmark {MARK}");
        let n = p.backends.len();
        for (i, backend) in p.backends.iter().enumerate() {
            // Rule i sees the packets the rules before it let through, so
            // 1/(n-i) of those makes every replica's share 1/n.
            let pick = match n - i {
                1 => String::new(),
                left => format!(" -m statistic --mode random --probability {:.10}", 1.0 / left as f64),
            };
            let _ = writeln!(out, "{head}{pick} -j DNAT --to-destination {backend}:{}", p.target);
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// `conntrack -D` filters for UDP flows the new rules would not route the
/// same way. UDP has no end, so a client that keeps sending keeps its
/// conntrack entry, and with it the old decision, forever: flows to a
/// replica that left (its address may go to another task), and flows that
/// met a port without replicas (delivered to this host, never NATed).
/// Without a `before` (the agent just started) nothing is known to be stale.
pub fn stale_udp(before: Option<&[Published]>, after: &[Published]) -> Vec<Vec<String>> {
    let Some(before) = before else { return vec![] };
    let udp = |list: &[Published], port: u16| -> Vec<Ipv4Addr> {
        list.iter().filter(|p| p.protocol == Protocol::Udp && p.port == port).flat_map(|p| p.backends.clone()).collect()
    };
    let mut filters = Vec::new();
    let mut ports: Vec<u16> =
        before.iter().chain(after).filter(|p| p.protocol == Protocol::Udp).map(|p| p.port).collect();
    ports.sort_unstable();
    ports.dedup();
    for port in ports {
        let (old, new) = (udp(before, port), udp(after, port));
        let filter = |more: &[String]| -> Vec<String> {
            ["-p", "udp", "--orig-port-dst", &port.to_string()]
                .iter()
                .map(|s| s.to_string())
                .chain(more.iter().cloned())
                .collect()
        };
        if old.is_empty() && !new.is_empty() {
            filters.push(filter(&[]));
        }
        for gone in old.iter().filter(|b| !new.contains(b)) {
            filters.push(filter(&["--dst-nat".to_owned(), gone.to_string()]));
        }
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(backends: &[&str]) -> Published {
        Published {
            port: 8080,
            protocol: Protocol::Tcp,
            target: 80,
            service: "web".into(),
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn every_replica_gets_an_even_share() {
        let text = restore_input("berth0", &[], &[web(&["198.19.1.2", "198.19.2.2", "198.19.3.2"])]);
        let rules: Vec<&str> = text.lines().collect();
        assert_eq!(rules[..2], ["*nat", ":BERTH-MESH-berth0 - [0:0]"]);
        assert_eq!(
            rules[2],
            "-A BERTH-MESH-berth0 -p tcp -m tcp --dport 8080 -m comment --comment web -j MARK --set-xmark 0x1000000/0x1000000"
        );
        assert!(
            rules[3].ends_with("--probability 0.3333333333 -j DNAT --to-destination 198.19.1.2:80"),
            "{}",
            rules[3]
        );
        assert!(
            rules[4].ends_with("--probability 0.5000000000 -j DNAT --to-destination 198.19.2.2:80"),
            "{}",
            rules[4]
        );
        assert!(rules[5].ends_with("--comment web -j DNAT --to-destination 198.19.3.2:80"), "the last takes the rest");
        assert_eq!(rules[6..], ["COMMIT"]);
    }

    #[test]
    fn no_replica_no_rule_and_an_empty_mesh_still_flushes() {
        let text = restore_input("b1", &[], &[web(&[])]);
        assert_eq!(text, "*nat\n:BERTH-MESH-b1 - [0:0]\nCOMMIT\n");
        let udp = Published { protocol: Protocol::Udp, port: 53, target: 5353, ..web(&["198.19.1.9"]) };
        let text = restore_input("b1", &[], &[udp]);
        assert!(text.contains("-p udp -m udp --dport 53") && text.contains("198.19.1.9:5353"), "{text}");
        assert!(!text.contains("statistic"), "one replica takes all");
    }

    #[test]
    fn the_agents_own_ports_come_first_and_stay_its_own() {
        let reserved = [(7500, Protocol::Tcp), (51820, Protocol::Udp)];
        let text = restore_input("b1", &reserved, &[web(&["198.19.1.2"])]);
        let rules: Vec<&str> = text.lines().collect();
        assert_eq!(rules[2], "-A BERTH-MESH-b1 -p tcp -m tcp --dport 7500 -j RETURN");
        assert_eq!(rules[3], "-A BERTH-MESH-b1 -p udp -m udp --dport 51820 -j RETURN");
        assert!(rules[4].contains("--dport 8080"), "{text}");
    }

    #[test]
    fn udp_flows_that_the_new_rules_would_route_elsewhere_are_forgotten() {
        let dns = |backends: &[&str]| Published { protocol: Protocol::Udp, port: 53, target: 53, ..web(backends) };
        assert!(stale_udp(None, &[dns(&["198.19.1.2"])]).is_empty(), "nothing known before the first rules");
        assert!(stale_udp(Some(&[web(&[])]), &[web(&["198.19.1.2"])]).is_empty(), "TCP flows end by themselves");
        let words = |f: &Vec<String>| f.join(" ");
        let first = stale_udp(Some(&[dns(&[])]), &[dns(&["198.19.1.2"])]);
        assert_eq!(
            first.iter().map(words).collect::<Vec<_>>(),
            ["-p udp --orig-port-dst 53"],
            "flows that met no replica"
        );
        let moved = stale_udp(Some(&[dns(&["198.19.1.2", "198.19.2.2"])]), &[dns(&["198.19.2.2", "198.19.3.2"])]);
        assert_eq!(moved.iter().map(words).collect::<Vec<_>>(), ["-p udp --orig-port-dst 53 --dst-nat 198.19.1.2"]);
        let unpublished = stale_udp(Some(&[dns(&["198.19.1.2"])]), &[]);
        assert_eq!(unpublished.len(), 1, "a port no longer published lets its flows go");
    }

    #[test]
    fn the_chain_name_fits_iptables() {
        assert!(chain("abcdefghijklmno").len() <= 28);
    }
}
