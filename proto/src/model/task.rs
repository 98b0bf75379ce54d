//! Tasks: one replica slot of a service, bound to a spec version and, once
//! placed, to a node. The leader decides what a task should be doing
//! (`desired`); the node's agent reports what it is doing (`state`).
//!
//! A slot keeps its number for the life of the service; when its task is
//! replaced (node lost, drained, spec changed) the new task takes the next
//! generation: `web.2.1` is replaced by `web.2.2`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{HealthState, Overrides, Resources, RestartPolicy, Seccomp, ServiceSpec, Userns};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// `SERVICE.SLOT.GENERATION`.
    pub id: String,
    pub service: String,
    /// 1-based, like Swarm's `web.1`.
    pub slot: u32,
    pub generation: u32,
    /// The service spec version this task runs.
    pub version: u64,
    /// What it runs and asks of its node, fixed when it is made.
    pub spec: TaskSpec,
    /// The node's id once placed.
    pub node: Option<String>,
    pub desired: Desired,
    pub state: TaskState,
    /// Why it is pending, or the last error, for people.
    pub message: String,
    pub exit_code: Option<i32>,
    pub restarts: u32,
    /// When `state` last changed (or the container restarted), in Unix
    /// milliseconds by the leader's clock.
    pub since_ms: u64,
    /// Its container's address, from its node's subnet, given when it is
    /// placed and free again once the task is forgotten.
    pub address: Option<Ipv4Addr>,
    /// What its probes say while it runs with a health check.
    #[serde(default)]
    pub health: Option<HealthState>,
    /// The node a global service's task is for: it runs there or nowhere.
    #[serde(default)]
    pub pin: Option<String>,
}

/// What a task runs: its service's spec as it was when the task was made.
/// During a rolling update the old tasks keep running, and restarting as,
/// the old spec until their successors replace them; a task keeps its
/// share of its node even after the service asks for more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub restart: RestartPolicy,
    #[serde(default)]
    pub pids_limit: Option<u64>,
    #[serde(default)]
    pub seccomp: Seccomp,
    #[serde(default)]
    pub userns: Userns,
    #[serde(default)]
    pub overrides: Box<Overrides>,
}

impl From<&ServiceSpec> for TaskSpec {
    fn from(s: &ServiceSpec) -> Self {
        Self {
            image: s.image.clone(),
            command: s.command.clone(),
            env: s.env.clone(),
            resources: s.resources,
            restart: s.restart,
            pids_limit: s.pids_limit,
            seccomp: s.seccomp.clone(),
            userns: s.userns,
            overrides: s.overrides.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Shutdown,
}

/// What the task is doing, as last known to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Not placed yet.
    Pending,
    /// Placed; its agent has not reported it running yet.
    Assigned,
    Running,
    /// Its container exited; the agent may restart it.
    Exited,
    /// Could not run (image, command, resources); see the message.
    Failed,
    /// Stopped on purpose.
    Shutdown,
}

/// A task with the name of its node, as `service ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub task: Task,
    pub node_name: Option<String>,
}

/// A replica that answers for its service now (`Task::serving_address`),
/// as `service inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub task: String,
    pub slot: u32,
    pub address: Ipv4Addr,
    pub node_name: Option<String>,
}

impl Desired {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Self::Running),
            "shutdown" => Some(Self::Shutdown),
            _ => None,
        }
    }
}

impl TaskState {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "assigned" => Self::Assigned,
            "running" => Self::Running,
            "exited" => Self::Exited,
            "failed" => Self::Failed,
            "shutdown" => Self::Shutdown,
            _ => return None,
        })
    }
}

impl Task {
    pub fn id_for(service: &str, slot: u32, generation: u32) -> String {
        format!("{service}.{slot}.{generation}")
    }

    /// The slot a task id (`SERVICE.SLOT.GENERATION`) names.
    pub fn slot_of(id: &str) -> Option<u32> {
        id.rsplit('.').nth(1)?.parse().ok()
    }

    /// A new task for a slot, not placed yet.
    pub fn new(service: &str, slot: u32, generation: u32, version: u64, spec: TaskSpec) -> Self {
        Self {
            id: Self::id_for(service, slot, generation),
            service: service.to_owned(),
            slot,
            generation,
            version,
            spec,
            node: None,
            desired: Desired::Running,
            state: TaskState::Pending,
            message: String::new(),
            exit_code: None,
            restarts: 0,
            since_ms: 0,
            address: None,
            health: None,
            pin: None,
        }
    }
}

impl Task {
    /// Its address while it answers for its service: meant to run, reported
    /// running (and healthy, if it has a health check), with an address.
    /// DNS names these and the routing mesh balances over them; a task
    /// that stopped, failed, is being replaced or is not (yet) healthy is
    /// not one.
    pub fn serving_address(&self) -> Option<Ipv4Addr> {
        (self.desired == Desired::Running && self.serving()).then_some(self.address?)
    }

    /// Whether it runs and, if it has a health check, is healthy.
    pub fn serving(&self) -> bool {
        self.state == TaskState::Running && matches!(self.health, None | Some(HealthState::Healthy))
    }

    /// Whether its node is done with it: shut down, exited or failed; for a
    /// task with an exclusive volume, shut down only (an exited or failed
    /// copy could still be restarted there, and its slot must not run twice).
    pub fn ended(&self) -> bool {
        match self.spec.overrides.options.exclusive() {
            true => self.state == TaskState::Shutdown,
            false => matches!(self.state, TaskState::Shutdown | TaskState::Exited | TaskState::Failed),
        }
    }

    /// Whether it counts against its node's capacity: placed, and either
    /// meant to run or not yet stopped.
    pub fn holds_resources(&self) -> bool {
        self.node.is_some()
            && (self.desired == Desired::Running
                || !matches!(self.state, TaskState::Shutdown | TaskState::Exited | TaskState::Failed))
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Shutdown => "shutdown",
        })
    }
}

impl fmt::Display for Desired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Shutdown => "shutdown",
        })
    }
}
