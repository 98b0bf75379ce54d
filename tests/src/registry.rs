//! Debian's docker-registry (the CNCF distribution registry), started on
//! loopback with its storage in a temp dir the test can reach into.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::Process;

#[derive(Debug)]
pub struct Registry {
    pub addr: String,
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
    _process: Process,
}

impl Registry {
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let storage = dir.path().join("storage");
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
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
        Ok(Self { addr, storage, _dir: dir, _process: process })
    }

    /// The file holding a blob's bytes in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}
