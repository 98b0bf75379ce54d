//! Start order between services (Compose's `depends_on`): a task of a
//! service that depends on another starts only once that one runs (or
//! serves, when it must be healthy). Its node's agent checks this at every
//! start, the first and each restart, from the endpoints every agent
//! holds, so the order holds when a task restarts or moves, not only at
//! deploy (Swarm ignores `depends_on`), as fresh as the cluster's view of
//! the dependency. A task that already runs is left alone when a
//! dependency goes away.

use serde::{Deserialize, Serialize};

use super::service::validate_service_name;
use super::InvalidField;
use crate::pb::cluster as pb;

/// A service that must be up before a task of this one starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub service: String,
    #[serde(default)]
    pub condition: Condition,
}

/// What "up" means for a dependency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// One of its tasks runs (Compose's `service_started`).
    #[default]
    Started,
    /// One of its tasks serves: runs, and is healthy if it has a check
    /// (Compose's `service_healthy`).
    Healthy,
}

impl Condition {
    /// `started` or `healthy`, or Compose's `service_started` and
    /// `service_healthy`; empty for started.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "started" | "service_started" => Some(Self::Started),
            "healthy" | "service_healthy" => Some(Self::Healthy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Healthy => "healthy",
        }
    }
}

/// The most dependencies a service may have.
pub const MAX_DEPENDENCIES: usize = 64;

impl Dependency {
    pub fn from_pb(i: usize, w: pb::Dependency) -> Result<Self, InvalidField> {
        let condition = Condition::parse(&w.condition).ok_or_else(|| {
            InvalidField::new(format!("depends_on[{i}].condition"), &w.condition, "started or healthy")
        })?;
        Ok(Self { service: w.service, condition })
    }

    pub fn to_pb(&self) -> pb::Dependency {
        pb::Dependency { service: self.service.clone(), condition: self.condition.as_str().into() }
    }

    /// What a waiting task says, e.g. `waiting for shop_db to be healthy`.
    pub fn waiting(&self) -> String {
        let what = match self.condition {
            Condition::Started => "to start",
            Condition::Healthy => "to be healthy",
        };
        format!("waiting for {} {what}", self.service)
    }
}

/// Checks `service`'s dependencies: named services, none twice, not itself.
pub fn validate(service: &str, deps: &[Dependency]) -> Result<(), InvalidField> {
    if deps.len() > MAX_DEPENDENCIES {
        let expected = format!("at most {MAX_DEPENDENCIES}");
        return Err(InvalidField::new("depends_on", format!("{} entries", deps.len()), expected));
    }
    for (i, d) in deps.iter().enumerate() {
        let field = format!("depends_on[{i}].service");
        validate_service_name(&d.service).map_err(|e| InvalidField { field: field.clone(), ..e })?;
        if d.service == service {
            return Err(InvalidField::new(field, &d.service, "another service: a service cannot wait for itself"));
        }
        if deps[..i].iter().any(|o| o.service == d.service) {
            return Err(InvalidField::new(field, &d.service, "a service named once"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(service: &str, condition: Condition) -> Dependency {
        Dependency { service: service.into(), condition }
    }

    #[test]
    fn conditions_read_both_spellings_and_name_the_bad_one() {
        assert_eq!(Condition::parse("service_healthy"), Some(Condition::Healthy));
        assert_eq!(Condition::parse(""), Some(Condition::Started));
        let e = Dependency::from_pb(2, pb::Dependency { service: "db".into(), condition: "done".into() }).unwrap_err();
        assert_eq!((e.field.as_str(), e.value.as_str()), ("depends_on[2].condition", "done"));
        let d = dep("shop_db", Condition::Healthy);
        assert_eq!(Dependency::from_pb(0, d.to_pb()), Ok(d.clone()));
        assert_eq!(d.waiting(), "waiting for shop_db to be healthy");
    }

    #[test]
    fn itself_twice_or_a_bad_name_is_refused_by_field() {
        let field = |deps: &[Dependency]| validate("web", deps).unwrap_err().field;
        assert!(validate("web", &[dep("db", Condition::Started), dep("cache", Condition::Healthy)]).is_ok());
        assert_eq!(field(&[dep("web", Condition::Started)]), "depends_on[0].service");
        assert_eq!(field(&[dep("db", Condition::Started), dep("db", Condition::Healthy)]), "depends_on[1].service");
        assert_eq!(field(&[dep("Bad Name", Condition::Started)]), "depends_on[0].service");
    }
}
