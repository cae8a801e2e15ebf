//! The reconcile decision: a pure function from (desired spec, persisted status,
//! observation, now) to (new status, actions). No I/O happens here, so every
//! transition of DESIGN.md §4 is a table test and every invariant a property test.
//!
//! The caller persists the returned status *before* it performs the actions: the
//! status names a container before that container is created (invariant 2), and a
//! terminal phase is only returned once the container is observed gone (invariant 1).

use crate::callback::CallbackEvent;
use crate::manifest::{Cleanup, CompletionMode, TaskSpec};
use crate::runtime::ContainerState;
use crate::status::{AttemptRecord, CompletedBy, Phase, Placement, Reason, TaskStatus, Timestamp};
use crate::task::TaskKey;
use std::collections::BTreeMap;
use std::time::Duration;

mod exit_rules;
mod fanout;
mod heartbeat;
#[cfg(test)]
mod heartbeat_allow_tests;
mod io;
mod schedule;
#[cfg(test)]
mod schedule_allow_tests;
#[cfg(test)]
mod schedule_tests;

pub use exit_rules::MAX_UNCOUNTED_RETRIES;
pub use io::{
    Action, Decision, Dependencies, Desired, Input, Lane, Observed, RunObservation, Scheduling, Slot, overlapping_lane,
    overlapping_lanes, own_lane, own_run,
};

/// Largest `SKIFF_DEPENDENCY_RESULTS`, in bytes of JSON: environments are not for bulk data.
pub const MAX_DEPENDENCY_RESULTS: usize = 32 * 1024;

/// Longest delay between retries: a rule the manifest is validated against too.
pub use crate::manifest::limits::MAX_RETRY_DELAY;
/// How soon to look again while waiting for a container to appear or vanish.
const SOON: Duration = Duration::from_millis(500);
/// How soon to look again after the runtime could not be asked.
const INFRA_RETRY: Duration = Duration::from_secs(2);
/// A task waiting for a slot is woken when one frees; this is only a safety net.
const SLOT_RECHECK: Duration = Duration::from_secs(30);

/// Retry delay after `failed` failed attempts: `base` doubling each time, capped at
/// [`MAX_RETRY_DELAY`], spread by ±20% so that failures in step do not retry in step.
pub fn retry_delay(base: Duration, failed: u32, jitter: f64) -> Duration {
    let doublings = failed.saturating_sub(1).min(20);
    let raw = base.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY);
    let spread = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    raw.mul_f64(spread).min(MAX_RETRY_DELAY)
}

pub fn decide(input: Input<'_>) -> Decision {
    if let Some(wound_down) = schedule::wind_down_overlapping(&input) {
        return wound_down;
    }
    if let Desired::Valid(spec) = input.desired {
        match &spec.schedule {
            Some(rules) => return schedule::decide(&input, spec, rules),
            None if schedule::is_scheduled(input.status) => return schedule::unscheduled(&input, spec),
            None => {}
        }
    }
    let fan_out = input.status.is_some_and(|s| !s.indexes.is_empty())
        || matches!(input.desired, Desired::Valid(spec) if spec.completions > 1);
    if fan_out {
        return fanout::decide(&input);
    }
    match input.desired {
        Desired::Absent => decide_absent(&input),
        Desired::Invalid { name, message } => decide_invalid(&input, name, message),
        Desired::Valid(spec) => decide_valid(&input, spec),
    }
}

/// The container of the current attempt may still exist and must be deleted first.
fn container_may_exist(input: &Input<'_>, status: &TaskStatus) -> Option<String> {
    let container = status.live_container()?;
    match &input.observed {
        // Out of reach: nothing this replica could delete (and nothing of its own).
        Observed::Container(ContainerState::Absent) | Observed::PlacementUnreachable(_) => None,
        // A failed create may still have left a container behind: delete to be sure.
        _ => Some(container.to_string()),
    }
}

/// Stops the current attempt for a reason outside the container (cancel, spec change,
/// invalid manifest), recording why, and asks for its container to be deleted.
fn stop_attempt(
    mut status: TaskStatus,
    container: String,
    completed_by: CompletedBy,
    reason: Reason,
    message: String,
    now: Timestamp,
) -> Decision {
    if let Some(current) = status.current_mut()
        && current.reason.is_none()
    {
        current.finished_at = Some(now);
        current.completed_by = Some(completed_by);
        current.reason = Some(reason);
        current.message = Some(message.clone());
    }
    status.phase = Phase::Deleting;
    status.reason = Some(reason);
    status.message = Some(message);
    Decision::act(status, Action::DeleteContainer { container }, SOON)
}

fn decide_absent(input: &Input<'_>) -> Decision {
    let Some(status) = input.status else {
        return Decision {
            status: None,
            actions: Vec::new(),
            requeue_after: None,
        };
    };
    match container_may_exist(input, status) {
        // Recorded, so that a manifest restored meanwhile does not count this as a failure.
        Some(container) => stop_attempt(
            status.clone(),
            container,
            CompletedBy::Cancel,
            Reason::Cancelled,
            "the manifest was deleted; stopping the attempt".into(),
            input.now,
        ),
        None => Decision {
            status: None,
            actions: vec![Action::RemoveStatus],
            requeue_after: None,
        },
    }
}

fn decide_invalid(input: &Input<'_>, name: &str, message: &str) -> Decision {
    let mut status = input
        .status
        .cloned()
        .unwrap_or_else(|| TaskStatus::new(input.key.as_str(), name, "", input.now));
    if let Some(container) = container_may_exist(input, &status) {
        status.name = name.to_string();
        return stop_attempt(
            status,
            container,
            CompletedBy::Cancel,
            Reason::ManifestInvalid,
            format!("the manifest became invalid; stopping the attempt: {message}"),
            input.now,
        );
    }
    // An attempt left without an end (its container never made, or gone) ends here, as
    // stopped from outside: if the spec comes back, it does not count against retries.
    if status.phase.has_container()
        && let Some(current) = status.current_mut()
        && current.reason.is_none()
    {
        current.finished_at = Some(input.now);
        if let Observed::PlacementUnreachable(placement) = &input.observed {
            // It may still run there: its number must never be used again, so it is
            // kept (uncharged) rather than forgotten as a stopped attempt would be.
            give_up_out_of_reach(current, placement, input.now);
        } else {
            current.completed_by = Some(CompletedBy::Cancel);
            current.reason = Some(Reason::ManifestInvalid);
            current.message = Some("the manifest became invalid before the attempt ended".into());
        }
    }
    // The spec hash is kept: if the same spec becomes valid again, what it already
    // did still counts (invariant 3).
    status.name = name.to_string();
    status.phase = Phase::Invalid;
    status.reason = None;
    status.message = Some(message.to_string());
    status.next_attempt_at = None;
    Decision::keep(status, None)
}

fn decide_valid(input: &Input<'_>, spec: &TaskSpec) -> Decision {
    let now = input.now;
    let fresh = || {
        let mut status = TaskStatus::new(input.key.as_str(), &spec.name, &spec.spec_hash, now);
        status.message = notes(spec);
        status
    };
    let mut stale_containers = Vec::new();
    let mut status = match input.status {
        Some(status) if status.spec_hash == spec.spec_hash && input.dependencies.changed_since(status).is_none() => {
            if status.phase == Phase::Invalid {
                resume_after_invalid(status, spec)
            } else {
                status.clone()
            }
        }
        Some(status) => {
            // A new desired state: stop what runs for the old one, then start afresh.
            if let Some(container) = container_may_exist(input, status) {
                let (reason, message) = why_run_again(input, status);
                return stop_attempt(status.clone(), container, CompletedBy::Cancel, reason, message, now);
            }
            // Containers that `cleanup` kept belong to the old run, and the new run
            // would reuse their names: they go first.
            stale_containers = status.attempts.iter().map(|a| a.container.clone()).collect();
            fresh()
        }
        None => fresh(),
    };
    status.name = spec.name.clone();

    if input.terminate && !status.phase.is_final() {
        let message = "terminated through the API".to_string();
        if let Some(container) = container_may_exist(input, &status) {
            return stop_attempt(
                status,
                container,
                CompletedBy::Terminate,
                Reason::Terminated,
                message,
                now,
            );
        }
        status.phase = Phase::Failed;
        status.reason = Some(Reason::Terminated);
        status.message = Some(message);
        status.next_attempt_at = None;
        // Containers that `cleanup` kept for an earlier spec go all the same.
        return Decision::keep(status, None).deleting_first(stale_containers);
    }
    if let Some(held) = hold_for_dependencies(input, spec, &mut status) {
        return held.deleting_first(stale_containers);
    }
    advance(input, spec, status).deleting_first(stale_containers)
}

/// Why a task whose status is for another run must run again: its spec changed, or
/// one of its dependencies did.
fn why_run_again(input: &Input<'_>, status: &TaskStatus) -> (Reason, String) {
    match input.dependencies.changed_since(status) {
        Some(task) if matches!(input.desired, Desired::Valid(spec) if spec.spec_hash == status.spec_hash) => (
            Reason::DependencyChanged,
            format!("dependency {task} changed; stopping this attempt to run again after it"),
        ),
        _ => (
            Reason::SpecChanged,
            "the spec changed; stopping this attempt to start again from attempt 1".into(),
        ),
    }
}

/// Moves the task along from its phase, once the spec, the run and any terminate
/// request are settled.
fn advance(input: &Input<'_>, spec: &TaskSpec, status: TaskStatus) -> Decision {
    match status.phase {
        // Invariant 3: done for this spec hash, whatever happens.
        Phase::Succeeded | Phase::Failed | Phase::Invalid => Decision::keep(status, None),
        // Only a scheduled task's status says Scheduled, and its runs begin afresh.
        Phase::Scheduled => pending(
            input,
            spec,
            TaskStatus {
                phase: Phase::Pending,
                ..status
            },
        ),
        Phase::Pending => pending(input, spec, status),
        Phase::Creating | Phase::Running => active(input, spec, status),
        Phase::Deleting => deleting(input, spec, status),
    }
}

/// Before a run's first container, its dependencies must all have Succeeded. Returns
/// the decision when the task must wait or cannot run; records what the run is based on
/// when it may go on.
fn hold_for_dependencies(input: &Input<'_>, spec: &TaskSpec, status: &mut TaskStatus) -> Option<Decision> {
    let started = status.attempt > 0 || status.indexes.iter().any(|l| l.attempt > 0);
    if spec.depends_on.is_empty() || started || status.phase != Phase::Pending || !status.dependencies.is_empty() {
        return None;
    }
    match &input.dependencies {
        Dependencies::None => None,
        Dependencies::Waiting { waiting, .. } => {
            status.reason = Some(Reason::WaitingForDependencies);
            status.message = Some(format!("waiting for {}", waiting.join(", ")));
            // Each dependency wakes its dependents when it changes; this is a safety net.
            Some(Decision::keep(status.clone(), Some(SLOT_RECHECK)))
        }
        Dependencies::Failed { hashes, message } => {
            status.dependencies = hashes.clone();
            status.phase = Phase::Failed;
            status.reason = Some(Reason::DependencyFailed);
            status.message = Some(message.clone());
            status.next_attempt_at = None;
            Some(Decision::keep(status.clone(), None))
        }
        Dependencies::Met { hashes, results } => {
            status.dependencies = hashes.clone();
            if results.len() <= MAX_DEPENDENCY_RESULTS {
                return None;
            }
            status.phase = Phase::Failed;
            status.reason = Some(Reason::DependencyResultsTooLarge);
            status.message = Some(format!(
                "the results of its dependencies take {} KiB as JSON, more than the {} KiB that SKIFF_DEPENDENCY_RESULTS carries; have the dependencies return less (a path or a URL to the data, say)",
                results.len().div_ceil(1024),
                MAX_DEPENDENCY_RESULTS / 1024
            ));
            status.next_attempt_at = None;
            Some(Decision::keep(status.clone(), None))
        }
    }
}

/// An attempt stopped from outside (spec change, invalid or deleted manifest) is not
/// the container's failure: it is forgotten, and the task is Pending again.
fn stopped_from_outside(record: &AttemptRecord) -> bool {
    matches!(
        record.reason,
        Some(Reason::SpecChanged | Reason::ManifestInvalid | Reason::Cancelled)
    )
}

fn forget_stopped_attempt(mut status: TaskStatus) -> TaskStatus {
    // An attempt with no end at all never ran to an outcome of its own either.
    if status
        .current()
        .is_some_and(|a| stopped_from_outside(a) || a.reason.is_none())
    {
        let number = status.attempt;
        status.attempts.retain(|a| a.number != number);
        status.attempt = number.saturating_sub(1);
    }
    status.phase = Phase::Pending;
    status.reason = None;
    status.message = None;
    status.next_attempt_at = None;
    status
}

/// The same spec is valid again after a spell of Invalid: pick up where it was.
fn resume_after_invalid(status: &TaskStatus, spec: &TaskSpec) -> TaskStatus {
    let mut status = status.clone();
    let Some(current) = status.current().cloned() else {
        return forget_stopped_attempt(status);
    };
    if current.succeeded() {
        status.phase = Phase::Succeeded;
        status.reason = Some(Reason::Completed);
        status.message = Some("succeeded".into());
        return status;
    }
    let failed_for_good = current.reason.is_some()
        && !stopped_from_outside(&current)
        && current.reason != Some(Reason::PlacementUnreachable)
        && (charged_failures(&status) > spec.retries || exit_rules::fails_the_task(&current));
    if failed_for_good {
        status.phase = Phase::Failed;
        status.reason = current.reason;
        status.message = current.message.clone();
        return status;
    }
    forget_stopped_attempt(status)
}

fn notes(spec: &TaskSpec) -> Option<String> {
    (!spec.notes.is_empty()).then(|| format!("note: {}", spec.notes.join("; ")))
}

fn pending(input: &Input<'_>, spec: &TaskSpec, mut status: TaskStatus) -> Decision {
    let now = input.now;
    if let Some(at) = status.next_attempt_at
        && at > now
    {
        let wait = (at - now).to_std().unwrap_or(SOON);
        return Decision::keep(status, Some(wait));
    }
    let Some(placement) = input.placement.clone() else {
        // An attempt records where it lives before its container is made; until the
        // runtime can say, nothing is recorded and nothing is made (invariant 4: no
        // attempt is used up by this).
        status.reason = Some(Reason::InfrastructureError);
        status.message = Some(format!(
            "cannot reach the {} runtime to learn where it places containers; retrying (the controller's log says why)",
            spec.runtime
        ));
        return Decision::keep(status, Some(INFRA_RETRY));
    };
    if let Slot::Full { limit } = &input.slot {
        status.reason = Some(Reason::WaitingForSlot);
        status.message = Some(format!("waiting for a slot: {limit}"));
        return Decision::keep(status, Some(SLOT_RECHECK));
    }
    let number = status.attempt + 1;
    let container = match input.scheduling.run {
        Some(run) => input.key.run_container_name(run, number, input.index),
        None => input.key.container_name(number, input.index),
    };
    status.attempt = number;
    status.attempts.push(AttemptRecord {
        number,
        // Given by the act, which writes it before the create: the decision stays pure.
        id: None,
        runtime: spec.runtime,
        container: container.clone(),
        index: input.index,
        created_at: Some(now),
        started_at: None,
        finished_at: None,
        exit_code: None,
        completed_by: None,
        reason: None,
        message: None,
        placement: Some(placement),
        semaphores: Vec::new(),
        exit_rule: None,
    });
    status.phase = Phase::Creating;
    status.reason = Some(Reason::ContainerCreated);
    status.message = notes(spec);
    status.next_attempt_at = None;
    Decision::act(
        status,
        Action::EnsureContainer {
            container,
            attempt: number,
            index: input.index,
        },
        spec.poll_interval,
    )
}

/// Creating or Running: the container should exist and is watched until it ends.
fn active(input: &Input<'_>, spec: &TaskSpec, mut status: TaskStatus) -> Decision {
    let now = input.now;
    let Some(current) = status.current().cloned() else {
        // A live phase without an attempt record cannot be trusted: start over.
        status.phase = Phase::Pending;
        return pending(input, spec, status);
    };
    let container = current.container.clone();
    heartbeat::record_progress(&mut status, input.heartbeat.as_ref());
    if spec.completion_mode == CompletionMode::Event
        && let Some(event) = &input.event
    {
        return finish_with_event(input, spec, status, event, container);
    }
    if let Some(placement) = out_of_reach(input, spec, &current) {
        let record = status.current_mut().expect("current attempt exists");
        give_up_out_of_reach(record, &placement, input.now);
        return after_attempt(input, spec, status);
    }
    let ensure = Action::EnsureContainer {
        container: container.clone(),
        attempt: current.number,
        index: current.index,
    };
    let may_ensure = match &input.observed {
        Observed::NotApplicable | Observed::Container(ContainerState::Created) | Observed::Starting(_) => true,
        Observed::Container(ContainerState::Absent) => status.phase == Phase::Creating,
        _ => false,
    };
    if may_ensure && current.placement.is_some() && input.placement.is_none() {
        // Whether the container is ours to make cannot be told yet: make nothing.
        status.reason = Some(Reason::InfrastructureError);
        status.message = Some(format!(
            "cannot reach the {} runtime to learn where it places containers; retrying (the controller's log says why)",
            spec.runtime
        ));
        return Decision::keep(status, Some(INFRA_RETRY));
    }
    match &input.observed {
        // Handled above, before anything could be made.
        Observed::PlacementUnreachable(_) => Decision::keep(status, Some(SOON)),
        Observed::NotApplicable | Observed::Container(ContainerState::Created) => Decision::act(status, ensure, SOON),
        Observed::Starting(progress) => {
            // A start that takes minutes (a large image's pull) says why, in the runtime's words.
            status.message = Some(progress.clone());
            Decision::act(status, ensure, SOON)
        }
        Observed::Container(ContainerState::Absent) if status.phase == Phase::Creating => {
            // The intent was persisted but the create never happened (or never finished):
            // creating now is the first and only container of this attempt.
            Decision::act(status, ensure, SOON)
        }
        Observed::Container(ContainerState::Absent) => {
            let record = status.current_mut().expect("current attempt exists");
            record.finished_at = Some(now);
            record.completed_by = Some(CompletedBy::Poll);
            record.reason = Some(Reason::ContainerLost);
            record.message = Some("the container disappeared from the runtime while it was running".into());
            after_attempt(input, spec, status)
        }
        Observed::Unreachable(message) => {
            status.reason = Some(Reason::InfrastructureError);
            status.message = Some(format!("cannot reach the runtime; retrying: {message}"));
            Decision::keep(status, Some(INFRA_RETRY))
        }
        Observed::CreateFailed { reason, message } => {
            let record = status.current_mut().expect("current attempt exists");
            record.finished_at = Some(now);
            record.reason = Some(*reason);
            record.message = Some(message.clone());
            status.phase = Phase::Deleting;
            status.reason = Some(*reason);
            status.message = Some(message.clone());
            // Whatever an earlier, half-done create made must go before the attempt ends.
            Decision::act(status, Action::DeleteContainer { container }, SOON)
        }
        Observed::Container(ContainerState::Running { started_at }) => {
            let started = started_at.or(current.started_at).or(current.created_at).unwrap_or(now);
            let record = status.current_mut().expect("current attempt exists");
            record.started_at = Some(started);
            status.phase = Phase::Running;
            status.reason = Some(Reason::ContainerStarted);
            status.message = notes(spec);
            status.observed_at = Some(now);
            // A silent attempt fails (`spec.heartbeatTimeout`); a live one is looked at
            // again by the time its silence would be too long.
            let poll = match heartbeat::judge(spec.heartbeat_timeout, started, input.heartbeat.as_ref(), now) {
                heartbeat::Verdict::Silent { message } => {
                    return heartbeat::fail_silent(status, container, message, now);
                }
                heartbeat::Verdict::Alive { check_in } => heartbeat::sooner(spec.poll_interval, check_in),
            };
            let Some(timeout) = spec.timeout else {
                return Decision::keep(status, Some(poll));
            };
            // A timeout so long that the deadline does not fit in a date is no deadline.
            let deadline = chrono::Duration::from_std(timeout)
                .ok()
                .and_then(|timeout| started.checked_add_signed(timeout));
            let Some(deadline) = deadline else {
                return Decision::keep(status, Some(poll));
            };
            if now < deadline {
                let left = (deadline - now).to_std().unwrap_or(SOON);
                return Decision::keep(status, Some(left.min(poll)));
            }
            let message = format!(
                "the attempt ran longer than its timeout of {}",
                humantime::format_duration(timeout)
            );
            let record = status.current_mut().expect("current attempt exists");
            record.finished_at = Some(now);
            record.completed_by = Some(CompletedBy::Deadline);
            record.reason = Some(Reason::DeadlineExceeded);
            record.message = Some(message.clone());
            status.phase = Phase::Deleting;
            status.reason = Some(Reason::DeadlineExceeded);
            status.message = Some(message);
            // A deadline always deletes, whatever `cleanup` says: the point is to stop it.
            Decision::act(status, Action::DeleteContainer { container }, SOON)
        }
        Observed::Container(ContainerState::Exited {
            exit_code,
            started_at,
            finished_at,
            message,
        }) => {
            let completed_by = if input.seen_by_engine {
                CompletedBy::Engine
            } else {
                CompletedBy::Poll
            };
            let record = status.current_mut().expect("current attempt exists");
            record.started_at = record.started_at.or(*started_at).or(record.created_at);
            record.finished_at = Some(finished_at.unwrap_or(now));
            record.exit_code = *exit_code;
            record.completed_by = Some(completed_by);
            let (reason, text) = match exit_code {
                // In event mode, only the callback says "done": an exit without it fails.
                Some(code) if spec.completion_mode == CompletionMode::Event => (
                    Reason::ExitedWithoutEvent,
                    Some(format!("exited with code {code} without calling back")),
                ),
                Some(0) => (Reason::Completed, None),
                Some(code) => (Reason::ExitCode, Some(format!("exited with code {code}"))),
                None => (
                    Reason::ContainerLost,
                    Some("the runtime lost track of the container's process".to_string()),
                ),
            };
            record.reason = Some(reason);
            record.message = match (text, message) {
                (Some(text), Some(extra)) => Some(format!("{text}: {extra}")),
                (text, extra) => text.or_else(|| extra.clone()),
            };
            let reason = exit_rules::judge(spec, &mut status).unwrap_or(reason);
            let succeeded = reason == Reason::Completed;
            status.observed_at = Some(now);
            if input.log_tail.is_some() {
                status.log_tail = input.log_tail.clone();
            }
            let keep_container = match spec.cleanup {
                Cleanup::Always => false,
                Cleanup::OnSuccess => !succeeded,
                Cleanup::Never => true,
            };
            if keep_container {
                return after_attempt(input, spec, status);
            }
            status.phase = Phase::Deleting;
            status.reason = Some(reason);
            status.message = status.current().and_then(|r| r.message.clone());
            Decision::act(status, Action::DeleteContainer { container }, SOON)
        }
    }
}

/// The container called back: the attempt is done, whatever the container does next.
fn finish_with_event(
    input: &Input<'_>,
    spec: &TaskSpec,
    mut status: TaskStatus,
    event: &CallbackEvent,
    container: String,
) -> Decision {
    let now = input.now;
    let code = event.exit_code.unwrap_or(0);
    let started = match &input.observed {
        Observed::Container(ContainerState::Running { started_at }) => *started_at,
        Observed::Container(ContainerState::Exited { started_at, .. }) => *started_at,
        _ => None,
    };
    let Some(record) = status.current_mut() else {
        return Decision::keep(status, Some(SOON));
    };
    record.started_at = record.started_at.or(started).or(record.created_at);
    record.finished_at = Some(event.received_at.unwrap_or(now));
    record.exit_code = Some(code);
    record.completed_by = Some(CompletedBy::Event);
    record.reason = Some(if code == 0 { Reason::Completed } else { Reason::ExitCode });
    record.message = event
        .message
        .clone()
        .or_else(|| (code != 0).then(|| format!("reported exit code {code}")));
    let reason = exit_rules::judge(spec, &mut status);
    let succeeded = reason == Some(Reason::Completed);
    status.result = event.result.clone();
    status.observed_at = Some(now);
    if input.log_tail.is_some() {
        status.log_tail = input.log_tail.clone();
    }
    let exited = matches!(input.observed, Observed::Container(ContainerState::Exited { .. }));
    let keep_container = exited
        && match spec.cleanup {
            Cleanup::Always => false,
            Cleanup::OnSuccess => !succeeded,
            Cleanup::Never => true,
        };
    if input.observed == Observed::Container(ContainerState::Absent) || keep_container {
        return after_attempt(input, spec, status);
    }
    status.phase = Phase::Deleting;
    status.reason = reason;
    status.message = status.current().and_then(|r| r.message.clone());
    Decision::act(status, Action::DeleteContainer { container }, SOON)
}

fn deleting(input: &Input<'_>, spec: &TaskSpec, mut status: TaskStatus) -> Decision {
    let Some(container) = status.current().map(|r| r.container.clone()) else {
        status.phase = Phase::Pending;
        return pending(input, spec, status);
    };
    let current = status.current().cloned().expect("current attempt exists");
    if let Some(placement) = out_of_reach(input, spec, &current) {
        // The outcome was recorded before the delete; only the delete cannot be done
        // from here, and the container may be left behind there.
        let record = status.current_mut().expect("current attempt exists");
        if stopped_from_outside(record) || record.reason.is_none() {
            // A stopped attempt is forgotten and its number used again: not this one,
            // which may still run there.
            give_up_out_of_reach(record, &placement, input.now);
        } else {
            let note = format!("its container, on {placement}, could not be deleted from this replica");
            record.message = Some(match record.message.take() {
                Some(message) => format!("{message}; {note}"),
                None => note,
            });
        }
        return after_attempt(input, spec, status);
    }
    match &input.observed {
        Observed::Container(ContainerState::Absent) => {
            if input.log_tail.is_some() {
                status.log_tail = input.log_tail.clone();
            }
            after_attempt(input, spec, status)
        }
        _ => Decision::act(status, Action::DeleteContainer { container }, SOON),
    }
}

/// Where the attempt's container lives when this replica cannot reach it: the
/// observation says so, or the attempt records a placement other than this replica's
/// for the same runtime. An attempt without a placement (written before placements
/// were recorded) is taken to be this replica's.
fn out_of_reach(input: &Input<'_>, spec: &TaskSpec, record: &AttemptRecord) -> Option<Placement> {
    if let Observed::PlacementUnreachable(placement) = &input.observed {
        return Some(placement.clone());
    }
    match (&record.placement, &input.placement) {
        (Some(theirs), Some(ours)) if record.runtime == spec.runtime && theirs != ours => Some(theirs.clone()),
        _ => None,
    }
}

/// Ends an attempt whose container is out of this replica's reach. Not the container's
/// failure: it is not charged to `retries` (invariant 4), and the next attempt, with a
/// number of its own, runs on this replica's placement.
fn give_up_out_of_reach(record: &mut AttemptRecord, placement: &Placement, now: Timestamp) {
    record.finished_at = Some(now);
    record.completed_by = None;
    record.reason = Some(Reason::PlacementUnreachable);
    record.message = Some(format!(
        "its container was placed on {placement}, which this replica cannot reach; it was not made again here, and it may still be running there"
    ));
}

/// Failed attempts that count against `retries`: every ended attempt but those given
/// up because their container was out of reach and those an exit-code rule retried
/// uncounted (attempts stopped from outside are forgotten, and a succeeded one ends the
/// run).
fn charged_failures(status: &TaskStatus) -> u32 {
    let charged = status
        .attempts
        .iter()
        .filter(|a| a.reason != Some(Reason::PlacementUnreachable) && !exit_rules::uncounted(a))
        .count();
    u32::try_from(charged).unwrap_or(u32::MAX)
}

/// The attempt is over and its container gone (or kept by `cleanup`): succeed, retry
/// after a backoff, or fail for good.
fn after_attempt(input: &Input<'_>, spec: &TaskSpec, mut status: TaskStatus) -> Decision {
    let now = input.now;
    let Some(current) = status.current().cloned() else {
        status.phase = Phase::Pending;
        return Decision::keep(status, Some(SOON));
    };
    if stopped_from_outside(&current) {
        return pending(input, spec, forget_stopped_attempt(status));
    }
    status.observed_at = Some(now);
    if current.reason == Some(Reason::PlacementUnreachable) {
        // The lost attempt is persisted first; the next one then takes a slot as any
        // new attempt does, at once: there is no failure to back off from.
        let number = current.number;
        status.phase = Phase::Pending;
        status.reason = Some(Reason::PlacementUnreachable);
        status.message = Some(format!(
            "attempt {number} was placed on {}, out of this replica's reach, and may still be running there; attempt {} starts here (not counted against retries)",
            current
                .placement
                .as_ref()
                .map_or_else(|| "another placement".to_string(), ToString::to_string),
            number + 1
        ));
        status.next_attempt_at = None;
        return Decision::keep(status, Some(Duration::ZERO));
    }
    if current.succeeded() {
        status.phase = Phase::Succeeded;
        status.reason = Some(Reason::Completed);
        let mut message = match current.number {
            1 => "succeeded".to_string(),
            n => format!("succeeded on attempt {n}"),
        };
        if let (Some(rule), Some(code)) = (current.exit_rule, current.exit_code) {
            message.push_str(&format!(" (exit code {code}, a success by spec.onExit[{}])", rule.rule));
        }
        status.message = Some(message);
        status.next_attempt_at = None;
        return Decision::keep(status, None);
    }
    let why = current
        .message
        .clone()
        .unwrap_or_else(|| format!("{:?}", current.reason.unwrap_or(Reason::ExitCode)));
    // Every recorded attempt was a container's own failure, but those given up out of
    // reach: infrastructure errors never create an attempt, and an attempt lost with its
    // placement is not charged, so neither uses up `retries` (invariant 4).
    let number = status.attempt;
    let failed = charged_failures(&status);
    let fails_the_task = exit_rules::fails_the_task(&current);
    if failed <= spec.retries && current.reason != Some(Reason::Terminated) && !fails_the_task {
        let delay = retry_delay(spec.backoff, failed, input.jitter);
        let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
        let wait = humantime::format_duration(Duration::from_millis(delay.as_millis() as u64));
        status.phase = Phase::Pending;
        status.reason = Some(Reason::BackoffAfterFailure);
        status.message = Some(if exit_rules::uncounted(&current) {
            format!("attempt {number} failed ({why}); retry in {wait}")
        } else {
            format!(
                "attempt {number} failed ({why}); retry {failed} of {} in {wait}",
                spec.retries
            )
        });
        status.next_attempt_at = Some(at);
        return Decision::keep(status, Some(delay));
    }
    status.phase = Phase::Failed;
    status.reason = current.reason;
    status.message = Some(if spec.retries == 0 || fails_the_task {
        format!("attempt {number} failed: {why}")
    } else {
        format!(
            "attempt {number} failed: {why}; no retries left (retries: {})",
            spec.retries
        )
    });
    status.next_attempt_at = None;
    Decision::keep(status, None)
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
