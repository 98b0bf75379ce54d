use super::*;

fn runtime(dir: &Path) -> Runtime {
    let ids = userns::IdRanges::new(dir.join("userns"));
    let shim = PathBuf::from("/nonexistent/berth-shim");
    Runtime::open(&dir.join("containers"), &dir.join("run"), shim, ids, &dir.join("volumes")).unwrap()
}

fn config(name: &str) -> ContainerConfig {
    ContainerConfig { task: Some(name.into()), ..ContainerConfig::sample(name) }
}

#[test]
fn a_create_is_whole_or_absent_and_a_name_is_taken_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    rt.create(&config("web.1.1")).unwrap();
    assert!(matches!(rt.create(&config("web.1.1")), Err(RuntimeError::NameInUse(_))));
    let names: Vec<String> =
        fs::read_dir(&rt.root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["web.1.1"], "no temporary directory is left behind");
    assert_eq!(rt.get("web.1.1").unwrap().status, Status::Created);
    // Many creates of one name at once: exactly one wins.
    let wins = std::thread::scope(|s| {
        let tries: Vec<_> = (0..8).map(|_| s.spawn(|| rt.create(&config("api.1.1")).is_ok())).collect();
        tries.into_iter().map(|t| t.join().unwrap()).filter(|won| *won).count()
    });
    assert_eq!(wins, 1);
}

#[test]
fn leftovers_of_interrupted_creates_are_swept_once_old() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    rt.create(&config("web.1.1")).unwrap();
    let temp = rt.root.join(".new-api.1.1-x1y2");
    let debris = rt.root.join("db.1.1");
    for d in [&temp, &debris] {
        fs::create_dir_all(d).unwrap();
    }
    record::write(&temp, record::CONFIG, &config("api.1.1")).unwrap();
    let listed: Vec<String> = rt.list().unwrap().into_iter().map(|c| c.config.name).collect();
    assert_eq!(listed, ["web.1.1"], "a create under way is not a container yet");
    assert!(rt.sweep(Duration::from_secs(600)).is_empty(), "too young: it may be under way");
    let mut swept = rt.sweep(Duration::ZERO);
    swept.sort();
    assert_eq!(swept, [temp.clone(), debris.clone()]);
    assert!(rt.get("web.1.1").is_ok(), "a whole container is never swept");
}

#[tokio::test(flavor = "current_thread")]
async fn removing_a_large_writable_layer_leaves_the_agents_thread_free() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    rt.create(&config("big.1.1")).unwrap();
    let upper = rt.dir("big.1.1").join("upper");
    for d in 0..20 {
        let sub = upper.join(format!("d{d}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..1000 {
            fs::File::create(sub.join(format!("f{f}"))).unwrap();
        }
    }
    // The agent's runtime has this one thread: heartbeats tick on it while
    // the files go. Deleting 20,000 of them takes far longer than 3 ms.
    let ticker = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let mut removal = std::pin::pin!(rt.remove("big.1.1", false));
    tokio::select! {
        biased;
        removed = &mut removal => panic!("the removal ({removed:?}) held the thread until it was done"),
        () = ticker => {}
    }
    removal.await.unwrap();
    assert!(!rt.dir("big.1.1").exists());
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_with_its_own_ids_holds_its_claim_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let own = ContainerConfig { userns: UserNamespace::Auto, ..config("u.1.1") };
    let made = rt.create(&own).unwrap();
    let ids = match made.config.userns {
        UserNamespace::Own(ids) => ids,
        other => panic!("recorded as {other:?}, not with its ids"),
    };
    assert_eq!(rt.get("u.1.1").unwrap().config.userns, UserNamespace::Own(ids), "the ids are in its config");
    assert_eq!(rt.id_ranges().held(&rt.dir("u.1.1")).unwrap(), Some(ids));
    // A second create of the name is refused and leaves the first one's claim.
    assert!(matches!(rt.create(&own), Err(RuntimeError::NameInUse(_))));
    assert_eq!(rt.id_ranges().held(&rt.dir("u.1.1")).unwrap(), Some(ids));
    let other = rt.create(&ContainerConfig { userns: UserNamespace::Auto, ..config("u.2.1") }).unwrap();
    assert_ne!(other.config.userns, UserNamespace::Own(ids), "each container its own block");
    rt.remove("u.1.1", false).await.unwrap();
    assert_eq!(rt.id_ranges().held(&rt.dir("u.1.1")).unwrap(), None, "given back");
    assert_eq!(rt.id_ranges().all().unwrap().len(), 1);
}
