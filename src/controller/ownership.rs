//! Several controllers on one store: the controller's side of [`Ownership`]. The loop
//! knows nothing of how ownership is kept (blob leases); it asks, around each reconcile:
//!
//! - before reading anything: a task this replica does not hold is left alone while the
//!   replica already holds as many tasks as `--max-running` allows, so that a replica
//!   never claims work it cannot start and the other replicas idle (work sharing);
//! - once the task is read: whether it needs an owner at all (a finished task whose spec
//!   did not change needs none), and if so takes it, unless a live replica holds it; a
//!   task just taken is read again, from the store's freshest listing, before anything
//!   is decided: its last owner may have moved it on since the first read;
//! - once the reconcile is done: a task with no container left (finished, removed, or
//!   waiting) is handed back, so that any replica with a free slot may take it next.
//!
//! Correctness does not rest on the lease alone: every status write is conditional on
//! the ETag read, and container names are deterministic, so two replicas that both
//! believed they owned a task (a lease lapsing mid-reconcile) could not create a second
//! container for one attempt: the later write fails, and the loser re-reads.

use super::reconcile::Desired;
use super::{Reconciled, Shared, TaskState};
use crate::status::TaskStatus;
use crate::store::StoreError;
use crate::task::TaskKey;
use std::time::Duration;

/// How soon to look again at a task another replica holds: its lease lapses at most
/// this long after that replica stops renewing it.
const HELD_ELSEWHERE: Duration = Duration::from_secs(5);
/// How soon a replica at its `--max-running` looks again at a task it could not start.
const FULL: Duration = Duration::from_secs(2);

pub(super) enum Gate {
    Proceed,
    /// Just taken: what was read before may be stale.
    Acquired,
    /// Look again after this long, without acting.
    Later(Duration),
    /// Nothing may start before the controller has seen every task once.
    Deferred,
}

fn jitter(shared: &Shared, delay: Duration) -> Duration {
    delay.mul_f64(0.75 + 0.5 * shared.entropy.unit())
}

/// Before reading: a replica at capacity claims nothing more.
pub(super) fn before_read(shared: &Shared, key: &TaskKey) -> Gate {
    let Some(owner) = &shared.ownership else {
        return Gate::Proceed;
    };
    match shared.config.max_running {
        Some(max) if !owner.holds(key) && owner.held() >= max => Gate::Later(jitter(shared, FULL)),
        _ => Gate::Proceed,
    }
}

/// Once the task is read: take it if it needs an owner and nobody live holds it.
pub(super) async fn claim(
    shared: &Shared,
    key: &TaskKey,
    desired: &Desired,
    status: Option<&TaskStatus>,
) -> Result<Gate, StoreError> {
    let Some(owner) = &shared.ownership else {
        return Ok(Gate::Proceed);
    };
    if owner.holds(key) {
        return Ok(Gate::Proceed);
    }
    let settled = match (desired, status) {
        // Nothing to run and nothing to clean up.
        (Desired::Absent, None) => true,
        // Finished with this very spec: nothing to do until it changes. A scheduled task
        // is never finished (its next run starts from this status): it is claimed first.
        (Desired::Valid(spec), Some(s)) => {
            spec.schedule.is_none() && s.schedule.is_none() && s.phase.is_terminal() && s.spec_hash == spec.spec_hash
        }
        (Desired::Invalid { message, .. }, Some(s)) => {
            s.phase == crate::status::Phase::Invalid && s.message.as_deref() == Some(message.as_str())
        }
        _ => false,
    };
    if settled {
        return Ok(Gate::Proceed);
    }
    let live = status.is_some_and(|s| s.live_container().is_some());
    if !live && !shared.start.caught_up() {
        return Ok(Gate::Deferred);
    }
    Ok(if owner.acquire(key).await? {
        Gate::Acquired
    } else {
        Gate::Later(jitter(shared, HELD_ELSEWHERE))
    })
}

/// What a reconcile that did not act reports.
pub(super) fn not_acting(shared: &Shared, key: &TaskKey, order: u64, gate: Gate) -> Reconciled {
    // A slot this replica held for the task (before it lost the task) goes back.
    shared.limits.settle_task(key, order, &[]);
    super::shared_slots::release_task(shared, key);
    let (requeue, deferred) = match gate {
        Gate::Later(delay) => (Some(delay), false),
        Gate::Deferred => (None, true),
        Gate::Proceed | Gate::Acquired => (None, false),
    };
    Reconciled {
        deferred,
        ..Reconciled::new(key, TaskState::Active, requeue)
    }
}

/// After the reconcile: a task with no container is handed back.
pub(super) async fn after(shared: &Shared, key: &TaskKey, status: Option<&TaskStatus>) {
    let Some(owner) = &shared.ownership else { return };
    if owner.holds(key) && !status.is_some_and(|s| s.phase.has_container()) {
        owner.release(key).await;
    }
}
