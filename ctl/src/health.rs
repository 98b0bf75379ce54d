//! Health checks as people write them: `service create --health-*` (as
//! `docker service create` spells them) and a spec file's `health:` key,
//! into the wire's `HealthCheck`. The server checks the values.

use anyhow::{anyhow, bail, Context, Result};
use berth_proto::pb::cluster::{self as pb, health_check::Probe};
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::spec::duration_ms;

/// `service create`'s health flags.
#[derive(Debug, Default, clap::Args)]
pub struct HealthFlags {
    /// A command run in each task with /bin/sh -c; healthy when it exits 0
    #[arg(long, value_name = "COMMAND")]
    health_cmd: Option<String>,
    /// PORT[/PATH]: GET PATH (default /) from the node to the task; healthy on 2xx or 3xx
    #[arg(long, value_name = "PORT[/PATH]")]
    health_http: Option<String>,
    /// PORT: healthy when the node can connect to the task on it
    #[arg(long, value_name = "PORT")]
    health_tcp: Option<u16>,
    /// Time between probes, e.g. 10s (default: the image's, else 30s)
    #[arg(long, value_name = "DURATION")]
    health_interval: Option<String>,
    /// How long a probe may take (default: the image's, else 30s)
    #[arg(long, value_name = "DURATION")]
    health_timeout: Option<String>,
    /// Failures in a row that make a task unhealthy (default: the image's, else 3)
    #[arg(long, value_name = "N")]
    health_retries: Option<u32>,
    /// Time after a start in which failures do not count (default: the image's, else 0s)
    #[arg(long, value_name = "DURATION")]
    health_start_period: Option<String>,
    /// No health check, not even the image's
    #[arg(long)]
    no_healthcheck: bool,
}

impl HealthFlags {
    pub fn to_pb(&self) -> Result<Option<pb::HealthCheck>> {
        let tests = [self.health_cmd.is_some(), self.health_http.is_some(), self.health_tcp.is_some()];
        match tests.iter().filter(|t| **t).count() {
            0 | 1 => {}
            _ => bail!("give one of --health-cmd, --health-http and --health-tcp"),
        }
        let timing = [&self.health_interval, &self.health_timeout, &self.health_start_period];
        if self.no_healthcheck && (tests.contains(&true) || timing.iter().any(|t| t.is_some())) {
            bail!("--no-healthcheck turns health checks off: give no other --health-* flag with it");
        }
        let probe = if self.no_healthcheck {
            Some(Probe::Disable(true))
        } else if let Some(cmd) = &self.health_cmd {
            Some(shell(cmd))
        } else if let Some(http) = &self.health_http {
            Some(http_flag(http).context("--health-http")?)
        } else {
            self.health_tcp.map(|port| Probe::Tcp(pb::TcpProbe { port: port.into() }))
        };
        let ms = |flag: &str, d: &Option<String>| d.as_deref().map(duration_ms).transpose().context(flag.to_owned());
        let check = pb::HealthCheck {
            probe,
            interval_ms: ms("--health-interval", &self.health_interval)?,
            timeout_ms: ms("--health-timeout", &self.health_timeout)?,
            retries: self.health_retries,
            start_period_ms: ms("--health-start-period", &self.health_start_period)?,
        };
        Ok(Some(check).filter(|c| *c != pb::HealthCheck::default()))
    }
}

/// `cmd` run by `/bin/sh -c`, as Docker's `CMD-SHELL`.
fn shell(cmd: &str) -> Probe {
    Probe::Exec(pb::ExecProbe { command: vec!["/bin/sh".into(), "-c".into(), cmd.into()] })
}

/// `PORT[/PATH]`.
fn http_flag(text: &str) -> Result<Probe> {
    let (port, path) = match text.find('/') {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, "/"),
    };
    let port = port.trim_start_matches(':');
    let port: u16 = port.parse().map_err(|_| anyhow!("{text:?}: expected PORT[/PATH] such as 8080/healthz"))?;
    Ok(Probe::Http(pb::HttpProbe { port: port.into(), path: path.into() }))
}

/// A spec file's `health:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// A list (run as is) or one string (run by /bin/sh -c).
    #[serde(default)]
    exec: Option<Value>,
    /// `{port, path}`.
    #[serde(default)]
    http: Option<HttpFile>,
    /// `{port}` or a port.
    #[serde(default)]
    tcp: Option<Value>,
    /// No check, not even the image's.
    #[serde(default)]
    disable: bool,
    /// Durations: `10s`, `1m30s`, `500ms`, or a number of seconds.
    #[serde(default)]
    interval: Option<Value>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    start_period: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    port: u16,
    #[serde(default = "root")]
    path: String,
}

fn root() -> String {
    "/".into()
}

impl HealthFile {
    pub fn into_wire(self) -> Result<pb::HealthCheck> {
        let given = [self.exec.is_some(), self.http.is_some(), self.tcp.is_some(), self.disable];
        if given.iter().filter(|g| **g).count() > 1 {
            bail!("health: give one of exec, http, tcp and disable");
        }
        let probe = if self.disable {
            Some(Probe::Disable(true))
        } else if let Some(exec) = self.exec {
            Some(match exec {
                Value::String(cmd) => shell(&cmd),
                other => Probe::Exec(pb::ExecProbe { command: crate::spec::strings(&other).context("health.exec")? }),
            })
        } else if let Some(http) = self.http {
            Some(Probe::Http(pb::HttpProbe { port: http.port.into(), path: http.path }))
        } else {
            match self.tcp {
                None => None,
                Some(Value::Number(n)) => Some(n.as_u64().filter(|p| *p <= 65535)),
                Some(Value::Mapping(m)) => Some(m.get("port").and_then(Value::as_u64).filter(|p| *p <= 65535)),
                Some(_) => Some(None),
            }
            .map(|port| port.ok_or_else(|| anyhow!("health.tcp: expected a port or {{port: PORT}}")))
            .transpose()?
            .map(|port| Probe::Tcp(pb::TcpProbe { port: port as u32 }))
        };
        Ok(pb::HealthCheck {
            probe,
            interval_ms: duration_value(self.interval).context("health.interval")?,
            timeout_ms: duration_value(self.timeout).context("health.timeout")?,
            retries: self.retries,
            start_period_ms: duration_value(self.start_period).context("health.start_period")?,
        })
    }
}

/// A duration in a spec file: a string such as `1m30s`, or whole seconds.
pub fn duration_value(value: Option<Value>) -> Result<Option<u64>> {
    Ok(match value {
        None => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|s| s.checked_mul(1000))
                .ok_or_else(|| anyhow!("{n} is not a whole number of seconds"))?,
        ),
        Some(Value::String(s)) => Some(duration_ms(&s)?),
        Some(other) => bail!("expected a duration such as 30s or 1m30s, got {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: impl FnOnce(&mut HealthFlags)) -> Result<Option<pb::HealthCheck>> {
        let mut h = HealthFlags::default();
        f(&mut h);
        h.to_pb()
    }

    #[test]
    fn flags_make_one_check_or_none() {
        assert_eq!(flags(|_| {}).unwrap(), None, "no flag: the image's check");
        let check = flags(|h| {
            h.health_cmd = Some("redis-cli ping".into());
            h.health_interval = Some("1s".into());
            h.health_retries = Some(2);
        })
        .unwrap()
        .unwrap();
        assert_eq!(check.probe, Some(shell("redis-cli ping")));
        assert_eq!((check.interval_ms, check.retries, check.timeout_ms), (Some(1000), Some(2), None));
        let http = flags(|h| h.health_http = Some("8080/healthz".into())).unwrap().unwrap();
        assert_eq!(http.probe, Some(Probe::Http(pb::HttpProbe { port: 8080, path: "/healthz".into() })));
        let http = flags(|h| h.health_http = Some("80".into())).unwrap().unwrap();
        assert_eq!(http.probe, Some(Probe::Http(pb::HttpProbe { port: 80, path: "/".into() })));
        let off = flags(|h| h.no_healthcheck = true).unwrap().unwrap();
        assert_eq!(off.probe, Some(Probe::Disable(true)));
        let timing_only = flags(|h| h.health_start_period = Some("5s".into())).unwrap().unwrap();
        assert_eq!((timing_only.probe, timing_only.start_period_ms), (None, Some(5000)), "the image's test, retimed");
    }

    #[test]
    fn conflicting_or_bad_flags_are_named() {
        let err = |f: fn(&mut HealthFlags)| format!("{:#}", flags(f).unwrap_err());
        assert!(err(|h| {
            h.health_cmd = Some("true".into());
            h.health_tcp = Some(80);
        })
        .contains("give one of --health-cmd"));
        assert!(err(|h| {
            h.no_healthcheck = true;
            h.health_interval = Some("1s".into());
        })
        .contains("--no-healthcheck"));
        assert!(err(|h| h.health_http = Some("web/healthz".into())).contains("--health-http"));
        assert!(err(|h| h.health_timeout = Some("soon".into())).contains("--health-timeout"));
    }

    fn file(yaml: &str) -> Result<pb::HealthCheck> {
        serde_yaml_ng::from_str::<HealthFile>(yaml)?.into_wire()
    }

    #[test]
    fn spec_file_forms() {
        let exec = file("exec: [redis-cli, ping]\ninterval: 2\nstart_period: 500ms\nretries: 1\n").unwrap();
        let command = vec!["redis-cli".to_owned(), "ping".to_owned()];
        assert_eq!(exec.probe, Some(Probe::Exec(pb::ExecProbe { command })));
        assert_eq!((exec.interval_ms, exec.start_period_ms, exec.retries), (Some(2000), Some(500), Some(1)));
        assert_eq!(file("exec: wget -q -O- localhost\n").unwrap().probe, Some(shell("wget -q -O- localhost")));
        let http = file("http: {port: 80}\n").unwrap();
        assert_eq!(http.probe, Some(Probe::Http(pb::HttpProbe { port: 80, path: "/".into() })));
        for tcp in ["tcp: 6379\n", "tcp: {port: 6379}\n"] {
            assert_eq!(file(tcp).unwrap().probe, Some(Probe::Tcp(pb::TcpProbe { port: 6379 })));
        }
        assert_eq!(file("disable: true\n").unwrap().probe, Some(Probe::Disable(true)));
        let err = |yaml: &str| format!("{:#}", file(yaml).unwrap_err());
        assert!(err("tcp: 80\nhttp: {port: 80}\n").contains("give one of"));
        assert!(err("tcp: 70000\n").contains("health.tcp"));
        assert!(err("interval: soon\n").contains("health.interval"));
        assert!(err("probe: x\n").contains("unknown field"));
    }
}
