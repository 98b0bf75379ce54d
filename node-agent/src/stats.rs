//! What this agent counts and times for `/metrics` (`join --metrics-listen`).
//!
//! `AgentStats` holds counters and histograms bumped where things happen:
//! the worker (starts, restarts, probes, containers by state after each
//! pass), the image store (pulls), and DNS. Clones share them, so each part
//! keeps its own handle and nothing routes through the worker. The overlay's
//! peers and bytes are read from boringtun at scrape time (`Traffic`).

use std::collections::BTreeMap;

use berth_proto::metrics::prometheus_client::metrics::counter::Counter;
use berth_proto::metrics::prometheus_client::metrics::family::Family;
use berth_proto::metrics::prometheus_client::metrics::gauge::Gauge;
use berth_proto::metrics::prometheus_client::metrics::histogram::Histogram;
use berth_proto::metrics::prometheus_client::registry::Registry;
use berth_proto::metrics::seconds;

/// One label and its value.
pub type Label = [(&'static str, &'static str); 1];

#[derive(Debug, Clone)]
pub struct AgentStats {
    /// Task containers on this node by state, as the worker's last pass saw them.
    pub containers: Family<Label, Gauge>,
    /// From a start (or restart) job's beginning, pull included, to its container running.
    pub start_seconds: Histogram,
    pub start_failures: Counter,
    /// Restarts and replacements of a task's container.
    pub restarts: Counter,
    /// Health probes by result (ok, failed).
    pub probes: Family<Label, Counter>,
    /// Pulls from a registry (or a layout), and the bytes of layers downloaded.
    pub pull_seconds: Histogram,
    pub pull_bytes: Counter,
    /// DNS questions by response code, and the time to answer them.
    pub dns_queries: Family<Label, Counter>,
    pub dns_forwarded: Counter,
    pub dns_seconds: Histogram,
}

impl Default for AgentStats {
    fn default() -> Self {
        Self {
            containers: Family::default(),
            start_seconds: seconds(),
            start_failures: Counter::default(),
            restarts: Counter::default(),
            probes: Family::default(),
            pull_seconds: seconds(),
            pull_bytes: Counter::default(),
            dns_queries: Family::default(),
            dns_forwarded: Counter::default(),
            dns_seconds: seconds(),
        }
    }
}

/// Every state a container is counted in, so that an empty one reads 0.
const CONTAINER_STATES: [&str; 5] = ["created", "running", "exited", "failed", "lost"];

impl AgentStats {
    /// A registry of these figures (prefixed `berth_agent_`).
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("berth_agent");
        let s = self.clone();
        r.register("containers", "Task containers on this node by state", s.containers);
        r.register(
            "container_start_seconds",
            "From a start job's beginning, pull included, to its container running",
            s.start_seconds,
        );
        r.register("container_start_failures", "Start jobs that failed", s.start_failures);
        r.register("container_restarts", "Restarts and replacements of tasks' containers", s.restarts);
        r.register("probes", "Health probes by result", s.probes);
        r.register("image_pull_seconds", "Time to pull an image", s.pull_seconds);
        r.register("image_pull_bytes", "Bytes of image layers downloaded", s.pull_bytes);
        r.register("dns_queries", "DNS questions answered, by response code", s.dns_queries);
        r.register("dns_forwarded", "DNS questions sent on to an upstream server", s.dns_forwarded);
        r.register("dns_seconds", "Time to answer a DNS question", s.dns_seconds);
        r
    }

    /// Sets the containers by state from the worker's view of them.
    pub fn containers_now<'a>(&self, states: impl IntoIterator<Item = &'a str>) {
        let mut counts: BTreeMap<&'static str, i64> = CONTAINER_STATES.iter().map(|s| (*s, 0)).collect();
        for s in states {
            if let Some(n) = counts.get_mut(s) {
                *n += 1;
            }
        }
        for (state, n) in counts {
            self.containers.get_or_create(&[("state", state)]).set(n);
        }
    }
}

/// The overlay's peers and the bytes they carried, from boringtun's UAPI
/// `get=1` answer (per peer `public_key=`, `rx_bytes=`, `tx_bytes=`).
/// A peer removed and added again starts its counts over, which
/// Prometheus's `rate` reads as a counter reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub peers: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl Traffic {
    pub fn of(lines: &[String]) -> Self {
        let mut t = Self::default();
        for line in lines {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            let n = || value.trim().parse::<u64>().unwrap_or(0);
            match key {
                "public_key" => t.peers += 1,
                "rx_bytes" => t.rx_bytes += n(),
                "tx_bytes" => t.tx_bytes += n(),
                _ => {}
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Registry) -> String {
        let mut s = String::new();
        berth_proto::metrics::prometheus_client::encoding::prometheus_text::encode(&mut s, r).unwrap();
        s
    }

    #[test]
    fn containers_by_state_count_every_state_and_drop_to_zero() {
        let stats = AgentStats::default();
        stats.containers_now(["running", "running", "exited"]);
        let s = text(&stats.registry());
        assert!(s.contains("berth_agent_containers{state=\"running\"} 2\n"), "{s}");
        assert!(s.contains("berth_agent_containers{state=\"exited\"} 1\n"), "{s}");
        assert!(s.contains("berth_agent_containers{state=\"lost\"} 0\n"), "{s}");
        stats.containers_now(["exited"]);
        let s = text(&stats.registry());
        assert!(s.contains("berth_agent_containers{state=\"running\"} 0\n"), "{s}");
    }

    #[test]
    fn traffic_sums_the_peers_of_a_uapi_answer() {
        let answer: Vec<String> = [
            "private_key=00",
            "listen_port=51820",
            "public_key=aa",
            "endpoint=198.18.0.2:51820",
            "rx_bytes=1000",
            "tx_bytes=200",
            "public_key=bb",
            "rx_bytes=5",
            "tx_bytes=7",
            "errno=0",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(Traffic::of(&answer), Traffic { peers: 2, rx_bytes: 1005, tx_bytes: 207 });
        assert_eq!(Traffic::of(&[]), Traffic::default());
    }
}
