//! `berthctl volume ls [--node N]`, `volume inspect NAME`, `volume rm NAME
//! [--node N]`: the named volumes the nodes keep, where they are, and
//! which tasks mount them.

use std::fmt::Write as _;
use std::time::SystemTime;

use anyhow::{bail, Result};
use berth_proto::pb::cluster as pb;
use serde_json::json;

use crate::client::Client;
use crate::output::{ago, table, Format};

async fn list(client: &Client, node: Option<String>) -> Result<Vec<pb::Volume>> {
    let req = pb::ListVolumesRequest { node: node.unwrap_or_default() };
    Ok(client.call("list volumes", async |mut c| c.list_volumes(req.clone()).await).await?.volumes)
}

fn as_json(v: &pb::Volume) -> serde_json::Value {
    json!({"name": v.name, "node": v.node, "node_id": v.node_id, "created_at_ms": v.created_at_ms, "used_by": v.used_by})
}

pub async fn ls(client: &Client, node: Option<String>, fmt: Format) -> Result<String> {
    let volumes = list(client, node).await?;
    Ok(match fmt {
        Format::Json => format!("{:#}\n", json!(volumes.iter().map(as_json).collect::<Vec<_>>())),
        Format::Table => {
            let now = SystemTime::now();
            let rows: Vec<Vec<String>> = volumes
                .iter()
                .map(|v| {
                    let users = if v.used_by.is_empty() { "-".into() } else { v.used_by.join(",") };
                    vec![v.name.clone(), v.node.clone(), ago(v.created_at_ms, now), users]
                })
                .collect();
            table(&["NAME", "NODE", "CREATED", "USED BY"], &rows)
        }
    })
}

pub async fn inspect(client: &Client, name: &str, fmt: Format) -> Result<String> {
    let found: Vec<pb::Volume> = list(client, None).await?.into_iter().filter(|v| v.name == name).collect();
    if found.is_empty() {
        bail!("volume {name} not found; `berthctl volume ls` lists them");
    }
    if fmt == Format::Json {
        return Ok(format!("{:#}\n", json!(found.iter().map(as_json).collect::<Vec<_>>())));
    }
    let now = SystemTime::now();
    let mut out = String::new();
    for v in &found {
        let _ = writeln!(out, "{:<10}{}", "Name:", v.name);
        let _ = writeln!(out, "{:<10}{} ({})", "Node:", v.node, v.node_id);
        let _ = writeln!(out, "{:<10}{}", "Created:", ago(v.created_at_ms, now));
        let users = if v.used_by.is_empty() { "-".into() } else { v.used_by.join(", ") };
        let _ = writeln!(out, "{:<10}{users}", "Used by:");
    }
    Ok(out)
}

pub async fn rm(client: &Client, name: &str, node: Option<String>) -> Result<String> {
    let req = pb::DeleteVolumeRequest { name: name.to_owned(), node: node.unwrap_or_default() };
    let reply = client.call("remove volume", async |mut c| c.delete_volume(req.clone()).await).await?;
    Ok(format!("volume {name} removed from {}\n", reply.nodes.join(", ")))
}
