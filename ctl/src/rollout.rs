//! Rollouts as people drive them: `--update-*` and `--rollback-*` flags
//! (as `docker service create` spells them) and a spec file's
//! `update_config` and `rollback_config`, into the wire's `UpdateConfig`;
//! and the wait after a change, which prints a line per task as it moves
//! until the service has converged, and fails when its rollout paused or
//! was rolled back.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_proto::model::{Desired, Mode, NodeInfo, RestartPolicy, RolloutState, Service, TaskInfo, TaskState};
use berth_proto::pb::cluster as pb;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::client::Client;
use crate::health::duration_value;
use crate::spec::duration_ms;

/// `--update-*` and `--rollback-*`.
#[derive(Debug, Default, clap::Args)]
pub struct RolloutFlags {
    /// Tasks replaced at once; 0 for all (default 1)
    #[arg(long, value_name = "N")]
    update_parallelism: Option<u32>,
    /// Rest between batches, e.g. 10s (default 0s)
    #[arg(long, value_name = "DURATION")]
    update_delay: Option<String>,
    /// start-first (default: the new task serves before the old stops) or stop-first
    #[arg(long, value_name = "ORDER")]
    update_order: Option<String>,
    /// When new tasks fail: rollback (default), pause or continue
    #[arg(long, value_name = "ACTION")]
    update_failure_action: Option<String>,
    /// How long a new task must run (and stay healthy) to count as done (default 5s)
    #[arg(long, value_name = "DURATION")]
    update_monitor: Option<String>,
    /// The share of replicas whose new tasks may fail, 0 to 1 (default 0)
    #[arg(long, value_name = "RATIO")]
    update_max_failure_ratio: Option<f64>,
    /// As --update-parallelism, for rollbacks
    #[arg(long, value_name = "N")]
    rollback_parallelism: Option<u32>,
    /// As --update-delay, for rollbacks
    #[arg(long, value_name = "DURATION")]
    rollback_delay: Option<String>,
    /// As --update-order, for rollbacks
    #[arg(long, value_name = "ORDER")]
    rollback_order: Option<String>,
    /// When a rollback's tasks fail: pause (default) or continue
    #[arg(long, value_name = "ACTION")]
    rollback_failure_action: Option<String>,
    /// As --update-monitor, for rollbacks
    #[arg(long, value_name = "DURATION")]
    rollback_monitor: Option<String>,
    /// As --update-max-failure-ratio, for rollbacks
    #[arg(long, value_name = "RATIO")]
    rollback_max_failure_ratio: Option<f64>,
}

impl RolloutFlags {
    /// The update and rollback configs: these flags over `update` and
    /// `rollback` (a service's own, or none for the defaults).
    pub fn over(
        &self,
        update: Option<pb::UpdateConfig>,
        rollback: Option<pb::UpdateConfig>,
    ) -> Result<(Option<pb::UpdateConfig>, Option<pb::UpdateConfig>)> {
        let ms = |flag: &str, d: &Option<String>| d.as_deref().map(duration_ms).transpose().context(flag.to_owned());
        let update = set(
            update,
            pb::UpdateConfig {
                parallelism: self.update_parallelism,
                delay_ms: ms("--update-delay", &self.update_delay)?,
                order: self.update_order.clone().unwrap_or_default(),
                failure_action: self.update_failure_action.clone().unwrap_or_default(),
                monitor_ms: ms("--update-monitor", &self.update_monitor)?,
                max_failure_ratio: self.update_max_failure_ratio,
            },
        );
        let rollback = set(
            rollback,
            pb::UpdateConfig {
                parallelism: self.rollback_parallelism,
                delay_ms: ms("--rollback-delay", &self.rollback_delay)?,
                order: self.rollback_order.clone().unwrap_or_default(),
                failure_action: self.rollback_failure_action.clone().unwrap_or_default(),
                monitor_ms: ms("--rollback-monitor", &self.rollback_monitor)?,
                max_failure_ratio: self.rollback_max_failure_ratio,
            },
        );
        Ok((update, rollback))
    }
}

/// `given`'s fields over `base`'s; None when neither says anything.
fn set(base: Option<pb::UpdateConfig>, given: pb::UpdateConfig) -> Option<pb::UpdateConfig> {
    if given == pb::UpdateConfig::default() {
        return base;
    }
    let base = base.unwrap_or_default();
    let text = |g: String, b: String| if g.is_empty() { b } else { g };
    Some(pb::UpdateConfig {
        parallelism: given.parallelism.or(base.parallelism),
        delay_ms: given.delay_ms.or(base.delay_ms),
        order: text(given.order, base.order),
        failure_action: text(given.failure_action, base.failure_action),
        monitor_ms: given.monitor_ms.or(base.monitor_ms),
        max_failure_ratio: given.max_failure_ratio.or(base.max_failure_ratio),
    })
}

/// A spec file's `update_config` or `rollback_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfigFile {
    #[serde(default)]
    parallelism: Option<u32>,
    /// `10s`, `1m30s`, `500ms`, or a number of seconds.
    #[serde(default)]
    delay: Option<Value>,
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    failure_action: Option<String>,
    #[serde(default)]
    monitor: Option<Value>,
    #[serde(default)]
    max_failure_ratio: Option<f64>,
}

impl UpdateConfigFile {
    pub fn into_wire(self, key: &str) -> Result<pb::UpdateConfig> {
        Ok(pb::UpdateConfig {
            parallelism: self.parallelism,
            delay_ms: duration_value(self.delay).with_context(|| format!("{key}.delay"))?,
            order: self.order.unwrap_or_default(),
            failure_action: self.failure_action.unwrap_or_default(),
            monitor_ms: duration_value(self.monitor).with_context(|| format!("{key}.monitor"))?,
            max_failure_ratio: self.max_failure_ratio,
        })
    }
}

/// What a wait is for: the rollout of `version`, or a rollback by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Update { version: u64 },
    Rollback { version: u64 },
}

/// How the service stands, for one poll of the wait.
#[derive(Debug, PartialEq, Eq)]
enum Standing {
    Moving,
    Done(String),
    Failed(String),
}

/// Whether `service` has converged towards `goal`: done once nothing is
/// being replaced and every replica serves; failed when the rollout paused,
/// or (for an update) was rolled back.
/// A global service wants a task on each of its `eligible` nodes.
fn standing(service: &Service, tasks: &[TaskInfo], goal: Goal, eligible: usize) -> Standing {
    let (Goal::Update { version } | Goal::Rollback { version }) = goal;
    let wanted: Vec<&TaskInfo> = tasks.iter().filter(|t| t.task.desired == Desired::Running).collect();
    let serving = wanted.iter().filter(|t| t.task.serving()).count();
    let replicas = match service.spec.mode {
        Mode::Replicated => service.spec.replicas as usize,
        Mode::Global => eligible,
    };
    let rollout = service.rollout.as_ref().filter(|r| r.version >= version);
    let why =
        |r: &berth_proto::model::Rollout| if r.message.is_empty() { String::new() } else { format!(": {}", r.message) };
    if let Some(r) = rollout {
        match (goal, r.state) {
            (_, RolloutState::Paused | RolloutState::RollbackPaused) => {
                return Standing::Failed(format!("the rollout of version {} paused{}", r.version, why(r)));
            }
            // Rolled back by the cluster (to a newer version than ours); an
            // update that only went back to the previous spec is done when
            // it is.
            (Goal::Update { version }, RolloutState::RolledBack) if r.version > version => {
                return Standing::Failed(format!("rolled back{}", why(r)))
            }
            (_, s) if s.moving() => return Standing::Moving,
            _ => {}
        }
    }
    // No rollout (a new service, a scale): a task that could not run (its
    // image, command, resources) or ended for good fails the wait, as it
    // would fail a rollout; a crashing one is restarted.
    if rollout.is_none() {
        // An earlier rollout still moving (a scale right after an update
        // that did not wait) is waited for too.
        if service.rollout.as_ref().is_some_and(|r| r.state.moving()) {
            return Standing::Moving;
        }
        if let Some(why) = wanted.iter().find_map(|t| ended(t, service)?.err()) {
            return Standing::Failed(why);
        }
    }
    // Tasks that ran to completion count with those that serve.
    let serving = serving + wanted.iter().filter(|t| ended(t, service) == Some(Ok(()))).count();
    // Completed (some failures borne, maybe), or every replica serves.
    let finished = rollout.is_some_and(|r| matches!(r.state, RolloutState::Completed | RolloutState::RolledBack));
    if finished || serving == replicas && wanted.len() == replicas {
        Standing::Done(format!(
            "{} converged: {serving}/{replicas} replicas serve version {}",
            service.spec.name, service.version
        ))
    } else {
        Standing::Moving
    }
}

/// How a task meant to run stands for the wait, when it will not serve
/// without a change: done (it exited 0 and is not to run again) or failed.
fn ended(t: &TaskInfo, service: &Service) -> Option<Result<(), String>> {
    let t = &t.task;
    let success = t.exit_code == Some(0);
    let again = match service.spec.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !success,
        RestartPolicy::Never => false,
    };
    let given_up = service.spec.overrides.options.restart_max_attempts.is_some_and(|n| t.restarts >= n);
    match t.state {
        TaskState::Failed => Some(Err(format!("task {} failed: {}", t.id, t.message))),
        TaskState::Exited if !again && success => Some(Ok(())),
        TaskState::Exited if !again || given_up => Some(Err(format!(
            "task {} exited with {} and is not restarted (restart {}{})",
            t.id,
            t.exit_code.unwrap_or(-1),
            service.spec.restart,
            if given_up { format!(", gave up after {} restarts", t.restarts) } else { String::new() }
        ))),
        _ => None,
    }
}

/// A task as the wait prints it: `web.2.3  running (healthy)  node-1`.
fn line(t: &TaskInfo) -> String {
    let state = match t.task.health {
        Some(h) => format!("{} ({h})", t.task.state),
        None => t.task.state.to_string(),
    };
    let node = t.node_name.as_deref().unwrap_or("-");
    let message = if t.task.message.is_empty() { String::new() } else { format!("  {}", t.task.message) };
    format!("{:<16} {:<20} {node}{message}", t.task.id, state)
}

/// The nodes a global service runs on: ready, active, within its constraints.
async fn eligible_nodes(client: &Client, service: &Service) -> Result<usize> {
    let reply =
        client.call("list nodes", async |mut c| c.list_nodes(pb::ListNodesRequest { stale: false }).await).await?;
    let mut n = 0;
    for node in reply.nodes {
        let node = NodeInfo::try_from(node).context("the server sent an invalid node")?.node;
        n += usize::from(
            node.schedulable() && service.spec.constraints.iter().all(|c| c.allows(&node.name, &node.labels)),
        );
    }
    Ok(n)
}

/// Polls `name` until it has converged towards `goal` (Ok, with a last
/// line) or its rollout failed (Err), printing each task as it moves.
pub async fn wait(client: &Client, name: &str, goal: Goal) -> Result<String> {
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let req = pb::GetServiceRequest { name: name.to_owned(), stale: false };
        let reply = client.call("inspect service", async |mut c| c.get_service(req.clone()).await).await?;
        let service = crate::to_model(reply.service)?;
        let tasks = crate::list_tasks(client, name, false).await?;
        let eligible = match service.spec.mode {
            Mode::Global => eligible_nodes(client, &service).await?,
            Mode::Replicated => 0,
        };
        for t in &tasks {
            let now = line(t);
            if shown.get(&t.task.id) != Some(&now) {
                println!("{now}");
                shown.insert(t.task.id.clone(), now);
            }
        }
        match standing(&service, &tasks, goal, eligible) {
            Standing::Moving => tokio::time::sleep(Duration::from_millis(200)).await,
            Standing::Done(said) => return Ok(format!("{said}\n")),
            Standing::Failed(why) => bail!("service {name}: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::model::{HealthState, Rollout, ServiceSpec, Task, TaskState};

    fn service(version: u64, rollout: Option<(RolloutState, u64)>) -> Service {
        let spec = ServiceSpec {
            name: "web".into(),
            image: "registry:5000/web:2".into(),
            command: vec![],
            env: Default::default(),
            replicas: 2,
            resources: Default::default(),
            ports: vec![],
            restart: Default::default(),
            constraints: vec![],
            pids_limit: None,
            seccomp: Default::default(),
            userns: Default::default(),
            overrides: Default::default(),
            update_config: Default::default(),
            rollback_config: berth_proto::model::UpdateConfig::ROLLBACK,
            mode: Default::default(),
            placement: Default::default(),
        };
        let rollout = rollout.map(|(state, version)| Rollout { state, version, message: "web.1.2 failed".into() });
        Service { spec, version, previous: None, rollout }
    }

    fn task(slot: u32, health: Option<HealthState>) -> TaskInfo {
        let mut t = Task::new("web", slot, 2, 2, Default::default());
        t.state = TaskState::Running;
        t.health = health;
        TaskInfo { task: t, node_name: Some("n1".into()) }
    }

    #[test]
    fn converged_only_when_nothing_moves_and_every_replica_serves() {
        let both = [task(1, None), task(2, Some(HealthState::Healthy))];
        let goal = Goal::Update { version: 2 };
        assert_eq!(standing(&service(2, Some((RolloutState::Updating, 2))), &both, goal, 0), Standing::Moving);
        let done = standing(&service(2, Some((RolloutState::Completed, 2))), &both, goal, 0);
        assert_eq!(done, Standing::Done("web converged: 2/2 replicas serve version 2".into()));
        // A change without a rollout (replicas) waits for every replica to serve.
        let starting = [task(1, None), task(2, Some(HealthState::Starting))];
        assert_eq!(
            standing(&service(3, Some((RolloutState::Completed, 2))), &starting, Goal::Update { version: 3 }, 0),
            Standing::Moving
        );
        // A completed rollout is done, failures it bore and all.
        let done = standing(&service(2, Some((RolloutState::Completed, 2))), &starting, goal, 0);
        assert_eq!(done, Standing::Done("web converged: 1/2 replicas serve version 2".into()));
        assert_eq!(
            standing(&service(3, None), &both, Goal::Update { version: 3 }, 0),
            standing(&service(3, None), &both, goal, 0)
        );
    }

    #[test]
    fn a_paused_or_rolled_back_rollout_fails_the_wait() {
        let both = [task(1, None), task(2, None)];
        let goal = Goal::Update { version: 2 };
        let paused = standing(&service(2, Some((RolloutState::Paused, 2))), &both, goal, 0);
        assert_eq!(paused, Standing::Failed("the rollout of version 2 paused: web.1.2 failed".into()));
        // Rolled back to version 3 (the previous spec again): moving, then failed.
        assert_eq!(standing(&service(3, Some((RolloutState::RollingBack, 3))), &both, goal, 0), Standing::Moving);
        let back = standing(&service(3, Some((RolloutState::RolledBack, 3))), &both, goal, 0);
        assert_eq!(back, Standing::Failed("rolled back: web.1.2 failed".into()));
        // A rollback asked for is done when rolled back.
        let asked = standing(&service(3, Some((RolloutState::RolledBack, 3))), &both, Goal::Rollback { version: 3 }, 0);
        assert!(matches!(asked, Standing::Done(_)));
        // An update that went back to the previous spec by itself is done.
        let same = standing(&service(3, Some((RolloutState::RolledBack, 3))), &both, Goal::Update { version: 3 }, 0);
        assert!(matches!(same, Standing::Done(_)), "{same:?}");
    }

    #[test]
    fn a_new_service_fails_the_wait_when_a_task_cannot_run_and_a_global_one_counts_its_slots() {
        // Created (version 1, no rollout): a failed task ends the wait.
        let mut failed = task(2, None);
        (failed.task.version, failed.task.state) = (1, TaskState::Failed);
        failed.task.message = "pulling r:5000/web:9: manifest unknown".into();
        let mut new = service(1, None);
        new.spec.replicas = 2;
        let mut running = task(1, None);
        running.task.version = 1;
        let got = standing(&new, &[running.clone(), failed], Goal::Update { version: 1 }, 0);
        assert_eq!(got, Standing::Failed("task web.2.2 failed: pulling r:5000/web:9: manifest unknown".into()));
        // A task that exited and is not restarted (restart never) ends it
        // too: as done when it succeeded, as failed when it did not.
        let mut done = task(1, None);
        (done.task.version, done.task.state, done.task.exit_code) = (1, TaskState::Exited, Some(0));
        new.spec.restart = RestartPolicy::Never;
        new.spec.replicas = 1;
        let got = standing(&new, &[done.clone()], Goal::Update { version: 1 }, 0);
        assert_eq!(got, Standing::Done("web converged: 1/1 replicas serve version 1".into()));
        done.task.exit_code = Some(3);
        let got = standing(&new, &[done.clone()], Goal::Update { version: 1 }, 0);
        assert_eq!(got, Standing::Failed("task web.1.2 exited with 3 and is not restarted (restart never)".into()));
        // One restarted until its node gave up, likewise.
        new.spec.restart = RestartPolicy::Always;
        new.spec.overrides.options.restart_max_attempts = Some(2);
        done.task.restarts = 2;
        let got = standing(&new, &[done], Goal::Update { version: 1 }, 0);
        assert_eq!(
            got,
            Standing::Failed(
                "task web.1.2 exited with 3 and is not restarted (restart always, gave up after 2 restarts)".into()
            )
        );
        // A global service wants a task on every eligible node: not done
        // before the leader has made them.
        new.spec.mode = Mode::Global;
        new.spec.replicas = 0;
        let three: Vec<TaskInfo> = (1..=3)
            .map(|slot| TaskInfo { task: Task { version: 1, ..task(slot, None).task }, ..running.clone() })
            .collect();
        assert_eq!(standing(&new, &[], Goal::Update { version: 1 }, 3), Standing::Moving);
        assert_eq!(standing(&new, &three[..2], Goal::Update { version: 1 }, 3), Standing::Moving);
        assert_eq!(
            standing(&new, &three, Goal::Update { version: 1 }, 3),
            Standing::Done("web converged: 3/3 replicas serve version 1".into())
        );
    }

    #[test]
    fn flags_lie_over_the_services_configs() {
        let flags = RolloutFlags {
            update_parallelism: Some(2),
            update_delay: Some("1s".into()),
            rollback_failure_action: Some("continue".into()),
            ..Default::default()
        };
        let base = pb::UpdateConfig { order: "stop-first".into(), parallelism: Some(5), ..Default::default() };
        let (update, rollback) = flags.over(Some(base), None).unwrap();
        let update = update.unwrap();
        assert_eq!((update.parallelism, update.delay_ms, update.order.as_str()), (Some(2), Some(1000), "stop-first"));
        assert_eq!(rollback.unwrap().failure_action, "continue");
        assert_eq!(RolloutFlags::default().over(None, None).unwrap(), (None, None), "nothing given, nothing set");
        let bad = RolloutFlags { update_monitor: Some("soon".into()), ..Default::default() };
        assert!(format!("{:#}", bad.over(None, None).unwrap_err()).contains("--update-monitor"));
    }
}
