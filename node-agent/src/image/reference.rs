//! Image references as the operator writes them: a registry reference
//! (`busybox`, `127.0.0.1:5000/app:v1`, `app@sha256:…`) or a local OCI
//! layout directory (`oci:/path/to/layout[:tag]`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use oci_client::Reference;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Registry(Reference),
    Layout { path: PathBuf, tag: Option<String> },
}

#[derive(Debug, thiserror::Error)]
#[error("image reference {input:?} is not valid: {reason}; expected NAME[:TAG][@DIGEST] or oci:PATH[:TAG]")]
pub struct BadReference {
    pub input: String,
    pub reason: String,
}

impl FromStr for ImageRef {
    type Err = BadReference;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| BadReference { input: input.to_owned(), reason: reason.to_owned() };
        if let Some(rest) = input.strip_prefix("oci:") {
            // A tag never holds '/', so a ':' followed by one belongs to the path.
            let (path, tag) = match rest.rsplit_once(':') {
                Some((path, tag)) if !tag.contains('/') && !path.is_empty() => (path, Some(tag)),
                _ => (rest, None),
            };
            if path.is_empty() {
                return Err(bad("the layout path is empty"));
            }
            if tag.is_some_and(str::is_empty) {
                return Err(bad("the tag after ':' is empty"));
            }
            return Ok(Self::Layout { path: PathBuf::from(path), tag: tag.map(str::to_owned) });
        }
        if input.is_empty() {
            return Err(bad("it is empty"));
        }
        // The control plane's grammar, so both sides agree on what is valid.
        berth_proto::model::validate_image(input).map_err(|e| bad(&format!("it {e}")))?;
        Ok(Self::Registry(registry_reference(input)))
    }
}

/// A registry reference that `validate_image` accepted, normalised as
/// Docker does (`busybox` is `docker.io/library/busybox:latest`), built
/// from its parts. Not by `Reference::from_str`: its parser compiles a
/// large regex on first use, which every `berth-agent run` of a registry
/// image would pay before its container could start.
fn registry_reference(input: &str) -> Reference {
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest.to_owned())),
        None => (input, None),
    };
    // A tag follows the last ':' after the last '/' (before it, a ':' is a port).
    let after_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[after_slash..].rfind(':') {
        Some(i) => (&rest[..after_slash + i], Some(rest[after_slash + i + 1..].to_owned())),
        None => (rest, None),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':', '[']) || first == "localhost" => (first, path.to_owned()),
        _ => (DOCKER_HUB, name.to_owned()),
    };
    let registry = if registry == "index.docker.io" { DOCKER_HUB } else { registry }.to_owned();
    let repository =
        if registry == DOCKER_HUB && !repository.contains('/') { format!("library/{repository}") } else { repository };
    match (tag, digest) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(registry, repository, tag, digest),
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or_else(|| "latest".into())),
    }
}

const DOCKER_HUB: &str = "docker.io";

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry(r) => write!(f, "{}", r.whole()),
            Self::Layout { path, tag: Some(tag) } => write!(f, "oci:{}:{tag}", path.display()),
            Self::Layout { path, tag: None } => write!(f, "oci:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references_are_normalised() {
        let r: ImageRef = "busybox".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r: ImageRef = "127.0.0.1:5000/app:v1".parse().unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:5000/app:v1");
    }

    #[test]
    fn registry_references_are_read_as_oci_clients_parser_reads_them() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let inputs = [
            "busybox".to_owned(),
            "busybox:1.36".into(),
            "library/busybox".into(),
            "team/app:v1".into(),
            "index.docker.io/team/app".into(),
            "docker.io/busybox:x".into(),
            "localhost/app".into(),
            "localhost:5000/app:v1".into(),
            "127.0.0.1:5000/umoci/bb:1".into(),
            "registry.example/a/b/c:1.2-rc_3".into(),
            "registry.example:5000/app".into(),
            format!("app@{digest}"),
            format!("127.0.0.1:5000/app:v2@{digest}"),
        ];
        for input in inputs {
            let ours = match input.parse::<ImageRef>().unwrap() {
                ImageRef::Registry(r) => r,
                other => panic!("{other:?}"),
            };
            let theirs = Reference::from_str(&input).unwrap();
            assert_eq!(ours, theirs, "{input}");
            assert_eq!(ours.whole(), theirs.whole(), "{input}");
        }
    }

    #[test]
    fn layout_references_keep_their_path_and_tag() {
        let r: ImageRef = "oci:/srv/images/app:v2".parse().unwrap();
        assert_eq!(r, ImageRef::Layout { path: "/srv/images/app".into(), tag: Some("v2".into()) });
        let r: ImageRef = "oci:./layout".parse().unwrap();
        assert_eq!(r, ImageRef::Layout { path: "./layout".into(), tag: None });
        let r: ImageRef = "oci:/a:b/c".parse().unwrap();
        assert_eq!(r, ImageRef::Layout { path: "/a:b/c".into(), tag: None });
    }

    #[test]
    fn bad_references_name_the_input() {
        for bad in ["", "oci:", "UPPER/case", "a b", "oci:/x:", "app:tag:more"] {
            let err = bad.parse::<ImageRef>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
