//! Stores: where manifests come from and where statuses go. The controller sees only
//! the [`Store`] trait; the directory store is in `dir.rs`.

pub mod dir;

use crate::status::TaskStatus;
use crate::task::TaskKey;
use async_trait::async_trait;
use std::path::PathBuf;
use std::time::SystemTime;
use tokio::sync::mpsc;

/// One task as seen by a listing: enough to tell, cheaply, whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: TaskKey,
    /// Changes whenever the manifest or the status changes (sizes and modification
    /// times, or ETags). `None` parts are absent files.
    pub fingerprint: Fingerprint,
    pub has_manifest: bool,
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
    #[error("watching {path}: {message}")]
    Watch { path: String, message: String },
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Every task with a manifest or a status.
    async fn list(&self) -> Result<Vec<Listed>, StoreError>;
    /// One task's listing entry, `None` when it has no files at all.
    async fn list_one(&self, key: &TaskKey) -> Result<Option<Listed>, StoreError>;
    async fn read_manifest(&self, key: &TaskKey) -> Result<ManifestRead, StoreError>;
    async fn read_status(&self, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError>;
    /// Atomic: a reader sees the old status or the new one (DESIGN.md §3).
    async fn write_status(&self, key: &TaskKey, status: &TaskStatus) -> Result<(), StoreError>;
    async fn delete_status(&self, key: &TaskKey) -> Result<(), StoreError>;
    /// Change notifications; a full relist at the resync interval heals any missed one.
    /// Call it before the first [`Store::list`], which also extends what is watched.
    fn watch(&self) -> Result<mpsc::UnboundedReceiver<StoreEvent>, StoreError>;
    /// A human name for where the store is, for messages.
    fn location(&self) -> String;
}
