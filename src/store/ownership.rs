//! Ownership of tasks among controller replicas. A store that several controllers may
//! share (the blob store) says, through [`Ownership`], which replica may act on a task;
//! a store that only one controller uses (the directory store) provides none, and every
//! task is its own. The controller knows only this trait, never how it is kept.

use super::StoreError;
use crate::task::TaskKey;
use async_trait::async_trait;

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
}
