//! A service's mode and placement as people write them: `--mode global`,
//! `--placement-pref spread=node.labels.KEY`, `--replicas-max-per-node N`
//! and `--no-rebalance` (as `docker service create` spells the first
//! three), or a spec file's `mode`, `spread`, `max_replicas_per_node` and
//! `rebalance`. The server checks the values and names what it rejects.

use anyhow::{bail, Result};
use berth_proto::pb::cluster as pb;
use serde_yaml_ng::Value;

/// `service create`'s placement flags.
#[derive(Debug, Default, clap::Args)]
pub struct PlacementFlags {
    /// replicated (default: --replicas tasks) or global (one task on every
    /// ready, active node that meets the constraints)
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// spread=node.labels.KEY: spread replicas evenly over the label's values (repeatable, first first)
    #[arg(long = "placement-pref", value_name = "PREF")]
    placement_pref: Vec<String>,
    /// The most replicas one node may run (default: no cap)
    #[arg(long = "replicas-max-per-node", value_name = "N")]
    max_per_node: Option<u32>,
    /// Leave replicas where they are when a node comes back (by default
    /// the leader moves them back, one at a time, to even out the spread)
    #[arg(long)]
    no_rebalance: bool,
}

impl PlacementFlags {
    pub fn is_global(&self) -> bool {
        self.mode.as_deref() == Some("global")
    }

    pub fn to_pb(&self) -> Result<(String, Option<pb::Placement>)> {
        let spread = self
            .placement_pref
            .iter()
            .map(|p| match p.split_once('=') {
                Some(("spread", key)) => Ok(key.to_owned()),
                _ => bail!("--placement-pref: {p:?} is not valid: expected spread=node.labels.KEY"),
            })
            .collect::<Result<Vec<_>>>()?;
        let placement = pb::Placement {
            spread,
            max_replicas_per_node: self.max_per_node,
            rebalance: self.no_rebalance.then_some(false),
        };
        let mode = self.mode.clone().unwrap_or_default();
        Ok((mode, (placement != pb::Placement::default()).then_some(placement)))
    }
}

/// A spec file's `spread` (one key or a list), `max_replicas_per_node`
/// and `rebalance`.
pub fn from_file(spread: Option<Value>, max_per_node: Option<u32>, rebalance: Option<bool>) -> Result<pb::Placement> {
    let spread = match spread {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Sequence(list)) => list
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                other => bail!("spread[{i}]: expected node.labels.KEY, got {other:?}"),
            })
            .collect::<Result<_>>()?,
        Some(other) => bail!("spread: expected node.labels.KEY or a list of them, got {other:?}"),
    };
    Ok(pb::Placement { spread, max_replicas_per_node: max_per_node, rebalance })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_file_keys_become_the_wire_placement() {
        let flags = PlacementFlags {
            mode: Some("global".into()),
            placement_pref: vec!["spread=node.labels.zone".into()],
            max_per_node: Some(2),
            no_rebalance: true,
        };
        let (mode, placement) = flags.to_pb().unwrap();
        assert_eq!(mode, "global");
        let want = pb::Placement {
            spread: vec!["node.labels.zone".into()],
            max_replicas_per_node: Some(2),
            rebalance: Some(false),
        };
        assert_eq!(placement, Some(want.clone()));
        assert_eq!(PlacementFlags::default().to_pb().unwrap(), (String::new(), None));
        let bad = PlacementFlags { placement_pref: vec!["pack=node.labels.zone".into()], ..Default::default() };
        assert!(bad.to_pb().unwrap_err().to_string().contains("spread=node.labels.KEY"));

        let file = from_file(Some(Value::String("node.labels.zone".into())), Some(2), Some(false)).unwrap();
        assert_eq!(file, want);
        assert!(from_file(Some(Value::Bool(true)), None, None).is_err());
    }
}
