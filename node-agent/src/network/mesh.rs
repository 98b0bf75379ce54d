//! The routing mesh: a service's published port answers on every address
//! of every node, balanced over the service's running replicas wherever
//! they run, like Swarm's ingress network.
//!
//! It is done by the kernel, as kube-proxy's iptables mode does it, so the
//! data path never passes through the agent (an agent restart does not
//! drop a connection) and costs one conntrack lookup per packet:
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
//! either the old rules or the new. The fixed rules (the jumps, the SNAT,
//! the FORWARD accepts) are put in once, with the bridge's others.

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
/// with these ports'. A port without a running replica gets no rule: the
/// connection is refused, as by a host with nothing listening.
pub fn restore_input(bridge: &str, published: &[Published]) -> String {
    let chain = chain(bridge);
    let mut out = format!("*nat\n:{chain} - [0:0]\n");
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
        let text = restore_input("berth0", &[web(&["198.19.1.2", "198.19.2.2", "198.19.3.2"])]);
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
        let text = restore_input("b1", &[web(&[])]);
        assert_eq!(text, "*nat\n:BERTH-MESH-b1 - [0:0]\nCOMMIT\n");
        let udp = Published { protocol: Protocol::Udp, port: 53, target: 5353, ..web(&["198.19.1.9"]) };
        let text = restore_input("b1", &[udp]);
        assert!(text.contains("-p udp -m udp --dport 53") && text.contains("198.19.1.9:5353"), "{text}");
        assert!(!text.contains("statistic"), "one replica takes all");
    }

    #[test]
    fn the_chain_name_fits_iptables() {
        assert!(chain("abcdefghijklmno").len() <= 28);
    }
}
