//! Placement constraints, as Swarm writes them: `node.name == web-1`,
//! `node.labels.zone != b`. A task may only run on a node that meets every
//! constraint of its service.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::InvalidField;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Constraint {
    pub key: ConstraintKey,
    /// `==` when true, `!=` when false.
    pub equal: bool,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConstraintKey {
    NodeName,
    NodeLabel(String),
}

const EXPECTED: &str = "node.name or node.labels.KEY, then == or !=, then a value (e.g. node.labels.zone == a)";

impl FromStr for Constraint {
    type Err = InvalidField;

    /// Parses `KEY == VALUE` or `KEY != VALUE`; on failure says what is
    /// expected (as field `constraint`: callers name their own field).
    fn from_str(text: &str) -> Result<Self, InvalidField> {
        let bad = || InvalidField::new("constraint", text, EXPECTED);
        let (key, equal, value) = match (text.split_once("=="), text.split_once("!=")) {
            (Some((k, v)), None) => (k, true, v),
            (None, Some((k, v))) => (k, false, v),
            _ => return Err(bad()),
        };
        let (key, value) = (key.trim(), value.trim());
        let key = match key.strip_prefix("node.labels.") {
            _ if key == "node.name" => ConstraintKey::NodeName,
            Some(label) if valid_word(label) => ConstraintKey::NodeLabel(label.to_owned()),
            _ => return Err(bad()),
        };
        if !valid_word(value) {
            return Err(bad());
        }
        Ok(Self { key, equal, value: value.to_owned() })
    }
}

/// Label keys and values: non-empty, printable, no spaces or operators.
pub(super) fn valid_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_graphic() && c != '=' && c != '!')
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            ConstraintKey::NodeName => f.write_str("node.name")?,
            ConstraintKey::NodeLabel(label) => write!(f, "node.labels.{label}")?,
        }
        write!(f, " {} {}", if self.equal { "==" } else { "!=" }, self.value)
    }
}

impl Constraint {
    /// Whether a node with this name and these labels meets the constraint.
    /// A missing label equals no value, so `!=` holds and `==` does not.
    pub fn allows(&self, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
        let actual = match &self.key {
            ConstraintKey::NodeName => Some(node_name),
            ConstraintKey::NodeLabel(label) => labels.get(label).map(String::as_str),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_displays_and_matches() {
        let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        for (text, on_a, shown) in [
            ("node.labels.zone == a", true, "node.labels.zone == a"),
            ("node.labels.zone!=a", false, "node.labels.zone != a"),
            (" node.name == web-1 ", true, "node.name == web-1"),
            ("node.name != web-1", false, "node.name != web-1"),
            ("node.labels.disk == ssd", false, "node.labels.disk == ssd"),
            ("node.labels.disk != ssd", true, "node.labels.disk != ssd"),
        ] {
            let c: Constraint = text.parse().unwrap();
            assert_eq!(c.allows("web-1", &labels), on_a, "{text}");
            assert_eq!(c.to_string(), shown);
            assert_eq!(shown.parse::<Constraint>().unwrap(), c);
        }
    }

    #[test]
    fn bad_constraints_say_what_is_expected() {
        for text in [
            "",
            "zone == a",
            "node.labels. == a",
            "node.name = a",
            "node.name == ",
            "node.name == a == b",
            "node.id == x",
        ] {
            let err = text.parse::<Constraint>().unwrap_err().to_string();
            assert!(err.contains("expected node.name or node.labels.KEY"), "{text:?}: {err}");
        }
    }
}
