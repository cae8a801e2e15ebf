//! Which replica owns which task: a blob lease per task, on an empty lease blob
//! `.skiff/leases/<task>.lease`.
//!
//! Why a lease blob per task rather than a lease on the status blob: a leased blob cannot
//! be deleted or overwritten without its lease id, so a person deleting a status (the
//! gesture for "run it again") or a sync tool would be refused; and a status does not
//! exist before its task's first write, so it cannot be leased first.
//!
//! - Leases last [`LEASE`] and are renewed every [`RENEW`]; a replica that stops
//!   renewing (it died, or lost the store for longer than a lease) loses them when they
//!   lapse, and another replica acquires them then. A live lease is never broken.
//! - All of one replica's leases carry the same random lease id, made at start.
//! - [`Leases::holds`] turns false a safety margin before a lease could have lapsed
//!   without renewal, so that a replica stops acting before anyone else may start.

use super::{Inner, lock};
use crate::store::StoreError;
use crate::store::ownership::{Ownership, ReplicaRecord};
use crate::task::TaskKey;
use async_trait::async_trait;
use azure_storage_blob::models::{BlobClientAcquireLeaseOptions, BlockBlobClientUploadOptions};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

/// A lease's length: the service allows 15 to 60 s (or infinite, which a dead replica
/// would keep forever).
pub const LEASE: Duration = Duration::from_secs(15);
/// How often held leases are renewed: three tries before one lapses.
pub const RENEW: Duration = Duration::from_secs(5);
/// A lease whose renewal is this close to lapsing is no longer trusted.
const MARGIN: Duration = Duration::from_secs(3);

pub struct Leases {
    inner: Weak<Inner>,
    /// This replica's lease id (a GUID, as the service requires).
    id: String,
    /// Held leases, with when each was last acquired or renewed.
    held: Mutex<HashMap<TaskKey, Instant>>,
    renewing: AtomicBool,
}

impl Leases {
    pub(super) fn new(inner: Weak<Inner>) -> Self {
        let bits: u128 = rand::random();
        let hex = format!("{bits:032x}");
        let id = format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        );
        Leases {
            inner,
            id,
            held: Mutex::default(),
            renewing: AtomicBool::new(false),
        }
    }

    fn rel(key: &TaskKey) -> String {
        format!("{}/leases/{}.lease", super::STATE_FOLDER, key.as_str())
    }

    fn inner(&self) -> Result<std::sync::Arc<Inner>, StoreError> {
        self.inner.upgrade().ok_or_else(|| StoreError::Unavailable {
            location: "blob store".into(),
            message: "the store is gone".into(),
        })
    }

    fn start_renewing(self: &std::sync::Arc<Self>) {
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let leases = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW).await;
                let Some(leases) = leases.upgrade() else { return };
                leases.renew_all().await;
            }
        });
    }

    /// A removed task's lease blob goes with it (while this replica holds the lease, so
    /// that a blob another replica just leased is never deleted).
    pub(super) async fn forget(&self, key: &TaskKey) {
        if lock(&self.held).remove(key).is_none() {
            return;
        }
        let Ok(inner) = self.inner() else { return };
        let rel = Self::rel(key);
        let options = azure_storage_blob::models::BlobClientDeleteOptions {
            lease_id: Some(self.id.clone()),
            ..Default::default()
        };
        if let Ok(blob) = inner.blob(&rel)
            && let Err(err) = blob.delete(Some(options)).await
        {
            tracing::debug!(task = %key, "removing the lease blob failed: {}", inner.error(&rel, &err));
        }
    }

    async fn renew_all(&self) {
        let Ok(inner) = self.inner() else { return };
        let keys: Vec<TaskKey> = lock(&self.held).keys().cloned().collect();
        let results: Vec<(TaskKey, Result<(), StoreError>)> = futures_util::stream::iter(keys)
            .map(|key| {
                let inner = inner.clone();
                async move {
                    let rel = Self::rel(&key);
                    let result = match inner.blob(&rel) {
                        Ok(blob) => blob
                            .renew_lease(self.id.clone(), None)
                            .await
                            .map(|_| ())
                            .map_err(|err| inner.error(&rel, &err)),
                        Err(err) => Err(err),
                    };
                    (key, result)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let now = Instant::now();
        let mut held = lock(&self.held);
        for (key, result) in results {
            match result {
                Ok(()) => {
                    if let Some(at) = held.get_mut(&key) {
                        *at = now;
                    }
                }
                Err(StoreError::Unavailable { message, .. }) => {
                    // Kept while it may still be ours; `holds` stops trusting it in time.
                    let lapsed = held.get(&key).is_some_and(|at| at.elapsed() >= LEASE);
                    if lapsed {
                        held.remove(&key);
                        tracing::warn!(task = %key, "the lease lapsed while the store was unreachable ({message}); another replica may take the task");
                    }
                }
                Err(err) => {
                    held.remove(&key);
                    tracing::warn!(task = %key, "lost the lease: {err}");
                }
            }
        }
    }
}

#[async_trait]
impl Ownership for std::sync::Arc<Leases> {
    async fn acquire(&self, key: &TaskKey) -> Result<bool, StoreError> {
        if self.holds(key) {
            return Ok(true);
        }
        let inner = self.inner()?;
        let rel = Leases::rel(key);
        let blob = inner.blob(&rel)?;
        for _ in 0..2 {
            let options = BlobClientAcquireLeaseOptions {
                proposed_lease_id: Some(self.id.clone()),
                ..Default::default()
            };
            let at = Instant::now();
            match blob.acquire_lease(LEASE.as_secs() as i32, Some(options)).await {
                Ok(_) => {
                    lock(&self.held).insert(key.clone(), at);
                    self.start_renewing();
                    return Ok(true);
                }
                Err(err) if super::is_not_found(&err) => {
                    // The first claim on this task: make its lease blob (whoever wins).
                    let options = BlockBlobClientUploadOptions {
                        if_none_match: Some("*".into()),
                        ..Default::default()
                    };
                    match blob
                        .block_blob_client()
                        .upload(azure_core::http::RequestContent::from(Vec::new()), Some(options))
                        .await
                    {
                        Ok(_) => {}
                        Err(err) => match inner.error(&rel, &err) {
                            StoreError::Conflict { .. } => {}
                            other => return Err(other),
                        },
                    }
                }
                Err(err) => {
                    return match inner.error(&rel, &err) {
                        // LeaseAlreadyPresent: a live replica owns it.
                        StoreError::Conflict { .. } => Ok(false),
                        other => Err(other),
                    };
                }
            }
        }
        Ok(false)
    }

    async fn release(&self, key: &TaskKey) {
        if lock(&self.held).remove(key).is_none() {
            return;
        }
        let Ok(inner) = self.inner() else { return };
        let rel = Leases::rel(key);
        if let Ok(blob) = inner.blob(&rel)
            && let Err(err) = blob.release_lease(self.id.clone(), None).await
        {
            // It lapses by itself; another replica only waits a little longer.
            tracing::debug!(task = %key, "releasing the lease failed: {}", inner.error(&rel, &err));
        }
    }

    async fn release_all(&self) {
        let keys: Vec<TaskKey> = lock(&self.held).keys().cloned().collect();
        futures_util::stream::iter(keys)
            .for_each_concurrent(16, |key| async move { self.release(&key).await })
            .await;
    }

    fn holds(&self, key: &TaskKey) -> bool {
        lock(&self.held)
            .get(key)
            .is_some_and(|at| at.elapsed() < LEASE.saturating_sub(MARGIN))
    }

    fn held(&self) -> usize {
        lock(&self.held).len()
    }

    fn replica_id(&self) -> String {
        self.id.clone()
    }

    async fn publish(&self, record: &ReplicaRecord) -> Result<(), StoreError> {
        let inner = self.inner()?;
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        inner.upload(&replica_rel(&record.id), bytes, None, false).await?;
        Ok(())
    }

    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        let inner = self.inner()?;
        let mut records = Vec::new();
        for rel in inner
            .list_names(&format!("{}/{REPLICAS}/", super::STATE_FOLDER))
            .await?
        {
            if !rel.ends_with(".json") {
                continue;
            }
            // One that vanished since the listing (withdrawn) or that is not a record
            // (a person's file) tells nothing: skipped.
            if let Some((bytes, _)) = inner.download(&rel).await?
                && let Ok(record) = serde_json::from_slice::<ReplicaRecord>(&bytes)
            {
                records.push(record);
            }
        }
        Ok(records)
    }

    async fn withdraw(&self, id: &str) {
        let Ok(inner) = self.inner() else { return };
        let rel = replica_rel(id);
        if let Ok(blob) = inner.blob(&rel)
            && let Err(err) = blob.delete(None).await
            && !super::is_not_found(&err)
        {
            tracing::debug!("removing the presence record {rel} failed: {}", inner.error(&rel, &err));
        }
    }
}

/// The folder of the replicas' presence records, under `.skiff/`.
const REPLICAS: &str = "replicas";

fn replica_rel(id: &str) -> String {
    format!("{}/{REPLICAS}/{id}.json", super::STATE_FOLDER)
}
