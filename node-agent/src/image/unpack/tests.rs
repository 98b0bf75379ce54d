//! These tests write overlay whiteouts (mknod) and trusted xattrs: they
//! need root, like the agent itself, and fail rather than skip without it.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::*;

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A tar written header by header, so that hostile names (which the tar
/// builder refuses) can be made too.
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_old();
        let (name, kind, data, link): (&str, _, &[u8], Option<&str>) = match e {
            E::Dir(n) => (n, tar::EntryType::Directory, &[], None),
            E::File(n, d) => (n, tar::EntryType::Regular, d, None),
            E::Symlink(n, t) => (n, tar::EntryType::Symlink, &[], Some(t)),
            E::Hardlink(n, t) => (n, tar::EntryType::Link, &[], Some(t)),
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(t) = link {
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[test]
fn plain_gzip_and_zstd_layers_unpack_alike_with_the_tar_digest_as_diff_id() {
    let tar = tar_of(&[
        E::Dir("etc/"),
        E::File("etc/hostname", b"box\n"),
        E::Symlink("bin/sh", "/bin/busybox"),
        E::Hardlink("etc/name", "etc/hostname"),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    for blob in [&tar, &gz, &zst] {
        let dir = tempfile::tempdir().unwrap();
        let got = unpack(&blob[..], dir.path()).unwrap();
        assert_eq!(got, Unpacked { diff_id: sha(&tar), entries: 4 });
        assert_eq!(fs::read(dir.path().join("etc/hostname")).unwrap(), b"box\n");
        assert_eq!(fs::read_link(dir.path().join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
        let (a, b) = (dir.path().join("etc/hostname"), dir.path().join("etc/name"));
        assert_eq!(fs::metadata(&a).unwrap().ino(), fs::metadata(&b).unwrap().ino());
        assert_eq!(fs::metadata(&a).unwrap().uid(), 1000, "ownership is kept");
    }
}

#[test]
fn whiteouts_become_overlay_char_devices_and_opaque_dirs_get_the_xattr() {
    let tar =
        tar_of(&[E::Dir("etc/"), E::File("etc/.wh.passwd", b""), E::Dir("var/"), E::File("var/.wh..wh..opq", b"")]);
    let dir = tempfile::tempdir().unwrap();
    let got = unpack(&tar[..], dir.path()).unwrap();
    assert_eq!(got.entries, 4);
    let meta = fs::symlink_metadata(dir.path().join("etc/passwd")).unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), 0);
    assert!(!dir.path().join("etc/.wh.passwd").exists());
    assert_eq!(xattr::get(dir.path().join("var"), OPAQUE_XATTR).unwrap(), Some(b"y".to_vec()));
    assert!(!dir.path().join("var/.wh..wh..opq").exists());
}

/// A directory beside the layer directory that hostile entries aim at.
fn victim() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let layer = root.path().join("layer");
    let outside = root.path().join("outside");
    fs::create_dir(&layer).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"keep").unwrap();
    (root, layer, outside)
}

fn assert_outside_untouched(outside: &Path) {
    let names: Vec<_> = fs::read_dir(outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"keep");
}

#[test]
fn dot_dot_paths_are_refused() {
    for name in ["../outside/evil", "a/../../outside/evil", "./../outside/.wh.secret"] {
        let (_root, layer, outside) = victim();
        let err = unpack(&tar_of(&[E::File(name, b"x")])[..], &layer).unwrap_err();
        assert!(matches!(err, UnpackError::Escape(ref p) if p == name), "{name}: {err}");
        assert_outside_untouched(&outside);
    }
}

#[test]
fn writes_through_an_escaping_symlink_are_refused() {
    let (_root, layer, outside) = victim();
    let target = outside.to_str().unwrap();
    for entries in [
        vec![E::Symlink("link", target), E::File("link/evil", b"x")],
        vec![E::Symlink("link", "../outside"), E::File("link/evil", b"x")],
        vec![E::Symlink("link", target), E::File("link/.wh.secret", b"")],
        vec![E::Symlink("link", target), E::File("link/.wh..wh..opq", b"")],
        vec![E::Hardlink("stolen", "../outside/secret")],
    ] {
        let err = unpack(&tar_of(&entries)[..], &layer);
        assert!(err.is_err(), "an entry was written through a symlink");
        assert_outside_untouched(&outside);
    }
}

#[test]
fn a_file_over_an_escaping_symlink_replaces_the_link_inside_the_layer() {
    let (_root, layer, outside) = victim();
    let secret = outside.join("secret");
    let tar = tar_of(&[E::Symlink("evil", secret.to_str().unwrap()), E::File("evil", b"new")]);
    unpack(&tar[..], &layer).unwrap();
    assert_eq!(fs::read(layer.join("evil")).unwrap(), b"new");
    assert!(!fs::symlink_metadata(layer.join("evil")).unwrap().file_type().is_symlink());
    assert_outside_untouched(&outside);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    assert!(unpack(&[0x1f, 0x8b, 1, 2, 3][..], dir.path()).is_err());
    assert!(unpack(&[0x28, 0xb5, 0x2f, 0xfd, 9][..], dir.path()).is_err());
    assert!(unpack(&[7u8; 700][..], dir.path()).is_err());
}
