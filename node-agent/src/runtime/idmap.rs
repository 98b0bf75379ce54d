//! Idmapped mounts (Linux 5.12+; overlayfs takes them as layers from
//! 5.19): a directory seen through a mount that shifts its files' owners
//! by a user namespace's map, so a container with its own ids sees its
//! image's layers owned by its own root, without a copy of the layers per
//! container and without changing the shared store.
//!
//! ```text
//! open_tree(layer, CLONE) ─▶ mount_setattr(IDMAP, userns) ─▶ move_mount(RUN/layers/N)
//! ```
//!
//! The three syscalls have no safe wrapper in nix, so they are made here
//! through libc, each with its safety argument.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Mounts `source` at `target` (an existing directory) with its owners
/// mapped through the user namespace `userns`: host root's files appear
/// owned by the namespace's root, and so on through its map.
pub fn mount_idmapped(source: &Path, target: &Path, userns: &impl AsFd) -> io::Result<()> {
    let path = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (source_c, target_c) = (path(source)?, path(target)?);
    let fail = |what: &str| {
        let e = io::Error::last_os_error();
        io::Error::new(
            e.kind(),
            format!("{what} {} for an idmapped mount at {}: {e}", source.display(), target.display()),
        )
    };
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    // SAFETY: a path that lives through the call; the fd returned is owned below.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, source_c.as_ptr(), flags) };
    if tree < 0 {
        return Err(fail("cloning"));
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_fd().as_raw_fd() as u64,
    };
    // SAFETY: the attr struct and an empty path live through the call; its
    // size is passed with it.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if set < 0 {
        return Err(fail("idmapping"));
    }
    // SAFETY: the descriptor and paths live through the call.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(fail("attaching"));
    }
    Ok(())
}
