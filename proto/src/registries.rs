//! Which registries need credentials and which may be reached over plain
//! HTTP, read from the operator's TOML file:
//!
//! ```toml
//! [[registry]]
//! host = "registry.internal:5000"
//! insecure = true          # plain HTTP
//! username = "ci"
//! password = "secret"
//! ```
//!
//! Registries not listed are reached over HTTPS, anonymously, except that,
//! as with Docker, one on a loopback address (`localhost`, `127.x`, `[::1]`)
//! is plain HTTP unless listed with `insecure = false`. Basic credentials
//! are also what the bearer-token flow exchanges for a token.
//!
//! Agents read it to pull; servers read it to resolve a service's tag to
//! the digest its tasks then pull (`berth-server --registries`).

use std::path::Path;
use std::time::Duration;

use oci_client::client::{current_platform_resolver, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default, rename = "registry")]
    pub registries: Vec<Registry>,
    /// The file it was read from, for messages that say what to add there.
    #[serde(skip)]
    pub path: Option<std::path::PathBuf>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub host: String,
    /// Plain HTTP; unset: only for a loopback host.
    #[serde(default)]
    pub insecure: Option<bool>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Registries {
    /// Reads the file; a missing file means no special registries.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self { path: Some(path.to_owned()), ..Self::default() })
            }
            Err(e) => return Err(format!("reading registry config {}: {e}", path.display())),
        };
        let mut parsed: Self = toml::from_str(&text).map_err(|e| format!("registry config {}: {e}", path.display()))?;
        parsed.path = Some(path.to_owned());
        for r in &parsed.registries {
            if r.username.is_some() != r.password.is_some() {
                return Err(format!(
                    "registry config {}: registry {:?} needs both username and password, or neither",
                    path.display(),
                    r.host
                ));
            }
        }
        Ok(parsed)
    }

    /// Plain HTTP for the registries marked insecure and, as Docker, for
    /// `host` when it is on a loopback address; HTTPS for the rest.
    pub fn protocol_for(&self, host: &str) -> ClientProtocol {
        let mut plain: Vec<String> =
            self.registries.iter().filter(|r| r.insecure == Some(true)).map(|r| r.host.clone()).collect();
        let said = self.registries.iter().find(|r| r.host == host).and_then(|r| r.insecure);
        if is_loopback(host) && said.is_none() {
            plain.push(host.to_owned());
        }
        ClientProtocol::HttpsExcept(plain)
    }

    /// The file to name in a message: its path, or the flag that sets it.
    pub fn file(&self) -> String {
        self.path.as_ref().map_or_else(|| "the registries file (--registries)".to_owned(), |p| p.display().to_string())
    }

    /// A client for the registry at `host`, reached as this file says (for
    /// an index, it picks the manifest of this machine's platform), and the
    /// credentials to present. It fails (rather than panic, as the crate's
    /// own fallback would) when no TLS client can be made, e.g. a host
    /// without CA certificates.
    pub fn client(&self, host: &str) -> Result<(Client, RegistryAuth), String> {
        // reqwest is built without a crypto provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: self.protocol_for(host),
            platform_resolver: Some(Box::new(current_platform_resolver)),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let client = Client::try_from(config).map_err(|e| format!("cannot make a client for registry {host}: {e}"))?;
        Ok((client, self.auth(host)))
    }

    pub fn auth(&self, host: &str) -> RegistryAuth {
        match self.registries.iter().find(|r| r.host == host) {
            Some(Registry { username: Some(u), password: Some(p), .. }) => RegistryAuth::Basic(u.clone(), p.clone()),
            _ => RegistryAuth::Anonymous,
        }
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Registries, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.toml");
        std::fs::write(&path, text).unwrap();
        Registries::load(&path)
    }

    #[test]
    fn insecure_hosts_and_credentials_are_read() {
        let r = load("[[registry]]\nhost = \"127.0.0.1:5000\"\ninsecure = true\nusername = \"u\"\npassword = \"p\"\n")
            .unwrap();
        assert_eq!(r.protocol_for("registry:5000"), ClientProtocol::HttpsExcept(vec!["127.0.0.1:5000".into()]));
        assert!(matches!(r.auth("127.0.0.1:5000"), RegistryAuth::Basic(u, p) if u == "u" && p == "p"));
        assert!(matches!(r.auth("docker.io"), RegistryAuth::Anonymous));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(load("[[registry]]\nhost = \"h\"\nusername = \"u\"\n")
            .unwrap_err()
            .contains("both username and password"));
        assert!(load("[[registry]]\nhost = \"h\"\ninsecur = true\n").unwrap_err().contains("insecur"));
        assert!(Registries::load(Path::new("/nonexistent/registries.toml")).unwrap().registries.is_empty());
    }

    #[test]
    fn a_registry_on_loopback_is_plain_http_without_saying_so() {
        let none = Registries::default();
        for host in ["127.0.0.1:5000", "localhost:5000", "[::1]:5000", "127.9.9.9"] {
            assert_eq!(none.protocol_for(host), ClientProtocol::HttpsExcept(vec![host.into()]), "{host}");
        }
        for host in ["registry:5000", "198.18.0.1:5000", "localhost.example:5000"] {
            assert_eq!(none.protocol_for(host), ClientProtocol::HttpsExcept(vec![]), "{host}");
        }
        let tls = load("[[registry]]\nhost = \"localhost:5000\"\ninsecure = false\n").unwrap();
        assert_eq!(tls.protocol_for("localhost:5000"), ClientProtocol::HttpsExcept(vec![]), "HTTPS when said so");
    }
}
