//! Which of the node's tasks must wait before they start: those with a
//! dependency (`depends_on`) that neither runs nor, when it must be
//! healthy, serves anywhere in the cluster now, as the endpoints every
//! agent holds say. A pure function of the assignment; [`super::step`]
//! starts no container for a waiting task (first start, restart or
//! replacement) and reports it assigned with the reason. A container that
//! runs is never stopped for a dependency.

use std::collections::BTreeMap;

use berth_proto::model::{Assignment, Condition};

/// The tasks that wait, by id, each with what it waits for.
pub fn waiting(assignment: &Assignment) -> BTreeMap<String, String> {
    let up = |service: &str, condition: Condition| {
        assignment.services.iter().find(|s| s.name == service).is_some_and(|s| match condition {
            Condition::Started => s.started,
            Condition::Healthy => !s.replicas.is_empty(),
        })
    };
    assignment
        .tasks
        .values()
        .filter_map(|t| {
            let deps = &t.spec.overrides.options.depends_on;
            let waits: Vec<String> =
                deps.iter().filter(|d| !up(&d.service, d.condition)).map(|d| d.waiting()).collect();
            (!waits.is_empty()).then(|| (t.id.clone(), waits.join("; ")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{AssignedTask, Dependency, Replica, ServiceEndpoints, TaskSpec};

    use super::*;

    fn task(id: &str, deps: &[(&str, Condition)]) -> AssignedTask {
        let mut spec = TaskSpec::default();
        spec.overrides.options.depends_on =
            deps.iter().map(|(s, c)| Dependency { service: (*s).into(), condition: *c }).collect();
        AssignedTask { id: id.into(), spec, restarts: 0, address: None, files: Default::default() }
    }

    fn service(name: &str, started: bool, serving: bool) -> ServiceEndpoints {
        let replica = Replica { task: format!("{name}.1.1"), slot: 1, address: "198.19.1.2".parse().unwrap() };
        ServiceEndpoints {
            name: name.into(),
            ports: vec![],
            replicas: serving.then_some(replica).into_iter().collect(),
            started,
        }
    }

    #[test]
    fn a_task_waits_until_each_dependency_runs_or_serves_as_asked() {
        let tasks = [
            task("shop_web.1.1", &[("shop_db", Condition::Healthy), ("shop_cache", Condition::Started)]),
            task("shop_worker.1.1", &[("shop_cache", Condition::Started)]),
            task("other.1.1", &[]),
        ];
        let mut a = Assignment {
            tasks: tasks.into_iter().map(|t| (t.id.clone(), t)).collect(),
            services: vec![service("shop_db", true, false)],
            ..Assignment::default()
        };
        let got = waiting(&a);
        assert_eq!(
            got["shop_web.1.1"], "waiting for shop_db to be healthy; waiting for shop_cache to start",
            "running but not healthy is not enough, and a service unknown here is not up"
        );
        assert_eq!(got.keys().collect::<Vec<_>>(), ["shop_web.1.1", "shop_worker.1.1"]);
        a.services = vec![service("shop_db", true, true), service("shop_cache", true, false)];
        assert!(waiting(&a).is_empty(), "{:?}", waiting(&a));
    }
}
