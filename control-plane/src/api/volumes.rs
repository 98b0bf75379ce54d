//! `volume ls` and `volume rm`. The nodes' agents keep the volumes; the
//! cluster knows them as the agents tell (`State::volumes`). A removal is
//! refused while a task meant to run on that node mounts the volume (in
//! the state), then asked of each node's agent (`Node.RemoveVolume`),
//! which refuses it while any container of its own mounts it, and answers
//! its volumes after; that list is written at once, so `volume ls` right
//! after shows the removal.

use std::sync::Arc;

use berth_proto::model::{volume_name_ok, InvalidField, NodeStatus, VolumeInfo};
use berth_proto::pb::agent::node_client::NodeClient;
use berth_proto::pb::agent::RemoveVolumeRequest;
use berth_proto::pb::cluster::{DeleteVolumeReply, DeleteVolumeRequest, ListVolumesReply, ListVolumesRequest, Volume};
use tonic::Status;

use super::levels::Levels;
use crate::node::Node;
use crate::state::{Command, Query, QueryReply, Response as Applied};

/// Volumes are read and written only once every member knows them.
async fn ready(node: &Node, levels: &Levels) -> Result<(), Status> {
    levels.require(node, 2, "volumes").await
}

async fn volumes(node: &Node, on: &str) -> Result<Vec<VolumeInfo>, Status> {
    let all = match node.read(Query::ListVolumes, false).await? {
        QueryReply::Volumes(v) => v,
        other => return Err(Status::internal(format!("unexpected query reply {other:?}"))),
    };
    if !on.is_empty() {
        match node.read(Query::GetNode(on.to_owned()), false).await? {
            QueryReply::Node(Some(_)) => {}
            _ => return Err(crate::state::Rejection::NodeNotFound(on.to_owned()).into()),
        }
    }
    Ok(all.into_iter().filter(|v| on.is_empty() || v.node == on || v.node_id == on).collect())
}

pub async fn list(node: &Node, levels: &Levels, req: ListVolumesRequest) -> Result<ListVolumesReply, Status> {
    ready(node, levels).await?;
    let volumes = volumes(node, &req.node).await?;
    Ok(ListVolumesReply {
        volumes: volumes
            .into_iter()
            .map(|v| Volume {
                name: v.name,
                node_id: v.node_id,
                node: v.node,
                created_at_ms: v.created_at_ms,
                used_by: v.used_by,
            })
            .collect(),
    })
}

pub async fn delete(node: &Arc<Node>, levels: &Levels, req: DeleteVolumeRequest) -> Result<DeleteVolumeReply, Status> {
    if !volume_name_ok(&req.name) {
        let why = InvalidField::new(
            "name",
            &req.name,
            "a volume name: a letter or digit, then letters, digits, '_', '.' or '-'",
        );
        return Err(Status::invalid_argument(why.to_string()));
    }
    ready(node, levels).await?;
    let found: Vec<VolumeInfo> = volumes(node, &req.node).await?.into_iter().filter(|v| v.name == req.name).collect();
    if found.is_empty() {
        let on = if req.node.is_empty() { String::new() } else { format!(" on node {}", req.node) };
        return Err(Status::not_found(format!("volume {}{on} not found; `berthctl volume ls` lists them", req.name)));
    }
    if let Some(v) = found.iter().find(|v| !v.used_by.is_empty()) {
        return Err(Status::failed_precondition(format!(
            "volume {} on node {} is in use by {}; remove or change what mounts it first",
            v.name,
            v.node,
            v.used_by.join(", ")
        )));
    }
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    for v in found {
        match remove_on(node, &v).await {
            Ok(()) => removed.push(v.node),
            Err(why) => failed.push(format!("node {}: {why}", v.node)),
        }
    }
    if !failed.is_empty() {
        let done = match removed.is_empty() {
            true => String::new(),
            false => format!(" (removed from {})", removed.join(", ")),
        };
        return Err(Status::failed_precondition(format!(
            "volume {} could not be removed{done}: {}",
            req.name,
            failed.join("; ")
        )));
    }
    Ok(DeleteVolumeReply { nodes: removed })
}

/// Asks the volume's node to remove it, and records the node's volumes after.
async fn remove_on(node: &Arc<Node>, v: &VolumeInfo) -> Result<(), String> {
    let target = match node.read(Query::GetNode(v.node_id.clone()), false).await {
        Ok(QueryReply::Node(Some(info))) => info.node,
        _ => return Err("the node is gone".into()),
    };
    if target.status != NodeStatus::Ready {
        return Err("it is down, so its volume cannot be removed now".into());
    }
    let channel = node.peers.agent(&target.address).map_err(|e| e.message().to_owned())?;
    let reply = NodeClient::new(channel)
        .remove_volume(RemoveVolumeRequest { name: v.name.clone() })
        .await
        .map_err(|s| berth_proto::client::reason(&s))?
        .into_inner();
    let volumes = super::agent::volumes_from(reply.volumes).map_err(|s| s.message().to_owned())?;
    match node.write(Command::ReportVolumes { node: target.id, volumes }).await {
        Ok(Applied::Rejected(r)) => Err(r.to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
