//! A container's secrets and configs on the host side. The agent hands
//! their values to `Runtime::start`, which writes them into a memory
//! filesystem of the container's own (`RUN/files`, mounted `nosuid,nodev,
//! noexec`), each owned and moded as its reference says (shifted into the
//! container's id map when it has its own ids); the shim bind-mounts each
//! one read-only at its target. Nothing reaches the agent's disk: the
//! container's config names them, and the filesystem goes with the run
//! directory when the container exits (a restart writes them again).
//!
//! ```text
//! RUN/files/0 .. N   secrets, then configs, in the order the config names them
//! ```

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::unistd::{chown, Gid, Uid};

use super::record::ContainerConfig;

const DIR: &str = "files";

/// Each file's host path and its path in the container, in order.
pub fn targets(config: &ContainerConfig, run: &Path) -> Vec<(PathBuf, String)> {
    let refs = config.overrides.options.files().map(|(kind, r)| r.path(kind));
    refs.enumerate().map(|(i, target)| (run.join(DIR).join(i.to_string()), target)).collect()
}

/// Writes `values` (one per reference, in order) into a fresh memory
/// filesystem under the run directory `run`.
pub fn write(run: &Path, config: &ContainerConfig, values: &[Vec<u8>]) -> io::Result<()> {
    let refs: Vec<_> = config.overrides.options.files().map(|(_, r)| r).collect();
    if refs.len() != values.len() {
        return Err(io::Error::other(format!(
            "{} secrets and configs named, {} values given",
            refs.len(),
            values.len()
        )));
    }
    if refs.is_empty() {
        return Ok(());
    }
    let dir = run.join(DIR);
    fs::create_dir_all(&dir)?;
    // Room for the values, and a page each for the inodes' sake.
    let size = values.iter().map(|v| v.len() + 4096).sum::<usize>() + 4096;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), &dir, Some("tmpfs"), flags, Some(format!("mode=0711,size={size}").as_str()))
        .map_err(|e| io::Error::other(format!("mounting a memory filesystem at {}: {e}", dir.display())))?;
    let ids = config.userns.ids();
    let shift = ids.map_or(0, |ids| ids.host_id);
    for (i, (r, value)) in refs.iter().zip(values).enumerate() {
        let path = dir.join(i.to_string());
        fs::write(&path, value)?;
        // With ids of its own, only ids inside its block are its own.
        let id = |n: u32| match ids {
            Some(ids) if n >= ids.size => {
                Err(io::Error::other(format!("id {n} is outside the container's ids (0-{})", ids.size - 1)))
            }
            _ => n.checked_add(shift).ok_or_else(|| io::Error::other(format!("id {n} is out of range"))),
        };
        chown(&path, Some(Uid::from_raw(id(r.uid)?)), Some(Gid::from_raw(id(r.gid)?)))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(r.mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use berth_proto::model::FileRef;

    use super::*;

    #[test]
    fn secrets_then_configs_in_order_at_their_paths() {
        let mut config = ContainerConfig::sample("web.1.1");
        config.overrides.options.secrets =
            vec![FileRef::named("db"), FileRef { target: "/etc/tls.key".into(), ..FileRef::named("tls") }];
        config.overrides.options.configs = vec![FileRef::named("app.conf")];
        let t = targets(&config, Path::new("/run/c"));
        assert_eq!(
            t,
            [
                (PathBuf::from("/run/c/files/0"), "/run/secrets/db".to_owned()),
                (PathBuf::from("/run/c/files/1"), "/etc/tls.key".to_owned()),
                (PathBuf::from("/run/c/files/2"), "/app.conf".to_owned()),
            ]
        );
        let e = write(Path::new("/nonexistent"), &config, &[b"x".to_vec()]).unwrap_err();
        assert!(e.to_string().contains("3 secrets and configs named, 1 values given"), "{e}");
    }
}
