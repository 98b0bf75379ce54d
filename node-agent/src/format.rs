//! The agent data dir's format version, and the migrations from older ones.
//!
//! What an agent keeps: `node-id`, `tls/` (shared with servers, see
//! `berth_proto::pki`), the overlay key, the image store (`images/`:
//! `images.json` and content-addressed unpacked layers) and each
//! container's directory (`containers/NAME/`: `config.json`, the
//! `started`/`exited` records the shim writes, the logs). [`FORMAT`]
//! counts incompatible changes to any of them; a compatible change (a new
//! field with `#[serde(default)]`, a new file) bumps nothing. An
//! incompatible one bumps it and adds a [`Migration`], and the data dirs
//! under `tests/fixtures/agent/` (saved by earlier releases) must still load.
//!
//! The number is kept in `DATA_DIR/format`. A data dir without it predates
//! it and holds format 1; one of a newer format is refused with both
//! numbers and left as it is, as the server does with its store.

use std::io;
use std::path::Path;

/// This build's data dir format.
pub const FORMAT: u32 = 1;

/// Data dirs written before the format was recorded.
pub const UNMARKED: u32 = 1;

/// Where the number is kept, in the data dir.
pub const FILE: &str = "format";

/// The step from format `to - 1` to `to`: rewrites the data dir in place.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub to: u32,
    pub run: fn(&Path) -> io::Result<()>,
}

/// Every migration, oldest first: the last one's `to` is [`FORMAT`].
pub const MIGRATIONS: &[Migration] = &[];

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "{dir} has format {found}, newer than this build's {current}: run the berth-agent release that wrote it \
         or a later one (going back a format is not supported)"
    )]
    Newer { dir: String, found: u32, current: u32 },
    #[error("{dir} has format {found}, and this build has no migration from it to {current}")]
    NoPath { dir: String, found: u32, current: u32 },
    #[error("{dir}/{FILE}: {text:?} is not a format number")]
    Unreadable { dir: String, text: String },
    #[error("migrating {dir} to format {to}: {error}")]
    Failed { dir: String, to: u32, error: io::Error },
    #[error("{dir}/{FILE}: {error}")]
    Io { dir: String, error: io::Error },
}

/// Brings the data dir at `dir` to this build's format and records it:
/// an unmarked one is format 1, older ones are migrated step by step, a
/// newer one is refused untouched.
pub fn upgrade(dir: &Path) -> Result<u32, FormatError> {
    upgrade_with(dir, FORMAT, MIGRATIONS)
}

fn upgrade_with(dir: &Path, current: u32, migrations: &[Migration]) -> Result<u32, FormatError> {
    let name = || dir.display().to_string();
    let io = |error| FormatError::Io { dir: name(), error };
    let path = dir.join(FILE);
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| FormatError::Unreadable { dir: name(), text })?,
        // A new data dir is this build's; one holding anything is from before the mark.
        Err(e) if e.kind() == io::ErrorKind::NotFound && is_empty(dir) => current,
        Err(e) if e.kind() == io::ErrorKind::NotFound => UNMARKED,
        Err(e) => return Err(io(e)),
    };
    if found > current {
        return Err(FormatError::Newer { dir: name(), found, current });
    }
    for to in found + 1..=current {
        let step = migrations.iter().find(|m| m.to == to).ok_or(FormatError::NoPath { dir: name(), found, current })?;
        (step.run)(dir).map_err(|error| FormatError::Failed { dir: name(), to, error })?;
        // Each step recorded as it is done, so an interrupted upgrade
        // goes on from where it stopped.
        crate::durable::write(&path, format!("{to}\n").as_bytes()).map_err(io)?;
    }
    if !path.exists() {
        crate::durable::write(&path, format!("{current}\n").as_bytes()).map_err(io)?;
    }
    Ok(found)
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(FILE)).unwrap()
    }

    #[test]
    fn an_unmarked_dir_is_format_1_and_gets_marked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        assert_eq!(upgrade(dir.path()).unwrap(), UNMARKED);
        assert_eq!(recorded(dir.path()), format!("{FORMAT}\n"));
        assert_eq!(upgrade(dir.path()).unwrap(), FORMAT, "the same, once marked");
    }

    #[test]
    fn a_new_dir_is_this_builds_format_with_no_migration() {
        fn never(_: &Path) -> io::Result<()> {
            Err(io::Error::other("ran"))
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(upgrade_with(dir.path(), 2, &[Migration { to: 2, run: never }]).unwrap(), 2);
        assert_eq!(recorded(dir.path()), "2\n");
    }

    #[test]
    fn a_newer_or_unreadable_format_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "9\n").unwrap();
        let refused = upgrade(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("has format 9, newer than this build's 1"), "{refused}");
        assert_eq!(recorded(dir.path()), "9\n");
        std::fs::write(dir.path().join(FILE), "nine").unwrap();
        assert!(upgrade(dir.path()).unwrap_err().to_string().contains("\"nine\" is not a format number"));
    }

    #[test]
    fn migrations_run_in_order_from_the_recorded_format() {
        fn to2(dir: &Path) -> io::Result<()> {
            std::fs::write(dir.join("steps"), "2")
        }
        fn to3(dir: &Path) -> io::Result<()> {
            let before = std::fs::read_to_string(dir.join("steps"))?;
            std::fs::write(dir.join("steps"), before + "3")
        }
        let steps = [Migration { to: 2, run: to2 }, Migration { to: 3, run: to3 }];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-id"), "n1").unwrap();
        assert_eq!(upgrade_with(dir.path(), 3, &steps).unwrap(), 1);
        assert_eq!(std::fs::read_to_string(dir.path().join("steps")).unwrap(), "23");
        assert_eq!(recorded(dir.path()), "3\n");
        // From 2, only the last step runs.
        std::fs::write(dir.path().join(FILE), "2\n").unwrap();
        std::fs::write(dir.path().join("steps"), "2").unwrap();
        upgrade_with(dir.path(), 3, &steps).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("steps")).unwrap(), "23");
        // A gap is refused, naming both ends.
        let old = tempfile::tempdir().unwrap();
        std::fs::write(old.path().join("node-id"), "n1").unwrap();
        let gap = upgrade_with(old.path(), 3, &steps[1..]).unwrap_err().to_string();
        assert!(gap.contains("has format 1, and this build has no migration from it to 3"), "{gap}");
    }
}
