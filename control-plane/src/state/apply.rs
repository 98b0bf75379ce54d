//! `apply`: the state machine's transition function.

use berth_proto::model::Service;

use super::{Command, Outcome, Rejection, Response, State};

/// Applies one command. Deterministic: the same state and command give the
/// same result on every server. A rejected command leaves the state as it was.
pub fn apply(state: &mut State, cmd: &Command) -> Response {
    match cmd {
        Command::CreateService(spec) | Command::UpdateService(spec) | Command::ApplyService(spec) => {
            // Specs are validated at the API edge; checking again keeps a log
            // written by an older, laxer server from planting a bad spec.
            if let Err(e) = spec.validate() {
                return Response::Rejected(Rejection::Invalid(e));
            }
            let existing = state.services.get_mut(&spec.name);
            match (cmd, existing) {
                (Command::CreateService(_), Some(_)) => Response::Rejected(Rejection::AlreadyExists(spec.name.clone())),
                (Command::UpdateService(_), None) => Response::Rejected(Rejection::NotFound(spec.name.clone())),
                (_, Some(svc)) if svc.spec == *spec => {
                    Response::Service { service: svc.clone(), outcome: Outcome::Unchanged }
                }
                (_, Some(svc)) => {
                    svc.spec = spec.clone();
                    svc.version += 1;
                    Response::Service { service: svc.clone(), outcome: Outcome::Updated }
                }
                (_, None) => {
                    let svc = Service { spec: spec.clone(), version: 1 };
                    state.services.insert(spec.name.clone(), svc.clone());
                    Response::Service { service: svc, outcome: Outcome::Created }
                }
            }
        }
        Command::DeleteService { name } => match state.services.remove(name) {
            Some(_) => Response::Deleted,
            None => Response::Rejected(Rejection::NotFound(name.clone())),
        },
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::model::{RestartPolicy, ServiceSpec};

    use super::*;

    fn spec(name: &str, replicas: u32) -> ServiceSpec {
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
        }
    }

    fn outcome(r: Response) -> (u64, Outcome) {
        match r {
            Response::Service { service, outcome } => (service.version, outcome),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn create_update_delete() {
        let mut s = State::default();
        assert_eq!(outcome(apply(&mut s, &Command::CreateService(spec("web", 1)))), (1, Outcome::Created));
        assert_eq!(
            apply(&mut s, &Command::CreateService(spec("web", 2))),
            Response::Rejected(Rejection::AlreadyExists("web".into()))
        );
        assert_eq!(s.services["web"].spec.replicas, 1, "a rejected create changes nothing");
        assert_eq!(outcome(apply(&mut s, &Command::UpdateService(spec("web", 3)))), (2, Outcome::Updated));
        assert_eq!(outcome(apply(&mut s, &Command::UpdateService(spec("web", 3)))), (2, Outcome::Unchanged));
        assert_eq!(apply(&mut s, &Command::DeleteService { name: "web".into() }), Response::Deleted);
        assert!(s.services.is_empty());
        assert_eq!(
            apply(&mut s, &Command::DeleteService { name: "web".into() }),
            Response::Rejected(Rejection::NotFound("web".into()))
        );
        assert_eq!(
            apply(&mut s, &Command::UpdateService(spec("web", 1))),
            Response::Rejected(Rejection::NotFound("web".into()))
        );
    }

    #[test]
    fn apply_is_idempotent() {
        let mut s = State::default();
        assert_eq!(outcome(apply(&mut s, &Command::ApplyService(spec("db", 2)))), (1, Outcome::Created));
        let before = s.clone();
        assert_eq!(outcome(apply(&mut s, &Command::ApplyService(spec("db", 2)))), (1, Outcome::Unchanged));
        assert_eq!(s, before);
        assert_eq!(outcome(apply(&mut s, &Command::ApplyService(spec("db", 4)))), (2, Outcome::Updated));
    }

    #[test]
    fn invalid_spec_is_rejected_without_change() {
        let mut s = State::default();
        let r = apply(&mut s, &Command::CreateService(spec("Bad_Name", 1)));
        assert!(matches!(r, Response::Rejected(Rejection::Invalid(f)) if f.field == "name"));
        assert!(s.services.is_empty());
    }
}
