//! The parts of an image's configuration that decide how its containers
//! run, kept in our own type so the rest of the agent never sees oci-spec.

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
        })
    }
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
    }

    #[test]
    fn config_without_a_config_section_is_empty_not_an_error() {
        let c =
            ImageConfig::parse(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
        assert_eq!(c.unwrap(), ImageConfig::default());
        assert!(ImageConfig::parse(b"{").is_err());
    }
}
