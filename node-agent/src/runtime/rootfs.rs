//! A container's root filesystem: the image's layer directories stacked
//! read-only under a per-container writable layer with overlayfs.
//!
//! ```text
//! RUN/rootfs  = overlay(lower = layer N : … : layer 1, upper = DATA/upper, work = DATA/work)
//! ```
//!
//! The writable layer is on disk with the container's data; the mount
//! point is in its run directory (see [`super::record::Dirs`]).
//!
//! A container with a user namespace of its own sees each layer through an
//! idmapped mount at `RUN/layers/N` (see [`super::idmap`]), and its writable
//! layer's top is its root's, so its root owns `/` as it would on the host.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::idmap::mount_idmapped;
use super::record::Dirs;
use super::userns::IdMap;

/// Overlay mount options; lower layers are listed top first.
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = layers.iter().rev().map(|p| p.display().to_string()).collect();
    format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display())
}

/// Mounts the container's root at `RUN/rootfs` and returns that path;
/// with `userns` (the container's user namespace and its ids), the layers
/// are seen through its map.
pub fn mount_rootfs(dirs: &Dirs, layers: &[PathBuf], userns: Option<(&fs::File, IdMap)>) -> io::Result<PathBuf> {
    let (rootfs, upper, work) = (dirs.rootfs(), dirs.data.join("upper"), dirs.data.join("work"));
    for d in [&rootfs, &upper, &work] {
        fs::create_dir_all(d)?;
    }
    let mut layers = layers.to_vec();
    if layers.is_empty() {
        // overlayfs needs a lower layer; an image without layers gets an empty one.
        let empty = dirs.data.join("empty");
        fs::create_dir_all(&empty)?;
        layers.push(empty);
    }
    for layer in &layers {
        if !layer.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("layer {} is missing from the image store; pull the image again", layer.display()),
            ));
        }
    }
    if let Some((user_ns, ids)) = userns {
        let root = Some(nix::unistd::Uid::from_raw(ids.host_id));
        nix::unistd::chown(&upper, root, Some(nix::unistd::Gid::from_raw(ids.host_id)))?;
        let mut mapped = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            let target = dirs.run.join("layers").join(i.to_string());
            fs::create_dir_all(&target)?;
            mount_idmapped(layer, &target, user_ns)?;
            mapped.push(target);
        }
        layers = mapped;
    }
    let options = overlay_options(&layers, &upper, &work);
    // nodev: a device node in an image's layer (or made by a container
    // given CAP_MKNOD) does not open; /dev is a mount of its own.
    mount(Some("overlay"), &rootfs, Some("overlay"), MsFlags::MS_NODEV, Some(options.as_str())).map_err(|e| {
        let why = match (e, userns) {
            (nix::errno::Errno::EINVAL, Some(_)) => " (overlayfs takes idmapped layers from Linux 5.19 on)",
            _ => "",
        };
        io::Error::other(format!("mounting the overlay root at {}: {e}{why}", rootfs.display()))
    })?;
    Ok(rootfs)
}

/// Finds the executable the container will run, inside `rootfs`, the way
/// execvp would: a name with a '/' as is, otherwise along PATH. Symlinks
/// are followed within the rootfs. Returns why not when it is missing.
pub fn find_executable(rootfs: &Path, arg0: &str, path_var: &str) -> Result<(), String> {
    let candidates: Vec<String> = if arg0.contains('/') {
        vec![arg0.to_owned()]
    } else {
        path_var.split(':').filter(|d| !d.is_empty()).map(|d| format!("{}/{arg0}", d.trim_end_matches('/'))).collect()
    };
    for candidate in &candidates {
        if let Some(real) = resolve_in(rootfs, candidate) {
            if real.is_file() {
                return Ok(());
            }
        }
    }
    Err(if arg0.contains('/') {
        format!("executable {arg0:?} not found in the image")
    } else {
        format!("executable {arg0:?} not found in the image's PATH ({path_var})")
    })
}

/// `path` (absolute inside the container) resolved to a host path under
/// `rootfs`, following symlinks without leaving it.
pub(crate) fn resolve_in(rootfs: &Path, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = path.split('/').filter(|p| !p.is_empty()).map(str::to_owned).rev().collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = parts.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let host = rootfs.join(resolved.iter().collect::<PathBuf>()).join(&part);
        match fs::read_link(&host) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                parts.extend(target.split('/').filter(|p| !p.is_empty()).map(str::to_owned).rev());
            }
            Err(_) => resolved.push(part),
        }
    }
    Some(rootfs.join(resolved.iter().collect::<PathBuf>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn lower_layers_are_listed_top_first() {
        let opts = overlay_options(&["/l/1".into(), "/l/2".into()], Path::new("/c/upper"), Path::new("/c/work"));
        assert_eq!(opts, "lowerdir=/l/2:/l/1,upperdir=/c/upper,workdir=/c/work");
    }

    #[test]
    fn executables_are_found_through_symlinks_that_stay_inside() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("bin")).unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::write(r.join("bin/busybox"), b"").unwrap();
        symlink("/bin/busybox", r.join("bin/sh")).unwrap();
        symlink("../../bin/busybox", r.join("usr/bin/env")).unwrap();
        symlink("/etc/passwd", r.join("bin/escape")).unwrap();
        assert_eq!(find_executable(r, "sh", "/usr/bin:/bin"), Ok(()));
        assert_eq!(find_executable(r, "/bin/sh", ""), Ok(()));
        assert_eq!(find_executable(r, "env", "/usr/bin"), Ok(()));
        assert!(find_executable(r, "escape", "/bin").is_err(), "a symlink is resolved in the rootfs, not the host");
        let err = find_executable(r, "nope", "/bin").unwrap_err();
        assert!(err.contains("\"nope\"") && err.contains("/bin"), "{err}");
    }
}
