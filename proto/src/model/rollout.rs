//! Rollouts: how a service's tasks move to a new spec, as Swarm's update
//! and rollback configs say it (`parallelism`, `delay`, `order`,
//! `failure_action`, `monitor`, `max_failure_ratio`), and where a rollout
//! stands (`Rollout`). A rollout that fails (its new tasks crash, fail
//! their health check or cannot be placed) rolls back on its own unless
//! the service says otherwise.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::InvalidField;
use crate::pb::cluster as pb;

/// How tasks are replaced when the spec changes (`update_config`) or a
/// rollout is rolled back (`rollback_config`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Slots replaced at once; 0 replaces all at once.
    pub parallelism: u32,
    /// Rest after a batch's new tasks run before the next batch starts.
    pub delay_ms: u64,
    pub order: Order,
    pub failure_action: FailureAction,
    /// How long a new task must run (and stay healthy) to count as a
    /// success; failures within it count against the rollout.
    pub monitor_ms: u64,
    /// The share of the service's replicas whose new tasks may fail before
    /// `failure_action` is taken (0: the first failure).
    pub max_failure_ratio: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// The new task runs (and is healthy) before the old one stops: no
    /// moment with fewer replicas serving; needs room for both.
    #[default]
    StartFirst,
    /// The old task stops, then the new one starts (Swarm's default).
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Put the previous spec back.
    Rollback,
    /// Stop replacing tasks, and say why.
    Pause,
    /// Go on regardless.
    Continue,
}

/// Where a service's latest rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub state: RolloutState,
    /// The service version it rolls out.
    pub version: u64,
    /// Why it paused or rolled back; empty otherwise.
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Updating,
    /// Stopped by its failure action; a new spec (or a rollback) moves on.
    Paused,
    Completed,
    /// Putting the previous spec back (after a failure, or by hand).
    RollingBack,
    /// A rollback that failed in turn, stopped.
    RollbackPaused,
    RolledBack,
}

impl UpdateConfig {
    /// Swarm's defaults, but start-first and rolling back on failure.
    pub const UPDATE: Self = Self {
        parallelism: 1,
        delay_ms: 0,
        order: Order::StartFirst,
        failure_action: FailureAction::Rollback,
        monitor_ms: 5000,
        max_failure_ratio: 0.0,
    };
    /// A rollback that fails pauses: there is nothing further back to go to.
    pub const ROLLBACK: Self = Self { failure_action: FailureAction::Pause, ..Self::UPDATE };

    /// Checks each field, naming it under `field` (`update_config`).
    pub fn validate(&self, field: &str) -> Result<(), InvalidField> {
        let hour = 3_600_000;
        for (name, ms) in [("delay", self.delay_ms), ("monitor", self.monitor_ms)] {
            if ms > hour {
                return Err(InvalidField::new(format!("{field}.{name}"), format!("{ms} ms"), "at most 1 h"));
            }
        }
        if !(0.0..=1.0).contains(&self.max_failure_ratio) {
            return Err(InvalidField::new(
                format!("{field}.max_failure_ratio"),
                self.max_failure_ratio,
                "a share from 0 to 1",
            ));
        }
        if self.parallelism > super::MAX_REPLICAS {
            return Err(InvalidField::new(
                format!("{field}.parallelism"),
                self.parallelism,
                format!("at most {}", super::MAX_REPLICAS),
            ));
        }
        Ok(())
    }

    /// From the wire: a field at its zero value keeps `default`'s (so a
    /// delay or ratio of 0 is the default's 0 too).
    pub fn from_pb(w: Option<pb::UpdateConfig>, default: Self, field: &str) -> Result<Self, InvalidField> {
        let Some(w) = w else { return Ok(default) };
        let order = match w.order.as_str() {
            "" => default.order,
            "start-first" => Order::StartFirst,
            "stop-first" => Order::StopFirst,
            other => return Err(InvalidField::new(format!("{field}.order"), other, "start-first or stop-first")),
        };
        let failure_action = match w.failure_action.as_str() {
            "" => default.failure_action,
            other => FailureAction::parse(other).ok_or_else(|| {
                InvalidField::new(format!("{field}.failure_action"), other, "rollback, pause or continue")
            })?,
        };
        Ok(Self {
            parallelism: w.parallelism.unwrap_or(default.parallelism),
            delay_ms: w.delay_ms.unwrap_or(default.delay_ms),
            order,
            failure_action,
            monitor_ms: w.monitor_ms.unwrap_or(default.monitor_ms),
            max_failure_ratio: w.max_failure_ratio.unwrap_or(default.max_failure_ratio),
        })
    }

    pub fn to_pb(&self) -> pb::UpdateConfig {
        pb::UpdateConfig {
            parallelism: Some(self.parallelism),
            delay_ms: Some(self.delay_ms),
            order: self.order.to_string(),
            failure_action: self.failure_action.to_string(),
            monitor_ms: Some(self.monitor_ms),
            max_failure_ratio: Some(self.max_failure_ratio),
        }
    }
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self::UPDATE
    }
}

impl FailureAction {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rollback" => Self::Rollback,
            "pause" => Self::Pause,
            "continue" => Self::Continue,
            _ => return None,
        })
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StartFirst => "start-first",
            Self::StopFirst => "stop-first",
        })
    }
}

impl fmt::Display for FailureAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rollback => "rollback",
            Self::Pause => "pause",
            Self::Continue => "continue",
        })
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Updating => "updating",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::RollingBack => "rolling_back",
            Self::RollbackPaused => "rollback_paused",
            Self::RolledBack => "rolled_back",
        })
    }
}

impl RolloutState {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "updating" => Self::Updating,
            "paused" => Self::Paused,
            "completed" => Self::Completed,
            "rolling_back" => Self::RollingBack,
            "rollback_paused" => Self::RollbackPaused,
            "rolled_back" => Self::RolledBack,
            _ => return None,
        })
    }

    /// Whether tasks are still being replaced.
    pub fn moving(self) -> bool {
        matches!(self, Self::Updating | Self::RollingBack)
    }

    pub fn rolling_back(self) -> bool {
        matches!(self, Self::RollingBack | Self::RollbackPaused | Self::RolledBack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_fields_left_out_keep_the_defaults() {
        let c = UpdateConfig::from_pb(None, UpdateConfig::UPDATE, "update_config").unwrap();
        assert_eq!(c, UpdateConfig::UPDATE);
        let w = pb::UpdateConfig { parallelism: Some(2), failure_action: "pause".into(), ..Default::default() };
        let c = UpdateConfig::from_pb(Some(w), UpdateConfig::UPDATE, "update_config").unwrap();
        assert_eq!((c.parallelism, c.failure_action, c.monitor_ms), (2, FailureAction::Pause, 5000));
        let full = UpdateConfig {
            parallelism: 0,
            delay_ms: 1500,
            order: Order::StopFirst,
            failure_action: FailureAction::Continue,
            monitor_ms: 0,
            max_failure_ratio: 0.25,
        };
        assert_eq!(UpdateConfig::from_pb(Some(full.to_pb()), UpdateConfig::ROLLBACK, "x").unwrap(), full);
    }

    #[test]
    fn bad_values_are_named() {
        let bad = |w: pb::UpdateConfig| UpdateConfig::from_pb(Some(w), UpdateConfig::UPDATE, "update_config");
        let order = bad(pb::UpdateConfig { order: "random".into(), ..Default::default() });
        assert_eq!(order.unwrap_err().field, "update_config.order");
        let action = bad(pb::UpdateConfig { failure_action: "panic".into(), ..Default::default() });
        assert_eq!(action.unwrap_err().field, "update_config.failure_action");
        let field = |c: UpdateConfig| c.validate("rollback_config").unwrap_err().field;
        assert_eq!(
            field(UpdateConfig { max_failure_ratio: 1.5, ..UpdateConfig::UPDATE }),
            "rollback_config.max_failure_ratio"
        );
        assert_eq!(field(UpdateConfig { delay_ms: 3_600_001, ..UpdateConfig::UPDATE }), "rollback_config.delay");
        assert_eq!(UpdateConfig::ROLLBACK.validate("rollback_config"), Ok(()));
    }
}
