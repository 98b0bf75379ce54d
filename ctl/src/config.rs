//! Where berthctl finds the cluster and its credential: `--config`, else
//! `BERTH_CONFIG`, else `~/.config/berth/config`, in the format of
//! `berth_proto::contexts` (the bootstrap server's `admin.conf` is one).
//! `--context` picks a context; `--server` overrides its servers.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use berth_proto::contexts::{ClientConfig, Context};

/// The config file to read.
pub fn path(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
        "no config file: set BERTH_CONFIG (or --config) to a berth config such as the bootstrap server's DATA_DIR/admin.conf",
    )?;
    Ok(PathBuf::from(home).join(".config/berth/config"))
}

/// The chosen context of the config at `path`.
pub fn load(path: &std::path::Path, context: Option<&str>) -> Result<Context> {
    if !path.exists() {
        bail!(
            "no berth config at {}: berthctl needs a credential for the cluster; the bootstrap server wrote the first \
             to DATA_DIR/admin.conf (copy it there, or point BERTH_CONFIG or --config at it), and \
             `berthctl user add` makes more",
            path.display()
        );
    }
    let config = ClientConfig::load(path)?;
    Ok(config.context(context, path)?.clone())
}
