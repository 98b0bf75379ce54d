//! Service discovery by name: every agent answers DNS for the cluster
//! domain (`--cluster-domain`, default `berth.local`) on its bridge's
//! gateway, port 53, UDP and TCP, where its containers' `resolv.conf`
//! points. The answers come from the endpoints the control plane streams to
//! every agent with its tasks, kept in a [`zone::Zone`] that only the
//! agent's network loop writes; a change is answered as soon as the watch
//! brings it, and the last view keeps answering while the control plane is
//! away. Every other name goes on to the host's resolvers, so containers
//! still resolve the world.

mod server;
mod tcp;
pub mod zone;

use std::net::{IpAddr, SocketAddr};

pub use server::Dns;

/// The default cluster domain.
pub const DEFAULT_DOMAIN: &str = "berth.local";

/// How a node's DNS is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub domain: String,
    pub ttl: u32,
    /// Where else it answers, besides the bridge's gateway.
    pub listen: Option<SocketAddr>,
    /// Resolvers for the rest; empty: those of the host's resolv.conf.
    pub upstreams: Vec<IpAddr>,
}

/// The resolvers named in a `resolv.conf` text, on port 53, less `except`
/// (the node's own DNS, which must not ask itself).
pub fn upstreams(resolv_conf: &str, except: &[IpAddr]) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .filter(|ip| !except.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// A container's `resolv.conf`: the node's DNS, and the cluster domain to
/// search, so `web` and `2.web` name replicas (ndots 2: a name with one dot
/// is tried in the cluster first). A stack's task searches its stack's
/// names first (`db` is `db.shop.berth.local`, the stack's `shop_db`), as
/// a Kubernetes pod searches its namespace.
pub fn resolv_conf(nameserver: IpAddr, domain: &str, stack: Option<&str>) -> String {
    let search = match stack {
        Some(stack) => format!("{stack}.{domain} {domain}"),
        None => domain.to_owned(),
    };
    format!("nameserver {nameserver}\nsearch {search}\noptions ndots:2\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_resolv_conf_less_the_node_itself() {
        let text = "# generated\nsearch example.com\nnameserver 198.18.0.53\nnameserver  fe80::1%eth0\n\
                    nameserver 198.19.1.1\nnameserver bogus\n";
        let own: IpAddr = "198.19.1.1".parse().unwrap();
        let got = upstreams(text, &[own]);
        assert_eq!(got, ["198.18.0.53:53".parse().unwrap(), SocketAddr::new("fe80::1".parse().unwrap(), 53)]);
        assert_eq!(
            resolv_conf(own, "berth.local", None),
            "nameserver 198.19.1.1\nsearch berth.local\noptions ndots:2\n"
        );
        assert_eq!(
            resolv_conf(own, "berth.local", Some("shop")),
            "nameserver 198.19.1.1\nsearch shop.berth.local berth.local\noptions ndots:2\n"
        );
    }
}
