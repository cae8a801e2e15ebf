//! Named semaphores shared by the replicas of a store ([`SharedSemaphores`], a blob
//! store's lease per slot): taken for each container a decision starts, after this
//! replica's own slots ([`admit`](super::admit)), all of a lane's or none; held while
//! its container may exist; given back once it is gone. A store with no replicas has
//! none, and all of this is skipped.
//!
//! The replicas' shared count has no line to wait in: a lane refused waits
//! `WaitingForSlot` and looks again every [`SHARED_RETRY`].

use super::Shared;
use super::admit::{self, LaneStanding};
use super::limits::{Lane, Standing};
use super::reconcile::{self, Decision, Desired, Input, Slot};
use crate::store::StoreError;
use crate::store::ownership::SharedSemaphores;
use crate::task::TaskKey;
use std::sync::Arc;
use std::time::Duration;

/// How often a lane refused by a shared semaphore asks again.
pub(super) const SHARED_RETRY: Duration = Duration::from_secs(2);

/// Who holds a shared slot: one lane of one task.
fn holder(key: &TaskKey, lane: Lane) -> String {
    format!("{key}#{lane}")
}

/// The holders of `key`'s lanes that hold a shared slot.
fn holders_of(semaphores: &dyn SharedSemaphores, key: &TaskKey) -> Vec<String> {
    semaphores
        .holders(&format!("{key}#"))
        .into_iter()
        .filter(|h| h.rsplit_once('#').is_some_and(|(k, _)| k == key.as_str()))
        .collect()
}

/// Whether a pass must bargain with the shared semaphores at all.
pub(super) fn applies(shared: &Shared, desired: &Desired) -> bool {
    shared.shared_semaphores.is_some() && matches!(desired, Desired::Valid(spec) if !spec.semaphores.is_empty())
}

/// Takes the shared slots of every lane the decision starts, in lane order; when one is
/// refused, decides again with it and the lanes after it held back. `true`: refused.
pub(super) async fn admit(
    shared: &Shared,
    key: &TaskKey,
    desired: &Desired,
    input: Option<Input<'_>>,
    decision: Decision,
) -> Result<(Decision, bool), StoreError> {
    let (Some(semaphores), Desired::Valid(spec), Some(mut input)) = (&shared.shared_semaphores, desired, input) else {
        return Ok((decision, false));
    };
    let started = decision.started_lanes(input.status);
    let mut granted = Vec::new();
    for lane in &started {
        let holder = holder(key, lane.unwrap_or(0));
        for name in &spec.semaphores {
            let limit = shared.config.semaphores.get(name).copied().unwrap_or(0);
            if !semaphores.acquire(name, limit, &holder).await? {
                semaphores.release(&holder).await;
                let lanes = decision.status.as_ref().map_or(0, |s| s.indexes.len() as u32);
                let full = Slot::Full {
                    limit: format!("semaphore {name} {limit}/{limit} (shared by the replicas)"),
                };
                admit::hold_back(&mut input, lanes, &granted, full);
                return Ok((reconcile::decide(input), true));
            }
        }
        granted.push(*lane);
    }
    Ok((decision, false))
}

/// After the status is written: a lane whose container may exist holds its slots (taken
/// again after a restart or a take-over, even past the limit: the container runs), and
/// every other lane's go back.
pub(super) async fn settle(shared: &Shared, key: &TaskKey, desired: &Desired, standings: &[LaneStanding]) {
    let Some(semaphores) = &shared.shared_semaphores else {
        return;
    };
    let named: &[String] = match desired {
        Desired::Valid(spec) => &spec.semaphores,
        _ => &[],
    };
    let live: Vec<String> = standings
        .iter()
        .filter(|(_, standing, _)| *standing == Standing::Live)
        .map(|(lane, _, _)| holder(key, *lane))
        .collect();
    for holder in live.iter().filter(|_| !named.is_empty()) {
        for name in named {
            let limit = shared.config.semaphores.get(name).copied().unwrap_or(0);
            match semaphores.acquire(name, limit, holder).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(task = %key, "{holder}: a live container holds no slot of semaphore {name}: all {limit} are held by others (it was adopted past the limit)")
                }
                Err(err) => tracing::debug!(task = %key, "{holder}: cannot take a slot of semaphore {name}: {err}"),
            }
        }
    }
    for holder in holders_of(semaphores.as_ref(), key) {
        if !live.contains(&holder) {
            semaphores.release(&holder).await;
        }
    }
}

/// The task is not this replica's (any more): its shared slots go back, in the background.
pub(super) fn release_task(shared: &Shared, key: &TaskKey) {
    let Some(semaphores) = &shared.shared_semaphores else {
        return;
    };
    for holder in holders_of(semaphores.as_ref(), key) {
        let semaphores: Arc<dyn SharedSemaphores> = semaphores.clone();
        tokio::spawn(async move { semaphores.release(&holder).await });
    }
}
