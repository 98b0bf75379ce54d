//! `secret` and `config` calls: create (a secret's value sealed here, on
//! the answering server, before its command is written), list, read a
//! config back, remove. No call returns a secret's value.

use berth_proto::model::{check_file, FileInfo, FileKind};
use berth_proto::pb::cluster as pb;
use tonic::Status;

use super::levels::Levels;
use crate::node::Node;
use crate::state::{now_ms, Command, Query, QueryReply, Response as Applied, StoredFile};

pub fn info(f: FileInfo) -> pb::FileInfo {
    pb::FileInfo { name: f.name, created_at_ms: f.created_at_ms, bytes: f.bytes, digest: f.digest, used_by: f.used_by }
}

/// Secrets and configs are written only once every member reads them.
async fn ready(node: &Node, levels: &Levels, kind: FileKind) -> Result<(), Status> {
    levels.require(node, 2, &format!("{}s", kind.as_str())).await
}

/// The cluster's secrets key, made now if it has none (the first one written wins).
async fn secrets_key(node: &Node) -> Result<String, Status> {
    for _ in 0..2 {
        let trust = match node.read(Query::Trust, false).await? {
            QueryReply::Trust(Some(t)) => t,
            QueryReply::Trust(None) => return Err(Status::unavailable("the cluster's trust is not set up yet")),
            other => return Err(Status::internal(format!("unexpected query reply {other:?}"))),
        };
        if let Some(key) = trust.secrets_key {
            return Ok(key);
        }
        node.write(Command::SetSecretsKey { key: crate::secrets::new_key() }).await?;
    }
    Err(Status::internal("the cluster's secrets key could not be set"))
}

pub async fn create(
    node: &Node,
    levels: &Levels,
    kind: FileKind,
    req: pb::CreateFileRequest,
) -> Result<pb::FileReply, Status> {
    check_file(&req.name, req.data.len() as u64).map_err(|e| Status::invalid_argument(e.to_string()))?;
    ready(node, levels, kind).await?;
    let data = match kind {
        FileKind::Secret => {
            let key = secrets_key(node).await?;
            crate::secrets::seal(&key, &req.data).ok_or_else(|| Status::internal("the secrets key is not a key"))?
        }
        FileKind::Config => hex::encode(&req.data),
    };
    // A secret's digest would let anyone who may list secrets test guesses
    // of a weak value offline: only configs show one.
    let digest = match kind {
        FileKind::Secret => String::new(),
        FileKind::Config => berth_proto::pki::fingerprint(&req.data),
    };
    let file = StoredFile { created_at_ms: now_ms(), bytes: req.data.len() as u64, digest, data };
    let cmd = match kind {
        FileKind::Secret => Command::CreateSecret { name: req.name.clone(), file: file.clone() },
        FileKind::Config => Command::CreateConfig { name: req.name.clone(), file: file.clone() },
    };
    match node.write(cmd).await? {
        Applied::Rejected(r) => Err(r.into()),
        _ => {
            let shown = FileInfo {
                name: req.name,
                created_at_ms: file.created_at_ms,
                bytes: file.bytes,
                digest: file.digest,
                used_by: vec![],
            };
            Ok(pb::FileReply { file: Some(info(shown)) })
        }
    }
}

pub async fn list(node: &Node, levels: &Levels, kind: FileKind) -> Result<pb::ListFilesReply, Status> {
    ready(node, levels, kind).await?;
    match node.read(Query::ListFiles(kind), false).await? {
        QueryReply::Files(files) => Ok(pb::ListFilesReply { files: files.into_iter().map(info).collect() }),
        other => Err(Status::internal(format!("unexpected query reply {other:?}"))),
    }
}

pub async fn get_config(node: &Node, levels: &Levels, name: String) -> Result<pb::GetConfigReply, Status> {
    ready(node, levels, FileKind::Config).await?;
    match node.read(Query::GetConfig(name.clone()), false).await? {
        QueryReply::Config(Some((file, data))) => Ok(pb::GetConfigReply {
            file: Some(info(file)),
            data: hex::decode(data).map_err(|_| Status::internal("a stored config is not hex"))?,
        }),
        QueryReply::Config(None) => Err(crate::state::Rejection::FileNotFound { kind: "config".into(), name }.into()),
        other => Err(Status::internal(format!("unexpected query reply {other:?}"))),
    }
}

pub async fn delete(node: &Node, levels: &Levels, kind: FileKind, name: String) -> Result<pb::DeleteFileReply, Status> {
    ready(node, levels, kind).await?;
    let cmd = match kind {
        FileKind::Secret => Command::RemoveSecret { name },
        FileKind::Config => Command::RemoveConfig { name },
    };
    match node.write(cmd).await? {
        Applied::Rejected(r) => Err(r.into()),
        _ => Ok(pb::DeleteFileReply {}),
    }
}
