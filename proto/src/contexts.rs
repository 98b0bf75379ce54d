//! berthctl's config file: named contexts, each a cluster's servers and a
//! user's credential for it, as kubectl and nomad users expect. The
//! bootstrap server writes the first one to `DATA_DIR/admin.conf`;
//! `berthctl user add` prints more.
//!
//! ```toml
//! current-context = "prod"
//! [[contexts]]
//! name = "prod"
//! servers = ["10.0.0.1:7400", "10.0.0.2:7400"]
//! user = "admin"
//! ca = "-----BEGIN CERTIFICATE-----..."
//! certificate = "-----BEGIN CERTIFICATE-----..."
//! key = "-----BEGIN PRIVATE KEY-----..."
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::pki::Credentials;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    pub name: String,
    pub servers: Vec<String>,
    pub user: String,
    /// PEM: the cluster's roots.
    pub ca: String,
    /// PEM: the user's certificate chain.
    pub certificate: String,
    /// PEM: the user's private key.
    pub key: String,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("name", &self.name).field("servers", &self.servers).finish_non_exhaustive()
    }
}

impl Context {
    pub fn credentials(&self) -> Credentials {
        Credentials { key: self.key.clone(), chain: self.certificate.clone(), roots: self.ca.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a berth config: {why}")]
    Invalid { path: String, why: String },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} has no context {name:?}; it has: {have}")]
    NoContext { path: String, name: String, have: String },
}

impl ClientConfig {
    /// One context, made current.
    pub fn single(context: Context) -> Self {
        ClientConfig { current_context: Some(context.name.clone()), contexts: vec![context] }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|why| ConfigError::Invalid { path: path.display().to_string(), why })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Writes the file whole, readable by its owner only (it holds a key).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            crate::pki::write_private(path, self.to_toml().as_bytes())
        };
        write().map_err(|source| ConfigError::Write { path: path.display().to_string(), source })
    }

    /// The context named `name`, else the current one, else the only one.
    pub fn context(&self, name: Option<&str>, path: &Path) -> Result<&Context, ConfigError> {
        let wanted = name.or(self.current_context.as_deref());
        let found = match wanted {
            Some(n) => self.contexts.iter().find(|c| c.name == n),
            None if self.contexts.len() == 1 => self.contexts.first(),
            None => None,
        };
        found.ok_or_else(|| ConfigError::NoContext {
            path: path.display().to_string(),
            name: wanted.unwrap_or("(none chosen)").to_owned(),
            have: self.contexts.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(name: &str) -> Context {
        Context {
            name: name.into(),
            servers: vec!["198.18.0.1:7400".into()],
            user: "admin".into(),
            ca: "CA".into(),
            certificate: "CERT".into(),
            key: "KEY".into(),
        }
    }

    #[test]
    fn contexts_round_trip_and_are_chosen_by_name_current_or_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let mut cfg = ClientConfig::single(ctx("a"));
        cfg.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(ClientConfig::load(&path).unwrap(), cfg);
        cfg.contexts.push(ctx("b"));
        assert_eq!(cfg.context(None, &path).unwrap().name, "a");
        assert_eq!(cfg.context(Some("b"), &path).unwrap().name, "b");
        let err = cfg.context(Some("c"), &path).unwrap_err().to_string();
        assert!(err.contains("no context \"c\"") && err.contains("a, b"), "{err}");
        cfg.current_context = None;
        assert!(cfg.context(None, &path).is_err(), "two contexts and none current: which?");
        let err = ClientConfig::parse("contexts = 3").unwrap_err();
        assert!(err.contains("contexts"), "{err}");
    }
}
