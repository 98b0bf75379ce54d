//! Tags resolved to digests, once per change of a service's image, on the
//! server that takes the change (as Swarm's CLI does before it writes a
//! spec): the digest goes into the spec's image, `registry/app:1.2@sha256:…`,
//! so every task of that version pulls the same image even if the tag
//! moves meanwhile, and applying the same tag again is a change only when
//! the tag names another image by then (as `docker stack deploy`
//! resolves). A registry that cannot be asked leaves the image as given,
//! with a warning, as Swarm does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_proto::model::validate_image;
use berth_proto::registries::Registries;
use oci_client::Reference;

/// How long a create or update waits for a registry to say what a tag is.
const WAIT: Duration = Duration::from_secs(3);

/// How long a registry that did not answer in time is not asked again, so
/// an apply of many services behind a silent firewall waits once, not
/// once per service.
const QUIET: Duration = Duration::from_secs(30);

/// Resolves tags with the registries file, remembering which registries
/// were silent lately.
#[derive(Debug)]
pub struct Pinner {
    registries: Registries,
    silent: Mutex<HashMap<String, Instant>>,
}

impl Pinner {
    pub fn new(registries: Registries) -> Self {
        Self { registries, silent: Mutex::default() }
    }

    /// `image` with the digest its tag names now; as it is if it has one.
    pub async fn pin(&self, image: &str) -> Result<String, String> {
        let reference: Reference = image.parse().map_err(|e| format!("{e}"))?;
        if reference.digest().is_some() {
            return Ok(image.to_owned());
        }
        let host = reference.resolve_registry().to_owned();
        let silent = self.silent.lock().unwrap_or_else(|e| e.into_inner()).get(&host).copied();
        if let Some(at) = silent.filter(|at| at.elapsed() < QUIET) {
            return Err(format!("{host} did not answer {}s ago; not asked again yet", at.elapsed().as_secs()));
        }
        let (client, auth) = self.registries.client(&host)?;
        let digest = match tokio::time::timeout(WAIT, client.fetch_manifest_digest(&reference, &auth)).await {
            Ok(Ok(digest)) => digest,
            Ok(Err(e)) => return Err(format!("{e} (see {})", self.registries.file())),
            Err(_) => {
                self.silent.lock().unwrap_or_else(|e| e.into_inner()).insert(host, Instant::now());
                return Err(format!("no answer within {}s", WAIT.as_secs()));
            }
        };
        let pinned = format!("{image}@{digest}");
        // What a registry (or a proxy) says is checked as any image is.
        validate_image(&pinned).map_err(|why| format!("its answer {digest:?} is no digest: the image {why}"))?;
        Ok(pinned)
    }
}

/// The image name a pinned image was pinned from.
pub fn unpinned(image: &str) -> &str {
    image.split_once('@').map_or(image, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_digest_is_kept_and_a_silent_registry_is_not_asked_again_at_once() {
        let pinner = Pinner::new(Registries::default());
        let pinned = format!("registry.invalid:5000/web:1@sha256:{}", "ab".repeat(32));
        assert_eq!(pinner.pin(&pinned).await, Ok(pinned.clone()));
        assert_eq!(unpinned(&pinned), "registry.invalid:5000/web:1");
        assert_eq!(unpinned("web:1"), "web:1");
        pinner.silent.lock().unwrap().insert("registry.invalid:5000".into(), Instant::now());
        let e = pinner.pin("registry.invalid:5000/web:1").await.unwrap_err();
        assert!(e.contains("not asked again"), "{e}");
    }
}
