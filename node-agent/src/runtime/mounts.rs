//! A container's volumes and bind mounts on the host side, as its shim
//! readies them before the runtime spec is built: where each one's files
//! are, seen through the container's id map when it has its own ids, and
//! a new volume filled from the image.
//!
//! ```text
//! volume ─▶ VOLUMES/<name>/data ─┐
//! bind   ─▶ its host path       ─┴─▶ (own ids: idmapped at RUN/mounts/N) ─▶ the spec's bind mount
//! ```
//!
//! As Docker does, an empty volume mounted where the image has a directory
//! gets that directory's files, owner and modes first (a database image's
//! data directory, owned by its user), copied through the same idmapped
//! view, so the volume keeps the ids the container sees.

use std::fs;
use std::path::{Path, PathBuf};

use berth_proto::model::MountKind;

use super::idmap::mount_idmapped;
use super::record::{ContainerConfig, Dirs};
use super::rootfs;

/// Each of `config`'s mounts' host source, in order: what the spec binds.
/// `userns` is the container's user namespace when it has its own ids.
pub fn ready(
    dirs: &Dirs,
    config: &ContainerConfig,
    rootfs: &Path,
    userns: Option<&fs::File>,
) -> Result<Vec<PathBuf>, String> {
    let mut sources = Vec::with_capacity(config.overrides.options.mounts.len());
    for (i, m) in config.overrides.options.mounts.iter().enumerate() {
        let (source, volume) = match m.kind {
            MountKind::Volume => {
                let root = config.volumes.as_ref().ok_or("a volume without the node's volume directory")?;
                (root.join(&m.source).join("data"), true)
            }
            MountKind::Bind => (PathBuf::from(&m.source), false),
        };
        let meta = fs::metadata(&source).map_err(|e| match volume {
            true => format!("volume {}: {e} (it was removed while its task starts?)", m.source),
            false => format!("bind source {} does not exist on this node: {e}", m.source),
        })?;
        let seen = match userns {
            None => source,
            Some(ns) => {
                let at = dirs.run.join("mounts").join(i.to_string());
                fs::create_dir_all(at.parent().unwrap_or(&dirs.run)).map_err(|e| e.to_string())?;
                let made = match meta.is_dir() {
                    true => fs::create_dir(&at),
                    false => fs::File::create(&at).map(drop),
                };
                made.map_err(|e| format!("{}: {e}", at.display()))?;
                mount_idmapped(&source, &at, ns).map_err(|e| format!("mounts[{i}]: {e}"))?;
                at
            }
        };
        if volume {
            fill(&seen, rootfs, &m.target)?;
        }
        sources.push(seen);
    }
    Ok(sources)
}

/// Copies the image's directory at `target` into an empty volume.
fn fill(volume: &Path, rootfs: &Path, target: &str) -> Result<(), String> {
    let empty = fs::read_dir(volume).map(|mut d| d.next().is_none()).unwrap_or(false);
    let Some(from) = rootfs::resolve_in(rootfs, target).filter(|p| p.is_dir()) else { return Ok(()) };
    if !empty {
        return Ok(());
    }
    // `DIR/.` into the volume: the files, and the directory's own owner and mode.
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from.join("."))
        .arg(volume)
        .output()
        .map_err(|e| format!("copying the image's {target} into its new volume: cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "copying the image's {target} into its new volume: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
