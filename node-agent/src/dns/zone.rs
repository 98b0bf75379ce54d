//! The cluster domain as one node answers it: a pure table made from the
//! endpoints the control plane streams to every agent, and the answer to
//! one question. No IO here; the server (`server.rs`) asks and sends.
//!
//! ```text
//! web.                         A    every running replica of web (a bare service name)
//! web.berth.local.             A    the same (AAAA for replicas with IPv6 addresses)
//! 2.web.berth.local.           A    replica 2 of web
//! db.shop.berth.local.         A    the replicas of shop_db, service db of stack shop
//!                                   (2.db.shop and SRV names likewise)
//! _http._tcp.web.berth.local. SRV  0 10 80 1.web.berth.local. (one per replica; their
//!                                   addresses in the additional section)
//! 5.1.19.198.in-addr.arpa.     PTR  2.web.berth.local. (for a replica's address; ip6.arpa too)
//! anything else in berth.local NXDOMAIN, with the zone's SOA
//! anything else                elsewhere: the host's resolvers answer it
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use berth_proto::model::{Cidr, Protocol};
use hickory_server::proto::rr::rdata::{A, AAAA, PTR, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

/// One service's running replicas, (slot, address), and its named ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub replicas: Vec<(u32, IpAddr)>,
    pub ports: Vec<NamedPort>,
}

/// A port with a name, for SRV records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// What the zone says to one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Records of the name, and records that help with them.
    Found { answers: Vec<Record>, additionals: Vec<Record> },
    /// The name exists, with no record of that type: the SOA tells how
    /// long to remember that.
    NoData { soa: Record },
    /// No such name in the cluster domain.
    NxDomain { soa: Record },
    /// Not the cluster's to answer.
    Elsewhere,
    /// The cluster's, but the zone has not been given the cluster's
    /// endpoints yet (an agent just started): SERVFAIL, which a client
    /// retries, rather than a NXDOMAIN it would remember.
    NotReady,
}

#[derive(Debug, Clone)]
pub struct Zone {
    domain: Name,
    ttl: u32,
    /// Addresses in it are the cluster's: their PTR names are answered here.
    cluster: Option<Cidr>,
    services: BTreeMap<String, Service>,
    by_address: BTreeMap<IpAddr, Name>,
    /// It has been given the cluster's endpoints at least once.
    loaded: bool,
}

impl Zone {
    /// An empty zone for `domain` (e.g. `berth.local`) whose records live `ttl` seconds.
    pub fn new(domain: &str, ttl: u32) -> Result<Self, String> {
        let domain = Name::from_ascii(domain.trim_end_matches('.'))
            .map(|n| n.to_lowercase())
            .map_err(|e| format!("{domain:?} is not a domain name: {e}"))?;
        if domain.num_labels() == 0 {
            return Err("the cluster domain cannot be the root".into());
        }
        let mut domain = domain;
        domain.set_fqdn(true);
        Ok(Self { domain, ttl, cluster: None, services: BTreeMap::new(), by_address: BTreeMap::new(), loaded: false })
    }

    /// Replaces what the zone knows with the cluster's current endpoints.
    pub fn update(&mut self, cluster: Option<Cidr>, services: Vec<Service>) {
        self.cluster = cluster;
        self.loaded = true;
        self.by_address.clear();
        self.services.clear();
        for s in services {
            let Ok(label) = Name::from_ascii(&s.name).map(|n| n.to_lowercase()) else { continue };
            let Ok(service) = label.append_domain(&self.domain) else { continue };
            for (slot, address) in &s.replicas {
                if let Ok(name) = service.prepend_label(slot.to_string()) {
                    self.by_address.insert(*address, name);
                }
            }
            self.services.insert(s.name.to_ascii_lowercase(), s);
        }
    }

    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// The answer to `qtype` of `name`.
    pub fn answer(&self, name: &Name, qtype: RecordType) -> Answer {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        if let Some(answer) = self.reverse(&name, qtype) {
            return answer;
        }
        if self.domain.zone_of(&name) && !self.loaded {
            return Answer::NotReady;
        }
        if self.domain.zone_of(&name) {
            let inner = (name.num_labels() - self.domain.num_labels()) as usize;
            let mut labels: Vec<String> =
                name.iter().take(inner).map(|l| String::from_utf8_lossy(l).into_owned()).collect();
            // `db.shop` is the stack's service `shop_db`: two labels, one service.
            let mut service_labels = 1;
            if let [.., short, stack] = labels.as_slice() {
                let joined = format!("{stack}_{short}");
                if self.services.contains_key(&joined) {
                    labels.truncate(labels.len() - 2);
                    labels.push(joined);
                    service_labels = 2;
                }
            }
            return match labels.as_slice() {
                [] if matches!(qtype, RecordType::SOA | RecordType::ANY) => self.found(vec![self.soa()]),
                [] => Answer::NoData { soa: self.soa() },
                [service] => self.addresses(&name, service, None, qtype),
                [slot, service] => match slot.parse::<u32>() {
                    Ok(slot) => self.addresses(&name, service, Some(slot), qtype),
                    Err(_) => Answer::NxDomain { soa: self.soa() },
                },
                [port, protocol, service] => self.services(&name, [port, protocol, service], service_labels, qtype),
                _ => Answer::NxDomain { soa: self.soa() },
            };
        }
        // A bare service name (`web.`), as containers ask with a search
        // domain that failed or none; other single labels are not ours.
        if name.num_labels() == 1 {
            let label = String::from_utf8_lossy(name.iter().next().unwrap_or_default()).into_owned();
            if self.services.contains_key(&label) {
                return self.addresses(&name, &label, None, qtype);
            }
        }
        Answer::Elsewhere
    }

    /// SRV records of a named port, one per replica, each naming the
    /// replica by slot under the service's name as asked (of
    /// `service_labels` labels); their addresses go in the additional section.
    fn services(
        &self,
        name: &Name,
        [port, protocol, service]: [&str; 3],
        service_labels: usize,
        qtype: RecordType,
    ) -> Answer {
        let port = self.services.get(service).and_then(|s| {
            let p = s.ports.iter().find(|p| {
                Some(p.name.as_str()) == port.strip_prefix('_')
                    && Some(p.protocol.to_string().as_str()) == protocol.strip_prefix('_')
            })?;
            Some((s, p.port))
        });
        let Some((s, port)) = port else { return Answer::NxDomain { soa: self.soa() } };
        if !matches!(qtype, RecordType::SRV | RecordType::ANY) || s.replicas.is_empty() {
            return Answer::NoData { soa: self.soa() };
        }
        let base = name.trim_to(self.domain.num_labels() as usize + service_labels);
        let (mut answers, mut additionals) = (Vec::new(), Vec::new());
        for (slot, address) in &s.replicas {
            let Ok(target) = base.prepend_label(slot.to_string()) else { continue };
            let srv = SRV::new(0, 10, port, target.clone());
            answers.push(Record::from_rdata(name.clone(), self.ttl, RData::SRV(srv)));
            additionals.push(Record::from_rdata(target, self.ttl, rdata(*address)));
        }
        Answer::Found { answers, additionals }
    }

    /// A (IPv4) or AAAA (IPv6) records of a service's replicas (one
    /// slot's, with `slot`).
    fn addresses(&self, name: &Name, service: &str, slot: Option<u32>, qtype: RecordType) -> Answer {
        let Some(service) = self.services.get(service) else { return Answer::NxDomain { soa: self.soa() } };
        let chosen: Vec<IpAddr> =
            service.replicas.iter().filter(|(s, _)| slot.is_none_or(|want| *s == want)).map(|(_, a)| *a).collect();
        if slot.is_some() && chosen.is_empty() {
            return Answer::NxDomain { soa: self.soa() };
        }
        let wanted = |a: &IpAddr| match qtype {
            RecordType::ANY => true,
            RecordType::A => a.is_ipv4(),
            RecordType::AAAA => a.is_ipv6(),
            _ => false,
        };
        let answers: Vec<Record> =
            chosen.into_iter().filter(wanted).map(|a| Record::from_rdata(name.clone(), self.ttl, rdata(a))).collect();
        if answers.is_empty() {
            return Answer::NoData { soa: self.soa() };
        }
        self.found(answers)
    }

    /// PTR names of the cluster's addresses; None when `name` is not an
    /// address of the cluster's.
    fn reverse(&self, name: &Name, qtype: RecordType) -> Option<Answer> {
        let ip = arpa_address(name)?;
        let target = self.by_address.get(&ip);
        let ours = match ip {
            IpAddr::V4(v4) => self.cluster.is_some_and(|c| c.contains(v4)),
            IpAddr::V6(_) => false,
        };
        if target.is_none() && !ours {
            return None;
        }
        Some(match target {
            Some(target) if matches!(qtype, RecordType::PTR | RecordType::ANY) => {
                self.found(vec![Record::from_rdata(name.clone(), self.ttl, RData::PTR(PTR(target.clone())))])
            }
            Some(_) => Answer::NoData { soa: self.soa() },
            None => Answer::NxDomain { soa: self.soa() },
        })
    }

    fn found(&self, answers: Vec<Record>) -> Answer {
        Answer::Found { answers, additionals: vec![] }
    }

    /// The zone's SOA; its minimum (how long a "no" may be remembered) is the TTL.
    fn soa(&self) -> Record {
        let host = |label: &str| self.domain.prepend_label(label).unwrap_or_else(|_| self.domain.clone());
        let soa = SOA::new(host("ns"), host("hostmaster"), 1, 3600, 600, 86400, self.ttl);
        Record::from_rdata(self.domain.clone(), self.ttl, RData::SOA(soa))
    }
}

/// The one address that `d.c.b.a.in-addr.arpa.` or an ip6.arpa name
/// (32 nibbles) names; None for anything else, a network's name included.
fn arpa_address(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

/// An address's record data: A or AAAA.
fn rdata(address: IpAddr) -> RData {
    match address {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    }
}

#[cfg(test)]
mod tests;
