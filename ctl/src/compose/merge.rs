//! Several `-c` files as one, by the Compose Specification's merge rules
//! (compose-go's): mappings merge key by key and the later file wins;
//! `command`, `entrypoint` and `healthcheck.test` are replaced whole;
//! `environment`, `labels`, `extra_hosts` and `depends_on` merge as maps
//! whatever form each file wrote; `volumes`, `secrets`, `configs` and
//! `ports` keep one entry per target (a later one takes the earlier one's
//! place); other lists are appended, without repeats. `!reset` removes
//! what the earlier files set, `!override` replaces it without merging.

use anyhow::{bail, Result};
use serde_yaml_ng::value::{Tag, TaggedValue};
use serde_yaml_ng::{Mapping, Value};

/// `over` merged into `base`; `at` is the path both are at.
pub fn merge(base: &mut Value, over: Value, at: &str) -> Result<()> {
    let over = match over {
        Value::Tagged(t) if is(&t, "override") => {
            *base = untag(t.value);
            return Ok(());
        }
        other => other,
    };
    let field = at.rsplit('.').next().unwrap_or(at);
    let service_key = service_key(at);
    match (base, over) {
        (base, over) if matches!(service_key, Some("command" | "entrypoint" | "healthcheck.test")) => {
            *base = untag(over);
        }
        (base, over) if matches!(service_key, Some(key) if MAPS.contains(&key)) => {
            let mut merged = as_map(base, at)?;
            for (k, v) in as_map(&over, at)? {
                let at = join(at, k.as_str().unwrap_or_default());
                merge_entry(&mut merged, k, v, &at)?;
            }
            *base = Value::Mapping(merged);
        }
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (k, v) in over {
                let at = join(at, k.as_str().unwrap_or_default());
                merge_entry(base, k, v, &at)?;
            }
        }
        (Value::Sequence(base), Value::Sequence(over)) => {
            let keyed = matches!(service_key, Some("volumes" | "secrets" | "configs" | "ports"));
            for item in over.into_iter().map(untag) {
                let key = keyed.then(|| unique_key(field, &item));
                match base.iter().position(|b| if keyed { Some(unique_key(field, b)) == key } else { *b == item }) {
                    Some(i) if keyed => base[i] = item,
                    Some(_) => {}
                    None => base.push(item),
                }
            }
        }
        (base @ (Value::Mapping(_) | Value::Sequence(_)), over) if !over.is_null() => {
            bail!("{at}: cannot merge {} over {}", kind(&over), kind(base))
        }
        (base, over) => *base = untag(over),
    }
    Ok(())
}

/// Merges one key: `!reset` removes it, a new key is added as it is.
fn merge_entry(base: &mut Mapping, key: Value, value: Value, at: &str) -> Result<()> {
    match value {
        Value::Tagged(t) if is(&t, "reset") => {
            base.remove(&key);
        }
        value => match base.get_mut(&key) {
            Some(existing) => merge(existing, value, at)?,
            None => {
                base.insert(key, untag(value));
            }
        },
    }
    Ok(())
}

/// `at.key`, or `key` at the top.
pub fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

/// Keys whose lists and maps are the same thing.
const MAPS: [&str; 5] = ["environment", "labels", "deploy.labels", "extra_hosts", "depends_on"];

/// The key under `services.NAME.` that `at` is, if it is one.
fn service_key(at: &str) -> Option<&str> {
    let rest = at.strip_prefix("services.")?;
    Some(rest.split_once('.')?.1)
}

fn is(t: &TaggedValue, name: &str) -> bool {
    t.tag == Tag::new(name)
}

/// `value` without `!override` tags, and without the keys `!reset` removes.
pub fn untag(value: Value) -> Value {
    match value {
        Value::Tagged(t) if is(&t, "reset") => Value::Null,
        Value::Tagged(t) => untag(t.value),
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .filter(|(_, v)| !matches!(v, Value::Tagged(t) if is(t, "reset")))
                .map(|(k, v)| (k, untag(v)))
                .collect(),
        ),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(untag).collect()),
        other => other,
    }
}

/// A map-or-list key as a map: `["A=1", "B"]` is `{A: "1", B: null}`;
/// `depends_on: [db]` is `{db: {condition: service_started}}`;
/// `extra_hosts: ["db:198.18.0.5"]` is `{db: 198.18.0.5}`.
pub fn as_map(value: &Value, at: &str) -> Result<Mapping> {
    let depends = at.ends_with("depends_on");
    let hosts = at.ends_with("extra_hosts");
    Ok(match value {
        Value::Null => Mapping::new(),
        Value::Mapping(m) => m.clone(),
        Value::Sequence(items) => {
            let mut m = Mapping::new();
            for (i, item) in items.iter().enumerate() {
                let Some(text) = scalar(item) else { bail!("{at}[{i}]: expected a string, got {}", kind(item)) };
                if depends {
                    let mut long = Mapping::new();
                    long.insert("condition".into(), "service_started".into());
                    m.insert(text.into(), Value::Mapping(long));
                    continue;
                }
                let split = if hosts {
                    // `host=ip` or `host:ip` (an IPv6 address has colons of its own).
                    text.split_once('=').or_else(|| text.split_once(':'))
                } else {
                    text.split_once('=')
                };
                match split {
                    Some((k, v)) => m.insert(k.into(), v.trim_matches(['[', ']']).into()),
                    None if hosts => bail!("{at}[{i}]: {text:?} is not HOST:ADDRESS"),
                    None => m.insert(text.into(), Value::Null),
                };
            }
            m
        }
        other => bail!("{at}: expected a map or a list, got {}", kind(other)),
    })
}

/// A string, number or boolean as text.
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// What makes a volume, secret, config or port one of its list.
fn unique_key(field: &str, item: &Value) -> String {
    let get = |k: &str| item.get(k).and_then(scalar);
    match (field, item) {
        ("volumes", Value::String(s)) => s.split(':').nth(1).unwrap_or(s).to_owned(),
        ("volumes", _) => get("target").unwrap_or_default(),
        ("secrets", Value::String(s)) => format!("/run/secrets/{s}"),
        ("secrets", _) => {
            get("target").unwrap_or_else(|| format!("/run/secrets/{}", get("source").unwrap_or_default()))
        }
        ("configs", Value::String(s)) => format!("/{s}"),
        ("configs", _) => get("target").unwrap_or_else(|| format!("/{}", get("source").unwrap_or_default())),
        ("ports", Value::Mapping(_)) => format!(
            "{}:{}:{}/{}",
            get("host_ip").unwrap_or_else(|| "0.0.0.0".into()),
            get("published").unwrap_or_default(),
            get("target").unwrap_or_default(),
            get("protocol").unwrap_or_else(|| "tcp".into())
        ),
        _ => scalar(item).unwrap_or_else(|| format!("{item:?}")),
    }
}

/// What a value is, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    fn merged(base: &str, over: &str) -> Value {
        let mut b = untag(yaml(base));
        merge(&mut b, yaml(over), "").unwrap();
        b
    }

    #[test]
    fn the_specifications_merge_rules() {
        // Mappings: the later file wins key by key.
        let m = merged("services: {web: {image: a, user: x}}", "services: {web: {image: b}}");
        assert_eq!(m, yaml("services: {web: {image: b, user: x}}"));
        // Lists append; commands replace.
        let m = merged(
            "services: {web: {dns: [1.1.1.1], command: [a, b]}}",
            "services: {web: {dns: [9.9.9.9, 1.1.1.1], command: [c]}}",
        );
        assert_eq!(m, yaml("services: {web: {dns: [1.1.1.1, 9.9.9.9], command: [c]}}"));
        // One volume per target, in the earlier one's place.
        let m = merged(
            "services: {web: {volumes: ['foo:/work', 'logs:/logs']}}",
            "services: {web: {volumes: ['bar:/work', {source: c, target: /cache}]}}",
        );
        assert_eq!(m, yaml("services: {web: {volumes: ['bar:/work', 'logs:/logs', {source: c, target: /cache}]}}"));
        // Environments merge as maps whatever their form.
        let m = merged("services: {web: {environment: [A=1, B=2]}}", "services: {web: {environment: {B: 3, C: 4}}}");
        assert_eq!(m, yaml("services: {web: {environment: {A: '1', B: 3, C: 4}}}"));
        let m = merged(
            "services: {web: {depends_on: [db]}}",
            "services: {web: {depends_on: {cache: {condition: service_healthy}}}}",
        );
        assert_eq!(
            m,
            yaml("services: {web: {depends_on: {db: {condition: service_started}, cache: {condition: service_healthy}}}}")
        );
    }

    #[test]
    fn reset_and_override_tags() {
        let m = merged(
            "services: {web: {ports: ['80:80'], environment: {FOO: a, BAR: b}}}",
            "services: {web: {ports: !reset [], environment: {FOO: !reset null}}}",
        );
        assert_eq!(m, yaml("services: {web: {environment: {BAR: b}}}"));
        let m = merged("services: {web: {ports: ['80:80']}}", "services: {web: {ports: !override ['8443:443']}}");
        assert_eq!(m, yaml("services: {web: {ports: ['8443:443']}}"));
        let mut base = yaml("services: {web: {build: {context: .}}}");
        let e = merge(&mut base, yaml("services: {web: {build: .}}"), "").unwrap_err();
        assert_eq!(e.to_string(), "services.web.build: cannot merge a string over a map");
    }
}
