//! berthctl's command line: every command, its flags and their help, as
//! clap reads them (`main::run` carries them out).

use clap::{Parser, Subcommand};

use crate::output::Format;
use crate::{health, options, placement, rollout};

#[derive(Debug, Parser)]
#[command(name = "berthctl", version, about = "Drive a berth cluster")]
pub struct Cli {
    /// A server to talk to (repeatable); the next is tried when one is down.
    /// Default: the servers of the config's context
    #[arg(long = "server", short = 's', global = true, env = "BERTH_SERVER", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// berthctl's config: contexts of servers and credentials
    /// (default ~/.config/berth/config; the bootstrap server writes
    /// DATA_DIR/admin.conf). Before the command, as Docker's: after it,
    /// `--config` names a service's config
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// The context of the config to use (default: its current one)
    #[arg(long, global = true, env = "BERTH_CONTEXT")]
    pub context: Option<String>,
    /// Output format of read commands
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Format,
    /// Seconds to wait for one server before trying the next
    #[arg(long, global = true, default_value = "8")]
    pub timeout: f64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
pub enum Command {
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
    /// Stacks: an application's services from Compose files
    #[command(subcommand)]
    Stack(StackCmd),
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
    /// berthctl's release, and that of each server it knows
    Version,
    /// A completion script for a shell, on stdout (bash: `berthctl
    /// completion bash > /etc/bash_completion.d/berthctl`)
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
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
pub enum FileCmd {
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
pub enum StackCmd {
    /// Create or update a stack's services from Compose files: each service
    /// is NAME_SERVICE, changed ones roll out, unchanged ones are left alone
    Deploy {
        /// A Compose file (repeatable: later files merge over earlier ones, as
        /// Compose merges them; - reads stdin)
        #[arg(short = 'c', long = "compose-file", required = true)]
        files: Vec<String>,
        name: String,
        /// Remove the stack's services that the files no longer have
        #[arg(long)]
        prune: bool,
        /// Refuse keys berth does not support instead of ignoring them
        #[arg(long)]
        strict: bool,
        /// Leave the images' tags as they are (see `apply --no-resolve-image`)
        #[arg(long)]
        no_resolve_image: bool,
        /// Return once the specs are accepted, without waiting for each service to converge
        #[arg(long, short)]
        detach: bool,
    },
    /// List stacks and how many services each has
    #[command(alias = "list")]
    Ls,
    /// List a stack's services
    Services { name: String },
    /// List the tasks of a stack's services
    Ps { name: String },
    /// Remove a stack's services, secrets and configs (its volumes keep their data)
    #[command(alias = "remove")]
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
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
pub enum NodeCmd {
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
pub enum ServiceCmd {
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
pub enum ClusterCmd {
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
    /// Save the cluster's replicated state to FILE (owner-only; it holds the
    /// root key). `berth-server --restore FILE --bootstrap` starts a new
    /// cluster from it
    Backup { file: std::path::PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
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
