//! The content store (blobs by digest, verified before they become visible) and the image
//! metadata table in redb, and pulling into them.

use std::{
    collections::{BTreeSet, HashMap},
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use oci_client::{
    client::{ClientConfig, ClientProtocol},
    errors::{OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
    Client, Reference,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{is_loopback_registry, normalize, reference_string, ImageError};

/// Image id (the config digest) → JSON [`ImageRecord`].
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");

/// What the CRI reports about an image, and what containers are made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Compressed layer bytes plus config.
    pub size: u64,
    pub manifest_digest: String,
    pub layers: Vec<String>,
    /// The image config JSON (entrypoint, cmd, env, user, workdir).
    pub config: String,
}

/// Blobs under `<root>/blobs/sha256/<hex>`; a blob is written to a temporary file, hashed, and
/// renamed into place only when its digest matches.
pub struct ContentStore {
    root: PathBuf,
    counter: AtomicU64,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ContentStore {
    pub fn new(root: &Path) -> Result<Self, ImageError> {
        let blobs = root.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(format!("create {}", blobs.display())))?;
        std::fs::create_dir_all(root.join("ingest"))
            .map_err(io(format!("create {}/ingest", root.display())))?;
        Ok(ContentStore {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
        })
    }

    fn hex(digest: &str) -> Result<&str, ImageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ImageError::InvalidReference {
                reference: digest.to_string(),
                reason: "not a sha256 digest".into(),
            })?;
        Ok(hex)
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("blobs/sha256").join(Self::hex(digest)?))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.exists())
    }

    /// A fresh temporary path for an ingest.
    pub fn ingest_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("ingest")
            .join(format!("{}-{n}", std::process::id()))
    }

    /// Verifies the file at `ingest` against `digest` and moves it into the store.
    pub fn commit(&self, ingest: &Path, digest: &str) -> Result<PathBuf, ImageError> {
        let target = self.path(digest)?;
        let mut file =
            std::fs::File::open(ingest).map_err(io(format!("open {}", ingest.display())))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(io(format!("hash {}", ingest.display())))?;
        let actual = format!(
            "sha256:{}",
            hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        if actual != digest {
            let _ = std::fs::remove_file(ingest);
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        std::fs::rename(ingest, &target).map_err(io(format!("commit {}", target.display())))?;
        Ok(target)
    }

    /// Writes `data` as the blob `digest`, verified.
    pub fn write(&self, digest: &str, data: &[u8]) -> Result<PathBuf, ImageError> {
        let actual = format!("sha256:{}", sha256_hex(data));
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        let ingest = self.ingest_path();
        let mut file =
            std::fs::File::create(&ingest).map_err(io(format!("create {}", ingest.display())))?;
        file.write_all(data)
            .map_err(io(format!("write {}", ingest.display())))?;
        drop(file);
        self.commit(&ingest, digest)
    }

    pub fn remove(&self, digest: &str) {
        if let Ok(path) = self.path(digest) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How to reach registries: per host, mirrors tried first and plain http allowed.
#[derive(Debug, Clone, Default)]
pub struct RegistryHosts {
    /// host → mirror endpoints (`http://127.0.0.1:5000`).
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// Hosts spoken to over plain http (loopback always is).
    pub plain_http: Vec<String>,
}

/// Images: the content store plus the metadata table.
pub struct ImageStore {
    pub content: ContentStore,
    db: Database,
    db_path: PathBuf,
    /// Unpacked layers, `<root>/layers/<hex of the compressed digest>`, overlayfs lower dirs.
    layers_root: PathBuf,
    /// The layer directories each container's rootfs stacks, by container id (containerd's
    /// snapshot references): removing an image keeps those until their last container goes.
    held: Mutex<HashMap<String, Vec<PathBuf>>>,
    /// Layer directories an image's removal left for containers that still stack them.
    kept: Mutex<BTreeSet<PathBuf>>,
    /// The lock of each layer directory being made: concurrent first creates of an image wait
    /// for one unpack instead of each making a copy (and deleting all but one).
    making: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let content = ContentStore::new(&root.join("content"))?;
        let db_path = root.join("images.redb");
        let store_err = |message: String| ImageError::Store {
            path: db_path.display().to_string(),
            message,
        };
        // Bounded page cache: redb's default (1 GiB) would stay resident in ingotd.
        let db = redb::Builder::new()
            .set_cache_size(1 << 20)
            .create(&db_path)
            .map_err(|err| store_err(err.to_string()))?;
        let txn = db.begin_write().map_err(|err| store_err(err.to_string()))?;
        txn.open_table(IMAGES)
            .map_err(|err| store_err(err.to_string()))?;
        txn.commit().map_err(|err| store_err(err.to_string()))?;
        let layers_root = root.join("layers");
        std::fs::create_dir_all(&layers_root)
            .map_err(io(format!("create {}", layers_root.display())))?;
        Ok(ImageStore {
            content,
            db,
            db_path,
            layers_root,
            held: Mutex::default(),
            kept: Mutex::default(),
            making: Mutex::default(),
        })
    }

    fn store_err(&self, err: impl std::fmt::Display) -> ImageError {
        ImageError::Store {
            path: self.db_path.display().to_string(),
            message: err.to_string(),
        }
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let txn = self.db.begin_read().map_err(|e| self.store_err(e))?;
        let table = txn.open_table(IMAGES).map_err(|e| self.store_err(e))?;
        let mut images = Vec::new();
        for entry in table.iter().map_err(|e| self.store_err(e))? {
            let (_, value) = entry.map_err(|e| self.store_err(e))?;
            images.push(serde_json::from_slice(value.value()).map_err(|e| self.store_err(e))?);
        }
        Ok(images)
    }

    fn put(&self, record: &ImageRecord) -> Result<(), ImageError> {
        let value = serde_json::to_vec(record).map_err(|e| self.store_err(e))?;
        let txn = self.db.begin_write().map_err(|e| self.store_err(e))?;
        {
            let mut table = txn.open_table(IMAGES).map_err(|e| self.store_err(e))?;
            table
                .insert(record.id.as_str(), value.as_slice())
                .map_err(|e| self.store_err(e))?;
        }
        txn.commit().map_err(|e| self.store_err(e))
    }

    /// Finds an image by id (`sha256:…` or its hex), tag or digest reference.
    pub fn resolve(&self, name: &str) -> Result<Option<ImageRecord>, ImageError> {
        let images = self.list()?;
        let by_id = images
            .iter()
            .find(|i| i.id == name || i.id.strip_prefix("sha256:") == Some(name));
        if let Some(image) = by_id {
            return Ok(Some(image.clone()));
        }
        let Ok(reference) = normalize(name) else {
            return Ok(None);
        };
        let whole = reference_string(&reference);
        Ok(images
            .into_iter()
            .find(|i| i.repo_tags.contains(&whole) || i.repo_digests.contains(&whole)))
    }

    /// Removes an image and the blobs no other image uses. False when there was none.
    pub fn remove(&self, name: &str) -> Result<bool, ImageError> {
        let Some(image) = self.resolve(name)? else {
            return Ok(false);
        };
        let txn = self.db.begin_write().map_err(|e| self.store_err(e))?;
        {
            let mut table = txn.open_table(IMAGES).map_err(|e| self.store_err(e))?;
            table
                .remove(image.id.as_str())
                .map_err(|e| self.store_err(e))?;
        }
        txn.commit().map_err(|e| self.store_err(e))?;
        let still_used: Vec<String> = self
            .list()?
            .into_iter()
            .flat_map(|i| {
                let mut blobs = i.layers;
                blobs.push(i.id);
                blobs.push(i.manifest_digest);
                blobs
            })
            .collect();
        let mut blobs = image.layers.clone();
        blobs.push(image.id.clone());
        blobs.push(image.manifest_digest.clone());
        let mut dirs = vec![self.init_layer_dir(&image)];
        for blob in blobs {
            if !still_used.contains(&blob) {
                self.content.remove(&blob);
                if let Some(hex) = blob.strip_prefix("sha256:") {
                    dirs.push(self.layers_root.join(hex));
                }
            }
        }
        let held = self.held_dirs();
        for dir in dirs {
            if held.contains(&dir) {
                locked(&self.kept).insert(dir);
            } else {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        Ok(true)
    }

    /// The layer directories of `image` a container's rootfs stacks, bottom first (those
    /// [`Self::layer_dirs`] gives once they are unpacked).
    pub fn layer_paths(&self, image: &ImageRecord) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = image
            .layers
            .iter()
            .map(|digest| self.layers_root.join(digest.trim_start_matches("sha256:")))
            .collect();
        dirs.push(self.init_layer_dir(image));
        dirs
    }

    /// Every layer directory a container stacks.
    fn held_dirs(&self) -> BTreeSet<PathBuf> {
        locked(&self.held).values().flatten().cloned().collect()
    }

    /// Container `id` stacks `dirs`: they outlive their image's removal until [`Self::release`].
    pub fn hold(&self, id: &str, dirs: Vec<PathBuf>) {
        locked(&self.held).insert(id.to_string(), dirs);
    }

    /// Container `id` is gone: the layer directories its image's removal kept for it and no
    /// other container stacks are removed.
    pub fn release(&self, id: &str) {
        if locked(&self.held).remove(id).is_none() || locked(&self.kept).is_empty() {
            return;
        }
        self.remove_kept();
    }

    /// Removes the kept directories no container holds; those an image uses again (it was
    /// pulled anew) are its own once more and stay.
    fn remove_kept(&self) {
        let mut used = self.held_dirs();
        // An unreadable store removes nothing kept.
        let Ok(images) = self.list() else { return };
        used.extend(images.iter().flat_map(|image| self.layer_paths(image)));
        let free: Vec<PathBuf> = {
            let mut kept = locked(&self.kept);
            let free = kept
                .iter()
                .filter(|d| !used.contains(*d))
                .cloned()
                .collect();
            kept.retain(|d| used.contains(d));
            free
        };
        for dir in free {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// At start, once every container's layers are held: layer directories no image and no
    /// container stacks (an image was removed while a container used it, then ingotd ended)
    /// are removed. Directories being unpacked have other names and are left alone.
    pub fn remove_unreferenced_layers(&self) -> Result<(), ImageError> {
        let referenced: BTreeSet<PathBuf> = self
            .list()?
            .iter()
            .flat_map(|image| self.layer_paths(image))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.layers_root) else {
            return Ok(());
        };
        let mut kept = locked(&self.kept);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let hex = name.strip_prefix("init-").unwrap_or(&name);
            let layer = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            if layer && !referenced.contains(&entry.path()) {
                kept.insert(entry.path());
            }
        }
        drop(kept);
        self.remove_kept();
        Ok(())
    }

    /// The image's layers unpacked (on first use) in overlayfs form, bottom first. Blocking.
    pub fn layer_dirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        let manifest_path = self.content.path(&image.manifest_digest)?;
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&manifest_path)
                .map_err(io(format!("read manifest {}", manifest_path.display())))?,
        )
        .map_err(|e| self.store_err(format!("manifest of {}: {e}", image.id)))?;
        let layers = manifest
            .get("layers")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut dirs = Vec::with_capacity(layers.len());
        for layer in layers {
            let digest = layer
                .get("digest")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            let media_type = layer
                .get("mediaType")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("application/vnd.oci.image.layer.v1.tar+gzip");
            let blob = self.content.path(digest)?;
            let hex = digest.trim_start_matches("sha256:");
            let dir = self.layers_root.join(hex);
            if !dir.exists() {
                let file = std::fs::File::open(&blob)
                    .map_err(io(format!("open layer {}", blob.display())))?;
                self.make_dir(&dir, &format!("unpack-{hex}"), |partial| {
                    crate::unpack::layer_reader(std::io::BufReader::new(file), media_type)
                        .and_then(|reader| crate::unpack::unpack_layer(reader, partial))
                })?;
            }
            dirs.push(dir);
        }
        let missing = crate::init_layer::missing(&dirs);
        if !missing.is_empty() {
            dirs.push(self.init_layer(image, &dirs, &missing)?);
        }
        Ok(dirs)
    }

    /// `<root>/layers/init-<image id hex>`: the image's [`crate::init_layer`], made on first use.
    fn init_layer(
        &self,
        image: &ImageRecord,
        layers: &[PathBuf],
        missing: &[&str],
    ) -> Result<PathBuf, ImageError> {
        let dir = self.init_layer_dir(image);
        if !dir.exists() {
            let hex = image.id.trim_start_matches("sha256:");
            self.make_dir(&dir, &format!("init-{hex}"), |partial| {
                crate::init_layer::build(partial, layers, missing)
            })?;
        }
        Ok(dir)
    }

    /// Makes `dir` under the layers root whole or not at all: `build` fills a private partial
    /// directory (`.<name>-<pid>-<n>`), which is then renamed into place. Calls of this store
    /// for the same directory wait for the first (ten pods of a new image starting at once
    /// unpack it once); another process making it may still win the race, either copy serves.
    fn make_dir(
        &self,
        dir: &Path,
        name: &str,
        build: impl FnOnce(&Path) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let making = Arc::clone(locked(&self.making).entry(dir.to_path_buf()).or_default());
        let result = {
            let _one_at_a_time = locked(&making);
            if dir.exists() {
                // Made by the call this one waited for.
                Ok(())
            } else {
                self.make_dir_now(dir, name, build)
            }
        };
        // Every call lets go of its handle while it holds the map, so the last one sees only
        // the map's and removes the entry (counting its own handle, a call that had not let go
        // yet could make each call think another was left, and the entry stayed forever).
        let mut all = locked(&self.making);
        drop(making);
        if all
            .get(dir)
            .is_some_and(|entry| Arc::strong_count(entry) == 1)
        {
            all.remove(dir);
        }
        result
    }

    fn make_dir_now(
        &self,
        dir: &Path,
        name: &str,
        build: impl FnOnce(&Path) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let n = self.content.counter.fetch_add(1, Ordering::Relaxed);
        let partial = self
            .layers_root
            .join(format!(".{name}-{}-{n}", std::process::id()));
        if let Err(err) = build(&partial) {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(err);
        }
        if std::fs::rename(&partial, dir).is_err() {
            let _ = std::fs::remove_dir_all(&partial);
            if !dir.exists() {
                return Err(ImageError::Io {
                    context: format!("move {} into place", dir.display()),
                    source: std::io::Error::other("rename failed"),
                });
            }
        }
        Ok(())
    }

    fn init_layer_dir(&self, image: &ImageRecord) -> PathBuf {
        let hex = image.id.trim_start_matches("sha256:");
        self.layers_root.join(format!("init-{hex}"))
    }

    /// Pulls `name` (mirrors first, then the registry itself) and records it.
    pub async fn pull(
        &self,
        name: &str,
        auth: &RegistryAuth,
        hosts: &RegistryHosts,
    ) -> Result<ImageRecord, ImageError> {
        let reference = normalize(name)?;
        let registry = reference.resolve_registry().to_string();
        let mut attempts: Vec<(Reference, String)> = Vec::new();
        for mirror in hosts
            .mirrors
            .get(reference.registry())
            .into_iter()
            .flatten()
        {
            let host = mirror
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_string();
            let mirrored = match reference.digest() {
                Some(digest) => Reference::with_digest(
                    host.clone(),
                    reference.repository().to_string(),
                    digest.to_string(),
                ),
                None => Reference::with_tag(
                    host.clone(),
                    reference.repository().to_string(),
                    reference.tag().unwrap_or("latest").to_string(),
                ),
            };
            attempts.push((mirrored, mirror.clone()));
        }
        attempts.push((reference.clone(), registry.clone()));

        let mut plain = hosts.plain_http.clone();
        for (candidate, endpoint) in &attempts {
            let host = candidate.resolve_registry().to_string();
            if endpoint.starts_with("http://") || is_loopback_registry(&host) {
                plain.push(host);
            }
        }
        let client = client(plain, &attempts, &reference)?;

        let mut last_error = None;
        for (candidate, endpoint) in &attempts {
            match self.pull_from(&client, candidate, &reference, auth).await {
                Ok(record) => return Ok(record),
                Err(err) => {
                    tracing::warn!(image = name, endpoint, error = %err, "pull attempt failed");
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or(ImageError::NotFound {
            reference: name.to_string(),
        }))
    }

    async fn pull_from(
        &self,
        client: &Client,
        source: &Reference,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<ImageRecord, ImageError> {
        let whole = reference_string(reference);
        let registry_error = |err: OciDistributionError| map_pull_error(&whole, source, err);
        let (manifest, manifest_digest, config, list_digest) = client
            .pull_manifest_and_config_and_list_digest(source, auth)
            .await
            .map_err(registry_error)?;
        self.content
            .write(&manifest.config.digest, config.as_bytes())?;
        let mut size = u64::try_from(manifest.config.size).unwrap_or(0);
        let mut layers = Vec::new();
        for layer in &manifest.layers {
            size += u64::try_from(layer.size).unwrap_or(0);
            layers.push(layer.digest.clone());
            if self.content.contains(&layer.digest) {
                continue;
            }
            let ingest = self.content.ingest_path();
            let file = tokio::fs::File::create(&ingest)
                .await
                .map_err(io(format!("create {}", ingest.display())))?;
            let pulled = client.pull_blob(source, layer, file).await;
            if let Err(err) = pulled {
                let _ = std::fs::remove_file(&ingest);
                return Err(registry_error(err));
            }
            self.content.commit(&ingest, &layer.digest)?;
        }
        let manifest_json = serde_json::to_vec(&manifest).map_err(|e| self.store_err(e))?;
        // The registry's bytes may differ from our re-encoding; keep ours under our digest.
        let stored_manifest = format!("sha256:{}", sha256_hex(&manifest_json));
        self.content.write(&stored_manifest, &manifest_json)?;

        let id = manifest.config.digest.clone();
        let repo = format!("{}/{}", reference.registry(), reference.repository());
        let repo_digest = format!("{repo}@{}", list_digest.unwrap_or(manifest_digest));
        let mut record = self.resolve(&id)?.unwrap_or(ImageRecord {
            id: id.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size,
            manifest_digest: stored_manifest,
            layers,
            config,
        });
        if reference.digest().is_none() && !record.repo_tags.contains(&whole) {
            // A tag moves: it leaves whichever image had it.
            for mut other in self.list()? {
                if other.id != id && other.repo_tags.contains(&whole) {
                    other.repo_tags.retain(|t| t != &whole);
                    self.put(&other)?;
                }
            }
            record.repo_tags.push(whole.clone());
        }
        if !record.repo_digests.contains(&repo_digest) {
            record.repo_digests.push(repo_digest);
        }
        self.put(&record)?;
        tracing::info!(image = %whole, id = %record.id, size, "pulled");
        Ok(record)
    }
}

fn map_pull_error(whole: &str, source: &Reference, err: OciDistributionError) -> ImageError {
    let not_found = match &err {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    };
    if not_found {
        ImageError::NotFound {
            reference: whole.to_string(),
        }
    } else {
        ImageError::Registry {
            reference: whole.to_string(),
            registry: source.resolve_registry().to_string(),
            message: err.to_string(),
        }
    }
}

/// The registry client for one pull. `oci_client::Client::new` falls back to a default client
/// when its configuration does not build, and that default panics where the node has no CA
/// certificates (no `ca-certificates`, as on a minimal node): the configuration is built here,
/// and where it fails for want of certificates while every endpoint is plain http, TLS is never
/// used, so the client is built without loading them (blobs are checked against their
/// digests either way). Otherwise the pull fails, naming the reason.
fn client(
    plain: Vec<String>,
    attempts: &[(oci_client::Reference, String)],
    reference: &oci_client::Reference,
) -> Result<Client, ImageError> {
    let config = |plain: Vec<String>, accept_invalid_certificates: bool| ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        accept_invalid_certificates,
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        // An unreachable registry or mirror must fail the attempt, not hang the pull.
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    };
    let all_plain = attempts
        .iter()
        .all(|(candidate, _)| plain.contains(&candidate.resolve_registry().to_string()));
    match Client::try_from(config(plain.clone(), false)) {
        Ok(client) => Ok(client),
        Err(err) if all_plain => {
            tracing::info!(error = %err, "no TLS client (only plain http is used for this pull)");
            Client::try_from(config(plain, true))
                .map_err(|err| registry_client_error(reference, err))
        }
        Err(err) => Err(registry_client_error(reference, err)),
    }
}

fn registry_client_error(
    reference: &oci_client::Reference,
    err: oci_client::errors::OciDistributionError,
) -> ImageError {
    ImageError::Registry {
        reference: reference.whole(),
        registry: reference.resolve_registry().to_string(),
        message: format!(
            "cannot make the registry client (does the node have CA certificates, package \
             ca-certificates?): {err}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_verified_before_it_is_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::new(dir.path()).expect("store");
        let data = b"layer bytes";
        let digest = format!("sha256:{}", sha256_hex(data));
        let path = store.write(&digest, data).expect("write");
        assert_eq!(std::fs::read(path).expect("read"), data);
        assert!(store.contains(&digest));

        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = store.write(&wrong, data).expect_err("mismatch");
        assert!(matches!(err, ImageError::DigestMismatch { .. }));
        assert!(!store.contains(&wrong));
        let ingest = store.ingest_path();
        std::fs::write(&ingest, b"tampered").expect("write");
        assert!(store.commit(&ingest, &digest).is_err());
        assert!(!ingest.exists(), "a rejected ingest is removed");
        assert!(store.path("md5:abc").is_err());
    }

    /// An uncompressed layer of `files` (path, content) in the store's content; its digest.
    fn layer_blob(store: &ImageStore, files: &[(String, &[u8])]) -> String {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_cksum();
            builder
                .append_data(&mut header, name, *body)
                .expect("append");
        }
        let tar = builder.into_inner().expect("tar");
        let digest = format!("sha256:{}", sha256_hex(&tar));
        store.content.write(&digest, &tar).expect("blob");
        digest
    }

    /// An image `tag` of `layers` (bottom first), its manifest in the store's content and its
    /// record put.
    fn image_of_layers(store: &ImageStore, tag: &str, layers: &[String]) -> ImageRecord {
        let entries: Vec<serde_json::Value> = layers
            .iter()
            .map(|digest| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest})
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({ "layers": entries })).expect("json");
        let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
        store
            .content
            .write(&manifest_digest, &manifest)
            .expect("manifest");
        let record = ImageRecord {
            id: manifest_digest.clone(),
            repo_tags: vec![tag.into()],
            repo_digests: vec![],
            size: 1,
            manifest_digest,
            layers: layers.to_vec(),
            config: "{}".into(),
        };
        store.put(&record).expect("put");
        record
    }

    #[test]
    fn concurrent_first_uses_of_an_image_unpack_it_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let files: Vec<(String, &[u8])> =
            (0..200).map(|i| (format!("bin/f{i}"), &b"x"[..])).collect();
        let layer = layer_blob(&store, &files);
        let record = image_of_layers(&store, "docker.io/library/c:latest", &[layer]);
        let before = store.content.counter.load(Ordering::Relaxed);
        let all: Vec<Vec<PathBuf>> = std::thread::scope(|scope| {
            let calls: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| store.layer_dirs(&record).expect("layer dirs")))
                .collect();
            calls
                .into_iter()
                .map(|c| c.join().expect("thread"))
                .collect()
        });
        assert!(
            all.iter().all(|dirs| dirs == &all[0] && dirs.len() == 2),
            "{all:?}"
        );
        // One unpack of the layer and one init layer, not one of each per call.
        assert_eq!(store.content.counter.load(Ordering::Relaxed) - before, 2);
        assert!(locked(&store.making).is_empty());
        let partials = std::fs::read_dir(&store.layers_root)
            .expect("layers")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(partials, 0);
    }

    #[test]
    fn layers_unpack_once_bottom_first_and_go_with_the_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let base = layer_blob(&store, &[("etc/base".into(), b"base")]);
        let top = layer_blob(&store, &[("etc/top".into(), b"top")]);
        let record = image_of_layers(
            &store,
            "docker.io/library/l:latest",
            &[base.clone(), top.clone()],
        );
        let dirs = store.layer_dirs(&record).expect("unpack");
        // The two layers, then the init layer with the mount points the image lacks.
        assert_eq!(dirs.len(), 3);
        for name in crate::init_layer::MOUNT_POINTS {
            assert!(dirs[2].join("etc").join(name).is_file(), "{name}");
        }
        assert!(!dirs[2].join("etc/base").exists());
        assert_eq!(
            std::fs::read(dirs[0].join("etc/base")).expect("base"),
            b"base"
        );
        assert_eq!(std::fs::read(dirs[1].join("etc/top")).expect("top"), b"top");
        assert_eq!(store.layer_dirs(&record).expect("again"), dirs);
        assert_eq!(store.layer_paths(&record), dirs);

        // A container stacks them: the image goes, its layers stay until the container goes,
        // and after a restart too.
        store.hold("c1", dirs.clone());
        assert!(store.remove(&record.id).expect("remove"));
        assert!(store.resolve(&record.id).expect("resolve").is_none());
        assert!(
            dirs.iter().all(|d| d.is_dir()),
            "layers of a container kept"
        );
        drop(store);
        let store = ImageStore::open(dir.path()).expect("reopen");
        store.hold("c1", dirs.clone());
        store.remove_unreferenced_layers().expect("prune");
        assert!(dirs.iter().all(|d| d.is_dir()), "held layers kept at start");
        store.release("c2");
        assert!(
            dirs.iter().all(|d| d.is_dir()),
            "another container's release"
        );
        // Pulled anew meanwhile: the image's own again, they stay when the container goes.
        store.put(&record).expect("put again");
        store.release("c1");
        assert!(dirs.iter().all(|d| d.is_dir()), "the image uses them again");
        store.hold("c1", dirs.clone());
        assert!(store.remove(&record.id).expect("remove again"));
        store.release("c1");
        assert!(
            dirs.iter().all(|d| !d.exists()),
            "unpacked layers and the init layer removed with their last container"
        );

        // At start, layer directories of no image and no container go (an image removed while
        // a container held them, then ingotd ended); an unpack in progress is not a layer.
        let stray = [
            dir.path().join("layers").join("a".repeat(64)),
            dir.path()
                .join("layers")
                .join(format!("init-{}", "b".repeat(64))),
        ];
        let unpacking = dir.path().join("layers/unpack-partial");
        for d in stray.iter().chain([&unpacking]) {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        drop(store);
        let store = ImageStore::open(dir.path()).expect("reopen");
        store.remove_unreferenced_layers().expect("prune");
        assert!(stray.iter().all(|d| !d.exists()), "no container holds them");
        assert!(unpacking.is_dir(), "an unpack in progress is not a layer");
    }

    #[test]
    fn records_round_trip_and_removal_keeps_shared_blobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let blob = |data: &[u8]| {
            let digest = format!("sha256:{}", sha256_hex(data));
            store.content.write(&digest, data).expect("blob");
            digest
        };
        let shared = blob(b"shared layer");
        let own = blob(b"own layer");
        let record = |id: &str, tag: &str, layers: Vec<String>| ImageRecord {
            id: id.to_string(),
            repo_tags: vec![tag.to_string()],
            repo_digests: vec![],
            size: 1,
            manifest_digest: blob(id.as_bytes()),
            layers,
            config: "{}".into(),
        };
        let a = record(
            &blob(b"config a"),
            "docker.io/library/a:latest",
            vec![shared.clone(), own.clone()],
        );
        let b = record(
            &blob(b"config b"),
            "docker.io/library/b:latest",
            vec![shared.clone()],
        );
        store.put(&a).expect("put a");
        store.put(&b).expect("put b");
        assert_eq!(store.list().expect("list").len(), 2);
        assert_eq!(
            store.resolve("a").expect("resolve").map(|i| i.id),
            Some(a.id.clone())
        );
        assert_eq!(
            store.resolve(&a.id).expect("by id").map(|i| i.id),
            Some(a.id.clone())
        );
        assert!(store.resolve("c").expect("missing").is_none());

        assert!(store.remove("a").expect("remove"));
        assert!(!store.remove("a").expect("again"));
        assert!(store.content.contains(&shared), "b still uses it");
        assert!(!store.content.contains(&own));
        drop(store);
        let reopened = ImageStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened.list().expect("list"), vec![b]);
    }
}
