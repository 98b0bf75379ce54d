//! Secrets and configs in the replicated state: made once (as Swarm's, a
//! value never changes; a new one under another name, then a service
//! update, rotates it; made again with the same value, it is left as it
//! is), named by services, removed only when nothing names them. A
//! secret's value is sealed with the cluster's secrets key
//! (`Trust::secrets_key`, see `crate::secrets`) before it is written, so it
//! is in the clear in no entry, snapshot or reply; a config's is plain.

use std::collections::{BTreeMap, BTreeSet};

use berth_proto::model::{check_file, FileKind, InvalidField, ServiceSpec};
use serde::{Deserialize, Serialize};

use super::{Rejection, Response, State};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    pub created_at_ms: u64,
    /// The value's length and SHA-256 (hex), shown in its place.
    pub bytes: u64,
    pub digest: String,
    /// Hex: a secret's sealed value (nonce and ciphertext), a config's value.
    pub data: String,
}

fn files(state: &mut State, kind: FileKind) -> &mut BTreeMap<String, StoredFile> {
    match kind {
        FileKind::Secret => &mut state.secrets,
        FileKind::Config => &mut state.configs,
    }
}

pub fn create(state: &mut State, kind: FileKind, name: &str, file: &StoredFile) -> Response {
    if let Err(e) = check_file(name, file.bytes) {
        return Response::Rejected(Rejection::Invalid(e));
    }
    if kind == FileKind::Secret {
        let key = state.trust.as_ref().and_then(|t| t.secrets_key.as_deref());
        if key.and_then(|k| crate::secrets::open(k, &file.data)).is_none() {
            let expected = "a value sealed with the cluster's secrets key";
            return Response::Rejected(Rejection::Invalid(InvalidField::new("data", "(sealed)", expected)));
        }
    }
    // Made again with the same value (a stack deployed again): nothing to do.
    let key = state.trust.as_ref().and_then(|t| t.secrets_key.clone());
    let map = files(state, kind);
    if let Some(existing) = map.get(name) {
        let same = match kind {
            FileKind::Config => existing.data == file.data,
            FileKind::Secret => key.is_some_and(|k| {
                let open = |sealed: &str| crate::secrets::open(&k, sealed);
                open(&existing.data).is_some_and(|old| Some(old) == open(&file.data))
            }),
        };
        return match same {
            true => Response::Reconciled { applied: 0 },
            false => Response::Rejected(Rejection::FileExists { kind: kind.as_str().into(), name: name.into() }),
        };
    }
    map.insert(name.to_owned(), file.clone());
    Response::Done
}

pub fn remove(state: &mut State, kind: FileKind, name: &str) -> Response {
    let users = users(state, kind, name);
    if !users.is_empty() {
        let (kind, name) = (kind.as_str().into(), name.into());
        return Response::Rejected(Rejection::FileInUse { kind, name, users: users.into_iter().collect() });
    }
    match files(state, kind).remove(name) {
        Some(_) => Response::Deleted,
        None => Response::Rejected(Rejection::FileNotFound { kind: kind.as_str().into(), name: name.into() }),
    }
}

/// Services that name it: in their spec, or in a task still meant to run
/// (an old one, mid-rollout). As in Swarm, the spec before the last change
/// does not count: a rollback to it needs it made again.
pub fn users(state: &State, kind: FileKind, name: &str) -> BTreeSet<String> {
    let names = |spec: &ServiceSpec| spec.overrides.options.refs(kind).iter().any(|r| r.source == name);
    let mut out: BTreeSet<String> =
        state.services.values().filter(|s| names(&s.spec)).map(|s| s.spec.name.clone()).collect();
    for t in state.tasks.values().filter(|t| t.desired == berth_proto::model::Desired::Running) {
        if t.spec.overrides.options.refs(kind).iter().any(|r| r.source == name) {
            out.insert(t.service.clone());
        }
    }
    out
}

/// The first secret or config `spec` names that the cluster does not have.
pub fn missing(state: &State, spec: &ServiceSpec) -> Option<InvalidField> {
    for (kind, have, field) in
        [(FileKind::Secret, &state.secrets, "secrets"), (FileKind::Config, &state.configs, "configs")]
    {
        if let Some((i, r)) =
            spec.overrides.options.refs(kind).iter().enumerate().find(|(_, r)| !have.contains_key(&r.source))
        {
            let expected = format!("an existing {} (`berthctl {} ls` lists them)", kind.as_str(), kind.as_str());
            return Some(InvalidField::new(format!("{field}[{i}].source"), &r.source, expected));
        }
    }
    None
}
