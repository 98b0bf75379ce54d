//! Compose's variables: `${VAR}` and its forms in a file's values, and the
//! `.env` and `env_file` files that hold them, read as Compose (compose-go)
//! reads them. Pure: the caller gives the variables and gets warnings back.
//!
//! ```text
//! $$            a literal $            ${VAR:-d}  d when VAR is unset or empty
//! $VAR ${VAR}   the value ("" + warning if unset)   ${VAR-d}   d when VAR is unset
//! ${VAR:?err}   an error when unset or empty         ${VAR?err} an error when unset
//! ${VAR:+alt}   alt when set and not empty           ${VAR+alt} alt when set
//! ```
//! Defaults, errors and alternatives are themselves interpolated
//! (`${A:-${B:-x}}`). A `$` before anything else stays as it is.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use serde_yaml_ng::Value;

/// The variables a file is interpolated with: the process environment
/// over the project's `.env`.
pub type Vars = BTreeMap<String, String>;

/// `text` with its variables replaced; `at` names where it is, for errors
/// and for the warnings pushed on `warnings`.
pub fn text(text: &str, vars: &Vars, at: &str, warnings: &mut Vec<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = rest.strip_prefix('{') {
            let end = closing(body).ok_or_else(|| {
                anyhow!("{at}: invalid interpolation format in {text:?}: a '${{' without its '}}' (write $$ for a $)")
            })?;
            out.push_str(&braced(&body[..end], vars, at, warnings)?);
            rest = &body[end + 1..];
        } else {
            let len = name_len(rest);
            if len == 0 {
                out.push('$');
            } else {
                out.push_str(&lookup(&rest[..len], vars, at, warnings));
                rest = &rest[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the `}` that closes a `${` is, counting the braces nested in it.
fn closing(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The length of the variable name `s` starts with (0 for none).
fn name_len(s: &str) -> usize {
    let mut len = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        len = i + c.len_utf8();
    }
    len
}

fn lookup(name: &str, vars: &Vars, at: &str, warnings: &mut Vec<String>) -> String {
    match vars.get(name) {
        Some(v) => v.clone(),
        None => {
            warnings.push(format!("{at}: the variable {name} is not set; it is taken as an empty string"));
            String::new()
        }
    }
}

/// The inside of `${...}`.
fn braced(body: &str, vars: &Vars, at: &str, warnings: &mut Vec<String>) -> Result<String> {
    let len = name_len(body);
    let (name, op) = body.split_at(len);
    if name.is_empty() {
        bail!("{at}: invalid interpolation format: ${{{body}}} names no variable (write $$ for a $)");
    }
    let value = vars.get(name);
    let empty = value.is_none_or(|v| v.is_empty());
    let mut then = |rest: &str| text(rest, vars, at, warnings);
    Ok(match op {
        "" => return Ok(lookup(name, vars, at, warnings)),
        _ if op.starts_with(":-") => match empty {
            true => then(&op[2..])?,
            false => value.cloned().unwrap_or_default(),
        },
        _ if op.starts_with('-') => match value {
            None => then(&op[1..])?,
            Some(v) => v.clone(),
        },
        _ if op.starts_with(":?") && empty => bail!("{at}: the variable {name} is required: {}", then(&op[2..])?),
        _ if op.starts_with('?') && value.is_none() => {
            bail!("{at}: the variable {name} is required: {}", then(&op[1..])?)
        }
        _ if op.starts_with(":?") || op.starts_with('?') => value.cloned().unwrap_or_default(),
        _ if op.starts_with(":+") => match empty {
            true => value.cloned().unwrap_or_default(),
            false => then(&op[2..])?,
        },
        _ if op.starts_with('+') => match value {
            None => String::new(),
            Some(_) => then(&op[1..])?,
        },
        _ => {
            bail!("{at}: invalid interpolation format: ${{{body}}} (expected ${{VAR}}, ${{VAR:-default}} and the like)")
        }
    })
}

/// Every string in `value` interpolated (values only: keys stay as they
/// are, as in Compose); `at` is its path.
pub fn value(value: &mut Value, vars: &Vars, at: &str, warnings: &mut Vec<String>) -> Result<()> {
    match value {
        Value::String(s) => *s = text(s, vars, at, warnings)?,
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                self::value(item, vars, &format!("{at}[{i}]"), warnings)?;
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned);
                let at = if at.is_empty() { key } else { format!("{at}.{key}") };
                self::value(v, vars, &at, warnings)?;
            }
        }
        Value::Tagged(t) => self::value(&mut t.value, vars, at, warnings)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// A `.env` or `env_file` file's variables, in order (Compose's format):
/// `KEY=VALUE` or `KEY: VALUE`, an optional `export `, `#` comments, a bare
/// `KEY` taken from `vars` (left out when not there), values unquoted
/// (a ` #` starts a comment), in double quotes (escapes, may span lines)
/// or in single quotes (as written). Unquoted and double-quoted values are
/// interpolated with `vars`, then the file's earlier keys.
pub fn env_file(contents: &str, vars: &Vars, file: &str, warnings: &mut Vec<String>) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut lines = contents.trim_start_matches('\u{feff}').lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let at = format!("{file}, line {}", n + 1);
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let key_len = line.find(|c: char| !(c.is_ascii_alphanumeric() || "_.-[]".contains(c))).unwrap_or(line.len());
        let (key, rest) = line.split_at(key_len);
        if key.is_empty() {
            bail!("{at}: expected KEY=VALUE, got {line:?}");
        }
        let rest = rest.trim_start();
        let Some(raw) = rest.strip_prefix(['=', ':']) else {
            if !rest.is_empty() && !rest.starts_with('#') {
                bail!("{at}: expected KEY=VALUE, got {line:?} (a key holds no spaces)");
            }
            if let Some(v) = vars.get(key) {
                out.push((key.to_owned(), v.clone()));
            }
            continue;
        };
        // Earlier keys of the file, under the process's.
        let mut known = vars.clone();
        for (k, v) in &out {
            known.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let raw = raw.trim_start();
        let value = match raw.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let mut body = raw[1..].to_owned();
                let close = loop {
                    if let Some(end) = unescaped(&body, q) {
                        break end;
                    }
                    let (_, next) = lines.next().ok_or_else(|| anyhow!("{at}: unterminated quoted value"))?;
                    body.push('\n');
                    body.push_str(next);
                };
                let (inner, after) = (&body[..close], body[close + 1..].trim());
                if !after.is_empty() && !after.starts_with('#') {
                    bail!("{at}: unexpected {after:?} after the quoted value");
                }
                match q {
                    '\'' => inner.replace("\\'", "'"),
                    _ => text(&escapes(inner), &known, &at, warnings)?.replace('\u{0}', "$"),
                }
            }
            _ => {
                let value = match raw.find(" #") {
                    Some(i) => &raw[..i],
                    None => raw,
                };
                text(value.trim_end(), &known, &at, warnings)?
            }
        };
        out.retain(|(k, _)| k != key);
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// Where the quote `q` that ends `body` is (one not after a backslash).
fn unescaped(body: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == q && !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// A double-quoted value's escapes; `\$` becomes a NUL that the caller
/// turns into `$` after interpolation, so it stays a literal `$`.
fn escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('$') => out.push('\u{0}'),
            Some(other @ ('"' | '\\')) => out.push(other),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        [("TAG", "1.36"), ("EMPTY", ""), ("B", "bee")].into_iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn run(s: &str) -> Result<(String, Vec<String>)> {
        let mut warnings = Vec::new();
        text(s, &vars(), "services.web.image", &mut warnings).map(|t| (t, warnings))
    }

    fn ok(s: &str) -> String {
        run(s).unwrap().0
    }

    #[test]
    fn every_form_as_compose_reads_it() {
        assert_eq!(ok("busybox:${TAG}"), "busybox:1.36");
        assert_eq!(ok("$TAG-x"), "1.36-x");
        assert_eq!(ok("$$TAG costs $5 $"), "$TAG costs $5 $", "$$ escapes; a $ before no name stays");
        assert_eq!(ok("${EMPTY:-d}|${EMPTY-d}|${NOPE-d}|${NOPE:-d}"), "d||d|d");
        assert_eq!(ok("${TAG:+alt}|${EMPTY:+alt}|${EMPTY+alt}|${NOPE+alt}"), "alt||alt|");
        assert_eq!(ok("${NOPE:-${B}}|${NOPE:-${ALSO:-x}}"), "bee|x", "defaults are interpolated too");
        assert_eq!(ok("${TAG:?must}"), "1.36");
        let (unset, warnings) = run("a${NOPE}b").unwrap();
        assert_eq!(unset, "ab");
        assert_eq!(warnings, ["services.web.image: the variable NOPE is not set; it is taken as an empty string"]);
        let err = |s: &str| format!("{:#}", run(s).unwrap_err());
        assert_eq!(err("${EMPTY:?give a tag}"), "services.web.image: the variable EMPTY is required: give a tag");
        assert!(err("${NOPE?x}").contains("NOPE is required"));
        assert!(err("${TAG").contains("without its '}'"));
        assert!(err("${}").contains("names no variable"));
        assert!(err("${TAG/1/2}").contains("invalid interpolation format"));
    }

    #[test]
    fn values_not_keys_are_interpolated_with_their_path() {
        let mut v: Value =
            serde_yaml_ng::from_str("labels: {\"$B\": \"$B\"}\ncommand: [echo, \"${NOPE}\"]\nn: 3\n").unwrap();
        let mut warnings = Vec::new();
        value(&mut v, &vars(), "services.web", &mut warnings).unwrap();
        assert_eq!(v["labels"]["$B"], Value::String("bee".into()));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("services.web.command[1]:"), "{warnings:?}");
    }

    #[test]
    fn env_files_read_quotes_comments_exports_and_bare_keys() {
        let file = "\u{feff}# comment\n\nexport A=1\nB = two words # a comment\nC=\"line\\nnext ${A} \\$A\"\n\
                    D='as ${A} written'\nE: colon\nTAG\nMISSING\nF=\"spans\nlines\"\nG=a#b\nA=again\n";
        let mut warnings = Vec::new();
        let got = env_file(file, &vars(), ".env", &mut warnings).unwrap();
        let got: BTreeMap<_, _> = got.into_iter().collect();
        let want: BTreeMap<String, String> = [
            ("A", "again"),
            ("B", "two words"),
            ("C", "line\nnext 1 $A"),
            ("D", "as ${A} written"),
            ("E", "colon"),
            ("TAG", "1.36"),
            ("F", "spans\nlines"),
            ("G", "a#b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        assert_eq!(got, want);
        assert!(warnings.is_empty(), "{warnings:?}");
        let err = |s: &str| format!("{:#}", env_file(s, &vars(), "a.env", &mut Vec::new()).unwrap_err());
        assert_eq!(err("A=1\nB=\"open\n"), "a.env, line 2: unterminated quoted value");
        assert!(err("MY KEY=1\n").contains("a.env, line 1"));
    }
}
