//! `cluster join-token` and `user`: who may reach the cluster.

use anyhow::{Context as _, Result};
use berth_proto::contexts::{ClientConfig, Context};
use berth_proto::pb::cluster as pb;
use berth_proto::pki::Request;

use crate::client::Client;
use crate::output::Format;

/// The token for `role`, after a rotation if asked; with `quiet` the token
/// alone, else the whole command that joins a host.
pub async fn join_token(client: &Client, role: &str, rotate: bool, quiet: bool) -> Result<String> {
    let req = pb::JoinTokenRequest { role: role.to_owned(), rotate };
    let reply = client.call("join token", async |mut c| c.join_token(req.clone()).await).await?;
    if quiet {
        return Ok(format!("{}\n", reply.token));
    }
    let servers = reply.servers.join(",");
    let mut out = String::new();
    if rotate {
        out.push_str(&format!("The {role} join token was rotated: the old one no longer admits anyone.\n\n"));
    }
    out.push_str(&match role {
        "server" => format!(
            "To add a server to this cluster, run on its host:\n\n    berth-server --data-dir DIR --listen ADDR:7400 --join {} --token {}\n\n\
             (ADDR: the host's address, which the other servers reach it at.)\n",
            reply.servers.first().map_or("SERVER", String::as_str),
            reply.token
        ),
        _ => format!("To add a worker to this cluster, run on its host:\n\n    berth-agent --server {servers} --token {}\n", reply.token),
    });
    Ok(out)
}

/// A new user's credential, as a config file of one context: the key is
/// made here and never sent.
pub async fn add_user(client: &Client, context: &Context, name: &str, access: &str) -> Result<String> {
    let request = Request::new()?;
    let req = pb::AddUserRequest { name: name.to_owned(), access: access.to_owned(), csr: request.csr.clone() };
    let reply = client.call("add user", async |mut c| c.add_user(req.clone()).await).await?;
    let servers = if reply.servers.is_empty() { context.servers.clone() } else { reply.servers };
    let creds =
        request.complete(reply.certificate_chain, reply.roots).context("the server sent an invalid certificate")?;
    let context = Context {
        name: context.name.clone(),
        servers,
        user: name.to_owned(),
        ca: creds.roots,
        certificate: creds.chain,
        key: creds.key,
    };
    Ok(ClientConfig::single(context).to_toml())
}

pub async fn list_users(client: &Client, fmt: Format) -> Result<String> {
    let reply = client.call("list users", async |mut c| c.list_users(pb::ListUsersRequest {}).await).await?;
    Ok(match fmt {
        Format::Json => {
            let users: Vec<_> = reply
                .users
                .iter()
                .map(|u| serde_json::json!({"name": u.name, "role": u.access, "fingerprint": u.fingerprint}))
                .collect();
            format!("{}\n", serde_json::to_string_pretty(&users)?)
        }
        Format::Table => {
            let mut out = format!("{:<24} {:<10} {}\n", "NAME", "ROLE", "CERTIFICATE");
            for u in &reply.users {
                out.push_str(&format!(
                    "{:<24} {:<10} {}\n",
                    u.name,
                    u.access,
                    &u.fingerprint[..u.fingerprint.len().min(16)]
                ));
            }
            out
        }
    })
}

pub async fn remove_user(client: &Client, name: &str) -> Result<String> {
    let req = pb::RemoveUserRequest { name: name.to_owned() };
    client.call("remove user", async |mut c| c.remove_user(req.clone()).await).await?;
    Ok(format!("user {name} removed: its credential no longer works\n"))
}
