//! Image references, checked against the distribution reference grammar:
//! `[host[:port]/]path[:tag][@algorithm:hex]`, e.g.
//! `registry.example:5000/team/web:1.2@sha256:…`.
//!
//! Only the form is checked here; whether the image exists is the agent's
//! business when it pulls.

/// Returns why `s` is not a valid image reference, if it is not.
pub fn validate_image(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    // A tag follows the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        check_tag(t)?;
    }
    if name.len() > 255 {
        return Err("has a name longer than 255 characters".into());
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 && is_domain_like(parts[0]) {
        check_domain(parts.remove(0))?;
    }
    for p in parts {
        check_path_component(p)?;
    }
    Ok(())
}

fn is_domain_like(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[')
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = if let Some(stripped) = d.strip_prefix('[') {
        let (v6, after) = stripped.split_once(']').ok_or("has an unclosed '[' in the registry host")?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("has an invalid IPv6 registry host {v6:?}"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(h) = host {
        let ok_label = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !h.split('.').all(ok_label) {
            return Err(format!("has an invalid registry host {h:?}"));
        }
    }
    if let Some(p) = port {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return Err(format!("has an invalid registry port {p:?}"));
        }
    }
    Ok(())
}

fn check_path_component(p: &str) -> Result<(), String> {
    let err = || {
        Err(format!(
            "has an invalid repository path component {p:?} (lowercase letters and digits, separated by '.', '_', '__' or '-')"
        ))
    };
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if p.is_empty() || !p.starts_with(alnum) || !p.ends_with(alnum) {
        return err();
    }
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if alnum(c) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i] as char) {
            i += 1;
        }
        let sep = &p[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.chars().all(|c| c == '-')) {
            return err();
        }
    }
    Ok(())
}

fn check_tag(t: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok =
        !t.is_empty() && t.len() <= 128 && t.starts_with(word) && t.chars().all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("has an invalid tag {t:?} (up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-')"))
    }
}

fn check_digest(d: &str) -> Result<(), String> {
    let bad = || Err(format!("has an invalid digest {d:?} (expected algorithm:hex, e.g. sha256:<64 hex digits>)"));
    let Some((alg, hex)) = d.split_once(':') else {
        return bad();
    };
    let alg_ok =
        !alg.is_empty() && alg.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c));
    let hex_ok = hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    let len_ok = match alg {
        "sha256" => hex.len() == 64,
        "sha512" => hex.len() == 128,
        _ => true,
    };
    if alg_ok && hex_ok && len_ok {
        Ok(())
    } else {
        bad()
    }
}

#[cfg(test)]
mod tests {
    use super::validate_image;

    #[test]
    fn accepts_common_references() {
        for r in [
            "busybox",
            "library/busybox:1.36",
            "127.0.0.1:5000/berth/web:v1",
            "localhost/app",
            "registry.example.com/a/b/c_d__e-f:latest",
            "[::1]:5000/x",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(validate_image(r), Ok(()), "{r}");
        }
    }

    #[test]
    fn rejects_bad_references() {
        for r in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "-a",
            "a_-b",
            "host:99999/a",
            "busybox@sha256:abc",
            "busy box",
            "a/b:c:d",
        ] {
            assert!(validate_image(r).is_err(), "{r} should be rejected");
        }
    }
}
