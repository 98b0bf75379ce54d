//! Helpers the unit tests share: a minimal service spec and a ready node.

use berth_proto::model::{Availability, Mode, Node, NodeStatus, Resources, RestartPolicy, ServiceSpec, UpdateConfig};

/// A replicated busybox service with nothing else set.
pub fn spec(name: &str, replicas: u32) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        image: "busybox".into(),
        command: vec![],
        env: Default::default(),
        replicas,
        resources: Default::default(),
        ports: vec![],
        restart: RestartPolicy::Always,
        constraints: vec![],
        pids_limit: None,
        seccomp: Default::default(),
        userns: Default::default(),
        overrides: Default::default(),
        update_config: UpdateConfig::UPDATE,
        rollback_config: UpdateConfig::ROLLBACK,
        mode: Mode::Replicated,
        placement: Default::default(),
    }
}

/// A ready, active node with 4 CPUs and 8 GiB, no subnet and no overlay.
pub fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        name: id.into(),
        address: String::new(),
        labels: Default::default(),
        capacity: Resources { cpu_millis: 4000, memory_bytes: 8 << 30 },
        status: NodeStatus::Ready,
        availability: Availability::Active,
        subnet: None,
        overlay: None,
        reads: berth_proto::model::AGENT_READS,
    }
}
