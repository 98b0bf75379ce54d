//! Secrets and configs: `berthctl secret create NAME FILE|-`, `secret ls`,
//! `secret inspect NAME`, `secret rm NAME...`, and `config ...` the same
//! (`config inspect` shows the value, a secret's never comes back); and a
//! service's references to them, `--secret src=NAME,target=T,uid=U,gid=G,mode=0400`
//! (or just `--secret NAME`), or a spec file's `secrets:`/`configs:` in
//! Compose's two forms, `[db]` and `[{source, target, uid, gid, mode}]`.

use std::fmt::Write as _;
use std::io::Read;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use berth_proto::model::{FileKind, MAX_FILE_BYTES};
use berth_proto::pb::cluster as pb;
use serde_json::json;
use serde_yaml_ng::Value;

use crate::client::Client;
use crate::output::{ago, table, Format};

/// The value to store: the file's bytes, or stdin's for `-`.
fn value(file: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    // One byte more than allowed tells "too large" without reading it all.
    let limit = MAX_FILE_BYTES as u64 + 1;
    match file {
        "-" => std::io::stdin().take(limit).read_to_end(&mut data).context("reading the value from stdin")?,
        path => std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut data))
            .with_context(|| format!("reading {path}"))?,
    };
    if data.len() > MAX_FILE_BYTES {
        bail!("{file}: more than {MAX_FILE_BYTES} bytes; a secret or config holds at most that");
    }
    Ok(data)
}

pub async fn create(client: &Client, kind: FileKind, name: &str, file: &str) -> Result<String> {
    let bytes = store(client, kind, name, value(file)?).await?;
    Ok(format!("{} {name} created ({bytes} bytes)\n", kind.as_str()))
}

/// Stores `data` as the secret or config `name` (the same value again is
/// no change); its size as stored.
pub async fn store(client: &Client, kind: FileKind, name: &str, data: Vec<u8>) -> Result<u64> {
    let req = pb::CreateFileRequest { name: name.to_owned(), data };
    let reply = match kind {
        FileKind::Secret => client.call("create secret", async |mut c| c.create_secret(req.clone()).await).await?,
        FileKind::Config => client.call("create config", async |mut c| c.create_config(req.clone()).await).await?,
    };
    Ok(reply.file.map_or(0, |f| f.bytes))
}

pub async fn list(client: &Client, kind: FileKind) -> Result<Vec<pb::FileInfo>> {
    let req = pb::ListFilesRequest {};
    let reply = match kind {
        FileKind::Secret => client.call("list secrets", async |mut c| c.list_secrets(req).await).await?,
        FileKind::Config => client.call("list configs", async |mut c| c.list_configs(req).await).await?,
    };
    Ok(reply.files)
}

fn as_json(f: &pb::FileInfo) -> serde_json::Value {
    json!({"name": f.name, "created_at_ms": f.created_at_ms, "bytes": f.bytes, "digest": f.digest, "used_by": f.used_by})
}

pub async fn ls(client: &Client, kind: FileKind, fmt: Format) -> Result<String> {
    let files = list(client, kind).await?;
    Ok(match fmt {
        Format::Json => format!("{:#}\n", json!(files.iter().map(as_json).collect::<Vec<_>>())),
        Format::Table => {
            let now = SystemTime::now();
            let rows: Vec<Vec<String>> = files
                .iter()
                .map(|f| {
                    let users = if f.used_by.is_empty() { "-".into() } else { f.used_by.join(",") };
                    vec![f.name.clone(), ago(f.created_at_ms, now), f.bytes.to_string(), users]
                })
                .collect();
            table(&["NAME", "CREATED", "BYTES", "USED BY"], &rows)
        }
    })
}

pub async fn inspect(client: &Client, kind: FileKind, name: &str, fmt: Format) -> Result<String> {
    let (info, data) = match kind {
        FileKind::Secret => {
            let found = list(client, kind).await?.into_iter().find(|f| f.name == name);
            (found.ok_or_else(|| anyhow!("secret {name} not found; `berthctl secret ls` lists them"))?, None)
        }
        FileKind::Config => {
            let req = pb::GetConfigRequest { name: name.to_owned() };
            let reply = client.call("inspect config", async |mut c| c.get_config(req.clone()).await).await?;
            (reply.file.context("the server sent no config")?, Some(reply.data))
        }
    };
    if fmt == Format::Json {
        let mut v = as_json(&info);
        if let Some(data) = &data {
            v["data"] = json!(String::from_utf8_lossy(data));
        }
        return Ok(format!("{v:#}\n"));
    }
    let mut out = String::new();
    let _ = writeln!(out, "{:<10}{}", "Name:", info.name);
    let _ = writeln!(out, "{:<10}{}", "Created:", ago(info.created_at_ms, SystemTime::now()));
    let value = match info.digest.as_str() {
        "" => format!("{} bytes", info.bytes),
        digest => format!("{} bytes, sha256 {digest}", info.bytes),
    };
    let _ = writeln!(out, "{:<10}{value}", "Value:");
    let users = if info.used_by.is_empty() { "-".into() } else { info.used_by.join(", ") };
    let _ = writeln!(out, "{:<10}{users}", "Used by:");
    if let Some(data) = data {
        let _ = writeln!(out, "Data:\n{}", String::from_utf8_lossy(&data));
    }
    Ok(out)
}

pub async fn rm(client: &Client, kind: FileKind, names: &[String]) -> Result<String> {
    let mut out = String::new();
    for name in names {
        let req = pb::DeleteFileRequest { name: name.clone() };
        match kind {
            FileKind::Secret => client.call("remove secret", async |mut c| c.delete_secret(req.clone()).await).await?,
            FileKind::Config => client.call("remove config", async |mut c| c.delete_config(req.clone()).await).await?,
        };
        let _ = writeln!(out, "{} {name} removed", kind.as_str());
    }
    Ok(out)
}

/// `--secret NAME` or `--secret src=NAME,target=T,uid=U,gid=G,mode=0400`.
pub fn flag(text: &str) -> Result<pb::FileRef> {
    if !text.contains('=') {
        return Ok(pb::FileRef { source: text.to_owned(), ..Default::default() });
    }
    let mut r = pb::FileRef::default();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (key, v) = part.split_once('=').ok_or_else(|| anyhow!("{text:?}: {part:?} is not KEY=VALUE"))?;
        match key {
            "source" | "src" => r.source = v.to_owned(),
            "target" => r.target = v.to_owned(),
            "uid" => r.uid = v.parse().map_err(|_| anyhow!("{text:?}: uid {v:?} is not a number"))?,
            "gid" => r.gid = v.parse().map_err(|_| anyhow!("{text:?}: gid {v:?} is not a number"))?,
            "mode" => r.mode = Some(octal(v).with_context(|| format!("{text:?}"))?),
            _ => bail!("{text:?}: {key:?} is not an option: expected source, target, uid, gid or mode"),
        }
    }
    if r.source.is_empty() {
        bail!("{text:?}: no source= (the name of the secret or config)");
    }
    Ok(r)
}

/// A service update's `--secret-add`/`--secret-rm` (or configs'): removed
/// by name, then added, one with the same target (or name) replaced.
pub fn change(refs: &mut Vec<pb::FileRef>, add: &[String], rm: &[String]) -> Result<()> {
    for name in rm {
        let before = refs.len();
        refs.retain(|r| r.source != *name);
        if refs.len() == before {
            bail!("{name}: the service does not use it");
        }
    }
    for text in add {
        let new = flag(text)?;
        let target = |r: &pb::FileRef| if r.target.is_empty() { r.source.clone() } else { r.target.clone() };
        refs.retain(|r| target(r) != target(&new));
        refs.push(new);
    }
    Ok(())
}

/// Permission bits as people write them: 0400, 400 or 0o400.
fn octal(v: &str) -> Result<u32> {
    let digits = v.strip_prefix("0o").unwrap_or(v);
    u32::from_str_radix(digits, 8).map_err(|_| anyhow!("mode {v:?} is not octal permission bits such as 0400"))
}

/// A spec file's `secrets:` or `configs:` entry `i`.
pub fn entry(field: &str, i: usize, value: &Value) -> Result<pb::FileRef> {
    let at = |what: &str| format!("{field}[{i}]{what}");
    match value {
        Value::String(name) => Ok(pb::FileRef { source: name.clone(), ..Default::default() }),
        Value::Mapping(m) => {
            let mut r = pb::FileRef::default();
            for (k, v) in m {
                let key = k.as_str().ok_or_else(|| anyhow!("{}: {k:?} is not a key", at("")))?;
                let text = || match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(anyhow!("{}: expected text or a number, got {other:?}", at(&format!(".{key}")))),
                };
                match key {
                    "source" => r.source = text()?,
                    "target" => r.target = text()?,
                    "uid" => r.uid = text()?.parse().with_context(|| format!("{}: not a number", at(".uid")))?,
                    "gid" => r.gid = text()?.parse().with_context(|| format!("{}: not a number", at(".gid")))?,
                    // YAML reads 0440 as the number 440: its digits are the octal ones meant.
                    "mode" => r.mode = Some(octal(&text()?).with_context(|| at(".mode"))?),
                    other => bail!("{}: {other:?} is not a key: expected source, target, uid, gid or mode", at("")),
                }
            }
            if r.source.is_empty() {
                bail!("{}: no source", at(""));
            }
            Ok(r)
        }
        other => bail!("{}: expected a name or {{source, target, uid, gid, mode}}, got {other:?}", at("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_in_flag_and_file_forms() {
        assert_eq!(flag("db").unwrap(), pb::FileRef { source: "db".into(), ..Default::default() });
        let r = flag("src=db,target=db.txt,uid=1000,gid=50,mode=0400").unwrap();
        assert_eq!(
            (r.source.as_str(), r.target.as_str(), r.uid, r.gid, r.mode),
            ("db", "db.txt", 1000, 50, Some(0o400))
        );
        assert!(format!("{:#}", flag("src=db,mode=0999").unwrap_err()).contains("not octal"));
        assert!(format!("{:#}", flag("target=x").unwrap_err()).contains("no source="));
        assert!(format!("{:#}", flag("src=db,owner=1").unwrap_err()).contains("\"owner\" is not an option"));
        let yaml = |s: &str| serde_yaml_ng::from_str::<Value>(s).unwrap();
        assert_eq!(entry("secrets", 0, &yaml("db")).unwrap().source, "db");
        let r = entry("secrets", 0, &yaml("{source: db, target: /etc/db, uid: '1000', mode: 0440}")).unwrap();
        assert_eq!((r.target.as_str(), r.uid, r.mode), ("/etc/db", 1000, Some(0o440)));
        let e = format!("{:#}", entry("configs", 2, &yaml("{source: a, path: b}")).unwrap_err());
        assert!(e.starts_with("configs[2]: \"path\" is not a key"), "{e}");
    }

    #[test]
    fn an_update_swaps_one_reference_for_another_at_its_target() {
        let mut refs = vec![flag("src=db_v1,target=db").unwrap(), flag("tls").unwrap()];
        change(&mut refs, &["src=db_v2,target=db".into()], &[]).unwrap();
        assert_eq!(refs.iter().map(|r| r.source.as_str()).collect::<Vec<_>>(), ["tls", "db_v2"]);
        change(&mut refs, &[], &["tls".into()]).unwrap();
        assert_eq!(refs.len(), 1);
        assert!(format!("{:#}", change(&mut refs, &[], &["nope".into()]).unwrap_err()).contains("does not use it"));
    }

    #[test]
    fn values_come_from_a_file_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (small, big) = (dir.path().join("small"), dir.path().join("big"));
        std::fs::write(&small, b"hunter2").unwrap();
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES + 1]).unwrap();
        assert_eq!(value(small.to_str().unwrap()).unwrap(), b"hunter2");
        assert!(format!("{:#}", value(big.to_str().unwrap()).unwrap_err()).contains("more than"));
    }
}
