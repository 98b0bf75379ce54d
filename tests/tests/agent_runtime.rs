//! berth-agent against the real kernel and a real registry: images built
//! here from Debian's busybox-static, pushed to docker-registry on
//! loopback, run as containers in namespaces and cgroups. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use berth_tests::agent::Agent;
use berth_tests::oci::{blob, host_architecture, Compression, Format, Image, Push, Tar};
use berth_tests::registry::{Auth, Registry, PASSWORD, USER};

async fn registry_with_busybox() -> (Registry, String) {
    let (registry, image) = Registry::with_busybox().await.unwrap();
    (registry, image)
}

/// Lines of stdout, trimmed.
fn lines(s: &str) -> Vec<&str> {
    s.lines().map(str::trim).collect()
}

#[tokio::test]
async fn a_container_is_isolated_from_the_host_and_from_its_siblings() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    // PID 1 is the container's own process; host processes are invisible.
    let out = agent.ok(&[
        "run",
        "--rm",
        "--name",
        "iso",
        &image,
        "sh",
        "-c",
        "echo $$; ls /proc | grep -c '^[0-9]'; hostname",
    ]);
    let got = lines(&out);
    assert_eq!(got[0], "1", "{out}");
    let visible: usize = got[1].parse().unwrap();
    assert!(visible <= 4, "the container sees {visible} processes: {out}");
    assert_eq!(got[2], "iso");

    // Docker's capability set less CAP_MKNOD, nothing more (CapEff of root with it).
    let out = agent.ok(&[
        "run",
        "--rm",
        &image,
        "sh",
        "-c",
        "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status",
    ]);
    assert!(out.contains("00000000a00425fb"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");

    // The image's user is honoured.
    let out = agent.ok(&["run", "--rm", "--entrypoint", "id", &image]);
    assert!(out.starts_with("uid=0(root)"), "{out}");

    // A write in one container is seen neither by a sibling nor in the layer store.
    agent.ok(&["run", "--name", "writer", &image, "sh", "-c", "echo mine > /etc/marker && cat /etc/marker"]);
    let sibling = agent.run(&["run", "--rm", &image, "cat", "/etc/marker"]);
    assert_ne!(sibling.code, 0, "the sibling saw the write: {}", sibling.stdout);
    let in_store =
        std::process::Command::new("find").arg(agent.layers_dir()).args(["-name", "marker"]).output().unwrap();
    assert!(in_store.stdout.is_empty(), "the write reached the layer store");
    assert!(agent.container_dir("writer").join("upper/etc/marker").exists());

    // /sys is read-only and masked paths are hidden.
    let out = agent.run(&["run", "--rm", &image, "sh", "-c", "touch /sys/x; cat /proc/kcore | wc -c"]);
    assert!(out.stderr.contains("Read-only file system"), "{}", out.stderr);
    assert!(lines(&out.stdout).contains(&"0"), "{}", out.stdout);
}

#[tokio::test]
async fn limits_are_enforced_and_an_oom_kill_is_reported() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    // Doubling a string until the 16 MiB limit ends it.
    let ran = agent.run(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "16Mi",
        &image,
        "sh",
        "-c",
        "x=0123456789; while true; do x=$x$x; done",
    ]);
    assert_eq!(ran.code, 137, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("out of memory"), "{}", ran.stderr);
    let hog = agent.ps_one("hog");
    assert_eq!(hog["oom_killed"], true, "{hog}");
    assert_eq!(hog["exit_code"], 137);

    // A fork bomb stops at the pids limit; the same script fits under a higher one.
    let bomb = "for i in $(seq 30); do sleep 1 & done; wait; echo survived";
    let ran = agent.run(&["run", "--rm", "--pids", "10", &image, "sh", "-c", bomb]);
    assert!(ran.stderr.contains("can't fork"), "{ran:?}");
    assert!(!ran.stdout.contains("survived"), "{ran:?}");
    let ran = agent.run(&["run", "--rm", "--pids", "100", &image, "sh", "-c", bomb]);
    assert_eq!((ran.code, ran.stdout.trim()), (0, "survived"), "{ran:?}");

    // A CPU quota lands in the cgroup while the container runs.
    let name = agent.ok(&["run", "-d", "--name", "quota", "--cpus", "0.5", &image, "sleep", "60"]);
    assert_eq!(name.trim(), "quota");
    let dirs = agent.cgroup_dirs("quota");
    let quota = dirs
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("cpu.cfs_quota_us"))
                .ok()
                .or_else(|| std::fs::read_to_string(d.join("cpu.max")).ok())
        })
        .expect("a cpu cgroup for the container");
    assert!(quota.starts_with("50000"), "{quota}");
}

#[tokio::test]
async fn lifecycle_exit_codes_stop_kill_logs_and_no_leftovers() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    assert_eq!(agent.run(&["run", "--rm", &image, "sh", "-c", "exit 3"]).code, 3);
    // An exited container keeps its data (record, logs) and nothing else.
    assert_eq!(agent.run(&["run", "--name", "done", &image, "sh", "-c", "exit 4"]).code, 4);
    assert!(agent.container_dir("done").join("exit.json").exists());
    assert!(!agent.run_dir("done").exists(), "runtime state outlived the container");
    assert!(agent.leftover_cgroups("done").is_empty());
    agent.ok(&["rm", "done"]);

    // Stop with grace: the container's TERM handler runs.
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        &image,
        "sh",
        "-c",
        "trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = agent.ok(&["stop", "-t", "10", "polite"]);
    assert!(out.contains("exited with 0"), "{out}");
    assert!(agent.ok(&["logs", "polite"]).contains("bye"));

    // PID 1 ignores SIGTERM by default: SIGKILL after the grace period.
    agent.ok(&["run", "-d", "--name", "stubborn", &image, "sleep", "1000"]);
    let out = agent.ok(&["stop", "-t", "1", "stubborn"]);
    assert!(out.contains("exited with 137"), "{out}");

    agent.ok(&["run", "-d", "--name", "victim", &image, "sleep", "1000"]);
    agent.ok(&["kill", "victim"]);
    berth_tests::wait_for(Duration::from_secs(20), "victim to exit", async || {
        (agent.ps_one("victim")["state"] == "exited").then_some(())
    })
    .await
    .unwrap();
    assert_eq!(agent.ps_one("victim")["exit_code"], 137);

    // Removal leaves no process, mount, cgroup or directory.
    agent.ok(&["run", "-d", "--name", "gone", &image, "sleep", "1000"]);
    let pid = agent.ps_one("gone")["pid"].as_i64().unwrap();
    assert!(!agent.cgroup_dirs("gone").is_empty());
    let rm = agent.run(&["rm", "gone"]);
    assert_ne!(rm.code, 0);
    assert!(rm.stderr.contains("is running"), "{}", rm.stderr);
    agent.ok(&["rm", "-f", "gone"]);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the process survived");
    assert!(agent.leftover_cgroups("gone").is_empty(), "the cgroup survived");
    assert!(!agent.container_dir("gone").exists() && !agent.run_dir("gone").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(agent.run_dir("gone").to_str().unwrap()), "the rootfs is still mounted");
    // The shims are gone too: nothing holds the data dir.
    let shims = std::process::Command::new("pgrep")
        .args(["-f", &agent.container_dir("gone").display().to_string()])
        .output()
        .unwrap();
    assert!(shims.stdout.is_empty(), "a shim survived");
}

#[tokio::test]
async fn containers_outlive_the_agent_process() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    agent.ok(&["image", "pull", &image]);
    let mut foreground = agent
        .command(&["run", "--name", "survivor", &image, "sh", "-c", "while true; do echo tick; sleep 0.2; done"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    berth_tests::wait_for(Duration::from_secs(20), "the container to run", async || {
        agent.ps().iter().any(|c| c["name"] == "survivor" && c["state"] == "running").then_some(())
    })
    .await
    .unwrap();
    foreground.kill().unwrap(); // SIGKILL to the agent
    foreground.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = agent.ps_one("survivor");
    assert_eq!(c["state"], "running", "{c}");
    let before = agent.ok(&["logs", "survivor"]).lines().count();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(agent.ok(&["logs", "survivor"]).lines().count() > before, "the shim stopped logging");
    agent.ok(&["stop", "-t", "1", "survivor"]);
}

/// What systemd does when it stops or restarts the agent's unit (with the
/// default KillMode): SIGKILL to every process in the unit's cgroup. The
/// agent is one of them; a container it started, and the container's
/// monitor, are not (they live in cgroups of their own), so the container
/// runs on and is still watched and logged.
#[tokio::test]
async fn stopping_the_agents_systemd_unit_leaves_its_containers_running() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    agent.ok(&["image", "pull", &image]);
    let roots = berth_tests::agent::tracking_roots();
    assert!(!roots.is_empty(), "no hierarchy that systemd tracks units in");
    let unit: Vec<_> = roots.iter().map(|r| r.join(format!("berth-test-{}.service", std::process::id()))).collect();
    for dir in &unit {
        std::fs::create_dir_all(dir).unwrap();
    }
    // The agent started inside the unit, as systemd starts a unit's process.
    let inner =
        agent.command(&["run", "--name", "unit", &image, "sh", "-c", "while true; do echo tick; sleep 0.2; done"]);
    let enter: Vec<String> = unit.iter().map(|d| format!("echo $$ > {}/cgroup.procs", d.display())).collect();
    let mut wrapped = std::process::Command::new("sh");
    wrapped.arg("-c").arg(format!("{} && exec \"$0\" \"$@\"", enter.join(" && "))).arg(inner.get_program());
    wrapped.args(inner.get_args());
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            wrapped.env(key, value);
        }
    }
    let mut foreground = wrapped.stdout(std::process::Stdio::null()).spawn().unwrap();
    berth_tests::wait_for(Duration::from_secs(20), "the container to run", async || {
        agent.ps().iter().any(|c| c["name"] == "unit" && c["state"] == "running").then_some(())
    })
    .await
    .unwrap();
    let procs = |dir: &std::path::Path| -> Vec<i32> {
        let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    };
    let started: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.container_dir("unit").join("started.json")).unwrap()).unwrap();
    let (shim, init) = (started["shim_pid"].as_i64(), started["pid"].as_i64());
    assert!(shim.is_some() && init.is_some(), "{started}");
    for dir in &unit {
        let inside = procs(dir);
        assert!(inside.contains(&(foreground.id() as i32)), "the agent is in its unit: {inside:?}");
        for pid in [shim, init].into_iter().flatten() {
            assert!(!inside.contains(&(pid as i32)), "{pid} is in the agent's unit {}: {inside:?}", dir.display());
        }
    }
    // Stop the unit: kill every process in its cgroup until none is left.
    berth_tests::wait_for(Duration::from_secs(10), "the unit's cgroup to be empty", async || {
        let left: Vec<i32> = unit.iter().flat_map(|d| procs(d)).collect();
        for pid in &left {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left.is_empty().then_some(())
    })
    .await
    .unwrap();
    let _ = foreground.wait();
    for dir in &unit {
        std::fs::remove_dir(dir).unwrap();
    }
    let c = agent.ps_one("unit");
    assert_eq!(c["state"], "running", "{c}");
    let before = agent.ok(&["logs", "unit"]).lines().count();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(agent.ok(&["logs", "unit"]).lines().count() > before, "the monitor stopped logging");
    agent.ok(&["stop", "-t", "1", "unit"]);
    agent.ok(&["rm", "unit"]);
    assert!(agent.leftover_cgroups("unit").is_empty(), "left: {:?}", agent.leftover_cgroups("unit"));
}

#[tokio::test]
async fn layers_whiteouts_opaque_dirs_and_image_config_are_honoured() {
    let registry = Registry::start().await.unwrap();
    let base = Tar::busybox()
        .unwrap()
        .dir("data/")
        .file("data/a", 0o644, b"a")
        .file("data/b", 0o644, b"b")
        .file("etc/old", 0o644, b"old");
    let top = Tar::default()
        .dir("etc/")
        .file("etc/.wh.old", 0o644, b"")
        .dir("data/")
        .file("data/.wh..wh..opq", 0o644, b"")
        .file("data/c", 0o644, b"c");
    let mut image = Image::new(vec![
        blob(base.finish().unwrap(), Compression::Gzip).unwrap(),
        blob(top.finish().unwrap(), Compression::Zstd).unwrap(),
    ]);
    image.config = serde_json::json!({
        "Entrypoint": ["sh", "-c"],
        "Cmd": ["echo $GREETING from $(pwd) as $(id -un); ls /data; ls /etc"],
        "Env": ["PATH=/bin", "GREETING=hello"],
        "WorkingDir": "/home/app",
        "User": "app",
    });
    image.push(&registry.addr, "layered", "v1").await.unwrap();
    let agent = Agent::new(Some(&registry));
    let out = agent.ok(&["run", "--rm", &format!("{}/layered:v1", registry.addr)]);
    let got = lines(&out);
    assert_eq!(got[0], "hello from /home/app as app", "{out}");
    assert_eq!(got[1], "c", "the opaque directory hides the lower layer's files: {out}");
    assert!(!got.contains(&"old"), "the whiteout hides /etc/old: {out}");
    // Given env overrides the image's.
    let out = agent.ok(&["run", "--rm", "-e", "GREETING=hi", &format!("{}/layered:v1", registry.addr)]);
    assert!(out.starts_with("hi from"), "{out}");
    assert_eq!(std::fs::read_dir(agent.layers_dir()).unwrap().count(), 2, "each layer unpacked once");

    // The same image from an OCI layout directory.
    let layout = tempfile::tempdir().unwrap();
    image.write_layout(layout.path(), "v1").unwrap();
    let out = agent.ok(&["run", "--rm", &format!("oci:{}:v1", layout.path().display())]);
    assert!(out.starts_with("hello from"), "{out}");
    let listed = agent.ok(&["image", "ls"]);
    assert!(listed.contains("layered:v1") && listed.contains("oci:"), "{listed}");
}

#[tokio::test]
async fn concurrent_pulls_share_the_work() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    let pulls: Vec<_> = (0..6).map(|_| agent.command(&["image", "pull", &image]).output()).collect();
    for p in pulls {
        let p = p.unwrap();
        assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    }
    assert_eq!(std::fs::read_dir(agent.layers_dir()).unwrap().count(), 1);
    // Unused layers are pruned; layers of an image in use are not.
    agent.ok(&["run", "--name", "keeper", &image, "true"]);
    assert!(agent.run(&["image", "rm", &image]).stderr.contains("used by container keeper"));
    agent.ok(&["image", "prune"]);
    assert_eq!(std::fs::read_dir(agent.layers_dir()).unwrap().count(), 1, "a used layer was pruned");
    agent.ok(&["rm", "keeper"]);
    agent.ok(&["image", "rm", &image]);
    assert!(agent.run(&["image", "rm", &image]).stderr.contains("not in the local store"));
    let pruned = agent.ok(&["image", "prune"]);
    assert!(pruned.contains("deleted sha256:"), "{pruned}");
    assert_eq!(std::fs::read_dir(agent.layers_dir()).unwrap().count(), 0);
}

#[tokio::test]
async fn bad_images_and_bad_input_fail_with_one_clear_line() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    let fails = |args: &[&str], needle: &str| {
        let ran = agent.run(args);
        assert_ne!(ran.code, 0, "{args:?} succeeded");
        assert!(ran.stderr.contains(needle), "{args:?}: expected {needle:?} in {:?}", ran.stderr);
    };
    // As Docker says it, not a chain of library errors.
    let missing = format!("{}/nothing:v1", registry.addr);
    fails(&["run", "--rm", &missing, "true"], &format!("berth-agent: image {missing} not found: manifest unknown\n"));
    // A registry on loopback is plain HTTP without being listed, as Docker's.
    let unlisted = Agent::with_registries("");
    let ran = unlisted.run(&["run", "--rm", &image, "echo", "plain"]);
    assert_eq!((ran.code, ran.stdout.trim()), (0, "plain"), "{}", ran.stderr);
    fails(&["run", "--rm", "127.0.0.1:1/busybox:v1", "true"], "127.0.0.1:1");
    fails(&["run", "--rm", "Bad Ref", "true"], "\"Bad Ref\"");
    fails(&["run", "--rm", &image, "no-such-command"], "\"no-such-command\" not found");
    fails(&["run", "--rm", "--memory", "lots", &image, "true"], "--memory \"lots\"");
    fails(&["run", "--rm", "--name", "Bad_Name!", &image, "true"], "\"Bad_Name!\"");
    fails(&["logs", "nobody"], "no container named \"nobody\"");

    // A corrupted blob in the registry: refused by digest.
    let busybox = Image::busybox().unwrap();
    busybox.push(&registry.addr, "corrupt", "v1").await.unwrap();
    let layer = &busybox.layers[0];
    let file = registry.blob_file(&berth_tests::oci::sha256(&layer.data));
    let mut data = std::fs::read(&file).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&file, data).unwrap();
    let fresh = Agent::new(Some(&registry));
    let ran = fresh.run(&["image", "pull", &format!("{}/corrupt:v1", registry.addr)]);
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.to_lowercase().contains("digest"), "{}", ran.stderr);
    assert_eq!(std::fs::read_dir(fresh.layers_dir()).unwrap().count(), 0, "a bad layer was kept");

    // Layers that try to escape their directory are refused.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    for (repo, tar) in [
        ("dotdot", Tar::busybox().unwrap().raw_file("../../escaped", b"x")),
        ("symlink", Tar::busybox().unwrap().symlink("link", &target).file("link/escaped", 0o644, b"x")),
    ] {
        Image::new(vec![blob(tar.finish().unwrap(), Compression::Gzip).unwrap()])
            .push(&registry.addr, repo, "v1")
            .await
            .unwrap();
        let ran = fresh.run(&["image", "pull", &format!("{}/{repo}:v1", registry.addr)]);
        assert_ne!(ran.code, 0, "{repo} was accepted");
        assert!(ran.stderr.contains("escape") || ran.stderr.contains("outside"), "{repo}: {}", ran.stderr);
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "{repo} wrote outside");
    }
}

#[tokio::test]
async fn logs_are_captured_across_rotation() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    agent.ok(&[
        "run",
        "--name",
        "chatty",
        "--log-max-size",
        "4096",
        "--log-max-files",
        "2",
        &image,
        "sh",
        "-c",
        "seq 1 2000",
    ]);
    let dir = agent.container_dir("chatty");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("container.log"))
        .collect();
    assert_eq!(files.len(), 3, "live file plus two rotated");
    let logs = agent.ok(&["logs", "chatty"]);
    let numbers: Vec<u32> = logs.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(*numbers.last().unwrap(), 2000);
    let first = numbers[0];
    assert_eq!(numbers, (first..=2000).collect::<Vec<_>>(), "kept lines are contiguous");
    assert_eq!(agent.ok(&["logs", "--tail", "3", "chatty"]), "1998\n1999\n2000\n");
}

/// An image whose /platform file names the architecture it claims.
fn marked(architecture: &str) -> Image {
    let tar = Tar::busybox().unwrap().file("platform", 0o644, architecture.as_bytes());
    let mut image = Image::new(vec![blob(tar.finish().unwrap(), Compression::Gzip).unwrap()]);
    image.architecture = architecture.into();
    image
}

#[tokio::test]
async fn docker_manifests_and_multi_platform_indexes_are_pulled() {
    let registry = Registry::start().await.unwrap();
    let agent = Agent::new(Some(&registry));
    let host = marked(host_architecture());
    // Listed first, so taking the first entry would pick it.
    let other = marked("s390x");
    for format in [Format::Oci, Format::Docker] {
        let push = Push::anonymous(&registry.addr, "multi");
        let tag = format!("{format:?}").to_lowercase();
        push.index(&[&other, &host], &tag, format).await.unwrap();
        let out = agent.ok(&["run", "--rm", &format!("{}/multi:{tag}", registry.addr), "cat", "/platform"]);
        assert_eq!(out.trim(), host_architecture(), "{format:?} index");
    }
    // A Docker schema 2 manifest on its own.
    Push::anonymous(&registry.addr, "docker").image(&host, "v1", Format::Docker).await.unwrap();
    let out = agent.ok(&["run", "--rm", &format!("{}/docker:v1", registry.addr), "cat", "/platform"]);
    assert_eq!(out.trim(), host_architecture());
    // An index with no image for this host.
    Push::anonymous(&registry.addr, "foreign").index(&[&other], "v1", Format::Oci).await.unwrap();
    let ran = agent.run(&["image", "pull", &format!("{}/foreign:v1", registry.addr)]);
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains(&format!("linux/{}", host_architecture())), "{}", ran.stderr);
}

#[tokio::test]
async fn registries_with_basic_or_bearer_token_auth_need_the_configured_account() {
    for auth in [Auth::Basic, Auth::Token] {
        let registry = Registry::start_with(auth).await.unwrap();
        Push::with_password(&registry.addr, "private", USER, PASSWORD)
            .image(&Image::busybox().unwrap(), "v1", Format::Oci)
            .await
            .unwrap();
        let image = format!("{}/private:v1", registry.addr);
        let insecure = format!("[[registry]]\nhost = \"{}\"\ninsecure = true\n", registry.addr);
        for (who, registries) in [
            ("anonymous", insecure.clone()),
            ("wrong password", format!("{insecure}username = \"{USER}\"\npassword = \"nope\"\n")),
        ] {
            let ran = Agent::with_registries(&registries).run(&["image", "pull", &image]);
            assert_ne!(ran.code, 0, "{auth:?}: {who} pulled");
            let err = ran.stderr.to_lowercase();
            assert!(err.contains("unauthorized") && err.contains("registries.toml"), "{auth:?} {who}: {}", ran.stderr);
            assert_eq!(ran.stderr.trim().lines().count(), 1, "{}", ran.stderr);
        }
        let ran = Agent::new(Some(&registry)).run(&["run", "--rm", &image, "echo", "in"]);
        assert_eq!((ran.code, ran.stdout.trim()), (0, "in"), "{auth:?} with the account: {}", ran.stderr);
    }
}

#[tokio::test]
async fn a_shim_whose_monitor_is_missing_supervises_the_container_itself() {
    let (registry, image) = registry_with_busybox().await;
    let mut agent = Agent::new(Some(&registry));
    // A shim with no berth-monitor beside it.
    let alone = tempfile::tempdir().unwrap();
    agent.shim = alone.path().join("berth-shim");
    std::fs::copy(berth_tests::bin("berth-shim"), &agent.shim).unwrap();
    let ran = agent.run(&["run", "--name", "solo", &image, "sh", "-c", "echo out; exit 6"]);
    assert_eq!((ran.code, ran.stdout.trim()), (6, "out"), "{}", ran.stderr);
    let shim_log = std::fs::read_to_string(agent.container_dir("solo").join("shim.log")).unwrap();
    assert!(shim_log.contains("supervising without the monitor"), "{shim_log}");
    assert!(!agent.run_dir("solo").exists() && agent.leftover_cgroups("solo").is_empty());
}

#[tokio::test]
async fn ctrl_c_stops_a_foreground_container_with_grace() {
    use std::io::BufRead;
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.1; done";
    let mut child = agent
        .command(&["run", "--name", "fg", "--stop-timeout", "20", &image, "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(rest, ["got-term"], "the container's TERM handler ran");
    assert_eq!(status.code(), Some(7), "the container's exit code is the command's");
    assert_eq!(agent.ps_one("fg")["state"], "exited");
}

#[tokio::test]
async fn a_corrupt_image_index_is_rebuilt_by_the_next_pull() {
    use std::os::unix::fs::MetadataExt;
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    agent.ok(&["image", "pull", &image]);
    let layer = std::fs::read_dir(agent.layers_dir()).unwrap().next().unwrap().unwrap().path();
    let inode = std::fs::metadata(&layer).unwrap().ino();
    // What a disk that lost the index's last write might hold.
    let index = agent.data.path().join("images/images.json");
    std::fs::write(&index, b"{\"127.0.0.1:5000/busy").unwrap();
    assert_eq!(agent.ok(&["run", "--rm", &image, "echo", "again"]).trim(), "again");
    assert!(agent.ok(&["image", "ls"]).contains("busybox"), "the index holds the image again");
    assert!(agent.data.path().join("images/images.json.corrupt").exists(), "the bad index is kept aside");
    assert_eq!(std::fs::metadata(&layer).unwrap().ino(), inode, "the layer was found, not unpacked again");
}

#[tokio::test]
async fn what_an_interrupted_create_left_never_holds_a_name() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    agent.ok(&["image", "pull", &image]);
    // An older agent stopped between making the directory and writing its config.
    let debris = agent.container_dir("web.1.1");
    std::fs::create_dir_all(&debris).unwrap();
    std::fs::write(debris.join(".config.json.tmp"), b"{\"name\":").unwrap();
    assert_eq!(agent.ok(&["run", "--name", "web.1.1", &image, "echo", "ran"]).trim(), "ran");
    assert!(agent.ok(&["ps"]).contains("web.1.1"));
    agent.ok(&["rm", "web.1.1"]);
    assert!(!debris.exists());
}

/// Writes `json` to a file in `dir` and returns its path as a string.
fn profile_file(dir: &std::path::Path, name: &str, json: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, json).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn seccomp_denies_what_dockers_default_denies_and_lifts_as_asked() {
    let registry = Registry::start().await.unwrap();
    Image::busybox_with_payloads().unwrap().push(&registry.addr, "probe", "v1").await.unwrap();
    let image = format!("{}/probe:v1", registry.addr);
    let agent = Agent::new(Some(&registry));
    let probe = |opt: Option<&str>| {
        let mut args = vec!["run", "--rm"];
        if let Some(opt) = opt {
            args.extend(["--security-opt", opt]);
        }
        args.extend([image.as_str(), "sh", "-c", "grep Seccomp: /proc/self/status; syscalls; true | cat; echo forked"]);
        agent.ok(&args)
    };

    // The default: a filter, the four calls refused with EPERM, fork still works.
    let out = probe(None);
    assert_eq!(
        lines(&out),
        ["Seccomp:\t2", "unshare EPERM", "keyctl EPERM", "mount EPERM", "reboot EPERM", "forked"],
        "{out}"
    );
    assert_eq!(probe(Some("seccomp=default")), out);

    // Unconfined: no filter; each call gets past seccomp and the capability
    // check (reboot's EINVAL comes from inside the kernel's handler).
    let out = probe(Some("seccomp=unconfined"));
    assert_eq!(lines(&out), ["Seccomp:\t0", "unshare ok", "keyctl ok", "mount ok", "reboot EINVAL", "forked"], "{out}");

    // A profile of one's own, read as runc reads it: keyctl answers EACCES,
    // and unshare is refused only with CLONE_NEWUSER and without
    // CLONE_NEWNS (value is the mask, valueTwo the value compared): the
    // mount probe's unshare has both, the reboot probe's only the first.
    let dir = tempfile::tempdir().unwrap();
    let own = profile_file(
        dir.path(),
        "own.json",
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["unshare"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 268566528, "valueTwo": 268435456, "op": "SCMP_CMP_MASKED_EQ"}]}
        ]}"#,
    );
    let out = probe(Some(&format!("seccomp={own}")));
    assert_eq!(
        lines(&out),
        ["Seccomp:\t2", "unshare EPERM", "keyctl EACCES", "mount ok", "reboot EPERM", "forked"],
        "{out}"
    );

    // Docker's profile format is refused with the reason, and nothing is created.
    let docker = profile_file(
        dir.path(),
        "docker.json",
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}"#,
    );
    let ran = agent.run(&["run", "--rm", "--name", "refused", "--security-opt", &format!("seccomp={docker}"), &image]);
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains("includes") && ran.stderr.contains("--security-opt"), "{}", ran.stderr);
    assert!(!agent.container_dir("refused").exists());
}

#[tokio::test]
async fn a_container_cannot_make_or_open_device_nodes() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    // No CAP_MKNOD: no block device (the host's loop0), no character device.
    let ran = agent.run(&["run", "--rm", &image, "sh", "-c", "mknod /tmp/disk b 7 0; mknod /dev/mem2 c 1 1; ls /tmp"]);
    assert_eq!(ran.stderr.matches("Operation not permitted").count(), 2, "{ran:?}");
    assert!(!ran.stdout.contains("disk"), "{ran:?}");
    // The standard devices work.
    let out =
        agent.ok(&["run", "--rm", &image, "sh", "-c", "head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo null"]);
    assert_eq!(lines(&out), ["4", "null"], "{out}");

    // The device cgroup (v1) allows only the standard character devices;
    // on v2 the same rule is in the runtime spec, checked by its unit tests.
    agent.ok(&["run", "-d", "--name", "dev", &image, "sleep", "60"]);
    if let Some(list) =
        agent.cgroup_dirs("dev").iter().find_map(|d| std::fs::read_to_string(d.join("devices.list")).ok())
    {
        assert!(!list.contains("a *:* rwm"), "every device is allowed: {list}");
        // `b *:* m` (make, neither read nor write) is Docker's rule too.
        let block_rw =
            list.lines().any(|l| l.starts_with('b') && l.rsplit(' ').next().is_some_and(|a| a.contains(['r', 'w'])));
        assert!(!block_rw, "a block device may be read or written: {list}");
        assert!(list.contains("c 1:3 rwm"), "/dev/null is not allowed: {list}");
    }
    // The root is nodev, so a node an image's layer ships does not open.
    let out = agent.ok(&["run", "--rm", &image, "sh", "-c", "grep '^overlay / ' /proc/self/mounts"]);
    assert!(out.split_whitespace().nth(3).is_some_and(|o| o.split(',').any(|f| f == "nodev")), "{out}");
}

/// The host id a container's uid 0 is, from `/proc/self/uid_map` inside it.
fn mapped_root(uid_map: &str) -> u32 {
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    assert_eq!((fields.len(), fields[0], fields[2]), (3, "0", "65536"), "{uid_map}");
    fields[1].parse().unwrap()
}

#[tokio::test]
async fn a_user_namespace_makes_container_root_an_unprivileged_host_id() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    let inside =
        "cat /proc/self/uid_map; id -u; stat -c %u /bin/busybox; echo mine > /made && stat -c %u /made; sleep 60";
    for name in ["u1", "u2"] {
        agent.ok(&["run", "-d", "--userns", "auto", "--name", name, &image, "sh", "-c", inside]);
    }
    let output = |name: &str| {
        let mut out = String::new();
        for _ in 0..200 {
            out = agent.ok(&["logs", name]);
            if out.lines().count() >= 5 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        out
    };
    let (one, two) = (output("u1"), output("u2"));
    let got = lines(&one);
    let root = mapped_root(got[0]);
    assert!(root >= 1 << 31, "container root is host id {root}, not an unprivileged one");
    // Root inside; the image's files are root's through an idmapped layer,
    // and what it writes is its root's.
    assert_eq!(&got[1..], ["0", "0", "0"], "{one}");
    assert_ne!(mapped_root(lines(&two)[0]), root, "two containers share a block of host ids");
    // On the host: its process and its writes are the unprivileged id.
    let started: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.container_dir("u1").join("started.json")).unwrap())
            .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", started["pid"])).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == root.to_string()), "{uid_line}");
    assert_eq!(std::fs::metadata(agent.container_dir("u1").join("upper/made")).unwrap().uid(), root);
    // The image's layers in the store stay root's.
    let busybox = std::process::Command::new("find")
        .arg(agent.layers_dir())
        .args(["-name", "busybox", "-uid", "0"])
        .output()
        .unwrap();
    assert!(!busybox.stdout.is_empty(), "the shared layer was changed");
    // Its run dir (its rootfs, with the image's setuid files) is its own.
    let run = std::fs::metadata(agent.run_dir("u1")).unwrap();
    assert_eq!((run.uid(), run.permissions().mode() & 0o777), (root, 0o700));

    // Removed, its block is free again, and nothing is left mounted.
    agent.ok(&["rm", "-f", "u1", "u2"]);
    assert_eq!(agent.userns_claims(), Vec::<String>::new(), "claims left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(agent.run_dir("").to_str().unwrap()), "mounts left: {mounts}");
    agent.ok(&["run", "-d", "--userns", "auto", "--name", "u3", &image, "sh", "-c", inside]);
    let again = mapped_root(lines(&output("u3"))[0]);
    assert_eq!(agent.userns_claims(), [format!("{again} {}\n", agent.container_dir("u3").display())]);
    agent.ok(&["rm", "-f", "u3"]);

    // A container of the host's ids has a run dir only root reaches, too.
    agent.ok(&["run", "-d", "--name", "plain", &image, "sleep", "60"]);
    let run = std::fs::metadata(agent.run_dir("plain")).unwrap();
    assert_eq!((run.uid(), run.permissions().mode() & 0o777), (0, 0o700));
    agent.ok(&["rm", "-f", "plain"]);
    // Its own ids cannot go with the host's network.
    let refused = agent.run(&["run", "--rm", "--userns", "auto", "--network", "host", &image, "true"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("--userns auto") && refused.stderr.contains("--network host"),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn a_stop_sends_the_containers_stop_signal() {
    let (registry, image) = registry_with_busybox().await;
    // An image that asks for SIGUSR2, as a Dockerfile's STOPSIGNAL does.
    let mut usr2 = Image::busybox().unwrap();
    usr2.config = serde_json::json!({ "Env": ["PATH=/bin"], "Cmd": ["sh"], "StopSignal": "SIGUSR2" });
    usr2.push(&registry.addr, "usr2", "1").await.unwrap();
    let usr2 = format!("{}/usr2:1", registry.addr);
    let agent = Agent::new(Some(&registry));
    let script =
        "trap 'echo got usr1; exit 3' USR1; trap 'echo got usr2; exit 4' USR2; trap 'echo got term; exit 5' TERM; \
                  echo ready; while true; do sleep 0.1; done";
    let cases = [
        ("given", vec!["--stop-signal", "usr1"], image.as_str(), "got usr1", 3),
        ("imaged", vec![], usr2.as_str(), "got usr2", 4),
        ("plain", vec![], image.as_str(), "got term", 5),
    ];
    for (name, flags, reference, said, code) in cases {
        let args = [&["run", "-d", "--name", name][..], &flags[..], &[reference, "sh", "-c", script]].concat();
        agent.ok(&args);
        for _ in 0..200 {
            if agent.ok(&["logs", name]).contains("ready") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let stopped = agent.ok(&["stop", name]);
        assert_eq!(stopped.trim(), format!("{name}\texited with {code}"), "{name}: {}", agent.ok(&["logs", name]));
        assert!(agent.ok(&["logs", name]).contains(said), "{name}");
    }
    let refused = agent.run(&["run", "--rm", "--stop-signal", "SIGFOO", &image, "true"]);
    assert!(refused.code != 0 && refused.stderr.contains("stop_signal"), "{}", refused.stderr);
}

#[tokio::test]
async fn exec_runs_inside_the_container_as_its_user_and_is_bounded_in_time() {
    let (registry, image) = registry_with_busybox().await;
    let agent = Agent::new(Some(&registry));
    let ready = |name: &str| {
        for _ in 0..200 {
            if agent.ok(&["logs", name]).contains("ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{name} never got ready");
    };
    for (name, userns) in [("ex", "host"), ("exu", "auto")] {
        agent.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--userns",
            userns,
            "--user",
            "1000:2000",
            "--workdir",
            "/tmp",
            "-e",
            "GREETING=hi",
            &image,
            "sh",
            "-c",
            "echo ready; sleep 600",
        ]);
        ready(name);
        // Its pid namespace (its pid 1 is the container's sleep), its mount
        // namespace (its /etc/hostname), its user, working directory,
        // environment and hostname.
        let script = "cat /proc/1/comm /etc/hostname; id -u; id -g; pwd; echo $GREETING; hostname";
        let out = agent.ok(&["exec", name, "--", "sh", "-c", script]);
        assert_eq!(lines(&out), ["sleep", name, "1000", "2000", "/tmp", "hi", name], "{name}");
        // Its cgroup: the exec'd process counts against the container's (the
        // root of the container's cgroup namespace; elsewhere reads "/..").
        let cgroup = agent.ok(&["exec", name, "--", "cat", "/proc/self/cgroup"]);
        assert!(cgroup.lines().all(|l| l.ends_with(":/")), "{name}: {cgroup}");
        // Its exit code comes back.
        assert_eq!(agent.run(&["exec", name, "--", "sh", "-c", "exit 7"]).code, 7);
    }
    // A command that outlives its timeout is killed and said so.
    let slow = agent.run(&["exec", "ex", "--timeout", "1", "--", "sleep", "30"]);
    assert_eq!(slow.code, 124, "{}", slow.stderr);
    assert!(slow.stderr.contains("timed out after 1s"), "{}", slow.stderr);
    let procs = agent.ok(&["exec", "ex", "--", "ps", "-o", "comm"]);
    assert!(!procs.contains("sleep 30") && procs.lines().filter(|l| l.trim() == "sleep").count() == 1, "{procs}");
    agent.ok(&["rm", "-f", "ex", "exu"]);
    let gone = agent.run(&["exec", "ex", "--", "true"]);
    assert!(gone.code != 0 && gone.stderr.contains("ex"), "{}", gone.stderr);
}
