use std::path::Path;

use super::*;

fn env() -> Vars {
    [("TAG", "1.36"), ("HOME", "/home/me")].into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

fn load_in(dir: &Path, files: &[&str], report: &mut Report) -> Result<Stack> {
    let sources: Vec<Source> =
        files.iter().enumerate().map(|(i, t)| Source { name: format!("f{i}.yaml"), text: (*t).into() }).collect();
    load(&sources, "shop", dir, &env(), report)
}

fn err(files: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    format!("{:#}", load_in(dir.path(), files, &mut Report::default()).expect_err("refused"))
}

fn options(s: &pb::ServiceSpec) -> pb::Options {
    s.overrides.clone().unwrap_or_default().options.unwrap_or_default()
}

/// A database and a web tier, as a Compose user writes them.
const APP: &str = r#"
version: "3.9"
x-common: &common
  restart: unless-stopped
  labels: [tier=app]
services:
  web:
    <<: *common
    image: "registry:5000/web:${TAG}"
    command: httpd -f -p "8080"
    environment:
      DB_HOST: db
      FROM_DOTENV:
      UNSET:
    env_file: [web.env]
    ports: ["80:8080", {target: 9000, published: "9001", protocol: udp, name: stats}]
    expose: ["8080", 7000]
    depends_on:
      db: {condition: service_healthy}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://localhost:8080/"]
      interval: 5s
      retries: 3
    deploy:
      replicas: 2
      resources: {limits: {cpus: "0.50", memory: 50M, pids: 100}, reservations: {cpus: "0.25"}}
      placement:
        constraints: [node.hostname == host1]
        preferences: [{spread: node.labels.zone}]
        max_replicas_per_node: 1
      update_config: {parallelism: 1, delay: 2s, order: stop-first}
      restart_policy: {condition: on-failure, max_attempts: 3, window: 1m}
      labels: {team: shop}
    secrets: [db_password]
    configs: [{source: site, target: /etc/site.conf, mode: 0440}]
    user: "1000:1000"
    working_dir: /srv
    hostname: web
    stop_signal: SIGINT
    stop_grace_period: 1m30s
    read_only: true
    init: true
    tmpfs: ["/run:size=1m"]
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    extra_hosts: ["gw:198.18.0.1"]
    x-note: ignored
    networks: [front]
    build: ./web
  db:
    image: registry:5000/db:1
    entrypoint: ["/bin/sh", "-c"]
    command: ["exec db --dir /data"]
    volumes: ["data:/data", "./conf:/conf:ro"]
    healthcheck: {test: "db-ping", start_period: 10s}
    secrets: [{source: db_password, target: pw, uid: "999", mode: 0400}]
    deploy: {mode: global}
volumes:
  data: {}
  shared: {external: true}
secrets:
  db_password: {file: ./pw.txt}
  api_key: {environment: API_KEY, name: "api-${TAG}"}
configs:
  site: {content: "tag ${TAG}"}
networks:
  front: {}
"#;

#[test]
fn a_whole_application_as_the_stacks_specs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "FROM_DOTENV=dotenv\nTAG=not-this\nAPI_KEY=k3y\n").unwrap();
    std::fs::write(dir.path().join("web.env"), "# web\nDB_HOST=overridden\nMODE=\"prod\"\n").unwrap();
    std::fs::write(dir.path().join("pw.txt"), "hunter2").unwrap();
    let mut report = Report::default();
    let stack = load_in(dir.path(), &[APP], &mut report).expect("loads");
    let names: Vec<&str> = stack.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["shop_db", "shop_web"], "db first: web depends on it");
    let (db, web) = (&stack.services[0], &stack.services[1]);

    assert_eq!(web.image, "registry:5000/web:1.36", "the process environment wins over .env");
    assert_eq!(web.command, ["httpd", "-f", "-p", "8080"], "a string command is split as a shell would");
    let env: BTreeMap<_, _> = web.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env, BTreeMap::from([("DB_HOST", "db"), ("FROM_DOTENV", "dotenv"), ("MODE", "prod")]));
    let ports: Vec<(i64, i64, &str, &str)> =
        web.ports.iter().map(|p| (p.published, p.target, p.protocol.as_str(), p.name.as_str())).collect();
    assert_eq!(
        ports,
        [(80, 8080, "", ""), (9001, 9000, "udp", "stats"), (0, 7000, "", "")],
        "8080 is published already"
    );
    assert_eq!(web.replicas, 2);
    assert_eq!(web.resources, Some(pb::Resources { cpus: 0.5, memory_bytes: 50 << 20 }), "the limits");
    assert_eq!((web.pids_limit, web.restart.as_str()), (100, "on-failure"));
    assert_eq!(web.constraints, ["node.name == host1"]);
    let placement = web.placement.clone().unwrap_or_default();
    assert_eq!((placement.spread, placement.max_replicas_per_node), (vec!["node.labels.zone".into()], Some(1)));
    let update = web.update_config.clone().unwrap_or_default();
    assert_eq!((update.parallelism, update.delay_ms, update.order.as_str()), (Some(1), Some(2000), "stop-first"));
    let o = web.overrides.clone().unwrap_or_default();
    assert_eq!((o.user.as_str(), o.workdir.as_str(), o.hostname.as_str()), ("1000:1000", "/srv", "web"));
    assert_eq!((o.stop_signal.as_str(), o.stop_grace_ms, o.read_only, o.init), ("SIGINT", Some(90_000), true, true));
    assert_eq!((o.cap_add, o.cap_drop), (vec!["NET_ADMIN".to_owned()], vec!["ALL".to_owned()]));
    let probe = o.health.and_then(|h| h.probe);
    assert_eq!(
        probe,
        Some(Probe::Exec(pb::ExecProbe {
            command: ["wget", "-q", "-O-", "http://localhost:8080/"].map(String::from).to_vec()
        }))
    );
    let wo = options(web);
    assert_eq!(wo.labels, [("team".into(), "shop".into()), ("tier".into(), "app".into())].into());
    assert_eq!(wo.extra_hosts, ["gw:198.18.0.1"]);
    assert_eq!(wo.tmpfs, [pb::Tmpfs { target: "/run".into(), size_bytes: Some(1 << 20) }]);
    assert_eq!((wo.restart_max_attempts, wo.restart_window_ms), (Some(3), Some(60_000)));
    assert_eq!(wo.depends_on, [pb::Dependency { service: "shop_db".into(), condition: "healthy".into() }]);
    let secret = &wo.secrets[0];
    assert_eq!(
        (secret.source.as_str(), secret.target.as_str()),
        ("shop_db_password", "db_password"),
        "/run/secrets/db_password inside"
    );
    let config = &wo.configs[0];
    assert_eq!(
        (config.source.as_str(), config.target.as_str(), config.mode),
        ("shop_site", "/etc/site.conf", Some(0o440))
    );

    assert_eq!(db.mode, "global");
    let dbo = db.overrides.clone().unwrap_or_default();
    assert_eq!((dbo.set_entrypoint, dbo.entrypoint.clone()), (true, vec!["/bin/sh".to_owned(), "-c".to_owned()]));
    assert_eq!(db.command, ["exec db --dir /data"]);
    let dbopts = options(db);
    let mounts: Vec<(&str, String, bool)> =
        dbopts.mounts.iter().map(|m| (m.r#type.as_str(), m.source.clone(), m.readonly)).collect();
    let conf = format!("{}/conf", dir.path().display());
    assert_eq!(
        mounts,
        [("volume", "shop_data".into(), false), ("bind", conf, true)],
        "the stack's volume; a bind from the project"
    );
    let pw = &options(db).secrets[0];
    assert_eq!((pw.source.as_str(), pw.target.as_str(), pw.uid, pw.mode), ("shop_db_password", "pw", 999, Some(0o400)));
    let health = dbo.health.unwrap_or_default();
    assert_eq!(health.start_period_ms, Some(10_000));
    assert_eq!(
        health.probe,
        Some(Probe::Exec(pb::ExecProbe { command: ["/bin/sh", "-c", "db-ping"].map(String::from).to_vec() }))
    );

    let files: Vec<(FileKind, &str, &[u8])> =
        stack.files.iter().map(|f| (f.kind, f.name.as_str(), f.data.as_slice())).collect();
    assert_eq!(
        files,
        [
            (FileKind::Secret, "shop_db_password", b"hunter2".as_slice()),
            (FileKind::Secret, "api-1.36", b"k3y".as_slice()),
            (FileKind::Config, "shop_site", b"tag 1.36".as_slice()),
        ]
    );
    assert_eq!(
        report.unsupported,
        [
            "networks: berth has one overlay network, where every service reaches every other; the networks are ignored",
            "services.web.build: not supported: berth runs images: build and push it, then name it in image",
            "services.web.networks: berth has one overlay network, where every service reaches every other; the networks are ignored",
        ]
    );
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("reservations"), "{:?}", report.warnings);
}

#[test]
fn later_files_merge_over_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let base = "services:\n  web:\n    image: a:1\n    command: [serve, --slow]\n    environment: [A=1, B=2]\n    ports: ['80:80']\n    volumes: ['logs:/logs']\nvolumes: {logs: {}, more: {}}\n";
    let over = "services:\n  web:\n    image: a:2\n    command: [serve]\n    environment: {B: '3'}\n    ports: !override ['8443:443']\n    volumes: ['more:/logs']\n  cache:\n    image: c:1\n";
    let stack = load_in(dir.path(), &[base, over], &mut Report::default()).expect("loads");
    let web = stack.services.iter().find(|s| s.name == "shop_web").unwrap();
    assert_eq!((web.image.as_str(), web.command.clone()), ("a:2", vec!["serve".to_owned()]));
    let env: BTreeMap<_, _> = web.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env, BTreeMap::from([("A", "1"), ("B", "3")]));
    assert_eq!(web.ports.iter().map(|p| (p.published, p.target)).collect::<Vec<_>>(), [(8443, 443)]);
    assert_eq!(
        options(web).mounts.iter().map(|m| m.source.as_str()).collect::<Vec<_>>(),
        ["shop_more"],
        "one per target"
    );
    assert!(stack.services.iter().any(|s| s.name == "shop_cache"));
}

#[test]
fn bad_files_name_the_line_or_the_path_and_what_is_expected() {
    let syntax = err(&["services:\n  web:\n    image: [unclosed\n"]);
    assert!(syntax.starts_with("f0.yaml: ") && syntax.contains("line"), "{syntax}");
    assert_eq!(
        err(&["services:\n  web:\n    imgae: x\n"]).split(" (expected").next().unwrap(),
        "services.web.imgae: not a key Compose knows here"
    );
    assert_eq!(
        err(&["services:\n  web: {command: x}\n"]),
        "services.web: no image (berth runs images; build is not supported)"
    );
    assert!(err(&["services:\n  web: {image: x, volumes: ['nope:/d']}\n"])
        .contains("services.web.volumes[0]: the volume \"nope\" is not in the file's top-level volumes"));
    assert!(err(&["services:\n  web: {image: x, secrets: [pw]}\n"])
        .contains("\"pw\" is not in the file's top-level secrets"));
    assert!(err(&["services:\n  web: {image: x, depends_on: [db]}\n"])
        .contains("services.web.depends_on.db: \"db\" is not a service of the file"));
    let cycle = err(&["services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n"]);
    assert_eq!(cycle, "depends_on: shop_a, shop_b wait for each other, so none would ever start");
    assert!(err(&["services:\n  web: {image: \"x:${NEED:?set NEED}\"}\n"])
        .contains("services.web.image: the variable NEED is required: set NEED"));
    assert!(err(&["services:\n  web: {image: x, deploy: {replicas: lots}}\n"]).contains("services.web.deploy.replicas"));
    assert!(err(&["services:\n  web: {image: x, ports: ['8000-8010:80']}\n"]).contains("ranges"));
    assert!(err(&["services:\n  web: {image: x, deploy: {resources: {limits: {memory: 12zz}}}}\n"])
        .contains("services.web.deploy.resources.limits.memory"));
    assert!(
        err(&["services:\n  web: {image: x, cap_add: [fly]}\n"]).contains("cap_add[0]"),
        "the server's rules, named"
    );
    assert!(err(&["services:\n  Web: {image: x}\n"]).contains("shop_Web"));
    assert!(err(&["services: {}\n"]).contains("services: the file has none"));
    // A one-shot dependency would hold its dependents for ever once it has run: left out, and said so.
    let dir = tempfile::tempdir().unwrap();
    let mut report = Report::default();
    let file = "services:\n  migrate: {image: m}\n  web: {image: w, depends_on: {migrate: {condition: service_completed_successfully}}}\n";
    let stack = load_in(dir.path(), &[file], &mut report).unwrap();
    assert!(stack.services.iter().all(|s| options(s).depends_on.is_empty()));
    assert!(report.unsupported[0].starts_with("services.web.depends_on.migrate.condition"), "{report:?}");
}

#[test]
fn words_split_as_a_shell_would_without_one() {
    assert_eq!(
        service::split_words(r#"sh -c 'echo "hi $$X"' a\ b "q\"d""#).unwrap(),
        ["sh", "-c", "echo \"hi $$X\"", "a b", "q\"d"]
    );
    assert!(service::split_words("echo 'open").is_err());
    assert_eq!(service::bytes("50M").unwrap(), 50 << 20);
    assert_eq!(service::bytes("1.5gb").unwrap(), 3 << 29);
    assert_eq!(service::bytes("64MiB").unwrap(), 64 << 20);
    assert_eq!(service::bytes("512").unwrap(), 512);
}
