//! The Debian package, installed and run: the release package that
//! deploy/package.sh builds (tests/run.sh runs it first); dpkg installs
//! it into an empty root (its maintainer scripts run there, under
//! busybox's sh); its systemd units
//! pass `systemd-analyze verify`; deploy/install.sh lays out the same
//! without it; and a cluster of two hosts (network
//! namespaces on a test network) runs from the installed binaries alone:
//! a server and an agent on each, and a global service with a container
//! on both.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use berth_tests::agent::Agent;
use berth_tests::hosts::Hosts;
use berth_tests::oci::Image;
use berth_tests::registry::{Auth, Registry};
use berth_tests::{berthctl, release_package, wait_for, Cluster};

const BINARIES: [&str; 5] = ["berth-server", "berth-agent", "berth-shim", "berth-monitor", "berthctl"];

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path).with_context(|| path.display().to_string())?.permissions().mode() & 0o7777)
}

/// An empty root that dpkg can install into and run maintainer scripts in.
fn empty_root(root: &Path) -> Result<()> {
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "bin"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "")?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    Ok(())
}

/// The path of the process `pid`'s program.
fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_package_installs_and_a_cluster_of_hosts_runs_from_it() -> Result<()> {
    let work = tempfile::tempdir()?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let deb = release_package()?;
    let release = deb.parent().context("the package's directory")?.to_path_buf();

    let root = work.path().join("root");
    empty_root(&root)?;
    let dpkg = |args: &[&str]| {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", root.display())).args(args);
        run(&mut cmd)
    };
    // Only the system's libraries and tools it depends on are missing here.
    dpkg(&["--force-depends", "-i", deb.to_str().unwrap_or_default()])?;
    let status = dpkg(&["-s", "berth"])?;
    ensure!(status.contains("Status: install ok installed"), "{status}");
    ensure!(status.contains("Depends: libc6 (>= 2.31), iproute2"), "{status}");
    let conffiles = dpkg(&["--status", "berth"])?;
    ensure!(conffiles.contains("/etc/berth/server.toml") && conffiles.contains("/etc/berth/agent.env"), "{conffiles}");

    let usr_bin = root.join("usr/bin");
    for b in BINARIES {
        ensure!(mode(&usr_bin.join(b))? == 0o755, "{b}");
    }
    for conf in ["server.toml", "agent.env"] {
        ensure!(mode(&root.join("etc/berth").join(conf))? == 0o600, "{conf} holds a join token: owner-only");
    }
    for file in [
        "lib/systemd/system/berth-server.service",
        "lib/systemd/system/berth-agent.service",
        "usr/share/bash-completion/completions/berthctl",
        "usr/share/zsh/vendor-completions/_berthctl",
        "usr/share/fish/vendor_completions.d/berthctl.fish",
        "usr/share/doc/berth/README.md",
        "usr/share/doc/berth/berth-server.txt",
    ] {
        ensure!(root.join(file).metadata()?.len() > 0, "{file} is missing or empty");
    }
    let version = run(Command::new(usr_bin.join("berth-server")).arg("--version"))?;
    ensure!(version.trim() == format!("berth-server {}", env!("CARGO_PKG_VERSION")), "{version}");
    // The shipped settings parse as the server reads them.
    let server_toml = std::fs::read_to_string(root.join("etc/berth/server.toml"))?;
    ensure!(server_toml.contains("data-dir = \"/var/lib/berth-server\""), "{server_toml}");

    // deploy/install.sh, for hosts without the package: the same files,
    // the units pointed at its prefix, and settings already there kept.
    let dest = work.path().join("dest");
    let install = || {
        run(Command::new("bash")
            .arg(repo.join("deploy/install.sh"))
            .args(["--from", release.to_str().unwrap_or_default()])
            .env("DESTDIR", &dest))
    };
    install()?;
    for b in BINARIES {
        ensure!(mode(&dest.join("usr/local/bin").join(b))? == 0o755, "install.sh: {b}");
    }
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/berth-server.service"))?;
    ensure!(unit.contains("ExecStart=/usr/local/bin/berth-server --config /etc/berth/server.toml"), "{unit}");
    ensure!(mode(&dest.join("etc/berth/server.toml"))? == 0o600);
    std::fs::write(dest.join("etc/berth/server.toml"), "data-dir = \"/srv/berth\"\n")?;
    install()?;
    ensure!(std::fs::read_to_string(dest.join("etc/berth/server.toml"))?.contains("/srv/berth"), "settings kept");
    ensure!(dest.join("etc/bash_completion.d/berthctl").exists());

    // The units, with their programs where this root has them.
    let units = work.path().join("units");
    std::fs::create_dir_all(&units)?;
    let mut unit_paths = Vec::new();
    for unit in ["berth-server.service", "berth-agent.service"] {
        let text = std::fs::read_to_string(root.join("lib/systemd/system").join(unit))?;
        ensure!(text.contains("Type=notify") && text.contains("Restart=on-failure"), "{unit}");
        let path = units.join(unit);
        std::fs::write(&path, text.replace("/usr/bin/", &format!("{}/", usr_bin.display())))?;
        unit_paths.push(path);
    }
    let verify = Command::new("systemd-analyze").arg("verify").args(&unit_paths).output()?;
    let said = String::from_utf8_lossy(&verify.stderr);
    ensure!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let agent_unit = std::fs::read_to_string(&unit_paths[1])?;
    ensure!(agent_unit.contains("Delegate=yes") && agent_unit.contains("KillMode=control-group"), "{agent_unit}");

    // Two hosts run the cluster from the installed binaries alone.
    // This binary's only test sets it, before anything reads it.
    std::env::set_var("BERTH_BIN_DIR", &usr_bin);
    let hosts = Hosts::new(2)?;
    let registry = Registry::start_at(&hosts.gateway.to_string(), Auth::Anonymous).await?;
    Image::busybox()?.push(&registry.addr, "busybox", "v1").await?;
    let image = format!("{}/busybox:v1", registry.addr);
    let on: Vec<&berth_tests::hosts::Host> = hosts.hosts.iter().collect();
    let cluster = Cluster::start_on(&on, &[]).await?;
    let servers = cluster.addrs();
    let agents: Vec<Agent> = on.iter().map(|h| Agent::on(Some(&registry), h)).collect();
    let mut daemons = Vec::new();
    for (agent, host) in agents.iter().zip(&on) {
        daemons.push(agent.join_at(&servers, &host.name, &format!("{}:7500", host.ip), &[])?);
    }
    wait_for(Duration::from_secs(60), "both nodes ready", async || {
        let (ok, out, _) = berthctl(&servers, &["node", "ls"]).ok()?;
        (ok && out.matches(" ready ").count() == 2).then_some(())
    })
    .await
    .with_context(|| agents.iter().map(Agent::daemon_log).collect::<Vec<_>>().join("\n"))?;
    for s in &cluster.servers {
        let pid = s.pid().context("a server's pid")?;
        ensure!(exe(pid) == usr_bin.join("berth-server"), "server runs {}", exe(pid).display());
    }
    for d in &daemons {
        let pid = d.pid().context("an agent's pid")?;
        ensure!(exe(pid) == usr_bin.join("berth-agent"), "agent runs {}", exe(pid).display());
    }
    let (ok, out, err) =
        berthctl(&servers, &["service", "create", "edge", "--image", &image, "--mode", "global", "--", "sleep", "1d"])?;
    ensure!(ok, "service create: {out}{err}");
    wait_for(Duration::from_secs(60), "a running container on each host", async || {
        let (_, out, _) = berthctl(&servers, &["service", "ps", "edge"]).ok()?;
        on.iter().all(|h| out.lines().any(|l| l.contains(&h.name) && l.contains("running"))).then_some(())
    })
    .await?;
    for (agent, host) in agents.iter().zip(&on) {
        let running = agent.ps().into_iter().filter(|c| c["state"] == "running").count();
        ensure!(running == 1, "{}: {running} containers running", host.name);
    }
    let (ok, _, err) = berthctl(&servers, &["service", "rm", "edge"])?;
    ensure!(ok, "{err}");
    Ok(())
}
