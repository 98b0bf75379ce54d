//! The one validation error: which field, what it held, and what is expected.

use std::fmt;

/// A field of a spec that does not have the expected form.
///
/// Displayed as `replicas: -1 is not valid: expected an integer >= 0`, so a
/// person sees the field, the value and the fix in one line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvalidField {
    pub field: String,
    pub value: String,
    pub expected: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, value: impl fmt::Display, expected: impl Into<String>) -> Self {
        Self { field: field.into(), value: value.to_string(), expected: expected.into() }
    }
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?} is not valid: expected {}", self.field, self.value, self.expected)
    }
}

impl std::error::Error for InvalidField {}
