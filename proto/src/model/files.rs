//! Secrets and configs: small files the cluster keeps (a password, a
//! certificate, a configuration file) and hands to the tasks that name
//! them, as Swarm does. A service refers to them by name
//! (`--secret src=db_password,target=db,mode=0400`); its node's agent
//! writes each one into a memory filesystem of the container's and mounts
//! it read-only at its target. A secret's value is sealed in the
//! replicated state and shown by no read API; a config's is plain.

use serde::{Deserialize, Serialize};

use super::mounts::{clean_path, reserved};
use super::InvalidField;
use crate::pb::cluster as pb;

/// The most bytes a secret or a config may hold (Swarm's 500 KB).
pub const MAX_FILE_BYTES: usize = 500 * 1024;
/// The most secrets (and, apart, configs) one service may name.
pub const MAX_FILE_REFS: usize = 64;

/// Which of the two a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Config => "config",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Self::Secret => "secrets",
            Self::Config => "configs",
        }
    }
}

/// A service's use of a secret or config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRef {
    /// The secret's or config's name.
    pub source: String,
    /// Where the container sees it: an absolute path, or (as given) a
    /// name under `/run/secrets` for a secret and under `/` for a config.
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (0444 unless given).
    pub mode: u32,
}

/// A secret's or config's name, as Swarm takes it: a letter or digit, then
/// letters, digits, '_', '.' or '-', at most 64 bytes.
pub fn file_name_ok(name: &str) -> bool {
    name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// What a secret's or config's name must be, as its errors say.
const NAME_EXPECTED: &str = "a name: a letter or digit, then letters, digits, '_', '.' or '-' (at most 64)";

/// A new secret's or config's name and value's size (fields `name`, `data`).
pub fn check_file(name: &str, bytes: u64) -> Result<(), InvalidField> {
    if !file_name_ok(name) {
        return Err(InvalidField::new("name", name, NAME_EXPECTED));
    }
    if bytes > MAX_FILE_BYTES as u64 {
        return Err(InvalidField::new("data", format!("{bytes} bytes"), format!("at most {MAX_FILE_BYTES} bytes")));
    }
    Ok(())
}

impl FileRef {
    /// A reference with the defaults: the name as its target, root's, 0444.
    pub fn named(source: &str) -> Self {
        Self { source: source.into(), target: source.into(), uid: 0, gid: 0, mode: 0o444 }
    }

    /// Its absolute path in the container.
    pub fn path(&self, kind: FileKind) -> String {
        match (self.target.starts_with('/'), kind) {
            (true, _) => self.target.clone(),
            (false, FileKind::Secret) => format!("/run/secrets/{}", self.target),
            (false, FileKind::Config) => format!("/{}", self.target),
        }
    }

    /// Checks it as entry `i` of a service's secrets or configs.
    pub fn validate(&self, kind: FileKind, i: usize) -> Result<(), InvalidField> {
        let field = |f: &str| format!("{}[{i}].{f}", kind.field());
        if !file_name_ok(&self.source) {
            return Err(InvalidField::new(field("source"), &self.source, NAME_EXPECTED));
        }
        let relative_ok =
            !self.target.is_empty() && !self.target.split('/').any(|p| p.is_empty() || p == "." || p == "..");
        let path = self.path(kind);
        let absolute_ok = clean_path(&path) && !path.ends_with('/');
        if !(absolute_ok && (self.target.starts_with('/') || relative_ok)) || reserved(&path) {
            let expected = "an absolute path, or a file name under the default directory, without '..'";
            return Err(InvalidField::new(field("target"), &self.target, expected));
        }
        if self.mode > 0o777 {
            return Err(InvalidField::new(field("mode"), format!("{:o}", self.mode), "permission bits such as 0400"));
        }
        Ok(())
    }

    pub fn from_pb(kind: FileKind, i: usize, w: pb::FileRef) -> Result<Self, InvalidField> {
        let target = if w.target.is_empty() { w.source.clone() } else { w.target };
        let mode = w.mode.unwrap_or(0o444);
        let r = Self { source: w.source, target, uid: w.uid, gid: w.gid, mode };
        r.validate(kind, i)?;
        Ok(r)
    }

    pub fn to_pb(&self) -> pb::FileRef {
        pb::FileRef {
            source: self.source.clone(),
            target: self.target.clone(),
            uid: self.uid,
            gid: self.gid,
            mode: Some(self.mode),
        }
    }
}

/// The values of the secrets and configs a task names, by name: what its
/// node's agent writes into the container's memory. Debug shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Files {
    pub secrets: std::collections::BTreeMap<String, Vec<u8>>,
    pub configs: std::collections::BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("configs", &self.configs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Files {
    /// The value a reference names.
    pub fn get(&self, kind: FileKind, name: &str) -> Option<&[u8]> {
        match kind {
            FileKind::Secret => self.secrets.get(name),
            FileKind::Config => self.configs.get(name),
        }
        .map(Vec::as_slice)
    }
}

/// A secret or config as the read APIs show it: never a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub created_at_ms: u64,
    pub bytes: u64,
    /// SHA-256 of the value (hex): tells two versions apart without showing either.
    pub digest: String,
    /// Services whose spec names it.
    pub used_by: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_default_to_the_name_under_the_kinds_directory() {
        let r = FileRef::named("db_password");
        assert_eq!(r.path(FileKind::Secret), "/run/secrets/db_password");
        assert_eq!(r.path(FileKind::Config), "/db_password");
        let abs = FileRef { target: "/etc/app/app.conf".into(), ..r };
        assert_eq!(abs.path(FileKind::Config), "/etc/app/app.conf");
        let wire = pb::FileRef { source: "db".into(), ..Default::default() };
        assert_eq!(FileRef::from_pb(FileKind::Secret, 0, wire), Ok(FileRef::named("db")));
    }

    #[test]
    fn values_stay_out_of_debug_output() {
        let files = Files { secrets: [("db".to_owned(), b"hunter2".to_vec())].into(), configs: Default::default() };
        let shown = format!("{files:?}");
        assert!(shown.contains("db") && !shown.contains("hunter2") && !shown.contains("104"), "{shown}");
        assert_eq!(files.get(FileKind::Secret, "db"), Some(&b"hunter2"[..]));
        assert_eq!(files.get(FileKind::Config, "db"), None);
    }

    #[test]
    fn bad_references_are_named() {
        let field = |r: FileRef| r.validate(FileKind::Secret, 1).unwrap_err().field;
        assert_eq!(field(FileRef::named("a/b")), "secrets[1].source");
        assert_eq!(field(FileRef::named("")), "secrets[1].source");
        for target in ["../etc/passwd", "a/../b", "/", "a//b", "", "/proc/x", "/etc/hosts", "/etc/x/", "./x"] {
            assert_eq!(
                field(FileRef { target: target.into(), ..FileRef::named("db") }),
                "secrets[1].target",
                "{target}"
            );
        }
        assert_eq!(field(FileRef { mode: 0o1777, ..FileRef::named("db") }), "secrets[1].mode");
        assert_eq!(FileRef { target: "sub/db".into(), ..FileRef::named("db") }.validate(FileKind::Config, 0), Ok(()));
        let config = |t: &str| FileRef { target: t.into(), ..FileRef::named("db") }.validate(FileKind::Config, 0);
        assert!(config("etc/hosts").is_err() && config("proc/x").is_err(), "relative, then reserved");
        assert!(config(&"a".repeat(5000)).is_err(), "bounded");
    }
}
