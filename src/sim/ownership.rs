//! An in-memory [`Ownership`] with the blob lease's contract: one holder per task,
//! never taken from a live holder, handed back on release, and lapsing a lease period
//! after its holder dies (a live holder renews it, so it never lapses while it lives).

use super::world::{Lease, World};
use crate::store::StoreError;
use crate::store::ownership::{Ownership, ReplicaRecord};
use crate::task::TaskKey;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// The blob store's lease period.
pub const LEASE: Duration = Duration::from_secs(15);

pub struct FakeOwnership {
    world: Arc<World>,
    epoch: u64,
}

impl FakeOwnership {
    pub fn new(world: Arc<World>, epoch: u64) -> Self {
        FakeOwnership { world, epoch }
    }

    fn me(&self) -> String {
        self.epoch.to_string()
    }
}

#[async_trait]
impl Ownership for FakeOwnership {
    async fn acquire(&self, key: &TaskKey) -> Result<bool, StoreError> {
        self.world.call(self.epoch, &format!("lease.acquire {key}")).await;
        let now = self.world.now();
        let mut state = self.world.lock();
        let p = state.faults.store_unavailable;
        if state.faults.store_outage || state.chance(p) {
            return Err(StoreError::Unavailable {
                location: "sim".into(),
                message: "lease: the store is unreachable".into(),
            });
        }
        let free = match state.leases.get(key) {
            None => true,
            Some(lease) if lease.holder == self.me() => true,
            Some(lease) => lease.expires.is_some_and(|at| at <= now),
        };
        if free {
            state.leases.insert(
                key.clone(),
                Lease {
                    holder: self.me(),
                    expires: None,
                },
            );
        }
        Ok(free)
    }

    async fn release(&self, key: &TaskKey) {
        self.world.call(self.epoch, &format!("lease.release {key}")).await;
        let mut state = self.world.lock();
        if state.leases.get(key).is_some_and(|l| l.holder == self.me()) {
            state.leases.remove(key);
        }
    }

    async fn release_all(&self) {
        let me = self.me();
        self.world.lock().leases.retain(|_, l| l.holder != me);
    }

    fn holds(&self, key: &TaskKey) -> bool {
        let state = self.world.lock();
        state.alive.contains(&self.epoch) && state.leases.get(key).is_some_and(|l| l.holder == self.me())
    }

    fn held(&self) -> usize {
        let me = self.me();
        self.world.lock().leases.values().filter(|l| l.holder == me).count()
    }

    fn replica_id(&self) -> String {
        self.me()
    }

    async fn publish(&self, _record: &ReplicaRecord) -> Result<(), StoreError> {
        Ok(())
    }

    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        Ok(Vec::new())
    }

    async fn withdraw(&self, _id: &str) {}
}
