//! The parts of an image's configuration that decide how its containers
//! run, kept in our own type so the rest of the agent never sees oci-spec.

use berth_proto::model::{Health, Probe};
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<String>,
    /// The uncompressed digest of every layer, bottom first.
    pub diff_ids: Vec<String>,
    /// The signal that asks its process to stop (`""`: SIGTERM); images
    /// stored before it was read have none.
    #[serde(default)]
    pub stop_signal: String,
    /// Its `HEALTHCHECK` (Docker's config keeps one; OCI's has no such
    /// field); images stored before it was read have none.
    #[serde(default)]
    pub health: Option<Health>,
}

impl ImageConfig {
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let image: ImageConfiguration = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let c = image.config().clone().unwrap_or_default();
        Ok(Self {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
            exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
            diff_ids: image.rootfs().diff_ids().clone(),
            stop_signal: c.stop_signal().clone().unwrap_or_default(),
            health: healthcheck(json),
        })
    }
}

/// Docker's `config.Healthcheck`: `Test` is `["NONE"]`, `["CMD", args…]`
/// or `["CMD-SHELL", command]`; durations are in nanoseconds.
fn healthcheck(json: &[u8]) -> Option<Health> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Docker {
        #[serde(default)]
        test: Vec<String>,
        #[serde(default)]
        interval: u64,
        #[serde(default)]
        timeout: u64,
        #[serde(default)]
        start_period: u64,
        #[serde(default)]
        retries: u32,
    }
    #[derive(Deserialize)]
    struct Image {
        config: Option<Config>,
    }
    #[derive(Deserialize)]
    struct Config {
        #[serde(rename = "Healthcheck")]
        healthcheck: Option<Docker>,
    }
    let d = serde_json::from_slice::<Image>(json).ok()?.config?.healthcheck?;
    let probe = match d.test.split_first() {
        Some((kind, _)) if kind == "NONE" => Some(Probe::Disable),
        Some((kind, args)) if kind == "CMD" && !args.is_empty() => Some(Probe::Exec(args.to_vec())),
        Some((kind, [shell])) if kind == "CMD-SHELL" => {
            Some(Probe::Exec(vec!["/bin/sh".into(), "-c".into(), shell.clone()]))
        }
        _ => None,
    };
    let ms = |ns: u64| Some(ns / 1_000_000).filter(|ms| *ms > 0);
    Some(Health {
        probe,
        interval_ms: ms(d.interval),
        timeout_ms: ms(d.timeout),
        retries: Some(d.retries).filter(|r| *r > 0),
        start_period_ms: ms(d.start_period),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_config_is_read() {
        let json = br#"{"architecture":"amd64","os":"linux",
            "config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/bin"],
                      "WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{"80/tcp":{}},
                      "StopSignal":"SIGQUIT"},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]}}"#;
        let c = ImageConfig::parse(json).unwrap();
        assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(c.cmd, ["echo hi"]);
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.exposed_ports, ["80/tcp"]);
        assert_eq!(c.diff_ids, ["sha256:aa", "sha256:bb"]);
        assert_eq!(c.stop_signal, "SIGQUIT");
        assert_eq!(c.health, None);
    }

    #[test]
    fn dockers_healthcheck_is_read() {
        let config = |test: &str| {
            format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"Healthcheck":{{"Test":{test},"Interval":2000000000,"Timeout":500000000,"Retries":4}}}},
                   "rootfs":{{"type":"layers","diff_ids":[]}}}}"#
            )
        };
        let c = ImageConfig::parse(config(r#"["CMD-SHELL","redis-cli ping"]"#).as_bytes()).unwrap();
        let health = c.health.expect("a healthcheck");
        assert_eq!(health.probe, Some(Probe::Exec(vec!["/bin/sh".into(), "-c".into(), "redis-cli ping".into()])));
        assert_eq!((health.interval_ms, health.timeout_ms, health.retries), (Some(2000), Some(500), Some(4)));
        assert_eq!(health.start_period_ms, None);
        let c = ImageConfig::parse(config(r#"["CMD","/bin/check","-q"]"#).as_bytes()).unwrap();
        assert_eq!(c.health.unwrap().probe, Some(Probe::Exec(vec!["/bin/check".into(), "-q".into()])));
        let c = ImageConfig::parse(config(r#"["NONE"]"#).as_bytes()).unwrap();
        assert_eq!(c.health.unwrap().probe, Some(Probe::Disable));
    }

    #[test]
    fn config_without_a_config_section_is_empty_not_an_error() {
        let c =
            ImageConfig::parse(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
        assert_eq!(c.unwrap(), ImageConfig::default());
        assert!(ImageConfig::parse(b"{").is_err());
    }
}
