//! What a service mounts into its containers besides its image: named
//! volumes, which live on the node and outlive every task that uses them
//! (`docker service create --mount type=volume,...`), and bind mounts of a
//! host path (`type=bind`). Memory filesystems are [`super::Tmpfs`].
//!
//! A volume's name may hold `{{.Task.Slot}}`, as in Swarm's templated
//! mounts: each replica then has a volume of its own (`data-1`, `data-2`,
//! ...), which stays with its slot through restarts, updates and moves.

use serde::{Deserialize, Serialize};

use super::InvalidField;
use crate::pb::cluster as pb;

/// A named volume on a node, as its agent tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVolume {
    pub name: String,
    pub created_at_ms: u64,
}

/// A volume as `volume ls` shows it: where it is, and which tasks mount it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub node_id: String,
    pub node: String,
    pub created_at_ms: u64,
    /// Tasks on its node meant to run that mount it.
    pub used_by: Vec<String>,
}

/// The most volumes one node may report.
pub const MAX_NODE_VOLUMES: usize = 10_000;

/// The template a volume name may hold: the task's slot.
pub const SLOT: &str = "{{.Task.Slot}}";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountKind,
    /// The volume's name, or the host path of a bind.
    pub source: String,
    /// An absolute path in the container.
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
    /// A volume only: once it exists on a node, its tasks run only there
    /// (they wait while that node is down, rather than start empty
    /// elsewhere). Unpinned, they prefer that node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin: bool,
    /// A volume only: one writer. A replica slot that mounts it never runs
    /// on two nodes at once, even across a partition: its node runs it only
    /// while it holds a lease from the cluster's leader, shorter than the
    /// time after which the node is taken for down (see the agent's fence).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A named volume on the node, made on first use.
    Volume,
    /// A host path, which must exist on the node.
    Bind,
}

impl MountKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "volume" => Some(Self::Volume),
            "bind" => Some(Self::Bind),
            _ => None,
        }
    }
}

impl std::fmt::Display for MountKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Volume => "volume",
            Self::Bind => "bind",
        })
    }
}

/// A volume name as Docker takes it: a letter or digit, then letters,
/// digits, '_', '.' or '-', at most 128 bytes.
pub fn volume_name_ok(name: &str) -> bool {
    name.len() <= 128
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// An absolute path in its plain form (no `.`, `..` or empty part but a
/// trailing slash, no NUL), at most 4096 bytes, other than `/`.
pub(super) fn clean_path(path: &str) -> bool {
    let trimmed = path.trim_end_matches('/');
    path.starts_with('/')
        && path.len() <= 4096
        && !path.contains('\0')
        && !trimmed.is_empty()
        && !trimmed[1..].split('/').any(|p| p.is_empty() || p == "." || p == "..")
}

/// Where nothing may be mounted in a container: the kernel's filesystems
/// and the files the runtime provides (a mount there would hide them, or
/// the init under /dev).
pub(super) fn reserved(target: &str) -> bool {
    let t = target.trim_end_matches('/');
    ["/proc", "/sys", "/dev"].iter().any(|r| t == *r || t.starts_with(&format!("{r}/")))
        || ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"].contains(&t)
}

impl Mount {
    /// The volume a task of `slot` mounts (its template filled in); none for a bind.
    pub fn volume(&self, slot: u32) -> Option<String> {
        (self.kind == MountKind::Volume).then(|| self.source.replace(SLOT, &slot.to_string()))
    }

    /// Checks it as entry `i` of the mounts.
    pub fn validate(&self, i: usize) -> Result<(), InvalidField> {
        if !clean_path(&self.target) || reserved(&self.target) {
            return Err(InvalidField::new(
                format!("mounts[{i}].target"),
                &self.target,
                "an absolute path other than / without '.', '..' or '//', outside /proc, /sys and /dev",
            ));
        }
        let ok = match self.kind {
            // The longest slot a name may take.
            MountKind::Volume => volume_name_ok(&self.source.replace(SLOT, &u32::MAX.to_string())),
            MountKind::Bind => clean_path(&self.source),
        };
        if !ok {
            let expected = match self.kind {
                MountKind::Volume => {
                    "a volume name: a letter or digit, then letters, digits, '_', '.' or '-' (at most 128), \
                     and {{.Task.Slot}} for a volume per replica"
                }
                MountKind::Bind => "an absolute host path other than / without '..'",
            };
            return Err(InvalidField::new(format!("mounts[{i}].source"), &self.source, expected));
        }
        if self.pin && self.kind != MountKind::Volume {
            return Err(InvalidField::new(format!("mounts[{i}].pin"), true, "pin only on a volume"));
        }
        if self.exclusive && self.kind != MountKind::Volume {
            return Err(InvalidField::new(format!("mounts[{i}].exclusive"), true, "exclusive only on a volume"));
        }
        Ok(())
    }

    pub fn from_pb(i: usize, w: pb::Mount) -> Result<Self, InvalidField> {
        let kind = MountKind::parse(&w.r#type)
            .ok_or_else(|| InvalidField::new(format!("mounts[{i}].type"), &w.r#type, "volume or bind"))?;
        Ok(Self { kind, source: w.source, target: w.target, readonly: w.readonly, pin: w.pin, exclusive: w.exclusive })
    }

    pub fn to_pb(&self) -> pb::Mount {
        pb::Mount {
            r#type: self.kind.to_string(),
            source: self.source.clone(),
            target: self.target.clone(),
            readonly: self.readonly,
            pin: self.pin,
            exclusive: self.exclusive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(source: &str, target: &str) -> Mount {
        let (source, target) = (source.into(), target.into());
        Mount { kind: MountKind::Volume, source, target, readonly: false, pin: false, exclusive: false }
    }

    #[test]
    fn a_template_names_a_volume_per_slot() {
        assert_eq!(volume("data-{{.Task.Slot}}", "/data").volume(3).as_deref(), Some("data-3"));
        assert_eq!(volume("data", "/data").volume(3).as_deref(), Some("data"));
        let bind = Mount { kind: MountKind::Bind, source: "/srv".into(), ..volume("", "/srv") };
        assert_eq!(bind.volume(1), None);
    }

    #[test]
    fn bad_mounts_are_named() {
        let field = |m: Mount| m.validate(2).unwrap_err().field;
        assert_eq!(volume("data-{{.Task.Slot}}", "/data").validate(0), Ok(()));
        assert_eq!(field(volume("data", "data")), "mounts[2].target");
        assert_eq!(field(volume("data", "/")), "mounts[2].target");
        for target in ["/data/.", "//data", "/a//b", "/dev", "/dev/shm", "/proc/x", "/sys", "/etc/hosts"] {
            assert_eq!(field(volume("data", target)), "mounts[2].target", "{target}");
        }
        assert_eq!(volume("data", "/data/").validate(0), Ok(()));
        assert_eq!(volume("data", "/devices").validate(0), Ok(()));
        assert_eq!(field(volume("../etc", "/data")), "mounts[2].source");
        assert_eq!(field(volume("a/b", "/data")), "mounts[2].source");
        assert_eq!(field(volume(&"v".repeat(129), "/data")), "mounts[2].source");
        let long = format!("{}{SLOT}", "v".repeat(120));
        assert_eq!(field(volume(&long, "/data")), "mounts[2].source", "too long once the slot is 10 digits");
        let bind = |source: &str| Mount { kind: MountKind::Bind, ..volume(source, "/data") };
        assert_eq!(bind("/srv/data").validate(0), Ok(()));
        for bad in ["srv", "/", "/srv/../etc", "//"] {
            assert_eq!(field(bind(bad)), "mounts[2].source", "{bad}");
        }
        assert_eq!(field(Mount { pin: true, ..bind("/srv") }), "mounts[2].pin");
        assert_eq!(field(Mount { exclusive: true, ..bind("/srv") }), "mounts[2].exclusive");
        let wire = pb::Mount { r#type: "nfs".into(), source: "x".into(), target: "/x".into(), ..Default::default() };
        assert_eq!(Mount::from_pb(1, wire).unwrap_err().field, "mounts[1].type");
    }

    #[test]
    fn wire_and_stored_forms() {
        let m = Mount { readonly: true, pin: true, exclusive: true, ..volume("data", "/data") };
        assert_eq!(Mount::from_pb(0, m.to_pb()), Ok(m.clone()));
        let json = serde_json::to_string(&volume("data", "/data")).unwrap();
        assert_eq!(json, r#"{"type":"volume","source":"data","target":"/data"}"#);
    }
}
