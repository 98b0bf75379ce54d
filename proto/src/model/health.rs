//! Health checks: how a service's tasks are probed, over its image's
//! `HEALTHCHECK` (Docker's rules: a spec's fields replace the image's one
//! by one, `disable` turns the image's off), and what a probe found.
//!
//! The agent runs the probes; a task is `starting` until its first
//! success, `healthy` after one, and `unhealthy` after `retries` failures
//! in a row (failures within `start_period` of its start do not count).
//! Only a task with no check or a healthy one answers for its service
//! (`Task::serving_address`).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::InvalidField;
use crate::pb::cluster as pb;

/// A spec's health check: each field unset takes the image's, then
/// Docker's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// How to probe; `None` for the image's test.
    #[serde(default)]
    pub probe: Option<Probe>,
    #[serde(default)]
    pub interval_ms: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub start_period_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// No check, not even the image's (`--no-healthcheck`).
    Disable,
    /// A command run inside the container; healthy when it exits 0.
    Exec(Vec<String>),
    /// `GET path` from the node to the task's address; healthy on 2xx/3xx.
    Http { port: u16, path: String },
    /// A TCP connection from the node to the task's address.
    Tcp { port: u16 },
}

/// A check as it runs: every field decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Never `Disable`.
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

/// What the probes say of a running task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// No probe has passed since it started.
    Starting,
    Healthy,
    /// `retries` probes in a row failed.
    Unhealthy,
}

/// Docker's defaults.
pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_RETRIES: u32 = 3;
/// Bounds: probes no more often than this, nor waiting or counting longer.
pub const MIN_INTERVAL_MS: u64 = 100;
pub const MAX_DURATION_MS: u64 = 24 * 3_600_000;
pub const MAX_RETRIES: u32 = 1000;
/// The longest HTTP path a probe may ask for.
pub const PATH_BYTES: usize = 2048;

impl Health {
    /// Whether the spec says anything at all (the image's check holds if not).
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }

    /// The check a task runs: these fields over `image`'s (the image's
    /// `HEALTHCHECK`, already read as a `Health`), over Docker's defaults;
    /// `None` without a test or when disabled.
    pub fn resolve(&self, image: Option<&Health>) -> Option<Check> {
        let image = image.cloned().unwrap_or_default();
        let probe = self.probe.clone().or(image.probe)?;
        if probe == Probe::Disable {
            return None;
        }
        let positive = |d: Option<u64>| d.filter(|d| *d > 0);
        Some(Check {
            probe,
            interval_ms: positive(self.interval_ms).or(positive(image.interval_ms)).unwrap_or(DEFAULT_INTERVAL_MS),
            timeout_ms: positive(self.timeout_ms).or(positive(image.timeout_ms)).unwrap_or(DEFAULT_TIMEOUT_MS),
            retries: self.retries.filter(|r| *r > 0).or(image.retries.filter(|r| *r > 0)).unwrap_or(DEFAULT_RETRIES),
            start_period_ms: self.start_period_ms.or(image.start_period_ms).unwrap_or(0),
        })
    }

    /// Checks each field, naming the first that is wrong (as `health.FIELD`).
    pub fn validate(&self) -> Result<(), InvalidField> {
        match &self.probe {
            Some(Probe::Exec(args)) => {
                if args.is_empty() || args[0].is_empty() {
                    return Err(InvalidField::new("health.exec", format!("{args:?}"), "a command to run"));
                }
                if args.iter().any(|a| a.contains('\0')) {
                    return Err(InvalidField::new("health.exec", format!("{args:?}"), "arguments without NUL bytes"));
                }
            }
            Some(Probe::Http { port, path }) => {
                port_ok("health.http.port", *port)?;
                let printable = path.bytes().all(|b| b.is_ascii_graphic());
                if !path.starts_with('/') || !printable || path.len() > PATH_BYTES {
                    return Err(InvalidField::new(
                        "health.http.path",
                        path,
                        format!("a path starting with '/', printable ASCII without spaces, at most {PATH_BYTES} bytes"),
                    ));
                }
            }
            Some(Probe::Tcp { port }) => port_ok("health.tcp.port", *port)?,
            Some(Probe::Disable) | None => {}
        }
        for (field, value, min) in [
            ("health.interval", self.interval_ms, MIN_INTERVAL_MS),
            ("health.timeout", self.timeout_ms, 1),
            ("health.start_period", self.start_period_ms, 0),
        ] {
            if let Some(ms) = value.filter(|ms| *ms != 0 && !(min..=MAX_DURATION_MS).contains(ms)) {
                return Err(InvalidField::new(
                    field,
                    format!("{ms} ms"),
                    format!("from {min} ms to {} h", MAX_DURATION_MS / 3_600_000),
                ));
            }
        }
        if let Some(r) = self.retries.filter(|r| *r > MAX_RETRIES) {
            return Err(InvalidField::new("health.retries", r, format!("at most {MAX_RETRIES}")));
        }
        Ok(())
    }

    /// From the wire.
    pub fn from_pb(w: pb::HealthCheck) -> Self {
        use pb::health_check::Probe as P;
        Self {
            probe: w.probe.map(|p| match p {
                P::Disable(_) => Probe::Disable,
                P::Exec(e) => Probe::Exec(e.command),
                P::Http(h) => Probe::Http { port: clamp_port(h.port), path: h.path },
                P::Tcp(t) => Probe::Tcp { port: clamp_port(t.port) },
            }),
            interval_ms: w.interval_ms,
            timeout_ms: w.timeout_ms,
            retries: w.retries,
            start_period_ms: w.start_period_ms,
        }
    }

    pub fn to_pb(&self) -> pb::HealthCheck {
        use pb::health_check::Probe as P;
        pb::HealthCheck {
            probe: self.probe.as_ref().map(|p| match p {
                Probe::Disable => P::Disable(true),
                Probe::Exec(command) => P::Exec(pb::ExecProbe { command: command.clone() }),
                Probe::Http { port, path } => P::Http(pb::HttpProbe { port: (*port).into(), path: path.clone() }),
                Probe::Tcp { port } => P::Tcp(pb::TcpProbe { port: (*port).into() }),
            }),
            interval_ms: self.interval_ms,
            timeout_ms: self.timeout_ms,
            retries: self.retries,
            start_period_ms: self.start_period_ms,
        }
    }
}

/// A port off the wire: one out of range becomes 0, which `validate` names.
fn clamp_port(port: u32) -> u16 {
    u16::try_from(port).unwrap_or(0)
}

fn port_ok(field: &str, port: u16) -> Result<(), InvalidField> {
    if port == 0 {
        return Err(InvalidField::new(field, port, "a port from 1 to 65535"));
    }
    Ok(())
}

impl HealthState {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "starting" => Self::Starting,
            "healthy" => Self::Healthy,
            "unhealthy" => Self::Unhealthy,
            _ => return None,
        })
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        })
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disable => f.write_str("off"),
            Self::Exec(args) => write!(f, "exec {}", args.join(" ")),
            Self::Http { port, path } => write!(f, "http :{port}{path}"),
            Self::Tcp { port } => write!(f, "tcp :{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(args: &[&str]) -> Option<Probe> {
        Some(Probe::Exec(args.iter().map(|a| (*a).to_owned()).collect()))
    }

    #[test]
    fn spec_fields_replace_the_images_one_by_one() {
        let image = Health {
            probe: exec(&["/bin/sh", "-c", "true"]),
            interval_ms: Some(5000),
            retries: Some(5),
            ..Health::default()
        };
        let check = Health::default().resolve(Some(&image)).expect("the image's check");
        assert_eq!(check.probe, Probe::Exec(vec!["/bin/sh".into(), "-c".into(), "true".into()]));
        assert_eq!((check.interval_ms, check.timeout_ms, check.retries, check.start_period_ms), (5000, 30_000, 5, 0));
        let spec = Health { interval_ms: Some(1000), start_period_ms: Some(2000), ..Health::default() };
        let check = spec.resolve(Some(&image)).expect("the image's test, the spec's timing");
        assert_eq!((check.interval_ms, check.retries, check.start_period_ms), (1000, 5, 2000));
        let spec = Health { probe: Some(Probe::Tcp { port: 80 }), ..Health::default() };
        assert_eq!(spec.resolve(Some(&image)).expect("the spec's test").probe, Probe::Tcp { port: 80 });
        assert_eq!(Health { probe: Some(Probe::Disable), ..Health::default() }.resolve(Some(&image)), None);
        assert_eq!(Health::default().resolve(None), None, "no test, no check");
        assert_eq!(spec.resolve(None).expect("defaults").interval_ms, DEFAULT_INTERVAL_MS);
    }

    #[test]
    fn wire_round_trip() {
        for h in [
            Health::default(),
            Health { probe: Some(Probe::Disable), ..Health::default() },
            Health {
                probe: exec(&["redis-cli", "ping"]),
                interval_ms: Some(1000),
                timeout_ms: Some(500),
                retries: Some(2),
                start_period_ms: Some(0),
            },
            Health { probe: Some(Probe::Http { port: 8080, path: "/healthz?x=1".into() }), ..Health::default() },
            Health { probe: Some(Probe::Tcp { port: 6379 }), ..Health::default() },
        ] {
            assert_eq!(Health::from_pb(h.to_pb()), h);
        }
        let far = pb::HealthCheck {
            probe: Some(pb::health_check::Probe::Tcp(pb::TcpProbe { port: 70_000 })),
            ..Default::default()
        };
        assert_eq!(Health::from_pb(far).validate().unwrap_err().field, "health.tcp.port");
    }

    #[test]
    fn bad_values_are_named() {
        let field = |h: Health| h.validate().unwrap_err().field;
        assert_eq!(field(Health { probe: exec(&[]), ..Health::default() }), "health.exec");
        assert_eq!(field(Health { probe: exec(&["a\0"]), ..Health::default() }), "health.exec");
        for path in ["healthz", "/a b", ""] {
            let h = Health { probe: Some(Probe::Http { port: 80, path: path.into() }), ..Health::default() };
            assert_eq!(field(h), "health.http.path", "{path:?}");
        }
        assert_eq!(field(Health { probe: Some(Probe::Tcp { port: 0 }), ..Health::default() }), "health.tcp.port");
        assert_eq!(field(Health { interval_ms: Some(10), ..Health::default() }), "health.interval");
        assert_eq!(field(Health { timeout_ms: Some(MAX_DURATION_MS + 1), ..Health::default() }), "health.timeout");
        assert_eq!(field(Health { retries: Some(MAX_RETRIES + 1), ..Health::default() }), "health.retries");
        let good = Health {
            probe: Some(Probe::Http { port: 80, path: "/".into() }),
            interval_ms: Some(MIN_INTERVAL_MS),
            timeout_ms: Some(1),
            retries: Some(1),
            start_period_ms: Some(0),
        };
        assert_eq!(good.validate(), Ok(()));
    }
}
