//! Mounts as people write them: `--mount type=volume,source=data,target=/data`
//! (Docker's comma-separated form: `src`, `dst` and `destination`, `ro` and
//! `readonly[=true|false]`, `tmpfs-size`, and berth's `volume-pin` and
//! `volume-exclusive`), and a spec file's `volumes:` entries in Compose's
//! two forms, `data:/data[:ro]` and `{type, source, target, read_only,
//! volume: {pin, exclusive}}`. A tmpfs mount
//! becomes one of the options' tmpfs.

use anyhow::{anyhow, bail, Result};
use berth_proto::pb::cluster as pb;
use serde_yaml_ng::Value;

use crate::spec::memory;

/// One mount, or a memory filesystem.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Mount(pb::Mount),
    Tmpfs(pb::Tmpfs),
}

/// Sorts parsed mounts into the options' two lists.
pub fn split(parsed: Vec<Parsed>) -> (Vec<pb::Mount>, Vec<pb::Tmpfs>) {
    let (mut mounts, mut tmpfs) = (Vec::new(), Vec::new());
    for p in parsed {
        match p {
            Parsed::Mount(m) => mounts.push(m),
            Parsed::Tmpfs(t) => tmpfs.push(t),
        }
    }
    (mounts, tmpfs)
}

/// `--mount type=volume,source=data,target=/data[,readonly]`.
pub fn flag(text: &str) -> Result<Parsed> {
    let (mut kind, mut source, mut target, mut size) = ("volume".to_owned(), None, None, None);
    let (mut readonly, mut pin, mut exclusive) = (false, false, false);
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').map_or((part, None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("type", Some(v)) => kind = v.to_owned(),
            ("source" | "src", Some(v)) => source = Some(v.to_owned()),
            ("target" | "dst" | "destination", Some(v)) => target = Some(v.to_owned()),
            ("readonly" | "ro", None) => readonly = true,
            ("volume-pin", None) => pin = true,
            ("volume-exclusive", None) => exclusive = true,
            ("readonly" | "ro" | "volume-pin" | "volume-exclusive", Some(v)) => {
                let yes = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("{text:?}: {key}={v:?}: expected true or false"),
                };
                *(match key {
                    "volume-pin" => &mut pin,
                    "volume-exclusive" => &mut exclusive,
                    _ => &mut readonly,
                }) = yes;
            }
            ("tmpfs-size", Some(v)) => size = Some(bytes(v)?),
            _ => bail!(
                "{text:?}: {part:?} is not a mount option: expected type=volume|bind|tmpfs, source=, target=, \
                 readonly, volume-pin, volume-exclusive or tmpfs-size="
            ),
        }
    }
    let target = target.ok_or_else(|| anyhow!("{text:?}: no target= (where the container sees it)"))?;
    build(&kind, source, target, Flags { readonly, pin, exclusive }, size).map_err(|e| anyhow!("{text:?}: {e}"))
}

/// A spec file's `volumes:` entry `i`.
pub fn entry(i: usize, value: &Value) -> Result<Parsed> {
    let at = |e: anyhow::Error| anyhow!("volumes[{i}]: {e}");
    match value {
        Value::String(short) => short_form(short).map_err(at),
        Value::Mapping(m) => {
            for key in m.keys() {
                let known = ["type", "source", "target", "read_only", "readonly", "tmpfs", "volume"];
                match key.as_str() {
                    Some(k) if known.contains(&k) => {}
                    Some(k) => {
                        bail!("volumes[{i}]: {k:?} is not a key of a mount: expected one of {}", known.join(", "))
                    }
                    None => {
                        bail!("volumes[{i}]: {key:?} is not a key of a mount: expected one of {}", known.join(", "))
                    }
                }
            }
            let text = |k: &str| match m.get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(anyhow!("volumes[{i}].{k}: expected text, got {other:?}")),
            };
            let readonly = match m.get("read_only").or_else(|| m.get("readonly")) {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => bail!("volumes[{i}].read_only: expected true or false, got {other:?}"),
            };
            let (mut pin, mut exclusive) = (false, false);
            match m.get("volume") {
                None => {}
                Some(Value::Mapping(v)) => {
                    for (k, value) in v {
                        let flag = match k.as_str() {
                            Some("pin") => &mut pin,
                            Some("exclusive") => &mut exclusive,
                            _ => bail!("volumes[{i}].volume: {k:?} is not supported: expected pin or exclusive"),
                        };
                        *flag = match value {
                            Value::Bool(b) => *b,
                            other => bail!("volumes[{i}].volume.{k:?}: expected true or false, got {other:?}"),
                        };
                    }
                }
                Some(other) => bail!("volumes[{i}].volume: expected {{pin: true, exclusive: true}}, got {other:?}"),
            }
            let size = match m.get("tmpfs").and_then(|t| t.get("size")) {
                None => None,
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => Some(bytes(s).map_err(at)?),
                Some(other) => bail!("volumes[{i}].tmpfs.size: expected a size such as 64Mi, got {other:?}"),
            };
            let kind = text("type")?.unwrap_or_else(|| "volume".into());
            let target = text("target")?.ok_or_else(|| anyhow!("volumes[{i}]: no target"))?;
            build(&kind, text("source")?, target, Flags { readonly, pin, exclusive }, size).map_err(at)
        }
        other => bail!("volumes[{i}]: expected SOURCE:TARGET[:ro] or {{type, source, target}}, got {other:?}"),
    }
}

/// Compose's `SOURCE:TARGET[:ro|rw]`: a source that is a path is a bind.
fn short_form(text: &str) -> Result<Parsed> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts[..] {
        [source, target] => (source, target, "rw"),
        [source, target, mode] => (source, target, mode),
        _ => bail!(
            "{text:?}: expected SOURCE:TARGET[:ro], such as data:/data or /srv/conf:/conf:ro (a volume needs a name)"
        ),
    };
    let readonly = match mode {
        "ro" => true,
        "rw" => false,
        other => bail!("{text:?}: {other:?} is not a mode: expected ro or rw"),
    };
    let kind = if source.starts_with(['/', '.', '~']) { "bind" } else { "volume" };
    build(kind, Some(source.to_owned()), target.to_owned(), Flags { readonly, ..Flags::default() }, None)
}

/// A mount's yes-or-no options.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    readonly: bool,
    pin: bool,
    exclusive: bool,
}

fn build(kind: &str, source: Option<String>, target: String, flags: Flags, size: Option<u64>) -> Result<Parsed> {
    let Flags { readonly, pin, exclusive } = flags;
    match kind {
        "volume" | "bind" => {
            if size.is_some() {
                bail!("a tmpfs size on a {kind} mount");
            }
            let source = source.ok_or_else(|| match kind {
                "volume" => anyhow!("no source: name the volume (berth keeps no anonymous volumes)"),
                _ => anyhow!("no source: the host path to mount"),
            })?;
            Ok(Parsed::Mount(pb::Mount { r#type: kind.to_owned(), source, target, readonly, pin, exclusive }))
        }
        "tmpfs" => {
            if source.is_some() || readonly || pin || exclusive {
                bail!("a tmpfs mount takes no source, is never read-only, pinned or exclusive");
            }
            Ok(Parsed::Tmpfs(pb::Tmpfs { target, size_bytes: size }))
        }
        other => bail!("type {other:?} is not supported: expected volume, bind or tmpfs"),
    }
}

fn bytes(size: &str) -> Result<u64> {
    u64::try_from(memory(size)?).map_err(|_| anyhow!("size {size:?} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, target: &str, readonly: bool) -> Parsed {
        Parsed::Mount(pb::Mount {
            r#type: kind.into(),
            source: source.into(),
            target: target.into(),
            readonly,
            ..Default::default()
        })
    }

    #[test]
    fn flags_in_docker_form() {
        assert_eq!(flag("type=volume,source=data,target=/data").unwrap(), mount("volume", "data", "/data", false));
        assert_eq!(flag("src=data,dst=/data,ro").unwrap(), mount("volume", "data", "/data", true));
        assert_eq!(
            flag("type=bind,source=/srv,destination=/srv,readonly=false").unwrap(),
            mount("bind", "/srv", "/srv", false)
        );
        assert_eq!(
            flag("type=tmpfs,target=/cache,tmpfs-size=64Mi").unwrap(),
            Parsed::Tmpfs(pb::Tmpfs { target: "/cache".into(), size_bytes: Some(64 << 20) })
        );
        let pinned = flag("source=data,target=/data,volume-pin,volume-exclusive=true").unwrap();
        assert!(matches!(pinned, Parsed::Mount(m) if m.pin && m.exclusive && !m.readonly));
        let err = |t: &str| format!("{:#}", flag(t).unwrap_err());
        assert!(err("type=nfs,source=a,target=/a").contains("type \"nfs\" is not supported"));
        assert!(err("source=data").contains("no target="));
        assert!(err("target=/data").contains("name the volume"));
        assert!(err("source=a,target=/a,size=1").contains("\"size=1\" is not a mount option"));
        assert!(err("type=tmpfs,source=a,target=/a").contains("no source"));
    }

    #[test]
    fn spec_file_entries_in_compose_forms() {
        let yaml = |s: &str| serde_yaml_ng::from_str::<Value>(s).unwrap();
        assert_eq!(entry(0, &yaml("data:/data")).unwrap(), mount("volume", "data", "/data", false));
        assert_eq!(entry(0, &yaml("/srv/conf:/conf:ro")).unwrap(), mount("bind", "/srv/conf", "/conf", true));
        assert_eq!(
            entry(0, &yaml("{type: bind, source: /srv, target: /srv, read_only: true}")).unwrap(),
            mount("bind", "/srv", "/srv", true)
        );
        assert_eq!(
            entry(0, &yaml("{type: tmpfs, target: /t, tmpfs: {size: 1Mi}}")).unwrap(),
            Parsed::Tmpfs(pb::Tmpfs { target: "/t".into(), size_bytes: Some(1 << 20) })
        );
        let pinned = entry(0, &yaml("{source: data, target: /d, volume: {pin: true, exclusive: true}}")).unwrap();
        assert!(matches!(pinned, Parsed::Mount(m) if m.pin && m.exclusive));
        let err = |s: &str| format!("{:#}", entry(3, &yaml(s)).unwrap_err());
        assert!(err("{source: data, target: /d, volume: {nocopy: true}}").contains("volumes[3].volume"));
        assert!(err("/data").starts_with("volumes[3]: \"/data\": expected SOURCE:TARGET"));
        assert!(err("data:/data:rx").contains("\"rx\" is not a mode"));
        assert!(err("{source: data, target: /d, driver: nfs}").contains("\"driver\" is not a key"));
        assert!(err("{source: data}").contains("volumes[3]: no target"));
    }
}
