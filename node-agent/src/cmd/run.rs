//! `berth-agent run`: pull if needed, create, start, and (in the
//! foreground) print the container's output until it exits, returning its
//! exit code. Ctrl-C stops the container.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use berth_node_agent::image::ImageRef;
use berth_node_agent::runtime::logs::Follower;
use berth_node_agent::runtime::{
    record, ContainerConfig, Limits, LogPolicy, NetworkMode, Seccomp, Shim, UserNamespace,
};
use berth_proto::model::{parse_memory, signal_name, Overrides};

use super::{cpus_flag, memory_flag, print_lines, Node};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Start it and print its name instead of waiting.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub name: Option<String>,
    /// Memory limit, e.g. 64Mi or 1G.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Most processes the container may have at once.
    #[arg(long)]
    pub pids: Option<u64>,
    /// KEY=VALUE, repeatable.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(long, value_enum, default_value_t = Network::None)]
    pub network: Network,
    /// Replace the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// USER, UID, USER:GROUP or UID:GID to run as (default: the image's).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// The working directory (default: the image's).
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// The signal `stop` sends (default: the image's, else SIGTERM).
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Rotate the log file when it would pass this size (e.g. 10Mi).
    #[arg(long, default_value = "10Mi")]
    pub log_max_size: String,
    /// Rotated log files to keep.
    #[arg(long, default_value_t = 2)]
    pub log_max_files: u32,
    /// seccomp=default|unconfined|PROFILE.json: the syscall filter (an OCI
    /// profile file, relative to the working directory).
    #[arg(long = "security-opt", value_name = "seccomp=...")]
    pub security_opt: Option<String>,
    /// auto: a user namespace of its own, its root an unprivileged host
    /// id; host: the host's ids (root is root).
    #[arg(long, value_enum, default_value_t = UsernsFlag::Host)]
    pub userns: UsernsFlag,
    /// Seconds between SIGTERM and SIGKILL when stopping on Ctrl-C.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
    /// Run the node's tini as PID 1, reaping orphans and passing signals on
    #[arg(long)]
    pub init: bool,
    /// The static init --init runs
    #[arg(long, env = "BERTH_INIT_PATH", default_value = berth_node_agent::driver::DEFAULT_INIT)]
    pub init_path: std::path::PathBuf,
    pub image: String,
    /// Command and arguments (replacing the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsernsFlag {
    Host,
    Auto,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Network {
    /// Its own network namespace with only loopback.
    None,
    /// The host's network.
    Host,
}

pub async fn run(node: &Node, args: RunArgs) -> anyhow::Result<u8> {
    let limits = limits(&args)?;
    let seccomp = match &args.security_opt {
        Some(opt) => Seccomp::from_option(opt, Path::new(".")).map_err(|e| anyhow!("--security-opt: {e}"))?,
        None => Seccomp::Default,
    };
    if args.userns == UsernsFlag::Auto && matches!(args.network, Network::Host) {
        bail!(
            "--userns auto cannot go with --network host: {}",
            berth_node_agent::runtime::spec::USERNS_WITH_HOST_NETWORK
        );
    }
    let overrides = Overrides {
        entrypoint: args.entrypoint.clone().map(|e| Some(e).filter(|e| !e.is_empty()).into_iter().collect()),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        stop_signal: args.stop_signal.as_deref().map(signal_name),
        ..Overrides::default()
    };
    overrides.validate().map_err(|e| anyhow!("--{e}"))?;
    for var in &args.env {
        if !var.contains('=') || var.starts_with('=') {
            bail!("--env {var:?} is not KEY=VALUE");
        }
    }
    let name = match args.name.clone() {
        Some(name) => name,
        None => format!("c{:012x}", std::collections::hash_map::RandomState::new().build_hasher().finish() >> 16),
    };
    berth_node_agent::runtime::validate_name(&name)?;
    let reference: ImageRef = args.image.parse()?;
    let image =
        node.store.ensure(&reference, &node.registries).await.map_err(|e| anyhow::anyhow!(e.about(&reference)))?;
    let config = ContainerConfig {
        name: name.clone(),
        image: reference.to_string(),
        image_digest: image.digest.clone(),
        layers: node.store.layer_dirs(&image)?,
        layer_digests: image.layers.clone(),
        image_config: image.config,
        command: args.command.clone(),
        overrides,
        env: args.env.clone(),
        limits,
        network: match args.network {
            Network::None => NetworkMode::None,
            Network::Host => NetworkMode::Host,
        },
        cgroup_parent: node.cgroup_parent.clone(),
        log: LogPolicy {
            max_bytes: parse_memory(&args.log_max_size)
                .filter(|b| *b >= 1024)
                .with_context(|| format!("--log-max-size {:?} is not a size of at least 1Ki", args.log_max_size))?,
            max_files: args.log_max_files,
        },
        created_at_ms: record::now_ms(),
        task: None,
        seccomp,
        userns: match args.userns {
            UsernsFlag::Host => UserNamespace::Host,
            UsernsFlag::Auto => UserNamespace::Auto,
        },
        init_binary: args.init.then(|| args.init_path.clone()),
        volumes: None,
    };
    node.runtime.create(&config)?;
    let shim = match node.runtime.start(&name, &Default::default()).await {
        Ok(shim) => shim,
        Err(e) => {
            if args.rm {
                let _ = node.runtime.remove(&name, true).await;
            }
            return Err(e.into());
        }
    };
    if args.detach {
        println!("{name}");
        return Ok(0);
    }
    let code = foreground(node, &name, shim, Duration::from_secs(args.stop_timeout)).await?;
    if args.rm {
        node.runtime.remove(&name, true).await?;
    }
    Ok(code)
}

fn limits(args: &RunArgs) -> anyhow::Result<Limits> {
    let memory_bytes = args.memory.as_deref().map(memory_flag).transpose()?;
    let cpu_millis = args.cpus.as_deref().map(cpus_flag).transpose()?;
    if args.pids == Some(0) {
        bail!("--pids 0 would not let the container start; expected at least 1");
    }
    Ok(Limits { memory_bytes, cpu_millis, pids: args.pids })
}

/// Prints the container's output until it exits; Ctrl-C stops it. The end
/// is the shim's exit (it writes the exit record just before), so nothing
/// polls for it.
pub async fn foreground(node: &Node, name: &str, mut shim: Shim, grace: Duration) -> anyhow::Result<u8> {
    let dir = node.runtime.dir(name);
    let mut follower = Follower::from_start(&dir);
    let mut stopping = false;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut exited = std::pin::pin!(shim.exited());
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = &mut exited => break,
            _ = tick.tick() => print_lines(follower.poll()?)?,
            _ = &mut ctrl_c, if !stopping => {
                stopping = true;
                let runtime = node.runtime.clone();
                let name = name.to_owned();
                tokio::spawn(async move { runtime.stop(&name, grace).await });
            }
        }
    }
    print_lines(follower.poll()?)?;
    let exited = node.runtime.wait(name).await?;
    if exited.oom_killed {
        eprintln!("berth-agent: container {name} was killed for running out of memory");
    }
    Ok(exited.code.clamp(0, 255) as u8)
}
