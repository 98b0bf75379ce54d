//! Container addresses (IPAM): the cluster CIDR is split into one subnet
//! per node, and each task placed on a node takes an address from its
//! node's subnet. Both are chosen by `apply` (so every server agrees) and
//! kept in the replicated state; this module is the arithmetic.
//!
//! ```text
//! cluster 198.19.0.0/16, /24 per node ─▶ node subnets 198.19.0.0/24, 198.19.1.0/24, …
//! node subnet 198.19.1.0/24 ─▶ .0 network, .1 gateway (the node's bridge), .2–.254 tasks, .255 broadcast
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::InvalidField;

/// An IPv4 network: an address with its host bits clear, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

/// How the cluster hands out addresses; set once, when the cluster is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub cidr: Cidr,
    /// The prefix length of each node's subnet.
    pub node_prefix: u8,
    /// The ports services may publish (on every node's addresses).
    #[serde(default)]
    pub published: PortRange,
}

impl NetworkConfig {
    /// 10.42.0.0/16, a /24 (253 containers) per node, as k3s does; ports 1024-65535.
    pub const DEFAULT: Self = Self {
        cidr: Cidr { network: Ipv4Addr::new(10, 42, 0, 0), prefix: 16 },
        node_prefix: 24,
        published: PortRange::DEFAULT,
    };
}

/// An inclusive range of ports, `LOW-HIGH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    /// Above the privileged ports: ssh (22), DNS (53) and other system
    /// services are never taken over by a service's port.
    pub const DEFAULT: Self = Self { low: 1024, high: 65535 };

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl FromStr for PortRange {
    type Err = InvalidField;

    fn from_str(s: &str) -> Result<Self, InvalidField> {
        let bad = || InvalidField::new("published port range", s, "LOW-HIGH, ports from 1 to 65535, LOW <= HIGH");
        let (low, high) = s.split_once('-').ok_or_else(bad)?;
        let (low, high): (u16, u16) = (low.trim().parse().map_err(|_| bad())?, high.trim().parse().map_err(|_| bad())?);
        if low == 0 || low > high {
            return Err(bad());
        }
        Ok(Self { low, high })
    }
}

/// The longest node prefix: a /30 leaves one address for a task.
pub const MAX_NODE_PREFIX: u8 = 30;

impl Cidr {
    pub fn new(network: Ipv4Addr, prefix: u8) -> Option<Self> {
        let host_bits = u32::from(network) & !mask(prefix);
        (prefix <= 32 && host_bits == 0).then_some(Self { network, prefix })
    }

    /// How many addresses it spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// The `i`th address in it (0 is the network address).
    pub fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        (i < self.size()).then(|| Ipv4Addr::from(u32::from(self.network) + i as u32))
    }

    /// The gateway: the first address after the network's.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(1))
    }

    /// The addresses tasks may have: all but the network, the gateway and
    /// the broadcast address.
    pub fn task_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (2..self.size().saturating_sub(1)).filter_map(|i| self.nth(i))
    }

    /// How many task addresses it has (see `task_addresses`).
    pub fn task_capacity(&self) -> u64 {
        self.size().saturating_sub(3)
    }

    /// The `i`th subnet of length `prefix` in it.
    pub fn subnet(&self, prefix: u8, i: u64) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 32 || i >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        let start = u32::from(self.network) as u64 + i * (1u64 << (32 - prefix));
        Cidr::new(Ipv4Addr::from(start as u32), prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32))
    }
}

impl NetworkConfig {
    /// Checks the pair, naming the flag or field that is wrong.
    pub fn new(cidr: Cidr, node_prefix: u8) -> Result<Self, InvalidField> {
        if node_prefix < cidr.prefix || node_prefix > MAX_NODE_PREFIX {
            return Err(InvalidField::new(
                "node subnet prefix",
                node_prefix,
                format!("from {} (the cluster CIDR's) to {MAX_NODE_PREFIX}", cidr.prefix),
            ));
        }
        Ok(Self { cidr, node_prefix, published: PortRange::DEFAULT })
    }

    /// Node subnets, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Cidr> + '_ {
        let count = 1u64 << (self.node_prefix - self.cidr.prefix);
        (0..count).filter_map(|i| self.cidr.subnet(self.node_prefix, i))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || format!("{s:?} is not an IPv4 network like 198.19.0.0/16");
        let (addr, prefix) = s.split_once('/').ok_or_else(expected)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| expected())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(expected)?;
        Cidr::new(addr, prefix).ok_or_else(|| {
            format!("{s:?} has host bits set (did you mean {}/{prefix}?)", {
                Ipv4Addr::from(u32::from(addr) & mask(prefix))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_split() {
        let c: Cidr = "198.19.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "198.19.0.0/16");
        assert!("198.19.0.1/16".parse::<Cidr>().unwrap_err().contains("did you mean 198.19.0.0/16"));
        for bad in ["198.19.0.0", "198.19.0.0/33", "x/8", "198.19.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let net = NetworkConfig::new(c, 24).unwrap();
        let subnets: Vec<String> = net.subnets().map(|s| s.to_string()).collect();
        assert_eq!(subnets.len(), 256);
        assert_eq!((subnets[0].as_str(), subnets[255].as_str()), ("198.19.0.0/24", "198.19.255.0/24"));
        let s = net.subnets().nth(1).unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(198, 19, 1, 1));
        let hosts: Vec<Ipv4Addr> = s.task_addresses().collect();
        assert_eq!(
            (hosts.len(), hosts[0], hosts[252]),
            (253, Ipv4Addr::new(198, 19, 1, 2), Ipv4Addr::new(198, 19, 1, 254))
        );
        assert!(s.contains(Ipv4Addr::new(198, 19, 1, 200)) && !s.contains(Ipv4Addr::new(198, 19, 2, 1)));
        assert!(NetworkConfig::new(c, 8).is_err() && NetworkConfig::new(c, 31).is_err());
        let tiny = Cidr::new(Ipv4Addr::new(198, 19, 0, 4), 30).unwrap();
        assert_eq!(tiny.task_addresses().collect::<Vec<_>>(), [Ipv4Addr::new(198, 19, 0, 6)]);
    }
}
