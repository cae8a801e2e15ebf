//! Ownership of tasks among controller replicas. A store that several controllers may
//! share (the blob store) says, through [`Ownership`], which replica may act on a task;
//! a store that only one controller uses (the directory store) provides none, and every
//! task is its own. The controller knows only this trait, never how it is kept.

use super::StoreError;
use crate::status::{Placement, Timestamp};
use crate::task::TaskKey;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a replica tells the others sharing its store about itself, refreshed while it
/// lives (a blob store keeps it as `.skiff/replicas/<id>.json`): chiefly where each of
/// its runtimes places containers, so that a replica whose containers another could
/// not adopt after its death is known (and said) before it happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRecord {
    /// Unique per run of a replica (its lease id on a blob store).
    pub id: String,
    /// `--replica-name`: how people know it.
    pub name: String,
    /// Each runtime's placement (by runtime name), for the runtimes that could say.
    #[serde(default)]
    pub placements: BTreeMap<String, Placement>,
    pub started_at: Timestamp,
    /// Refreshed periodically; a record whose heartbeat is old belongs to a dead replica.
    pub heartbeat_at: Timestamp,
}

#[async_trait]
pub trait Ownership: Send + Sync {
    /// Takes the task for this replica, unless another live replica holds it.
    /// `Ok(true)`: this replica owns it now (or already did).
    /// `Ok(false)`: another replica owns it; never taken from a live owner.
    async fn acquire(&self, key: &TaskKey) -> Result<bool, StoreError>;
    /// Gives the task up, so that any replica may take it at once (cooperative hand-over).
    async fn release(&self, key: &TaskKey);
    /// Gives every task up: a replica that stops hands its work over.
    async fn release_all(&self);
    /// Whether this replica holds the task now (and has kept its hold alive).
    fn holds(&self, key: &TaskKey) -> bool;
    /// How many tasks this replica holds: its share of the work.
    fn held(&self) -> usize;
    /// This replica's id among those sharing the store.
    fn replica_id(&self) -> String;
    /// Writes (or refreshes) this replica's presence record.
    async fn publish(&self, record: &ReplicaRecord) -> Result<(), StoreError>;
    /// Every replica's presence record, this one's included; unreadable ones skipped.
    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError>;
    /// Removes a replica's presence record: this one's when it stops, or a long-dead one's.
    async fn withdraw(&self, id: &str);
}

/// Slots of named semaphores (`--semaphore NAME=N`) shared by every replica of a store,
/// kept by the store (a blob store: a lease blob per slot,
/// `.skiff/semaphores/<name>/<slot>`), so that replicas never pass a limit between them
/// and a dead replica's slots come back when its leases lapse. A store used by one
/// controller provides none: the controller's own count is the whole truth.
#[async_trait]
pub trait SharedSemaphores: Send + Sync {
    /// Takes one slot of semaphore `name` (of `limit` slots) for `holder`, unless it holds
    /// one already. `Ok(false)`: every slot is held by others.
    async fn acquire(&self, name: &str, limit: usize, holder: &str) -> Result<bool, StoreError>;
    /// Gives back every slot `holder` holds.
    async fn release(&self, holder: &str);
    /// The holders with a slot whose name starts with `prefix`.
    fn holders(&self, prefix: &str) -> Vec<String>;
}
