//! Placement follows data: a task that mounts named volumes goes where
//! they already are, as the nodes' agents told (`State::volumes`). An
//! unpinned volume only draws its task (more of its volumes held, the
//! better); a pinned one, once it exists, binds it: the task runs only on
//! a node holding every pinned volume it mounts, and waits (with where
//! its data is) while that node is down, rather than start empty elsewhere.
//!
//! An exclusive volume's slot never runs twice: its next task is placed only
//! once its node reports the slot's other copy shut down, or the node is
//! down (a node whose lease lapsed has stopped it by then; see
//! `Node::lease`).

use std::collections::{BTreeSet, HashMap};

use berth_proto::model::{NodeStatus, Task};

use crate::scheduler::Data;
use crate::state::State;

/// Why `task` (one with an exclusive volume) must wait: another task of its
/// slot has not ended on a node that is up.
pub fn other_copy(state: &State, task: &Task) -> Option<String> {
    if !task.spec.overrides.options.exclusive() {
        return None;
    }
    state.tasks.values().find_map(|o| {
        let same_slot = o.service == task.service && o.slot == task.slot && o.id != task.id;
        // Only a stop its node has carried out (`Task::ended`).
        let ended = o.ended();
        let node = o.node.as_ref().and_then(|n| state.nodes.get(n)).filter(|n| n.status != NodeStatus::Down)?;
        (same_slot && !ended).then(|| {
            format!("waiting for {} to stop on {}: an exclusive volume runs in one place at a time", o.id, node.name)
        })
    })
}

/// Which nodes hold each volume, once per pass.
#[derive(Debug)]
pub struct Holders<'a> {
    state: &'a State,
    by_volume: HashMap<&'a str, Vec<&'a str>>,
}

impl<'a> Holders<'a> {
    pub fn of(state: &'a State) -> Self {
        let mut by_volume: HashMap<&str, Vec<&str>> = HashMap::new();
        for (node, volumes) in &state.volumes {
            for v in volumes {
                by_volume.entry(v.name.as_str()).or_default().push(node.as_str());
            }
        }
        Self { state, by_volume }
    }

    /// Where `task`'s volumes are.
    pub fn data(&self, task: &Task) -> Data {
        let options = &task.spec.overrides.options;
        let mounts = &options.mounts;
        // Secrets and configs are files mounted too: an agent from before
        // volumes would run the task without them.
        let needs = !mounts.is_empty() || !options.secrets.is_empty() || !options.configs.is_empty();
        let mut data = Data { mounts: needs, ..Data::default() };
        let mut pinned: Option<BTreeSet<String>> = None;
        let mut said = Vec::new();
        for m in mounts {
            let Some(name) = m.volume(task.slot) else { continue };
            let holders = self.by_volume.get(name.as_str()).map_or(&[][..], Vec::as_slice);
            for node in holders {
                *data.held.entry((*node).to_owned()).or_default() += 1;
            }
            if m.pin && !holders.is_empty() {
                let here: BTreeSet<String> = holders.iter().map(|n| (*n).to_owned()).collect();
                pinned = Some(match pinned {
                    None => here,
                    Some(before) => before.intersection(&here).cloned().collect(),
                });
                let names: Vec<&str> =
                    holders.iter().map(|n| self.state.nodes.get(*n).map_or(*n, |node| node.name.as_str())).collect();
                said.push(format!("{name} (on {})", names.join(", ")));
            }
        }
        data.pinned = pinned.map(|nodes| {
            let what = if said.len() == 1 { "volume" } else { "volumes" };
            (nodes, format!("{what} {}", said.join(", ")))
        });
        data
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{Mount, MountKind, Node, NodeVolume, TaskSpec};

    use super::*;

    fn mount(source: &str, target: &str, pin: bool) -> Mount {
        Mount {
            kind: MountKind::Volume,
            source: source.into(),
            target: target.into(),
            readonly: false,
            pin,
            exclusive: false,
        }
    }

    fn task(slot: u32, mounts: Vec<Mount>) -> Task {
        let mut spec = TaskSpec::default();
        spec.overrides.options.mounts = mounts;
        Task::new("db", slot, 1, 1, spec)
    }

    fn state(volumes: &[(&str, &[&str])]) -> State {
        let mut state = State::default();
        for (node, names) in volumes {
            let node_record: Node = serde_json::from_value(serde_json::json!({
                "id": node, "name": format!("host-{node}"), "address": "198.18.0.1:7000", "labels": {},
                "capacity": {"cpu_millis": 1000, "memory_bytes": 1}, "status": "ready", "availability": "active",
                "subnet": null, "overlay": null
            }))
            .unwrap();
            state.nodes.insert((*node).into(), node_record);
            let list = names.iter().map(|n| NodeVolume { name: (*n).into(), created_at_ms: 1 }).collect();
            state.volumes.insert((*node).into(), list);
        }
        state
    }

    #[test]
    fn volumes_draw_tasks_and_pinned_ones_bind_them() {
        let s = state(&[("n1", &["data-1", "logs"]), ("n2", &["data-2", "logs"]), ("n3", &[])]);
        let holders = Holders::of(&s);
        let slot_volume = mount("data-{{.Task.Slot}}", "/data", false);
        let d = holders.data(&task(2, vec![slot_volume.clone(), mount("logs", "/logs", false)]));
        assert!(d.mounts && d.pinned.is_none());
        assert_eq!(d.held, [("n1".into(), 1), ("n2".into(), 2)].into(), "slot 2's own volume, and the shared one");
        let d = holders.data(&task(1, vec![mount("data-{{.Task.Slot}}", "/data", true)]));
        assert_eq!(d.pinned, Some((["n1".into()].into(), "volume data-1 (on host-n1)".into())));
        // A pinned volume that exists nowhere yet binds nothing: it is made where the task goes.
        assert_eq!(holders.data(&task(3, vec![mount("data-{{.Task.Slot}}", "/data", true)])).pinned, None);
        // Two pinned volumes on different nodes leave no node.
        let d = holders.data(&task(1, vec![mount("data-1", "/a", true), mount("data-2", "/b", true)]));
        let (nodes, what) = d.pinned.unwrap();
        assert!(nodes.is_empty());
        assert_eq!(what, "volumes data-1 (on host-n1), data-2 (on host-n2)");
        // A task without mounts goes anywhere.
        assert_eq!(holders.data(&task(1, vec![])), Data::default());
    }
}
