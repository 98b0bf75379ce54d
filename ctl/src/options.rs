//! Container options as people write them: `service create --label,
//! --add-host, --dns, --dns-search, --dns-option, --ulimit, --tmpfs, --mount,
//! --restart-max-attempts, --restart-window` (as `docker service create`
//! spells them), `--pull` (as `docker run`), and the same keys in a spec
//! file, into the wire's
//! `Options`. The server checks the values.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use berth_proto::pb::cluster as pb;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::health::duration_value;
use crate::spec::{duration_ms, memory};
use crate::{files, mounts};

#[derive(Debug, Default, clap::Args)]
pub struct OptionsFlags {
    /// KEY=VALUE label of the service and its containers (repeatable)
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// NAME:ADDRESS line for the containers' /etc/hosts (repeatable)
    #[arg(long = "add-host", value_name = "NAME:ADDRESS")]
    add_host: Vec<String>,
    /// A nameserver in place of the node's (repeatable)
    #[arg(long = "dns", value_name = "ADDRESS")]
    dns: Vec<String>,
    /// A search domain in place of the node's (repeatable)
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    dns_search: Vec<String>,
    /// A resolv.conf option such as ndots:2 (repeatable)
    #[arg(long = "dns-option", value_name = "OPTION")]
    dns_option: Vec<String>,
    /// NAME=SOFT[:HARD] resource limit, e.g. nofile=1024:2048 (repeatable)
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimit: Vec<String>,
    /// PATH[:size=SIZE] memory filesystem in each container, e.g. /cache:size=64Mi (repeatable)
    #[arg(long = "tmpfs", value_name = "PATH[:size=SIZE]")]
    tmpfs: Vec<String>,
    /// type=volume|bind|tmpfs,source=NAME|PATH,target=PATH[,readonly]: a named
    /// volume kept on the node (made on first use), a host path, or memory
    /// (repeatable); NAME may hold {{.Task.Slot}} for a volume per replica;
    /// volume-pin: its task runs only where the volume is; volume-exclusive:
    /// never two copies at once, even across a partition
    #[arg(long = "mount", value_name = "type=T,source=S,target=PATH")]
    mount: Vec<String>,
    /// NAME, or source=NAME,target=PATH,uid=U,gid=G,mode=0400: a secret as a
    /// read-only file in memory, at /run/secrets/NAME by default (repeatable)
    #[arg(long = "secret", value_name = "SECRET")]
    secret: Vec<String>,
    /// The same for a config, at /NAME by default (repeatable)
    #[arg(long = "config", value_name = "CONFIG")]
    config: Vec<String>,
    /// Restarts after which a task's node gives up (default: never)
    #[arg(long, value_name = "N")]
    restart_max_attempts: Option<u32>,
    /// Restarts count within this window, e.g. 1m (default: all of them)
    #[arg(long, value_name = "DURATION")]
    restart_window: Option<String>,
    /// When a node asks the registry for the image: missing (default: only
    /// when it does not have it), always (every start) or never
    #[arg(long, value_name = "POLICY")]
    pull: Option<String>,
}

impl OptionsFlags {
    pub fn to_pb(&self) -> Result<Option<pb::Options>> {
        let parsed = self.mount.iter().map(|m| mounts::flag(m).context("--mount")).collect::<Result<_>>()?;
        let (mounts, mut tmpfs) = mounts::split(parsed);
        tmpfs.splice(0..0, self.tmpfs.iter().map(|t| tmpfs_flag(t).context("--tmpfs")).collect::<Result<Vec<_>>>()?);
        let options = pb::Options {
            labels: self
                .labels
                .iter()
                .map(|l| {
                    l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).unwrap_or((l.clone(), String::new()))
                })
                .collect(),
            extra_hosts: self.add_host.clone(),
            dns: self.dns.clone(),
            dns_search: self.dns_search.clone(),
            dns_options: self.dns_option.clone(),
            ulimits: self.ulimit.iter().map(|u| ulimit_flag(u).context("--ulimit")).collect::<Result<_>>()?,
            tmpfs,
            mounts,
            secrets: self.secret.iter().map(|t| files::flag(t).context("--secret")).collect::<Result<_>>()?,
            configs: self.config.iter().map(|t| files::flag(t).context("--config")).collect::<Result<_>>()?,
            restart_max_attempts: self.restart_max_attempts,
            restart_window_ms: self
                .restart_window
                .as_deref()
                .map(duration_ms)
                .transpose()
                .context("--restart-window")?,
            pull: self.pull.clone().unwrap_or_default(),
            depends_on: vec![],
        };
        Ok(Some(options).filter(|o| *o != pb::Options::default()))
    }
}

/// `NAME=SOFT[:HARD]` (HARD is SOFT when left out).
fn ulimit_flag(text: &str) -> Result<(String, pb::Ulimit)> {
    let bad = || anyhow!("{text:?}: expected NAME=SOFT[:HARD] such as nofile=1024:2048");
    let (name, limits) = text.split_once('=').ok_or_else(bad)?;
    let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
    Ok((name.to_owned(), pb::Ulimit { soft: soft.parse().map_err(|_| bad())?, hard: hard.parse().map_err(|_| bad())? }))
}

/// `PATH[:size=SIZE]`.
fn tmpfs_flag(text: &str) -> Result<pb::Tmpfs> {
    let (target, rest) = text.split_once(':').unwrap_or((text, ""));
    let size_bytes = match rest {
        "" => None,
        rest => {
            let size = rest
                .strip_prefix("size=")
                .ok_or_else(|| anyhow!("{text:?}: expected PATH[:size=SIZE] such as /cache:size=64Mi"))?;
            Some(u64::try_from(memory(size)?).map_err(|_| anyhow!("{text:?}: the size is negative"))?)
        }
    };
    Ok(pb::Tmpfs { target: target.to_owned(), size_bytes })
}

/// The same in a spec file (keys at the top level of a service).
#[derive(Debug, Default, Deserialize)]
pub struct OptionsFile {
    pub labels: Option<BTreeMap<String, String>>,
    /// `[db.internal:198.18.0.5]` or `{db.internal: 198.18.0.5}`.
    pub extra_hosts: Option<Value>,
    pub dns: Option<Vec<String>>,
    pub dns_search: Option<Vec<String>>,
    pub dns_options: Option<Vec<String>>,
    /// `{nofile: 1024}` or `{nofile: {soft: 1024, hard: 2048}}`.
    pub ulimits: Option<BTreeMap<String, Value>>,
    /// `[/run, {target: /cache, size: 64Mi}]`.
    pub tmpfs: Option<Vec<Value>>,
    /// `[data:/data, /srv/conf:/conf:ro, {type: volume, source: data, target: /data}]`.
    pub volumes: Option<Vec<Value>>,
    /// `[db_password, {source: tls, target: /etc/tls.key, mode: 0400}]`.
    pub secrets: Option<Vec<Value>>,
    pub configs: Option<Vec<Value>>,
    pub restart_max_attempts: Option<u32>,
    pub restart_window: Option<Value>,
    /// `always`, `missing` or `never`.
    pub pull: Option<String>,
}

impl OptionsFile {
    pub fn into_wire(self) -> Result<Option<pb::Options>> {
        let extra_hosts = match self.extra_hosts {
            None => vec![],
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_owned).ok_or_else(|| anyhow!("extra_hosts: expected NAME:ADDRESS strings"))
                })
                .collect::<Result<_>>()?,
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| match (k.as_str(), v.as_str()) {
                    (Some(k), Some(v)) => Ok(format!("{k}:{v}")),
                    _ => bail!("extra_hosts: expected NAME: ADDRESS pairs"),
                })
                .collect::<Result<_>>()?,
            Some(other) => bail!("extra_hosts: expected a list of NAME:ADDRESS or a map, got {other:?}"),
        };
        let ulimits = self
            .ulimits
            .unwrap_or_default()
            .into_iter()
            .map(|(name, v)| {
                let limit = match &v {
                    Value::Number(n) => n.as_u64().map(|n| pb::Ulimit { soft: n, hard: n }),
                    Value::Mapping(m) => {
                        let get = |k: &str| m.get(k).and_then(Value::as_u64);
                        get("soft").zip(get("hard")).map(|(soft, hard)| pb::Ulimit { soft, hard })
                    }
                    _ => None,
                };
                let limit =
                    limit.ok_or_else(|| anyhow!("ulimits.{name}: expected a number or {{soft: N, hard: N}}"))?;
                Ok((name, limit))
            })
            .collect::<Result<_>>()?;
        let volumes = self.volumes.unwrap_or_default();
        let parsed = volumes.iter().enumerate().map(|(i, v)| mounts::entry(i, v)).collect::<Result<_>>()?;
        let (mounts, from_volumes) = mounts::split(parsed);
        let mut tmpfs: Vec<pb::Tmpfs> = self
            .tmpfs
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::String(path) => Ok(pb::Tmpfs { target: path.clone(), size_bytes: None }),
                Value::Mapping(m) => {
                    let target =
                        m.get("target").and_then(Value::as_str).ok_or_else(|| anyhow!("tmpfs[{i}]: no target"))?;
                    let size_bytes = match m.get("size") {
                        None => None,
                        Some(Value::Number(n)) => n.as_u64(),
                        Some(Value::String(s)) => {
                            Some(u64::try_from(memory(s)?).map_err(|_| anyhow!("tmpfs[{i}].size: negative"))?)
                        }
                        Some(other) => bail!("tmpfs[{i}].size: expected a size such as 64Mi, got {other:?}"),
                    };
                    Ok(pb::Tmpfs { target: target.to_owned(), size_bytes })
                }
                other => bail!("tmpfs[{i}]: expected a path or {{target, size}}, got {other:?}"),
            })
            .collect::<Result<_>>()?;
        tmpfs.extend(from_volumes);
        let refs = |field: &str, list: Option<Vec<Value>>| -> Result<Vec<pb::FileRef>> {
            list.unwrap_or_default().iter().enumerate().map(|(i, v)| files::entry(field, i, v)).collect()
        };
        let (secrets, configs) = (refs("secrets", self.secrets)?, refs("configs", self.configs)?);
        let options = pb::Options {
            labels: self.labels.unwrap_or_default().into_iter().collect(),
            extra_hosts,
            dns: self.dns.unwrap_or_default(),
            dns_search: self.dns_search.unwrap_or_default(),
            dns_options: self.dns_options.unwrap_or_default(),
            ulimits,
            tmpfs,
            mounts,
            secrets,
            configs,
            restart_max_attempts: self.restart_max_attempts,
            restart_window_ms: duration_value(self.restart_window).context("restart_window")?,
            pull: self.pull.unwrap_or_default(),
            depends_on: vec![],
        };
        Ok(Some(options).filter(|o| *o != pb::Options::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_docker_writes_them() {
        let flags = OptionsFlags {
            labels: vec!["team=web".into(), "canary".into()],
            ulimit: vec!["nofile=1024:2048".into(), "nproc=64".into()],
            tmpfs: vec!["/cache:size=64Mi".into(), "/run".into()],
            restart_window: Some("1m".into()),
            ..Default::default()
        };
        let o = flags.to_pb().unwrap().unwrap();
        assert_eq!(o.labels.get("canary").map(String::as_str), Some(""));
        assert_eq!((o.ulimits["nofile"].soft, o.ulimits["nofile"].hard, o.ulimits["nproc"].hard), (1024, 2048, 64));
        assert_eq!(o.tmpfs[0].size_bytes, Some(64 << 20));
        assert_eq!((o.tmpfs[1].target.as_str(), o.tmpfs[1].size_bytes), ("/run", None));
        assert_eq!(o.restart_window_ms, Some(60_000));
        assert_eq!(OptionsFlags::default().to_pb().unwrap(), None);
        let bad = OptionsFlags { ulimit: vec!["nofile".into()], ..Default::default() };
        assert!(format!("{:#}", bad.to_pb().unwrap_err()).contains("--ulimit"));
        let bad = OptionsFlags { tmpfs: vec!["/x:mode=700".into()], ..Default::default() };
        assert!(format!("{:#}", bad.to_pb().unwrap_err()).contains("--tmpfs"));
    }

    #[test]
    fn spec_file_forms() {
        let file: OptionsFile = serde_yaml_ng::from_str(
            "extra_hosts: {db.internal: 198.18.0.5}\nulimits: {nofile: {soft: 10, hard: 20}, core: 0}\n\
             tmpfs: [/run, {target: /cache, size: 1Mi}]\nrestart_window: 30\n",
        )
        .unwrap();
        let o = file.into_wire().unwrap().unwrap();
        assert_eq!(o.extra_hosts, ["db.internal:198.18.0.5"]);
        assert_eq!((o.ulimits["nofile"].soft, o.ulimits["core"].hard), (10, 0));
        assert_eq!(o.tmpfs[1].size_bytes, Some(1 << 20));
        assert_eq!(o.restart_window_ms, Some(30_000));
        let bad: OptionsFile = serde_yaml_ng::from_str("ulimits: {nofile: lots}\n").unwrap();
        assert!(format!("{:#}", bad.into_wire().unwrap_err()).contains("ulimits.nofile"));
    }
}
