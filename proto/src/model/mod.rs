//! The domain model: plain, validated data shared by the server, the agent
//! and the command line. Nothing here knows about protobuf or Raft.

mod assignment;
mod constraint;
mod depends;
mod files;
mod health;
mod invalid;
mod mounts;
mod network;
mod node;
mod options;
mod overrides;
mod placement;
mod quantity;
mod reference;
mod rollout;
mod security;
mod service;
mod task;

pub use assignment::{AssignedTask, Assignment, NodeNetwork, Peer, Removed, Replica, ServiceEndpoints, TaskReport};
pub use constraint::{Constraint, ConstraintKey};
pub use depends::{Condition, Dependency, MAX_DEPENDENCIES};
pub use files::{check_file, file_name_ok, FileInfo, FileKind, FileRef, Files, MAX_FILE_BYTES, MAX_FILE_REFS};
pub use health::{Check, Health, HealthState, Probe};
pub use invalid::InvalidField;
pub use mounts::{volume_name_ok, Mount, MountKind, NodeVolume, VolumeInfo, MAX_NODE_VOLUMES, SLOT};
pub use network::{Cidr, NetworkConfig, PortRange, MAX_NODE_PREFIX};
pub use node::{Availability, Node, NodeInfo, NodeStatus, Overlay, AGENT_READS};
pub use options::{Options, Pull, Tmpfs, Ulimit, ULIMITS};
pub use overrides::{capability_name, signal_name, Overrides, CAPABILITIES, SIGNALS};
pub use placement::{Mode, Placement, MAX_SPREAD};
pub use quantity::{format_memory, parse_cpus, parse_memory};
pub use reference::validate_image;
pub use rollout::{FailureAction, Order, Rollout, RolloutState, UpdateConfig};
pub use security::{Seccomp, Userns};
pub use service::{
    stack_of, validate_name, validate_service_name, PortSpec, Protocol, Resources, RestartPolicy, Service, ServiceSpec,
    MAX_REPLICAS,
};
pub use task::{Desired, Endpoint, Task, TaskInfo, TaskSpec, TaskState};
