//! Named semaphores shared by the replicas: a lease blob per slot,
//! `.skiff/semaphores/<name>/<slot>` (slot 0 to N-1). Holding a slot is holding its
//! blob's lease; a replica that dies stops renewing, and its slots come back when the
//! leases lapse. Two replicas can never hold one slot: the service refuses a second lease.
//!
//! A holder's lease id is derived from its name (a task's lane), so that the replica that
//! takes a task over from a dead one, acquiring for the same holder, renews the dead one's
//! lease on a slot it meets first instead of being refused by it. Leases last [`LEASE`],
//! longer than a task's ownership lease, so that the new owner of a task with a live
//! container finds its slot still held.

use super::{Inner, lock};
use crate::store::StoreError;
use crate::store::ownership::SharedSemaphores;
use async_trait::async_trait;
use azure_storage_blob::models::{BlobClientAcquireLeaseOptions, BlockBlobClientUploadOptions};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// A slot lease's length: the service's longest finite one.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often held slot leases are renewed.
const RENEW: Duration = Duration::from_secs(15);

pub struct SemaphoreLeases {
    inner: Weak<Inner>,
    /// (semaphore, holder) → the slot held.
    held: Mutex<HashMap<(String, String), usize>>,
    renewing: AtomicBool,
}

/// The holder's lease id: a GUID made from its name.
fn lease_id(holder: &str) -> String {
    let hex = hex::encode(&Sha256::digest(format!("skiff-semaphore\0{holder}").as_bytes())[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn rel(name: &str, slot: usize) -> String {
    format!("{}/semaphores/{name}/{slot}", super::STATE_FOLDER)
}

impl SemaphoreLeases {
    pub(super) fn new(inner: Weak<Inner>) -> Self {
        SemaphoreLeases {
            inner,
            held: Mutex::default(),
            renewing: AtomicBool::new(false),
        }
    }

    fn inner(&self) -> Result<Arc<Inner>, StoreError> {
        self.inner.upgrade().ok_or_else(|| StoreError::Unavailable {
            location: "blob store".into(),
            message: "the store is gone".into(),
        })
    }

    fn start_renewing(self: &Arc<Self>) {
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let leases = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW).await;
                let Some(leases) = leases.upgrade() else { return };
                leases.renew_all().await;
            }
        });
    }

    async fn renew_all(&self) {
        let Ok(inner) = self.inner() else { return };
        let held: Vec<((String, String), usize)> = lock(&self.held).iter().map(|(k, v)| (k.clone(), *v)).collect();
        for ((name, holder), slot) in held {
            let rel = rel(&name, slot);
            let result = match inner.blob(&rel) {
                Ok(blob) => blob
                    .renew_lease(lease_id(&holder), None)
                    .await
                    .map(|_| ())
                    .map_err(|err| inner.error(&rel, &err)),
                Err(err) => Err(err),
            };
            match result {
                Ok(()) | Err(StoreError::Unavailable { .. }) => {}
                Err(err) => {
                    tracing::warn!(semaphore = %name, holder = %holder, "lost a semaphore slot's lease: {err}");
                    lock(&self.held).remove(&(name, holder));
                }
            }
        }
    }

    /// Leases one slot for the holder. `Ok(false)`: leased by another holder.
    async fn try_slot(&self, inner: &Inner, name: &str, slot: usize, holder: &str) -> Result<bool, StoreError> {
        let rel = rel(name, slot);
        let blob = inner.blob(&rel)?;
        for _ in 0..2 {
            let options = BlobClientAcquireLeaseOptions {
                proposed_lease_id: Some(lease_id(holder)),
                ..Default::default()
            };
            match blob.acquire_lease(LEASE.as_secs() as i32, Some(options)).await {
                Ok(_) => return Ok(true),
                Err(err) if super::is_not_found(&err) => {
                    // The slot's first use: make its blob (whoever wins), then lease it.
                    let options = BlockBlobClientUploadOptions {
                        if_none_match: Some("*".into()),
                        ..Default::default()
                    };
                    if let Err(err) = blob
                        .block_blob_client()
                        .upload(azure_core::http::RequestContent::from(Vec::new()), Some(options))
                        .await
                    {
                        match inner.error(&rel, &err) {
                            StoreError::Conflict { .. } => {}
                            other => return Err(other),
                        }
                    }
                }
                Err(err) => {
                    return match inner.error(&rel, &err) {
                        // LeaseAlreadyPresent: another holder has it.
                        StoreError::Conflict { .. } => Ok(false),
                        other => Err(other),
                    };
                }
            }
        }
        Ok(false)
    }
}

#[async_trait]
impl SharedSemaphores for Arc<SemaphoreLeases> {
    async fn acquire(&self, name: &str, limit: usize, holder: &str) -> Result<bool, StoreError> {
        let entry = (name.to_string(), holder.to_string());
        if lock(&self.held).contains_key(&entry) {
            return Ok(true);
        }
        let inner = self.inner()?;
        for slot in 0..limit {
            if self.try_slot(&inner, name, slot, holder).await? {
                lock(&self.held).insert(entry, slot);
                self.start_renewing();
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn release(&self, holder: &str) {
        let slots: Vec<(String, usize)> = {
            let mut held = lock(&self.held);
            let mine: Vec<(String, String)> = held.keys().filter(|(_, h)| h == holder).cloned().collect();
            mine.into_iter()
                .filter_map(|key| held.remove(&key).map(|slot| (key.0, slot)))
                .collect()
        };
        let Ok(inner) = self.inner() else { return };
        for (name, slot) in slots {
            let rel = rel(&name, slot);
            if let Ok(blob) = inner.blob(&rel)
                && let Err(err) = blob.release_lease(lease_id(holder), None).await
            {
                // It lapses by itself; the slot is only unused a little longer.
                tracing::debug!(semaphore = %name, "releasing a slot's lease failed: {}", inner.error(&rel, &err));
            }
        }
    }

    fn holders(&self, prefix: &str) -> Vec<String> {
        let mut holders: Vec<String> = lock(&self.held)
            .keys()
            .filter(|(_, holder)| holder.starts_with(prefix))
            .map(|(_, holder)| holder.clone())
            .collect();
        holders.sort();
        holders.dedup();
        holders
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lease_ids_are_guids_stable_per_holder() {
        let id = super::lease_id("jobs/a#0");
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(id, super::lease_id("jobs/a#0"));
        assert_ne!(id, super::lease_id("jobs/a#1"));
    }
}
