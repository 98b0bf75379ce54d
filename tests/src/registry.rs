//! Debian's docker-registry (the CNCF distribution registry), started on
//! loopback with its storage in a temp dir the test can reach into; open,
//! or behind a password (htpasswd, HTTP basic auth) or a bearer-token
//! server (see [`crate::token`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::Process;
use crate::token::{self, TokenServer};

/// The account of registries that need one.
pub const USER: &str = "tester";
pub const PASSWORD: &str = "berth-test-password";
/// bcrypt of PASSWORD (cost 5), as htpasswd files hold it.
const PASSWORD_BCRYPT: &str = "$2a$05$ULnk7r4ZhDcRLEjRlDzEG.9I6FxQrskPg/8t3zBrGwEcY4LA9kA2y";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Anonymous,
    /// HTTP basic auth against an htpasswd file.
    Basic,
    /// Bearer tokens from a token server that checks the password.
    Token,
}

#[derive(Debug)]
pub struct Registry {
    pub addr: String,
    pub storage: PathBuf,
    pub auth: Auth,
    _token_server: Option<TokenServer>,
    _dir: tempfile::TempDir,
    _process: Process,
}

impl Registry {
    pub async fn start() -> Result<Self> {
        Self::start_with(Auth::Anonymous).await
    }

    /// An anonymous registry holding the test busybox image as
    /// `busybox:v1`, and that image's reference.
    pub async fn with_busybox() -> Result<(Self, String)> {
        let registry = Self::start().await?;
        crate::oci::Image::busybox()?.push(&registry.addr, "busybox", "v1").await?;
        let image = format!("{}/busybox:v1", registry.addr);
        Ok((registry, image))
    }

    pub async fn start_with(auth: Auth) -> Result<Self> {
        Self::start_at("127.0.0.1", auth).await
    }

    /// A registry on `ip` (an address of this namespace, such as a test
    /// network's bridge, so that hosts in other namespaces reach it).
    pub async fn start_at(ip: &str, auth: Auth) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let storage = dir.path().join("storage");
        let addr = format!("{ip}:{}", crate::free_port());
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        let mut token_server = None;
        match auth {
            Auth::Anonymous => {}
            Auth::Basic => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n"))?;
                config += &format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n", htpasswd.display());
            }
            Auth::Token => {
                let server = TokenServer::start(dir.path(), USER, PASSWORD)?;
                config += &format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    server.realm,
                    token::SERVICE,
                    token::ISSUER,
                    dir.path().join("token-cert.pem").display()
                );
                token_server = Some(server);
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let mut process = Process::new(dir.path().join("registry.log"));
        process
            .start(std::process::Command::new("/usr/bin/docker-registry").arg("serve").arg(&config_path))
            .context("starting docker-registry (Debian package docker-registry)")?;
        let url = format!("http://{addr}/v2/");
        crate::wait_for(Duration::from_secs(20), "the registry to answer", async || {
            tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
        })
        .await
        .with_context(|| format!("registry at {url}"))?;
        Ok(Self { addr, storage, auth, _token_server: token_server, _dir: dir, _process: process })
    }

    /// The file holding a blob's bytes in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}
