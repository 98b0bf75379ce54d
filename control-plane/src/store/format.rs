//! The store's format version, and the migrations from older ones.
//!
//! [`FORMAT`] counts incompatible changes to what a server keeps: the log's
//! entries (commands as JSON), the vote, and snapshots (the applied state
//! as JSON). A compatible change bumps nothing: a new field with
//! `#[serde(default)]`, a new enum variant or command. Renaming, removing
//! or changing the meaning of anything stored is incompatible: it bumps
//! `FORMAT` and adds a [`Migration`] that rewrites the JSON of the format
//! before, and the fixtures under `tests/fixtures/server/` (data dirs saved
//! by earlier releases) must still load.
//!
//! A store records its data format in the `meta` tree (`data`); one
//! without the record holds format 1. A snapshot's data records its own
//! (`"format"`), since snapshots also travel between servers.
//!
//! Apart from the data, the store has a layout ([`STORE`], recorded as
//! `meta/format`, where builds before the split kept the data format): 1
//! is values in the clear, 2 is values sealed ([`super::seal`]). Every
//! change of either bumps [`STORE`], so a build refuses any store written
//! by a newer one. Data or a store of a newer format than this build's is
//! refused with both numbers and left as it is: a build never guesses at
//! what it does not know.

use serde_json::Value;

/// This build's store format.
pub const FORMAT: u32 = 1;

/// Stores and snapshots written before the format was recorded.
pub const UNMARKED: u32 = 1;

/// Where a store records its layout (in the `meta` tree).
pub const KEY: &[u8] = b"format";

/// Where a store records its data format (in the `meta` tree); none: 1.
pub const DATA_KEY: &[u8] = b"data";

/// This build's store layout: 2, sealed values.
pub const STORE: u32 = 2;

/// The first layout whose values are sealed.
pub const SEALED: u32 = 2;

/// One rewrite of the JSON of a snapshot's data or of a log entry.
pub type Rewrite = fn(Value) -> Result<Value, String>;

/// The step from format `to - 1` to `to`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub to: u32,
    pub snapshot: Rewrite,
    pub entry: Rewrite,
}

/// Every migration, oldest first: the last one's `to` is [`FORMAT`].
pub const MIGRATIONS: &[Migration] = &[];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "{what} has format {found}, newer than this build's {current}: run the berth-server release that wrote \
         it or a later one (going back a format is not supported)"
    )]
    Newer { what: String, found: u32, current: u32 },
    #[error("{what} has format {found}, and this build has no migration from it to {current}")]
    NoPath { what: String, found: u32, current: u32 },
    #[error("migrating {what} to format {to}: {why}")]
    Failed { what: String, to: u32, why: String },
}

/// The versions this build knows: its own, and the migrations to it.
#[derive(Debug, Clone, Copy)]
pub struct Formats {
    pub current: u32,
    pub migrations: &'static [Migration],
}

/// This build's.
pub const THIS: Formats = Formats { current: FORMAT, migrations: MIGRATIONS };

impl Formats {
    /// The migrations that take `what`, of format `found`, to the current one.
    pub fn path(&self, what: &str, found: u32) -> Result<&'static [Migration], FormatError> {
        let what = what.to_owned();
        if found > self.current {
            return Err(FormatError::Newer { what, found, current: self.current });
        }
        let first = self.migrations.iter().position(|m| m.to == found + 1).unwrap_or(self.migrations.len());
        let path = &self.migrations[first..];
        let complete = path.iter().zip(found + 1..).all(|(m, to)| m.to == to)
            && path.last().map_or(found, |m| m.to) == self.current;
        if complete {
            Ok(path)
        } else {
            Err(FormatError::NoPath { what, found, current: self.current })
        }
    }

    /// `value`, of format `found`, in the current format; `pick` chooses
    /// which rewrite of each step applies (a snapshot's or an entry's).
    pub fn migrate(
        &self,
        what: &str,
        found: u32,
        mut value: Value,
        pick: fn(&Migration) -> Rewrite,
    ) -> Result<Value, FormatError> {
        for step in self.path(what, found)? {
            value = pick(step)(value).map_err(|why| FormatError::Failed { what: what.into(), to: step.to, why })?;
        }
        Ok(value)
    }

    /// A snapshot's data (of the format it names) in the current format.
    pub fn migrate_snapshot(&self, data: Value) -> Result<Value, FormatError> {
        self.migrate("the snapshot", of_snapshot(&data), data, |m| m.snapshot)
    }
}

/// The format a snapshot's data says it has.
pub fn of_snapshot(data: &Value) -> u32 {
    data.get("format").and_then(Value::as_u64).and_then(|f| u32::try_from(f).ok()).unwrap_or(UNMARKED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_field(mut v: Value) -> Result<Value, String> {
        v["added"] = Value::from(true);
        Ok(v)
    }

    fn rename(mut v: Value) -> Result<Value, String> {
        let old = v.as_object_mut().and_then(|o| o.remove("old")).ok_or("no field old")?;
        v["new"] = old;
        Ok(v)
    }

    const STEPS: &[Migration] = &[
        Migration { to: 2, snapshot: add_field, entry: add_field },
        Migration { to: 3, snapshot: rename, entry: rename },
    ];

    #[test]
    fn data_is_migrated_step_by_step_from_any_older_format() {
        let formats = Formats { current: 3, migrations: STEPS };
        let v = formats.migrate("s", 1, serde_json::json!({"old": 7}), |m| m.snapshot).unwrap();
        assert_eq!(v, serde_json::json!({"new": 7, "added": true}));
        let v = formats.migrate("s", 2, serde_json::json!({"old": 7}), |m| m.entry).unwrap();
        assert_eq!(v, serde_json::json!({"new": 7}));
        let v = formats.migrate("s", 3, serde_json::json!({"old": 7}), |m| m.entry).unwrap();
        assert_eq!(v, serde_json::json!({"old": 7}), "the current format is left as it is");
        let e = formats.migrate("entry 4", 1, serde_json::json!({}), |m| m.entry).unwrap_err();
        assert_eq!(e, FormatError::Failed { what: "entry 4".into(), to: 3, why: "no field old".into() });
    }

    #[test]
    fn a_newer_format_or_a_gap_is_refused_by_number() {
        let formats = Formats { current: 3, migrations: STEPS };
        let e = formats.path("the store", 4).unwrap_err();
        assert_eq!(e, FormatError::Newer { what: "the store".into(), found: 4, current: 3 });
        assert!(e.to_string().contains("format 4, newer than this build's 3"), "{e}");
        let gap = Formats { current: 3, migrations: &STEPS[1..] };
        assert!(matches!(gap.path("s", 1), Err(FormatError::NoPath { found: 1, .. })));
        assert!(THIS.path("s", FORMAT).unwrap().is_empty());
    }

    #[test]
    fn a_snapshot_without_a_format_is_the_first() {
        assert_eq!(of_snapshot(&serde_json::json!({"state": {}})), UNMARKED);
        assert_eq!(of_snapshot(&serde_json::json!({"format": 5})), 5);
    }
}
