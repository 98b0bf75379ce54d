//! berthctl: declare services and look at the cluster.

mod access;
mod backup;
mod ca;
mod cli;
mod client;
mod compose;
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
mod stack;
mod streams;
mod volumes;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use berth_proto::model::{Endpoint, FileKind, NodeInfo, Service, TaskInfo};
use berth_proto::pb::cluster as pb;
use clap::Parser;

use cli::{CaCmd, Cli, ClusterCmd, Command, FileCmd, NodeCmd, ServiceCmd, StackCmd, UserCmd, VolumeCmd};

use client::Client;
use output::Format;

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

/// The text of `file`, or of stdin for `-`; `what` it holds, for the error.
fn read_file(file: &str, what: &str) -> Result<String> {
    match file {
        "-" => std::io::read_to_string(std::io::stdin()).with_context(|| format!("cannot read {what} from stdin")),
        path => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}")),
    }
}

/// Every service, as `service ls` shows them.
async fn list_services(client: &Client, stale: bool) -> Result<Vec<Service>> {
    let req = pb::ListServicesRequest { stale };
    let reply = client.call("list services", async |mut c| c.list_services(req).await).await?;
    reply.services.into_iter().map(|s| to_model(Some(s))).collect()
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

/// berthctl's release, then each server's as it answers for itself.
async fn versions(servers: &[String], timeout: Duration, context: &berth_proto::contexts::Context) -> String {
    let mut out = format!("berthctl  {}\n", env!("CARGO_PKG_VERSION"));
    for addr in servers {
        let asked = match Client::new(std::slice::from_ref(addr), timeout, &context.credentials()) {
            Ok(one) => one
                .call("cluster status", async |mut c| c.cluster_status(pb::ClusterStatusRequest { local: true }).await)
                .await
                .map(|s| match s.version.as_str() {
                    "" => format!("server {}  (a release from before servers told theirs)", s.answered_by),
                    v => format!("server {}  {v}", s.answered_by),
                }),
            Err(e) => Err(e),
        };
        match asked {
            Ok(line) => out.push_str(&format!("{addr}  {line}\n")),
            Err(e) => out.push_str(&format!("{addr}  unreachable: {e:#}\n")),
        }
    }
    out
}

async fn run(cli: Cli) -> Result<String> {
    anyhow::ensure!(cli.timeout.is_finite() && cli.timeout > 0.0, "--timeout must be a positive number of seconds");
    if let Command::Completion { shell } = cli.command {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "berthctl", &mut out);
        return Ok(String::from_utf8_lossy(&out).into_owned());
    }
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
        Command::Service(ServiceCmd::Ls { stale }) => Ok(output::services(&list_services(&client, stale).await?, fmt)),
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
            let text = read_file(&file, "the spec")?;
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
        Command::Stack(StackCmd::Deploy { files, name, prune, strict, no_resolve_image, detach }) => {
            stack::deploy(&client, stack::Deploy { files, name, prune, strict, no_resolve_image, detach }).await
        }
        Command::Stack(StackCmd::Ls) => stack::ls(&client, fmt).await,
        Command::Stack(StackCmd::Services { name }) => stack::list(&client, &name, fmt).await,
        Command::Stack(StackCmd::Ps { name }) => stack::ps(&client, &name, fmt).await,
        Command::Stack(StackCmd::Rm { name }) => stack::rm(&client, &name).await,
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
        Command::Version => Ok(versions(servers, Duration::from_secs_f64(cli.timeout), &context).await),
        Command::Completion { .. } => Ok(String::new()),
        Command::Cluster(ClusterCmd::Backup { file }) => backup::backup(&client, &file).await,
        Command::Cluster(ClusterCmd::Remove { id }) => {
            client.call("remove server", async |mut c| c.remove_member(pb::RemoveMemberRequest { id }).await).await?;
            Ok(format!("server {id} removed from the cluster\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn completions_need_no_cluster_and_cover_every_command() {
        use clap::Parser;
        for shell in ["bash", "zsh", "fish"] {
            let cli = super::Cli::parse_from(["berthctl", "--config", "/nonexistent", "completion", shell]);
            let script = super::run(cli).await.unwrap();
            for word in ["service", "backup", "join-token", "completion"] {
                assert!(script.contains(word), "{shell}: {word}");
            }
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
