//! Stores: where manifests come from and where statuses go. The controller sees only
//! the [`Store`] trait; the directory store is in `dir.rs`, the Azure Blob store in
//! `blob/`, and the ownership of tasks among replicas in `ownership.rs`.

pub mod blob;
pub mod commit;
pub mod dir;
pub mod ownership;

use crate::status::TaskStatus;
use crate::task::TaskKey;
use async_trait::async_trait;
use std::path::PathBuf;
use std::time::SystemTime;
use tokio::sync::mpsc;

/// The task a file or blob name belongs to. A name that cannot be a task key (a
/// backslash in a file name; `..`, `//` or a leading `/` in a blob name) is skipped: no
/// status could be written for it without leaving the folder. Said once per name, at
/// warn level, because listings repeat every few seconds.
pub(crate) fn parsed_key(stem: &str) -> Option<TaskKey> {
    match TaskKey::parse(stem) {
        Ok(key) => Some(key),
        Err(problem) => {
            static WARNED: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);
            let first = WARNED.lock().is_ok_and(|mut warned| {
                let warned = warned.get_or_insert_with(Default::default);
                // Bounded: a store full of bad names must not grow memory without end.
                warned.len() < 10_000 && warned.insert(stem.to_string())
            });
            if first {
                tracing::warn!(name = ?stem, "skipping a file that cannot name a task: {problem}");
            }
            None
        }
    }
}

/// One task as seen by a listing: enough to tell, cheaply, whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: TaskKey,
    /// Changes whenever the manifest or the status changes (sizes and modification
    /// times, or ETags). `None` parts are absent files.
    pub fingerprint: Fingerprint,
    pub has_manifest: bool,
    /// A status was there: the task may have a container (start-up waits to see it).
    pub has_status: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint(pub Vec<(u64, u128)>);

impl Fingerprint {
    /// From (size, modification time) pairs, in any order.
    pub fn new(mut stamps: Vec<(u64, u128)>) -> Self {
        stamps.sort_unstable();
        Fingerprint(stamps)
    }
}

/// The manifest of one task, as read.
#[derive(Debug, Clone)]
pub enum ManifestRead {
    Found {
        /// The file as the user names it, relative to the root (`jobs/thumb.yaml`).
        file: String,
        bytes: Vec<u8>,
        modified: Option<SystemTime>,
        /// The folder holding the manifest, when it is on this machine: the process
        /// runtime's default working directory.
        local_dir: Option<PathBuf>,
    },
    Missing,
    /// Two files claim the same task (`a.yaml` and `a.json`).
    Conflict {
        files: Vec<String>,
    },
    /// The file exists but cannot be read (permissions, a symlink loop, ...).
    Unreadable {
        file: String,
        message: String,
    },
}

/// Something happened to a task's files, or the store lost track and needs a relist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    Changed(TaskKey),
    Rescan,
    /// The store's own view of whether it can be reached: `Some(error)` while it cannot,
    /// `None` once it can again (for `/healthz`).
    Reachable(Option<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the status file is not valid JSON ({message}); delete it to run the task again")]
    CorruptStatus { path: String, message: String },
    /// The status file cannot be used at all: not a regular file, too large, or a name
    /// the file system refuses. Like a corrupt one, it needs a person and is never
    /// overwritten.
    #[error("{path}: {message}")]
    BadStatus { path: String, message: String },
    #[error("watching {path}: {message}")]
    Watch { path: String, message: String },
    /// A conditional write lost a race: someone changed the status since it was read.
    /// Never overwritten blindly; the controller re-reads and reconciles again at once.
    #[error("{path}: changed by someone else since it was read; re-reading")]
    Conflict { path: String },
    /// The store cannot be reached or is busy (a connection error, a timeout, 5xx, 503
    /// ServerBusy): retried with backoff, never counted against `retries`.
    #[error("{location}: {message}")]
    Unavailable { location: String, message: String },
    /// The store refused the request (authentication, a missing container, ...): a
    /// person must fix the configuration; retried with backoff meanwhile.
    #[error("{location}: {message}")]
    Refused { location: String, message: String },
}

/// The most of a status file skiff reads: a status holds at most a 4 KiB log tail, a
/// 64 KiB result and the attempts' records, so anything near this is not skiff's.
pub const MAX_STATUS_BYTES: u64 = 4 * 1024 * 1024;

impl StoreError {
    /// Whether the error is about one task's files, not the store as a whole: a listing
    /// shows it on that task's row and goes on with the others.
    pub fn is_about_one_task(&self) -> bool {
        matches!(
            self,
            StoreError::CorruptStatus { .. } | StoreError::BadStatus { .. } | StoreError::Io { .. }
        )
    }

    /// The task's status file is there but unusable, and only a person can fix it:
    /// retrying would never succeed, and writing over it would destroy what they put
    /// there (or a record of what ran).
    pub fn needs_person(&self) -> bool {
        matches!(self, StoreError::CorruptStatus { .. } | StoreError::BadStatus { .. })
    }
}

/// What a listing (`skiff get`, `GET /v1/tasks`) shows for a task whose status cannot be
/// read: a status object, so that clients still get one array of statuses, in phase
/// `Invalid` with the problem and its fix as the message. It is never written anywhere.
pub fn problem_status(key: &TaskKey, err: &StoreError) -> TaskStatus {
    let stem = key.as_str().rsplit('/').next().unwrap_or(key.as_str());
    let mut status = TaskStatus::new(key.as_str(), stem, "", chrono::Utc::now());
    status.phase = crate::status::Phase::Invalid;
    status.message = Some(err.to_string());
    status
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Every task with a manifest or a status.
    async fn list(&self) -> Result<Vec<Listed>, StoreError>;
    /// One task's listing entry, `None` when it has no files at all.
    async fn list_one(&self, key: &TaskKey) -> Result<Option<Listed>, StoreError>;
    async fn read_manifest(&self, key: &TaskKey) -> Result<ManifestRead, StoreError>;
    async fn read_status(&self, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError>;
    /// Reads the status that the next [`Store::write_status`] or [`Store::delete_status`]
    /// of the task replaces: a store with conditional writes (the blob store) makes that
    /// write conditional on what this read saw. Other readers use [`Store::read_status`].
    async fn read_status_for_update(&self, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError> {
        self.read_status(key).await
    }
    /// What a reconcile pass reads first: the task's listing entry (its fingerprint), the
    /// manifest, and the status as [`Store::read_status_for_update`] reads it. The entry is
    /// taken before the files are read, so that a change made while the pass runs is seen
    /// by the next relist; `None` when the task has no files or the listing failed (the
    /// reads say why, if it matters). A store on the local disk does it all in one trip to
    /// the blocking pool, which every pass feels.
    async fn read_task(&self, key: &TaskKey) -> Result<(Option<Listed>, ManifestRead, Option<TaskStatus>), StoreError> {
        let listed = self.list_one(key).await.ok().flatten();
        let manifest = self.read_manifest(key).await?;
        let status = self.read_status_for_update(key).await?;
        Ok((listed, manifest, status))
    }
    /// Atomic: a reader sees the old status or the new one (DESIGN.md §3).
    async fn write_status(&self, key: &TaskKey, status: &TaskStatus) -> Result<(), StoreError>;
    async fn delete_status(&self, key: &TaskKey) -> Result<(), StoreError>;
    /// Change notifications; a full relist at the resync interval heals any missed one.
    /// Call it before the first [`Store::list`], which also extends what is watched.
    fn watch(&self) -> Result<mpsc::UnboundedReceiver<StoreEvent>, StoreError>;
    /// A human name for where the store is, for messages.
    fn location(&self) -> String;
    /// Forgets what is cached of the task's files, so that the next reads are fresh (the
    /// blob store lists the task's blobs again).
    async fn refresh(&self, _key: &TaskKey) -> Result<(), StoreError> {
        Ok(())
    }
    /// Who owns which task, when several controllers may share the store; `None`: this
    /// controller owns every task.
    fn ownership(&self) -> Option<std::sync::Arc<dyn ownership::Ownership>> {
        None
    }
    /// Named semaphores shared by the replicas of the store; `None`: this controller's
    /// own count is the whole truth.
    fn semaphores(&self) -> Option<std::sync::Arc<dyn ownership::SharedSemaphores>> {
        None
    }
    /// Keeps a finished container's output where `skiff logs` can find it from any
    /// machine; a store on the local disk has nothing to do.
    async fn save_log(&self, _container: &str, _text: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// A saved output, see [`Store::save_log`].
    async fn read_log(&self, _container: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
}
