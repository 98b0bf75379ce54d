//! One file per group of commands; each works on the local image store and
//! container directories and returns the process exit code.

pub mod containers;
pub mod images;
pub mod join;
pub mod run;

use std::path::PathBuf;

use anyhow::Context;
use berth_node_agent::image::{Registries, Store};
use berth_node_agent::runtime::logs::{LogLine, Stream};
use berth_node_agent::runtime::userns::IdRanges;
use berth_node_agent::runtime::Runtime;

use crate::{Args, Command};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `--cpus TEXT` as millicpus: a positive number of CPUs.
pub fn cpus_flag(text: &str) -> anyhow::Result<u64> {
    berth_proto::model::parse_cpus(text)
        .filter(|c| *c > 0.0)
        .map(|c| (c * 1000.0).round() as u64)
        .with_context(|| format!("--cpus {text:?} is not a positive number of CPUs (e.g. 0.5)"))
}

/// `--memory TEXT` as bytes: a positive size.
pub fn memory_flag(text: &str) -> anyhow::Result<u64> {
    berth_proto::model::parse_memory(text).filter(|b| *b > 0).with_context(|| {
        format!("--memory {text:?} is not a size; expected a positive number with an optional unit (64Mi, 1G)")
    })
}

/// What every command works on, opened from the global flags.
pub struct Node {
    pub store: Store,
    pub runtime: Runtime,
    pub registries: Registries,
    pub cgroup_parent: String,
}

impl Node {
    fn open(args: &Args) -> anyhow::Result<Self> {
        berth_proto::pki::private_dir(&args.data_dir)
            .with_context(|| format!("cannot create {} (owner only)", args.data_dir.display()))?;
        berth_node_agent::format::upgrade(&args.data_dir)?;
        let store = Store::open(&args.data_dir.join("images"))?;
        let ids = IdRanges::new(args.userns_dir.clone());
        let runtime = Runtime::open(
            &args.data_dir.join("containers"),
            &args.run_dir.join("containers"),
            shim_path()?,
            ids,
            &args.data_dir.join("volumes"),
        )?;
        let registries = Registries::load(&args.registries).map_err(anyhow::Error::msg)?;
        Ok(Self { store, runtime, registries, cgroup_parent: args.cgroup_parent.clone() })
    }
}

/// berth-shim: `BERTH_SHIM`, or beside this binary.
fn shim_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("BERTH_SHIM") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("locating berth-agent")?;
    let shim = exe.with_file_name("berth-shim");
    anyhow::ensure!(shim.exists(), "berth-shim is not installed beside {} (or set BERTH_SHIM)", exe.display());
    Ok(shim)
}

pub async fn dispatch(mut args: Args) -> anyhow::Result<u8> {
    let node = Node::open(&args)?;
    let Some(command) = args.command.take() else {
        return join::join(node, &args.data_dir, &args.run_dir, args.join).await;
    };
    match command {
        Command::Run(run) => run::run(&node, *run).await,
        Command::Ps { output } => containers::ps(&node, output),
        Command::Logs { name, tail, follow } => containers::logs(&node, &name, tail, follow).await,
        Command::Stop { names, time } => containers::stop(&node, &names, time).await,
        Command::Kill { name, signal } => containers::kill(&node, &name, &signal),
        Command::Exec { name, timeout, command } => containers::exec(&node, &name, &command, timeout).await,
        Command::Rm { names, force } => containers::rm(&node, &names, force).await,
        Command::Image(command) => images::run(&node, command).await,
    }
}

/// Container output to our stdout and stderr, each line to the stream it
/// came from; a partial line gets no newline.
pub fn print_lines(lines: Vec<LogLine>) -> std::io::Result<()> {
    use std::io::Write;
    if lines.is_empty() {
        return Ok(());
    }
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for line in lines {
        let sink: &mut dyn Write = if line.stream == Stream::Stdout { &mut out } else { &mut err };
        sink.write_all(line.text.as_bytes())?;
        if line.full {
            sink.write_all(b"\n")?;
        }
    }
    out.flush()
}
