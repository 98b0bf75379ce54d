//! The release package runs on the oldest glibc berth supports (2.31,
//! Debian 11): its binaries ask for no newer symbol version, each of them
//! loads in a Debian 11 root, and a server bootstrapped there serves
//! berthctl, also run there, through a write and a read.
//!
//! tests/run.sh makes what this needs: the release package
//! (deploy/package.sh) and the Debian 11 root (tests/oldest-glibc.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use berth_tests::hosts::Hosts;
use berth_tests::{release_package, wait_for};

/// glibc's version that release binaries must run on (GLIBC_FLOOR in deploy/lib/setup.sh).
const FLOOR: (u32, u32) = (2, 31);
const BINARIES: [&str; 5] = ["berth-server", "berth-agent", "berth-shim", "berth-monitor", "berthctl"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn output(cmd: &mut Command) -> Result<(bool, String)> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{cmd:?}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// The glibc versions `binary` asks for, as (major, minor), from its
/// dynamic symbol table; none for a static binary.
fn glibc_versions(binary: &Path) -> Result<Vec<(u32, u32)>> {
    let (_, text) = output(Command::new("objdump").arg("-T").arg(binary))?;
    let mut versions: Vec<(u32, u32)> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(str::parse::<u32>);
            Some((parts.next()?.ok()?, parts.next().unwrap_or(Ok(0)).ok()?))
        })
        .collect();
    versions.sort_unstable();
    versions.dedup();
    Ok(versions)
}

#[test]
fn glibc_versions_are_read_from_the_symbol_table() -> Result<()> {
    // This test's own binary is linked against the build machine's glibc.
    let me = std::env::current_exe()?;
    let versions = glibc_versions(&me)?;
    ensure!(versions.contains(&(2, 2)) || versions.contains(&(2, 3)), "{versions:?}");
    Ok(())
}

/// Removes the package's files from the root when the test ends.
struct Unpacked(PathBuf);

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_release_package_runs_on_glibc_2_31() -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let deb = release_package()?;
    let root = repo().join("target/roots/debian-11");
    ensure!(root.exists(), "{} is missing: run tests/oldest-glibc.sh (tests/run.sh does)", root.display());
    let (ok, said) = output(Command::new("chroot").arg(&root).args(["ldd", "--version"]))?;
    let want = format!("{}.{}", FLOOR.0, FLOOR.1);
    ensure!(ok && said.lines().next().unwrap_or_default().ends_with(&want), "the root's glibc: {said}");

    // The package's files, under a directory of the root's own.
    let inside = PathBuf::from(format!("/opt/berth-release-{}", std::process::id()));
    let unpacked = Unpacked(root.join(inside.strip_prefix("/")?));
    let _ = std::fs::remove_dir_all(&unpacked.0);
    let (ok, said) = output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked.0))?;
    ensure!(ok, "dpkg-deb -x: {said}");
    let (_, control) = output(Command::new("dpkg-deb").arg("--field").arg(&deb).arg("Depends"))?;
    ensure!(control.contains(&format!("libc6 (>= {want})")) && !control.contains("libseccomp"), "Depends: {control}");

    for b in BINARIES {
        let path = unpacked.0.join("usr/bin").join(b);
        if let Some((major, minor)) = glibc_versions(&path)?.into_iter().max() {
            ensure!((major, minor) <= FLOOR, "{b} needs GLIBC_{major}.{minor}, newer than {want}");
        }
        // Debian 11's minimal root has libseccomp too (apt needs it), so
        // loading there would not tell that the package leaves it out.
        let (_, headers) = output(Command::new("objdump").arg("-p").arg(&path))?;
        ensure!(!headers.contains("libseccomp"), "{b} links libseccomp dynamically: {headers}");
        // The loader checks every symbol version a binary needs before
        // main runs, so running it at all proves it loads here.
        let (ok, said) =
            output(Command::new("chroot").arg(&root).arg(inside.join("usr/bin").join(b)).arg("--version"))?;
        ensure!(!said.contains("GLIBC") && !said.contains("error while loading"), "{b} on glibc {want}: {said}");
        match b {
            // Started by the agent, with their own arguments.
            "berth-shim" | "berth-monitor" => ensure!(said.contains("usage: "), "{b}: {said}"),
            _ => ensure!(ok && said.trim() == format!("{b} {version}"), "{b} --version: {said}"),
        }
    }

    // A server bootstrapped in the root, on a test host, and berthctl from
    // the root writing to it and reading back.
    let hosts = Hosts::new(1)?;
    let host = &hosts.hosts[0];
    let data = inside.join("data");
    let listen = format!("{}:7400", host.ip);
    let log = std::fs::File::create(unpacked.0.join("server.log"))?;
    let mut server = host
        .command("chroot")
        .arg(&root)
        .arg(inside.join("usr/bin/berth-server"))
        .args(["--bootstrap", "--listen", &listen, "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let result = async {
        let admin = data.join("admin.conf");
        let ctl = |args: &[&str]| {
            output(
                host.command("chroot")
                    .arg(&root)
                    .arg(inside.join("usr/bin/berthctl"))
                    .arg("--config")
                    .arg(&admin)
                    .args(args),
            )
        };
        wait_for(Duration::from_secs(60), "the server to lead and write admin.conf", async || {
            unpacked.0.join("data/admin.conf").exists().then_some(())?;
            let (ok, said) = ctl(&["cluster", "status"]).ok()?;
            (ok && said.contains("leader")).then_some(())
        })
        .await?;
        let (ok, said) = ctl(&["version"])?;
        ensure!(ok && said.matches(version).count() >= 2, "berthctl version (client and server): {said}");
        std::fs::write(unpacked.0.join("motd"), "glibc 2.31\n")?;
        let (ok, said) = ctl(&["config", "create", "motd", inside.join("motd").to_str().unwrap_or_default()])?;
        ensure!(ok, "config create: {said}");
        let (ok, said) = ctl(&["config", "ls"])?;
        ensure!(ok && said.contains("motd"), "config ls: {said}");
        Ok(())
    }
    .await;
    let _ = server.kill();
    let _ = server.wait();
    if let Err(e) = result {
        let log = std::fs::read_to_string(unpacked.0.join("server.log")).unwrap_or_default();
        bail!("{e:#}\nserver log:\n{log}");
    }
    Ok(())
}
