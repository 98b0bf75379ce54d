//! Where a service's tasks go, past its constraints: how many there are
//! (a replica count, or one on every eligible node, as Swarm's global mode
//! and Nomad's system jobs), how they spread over a node label's values,
//! how many one node may carry, and whether the leader moves replicas back
//! once a lost node returns.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::constraint::valid_word;
use super::InvalidField;
use crate::pb::cluster as pb;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `replicas` tasks, wherever they fit.
    #[default]
    Replicated,
    /// One task on every node that is ready, active and meets the
    /// constraints; the count follows nodes as they join, drain and leave.
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Node label keys whose values the replicas spread evenly over, the
    /// first one first (Swarm's `--placement-pref spread=node.labels.KEY`;
    /// nodes without the label count as one more value).
    #[serde(default)]
    pub spread: Vec<String>,
    /// The most replicas of the service one node may run; none: no cap.
    #[serde(default)]
    pub max_per_node: Option<u32>,
    /// Whether the leader moves replicas, one at a time and start-first,
    /// when their spread is worse than the nodes allow (after a node came
    /// back or joined).
    #[serde(default = "yes")]
    pub rebalance: bool,
}

fn yes() -> bool {
    true
}

impl Default for Placement {
    fn default() -> Self {
        Self { spread: Vec::new(), max_per_node: None, rebalance: true }
    }
}

/// Spread preferences a spec may list.
pub const MAX_SPREAD: usize = 8;

const LABEL_PREFIX: &str = "node.labels.";

impl Mode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "replicated" => Some(Self::Replicated),
            "global" => Some(Self::Global),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Replicated => "replicated",
            Self::Global => "global",
        })
    }
}

impl Placement {
    /// Checks it for a service of this mode; the first wrong field is named.
    pub fn validate(&self, mode: Mode) -> Result<(), InvalidField> {
        if self.spread.len() > MAX_SPREAD {
            return Err(InvalidField::new(
                "placement.spread",
                format!("{} preferences", self.spread.len()),
                format!("at most {MAX_SPREAD}"),
            ));
        }
        if let Some((i, key)) = self.spread.iter().enumerate().find(|(_, k)| !valid_word(k)) {
            return Err(InvalidField::new(
                format!("placement.spread[{i}]"),
                format!("{LABEL_PREFIX}{key}"),
                "node.labels.KEY, KEY a node label's name",
            ));
        }
        if self.max_per_node == Some(0) {
            return Err(InvalidField::new(
                "placement.max_replicas_per_node",
                0,
                "at least 1 (leave it out for no cap)",
            ));
        }
        if mode == Mode::Global {
            let only = "not set: a global service runs one task per node";
            if !self.spread.is_empty() {
                return Err(InvalidField::new("placement.spread", self.spread.join(","), only));
            }
            if let Some(n) = self.max_per_node {
                return Err(InvalidField::new("placement.max_replicas_per_node", n, only));
            }
        }
        Ok(())
    }

    /// From the wire; spread keys come as `node.labels.KEY`.
    pub fn from_pb(w: Option<pb::Placement>) -> Result<Self, InvalidField> {
        let Some(w) = w else { return Ok(Self::default()) };
        let spread = w
            .spread
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.strip_prefix(LABEL_PREFIX).map(str::to_owned).ok_or_else(|| {
                    InvalidField::new(format!("placement.spread[{i}]"), s, "node.labels.KEY, KEY a node label's name")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { spread, max_per_node: w.max_replicas_per_node, rebalance: w.rebalance.unwrap_or(true) })
    }

    pub fn to_pb(&self) -> pb::Placement {
        pb::Placement {
            spread: self.spread.iter().map(|k| format!("{LABEL_PREFIX}{k}")).collect(),
            max_replicas_per_node: self.max_per_node,
            rebalance: Some(self.rebalance),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(p: Placement, mode: Mode) -> String {
        p.validate(mode).expect_err("invalid").field
    }

    #[test]
    fn wire_round_trip_and_defaults() {
        let p = Placement { spread: vec!["zone".into(), "rack".into()], max_per_node: Some(2), rebalance: false };
        assert_eq!(Placement::from_pb(Some(p.to_pb())), Ok(p));
        // Unset: no preference, no cap, rebalanced (as before the field).
        assert_eq!(Placement::from_pb(None), Ok(Placement::default()));
        assert_eq!(Placement::from_pb(Some(pb::Placement::default())), Ok(Placement::default()));
        assert!(Placement::default().rebalance);
        let e = Placement::from_pb(Some(pb::Placement { spread: vec!["zone".into()], ..Default::default() }));
        assert_eq!(e.unwrap_err().field, "placement.spread[0]");
        let old: Placement = serde_json::from_str("{}").unwrap();
        assert_eq!(old, Placement::default());
    }

    #[test]
    fn bad_values_are_named() {
        let p = |spread: &[&str], max| Placement {
            spread: spread.iter().map(|s| s.to_string()).collect(),
            max_per_node: max,
            rebalance: true,
        };
        assert_eq!(p(&["zone"], Some(3)).validate(Mode::Replicated), Ok(()));
        assert_eq!(field(p(&["a b"], None), Mode::Replicated), "placement.spread[0]");
        assert_eq!(field(p(&[""; 9], None), Mode::Replicated), "placement.spread");
        assert_eq!(field(p(&[], Some(0)), Mode::Replicated), "placement.max_replicas_per_node");
        assert_eq!(field(p(&["zone"], None), Mode::Global), "placement.spread");
        assert_eq!(field(p(&[], Some(1)), Mode::Global), "placement.max_replicas_per_node");
        assert_eq!(Mode::parse("global"), Some(Mode::Global));
        assert_eq!(Mode::parse(""), Some(Mode::Replicated));
        assert_eq!(Mode::parse("daemonset"), None);
    }
}
