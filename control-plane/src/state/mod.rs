//! The replicated state and the one way to change it.
//!
//! ```text
//!   Command ──apply(&mut State, &Command)──▶ Response     (every server, same order)
//!   Query   ──query(&State, &Query)────────▶ QueryReply   (leader, after a read barrier)
//! ```
//!
//! The Raft log carries `Proposal`s, each a list of commands applied one by
//! one. Both are pure functions over plain data: no IO, no clock, no randomness,
//! so every server that applies the same log reaches the same state. Storage
//! (`crate::store`) wraps them; API handlers only validate and submit.

mod apply;
pub mod files;
mod ipam;
mod query;
mod touch;
mod trust;

use std::collections::BTreeMap;

use berth_proto::model::{
    Availability, InvalidField, NetworkConfig, Node, NodeStatus, NodeVolume, Resources, RolloutState, Service,
    ServiceSpec, Task, TaskSpec,
};
use serde::{Deserialize, Serialize};

pub use apply::{apply, check_volumes};
pub use files::StoredFile;
pub use query::{query, Query, QueryReply};
pub use touch::{merged, touches, ServicesTouched, Since, Touch, Touched, Touches};
pub use trust::{Access, JoinRole, Rotation, Trust, User};

/// The newest commands this release applies, as a level that only goes up:
/// 1 reads `ScaleService`, 2 mounts (volumes, binds), secrets and configs, 3 stacks' `STACK_SERVICE`
/// names and `depends_on`, 4 `TaskChange::New`, 5 paced heartbeats (no command: a leader of
/// the release before would call nodes asked for a longer period down, see `pace`). A command
/// of a level is written only while every member reads it (`api::levels`), so one release
/// apart interoperate.
pub const READS: u32 = 5;

/// The level from which the leader asks nodes for longer heartbeat periods (`pace`).
pub const READS_PACED_BEATS: u32 = 5;

/// The level from which the reconciler writes new tasks as `TaskChange::New`.
pub const READS_NEW_TASKS: u32 = 4;

/// Everything the cluster agrees on: services, nodes and tasks; IPAM joins later.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub nodes: BTreeMap<String, Node>,
    #[serde(default)]
    pub tasks: BTreeMap<String, Task>,
    /// The last generation used per slot (`SERVICE.SLOT`), so a replaced
    /// task's successor never reuses an id, even after the old one is gone.
    #[serde(default)]
    pub generations: BTreeMap<String, u32>,
    /// Per service, the version at which what its tasks run last changed
    /// (any field but replicas): tasks of an older one are rolled.
    #[serde(default)]
    pub templates: BTreeMap<String, u64>,
    /// How addresses are handed out; set once by the first leader, from its
    /// `--cluster-cidr` (see `state::ipam`).
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    /// The cluster's id, root and join secrets; set once, at bootstrap.
    #[serde(default)]
    pub trust: Option<Trust>,
    /// People and programs that may use the API, by name.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// Ids of worker nodes removed from the cluster: their certificates
    /// (which name the id) are worth nothing from then on, and the host
    /// joins again, with a token, as a new node.
    #[serde(default)]
    pub removed_nodes: std::collections::BTreeSet<String>,
    /// Each node's named volumes, by node id, as its agent last told; a
    /// node missing here has an agent that never did (one from before
    /// volumes, or one that has not yet), and takes no task with mounts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Vec<NodeVolume>>,
    /// Secrets (values sealed) and configs, by name (see `files`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, files::StoredFile>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, files::StoredFile>,
}

impl State {
    /// The tasks of `service`. Task ids are `SERVICE.SLOT.GENERATION`
    /// (`Task::id_for`), so they are one range of the map, not a walk of
    /// every task.
    pub fn tasks_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Task> {
        self.tasks
            .range(format!("{service}.")..format!("{service}/"))
            .map(|(_, t)| t)
            .filter(move |t| t.service == service)
    }

    /// Per node: what the tasks placed there hold (see
    /// [`Task::holds_resources`]), and how many such tasks there are.
    pub fn allocations(&self) -> BTreeMap<String, (Resources, u32)> {
        let mut out: BTreeMap<String, (Resources, u32)> = BTreeMap::new();
        for t in self.tasks.values().filter(|t| t.holds_resources()) {
            let Some(node) = &t.node else { continue };
            // (Looked up before inserting: a key made per task is 100,000 allocations a pass.)
            match out.get_mut(node) {
                Some(held) => {
                    held.0 += t.spec.resources;
                    held.1 += 1;
                }
                None => {
                    out.insert(node.clone(), (t.spec.resources, 1));
                }
            }
        }
        out
    }

    /// The spec version the service's tasks should run.
    pub fn template(&self, service: &Service) -> u64 {
        self.templates.get(&service.spec.name).copied().unwrap_or(service.version)
    }
}

/// Every mutation of cluster state is one of these, carried by one Raft log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Precondition: no service of that name exists.
    CreateService(ServiceSpec),
    /// Precondition: the service exists. A spec equal to the stored one changes nothing.
    UpdateService(ServiceSpec),
    /// Create or update, whichever applies: idempotent.
    ApplyService(ServiceSpec),
    /// Only the replica count changes, whatever else changed meanwhile.
    /// Precondition: the service exists. Written only once every member
    /// reads it (`READS` >= 1, see `api::levels`).
    ScaleService {
        name: String,
        replicas: u32,
    },
    /// Precondition: the service exists.
    DeleteService {
        name: String,
    },
    /// Sets how addresses are handed out, once; existing nodes get subnets.
    /// Precondition: no network is set, or the same one.
    InitNetwork(NetworkConfig),
    /// A node joins, or rejoins with its id: name, address, labels and
    /// capacity are replaced, status becomes ready, availability and subnet
    /// are kept; a new node gets the lowest free subnet. Precondition: one
    /// is free (once the network is set).
    RegisterNode(Node),
    /// A liveness transition, decided by the leader from heartbeats.
    SetNodeStatus {
        id: String,
        status: NodeStatus,
    },
    SetAvailability {
        id: String,
        availability: Availability,
    },
    /// Precondition: the node is down or drained and runs no task that
    /// should be running.
    RemoveNode {
        id: String,
    },
    /// What a node's agent says its tasks are doing. Reports about tasks
    /// that are not on that node are ignored.
    ReportTasks {
        node: String,
        reports: Vec<TaskReport>,
        /// When the server took the report (Unix ms): a changed task's `since`.
        at_ms: u64,
    },
    /// The cluster's secrets key, if it has none yet (see `crate::secrets`).
    SetSecretsKey {
        key: String,
    },
    /// A secret, its value sealed with the secrets key. Precondition: no
    /// secret of that name; the value opens with the key.
    CreateSecret {
        name: String,
        file: files::StoredFile,
    },
    /// Precondition: it exists and no service names it.
    RemoveSecret {
        name: String,
    },
    /// The same for configs, whose values are plain.
    CreateConfig {
        name: String,
        file: files::StoredFile,
    },
    RemoveConfig {
        name: String,
    },
    /// What a node's agent says its named volumes are (the whole list).
    /// Precondition: the node exists. Written only once every member reads
    /// it (`READS` >= 2).
    ReportVolumes {
        node: String,
        volumes: Vec<NodeVolume>,
    },
    /// The reconciler's decisions, applied in order. Each is checked again
    /// against the state it meets and skipped if it no longer applies (the
    /// state may have moved since the leader decided); the reconciler runs
    /// again anyway.
    Reconcile {
        changes: Vec<TaskChange>,
        /// When the leader decided (Unix ms): a changed task's `since`.
        at_ms: u64,
        /// Rollouts that paused or completed. (A field rather than a
        /// variant: a release before rollouts reads the entry and skips it.)
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rollouts: Vec<RolloutChange>,
    },
    /// The cluster's trust and its first user, written once by the
    /// bootstrap server. Precondition: none is set, or the same cluster's.
    InitTrust {
        trust: Box<Trust>,
        admin: User,
    },
    /// Autolock on with this unlock key (a new one replaces the old), or
    /// off with none. Precondition: the key now is `previous`, so of two
    /// admins changing it at once, one is told, rather than shown a key
    /// the other has already replaced.
    SetAutolock {
        key: Option<String>,
        previous: Option<String>,
    },
    /// A new secret for one role's join tokens; the old one stops working.
    RotateToken {
        role: JoinRole,
        secret: String,
    },
    /// Precondition: no user of that name exists.
    AddUser(User),
    /// Precondition: the user exists and is not the last admin.
    RemoveUser {
        name: String,
    },
    /// A new signing root (see `state::trust`). Precondition: no rotation
    /// is under way and the signing root is the one it replaces.
    RotateCa(Box<Rotation>),
    /// Drops every root but the signing one, whose digest is `root`.
    FinishRotation {
        root: String,
    },
    /// During a rotation, user `name` got a certificate of the new root.
    RenewUser {
        name: String,
        fingerprint: String,
    },
    /// User `name` holds its renewed certificate (it called with it).
    ConfirmUser {
        name: String,
        fingerprint: String,
    },
    /// `holder` (`node/<id>` or `server/<raft id>`) has a certificate from
    /// the root named `root`.
    Holds {
        holder: String,
        root: String,
    },
}

/// An agent's word on one task (part of the replicated log's commands).
pub use berth_proto::model::TaskReport;

/// One decision of the reconciler about one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskChange {
    /// A new task for a slot (its id must be unused). Boxed: a change list
    /// holds many small changes (serde writes a box as its content).
    Create(Box<Task>),
    /// Placed on a node that may take tasks.
    Assign { id: String, node: String },
    /// Stays pending; the reason is shown in `service ps`.
    Unplaced { id: String, reason: String },
    /// Should stop: desired state becomes shutdown.
    Shutdown { id: String, reason: String },
    /// Forgotten: stopped, or on a node that is gone.
    Remove { id: String },
    /// A new task of its service's current spec, placed at once when
    /// `node` is set: a `Create` and an `Assign` in about an eighth of the
    /// bytes, since the spec is the service's own (a pass that places
    /// thousands of tasks wrote 0.7 MB per thousand). Written only once
    /// every member reads it (`READS_NEW_TASKS`); before, `expand` makes the
    /// two. (Unlike them, a `New` whose id is taken changes nothing: the
    /// next pass places a pending task of that id.)
    New(NewTask),
}

/// What a new task is made of, besides its service's spec (see `TaskChange::New`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    pub service: String,
    pub slot: u32,
    pub generation: u32,
    /// The service's template version it was decided for: applied only
    /// while that is still the one (the spec it runs is then the one decided).
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// Where the scheduler placed it; none leaves it pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl NewTask {
    pub fn id(&self) -> String {
        Task::id_for(&self.service, self.slot, self.generation)
    }

    /// The task it makes, unplaced, if its service still runs the decided
    /// version's spec.
    pub fn task(&self, state: &State) -> Option<Task> {
        let service = state.services.get(&self.service)?;
        (state.template(service) == self.version).then(|| self.made_for(service))
    }

    /// The task it makes of `service`'s spec as it is (its template version
    /// checked by the caller): the one function both the reconciler, which
    /// schedules it, and `apply`, which makes it, use.
    pub fn made_for(&self, service: &Service) -> Task {
        let spec = TaskSpec::from(&service.spec);
        Task { pin: self.pin.clone(), ..Task::new(&self.service, self.slot, self.generation, self.version, spec) }
    }
}

/// The same decisions as an older release writes them: each `New` as a
/// `Create` and, if placed, an `Assign` (while some member does not read
/// `READS_NEW_TASKS`). A `New` whose service moved on is dropped, as its
/// apply would skip it.
pub fn expand(state: &State, changes: Vec<TaskChange>) -> Vec<TaskChange> {
    let mut out = Vec::with_capacity(changes.len());
    for change in changes {
        let TaskChange::New(new) = change else {
            out.push(change);
            continue;
        };
        let Some(task) = new.task(state) else { continue };
        let id = task.id.clone();
        out.push(TaskChange::Create(Box::new(task)));
        if let Some(node) = new.node {
            out.push(TaskChange::Assign { id, node });
        }
    }
    out
}

/// A rollout's new state, decided by the reconciler; applied only while
/// the service still rolls out `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutChange {
    pub service: String,
    pub version: u64,
    pub state: RolloutState,
    pub message: String,
}

/// Wall-clock time in Unix milliseconds, for the `at_ms` of commands: taken
/// at the edge when a command is made, so `apply` itself reads no clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What one Raft log entry carries: the commands of concurrent clients,
/// grouped by the leader so that one entry, one replication round and one
/// fsync serve them all. Each is applied on its own, in order, with its own
/// response, exactly as if it had its own entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal(pub Vec<Command>);

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Service {
        service: Service,
        outcome: Outcome,
    },
    Deleted,
    Node(Node),
    /// How many of a `Reconcile`'s changes applied.
    Reconciled {
        applied: usize,
    },
    /// Done, with nothing to report.
    Done,
    Rejected(Rejection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("service {0:?} not found")]
    NotFound(String),
    #[error("service {0:?} already exists")]
    AlreadyExists(String),
    #[error("invalid spec: {0}")]
    Invalid(InvalidField),
    #[error("node {0:?} not found")]
    NodeNotFound(String),
    #[error("ports: published port {port}/{protocol} is already used by service {service:?}")]
    PortTaken { port: u16, protocol: berth_proto::model::Protocol, service: String },
    #[error("ports: published port {port}/{protocol} cannot be published: {why}")]
    PortReserved { port: u16, protocol: berth_proto::model::Protocol, why: String },
    #[error("node {id:?} {why}")]
    NodeInUse { id: String, why: String },
    #[error("the cluster's network is already {0}/{1} per node; it cannot change")]
    NetworkSet(berth_proto::model::Cidr, u8),
    #[error("no free node subnet is left in the cluster CIDR {0}: remove nodes that are gone (`berthctl node rm`)")]
    NoSubnet(berth_proto::model::Cidr),
    #[error("this cluster already has id {0}; its identity cannot change")]
    TrustSet(String),
    #[error("the cluster's identity is not set up yet (the bootstrap server writes it first)")]
    NoTrust,
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} not found; `berthctl user ls` lists them")]
    UserNotFound(String),
    #[error("user {0:?} is the last admin; add another admin first")]
    LastAdmin(String),
    #[error(
        "a CA rotation is under way (or the root just changed): `berthctl cluster ca status` shows which nodes it waits for"
    )]
    RotationUnderway,
    #[error("user {0:?} holds no certificate of the CA rotation to confirm: run `berthctl cluster ca rotate` again")]
    NotRenewed(String),
    #[error("autolock changed meanwhile (another admin?): run the command again")]
    AutolockChanged,
    #[error("{kind} {name:?} already exists; a {kind} never changes: create one under a new name and update the services that use it")]
    FileExists { kind: String, name: String },
    #[error("{kind} {name:?} not found; `berthctl {kind} ls` lists them")]
    FileNotFound { kind: String, name: String },
    #[error("{kind} {name:?} is in use by service(s) {}; update or remove them first", users.join(", "))]
    FileInUse { kind: String, name: String, users: Vec<String> },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        })
    }
}
