//! Compose files as a berth stack (`berthctl stack deploy -c FILE NAME`).
//!
//! Our own loader on `serde_yaml_ng::Value`, which berth already uses: no
//! Rust Compose crate interpolates, reads `.env`, merges several files by
//! the specification's rules or knows `!reset`/`!override`, and the two
//! that model the file pull in the deprecated `serde_yaml` besides. So:
//!
//! ```text
//! each -c file ─▶ YAML (a syntax error names its line) ─▶ << merge keys
//!              ─▶ ${VAR} from the environment over .env (interpolate)
//!              ─▶ merged into the files before it (merge)
//! the whole    ─▶ top-level volumes, secrets, configs: their berth names
//!              ─▶ each service as a spec named STACK_SERVICE (service)
//!              ─▶ ordered so a service comes after what it depends on
//! ```
//!
//! Relative paths (`.env`, `env_file`, secret and config files, binds) are
//! from the project's directory, the first file's, as in Compose.
//! Keys berth does not do are reported with their path and why; `--strict`
//! makes them errors.

pub mod interpolate;
pub mod merge;
pub mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use berth_proto::model::FileKind;
use berth_proto::pb::cluster as pb;
#[cfg(test)]
use berth_proto::pb::cluster::health_check::Probe;
use serde_yaml_ng::{Mapping, Value};

use interpolate::Vars;
use merge::{kind, scalar};

/// What berth set aside or doubted while reading the files.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Keys berth does not do, each as `PATH: why`.
    pub unsupported: Vec<String>,
    /// Anything else worth saying (a variable that is not set).
    pub warnings: Vec<String>,
}

/// A secret or config the stack makes from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFile {
    pub kind: FileKind,
    pub name: String,
    pub data: Vec<u8>,
}

/// A file read as a stack.
#[derive(Debug)]
pub struct Stack {
    /// Each service after those it depends on.
    pub services: Vec<pb::ServiceSpec>,
    /// Secrets and configs to make (those not external).
    pub files: Vec<NewFile>,
}

/// One `-c` file: what people call it (for messages) and its text.
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Reads `sources` (merged in order) as the stack `stack`, with `env` (the
/// process's environment) over the `.env` in `dir`, the project's directory.
pub fn load(sources: &[Source], stack: &str, dir: &Path, env: &Vars, report: &mut Report) -> Result<Stack> {
    berth_proto::model::validate_name(stack).map_err(|e| anyhow!("the stack's {e}"))?;
    let mut vars = BTreeMap::new();
    let dotenv = dir.join(".env");
    match std::fs::read_to_string(&dotenv) {
        Ok(text) => vars.extend(interpolate::env_file(&text, env, ".env", &mut report.warnings)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot read {}: {e}", dotenv.display()),
    }
    vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // As Compose gives it: the project's name, here the stack's.
    vars.entry("COMPOSE_PROJECT_NAME".into()).or_insert_with(|| stack.to_owned());
    let mut whole = Value::Mapping(Mapping::new());
    for s in sources {
        let mut file: Value = serde_yaml_ng::from_str(&s.text).map_err(|e| anyhow!("{}: {e}", s.name))?;
        if file.is_null() {
            continue;
        }
        file.apply_merge().map_err(|e| anyhow!("{}: {e}", s.name))?;
        interpolate::value(&mut file, &vars, "", &mut report.warnings).with_context(|| s.name.clone())?;
        merge::merge(&mut whole, file, "").with_context(|| s.name.clone())?;
    }
    let Value::Mapping(top) = merge::untag(whole) else { bail!("a Compose file is a map of keys") };
    let keys = ["services", "volumes", "secrets", "configs", "networks", "version", "name"];
    let unsupported = [("include", "give each file with -c"), ("models", "berth runs containers only")];
    service::check_keys(&top, "", &keys, &unsupported, report)?;
    if let Some(n) = top.get("networks").and_then(Value::as_mapping) {
        if n.keys().any(|k| k.as_str() != Some("default")) {
            report.unsupported.push(
                "networks: berth has one overlay network, where every service reaches every other; the networks \
                 are ignored"
                    .into(),
            );
        }
    }
    let section = |k: &str| -> Result<Mapping> {
        match top.get(k) {
            None | Some(Value::Null) => Ok(Mapping::new()),
            Some(Value::Mapping(m)) => Ok(m.clone()),
            Some(other) => bail!("{k}: expected a map, got {}", kind(other)),
        }
    };
    let services = section("services")?;
    if services.is_empty() {
        bail!("services: the file has none");
    }
    let mut files = Vec::new();
    let names = service::Names {
        stack,
        volumes: volumes(&section("volumes")?, stack, report)?,
        secrets: file_names(FileKind::Secret, &section("secrets")?, stack, dir, &vars, &mut files, report)?,
        configs: file_names(FileKind::Config, &section("configs")?, stack, dir, &vars, &mut files, report)?,
        services: services.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect(),
        dir,
        vars: &vars,
    };
    let mut specs = Vec::new();
    for (name, s) in &services {
        let name = name.as_str().ok_or_else(|| anyhow!("services: {name:?} is not a name"))?;
        let spec = service::spec(name, s, &names, report)?;
        crate::spec::check(&spec).with_context(|| format!("services.{name}"))?;
        specs.push(spec);
    }
    Ok(Stack { services: ordered(specs)?, files })
}

/// The top-level `volumes`: a volume is the stack's (`STACK_NAME`) unless
/// it is external or named.
fn volumes(section: &Mapping, stack: &str, report: &mut Report) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (key, v) in section {
        let key = key.as_str().ok_or_else(|| anyhow!("volumes: {key:?} is not a name"))?.to_owned();
        let at = format!("volumes.{key}");
        let m = match v {
            Value::Null => Mapping::new(),
            Value::Mapping(m) => m.clone(),
            other => bail!("{at}: expected a map, got {}", kind(other)),
        };
        let unsupported = [("driver_opts", "berth's volumes are directories on their node"), ("labels", "not kept")];
        service::check_keys(&m, &at, &["external", "name", "driver"], &unsupported, report)?;
        if let Some(driver) = m.get("driver").and_then(Value::as_str).filter(|d| *d != "local") {
            report.unsupported.push(format!("{at}.driver: {driver}: berth's volumes are local to their node"));
        }
        out.insert(key.clone(), berth_name(&m, &key, stack, &at)?.0);
    }
    Ok(out)
}

/// The name berth knows a top-level entry by, and whether it is external.
fn berth_name(m: &Mapping, key: &str, stack: &str, at: &str) -> Result<(String, bool)> {
    let external = match m.get("external") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => bail!("{at}.external: expected true or false, got {other:?}"),
    };
    let name = match m.get("name") {
        Some(n) => scalar(n).ok_or_else(|| anyhow!("{at}.name: expected text"))?,
        None if external => key.to_owned(),
        None => format!("{stack}_{key}"),
    };
    Ok((name, external))
}

/// The top-level `secrets` or `configs`: the value of each one the stack
/// makes (from `file`, `environment` or, for a config, `content`) goes on
/// `files`; an external one must exist already.
fn file_names(
    kind: FileKind,
    section: &Mapping,
    stack: &str,
    dir: &Path,
    vars: &Vars,
    files: &mut Vec<NewFile>,
    report: &mut Report,
) -> Result<BTreeMap<String, String>> {
    let top = format!("{}s", kind.as_str());
    let mut out = BTreeMap::new();
    for (key, v) in section {
        let key = key.as_str().ok_or_else(|| anyhow!("{top}: {key:?} is not a name"))?.to_owned();
        let at = format!("{top}.{key}");
        let Value::Mapping(m) = v else { bail!("{at}: expected a map with file, environment or external") };
        let mut keys = vec!["file", "environment", "external", "name"];
        if kind == FileKind::Config {
            keys.push("content");
        }
        let unsupported = [
            ("driver", "berth stores them itself"),
            ("driver_opts", "berth stores them itself"),
            ("template_driver", "values are used as they are"),
            ("labels", "not kept"),
        ];
        service::check_keys(m, &at, &keys, &unsupported, report)?;
        let (name, external) = berth_name(m, &key, stack, &at)?;
        let text = |k: &str| m.get(k).map(|v| scalar(v).ok_or_else(|| anyhow!("{at}.{k}: expected text")));
        let data = match (text("file"), text("environment"), text("content")) {
            _ if external => None,
            (Some(file), None, None) => {
                let path = dir.join(file?);
                Some(std::fs::read(&path).with_context(|| format!("{at}.file: cannot read {}", path.display()))?)
            }
            (None, Some(var), None) => {
                let var = var?;
                Some(
                    vars.get(&var)
                        .ok_or_else(|| anyhow!("{at}.environment: the variable {var} is not set"))?
                        .as_bytes()
                        .to_vec(),
                )
            }
            (None, None, Some(content)) => Some(content?.into_bytes()),
            _ => bail!(
                "{at}: give one of file, environment{} or external: true",
                if kind == FileKind::Config { ", content" } else { "" }
            ),
        };
        if let Some(data) = data {
            files.push(NewFile { kind, name: name.clone(), data });
        }
        out.insert(key, name);
    }
    Ok(out)
}

/// The specs in an order where each comes after those it depends on (as
/// written otherwise); a cycle is an error that names it.
fn ordered(specs: Vec<pb::ServiceSpec>) -> Result<Vec<pb::ServiceSpec>> {
    let deps = |s: &pb::ServiceSpec| -> Vec<String> {
        let options = s.overrides.as_ref().and_then(|o| o.options.as_ref());
        options.map(|o| o.depends_on.iter().map(|d| d.service.clone()).collect()).unwrap_or_default()
    };
    let mut left = specs;
    let (mut out, mut placed) = (Vec::new(), BTreeSet::new());
    while !left.is_empty() {
        let ready = left.iter().position(|s| deps(s).iter().all(|d| placed.contains(d)));
        let Some(i) = ready else {
            let names: Vec<&str> = left.iter().map(|s| s.name.as_str()).collect();
            bail!("depends_on: {} wait for each other, so none would ever start", names.join(", "));
        };
        let spec = left.remove(i);
        placed.insert(spec.name.clone());
        out.push(spec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
