//! Tags resolved to digests, once per change of a service's image, on the
//! server that takes the change (as Swarm's CLI does before it writes a
//! spec): the digest goes into the spec's image, `registry/app:1.2@sha256:…`,
//! so every task of that version pulls the same image even if the tag
//! moves meanwhile, and applying the same tag again is a change only when
//! the tag names another image by then (as `docker stack deploy`
//! resolves). A registry that cannot be asked leaves the image as given,
//! with a warning, as Swarm does.

use std::time::Duration;

use berth_proto::registries::Registries;
use oci_client::Reference;

/// How long a create or update waits for a registry to say what a tag is.
const WAIT: Duration = Duration::from_secs(5);

/// `image` with the digest its tag names now; as it is if it has one.
pub async fn pin(registries: &Registries, image: &str) -> Result<String, String> {
    let reference: Reference = image.parse().map_err(|e| format!("{e}"))?;
    if reference.digest().is_some() {
        return Ok(image.to_owned());
    }
    let (client, auth) = registries.client(reference.resolve_registry());
    let asked = tokio::time::timeout(WAIT, client.fetch_manifest_digest(&reference, &auth)).await;
    match asked {
        Ok(Ok(digest)) => Ok(format!("{image}@{digest}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", WAIT.as_secs())),
    }
}

/// The image name a pinned image was pinned from.
pub fn unpinned(image: &str) -> &str {
    image.split_once('@').map_or(image, |(name, _)| name)
}
