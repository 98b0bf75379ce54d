//! Stacks: an application's services from Compose files, deployed,
//! listed and removed together (`berthctl stack deploy -c FILE NAME`,
//! `stack ls`, `stack services NAME`, `stack ps NAME`, `stack rm NAME`).
//! A stack is its services' names: `NAME_SERVICE`, as Swarm names them;
//! the cluster keeps nothing else about it. Its tasks find each other by
//! the file's short names (`db`): their resolver searches the stack's
//! names first. Secrets and configs the file makes are `NAME_KEY` too
//! (unless named or external); volumes likewise, made by nodes on first use.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_proto::model::{stack_of, FileKind, Service, TaskInfo};
use berth_proto::pb::cluster as pb;
use serde_json::json;

use crate::client::Client;
use crate::compose::{self, Report, Source};
use crate::output::{table, Format};

/// What `stack deploy` was asked.
pub struct Deploy {
    pub files: Vec<String>,
    pub name: String,
    pub prune: bool,
    pub strict: bool,
    pub no_resolve_image: bool,
    pub detach: bool,
}

/// Reads the files, makes the secrets and configs they hold, then applies
/// each service (those it depends on first): a service whose spec is the
/// same is left alone, a changed one rolls out by its update config. With
/// `prune`, the stack's services the files no longer have are removed.
pub async fn deploy(client: &Client, d: Deploy) -> Result<String> {
    let mut sources = Vec::new();
    for f in &d.files {
        sources.push(Source { name: f.clone(), text: crate::read_file(f, "the file")? });
    }
    // The project's directory: the first file's, as Compose has it.
    let dir = match d.files.iter().find(|f| *f != "-").map(|f| Path::new(f).parent()) {
        Some(Some(p)) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Absolute: a relative bind's source is a path on the nodes.
    let dir = std::path::absolute(&dir).with_context(|| format!("the project's directory {}", dir.display()))?;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut report = Report::default();
    let stack = compose::load(&sources, &d.name, &dir, &env, &mut report)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if !report.unsupported.is_empty() {
        let list = report.unsupported.iter().map(|u| format!("  {u}\n")).collect::<String>();
        if d.strict {
            bail!("the file has what berth does not support (--strict):\n{list}");
        }
        eprintln!("ignoring what berth does not support (--strict refuses it):\n{list}");
    }
    let mut out = String::new();
    for kind in [FileKind::Secret, FileKind::Config] {
        let had: BTreeSet<String> = crate::files::list(client, kind).await?.into_iter().map(|f| f.name).collect();
        for f in stack.files.iter().filter(|f| f.kind == kind) {
            let what = kind.as_str();
            match crate::files::store(client, kind, &f.name, f.data.clone()).await {
                Ok(_) if had.contains(&f.name) => {}
                Ok(_) => writeln!(out, "{what} {} created", f.name)?,
                Err(e) if had.contains(&f.name) && e.to_string().contains("already exists") => bail!(
                    "{what} {} exists with another value, and a {what} never changes: give it a new name in the \
                     file (name: {}_v2) and deploy again; the services roll to it ({e:#})",
                    f.name,
                    f.name
                ),
                Err(e) => return Err(e),
            }
        }
    }
    let (mut done, mut in_file) = (Vec::new(), BTreeSet::new());
    for spec in stack.services {
        let name = spec.name.clone();
        in_file.insert(name.clone());
        let req = pb::ApplyServiceRequest { spec: Some(spec), no_resolve_image: d.no_resolve_image };
        let reply =
            client.call(&format!("apply service {name}"), async |mut c| c.apply_service(req.clone()).await).await?;
        crate::warn(&reply.warnings);
        let svc = crate::to_model(reply.service)?;
        match reply.outcome.as_str() {
            "unchanged" => writeln!(out, "service {name} unchanged (version {})", svc.version)?,
            _ => done.push((name, svc.version, reply.outcome)),
        }
    }
    let left: Vec<String> = services(client, &d.name).await?.into_iter().map(|s| s.spec.name).collect();
    for gone in left.iter().filter(|n| !in_file.contains(*n)) {
        match d.prune {
            true => {
                let req = pb::DeleteServiceRequest { name: gone.clone() };
                client.call("remove service", async |mut c| c.delete_service(req.clone()).await).await?;
                writeln!(out, "service {gone} removed (--prune)")?;
            }
            false => writeln!(out, "service {gone} is no longer in the file; --prune removes it")?,
        }
    }
    print!("{out}");
    if done.is_empty() {
        return Ok(format!("stack {}: nothing changed\n", d.name));
    }
    crate::converge(client, &done, d.detach).await
}

/// The stack's services, by name.
async fn services(client: &Client, stack: &str) -> Result<Vec<Service>> {
    let all = crate::list_services(client, false).await?;
    Ok(all.into_iter().filter(|s| stack_of(&s.spec.name).is_some_and(|(of, _)| of == stack)).collect())
}

/// Every stack and how many services it has.
pub async fn ls(client: &Client, fmt: Format) -> Result<String> {
    let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
    for s in crate::list_services(client, false).await? {
        if let Some((stack, _)) = stack_of(&s.spec.name) {
            *stacks.entry(stack.to_owned()).or_default() += 1;
        }
    }
    Ok(match fmt {
        Format::Json => {
            let list: Vec<_> = stacks.iter().map(|(name, n)| json!({"name": name, "services": n})).collect();
            serde_json::to_string_pretty(&list)? + "\n"
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = stacks.into_iter().map(|(name, n)| vec![name, n.to_string()]).collect();
            table(&["NAME", "SERVICES"], &rows)
        }
    })
}

/// The stack's services, as `service ls` shows them.
pub async fn list(client: &Client, stack: &str, fmt: Format) -> Result<String> {
    let list = services(client, stack).await?;
    if list.is_empty() {
        bail!("nothing found in stack {stack}");
    }
    Ok(crate::output::services(&list, fmt))
}

/// The tasks of every service of the stack, as `service ps` shows them.
pub async fn ps(client: &Client, stack: &str, fmt: Format) -> Result<String> {
    let list = services(client, stack).await?;
    if list.is_empty() {
        bail!("nothing found in stack {stack}");
    }
    let mut tasks: Vec<TaskInfo> = Vec::new();
    for s in &list {
        tasks.extend(crate::list_tasks(client, &s.spec.name, false).await?);
    }
    Ok(crate::output::tasks(&tasks, fmt, std::time::SystemTime::now()))
}

/// Removes the stack's services, then the secrets and configs they used
/// that the stack named (`STACK_...`: one made by hand under another name,
/// or an external one, stays), as `docker stack rm` does; volumes stay,
/// with their data. A removal that fails is told, and the rest go on.
pub async fn rm(client: &Client, stack: &str) -> Result<String> {
    let list = services(client, stack).await?;
    if list.is_empty() {
        bail!("nothing found in stack {stack}");
    }
    let (mut out, mut failed) = (String::new(), Vec::new());
    let mut used: BTreeSet<(FileKind, String)> = BTreeSet::new();
    for s in &list {
        used.extend(s.spec.overrides.options.files().map(|(kind, r)| (kind, r.source.clone())));
        let req = pb::DeleteServiceRequest { name: s.spec.name.clone() };
        match client.call("remove service", async |mut c| c.delete_service(req.clone()).await).await {
            Ok(_) => writeln!(out, "service {} removed", s.spec.name)?,
            Err(e) => failed.push(format!("service {}: {e:#}", s.spec.name)),
        }
    }
    for (kind, name) in used.iter().filter(|(_, n)| stack_of(n).is_some_and(|(of, _)| of == stack)) {
        match crate::files::rm(client, *kind, std::slice::from_ref(name)).await {
            Ok(said) => out.push_str(&said),
            Err(e) => failed.push(format!("{} {name}: {e:#}", kind.as_str())),
        }
    }
    if !failed.is_empty() {
        print!("{out}");
        bail!("stack {stack} is not all removed:\n  {}", failed.join("\n  "));
    }
    Ok(out)
}
