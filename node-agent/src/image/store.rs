//! The node's image store: layers unpacked once, by digest, and shared.
//!
//! ```text
//! ROOT/layers/sha256/<hex>/   one unpacked layer (an overlayfs lower dir)
//! ROOT/locks/<hex>            flock: one unpacker per layer, across processes
//! ROOT/tmp/                   downloads and unpacks in progress
//! ROOT/images.json            reference → manifest digest, config, layers
//!                             (replaced durably; if unreadable, set aside by the next pull and rebuilt)
//! ROOT/store.lock             flock: pulls share it, prune takes it alone
//! ```
//!
//! A layer directory appears by rename only when complete, so its presence
//! means it is whole. Concurrent pulls of one image, in this process or in
//! others, wait on the layer's lock and then find the layer done.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use oci_client::manifest::OciDescriptor;
use serde::{Deserialize, Serialize};

use super::source::{digest_hex, sha256_of, Source};
use super::{unpack, ImageConfig, ImageRef, PullError, Registries};
use crate::stats::AgentStats;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub reference: String,
    /// Digest of the platform manifest.
    pub digest: String,
    pub config: ImageConfig,
    /// Layer blob digests, bottom first.
    pub layers: Vec<String>,
    /// Sum of the compressed layer sizes, as the manifest states them.
    pub size: u64,
    pub pulled_at: u64,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    stats: AgentStats,
}

type Images = BTreeMap<String, Image>;

impl Store {
    pub fn open(root: &Path) -> Result<Self, PullError> {
        for dir in ["layers/sha256", "locks", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|e| PullError::io(&path, e))?;
        }
        Ok(Self { root: root.to_path_buf(), stats: AgentStats::default() })
    }

    /// Counts pulls and downloaded bytes in `stats` (the agent's).
    pub fn count_in(&mut self, stats: &AgentStats) {
        self.stats = stats.clone();
    }

    /// The image from the store, pulled first if it is not there.
    pub async fn ensure(&self, image: &ImageRef, registries: &Registries) -> Result<Image, PullError> {
        match self.get(image) {
            Err(PullError::NotPulled(_)) => self.pull(image, registries).await,
            other => other,
        }
    }

    /// Fetches the image unless every layer is already here, and records it.
    pub async fn pull(&self, image: &ImageRef, registries: &Registries) -> Result<Image, PullError> {
        let started = std::time::Instant::now();
        let source = Source::new(image, registries)?;
        let resolved = source.resolve().await?;
        let config_digest = sha256_of(&resolved.config);
        if config_digest != resolved.manifest.config.digest {
            return Err(PullError::Digest { expected: resolved.manifest.config.digest.clone(), actual: config_digest });
        }
        let config = ImageConfig::parse(&resolved.config)
            .map_err(|e| PullError::BadImage(format!("config {}: {e}", resolved.manifest.config.digest)))?;
        let layers = &resolved.manifest.layers;
        if config.diff_ids.len() != layers.len() {
            return Err(PullError::BadImage(format!(
                "manifest lists {} layers but the config {} diff ids",
                layers.len(),
                config.diff_ids.len()
            )));
        }
        let _shared = self.lock(self.root.join("store.lock"), FlockArg::LockShared).await?;
        let jobs =
            layers.iter().zip(&config.diff_ids).map(|(layer, diff_id)| self.ensure_layer(&source, layer, diff_id));
        futures_util::future::try_join_all(jobs).await?;
        let record = Image {
            reference: image.to_string(),
            digest: resolved.digest,
            layers: layers.iter().map(|l| l.digest.clone()).collect(),
            size: layers.iter().map(|l| l.size.max(0) as u64).sum(),
            config,
            pulled_at: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        };
        self.update(|images| {
            images.insert(record.reference.clone(), record.clone());
            Ok(())
        })
        .await?;
        self.stats.pull_seconds.observe(started.elapsed().as_secs_f64());
        Ok(record)
    }

    /// The recorded image, without touching the network.
    pub fn get(&self, image: &ImageRef) -> Result<Image, PullError> {
        let name = image.to_string();
        self.read()?.remove(&name).ok_or(PullError::NotPulled(name))
    }

    pub fn list(&self) -> Result<Vec<Image>, PullError> {
        Ok(self.read()?.into_values().collect())
    }

    /// The image's layer directories, bottom first.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, PullError> {
        image.layers.iter().map(|d| Ok(self.layer_dir(digest_hex(d)?))).collect()
    }

    /// Forgets a reference; `in_use` names a container still using it.
    pub async fn remove(
        &self,
        image: &ImageRef,
        in_use: impl Fn(&Image) -> Option<String>,
    ) -> Result<Image, PullError> {
        let name = image.to_string();
        self.update(|images| {
            let record = images.get(&name).ok_or_else(|| PullError::NotPulled(name.clone()))?;
            if let Some(container) = in_use(record) {
                return Err(PullError::InUse { image: name.clone(), container });
            }
            images.remove(&name).ok_or_else(|| PullError::NotPulled(name.clone()))
        })
        .await
    }

    /// Deletes every layer no recorded image uses and `keep` does not name
    /// (the layers of existing containers). Returns the deleted digests.
    pub async fn prune(&self, keep: &HashSet<String>) -> Result<Vec<String>, PullError> {
        let _alone = self.lock(self.root.join("store.lock"), FlockArg::LockExclusive).await?;
        let mut used: HashSet<String> = keep.clone();
        // Which layers the images use is unknown until the index is whole.
        let images = self.index()?.ok_or_else(|| {
            PullError::BadImage("the image index is unreadable; pull an image to rebuild it before pruning".into())
        })?;
        used.extend(images.into_values().flat_map(|i| i.layers));
        let dir = self.root.join("layers/sha256");
        let mut removed = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| PullError::io(&dir, e))? {
            let entry = entry.map_err(|e| PullError::io(&dir, e))?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !used.contains(&digest) {
                fs::remove_dir_all(entry.path()).map_err(|e| PullError::io(&entry.path(), e))?;
                removed.push(digest);
            }
        }
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| PullError::io(&tmp, e))?.flatten() {
            let _ = fs::remove_dir_all(entry.path());
        }
        Ok(removed)
    }

    fn layer_dir(&self, hex: &str) -> PathBuf {
        self.root.join("layers/sha256").join(hex)
    }

    async fn ensure_layer(&self, source: &Source, layer: &OciDescriptor, diff_id: &str) -> Result<(), PullError> {
        let hex = digest_hex(&layer.digest)?;
        let done = self.layer_dir(hex);
        if done.is_dir() {
            return Ok(());
        }
        let _one = self.lock(self.root.join("locks").join(hex), FlockArg::LockExclusive).await?;
        if done.is_dir() {
            return Ok(()); // another puller finished it while we waited
        }
        let tmp_root = self.root.join("tmp");
        let scratch = tempfile::tempdir_in(&tmp_root).map_err(|e| PullError::io(&tmp_root, e))?;
        let blob = source.layer(layer, scratch.path()).await?;
        if matches!(source, Source::Registry { .. }) {
            self.stats.pull_bytes.inc_by(fs::metadata(&blob).map_or(0, |m| m.len()));
        }
        let fs_dir = scratch.path().join("fs");
        let (digest, diff_id) = (layer.digest.clone(), diff_id.to_owned());
        let target = fs_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), PullError> {
            fs::create_dir(&target).map_err(|e| PullError::io(&target, e))?;
            let file = File::open(&blob).map_err(|e| PullError::io(&blob, e))?;
            let unpacked =
                unpack(file, &target).map_err(|source| PullError::Unpack { layer: digest.clone(), error: source })?;
            if unpacked.diff_id != diff_id {
                return Err(PullError::Digest { expected: diff_id, actual: unpacked.diff_id });
            }
            Ok(())
        })
        .await
        .map_err(PullError::join)??;
        fs::rename(&fs_dir, &done).map_err(|e| PullError::io(&done, e))?;
        Ok(())
    }

    /// The index; one that cannot be read counts as empty here (see
    /// [`Self::index`]).
    fn read(&self) -> Result<Images, PullError> {
        Ok(self.index()?.unwrap_or_default())
    }

    /// The index, or None when its file cannot be read as one (a disk that
    /// lost its last write, a hand edit): the next pull sets it aside as
    /// `images.json.corrupt` and starts it over, finding every layer here.
    fn index(&self) -> Result<Option<Images>, PullError> {
        let path = self.root.join("images.json");
        match fs::read(&path) {
            Ok(data) => match serde_json::from_slice(&data) {
                Ok(images) => Ok(Some(images)),
                Err(e) => {
                    tracing::warn!("{}: {e}; the next pull rebuilds it", path.display());
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(Images::new())),
            Err(e) => Err(PullError::io(&path, e)),
        }
    }

    /// Read-modify-write of images.json under its lock, replaced atomically.
    async fn update<T>(&self, change: impl FnOnce(&mut Images) -> Result<T, PullError>) -> Result<T, PullError> {
        let _lock = self.lock(self.root.join("images.lock"), FlockArg::LockExclusive).await?;
        let path = self.root.join("images.json");
        let mut images = match self.index()? {
            Some(images) => images,
            None => {
                let aside = path.with_extension("json.corrupt");
                fs::rename(&path, &aside).map_err(|e| PullError::io(&path, e))?;
                tracing::warn!("the image index was unreadable: kept as {}, and started over", aside.display());
                Images::new()
            }
        };
        let out = change(&mut images)?;
        let data = serde_json::to_vec_pretty(&images).map_err(|e| PullError::io(&path, e.into()))?;
        crate::durable::write(&path, &data).map_err(|e| PullError::io(&path, e))?;
        Ok(out)
    }

    async fn lock(&self, path: PathBuf, how: FlockArg) -> Result<Flock<File>, PullError> {
        tokio::task::spawn_blocking(move || {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| PullError::io(&path, e))?;
            Flock::lock(file, how).map_err(|(_, e)| PullError::io(&path, e.into()))
        })
        .await
        .map_err(PullError::join)?
    }
}
