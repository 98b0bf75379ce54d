//! Unpacking one layer tarball into its own directory, safely.
//!
//! ```text
//! blob ──sniff──▶ gzip | zstd | plain ──hash (diff id)──▶ tar entries ──▶ layer dir
//!                                                          │
//!                                  .wh.NAME ──▶ overlay whiteout (char device 0:0)
//!                                  .wh..wh..opq ──▶ trusted.overlay.opaque=y
//! ```
//!
//! Each layer lands in its own directory, used later as an overlayfs lower
//! layer, so whiteouts are written in overlayfs's own format instead of
//! being applied. Nothing may land outside the directory: entries with `..`
//! are refused, and the tar crate refuses to write through a symlink that
//! resolves outside (it canonicalizes every parent before writing).

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{mknod, Mode, SFlag};
use sha2::{Digest, Sha256};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {0:?} escapes the layer directory")]
    Escape(String),
    #[error("layer entry {path:?}: {error}")]
    Entry { path: String, error: io::Error },
    #[error("layer is not a readable tar stream: {0}")]
    Read(io::Error),
}

/// What unpacking read: the digest of the uncompressed tar (the image
/// config's diff id for this layer) and how many entries it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub diff_id: String,
    pub entries: usize,
}

/// Compression of a layer, from its first bytes (media types lie often
/// enough that containerd and Docker sniff too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            _ => Self::None,
        }
    }
}

/// Unpacks the (possibly compressed) layer read from `blob` into `dest`,
/// which must exist and be empty.
pub fn unpack(blob: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    let mut blob = BufReader::with_capacity(256 * 1024, blob);
    let compression = Compression::sniff(blob.fill_buf().map_err(UnpackError::Read)?);
    let tar: Box<dyn Read> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
        Compression::Zstd => {
            Box::new(ruzstd::decoding::StreamingDecoder::new(blob).map_err(|e| UnpackError::Read(io::Error::other(e)))?)
        }
    };
    let mut hashed = HashingReader { inner: tar, hasher: Sha256::new() };
    let entries = unpack_tar(&mut hashed, dest)?;
    // The tar's end-of-archive padding counts for the diff id too.
    io::copy(&mut hashed, &mut io::sink()).map_err(UnpackError::Read)?;
    Ok(Unpacked { diff_id: super::source::digest_string(hashed.hasher.finalize()), entries })
}

fn unpack_tar(tar: impl Read, dest: &Path) -> Result<usize, UnpackError> {
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut count = 0;
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw).into_owned();
        let rel =
            relative_path(Path::new(OsStr::from_bytes(&raw))).ok_or_else(|| UnpackError::Escape(display.clone()))?;
        let err = |error| UnpackError::Entry { path: display.clone(), error };
        match rel.file_name().map(OsStr::as_bytes) {
            Some(name) if name == OPAQUE_MARKER.as_bytes() => mark_opaque(dest, &rel).map_err(err)?,
            Some(name) if name.starts_with(WHITEOUT_PREFIX.as_bytes()) => {
                let hidden = OsStr::from_bytes(&name[WHITEOUT_PREFIX.len()..]);
                whiteout(dest, &rel.with_file_name(hidden)).map_err(err)?
            }
            _ => {
                if !entry.unpack_in(dest).map_err(err)? {
                    return Err(UnpackError::Escape(display));
                }
            }
        }
        count += 1;
    }
    Ok(count)
}

/// The entry's path relative to the layer root, or None when it would leave
/// it. Leading `/` and `.` are dropped, as tar and Docker do.
fn relative_path(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// The directory `rel`'s parent resolves to inside `dest`, created if
/// missing; an error when a symlink would take it outside.
fn parent_inside(dest: &Path, rel: &Path) -> io::Result<PathBuf> {
    let parent = dest.join(rel.parent().unwrap_or(Path::new("")));
    fs::create_dir_all(&parent)?;
    let canon = parent.canonicalize()?;
    if !canon.starts_with(dest.canonicalize()?) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "parent directory resolves outside the layer"));
    }
    Ok(canon)
}

/// overlayfs whiteout: a character device 0:0 hides the name in lower layers.
fn whiteout(dest: &Path, rel: &Path) -> io::Result<()> {
    let name = rel.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty whiteout name"))?;
    let path = parent_inside(dest, rel)?.join(name);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path)?,
        Ok(_) => fs::remove_file(&path)?,
        Err(_) => {}
    }
    mknod(&path, SFlag::S_IFCHR, Mode::empty(), 0).map_err(io::Error::from)
}

/// overlayfs opaque directory: lower layers' contents of it are hidden.
fn mark_opaque(dest: &Path, rel: &Path) -> io::Result<()> {
    let dir = parent_inside(dest, rel)?;
    xattr::set(&dir, OPAQUE_XATTR, b"y")
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
