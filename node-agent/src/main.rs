//! berth-agent: the node agent's command line. With `--server` and no
//! command it joins a cluster and keeps its node alive there; with a
//! command it runs containers on this host, like `docker run`, and manages
//! its image store.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "berth-agent", version, about = "berth's node agent: images and containers on this host")]
pub struct Args {
    /// Where images and containers live.
    #[arg(long, env = "BERTH_AGENT_DATA_DIR", default_value = "/var/lib/berth-agent", global = true)]
    pub data_dir: PathBuf,
    /// What matters only while containers run (runtime specs, rootfs
    /// mount points); best on tmpfs.
    #[arg(long, env = "BERTH_AGENT_RUN_DIR", default_value = "/run/berth-agent", global = true)]
    pub run_dir: PathBuf,
    /// Registry credentials and insecure (plain HTTP) registries, TOML.
    #[arg(long, env = "BERTH_REGISTRIES", default_value = "/etc/berth/registries.toml", global = true)]
    pub registries: PathBuf,
    /// The host's claims of user namespace ids (`--userns auto`), shared by
    /// every agent on the host so no two containers share a block; on disk,
    /// as containers keep their ids across reboots.
    #[arg(long, env = "BERTH_USERNS_DIR", default_value = "/var/lib/berth/userns", global = true)]
    pub userns_dir: PathBuf,
    /// Parent cgroup of this agent's containers.
    #[arg(long, env = "BERTH_CGROUP_PARENT", default_value = "berth", global = true)]
    pub cgroup_parent: String,
    #[command(flatten)]
    pub join: cmd::join::JoinArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a container in the foreground (or detached with -d).
    Run(Box<cmd::run::RunArgs>),
    /// List containers.
    Ps {
        #[arg(short, long, value_enum, default_value_t = cmd::Output::Table)]
        output: cmd::Output,
    },
    /// Print a container's logs.
    Logs {
        name: String,
        #[arg(long)]
        tail: Option<usize>,
        /// Keep printing new lines until the container exits.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop a container: its stop signal, then SIGKILL after the grace period.
    Stop {
        names: Vec<String>,
        /// Seconds to wait before SIGKILL (default: the container's grace, else 10).
        #[arg(short, long)]
        time: Option<u64>,
    },
    /// Run a command inside a running container (its namespaces, cgroup,
    /// user, capabilities, working directory and environment; no stdin).
    Exec {
        name: String,
        /// Seconds before the command is killed.
        #[arg(long)]
        timeout: Option<u64>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Send a signal to a container.
    Kill {
        name: String,
        #[arg(short, long, default_value = "KILL")]
        signal: String,
    },
    /// Remove containers.
    Rm {
        names: Vec<String>,
        /// Kill running containers first.
        #[arg(short, long)]
        force: bool,
    },
    /// Manage the image store.
    #[command(subcommand)]
    Image(cmd::images::ImageCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "warn,libcgroups=error,libcontainer=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // One thread: a command does little at once, and starts faster without
    // a worker pool (blocking work still goes to tokio's blocking threads).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-agent: cannot start the async runtime: {e}");
            return ExitCode::from(125);
        }
    };
    match runtime.block_on(cmd::dispatch(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("berth-agent: {e:#}");
            ExitCode::from(125)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
        let joined =
            Args::try_parse_from(["berth-agent", "--server", "a:1,b:2", "--name", "n1", "--label", "zone=a"]).unwrap();
        assert!(joined.command.is_none());
        assert_eq!(joined.join.servers, ["a:1", "b:2"]);
        let run = Args::try_parse_from(["berth-agent", "run", "--name", "c1", "--cpus", "0.5", "img"]).unwrap();
        assert!(matches!(run.command, Some(Command::Run(r)) if r.name.as_deref() == Some("c1")));
        let exec = Args::try_parse_from(["berth-agent", "exec", "c1", "--", "sh", "-c", "id"]).unwrap();
        assert!(matches!(exec.command, Some(Command::Exec { command, .. }) if command == ["sh", "-c", "id"]));
    }
}
