//! berthctl: declare services and look at the cluster.

mod access;
mod ca;
mod client;
mod config;
mod files;
mod health;
mod lock;
mod mounts;
mod options;
mod output;
mod placement;
mod rollout;
mod spec;
mod streams;
mod volumes;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use berth_proto::model::{Endpoint, FileKind, NodeInfo, Service, TaskInfo};
use berth_proto::pb::cluster as pb;
use clap::{Parser, Subcommand};

use client::Client;
use output::Format;

#[derive(Debug, Parser)]
#[command(name = "berthctl", version, about = "Drive a berth cluster")]
struct Cli {
    /// A server to talk to (repeatable); the next is tried when one is down.
    /// Default: the servers of the config's context
    #[arg(long = "server", short = 's', global = true, env = "BERTH_SERVER", value_delimiter = ',')]
    servers: Vec<String>,
    /// berthctl's config: contexts of servers and credentials
    /// (default ~/.config/berth/config; the bootstrap server writes
    /// DATA_DIR/admin.conf). Before the command, as Docker's: after it,
    /// `--config` names a service's config
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// The context of the config to use (default: its current one)
    #[arg(long, global = true, env = "BERTH_CONTEXT")]
    context: Option<String>,
    /// Output format of read commands
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Format,
    /// Seconds to wait for one server before trying the next
    #[arg(long, global = true, default_value = "8")]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Services: create, list, inspect, remove
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Create or update the services in a YAML spec file (idempotent)
    Apply {
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Leave the image's tag as it is (by default the server pins the
        /// digest it names now, so every task runs the same image)
        #[arg(long)]
        no_resolve_image: bool,
        /// Return once the specs are accepted, without waiting for each service to converge
        #[arg(long, short)]
        detach: bool,
    },
    /// The Raft cluster of servers
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Nodes: the hosts that run berth-agent
    #[command(subcommand)]
    Node(NodeCmd),
    /// Named volumes: the data nodes keep for their tasks
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Secrets: values the cluster keeps sealed and hands only to the tasks that name them
    #[command(subcommand)]
    Secret(FileCmd),
    /// Configs: files the cluster keeps and hands to the tasks that name them
    #[command(subcommand)]
    Config(FileCmd),
    /// Print changes to services, nodes and tasks as they happen, until interrupted
    Events,
    /// Users: who may use the cluster, and with which role
    #[command(subcommand)]
    User(UserCmd),
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// Add a user and print its credential (a config file of one context)
    Add {
        name: String,
        /// read: every read and watch; operator: also services, scaling,
        /// apply and logs; admin: also nodes, servers, users and tokens
        #[arg(long, value_parser = ["read", "operator", "admin"])]
        role: String,
    },
    /// List users and their roles
    #[command(alias = "list")]
    Ls,
    /// Remove a user: its credential stops working at once, on every server
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
enum FileCmd {
    /// Store a value (at most 500 KiB), read from FILE, or from stdin with -
    Create { name: String, file: String },
    /// List them: size, age and the services that use each (never a secret's value)
    #[command(alias = "list")]
    Ls,
    /// Show one (a config with its value; a secret's is never shown)
    Inspect { name: String },
    /// Remove them, unless a service uses one
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCmd {
    /// List volumes: the node each is on, and the tasks that mount it
    #[command(alias = "list")]
    Ls {
        /// Only this node's (name or id)
        #[arg(long)]
        node: Option<String>,
    },
    /// Show a volume, on every node that has one of that name
    Inspect { name: String },
    /// Remove a volume and its data, unless a task mounts it
    #[command(alias = "remove")]
    Rm {
        name: String,
        /// Only on this node (default: every node that has it)
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// List nodes: status, availability, CPU and memory allocated/total, tasks
    #[command(alias = "list")]
    Ls {
        /// Answer from the contacted server's state, without the leader (may be behind)
        #[arg(long)]
        stale: bool,
    },
    /// Show one node, by name or id
    Inspect {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// Take no new tasks, and move its tasks elsewhere
    Drain { name: String },
    /// Take tasks again
    Activate { name: String },
    /// Forget a node that is down, or drained and idle
    #[command(alias = "remove")]
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum ServiceCmd {
    /// Create a service
    Create {
        name: String,
        #[arg(long)]
        image: String,
        /// Tasks to run (default 1; not for a global service)
        #[arg(long, allow_negative_numbers = true)]
        replicas: Option<i64>,
        /// KEY=VALUE (repeatable)
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// Fractional CPUs, such as 0.5
        #[arg(long, allow_negative_numbers = true)]
        cpus: Option<f64>,
        /// Memory, such as 64Mi or 1G
        #[arg(long)]
        memory: Option<String>,
        /// [NAME=]PUBLISHED:TARGET[/udp] (repeatable); NAME names it in DNS SRV records
        #[arg(long = "publish", short = 'p')]
        publish: Vec<String>,
        /// always, on-failure or never
        #[arg(long, default_value = "always")]
        restart: String,
        /// Where tasks may run: node.name == X, node.labels.KEY != Y (repeatable)
        #[arg(long = "constraint")]
        constraints: Vec<String>,
        /// The most processes each task may have (default: the node's)
        #[arg(long, allow_negative_numbers = true)]
        pids_limit: Option<i64>,
        /// seccomp=default|unconfined|PROFILE.json: the containers' syscall filter
        #[arg(long = "security-opt", value_name = "seccomp=...")]
        security_opt: Option<String>,
        /// Replace the image's entrypoint with this one argument ("" clears
        /// it); the image's Cmd goes too, so give the rest after `--`
        #[arg(long)]
        entrypoint: Option<String>,
        /// The user tasks run as: USER, UID, USER:GROUP or UID:GID (default: the image's)
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// The tasks' working directory (default: the image's)
        #[arg(long, short = 'w')]
        workdir: Option<String>,
        /// The tasks' hostname (default: each task's name)
        #[arg(long)]
        hostname: Option<String>,
        /// Mount the tasks' root filesystem read-only
        #[arg(long)]
        read_only: bool,
        /// Run a tiny init (the node's tini) as PID 1 that reaps orphans and passes signals on
        #[arg(long)]
        init: bool,
        /// A capability over Docker's default set, e.g. NET_ADMIN (repeatable)
        #[arg(long = "cap-add")]
        cap_add: Vec<String>,
        /// A capability to drop from it, or ALL (repeatable)
        #[arg(long = "cap-drop")]
        cap_drop: Vec<String>,
        /// The signal that stops a task (default: the image's, else SIGTERM)
        #[arg(long)]
        stop_signal: Option<String>,
        /// How long a stop waits before SIGKILL, e.g. 30s (default: the node's, 10s)
        #[arg(long)]
        stop_grace_period: Option<String>,
        /// auto: each task in a user namespace of its own (its root an unprivileged host id); host: the host's ids
        #[arg(long, value_name = "auto|host")]
        userns: Option<String>,
        #[command(flatten)]
        health: health::HealthFlags,
        #[command(flatten)]
        rollout: rollout::RolloutFlags,
        #[command(flatten)]
        options: options::OptionsFlags,
        #[command(flatten)]
        placement: placement::PlacementFlags,
        /// Leave the image's tag as it is (by default the server pins the
        /// digest it names now, so every task runs the same image)
        #[arg(long)]
        no_resolve_image: bool,
        /// Return once the service is accepted, without waiting for its tasks
        #[arg(long, short)]
        detach: bool,
        /// The command and its arguments, after `--`
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Change a service (what is not given stays); waits, showing each task,
    /// until it has converged, and fails if its rollout pauses or rolls back
    Update {
        name: String,
        #[arg(long)]
        image: Option<String>,
        /// KEY=VALUE to add or change (repeatable)
        #[arg(long = "env-add", value_name = "KEY=VALUE")]
        env_add: Vec<String>,
        /// A variable to remove (repeatable)
        #[arg(long = "env-rm", value_name = "KEY")]
        env_rm: Vec<String>,
        #[arg(long, allow_negative_numbers = true)]
        replicas: Option<i64>,
        /// [NAME=]PUBLISHED:TARGET[/udp] to add (repeatable)
        #[arg(long = "publish-add", value_name = "PORTS")]
        publish_add: Vec<String>,
        /// PUBLISHED[/udp] to stop publishing (repeatable)
        #[arg(long = "publish-rm", value_name = "PORT")]
        publish_rm: Vec<String>,
        /// A secret to add or replace at its target, as --secret takes it (repeatable)
        #[arg(long = "secret-add", value_name = "SECRET")]
        secret_add: Vec<String>,
        /// A secret to stop using, by name (repeatable)
        #[arg(long = "secret-rm", value_name = "NAME")]
        secret_rm: Vec<String>,
        /// A config to add or replace at its target, as --config takes it (repeatable)
        #[arg(long = "config-add", value_name = "CONFIG")]
        config_add: Vec<String>,
        /// A config to stop using, by name (repeatable)
        #[arg(long = "config-rm", value_name = "NAME")]
        config_rm: Vec<String>,
        #[command(flatten)]
        rollout: rollout::RolloutFlags,
        /// Leave the image's tag as it is (by default the server pins the
        /// digest it names now, so every task runs the same image)
        #[arg(long)]
        no_resolve_image: bool,
        /// Return once the change is accepted, without waiting
        #[arg(long, short)]
        detach: bool,
    },
    /// Put back the spec before the last change of what its tasks run
    /// (replicas stay); waits until it is rolled back
    Rollback {
        name: String,
        /// Return once the rollback is accepted, without waiting
        #[arg(long, short)]
        detach: bool,
    },
    /// List services
    #[command(alias = "list")]
    Ls {
        /// Answer from the contacted server's state, without the leader (may be behind)
        #[arg(long)]
        stale: bool,
    },
    /// Show one service
    Inspect {
        name: String,
        /// Answer from the contacted server's state, without the leader (may be behind)
        #[arg(long)]
        stale: bool,
    },
    /// Remove a service
    #[command(alias = "remove")]
    Rm { name: String },
    /// Set replica counts: NAME=N (repeatable); scaling down stops the highest slots
    Scale {
        #[arg(required = true)]
        targets: Vec<String>,
        /// Return once the counts are accepted, without waiting
        #[arg(long, short)]
        detach: bool,
    },
    /// A service's tasks: slot, node, desired and current state, exit code, restarts, why pending
    Ps {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// The logs of every task of a service, from the nodes they run on, as TASK@NODE | LINE
    Logs {
        name: String,
        /// Keep printing new lines, also of tasks that start later, until interrupted
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each task
        #[arg(long)]
        tail: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Members, roles, leader, term, commit and applied index
    Status {
        /// The contacted server's own view instead of the leader's
        #[arg(long)]
        local: bool,
    },
    /// Remove a server from the cluster by id
    Remove { id: u64 },
    /// Print the command (with its token) that joins a host as a worker or a server
    JoinToken {
        #[arg(value_parser = ["worker", "server"])]
        role: String,
        /// Replace the token first: the old one stops working
        #[arg(long)]
        rotate: bool,
        /// Print only the token
        #[arg(short, long)]
        quiet: bool,
    },
    /// The cluster's root certificate authority
    #[command(subcommand)]
    Ca(CaCmd),
    /// Autolock: with it on, each server's store key is sealed by an unlock
    /// key that no server keeps on disk, and a restarted server opens its
    /// store only when given it (`cluster unlock`). On prints the key.
    Autolock {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Print the unlock key (autolock on)
    UnlockKey {
        /// Replace it first: the old one stops working
        #[arg(long)]
        rotate: bool,
        /// Print only the key
        #[arg(short, long)]
        quiet: bool,
    },
    /// Give restarted, locked servers the unlock key, read from stdin
    Unlock,
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Replace the root: a new one signs, both are trusted until every node
    /// has renewed, then the old one is dropped
    Rotate {
        /// Seconds to wait for the rotation to end (0: do not wait)
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// The trusted roots, and the nodes a rotation waits for
    Status,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berthctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn to_node(n: pb::Node) -> Result<NodeInfo> {
    n.try_into().context("the server sent an invalid node")
}

fn to_model(s: Option<pb::Service>) -> Result<Service> {
    s.context("the server sent no service")?.try_into().context("the server sent an invalid service")
}

/// A service's tasks, as `service ps` shows them.
async fn list_tasks(client: &Client, service: &str, stale: bool) -> Result<Vec<TaskInfo>> {
    let req = pb::ListTasksRequest { service: service.to_owned(), stale };
    let reply = client.call("list tasks", async |mut c| c.list_tasks(req.clone()).await).await?;
    reply.tasks.into_iter().map(|t| t.try_into().context("the server sent an invalid task")).collect()
}

/// What the server went on without, on stderr.
fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// Says what was accepted, then (unless `detach`) waits for each service
/// in turn to converge on its version, showing its tasks as they move, as
/// `docker service create` does; fails if a rollout fails.
async fn converge(client: &Client, done: &[(String, u64, String)], detach: bool) -> Result<String> {
    let said = |(name, version, what): &(String, u64, String)| format!("service {name} {what} (version {version})");
    if detach {
        return Ok(done.iter().map(|d| said(d) + "\n").collect());
    }
    let mut out = String::new();
    for d in done {
        println!("{}; waiting until it converges (--detach not to)", said(d));
        out = rollout::wait(client, &d.0, rollout::Goal::Update { version: d.1 }).await?;
        if d != done.last().unwrap_or(d) {
            print!("{out}");
        }
    }
    Ok(out)
}

/// Sets a service's replicas on the server; a server of the release before
/// `ScaleService` gets the spec read and written back with the new count.
/// Returns the service's version after.
async fn file_cmd(client: &Client, kind: FileKind, cmd: FileCmd, fmt: Format) -> Result<String> {
    match cmd {
        FileCmd::Create { name, file } => files::create(client, kind, &name, &file).await,
        FileCmd::Ls => files::ls(client, kind, fmt).await,
        FileCmd::Inspect { name } => files::inspect(client, kind, &name, fmt).await,
        FileCmd::Rm { names } => files::rm(client, kind, &names).await,
    }
}

async fn scale(client: &Client, name: &str, replicas: i64) -> Result<u64> {
    let req = pb::ScaleServiceRequest { name: name.to_owned(), replicas };
    let reply = client
        .call("scale service", async |mut c| match c.scale_service(req.clone()).await {
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(tonic::Response::new(None)),
            r => r.map(|r| r.map(Some)),
        })
        .await?;
    if let Some(reply) = reply {
        return Ok(to_model(reply.service)?.version);
    }
    let req = pb::GetServiceRequest { name: name.to_owned(), stale: false };
    let reply = client.call("inspect service", async |mut c| c.get_service(req.clone()).await).await?;
    let mut spec = reply.service.and_then(|s| s.spec).context("the server sent no service")?;
    spec.replicas = replicas;
    spec::check(&spec)?;
    let req = pb::UpdateServiceRequest { spec: Some(spec), no_resolve_image: true };
    let reply = client.call("scale service", async |mut c| c.update_service(req.clone()).await).await?;
    Ok(to_model(reply.service)?.version)
}

async fn run(cli: Cli) -> Result<String> {
    anyhow::ensure!(cli.timeout.is_finite() && cli.timeout > 0.0, "--timeout must be a positive number of seconds");
    let path = config::path(cli.config)?;
    let context = config::load(&path, cli.context.as_deref())?;
    let servers = if cli.servers.is_empty() { &context.servers } else { &cli.servers };
    let client = Client::new(servers, Duration::from_secs_f64(cli.timeout), &context.credentials())
        .with_context(|| format!("the credential in {}", path.display()))?;
    let fmt = cli.output;
    match cli.command {
        Command::Service(ServiceCmd::Create {
            name,
            image,
            replicas,
            env,
            cpus,
            memory,
            publish,
            restart,
            constraints,
            pids_limit,
            security_opt,
            userns,
            entrypoint,
            user,
            workdir,
            hostname,
            read_only,
            init,
            cap_add,
            cap_drop,
            stop_signal,
            stop_grace_period,
            health,
            rollout,
            options,
            placement,
            no_resolve_image,
            detach,
            command,
        }) => {
            let (update_config, rollback_config) = rollout.over(None, None)?;
            let replicas = replicas.unwrap_or(if placement.is_global() { 0 } else { 1 });
            let (mode, placement) = placement.to_pb()?;
            let security = spec::security_flags(security_opt.as_deref(), userns.as_deref())?;
            let spec = pb::ServiceSpec {
                name,
                image,
                command,
                env: env.iter().map(|e| spec::parse_env(e)).collect::<Result<_>>()?,
                replicas,
                resources: Some(pb::Resources {
                    cpus: cpus.unwrap_or(0.0),
                    memory_bytes: memory.as_deref().map(spec::memory).transpose().context("--memory")?.unwrap_or(0),
                }),
                ports: publish.iter().map(|p| spec::parse_publish(p)).collect::<Result<_>>().context("--publish")?,
                restart,
                constraints,
                pids_limit: pids_limit.unwrap_or(0),
                security,
                overrides: Some(pb::Overrides {
                    set_entrypoint: entrypoint.is_some(),
                    entrypoint: entrypoint.into_iter().filter(|e| !e.is_empty()).collect(),
                    user: user.unwrap_or_default(),
                    workdir: workdir.unwrap_or_default(),
                    hostname: hostname.unwrap_or_default(),
                    read_only,
                    cap_add,
                    cap_drop,
                    stop_signal: stop_signal.unwrap_or_default(),
                    stop_grace_ms: stop_grace_period
                        .as_deref()
                        .map(spec::duration_ms)
                        .transpose()
                        .context("--stop-grace-period")?,
                    health: health.to_pb()?,
                    options: options.to_pb()?,
                    init,
                }),
                update_config,
                rollback_config,
                mode,
                placement,
            };
            spec::check(&spec)?;
            let name = spec.name.clone();
            let req = pb::CreateServiceRequest { spec: Some(spec), no_resolve_image };
            let reply = client.call("create service", async |mut c| c.create_service(req.clone()).await).await?;
            warn(&reply.warnings);
            let svc = to_model(reply.service)?;
            converge(&client, &[(name, svc.version, "created".to_owned())], detach).await
        }
        Command::Service(ServiceCmd::Ls { stale }) => {
            let req = pb::ListServicesRequest { stale };
            let reply = client.call("list services", async |mut c| c.list_services(req).await).await?;
            let list = reply.services.into_iter().map(|s| to_model(Some(s))).collect::<Result<Vec<_>>>()?;
            Ok(output::services(&list, fmt))
        }
        Command::Service(ServiceCmd::Inspect { name, stale }) => {
            let req = pb::GetServiceRequest { name, stale };
            let reply = client.call("inspect service", async |mut c| c.get_service(req.clone()).await).await?;
            let endpoints = reply
                .endpoints
                .into_iter()
                .map(|e| e.try_into().context("the server sent an invalid endpoint"))
                .collect::<Result<Vec<Endpoint>>>()?;
            Ok(output::service(&to_model(reply.service)?, &endpoints, fmt))
        }
        Command::Service(ServiceCmd::Scale { targets, detach }) => {
            let mut done = Vec::new();
            for target in targets {
                let (name, replicas) = spec::parse_scale(&target)?;
                let version = scale(&client, &name, replicas).await?;
                done.push((name, version, format!("scaled to {replicas}")));
            }
            converge(&client, &done, detach).await
        }
        Command::Service(ServiceCmd::Update {
            name,
            image,
            env_add,
            env_rm,
            replicas,
            publish_add,
            publish_rm,
            secret_add,
            secret_rm,
            config_add,
            config_rm,
            rollout,
            no_resolve_image,
            detach,
        }) => {
            let req = pb::GetServiceRequest { name: name.clone(), stale: false };
            let reply = client.call("inspect service", async |mut c| c.get_service(req.clone()).await).await?;
            let before = reply.service.context("the server sent no service")?;
            let mut spec = before.spec.clone().context("the server sent no spec")?;
            if let Some(image) = image {
                spec.image = image;
            }
            for e in &env_add {
                let (k, v) = spec::parse_env(e).context("--env-add")?;
                spec.env.insert(k, v);
            }
            for k in &env_rm {
                spec.env.remove(k);
            }
            if let Some(n) = replicas {
                spec.replicas = n;
            }
            for p in &publish_rm {
                let (port, protocol) = p.split_once('/').unwrap_or((p, "tcp"));
                let port: i64 = port.parse().with_context(|| format!("--publish-rm {p:?}: expected PORT[/udp]"))?;
                let before = spec.ports.len();
                spec.ports.retain(|s| {
                    !(s.published == port && (s.protocol == protocol || s.protocol.is_empty() && protocol == "tcp"))
                });
                anyhow::ensure!(spec.ports.len() < before, "--publish-rm {p:?}: the service does not publish it");
            }
            for p in &publish_add {
                let port = spec::parse_publish(p).context("--publish-add")?;
                spec.ports.retain(|s| !(s.published == port.published && s.protocol == port.protocol));
                spec.ports.push(port);
            }
            let overrides = spec.overrides.get_or_insert_with(Default::default);
            let options = overrides.options.get_or_insert_with(Default::default);
            files::change(&mut options.secrets, &secret_add, &secret_rm).context("--secret-add/--secret-rm")?;
            files::change(&mut options.configs, &config_add, &config_rm).context("--config-add/--config-rm")?;
            let (update, rollback) = rollout.over(spec.update_config.take(), spec.rollback_config.take())?;
            (spec.update_config, spec.rollback_config) = (update, rollback);
            spec::check(&spec)?;
            let req = pb::UpdateServiceRequest { spec: Some(spec), no_resolve_image };
            let reply = client.call("update service", async |mut c| c.update_service(req.clone()).await).await?;
            warn(&reply.warnings);
            let svc = to_model(reply.service)?;
            if svc.version == before.version {
                return Ok(format!("service {name}: nothing changed (version {})\n", svc.version));
            }
            if detach {
                return Ok(format!("service {name} updated (version {})\n", svc.version));
            }
            println!("service {name} updated (version {}); waiting until it converges (--detach not to)", svc.version);
            rollout::wait(&client, &name, rollout::Goal::Update { version: svc.version }).await
        }
        Command::Service(ServiceCmd::Rollback { name, detach }) => {
            let req = pb::RollbackServiceRequest { name: name.clone() };
            let reply = client.call("roll back service", async |mut c| c.rollback_service(req.clone()).await).await?;
            let svc = to_model(reply.service)?;
            if detach {
                return Ok(format!("service {name} rolling back (version {})\n", svc.version));
            }
            println!(
                "service {name} rolling back (version {}); waiting until it converges (--detach not to)",
                svc.version
            );
            rollout::wait(&client, &name, rollout::Goal::Rollback { version: svc.version }).await
        }
        Command::Service(ServiceCmd::Ps { name, stale }) => {
            let tasks = list_tasks(&client, &name, stale).await?;
            Ok(output::tasks(&tasks, fmt, std::time::SystemTime::now()))
        }
        Command::Service(ServiceCmd::Logs { name, follow, tail }) => {
            let tail = tail.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
            let req = pb::ServiceLogsRequest { service: name, follow, tail };
            let stream = client.call("service logs", async |mut c| c.service_logs(req.clone()).await).await?;
            streams::logs(stream, fmt).await?;
            Ok(String::new())
        }
        Command::Events => {
            let stream = client.call("events", async |mut c| c.events(pb::EventsRequest {}).await).await?;
            streams::events(stream, fmt).await?;
            Ok(String::new())
        }
        Command::Service(ServiceCmd::Rm { name }) => {
            let req = pb::DeleteServiceRequest { name: name.clone() };
            client.call("remove service", async |mut c| c.delete_service(req.clone()).await).await?;
            Ok(format!("service {name} removed\n"))
        }
        Command::Apply { file, no_resolve_image, detach } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read the spec from stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?
            };
            // Files a spec names are relative to the spec's own directory.
            let dir = match std::path::Path::new(&file).parent() {
                Some(d) if file != "-" && !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            };
            let specs = spec::parse_file(&text, &dir).with_context(|| format!("invalid spec file {file}"))?;
            let mut done = Vec::new();
            for spec in specs {
                let name = spec.name.clone();
                let req = pb::ApplyServiceRequest { spec: Some(spec), no_resolve_image };
                let reply = client
                    .call(&format!("apply service {name}"), async |mut c| c.apply_service(req.clone()).await)
                    .await?;
                warn(&reply.warnings);
                let svc = to_model(reply.service)?;
                done.push((name, svc.version, reply.outcome));
            }
            converge(&client, &done, detach).await
        }
        Command::Cluster(ClusterCmd::Status { local }) => {
            let req = pb::ClusterStatusRequest { local };
            let reply = client.call("cluster status", async |mut c| c.cluster_status(req).await).await?;
            Ok(output::cluster_status(&reply, fmt))
        }
        Command::Node(NodeCmd::Ls { stale }) => {
            let reply =
                client.call("list nodes", async |mut c| c.list_nodes(pb::ListNodesRequest { stale }).await).await?;
            let list = reply.nodes.into_iter().map(to_node).collect::<Result<Vec<_>>>()?;
            Ok(output::nodes(&list, fmt))
        }
        Command::Node(NodeCmd::Inspect { name, stale }) => {
            let req = pb::GetNodeRequest { name, stale };
            let reply = client.call("inspect node", async |mut c| c.get_node(req.clone()).await).await?;
            Ok(output::node(&to_node(reply.node.context("the server sent no node")?)?, fmt))
        }
        Command::Node(cmd @ (NodeCmd::Drain { .. } | NodeCmd::Activate { .. })) => {
            let (name, availability) = match cmd {
                NodeCmd::Drain { name } => (name, "drain"),
                NodeCmd::Activate { name } => (name, "active"),
                _ => unreachable!("matched above"),
            };
            let req = pb::SetNodeAvailabilityRequest { name: name.clone(), availability: availability.into() };
            client.call("set node availability", async |mut c| c.set_node_availability(req.clone()).await).await?;
            Ok(format!("node {name} is now {availability}\n"))
        }
        Command::Secret(cmd) => file_cmd(&client, FileKind::Secret, cmd, fmt).await,
        Command::Config(cmd) => file_cmd(&client, FileKind::Config, cmd, fmt).await,
        Command::Volume(VolumeCmd::Ls { node }) => volumes::ls(&client, node, fmt).await,
        Command::Volume(VolumeCmd::Inspect { name }) => volumes::inspect(&client, &name, fmt).await,
        Command::Volume(VolumeCmd::Rm { name, node }) => volumes::rm(&client, &name, node).await,
        Command::Node(NodeCmd::Rm { name }) => {
            let req = pb::RemoveNodeRequest { name: name.clone() };
            client.call("remove node", async |mut c| c.remove_node(req.clone()).await).await?;
            Ok(format!("node {name} removed\n"))
        }
        Command::Cluster(ClusterCmd::JoinToken { role, rotate, quiet }) => {
            access::join_token(&client, &role, rotate, quiet).await
        }
        Command::User(UserCmd::Add { name, role }) => access::add_user(&client, &context, &name, &role).await,
        Command::User(UserCmd::Ls) => access::list_users(&client, fmt).await,
        Command::User(UserCmd::Rm { name }) => access::remove_user(&client, &name).await,
        Command::Cluster(ClusterCmd::Ca(CaCmd::Rotate { wait })) => {
            let timeout = Duration::from_secs_f64(cli.timeout);
            let wait = Duration::from_secs(wait);
            ca::rotate(&client, &path, &context.name, servers, timeout, wait).await
        }
        Command::Cluster(ClusterCmd::Ca(CaCmd::Status)) => ca::status(&client, fmt).await,
        Command::Cluster(ClusterCmd::Autolock { state }) => lock::autolock(&client, state == "on").await,
        Command::Cluster(ClusterCmd::UnlockKey { rotate, quiet }) => lock::unlock_key(&client, rotate, quiet).await,
        Command::Cluster(ClusterCmd::Unlock) => {
            lock::unlock(servers, Duration::from_secs_f64(cli.timeout), &context.credentials()).await
        }
        Command::Cluster(ClusterCmd::Remove { id }) => {
            client.call("remove server", async |mut c| c.remove_member(pb::RemoveMemberRequest { id }).await).await?;
            Ok(format!("server {id} removed from the cluster\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
