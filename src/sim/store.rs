//! An in-memory [`Store`] with the blob store's contract: statuses written only if
//! unchanged since they were read for update (else `Conflict`), calls that fail with
//! `Unavailable` (an outage, or a write that landed but whose answer was lost), change
//! notifications for manifests and for statuses deleted by a person, and a listing whose
//! fingerprints change with every write.

use super::world::{Stored, World};
use crate::status::TaskStatus;
use crate::store::ownership::Ownership;
use crate::store::{Fingerprint, Listed, ManifestRead, Store, StoreError, StoreEvent};
use crate::task::TaskKey;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

pub struct FakeStore {
    world: Arc<World>,
    epoch: u64,
    /// The version each status had when this controller last read it for update (the
    /// blob store's ETags): `None` when it was absent.
    seen: Mutex<HashMap<TaskKey, Option<u64>>>,
    ownership: Option<Arc<dyn Ownership>>,
}

fn unavailable(what: &str) -> StoreError {
    StoreError::Unavailable {
        location: "sim".into(),
        message: format!("{what}: the store is unreachable"),
    }
}

fn stamp(version: u64, at: &crate::status::Timestamp) -> (u64, u128) {
    (version, at.timestamp_nanos_opt().unwrap_or_default() as u128)
}

impl FakeStore {
    pub fn new(world: Arc<World>, epoch: u64, ownership: Option<Arc<dyn Ownership>>) -> Self {
        FakeStore {
            world,
            epoch,
            seen: Mutex::new(HashMap::new()),
            ownership,
        }
    }

    fn failing(&self) -> bool {
        let mut state = self.world.lock();
        let p = state.faults.store_unavailable;
        state.faults.store_outage || state.chance(p)
    }

    fn listed(state: &super::world::State, key: &TaskKey) -> Option<Listed> {
        let manifest = state.manifests.get(key);
        let status = state.statuses.get(key);
        if manifest.is_none() && status.is_none() {
            return None;
        }
        let mut stamps = Vec::new();
        stamps.extend(manifest.map(|m| stamp(m.version, &m.modified)));
        stamps.extend(status.map(|s| stamp(s.version, &s.modified)));
        Some(Listed {
            key: key.clone(),
            fingerprint: Fingerprint::new(stamps),
            has_manifest: manifest.is_some(),
            has_status: status.is_some(),
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, Option<u64>>> {
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The condition of a write: the status is as this controller last read it.
    fn unchanged(&self, key: &TaskKey, current: Option<u64>) -> Result<(), StoreError> {
        match self.seen().get(key) {
            Some(seen) if *seen != current => Err(StoreError::Conflict {
                path: format!("{key}.status.json"),
            }),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Store for FakeStore {
    async fn list(&self) -> Result<Vec<Listed>, StoreError> {
        self.world.call(self.epoch, "store.list").await;
        if self.failing() {
            return Err(unavailable("list"));
        }
        let state = self.world.lock();
        let keys: std::collections::BTreeSet<&TaskKey> = state.manifests.keys().chain(state.statuses.keys()).collect();
        Ok(keys.into_iter().filter_map(|k| Self::listed(&state, k)).collect())
    }

    async fn list_one(&self, key: &TaskKey) -> Result<Option<Listed>, StoreError> {
        self.world.call(self.epoch, "store.list_one").await;
        if self.failing() {
            return Err(unavailable("list"));
        }
        Ok(Self::listed(&self.world.lock(), key))
    }

    async fn read_manifest(&self, key: &TaskKey) -> Result<ManifestRead, StoreError> {
        self.world.call(self.epoch, &format!("store.read_manifest {key}")).await;
        if self.failing() {
            return Err(unavailable("read"));
        }
        Ok(match self.world.lock().manifests.get(key) {
            Some(m) => ManifestRead::Found {
                file: format!("{key}.yaml"),
                bytes: m.bytes.clone(),
                modified: Some(std::time::SystemTime::from(m.modified)),
                local_dir: None,
            },
            None => ManifestRead::Missing,
        })
    }

    async fn read_status(&self, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError> {
        self.world.call(self.epoch, &format!("store.read_status {key}")).await;
        if self.failing() {
            return Err(unavailable("read"));
        }
        Ok(self.world.lock().statuses.get(key).map(|s| s.status.clone()))
    }

    async fn read_status_for_update(&self, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError> {
        self.world
            .call(self.epoch, &format!("store.read_for_update {key}"))
            .await;
        if self.failing() {
            return Err(unavailable("read"));
        }
        let (status, version) = match self.world.lock().statuses.get(key) {
            Some(s) => (Some(s.status.clone()), Some(s.version)),
            None => (None, None),
        };
        self.seen().insert(key.clone(), version);
        Ok(status)
    }

    async fn write_status(&self, key: &TaskKey, status: &TaskStatus) -> Result<(), StoreError> {
        self.world
            .call(self.epoch, &format!("store.write {key} {}", status.phase))
            .await;
        if self.failing() {
            return Err(unavailable("write"));
        }
        let ambiguous = {
            let now = self.world.now();
            let mut state = self.world.lock();
            self.unchanged(key, state.statuses.get(key).map(|s| s.version))?;
            state.on_status_write(key, status);
            state.check_silences(key, status, now);
            let what = format!(
                "  wrote {key}: {} attempt {} {:?} {:?}",
                status.phase,
                status.attempt,
                status.reason,
                status
                    .attempts
                    .iter()
                    .map(|a| (a.container.as_str(), a.attempt_id(), a.exit_code))
                    .collect::<Vec<_>>()
            );
            state.record(&what);
            let version = state.next_version;
            state.next_version += 1;
            let modified = self.world.now();
            state.statuses.insert(
                key.clone(),
                Stored {
                    status: status.clone(),
                    version,
                    modified,
                },
            );
            self.seen().insert(key.clone(), Some(version));
            let p = state.faults.store_ambiguous;
            state.chance(p)
        };
        self.world.call(self.epoch, "store.write answered").await;
        if ambiguous {
            return Err(unavailable("write (it landed)"));
        }
        Ok(())
    }

    async fn delete_status(&self, key: &TaskKey) -> Result<(), StoreError> {
        self.world.call(self.epoch, &format!("store.delete {key}")).await;
        if self.failing() {
            return Err(unavailable("delete"));
        }
        {
            let mut state = self.world.lock();
            self.unchanged(key, state.statuses.get(key).map(|s| s.version))?;
            state.statuses.remove(key);
            state.on_status_delete(key);
            self.seen().insert(key.clone(), None);
        }
        self.world.call(self.epoch, "store.delete answered").await;
        Ok(())
    }

    fn watch(&self) -> Result<mpsc::UnboundedReceiver<StoreEvent>, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.world.lock();
        if state.alive.contains(&self.epoch) {
            state.store_watchers.push((self.epoch, tx));
        }
        Ok(rx)
    }

    fn location(&self) -> String {
        "sim".into()
    }

    async fn refresh(&self, key: &TaskKey) -> Result<(), StoreError> {
        self.seen().remove(key);
        Ok(())
    }

    fn ownership(&self) -> Option<Arc<dyn Ownership>> {
        self.ownership.clone()
    }
}
