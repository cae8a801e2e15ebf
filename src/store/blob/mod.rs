//! The Azure Blob store (DESIGN.md §7): manifests are blobs in a container (under an
//! optional prefix), statuses are `<task>.status.json` blobs beside them, and skiff's own
//! blobs (leases, the callback secret, saved logs) live under `.skiff/`.
//!
//! - Change detection polls the listing (one List call per 5,000 blobs) and compares
//!   ETags with the last listing; only a manifest whose ETag changed is downloaded again.
//! - Status writes are conditional: `If-Match` the ETag last read, or `If-None-Match: *`
//!   for a status not there when read. A lost race is [`StoreError::Conflict`]: the
//!   controller re-reads and reconciles again, never overwriting blindly.
//! - Ownership among replicas is a blob lease per task, in [`lease`].
//!
//! The REST calls go through `azure_storage_blob`; [`sharedkey`] signs them when the
//! credential is a shared key, and [`transport`] carries them.

pub mod lease;
pub mod location;
pub mod semaphores;
pub mod sharedkey;
pub mod transport;

use super::ownership::Ownership;
use super::{Fingerprint, Listed, ManifestRead, Store, StoreError, StoreEvent};
use crate::fsutil::is_ignored_name;
use crate::status::{STATUS_SUFFIX, TaskStatus};
use crate::store::dir::MANIFEST_EXTENSIONS;
use crate::store::parsed_key;
use crate::task::TaskKey;
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Etag, RequestContent, RetryOptions, StatusCode, Url};
use azure_storage_blob::models::{BlobContainerClientListBlobsOptions, BlockBlobClientUploadOptions};
use azure_storage_blob::{BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions};
use futures_util::TryStreamExt;
use location::{Auth, BlobLocation};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::mpsc;

/// The folder of skiff's own blobs, beside the manifests.
pub const STATE_FOLDER: &str = ".skiff";
/// The listing's page size: the service's maximum.
const PAGE: i32 = 5000;
/// The longest wait between listings while the store cannot be reached.
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(5);

/// How to reach the container: what `--blob` and the environment said.
pub struct BlobConfig {
    pub location: BlobLocation,
    pub auth: Auth,
    /// For [`Auth::Token`].
    pub credential: Option<Arc<dyn TokenCredential>>,
    /// `--blob-poll`: how often the listing is compared.
    pub poll: Duration,
}

pub struct BlobStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    location: BlobLocation,
    credential: Option<Arc<dyn TokenCredential>>,
    options: ClientOptions,
    container: BlobContainerClient,
    counters: Arc<transport::Counters>,
    poll: Duration,
    /// The last listing, kept current by this store's own writes.
    index: Mutex<BTreeMap<TaskKey, Entry>>,
    /// Manifest bytes by task, with the ETag they were downloaded at.
    manifests: Mutex<HashMap<TaskKey, (String, Vec<u8>)>>,
    /// The ETag of each status as last read or written (`None`: it was absent).
    status_etags: Mutex<HashMap<TaskKey, Option<String>>>,
    leases: Arc<lease::Leases>,
    /// The replicas' shared named semaphores: a lease blob per slot.
    semaphores: Arc<semaphores::SemaphoreLeases>,
    /// A failpoint for tests (`SKIFF_TEST_STATUS_WRITE_DELAY`): a pause between reading a
    /// status and writing it, wide enough for a concurrent writer to step in.
    write_delay: Option<Duration>,
}

/// One blob as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    /// Relative to the prefix.
    name: String,
    etag: String,
    modified_nanos: u128,
    size: u64,
}

/// A task's blobs as listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    manifests: Vec<Meta>,
    status: Option<Meta>,
}

impl Entry {
    fn fingerprint(&self) -> Fingerprint {
        // (hash of the ETag, modification time): the ETag changes with every write, and
        // the time orders new tasks first come, first served.
        Fingerprint::new(
            self.manifests
                .iter()
                .chain(&self.status)
                .map(|m| (etag_hash(&m.etag), m.modified_nanos))
                .collect(),
        )
    }
}

fn etag_hash(etag: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    etag.hash(&mut hasher);
    hasher.finish()
}

enum Role {
    Manifest(TaskKey),
    Status(TaskKey),
}

/// What a blob's name (relative to the prefix) means to skiff: dot-folders (`.skiff/`),
/// dot-files and other files are ignored, as the directory store ignores them.
fn classify(rel: &str) -> Option<Role> {
    if rel.split('/').any(|part| part.is_empty() || is_ignored_name(part)) {
        return None;
    }
    if let Some(stem) = rel.strip_suffix(STATUS_SUFFIX) {
        return parsed_key(stem).map(Role::Status);
    }
    let (stem, ext) = rel.rsplit_once('.')?;
    if !MANIFEST_EXTENSIONS.contains(&ext) {
        return None;
    }
    parsed_key(stem).map(Role::Manifest)
}

/// What went wrong with a request, in the store's terms. A SAS never appears: the
/// transport drops URLs from its errors and the service's answers do not echo them.
pub(crate) fn store_error(location: &str, what: &str, err: &azure_core::Error) -> StoreError {
    use azure_core::error::ErrorKind;
    let (status, code) = match err.kind() {
        ErrorKind::HttpResponse { status, error_code, .. } => (Some(*status), error_code.clone()),
        _ => (None, None),
    };
    let code = code.map(|c| format!(" {c}")).unwrap_or_default();
    match status {
        Some(StatusCode::PreconditionFailed) | Some(StatusCode::Conflict) => StoreError::Conflict {
            path: format!("{location}/{what}"),
        },
        None => StoreError::Unavailable {
            location: location.to_string(),
            message: format!("{what}: {err}"),
        },
        Some(status)
            if status == StatusCode::RequestTimeout
                || status == StatusCode::TooManyRequests
                || u16::from(status) >= 500 =>
        {
            StoreError::Unavailable {
                location: location.to_string(),
                message: format!("{what}: HTTP {}{code}", u16::from(status)),
            }
        }
        Some(status) => {
            let hint = match u16::from(status) {
                401 | 403 => "; check the credential (SAS, key or role assignment) and the clock",
                404 => "; does the container exist? Create it with `az storage container create`",
                _ => "",
            };
            StoreError::Refused {
                location: location.to_string(),
                message: format!("{what}: HTTP {}{code}{hint}", u16::from(status)),
            }
        }
    }
}

fn is_not_found(err: &azure_core::Error) -> bool {
    err.http_status() == Some(StatusCode::NotFound)
}

fn nanos(t: Option<azure_core::time::OffsetDateTime>) -> u128 {
    t.map(|t| t.unix_timestamp_nanos().max(0) as u128).unwrap_or(0)
}

impl BlobStore {
    pub fn new(config: BlobConfig) -> Result<Self, StoreError> {
        let location = config.location;
        let shown = location.display();
        let transport = transport::Transport::new().map_err(|err| StoreError::Refused {
            location: shown.clone(),
            message: format!("cannot make an HTTP client: {err}"),
        })?;
        let counters = transport.counters.clone();
        let mut per_try: Vec<Arc<dyn azure_core::http::policies::Policy>> = Vec::new();
        if let Auth::SharedKey(key) = &config.auth {
            per_try.push(Arc::new(sharedkey::SharedKeyPolicy(Arc::new(key.clone()))));
        }
        let options = ClientOptions {
            transport: Some(azure_core::http::Transport::new(Arc::new(transport))),
            per_try_policies: per_try,
            // The controller retries with its own backoff, and reports the outage meanwhile.
            retry: RetryOptions::none(),
            ..Default::default()
        };
        let credential = match config.auth {
            Auth::Token => config.credential,
            _ => None,
        };
        let url = Url::parse(&location.container_url()).map_err(|err| StoreError::Refused {
            location: shown.clone(),
            message: err.to_string(),
        })?;
        let container = BlobContainerClient::new(
            url,
            credential.clone(),
            Some(BlobContainerClientOptions {
                client_options: options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|err| StoreError::Refused {
            location: shown.clone(),
            message: err.to_string(),
        })?;
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| Inner {
            leases: Arc::new(lease::Leases::new(weak.clone())),
            semaphores: Arc::new(semaphores::SemaphoreLeases::new(weak.clone())),
            location,
            credential,
            options,
            container,
            counters,
            poll: config.poll,
            index: Mutex::default(),
            manifests: Mutex::default(),
            status_etags: Mutex::default(),
            write_delay: std::env::var("SKIFF_TEST_STATUS_WRITE_DELAY")
                .ok()
                .and_then(|v| humantime::parse_duration(&v).ok()),
        });
        Ok(BlobStore { inner })
    }

    /// Requests sent so far: (list calls, downloads, other calls).
    pub fn requests(&self) -> (u64, u64, u64) {
        self.inner.counters.snapshot()
    }

    /// The callback secret every replica shares, kept as `.skiff/secret` (made on first use).
    pub async fn shared_secret(&self) -> Result<Vec<u8>, StoreError> {
        let inner = &self.inner;
        let rel = format!("{STATE_FOLDER}/secret");
        for _ in 0..3 {
            if let Some((bytes, _)) = inner.download(&rel).await? {
                if let Ok(key) = base64_decode(&bytes)
                    && key.len() >= 32
                {
                    return Ok(key);
                }
                return Err(StoreError::CorruptStatus {
                    path: format!("{}/{rel}", inner.location.display()),
                    message: "not a base64 key of 32 bytes or more; delete it to make a new one".into(),
                });
            }
            let key: [u8; 32] = rand::random();
            let text = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
            match inner.upload(&rel, text.into_bytes(), None, true).await {
                Ok(_) => return Ok(key.to_vec()),
                // Another replica made one first: use theirs.
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(StoreError::Conflict { path: rel })
    }
}

fn base64_decode(bytes: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, bytes.trim_ascii())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    fn shown(&self) -> String {
        self.location.display()
    }

    pub(crate) fn blob(&self, rel: &str) -> Result<BlobClient, StoreError> {
        let url = Url::parse(&self.location.blob_url(rel)).map_err(|err| StoreError::Refused {
            location: self.shown(),
            message: format!("{rel}: {err}"),
        })?;
        BlobClient::new(
            url,
            self.credential.clone(),
            Some(BlobClientOptions {
                client_options: self.options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|err| StoreError::Refused {
            location: self.shown(),
            message: format!("{rel}: {err}"),
        })
    }

    pub(crate) fn error(&self, what: &str, err: &azure_core::Error) -> StoreError {
        store_error(&self.shown(), what, err)
    }

    /// A blob's bytes and ETag; `None` when there is no such blob.
    async fn download(&self, rel: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StoreError> {
        self.download_at_most(rel, u64::MAX).await
    }

    /// [`Inner::download`] of a status: one far larger than any status skiff writes is
    /// refused before its body is read, as the directory store does (a person must fix it).
    async fn download_status(&self, key: &TaskKey) -> Result<Option<(Vec<u8>, Option<String>)>, StoreError> {
        self.download_at_most(&Self::status_rel(key), crate::store::MAX_STATUS_BYTES)
            .await
    }

    async fn download_at_most(&self, rel: &str, limit: u64) -> Result<Option<(Vec<u8>, Option<String>)>, StoreError> {
        let blob = self.blob(rel)?;
        let result = match blob.download(None).await {
            Ok(result) => result,
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => return Err(self.error(rel, &err)),
        };
        if let Some(len) = result.properties.content_length.filter(|len| *len > limit) {
            return Err(StoreError::BadStatus {
                path: format!("{}/{rel}", self.shown()),
                message: format!(
                    "the status blob is {len} bytes, more than the {limit} bytes a status may be; it is not skiff's: delete it to run the task again"
                ),
            });
        }
        let etag = result.properties.etag.as_ref().map(ToString::to_string);
        let bytes = result.body.collect().await.map_err(|err| self.error(rel, &err))?;
        Ok(Some((bytes.to_vec(), etag)))
    }

    /// Uploads a blob; `if_match` (an ETag) or `if_absent` make it conditional.
    async fn upload(
        &self,
        rel: &str,
        bytes: Vec<u8>,
        if_match: Option<&str>,
        if_absent: bool,
    ) -> Result<Option<(String, u128)>, StoreError> {
        let blob = self.blob(rel)?;
        let options = BlockBlobClientUploadOptions {
            if_match: if_match.map(Etag::from),
            if_none_match: if_absent.then(|| Etag::from("*")),
            blob_content_type: Some(
                if rel.ends_with(".json") {
                    "application/json"
                } else {
                    "application/octet-stream"
                }
                .to_string(),
            ),
            ..Default::default()
        };
        let result = blob
            .block_blob_client()
            .upload(RequestContent::from(bytes), Some(options))
            .await
            .map_err(|err| self.error(rel, &err))?;
        // The service's own ETag and time, exactly as the next listing will show them.
        Ok(result
            .etag
            .as_ref()
            .map(|etag| (etag.to_string(), nanos(result.last_modified))))
    }

    /// Every blob under the prefix, grouped by task.
    async fn list_all(&self) -> Result<BTreeMap<TaskKey, Entry>, StoreError> {
        self.list_under(self.location.list_prefix()).await
    }

    async fn list_under(&self, prefix: Option<String>) -> Result<BTreeMap<TaskKey, Entry>, StoreError> {
        let options = BlobContainerClientListBlobsOptions {
            prefix,
            maxresults: Some(PAGE),
            ..Default::default()
        };
        let mut pager = self
            .container
            .list_blobs(Some(options))
            .map_err(|err| self.error("list", &err))?;
        let strip = self.location.list_prefix().unwrap_or_default();
        let mut tasks: BTreeMap<TaskKey, Entry> = BTreeMap::new();
        while let Some(item) = pager.try_next().await.map_err(|err| self.error("list", &err))? {
            let Some(name) = item.name else { continue };
            let Some(rel) = name.strip_prefix(&strip) else { continue };
            let Some(role) = classify(rel) else { continue };
            let props = item.properties.unwrap_or_default();
            let meta = Meta {
                name: rel.to_string(),
                etag: props.etag.as_ref().map(ToString::to_string).unwrap_or_default(),
                modified_nanos: nanos(props.last_modified),
                size: props.content_length.unwrap_or(0),
            };
            match role {
                Role::Manifest(key) => tasks.entry(key).or_default().manifests.push(meta),
                Role::Status(key) => tasks.entry(key).or_default().status = Some(meta),
            }
        }
        Ok(tasks)
    }

    /// The names (relative to the prefix) of the blobs under `folder`, e.g. `.skiff/replicas/`.
    async fn list_names(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(self.location.blob_name(folder)),
            maxresults: Some(PAGE),
            ..Default::default()
        };
        let mut pager = self
            .container
            .list_blobs(Some(options))
            .map_err(|err| self.error("list", &err))?;
        let strip = self.location.list_prefix().unwrap_or_default();
        let mut names = Vec::new();
        while let Some(item) = pager.try_next().await.map_err(|err| self.error("list", &err))? {
            if let Some(rel) = item.name.as_deref().and_then(|name| name.strip_prefix(&strip)) {
                names.push(rel.to_string());
            }
        }
        Ok(names)
    }

    /// One task's blobs, listed afresh (a prefix listing: one call).
    async fn list_key(&self, key: &TaskKey) -> Result<Option<Entry>, StoreError> {
        let prefix = self.location.blob_name(&format!("{}.", key.as_str()));
        let mut found = self.list_under(Some(prefix)).await?;
        let entry = found.remove(key);
        let mut index = lock(&self.index);
        match &entry {
            Some(entry) => index.insert(key.clone(), entry.clone()),
            None => index.remove(key),
        };
        Ok(entry)
    }

    async fn entry(&self, key: &TaskKey) -> Result<Option<Entry>, StoreError> {
        let known = lock(&self.index).get(key).cloned();
        match known {
            Some(entry) => Ok(Some(entry)),
            None => self.list_key(key).await,
        }
    }

    /// Deletes the task's saved outputs (`.skiff/logs/<container prefix>*`); best effort.
    async fn forget_logs(&self, key: &TaskKey) {
        let folder = format!("{STATE_FOLDER}/logs/");
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(self.location.blob_name(&format!("{folder}{}", key.container_prefix()))),
            ..Default::default()
        };
        let Ok(mut pager) = self.container.list_blobs(Some(options)) else {
            return;
        };
        let strip = self.location.list_prefix().unwrap_or_default();
        while let Ok(Some(item)) = pager.try_next().await {
            let Some(rel) = item.name.as_deref().and_then(|n| n.strip_prefix(&strip)) else {
                continue;
            };
            if let Ok(blob) = self.blob(rel) {
                let _ = blob.delete(None).await;
            }
        }
    }

    fn parse_status(&self, key: &TaskKey, bytes: Option<Vec<u8>>) -> Result<Option<TaskStatus>, StoreError> {
        let Some(bytes) = bytes else { return Ok(None) };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| StoreError::CorruptStatus {
                path: format!("{}/{}", self.shown(), Self::status_rel(key)),
                message: err.to_string(),
            })
    }

    fn status_rel(key: &TaskKey) -> String {
        format!("{}{STATUS_SUFFIX}", key.as_str())
    }

    /// Records a status this store wrote (or removed), so that the next listing does not
    /// take the controller's own write for a change.
    fn note_status(&self, key: &TaskKey, written: Option<(String, u128)>, size: usize) {
        lock(&self.status_etags).insert(key.clone(), written.as_ref().map(|(etag, _)| etag.clone()));
        let mut index = lock(&self.index);
        match written {
            Some((etag, modified_nanos)) => {
                index.entry(key.clone()).or_default().status = Some(Meta {
                    name: Self::status_rel(key),
                    etag,
                    modified_nanos,
                    size: size as u64,
                });
            }
            None => {
                if let Some(entry) = index.get_mut(key) {
                    entry.status = None;
                    if entry.manifests.is_empty() {
                        index.remove(key);
                    }
                }
            }
        }
    }
}

fn listed(tasks: &BTreeMap<TaskKey, Entry>) -> Vec<Listed> {
    tasks
        .iter()
        .map(|(key, entry)| Listed {
            key: key.clone(),
            fingerprint: entry.fingerprint(),
            has_manifest: !entry.manifests.is_empty(),
            has_status: entry.status.is_some(),
        })
        .collect()
}

/// Lists at the poll interval and reports each task whose blobs changed. While the store
/// cannot be reached it says so, backs off, and asks for a full relist once it can.
async fn poll(inner: Arc<Inner>, tx: mpsc::UnboundedSender<StoreEvent>) {
    let mut delay = inner.poll;
    let mut failing = false;
    loop {
        tokio::time::sleep(delay).await;
        if tx.is_closed() {
            return;
        }
        let started = std::time::Instant::now();
        let before = inner.counters.snapshot();
        match inner.list_all().await {
            Ok(fresh) => {
                let changed: Vec<TaskKey> = {
                    let mut index = lock(&inner.index);
                    let mut changed: Vec<TaskKey> = fresh
                        .iter()
                        .filter(|(key, entry)| index.get(*key).map(Entry::fingerprint) != Some(entry.fingerprint()))
                        .map(|(key, _)| key.clone())
                        .collect();
                    changed.extend(index.keys().filter(|key| !fresh.contains_key(*key)).cloned());
                    *index = fresh;
                    changed
                };
                let after = inner.counters.snapshot();
                tracing::debug!(
                    lists = after.0 - before.0,
                    downloads = after.1 - before.1,
                    other = after.2 - before.2,
                    changed = changed.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "blob poll cycle"
                );
                // Also clears an error a reconcile reported while the listing was fine.
                let _ = tx.send(StoreEvent::Reachable(None));
                if failing {
                    tracing::info!("{} answers again; relisting", inner.shown());
                    let _ = tx.send(StoreEvent::Rescan);
                    failing = false;
                }
                for key in changed {
                    let _ = tx.send(StoreEvent::Changed(key));
                }
                delay = inner.poll;
            }
            Err(err) => {
                if !failing {
                    tracing::warn!("cannot list {}; retrying with backoff: {err}", inner.shown());
                }
                failing = true;
                let _ = tx.send(StoreEvent::Reachable(Some(err.to_string())));
                delay = (delay * 2).min(MAX_POLL_BACKOFF.max(inner.poll));
            }
        }
    }
}

#[async_trait]
impl Store for BlobStore {
    async fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let fresh = self.inner.list_all().await?;
        let out = listed(&fresh);
        *lock(&self.inner.index) = fresh;
        Ok(out)
    }

    async fn list_one(&self, key: &TaskKey) -> Result<Option<Listed>, StoreError> {
        Ok(self.inner.entry(key).await?.map(|entry| Listed {
            key: key.clone(),
            fingerprint: entry.fingerprint(),
            has_manifest: !entry.manifests.is_empty(),
            has_status: entry.status.is_some(),
        }))
    }

    async fn read_manifest(&self, key: &TaskKey) -> Result<ManifestRead, StoreError> {
        let inner = &self.inner;
        let Some(entry) = inner.entry(key).await? else {
            return Ok(ManifestRead::Missing);
        };
        let meta = match entry.manifests.as_slice() {
            [] => return Ok(ManifestRead::Missing),
            [one] => one.clone(),
            many => {
                return Ok(ManifestRead::Conflict {
                    files: many.iter().map(|m| m.name.clone()).collect(),
                });
            }
        };
        let limit = crate::manifest::MAX_MANIFEST_BYTES as u64;
        if meta.size > limit {
            return Ok(ManifestRead::Unreadable {
                file: meta.name,
                message: format!(
                    "the blob is {} bytes; a manifest may be at most {limit} bytes (1 MiB). Is this the right file?",
                    meta.size
                ),
            });
        }
        let modified = Some(UNIX_EPOCH + Duration::from_nanos(meta.modified_nanos.min(u64::MAX as u128) as u64));
        let cached = lock(&inner.manifests)
            .get(key)
            .filter(|(etag, _)| *etag == meta.etag)
            .map(|(_, bytes)| bytes.clone());
        if let Some(bytes) = cached {
            return Ok(ManifestRead::Found {
                file: meta.name,
                bytes,
                modified,
                local_dir: None,
            });
        }
        let Some((bytes, etag)) = inner.download(&meta.name).await? else {
            // Deleted since the listing: the next listing says so.
            inner.list_key(key).await?;
            return Ok(ManifestRead::Missing);
        };
        if let Some(etag) = etag {
            lock(&inner.manifests).insert(key.clone(), (etag, bytes.clone()));
        }
        Ok(ManifestRead::Found {
            file: meta.name,
            bytes,
            modified,
            local_dir: None,
        })
    }

    async fn read_status(&self, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError> {
        let inner = &self.inner;
        let read = inner.download_status(key).await?;
        inner.parse_status(key, read.map(|(bytes, _)| bytes))
    }

    async fn read_status_for_update(&self, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError> {
        let inner = &self.inner;
        let read = inner.download_status(key).await?;
        // Recorded only here, where the task's one reconcile reads before it writes: a
        // read for anything else (a dependent, the API) must not make a write conditional
        // on what its writer never saw. Recorded before parsing: a person fixing a status
        // that is not valid JSON changes its ETag.
        let (bytes, etag) = match read {
            Some((bytes, etag)) => (Some(bytes), etag),
            None => (None, None),
        };
        lock(&inner.status_etags).insert(key.clone(), etag);
        inner.parse_status(key, bytes)
    }

    async fn write_status(&self, key: &TaskKey, status: &TaskStatus) -> Result<(), StoreError> {
        let inner = &self.inner;
        let rel = Inner::status_rel(key);
        // Unknown means "not read": only a status that does not exist may be written then.
        let known = lock(&inner.status_etags).get(key).cloned().flatten();
        let bytes = status.to_json();
        let size = bytes.len();
        if let Some(delay) = inner.write_delay {
            tracing::info!(task = %key, "failpoint: holding the {} write for {delay:?}", status.phase);
            tokio::time::sleep(delay).await;
        }
        match inner.upload(&rel, bytes, known.as_deref(), known.is_none()).await {
            Ok(etag) => {
                inner.note_status(key, etag, size);
                Ok(())
            }
            Err(err) => {
                if matches!(err, StoreError::Conflict { .. }) {
                    lock(&inner.status_etags).remove(key);
                }
                Err(err)
            }
        }
    }

    async fn delete_status(&self, key: &TaskKey) -> Result<(), StoreError> {
        let inner = &self.inner;
        let rel = Inner::status_rel(key);
        let known = lock(&inner.status_etags).get(key).cloned();
        let known = match known {
            Some(Some(etag)) => Some(etag),
            // Absent when read: whatever is there now was written since, by someone else.
            Some(None) => return Err(StoreError::Conflict { path: rel }),
            None => None,
        };
        let blob = inner.blob(&rel)?;
        let options = azure_storage_blob::models::BlobClientDeleteOptions {
            if_match: known.as_deref().map(Etag::from),
            ..Default::default()
        };
        match blob.delete(Some(options)).await {
            Ok(_) => {}
            Err(err) if is_not_found(&err) => {}
            Err(err) => {
                let err = inner.error(&rel, &err);
                if matches!(err, StoreError::Conflict { .. }) {
                    lock(&inner.status_etags).remove(key);
                }
                return Err(err);
            }
        }
        inner.note_status(key, None, 0);
        lock(&inner.status_etags).remove(key);
        lock(&inner.manifests).remove(key);
        if lock(&inner.index)
            .get(key)
            .is_none_or(|entry| entry.manifests.is_empty())
        {
            // The task is gone: so are its saved outputs, then its lease blob.
            inner.forget_logs(key).await;
            inner.leases.forget(key).await;
        }
        Ok(())
    }

    async fn refresh(&self, key: &TaskKey) -> Result<(), StoreError> {
        self.inner.list_key(key).await.map(|_| ())
    }

    fn watch(&self) -> Result<mpsc::UnboundedReceiver<StoreEvent>, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(poll(self.inner.clone(), tx));
        Ok(rx)
    }

    fn location(&self) -> String {
        self.inner.shown()
    }

    fn ownership(&self) -> Option<Arc<dyn Ownership>> {
        Some(Arc::new(self.inner.leases.clone()))
    }

    fn semaphores(&self) -> Option<Arc<dyn crate::store::ownership::SharedSemaphores>> {
        Some(Arc::new(self.inner.semaphores.clone()))
    }

    async fn save_log(&self, container: &str, text: &str) -> Result<(), StoreError> {
        let rel = format!("{STATE_FOLDER}/logs/{container}.log");
        self.inner.upload(&rel, text.as_bytes().to_vec(), None, false).await?;
        Ok(())
    }

    async fn read_log(&self, container: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rel = format!("{STATE_FOLDER}/logs/{container}.log");
        Ok(self.inner.download(&rel).await?.map(|(bytes, _)| bytes))
    }
}

#[cfg(test)]
mod tests;
