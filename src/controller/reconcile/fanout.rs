//! Fan-out: a task with `completions: N` runs N indexed containers ("lanes"). Each
//! lane is a task of one completion in miniature: it moves through the same phases,
//! by the same functions, with its own attempts and retries. The status keeps each
//! lane's state in `indexes` and its attempts in `attempts` (tagged with the index);
//! the task's own phase is the aggregate:
//!
//! - `Succeeded` once every lane has; also once every lane has ended with no more than
//!   `maxFailedIndexes` of them Failed (reason `SucceededWithFailedIndexes`, `null` in
//!   `result` for each failed one);
//! - `Failed` once more than `maxFailedIndexes` lanes have run out of retries (or one
//!   ended by a `FailTask` exit code) and the others are stopped and gone;
//! - otherwise live (`Creating`/`Running`/`Deleting`) while any lane has a container,
//!   and `Pending` when none has.
//!
//! At most `parallelism` lanes hold a container at once; the controller's limits come
//! on top, lane by lane.

use super::*;
use crate::status::IndexStatus;

pub(super) fn decide(input: &Input<'_>) -> Decision {
    match input.desired {
        Desired::Absent => absent(input),
        Desired::Invalid { name, message } => invalid(input, name, message),
        Desired::Valid(spec) => valid(input, spec),
    }
}

fn absent(input: &Input<'_>) -> Decision {
    let Some(status) = input.status else {
        return super::decide_absent(input);
    };
    let mut status = status.clone();
    let message = "the manifest was deleted; stopping the attempt";
    let deletes = wind_down(input, &mut status, CompletedBy::Cancel, Reason::Cancelled, message);
    if deletes.is_empty() {
        return Decision {
            status: None,
            actions: vec![Action::RemoveStatus],
            requeue_after: None,
        };
    }
    stopping(status, deletes, Reason::Cancelled, message.to_string())
}

fn invalid(input: &Input<'_>, name: &str, message: &str) -> Decision {
    let Some(status) = input.status else {
        return super::decide_invalid(input, name, message);
    };
    let mut status = status.clone();
    status.name = name.to_string();
    let stop_message = format!("the manifest became invalid; stopping the attempt: {message}");
    let deletes = wind_down(
        input,
        &mut status,
        CompletedBy::Cancel,
        Reason::ManifestInvalid,
        &stop_message,
    );
    if !deletes.is_empty() {
        return stopping(status, deletes, Reason::ManifestInvalid, stop_message);
    }
    // The spec hash and each lane's outcome are kept: if the same spec becomes valid
    // again, what it already did still counts (invariant 3).
    status.phase = Phase::Invalid;
    status.reason = None;
    status.message = Some(message.to_string());
    status.next_attempt_at = None;
    Decision::keep(status, None)
}

fn valid(input: &Input<'_>, spec: &TaskSpec) -> Decision {
    let now = input.now;
    let mut stale_containers = Vec::new();
    let mut status = match input.status {
        Some(status) if status.spec_hash == spec.spec_hash && input.dependencies.changed_since(status).is_none() => {
            status.clone()
        }
        Some(status) => {
            // Another run's status: stop everything it runs, then start afresh.
            let (reason, message) = why_run_again(input, status);
            if status.indexes.is_empty() {
                if let Some(container) = container_may_exist(input, status) {
                    return stop_attempt(status.clone(), container, CompletedBy::Cancel, reason, message, now);
                }
            } else {
                let mut status = status.clone();
                let deletes = wind_down(input, &mut status, CompletedBy::Cancel, reason, &message);
                if !deletes.is_empty() {
                    return stopping(status, deletes, reason, message);
                }
            }
            stale_containers = status.attempts.iter().map(|a| a.container.clone()).collect();
            if spec.completions <= 1 {
                // From a fan-out back to a single container.
                let single = Input {
                    status: None,
                    lanes: BTreeMap::new(),
                    ..input.clone()
                };
                return super::decide_valid(&single, spec).deleting_first(stale_containers);
            }
            fresh(input.key, spec, now)
        }
        None => fresh(input.key, spec, now),
    };
    status.name = spec.name.clone();
    if status.phase == Phase::Invalid {
        // Valid again: the lanes carry on from where they were.
        status.phase = Phase::Pending;
        status.reason = None;
    }
    if status.phase.is_terminal() {
        // Invariant 3: done for this spec hash, whatever happens.
        return Decision::keep(status, None).deleting_first(stale_containers);
    }

    let terminating = status.reason == Some(Reason::Terminated) && status.phase == Phase::Deleting;
    if input.terminate || terminating {
        let message = "terminated through the API";
        let deletes = wind_down(input, &mut status, CompletedBy::Terminate, Reason::Terminated, message);
        if !deletes.is_empty() {
            return stopping(status, deletes, Reason::Terminated, message.to_string());
        }
        status.phase = Phase::Failed;
        status.reason = Some(Reason::Terminated);
        status.message = Some(message.to_string());
        status.next_attempt_at = None;
        return Decision::keep(status, None).deleting_first(stale_containers);
    }
    if let Some(held) = hold_for_dependencies(input, spec, &mut status) {
        return held.deleting_first(stale_containers);
    }
    if let Some(failed) = failing(&status, spec) {
        return fail_fast(input, status, &failed);
    }

    let mut actions = Vec::new();
    let mut requeue: Option<Duration> = None;
    // Live lanes first: one that ends may free its place for a pending one, and one
    // that fails for good stops every other before a new one starts.
    let order: Vec<u32> = {
        let (live, rest): (Vec<_>, Vec<_>) = status.indexes.iter().partition(|l| l.phase.has_container());
        live.iter().chain(rest.iter()).map(|l| l.index).collect()
    };
    for index in order {
        let Some(lane) = status.indexes.iter().find(|l| l.index == index).cloned() else {
            continue;
        };
        if lane.phase.is_final() {
            continue;
        }
        if lane.phase == Phase::Pending && failing(&status, spec).is_some() {
            // The task failed in this very decision: start nothing more.
            continue;
        }
        let live = status.indexes.iter().filter(|l| l.phase.has_container()).count();
        let observed = input.lanes.get(&index).cloned().unwrap_or_default();
        let slot = if lane.phase == Phase::Pending && live >= spec.parallelism as usize {
            Slot::Full {
                limit: format!("parallelism {live}/{}", spec.parallelism),
            }
        } else {
            observed.slot.clone()
        };
        let view = lane_view(&status, &lane);
        let lane_input = Input {
            key: input.key,
            desired: input.desired,
            status: Some(&view),
            observed: observed.observed,
            seen_by_engine: observed.seen_by_engine,
            log_tail: observed.log_tail,
            slot,
            now,
            jitter: input.jitter,
            event: observed.event,
            heartbeat: observed.heartbeat,
            terminate: false,
            index: Some(index),
            lanes: BTreeMap::new(),
            dependencies: Dependencies::None,
            placement: input.placement.clone(),
            scheduling: input.scheduling.clone(),
        };
        let decided = advance(&lane_input, spec, view.clone());
        if let Some(after) = decided.status {
            store_lane(&mut status, index, after);
        }
        actions.extend(decided.actions);
        requeue = earliest(requeue, decided.requeue_after);
    }
    if failing(&status, spec).is_some() {
        // The others are stopped in the next decision, from a fresh look at them.
        requeue = earliest(requeue, Some(SOON));
    }
    summarize(&mut status, spec, now);
    let beats = input.lanes.iter().map(|(i, l)| (*i, l.heartbeat.clone())).collect();
    super::heartbeat::record_fan_out_progress(&mut status, &beats, spec.completions);
    if status.phase.is_terminal() {
        requeue = None;
    }
    Decision {
        status: Some(status),
        actions,
        requeue_after: requeue,
    }
    .deleting_first(stale_containers)
}

/// A new run: every lane Pending, none started.
fn fresh(key: &TaskKey, spec: &TaskSpec, now: Timestamp) -> TaskStatus {
    let mut status = TaskStatus::new(key.as_str(), &spec.name, &spec.spec_hash, now);
    status.message = notes(spec);
    status.indexes = (0..spec.completions).map(IndexStatus::pending).collect();
    status
}

/// The lane that fails the task, if one does: the one past `maxFailedIndexes` failed
/// lanes (the highest index of them), or one whose exit code's rule is `FailTask`.
fn failing(status: &TaskStatus, spec: &TaskSpec) -> Option<IndexStatus> {
    let failed: Vec<&IndexStatus> = status.indexes.iter().filter(|l| l.phase == Phase::Failed).collect();
    let ended_by_rule = failed.iter().find(|l| {
        status
            .attempts
            .iter()
            .any(|a| a.index == Some(l.index) && a.number == l.attempt && exit_rules::fails_the_task(a))
    });
    match ended_by_rule {
        Some(lane) => Some((*lane).clone()),
        None if failed.len() > spec.max_failed_indexes as usize => failed.last().map(|l| (*l).clone()),
        None => None,
    }
}

/// The task fails (see [`failing`]): stop the other lanes, and fail the task once they
/// are gone.
fn fail_fast(input: &Input<'_>, mut status: TaskStatus, failed: &IndexStatus) -> Decision {
    let mut why = failed.message.clone().unwrap_or_else(|| "it failed".into());
    let others: Vec<String> = status
        .indexes
        .iter()
        .filter(|l| l.phase == Phase::Failed && l.index != failed.index)
        .map(|l| l.index.to_string())
        .collect();
    if !others.is_empty() {
        why.push_str(&format!(
            "; index {} failed too, more than maxFailedIndexes allows",
            others.join(", ")
        ));
    }
    let stop_message = format!("index {} failed; stopping the other indexes", failed.index);
    let deletes = wind_down(
        input,
        &mut status,
        CompletedBy::Cancel,
        Reason::Cancelled,
        &stop_message,
    );
    let reason = failed.reason.unwrap_or(Reason::ExitCode);
    for lane in status.indexes.iter_mut().filter(|l| l.phase == Phase::Pending) {
        lane.reason = None;
        lane.message = Some(format!("not run: index {} failed", failed.index));
        lane.next_attempt_at = None;
    }
    if !deletes.is_empty() {
        return stopping(
            status,
            deletes,
            reason,
            format!("index {} failed ({why}); stopping the other indexes", failed.index),
        );
    }
    status.attempt = max_attempt(&status);
    status.phase = Phase::Failed;
    status.reason = Some(reason);
    status.message = Some(format!("index {} failed: {why}", failed.index));
    status.next_attempt_at = None;
    status.observed_at = Some(input.now);
    Decision::keep(status, None)
}

/// Stops every lane that may still have a container, recording why on its attempt.
/// Returns the deletes still needed; none means every lane's container is gone. A lane
/// whose container is gone is settled: Succeeded if it had, else Pending, with an
/// attempt stopped from outside forgotten (it counts against nothing).
fn wind_down(
    input: &Input<'_>,
    status: &mut TaskStatus,
    completed_by: CompletedBy,
    reason: Reason,
    message: &str,
) -> Vec<Action> {
    let mut deletes = Vec::new();
    for lane in status.indexes.clone() {
        if !lane.phase.has_container() {
            continue;
        }
        let mut view = lane_view(status, &lane);
        let observed = input
            .lanes
            .get(&lane.index)
            .map(|l| l.observed.clone())
            .unwrap_or_default();
        // A container out of reach cannot be deleted from here: nothing to wait for.
        let gone = matches!(
            observed,
            Observed::Container(ContainerState::Absent) | Observed::PlacementUnreachable(_)
        );
        if let Some(current) = view.current_mut()
            && current.reason.is_none()
        {
            current.finished_at = Some(input.now);
            current.completed_by = Some(completed_by);
            current.reason = Some(reason);
            current.message = Some(message.to_string());
        }
        if !gone {
            if let Some(current) = view.current() {
                deletes.push(Action::DeleteContainer {
                    container: current.container.clone(),
                });
            }
            view.phase = Phase::Deleting;
            view.reason = view.current().and_then(|c| c.reason);
            view.message = Some(message.to_string());
            store_lane(status, lane.index, view);
            continue;
        }
        let settled = match view.current().cloned() {
            Some(current) if current.succeeded() => {
                view.phase = Phase::Succeeded;
                view.reason = Some(Reason::Completed);
                view.message = None;
                view
            }
            Some(current) if !stopped_from_outside(&current) => {
                view.phase = Phase::Pending;
                view.reason = current.reason;
                view.message = current.message;
                view
            }
            _ => {
                let mut view = forget_stopped_attempt(view);
                view.message = Some(format!("not run: {message}"));
                view
            }
        };
        store_lane(status, lane.index, settled);
    }
    deletes
}

/// The task waits for its lanes' containers to go.
fn stopping(mut status: TaskStatus, deletes: Vec<Action>, reason: Reason, message: String) -> Decision {
    status.attempt = max_attempt(&status);
    status.phase = Phase::Deleting;
    status.reason = Some(reason);
    status.message = Some(message);
    status.next_attempt_at = None;
    Decision {
        status: Some(status),
        actions: deletes,
        requeue_after: Some(SOON),
    }
}

/// One lane as a task of one completion, so the single-container functions apply.
fn lane_view(status: &TaskStatus, lane: &IndexStatus) -> TaskStatus {
    TaskStatus {
        phase: lane.phase,
        reason: lane.reason,
        message: lane.message.clone(),
        attempt: lane.attempt,
        attempts: status
            .attempts
            .iter()
            .filter(|a| a.index == Some(lane.index))
            .cloned()
            .collect(),
        result: lane.result.clone(),
        log_tail: None,
        indexes: Vec::new(),
        dependencies: BTreeMap::new(),
        next_attempt_at: lane.next_attempt_at,
        ..status.clone()
    }
}

/// Writes a lane's state back into the task's status.
fn store_lane(status: &mut TaskStatus, index: u32, lane: TaskStatus) {
    let exit_code = lane.current().and_then(|a| a.exit_code);
    if let Some(slot) = status.indexes.iter_mut().find(|l| l.index == index) {
        slot.phase = lane.phase;
        slot.attempt = lane.attempt;
        slot.exit_code = exit_code;
        slot.result = lane.result;
        slot.reason = lane.reason;
        slot.message = lane.message;
        slot.next_attempt_at = lane.next_attempt_at;
    }
    status.attempts.retain(|a| a.index != Some(index));
    status.attempts.extend(lane.attempts);
    status.attempts.sort_by_key(|a| (a.created_at, a.index, a.number));
    if lane.log_tail.is_some() {
        status.log_tail = lane.log_tail;
    }
    status.observed_at = status.observed_at.max(lane.observed_at);
}

fn max_attempt(status: &TaskStatus) -> u32 {
    status.indexes.iter().map(|l| l.attempt).max().unwrap_or(0)
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The task's phase, reason and message from its lanes'.
fn summarize(status: &mut TaskStatus, spec: &TaskSpec, now: Timestamp) {
    let count = |phases: &[Phase]| status.indexes.iter().filter(|l| phases.contains(&l.phase)).count();
    let total = status.indexes.len();
    let succeeded = count(&[Phase::Succeeded]);
    let running = count(&[Phase::Running]);
    let creating = count(&[Phase::Creating]);
    let deleting = count(&[Phase::Deleting]);
    let failed = count(&[Phase::Failed]);
    let pending = count(&[Phase::Pending]);
    status.attempt = max_attempt(status);
    if succeeded + failed == total && failing(status, spec).is_none() {
        // Every lane ended, and no more failed than `maxFailedIndexes` allows.
        status.phase = Phase::Succeeded;
        status.next_attempt_at = None;
        status.observed_at = Some(now);
        status.result = Some(serde_json::Value::Array(
            status
                .indexes
                .iter()
                .map(|l| match l.phase {
                    Phase::Succeeded => l.result.clone().unwrap_or(serde_json::Value::Null),
                    _ => serde_json::Value::Null,
                })
                .collect(),
        ));
        if failed == 0 {
            status.reason = Some(Reason::Completed);
            status.message = Some(format!("all {total} indexes succeeded"));
            return;
        }
        let failures: Vec<String> = status
            .indexes
            .iter()
            .filter(|l| l.phase == Phase::Failed)
            .map(|l| format!("index {} ({})", l.index, l.message.as_deref().unwrap_or("failed")))
            .collect();
        status.reason = Some(Reason::SucceededWithFailedIndexes);
        status.message = Some(format!(
            "{succeeded} of {total} indexes succeeded; {failed} failed, within maxFailedIndexes {}: {}",
            spec.max_failed_indexes,
            failures.join("; ")
        ));
        return;
    }
    let mut parts = Vec::new();
    for (n, what) in [
        (succeeded, "succeeded"),
        (running, "running"),
        (creating, "creating"),
        (deleting, "finishing"),
        (failed, "failed"),
        (pending, "pending"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let mut message = format!("{total} indexes: {}", parts.join(", "));
    // Say why pending lanes wait: the first one's limit or backoff tells it.
    let waiting = status
        .indexes
        .iter()
        .find(|l| l.phase == Phase::Pending && l.reason == Some(Reason::WaitingForSlot));
    if let Some(lane) = waiting
        && let Some(why) = &lane.message
    {
        message.push_str(&format!("; {why}"));
    }
    if let Some(note) = notes(spec) {
        message.push_str(&format!("; {note}"));
    }
    status.message = Some(message);
    status.next_attempt_at = status
        .indexes
        .iter()
        .filter(|l| l.phase == Phase::Pending)
        .filter_map(|l| l.next_attempt_at)
        .min();
    (status.phase, status.reason) = if running > 0 {
        (Phase::Running, Some(Reason::ContainerStarted))
    } else if creating > 0 {
        (Phase::Creating, Some(Reason::ContainerCreated))
    } else if deleting > 0 {
        let why = status
            .indexes
            .iter()
            .find(|l| l.phase == Phase::Deleting)
            .and_then(|l| l.reason);
        (Phase::Deleting, why)
    } else if waiting.is_some() {
        (Phase::Pending, Some(Reason::WaitingForSlot))
    } else if status.next_attempt_at.is_some() {
        (Phase::Pending, Some(Reason::BackoffAfterFailure))
    } else {
        (Phase::Pending, None)
    };
}

#[cfg(test)]
#[path = "fanout_tests.rs"]
mod tests;
