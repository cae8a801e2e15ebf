//! The status document written beside each manifest (DESIGN.md §3).
//!
//! It is the controller's durable memory: every decision is persisted here before it
//! is acted on, which is what makes a crash at any instant recoverable.

use crate::manifest::{ExitAction, RuntimeKind};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const STATUS_KIND: &str = "ContainerTaskStatus";
/// The status file's suffix, replacing the manifest's extension.
pub const STATUS_SUFFIX: &str = ".status.json";
/// Largest log tail kept in a status document.
pub const LOG_TAIL_BYTES: usize = 4096;

pub type Timestamp = DateTime<Utc>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Creating,
    Running,
    Deleting,
    Succeeded,
    Failed,
    Invalid,
    /// A scheduled task before its first run.
    Scheduled,
}

impl Phase {
    /// Every phase, in the order of the lifecycle.
    pub const ALL: [Phase; 8] = [
        Phase::Scheduled,
        Phase::Pending,
        Phase::Creating,
        Phase::Running,
        Phase::Deleting,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Invalid,
    ];

    /// Succeeded or Failed: the task is done for its spec hash (invariant 3).
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    /// Terminal or Invalid: nothing more will happen until a person changes something.
    pub fn is_final(self) -> bool {
        self.is_terminal() || self == Phase::Invalid
    }

    /// A container may exist for the current attempt.
    pub fn has_container(self) -> bool {
        matches!(self, Phase::Creating | Phase::Running | Phase::Deleting)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Creating => "Creating",
            Phase::Running => "Running",
            Phase::Deleting => "Deleting",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Invalid => "Invalid",
            Phase::Scheduled => "Scheduled",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the controller learned that an attempt finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompletedBy {
    Event,
    Poll,
    Engine,
    Deadline,
    Terminate,
    Cancel,
}

/// Why a task is in its phase, or why an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Pending: waiting for a concurrency slot.
    WaitingForSlot,
    WaitingForDependencies,
    /// Pending: a failed attempt will be retried at `nextAttemptAt`.
    BackoffAfterFailure,
    /// The runtime or store failed; retried without using up `retries` (invariant 4).
    InfrastructureError,
    ContainerCreated,
    ContainerStarted,
    /// Attempt ended with exit code 0.
    Completed,
    /// A fan-out ended with some indexes failed, no more than `spec.maxFailedIndexes`.
    SucceededWithFailedIndexes,
    /// Attempt ended with a non-zero exit code.
    ExitCode,
    DeadlineExceeded,
    ExitedWithoutEvent,
    /// The container vanished from the runtime while it was running.
    ContainerLost,
    Terminated,
    /// The spec changed; the attempt was stopped to start again.
    SpecChanged,
    /// The manifest was deleted.
    Cancelled,
    /// The manifest became invalid; the attempt was stopped.
    ManifestInvalid,
    /// The container could not be created for a reason retrying cannot fix.
    CreateFailed,
    ImagePullFailed,
    /// A secret the task names (a Key Vault reference) could not be read: refused or absent.
    SecretUnavailable,
    /// The container did not start within its start timeout (ACI: `spec.aci.startTimeout`).
    StartTimeout,
    DependencyFailed,
    /// The dependencies' results do not fit in `SKIFF_DEPENDENCY_RESULTS`.
    DependencyResultsTooLarge,
    /// A dependency runs again (its spec changed), so this task will run again after it.
    DependencyChanged,
    /// The attempt's container was placed where this replica cannot see it (another
    /// state folder, engine or resource group): it is given up, not charged to
    /// `retries`, and the next attempt runs here. The old one may still be running there.
    PlacementUnreachable,
    /// A run started by `skiff trigger`, not by the schedule.
    ManualTrigger,
    /// A scheduled time that was not run (the controller was down, the run would have
    /// started past `startingDeadline`, or a run was active under `Forbid`).
    MissedSchedule,
    /// The attempt sent no heartbeat for longer than `spec.heartbeatTimeout`.
    HeartbeatTimeout,
}

/// Where a scheduled task's schedule stands (`status.schedule`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// The schedule as written, with its time zone when not UTC (for listings).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cron: String,
    /// The newest scheduled time handled (run, or missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_at: Option<Timestamp>,
    /// The next scheduled time to come (absent while suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scheduled_at: Option<Timestamp>,
    /// The scheduled times of the active runs.
    #[serde(default)]
    pub active: Vec<Timestamp>,
    /// Every scheduled time up to this one has been handled: durable, written before a run
    /// starts, so a scheduled time is never run twice nor lost.
    pub handled_through: Timestamp,
    /// Runs started so far; the active run's number (in its container names).
    #[serde(default)]
    pub run_count: u32,
    /// A `skiff trigger` waiting to be handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_at: Option<Timestamp>,
    /// The number of the run the status's top-level fields (phase, attempts, ...) are
    /// about; absent in statuses written before runs overlapped, where it is `runCount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_run: Option<u32>,
    /// Under `concurrencyPolicy: Allow`, the older runs still active beside the top-level
    /// one (the newest: a run moves here whole when a newer one starts), each a whole run
    /// of its own (attempts, retries, fan-out), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlapping: Vec<OverlappingRun>,
}

/// A run of a scheduled task that overlaps the top-level one (`concurrencyPolicy:
/// Allow`): the fields a task's status has for one run, kept apart so that each run is
/// decided, observed and limited on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlappingRun {
    pub run: u32,
    pub scheduled_at: Timestamp,
    /// The spec the run runs (an edit applies from the next run).
    pub spec_hash: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexStatus>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dependencies: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Timestamp>,
    /// The run's own heartbeat progress (the top-level `progress` is the newest run's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_message: Option<String>,
}

impl OverlappingRun {
    /// The run as a task's status of its own (no schedule), for the run's decision and
    /// for everything that reads one run's attempts (callbacks, limits).
    pub fn view(&self, outer: &TaskStatus) -> TaskStatus {
        TaskStatus {
            spec_hash: self.spec_hash.clone(),
            phase: self.phase,
            reason: self.reason,
            message: self.message.clone(),
            attempt: self.attempt,
            attempts: self.attempts.clone(),
            result: self.result.clone(),
            log_tail: self.log_tail.clone(),
            indexes: self.indexes.clone(),
            dependencies: self.dependencies.clone(),
            next_attempt_at: self.next_attempt_at,
            schedule: None,
            runs: Vec::new(),
            observed_at: self.observed_at,
            progress: self.progress,
            progress_message: self.progress_message.clone(),
            ..TaskStatus::new(&outer.task, &outer.name, &self.spec_hash, outer.updated_at)
        }
    }

    /// The run's state from its decided view.
    pub fn from_view(run: u32, scheduled_at: Timestamp, view: TaskStatus) -> Self {
        OverlappingRun {
            run,
            scheduled_at,
            spec_hash: view.spec_hash,
            phase: view.phase,
            reason: view.reason,
            message: view.message,
            attempt: view.attempt,
            attempts: view.attempts,
            result: view.result,
            log_tail: view.log_tail,
            indexes: view.indexes,
            dependencies: view.dependencies,
            next_attempt_at: view.next_attempt_at,
            observed_at: view.observed_at,
            progress: view.progress,
            progress_message: view.progress_message,
        }
    }
}

/// One run of a scheduled task (`status.runs`, newest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub scheduled_at: Timestamp,
    /// The run's number; absent for a missed time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u32>,
    /// The run's phase; absent for a missed time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// A missed range: every scheduled time from this one to `scheduledAt` was missed
    /// (`missedCount` of them), recorded as one so that the history keeps them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_from: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_count: Option<u64>,
}

/// Where a runtime's containers live, as far as seeing them goes: two replicas whose
/// placements for a runtime are equal see the same containers, and may adopt each
/// other's; otherwise neither can inspect, adopt or delete the other's. Only the fields
/// of the runtime that made it are set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// process: the state folder's random id (`<state>/placement-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_id: Option<String>,
    /// process: the machine's host name (a state folder shared over a network
    /// file system still cannot signal processes on another machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// docker: the engine's ID (`GET /info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_id: Option<String>,
    /// aci: the subscription, lower-cased (Azure compares it without case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// aci: the resource group, lower-cased (Azure compares it without case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// docker and aci: whose containers these are (docker: the state folder they are
    /// labelled with; aci: the `skiff.owner` tag from `<state>/aci-owner`). Those
    /// runtimes neither adopt nor delete another owner's containers, so a different
    /// owner on the same engine or resource group is out of reach all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Placement {
    pub fn process(state_id: impl Into<String>, host: impl Into<String>) -> Self {
        Placement {
            state_id: Some(state_id.into()),
            host: Some(host.into()),
            engine_id: None,
            subscription_id: None,
            resource_group: None,
            owner: None,
        }
    }

    pub fn docker(engine_id: impl Into<String>, owner: impl Into<String>) -> Self {
        Placement {
            state_id: None,
            host: None,
            engine_id: Some(engine_id.into()),
            subscription_id: None,
            resource_group: None,
            owner: Some(owner.into()),
        }
    }

    pub fn aci(subscription_id: &str, resource_group: &str, owner: impl Into<String>) -> Self {
        Placement {
            state_id: None,
            host: None,
            engine_id: None,
            subscription_id: Some(subscription_id.trim().to_ascii_lowercase()),
            resource_group: Some(resource_group.trim().to_ascii_lowercase()),
            owner: Some(owner.into()),
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(id) = &self.state_id {
            parts.push(format!("state folder {id}"));
        }
        if let Some(host) = &self.host {
            parts.push(format!("host {host}"));
        }
        if let Some(id) = &self.engine_id {
            parts.push(format!("Docker engine {id}"));
        }
        if let Some(sub) = &self.subscription_id {
            parts.push(format!("subscription {sub}"));
        }
        if let Some(group) = &self.resource_group {
            parts.push(format!("resource group {group}"));
        }
        if let Some(owner) = &self.owner {
            parts.push(format!("owner {owner}"));
        }
        if parts.is_empty() {
            return f.write_str("an unnamed placement");
        }
        f.write_str(&parts.join(", "))
    }
}

/// Whether `text` can name a file inside skiff's own folders (logs, state files, the
/// event inbox): the container names and attempt ids skiff makes always can. A status
/// file is user-writable, so what it says is checked as it is read: an edited status
/// naming `../../x` must not lead `skiff logs` or a runtime out of the state folder.
fn is_file_safe(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 200
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+'))
}

fn file_safe_name<'de, D: serde::Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    let name = String::deserialize(de)?;
    if is_file_safe(&name) {
        Ok(name)
    } else {
        Err(serde::de::Error::custom(format!(
            "container {name:?} is not a name skiff makes (letters, digits, '-', '_', '.')"
        )))
    }
}

fn file_safe_id<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(de)? {
        Some(id) if !is_file_safe(&id) => Err(serde::de::Error::custom(format!(
            "attempt id {id:?} is not one skiff makes"
        ))),
        id => Ok(id),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub number: u32,
    /// The attempt's unique id: random, given when the attempt is first written
    /// (`Creating`, before the create), and never reused, not even by a re-run's attempt
    /// of the same number and container name. Callback tokens and the container's
    /// `skiff.attempt-id` label carry it. Absent in statuses written before it existed,
    /// whose attempts are known by `createdAt` ([`AttemptRecord::attempt_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "file_safe_id")]
    pub id: Option<String>,
    pub runtime: RuntimeKind,
    /// Recorded before the create call (invariant 2).
    #[serde(deserialize_with = "file_safe_name")]
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_by: Option<CompletedBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Where the container lives, recorded with the name before the create call. A
    /// replica that cannot reach it never creates it (it would run the attempt twice).
    /// Absent in statuses written before placements were recorded: such an attempt is
    /// taken to live where the reading replica's containers do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// The named semaphores (`spec.semaphores`) the attempt's container holds a slot of
    /// while it exists, recorded with its name: a controller that restarts, or meets the
    /// task with its manifest deleted or edited, still counts the container as a holder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub semaphores: Vec<String>,
    /// The rule of `spec.onExit` the attempt's exit code matched, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_rule: Option<ExitRuleApplied>,
}

/// Which rule of `spec.onExit` an attempt's exit code matched, and what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRuleApplied {
    /// The rule's place in `spec.onExit`, from 0.
    pub rule: u32,
    pub action: ExitAction,
    /// A `RetryUncounted` past the cap of uncounted retries in one run: this failure
    /// counted against `retries` all the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cap_reached: bool,
}

impl AttemptRecord {
    /// The id that names this attempt everywhere: [`AttemptRecord::id`], or, for an attempt
    /// recorded before ids existed, its `createdAt`.
    pub fn attempt_id(&self) -> Option<String> {
        self.id.clone().or_else(|| self.created_at.map(|t| format_time(&t)))
    }

    /// A fresh random attempt id.
    pub fn new_id() -> String {
        format!("{:016x}", rand::random::<u64>())
    }

    /// The attempt ended, and it ended well.
    pub fn succeeded(&self) -> bool {
        self.reason == Some(Reason::Completed)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexStatus {
    pub index: u32,
    pub phase: Phase,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
}

impl IndexStatus {
    /// An index that has not started: how every index of a new run begins.
    pub fn pending(index: u32) -> Self {
        IndexStatus {
            index,
            phase: Phase::Pending,
            attempt: 0,
            exit_code: None,
            result: None,
            reason: None,
            message: None,
            next_attempt_at: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    pub api_version: String,
    pub kind: String,
    pub task: String,
    pub name: String,
    /// Empty when the manifest never validated.
    #[serde(default)]
    pub spec_hash: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The current (or last) attempt's number; 0 before the first.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexStatus>,
    /// The spec hash of each dependency (`dependsOn`) when this run began: a dependency
    /// whose spec changes since runs again, and this task after it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dependencies: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    /// A scheduled task's schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleStatus>,
    /// A scheduled task's runs, newest first (active ones included), bounded by
    /// `historyLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunRecord>,
    /// The latest progress (0..1) a heartbeat of the current attempt reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// The latest message a heartbeat of the current attempt reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_message: Option<String>,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Timestamp>,
}

impl TaskStatus {
    pub fn new(task: &str, name: &str, spec_hash: &str, now: Timestamp) -> Self {
        TaskStatus {
            api_version: crate::manifest::API_VERSION.to_string(),
            kind: STATUS_KIND.to_string(),
            task: task.to_string(),
            name: name.to_string(),
            spec_hash: spec_hash.to_string(),
            phase: Phase::Pending,
            reason: None,
            message: None,
            attempt: 0,
            attempts: Vec::new(),
            result: None,
            log_tail: None,
            indexes: Vec::new(),
            dependencies: BTreeMap::new(),
            next_attempt_at: None,
            schedule: None,
            runs: Vec::new(),
            progress: None,
            progress_message: None,
            updated_at: now,
            observed_at: None,
        }
    }

    /// The record of the current attempt, if one has begun.
    pub fn current(&self) -> Option<&AttemptRecord> {
        self.attempts.iter().rev().find(|a| a.number == self.attempt)
    }

    pub fn current_mut(&mut self) -> Option<&mut AttemptRecord> {
        let number = self.attempt;
        self.attempts.iter_mut().rev().find(|a| a.number == number)
    }

    /// Every attempt the status records: the top-level run's, then those of each run
    /// overlapping it (`schedule.overlapping`). Container names, attempt ids and
    /// callbacks are looked up here.
    pub fn all_attempts(&self) -> impl Iterator<Item = &AttemptRecord> {
        let overlapping = self.schedule.iter().flat_map(|s| s.overlapping.iter());
        self.attempts.iter().chain(overlapping.flat_map(|r| r.attempts.iter()))
    }

    /// Every attempt, mutably (see [`TaskStatus::all_attempts`]).
    pub fn all_attempts_mut(&mut self) -> impl Iterator<Item = &mut AttemptRecord> {
        let overlapping = self.schedule.iter_mut().flat_map(|s| s.overlapping.iter_mut());
        self.attempts
            .iter_mut()
            .chain(overlapping.flat_map(|r| r.attempts.iter_mut()))
    }

    /// The scheduled time of the run a container belongs to (`SKIFF_SCHEDULED_AT`).
    pub fn scheduled_at_of(&self, container: &str) -> Option<Timestamp> {
        let schedule = self.schedule.as_ref()?;
        if let Some(run) = schedule
            .overlapping
            .iter()
            .find(|r| r.attempts.iter().any(|a| a.container == container))
        {
            return Some(run.scheduled_at);
        }
        let current = schedule.current_run.unwrap_or(schedule.run_count);
        self.runs
            .iter()
            .find(|r| r.run == Some(current))
            .map(|r| r.scheduled_at)
            .or_else(|| schedule.active.first().copied())
    }

    /// The container that may exist for the current attempt.
    pub fn live_container(&self) -> Option<&str> {
        if self.phase.has_container() {
            self.current().map(|a| a.container.as_str())
        } else {
            None
        }
    }

    /// Equal apart from the bookkeeping timestamps: used to skip needless writes.
    pub fn same_state(&self, other: &TaskStatus) -> bool {
        let mut a = self.clone();
        a.updated_at = other.updated_at;
        a.observed_at = other.observed_at;
        a == *other
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// RFC 3339 UTC with millisecond precision, as in every status field.
pub fn format_time(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The last `LOG_TAIL_BYTES` of `log`, starting at a line boundary when one is near,
/// decoded lossily (a container may print anything).
pub fn log_tail(log: &[u8]) -> String {
    let start = log.len().saturating_sub(LOG_TAIL_BYTES);
    let mut tail = &log[start..];
    if start > 0
        && let Some(newline) = tail.iter().position(|&b| b == b'\n')
        && newline < tail.len() - 1
    {
        tail = &tail[newline + 1..];
    }
    String::from_utf8_lossy(tail).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_uses_contract_names() {
        let now = Utc::now();
        let mut status = TaskStatus::new("jobs/thumb", "thumb", "sha256:x", now);
        status.attempt = 1;
        status.attempts.push(AttemptRecord {
            number: 1,
            id: None,
            runtime: RuntimeKind::Process,
            container: "c".into(),
            index: None,
            created_at: Some(now),
            started_at: None,
            finished_at: None,
            exit_code: Some(1),
            completed_by: Some(CompletedBy::Poll),
            reason: Some(Reason::ExitCode),
            message: None,
            placement: Some(Placement::process("0123abcd", "alpha")),
            semaphores: Vec::new(),
            exit_rule: None,
        });
        let json: serde_json::Value = serde_json::from_slice(&status.to_json()).unwrap();
        assert_eq!(json["kind"], "ContainerTaskStatus");
        assert_eq!(json["specHash"], "sha256:x");
        assert_eq!(json["attempts"][0]["completedBy"], "poll");
        assert_eq!(json["attempts"][0]["exitCode"], 1);
        assert_eq!(json["attempts"][0]["placement"]["stateId"], "0123abcd");
        assert_eq!(json["attempts"][0]["placement"]["host"], "alpha");
        let back: TaskStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn a_status_naming_a_container_or_id_outside_the_state_folder_does_not_read() {
        let json = r#"{"number": 1, "runtime": "process", "container": "c", "reason": "PlacementUnreachable"}"#;
        for bad in ["../../outside/x", "/etc/passwd", ".hidden", "a/b", "a\\b", ""] {
            let text = json.replace(
                r#""container": "c""#,
                &format!("\"container\": {}", serde_json::json!(bad)),
            );
            assert!(
                serde_json::from_str::<AttemptRecord>(&text).is_err(),
                "{bad:?} was taken"
            );
        }
        let text = json.replace(r#""number": 1"#, r#""number": 1, "id": "../x""#);
        assert!(
            serde_json::from_str::<AttemptRecord>(&text).is_err(),
            "an id with a path"
        );
        let text = json.replace(r#""number": 1"#, r#""number": 1, "id": "2026-11-30T05:00:00.123Z""#);
        assert!(serde_json::from_str::<AttemptRecord>(&text).is_ok(), "a createdAt id");
    }

    #[test]
    fn an_attempt_written_before_placements_reads_without_one() {
        let json = r#"{"number": 1, "runtime": "process", "container": "c", "reason": "PlacementUnreachable"}"#;
        let record: AttemptRecord = serde_json::from_str(json).unwrap();
        assert_eq!(record.placement, None);
        assert_eq!(record.reason, Some(Reason::PlacementUnreachable));
        let back = serde_json::to_value(&record).unwrap();
        assert!(
            back.get("placement").is_none(),
            "no placement is written as none: {back}"
        );
    }

    #[test]
    fn placements_compare_as_their_runtime_sees_and_name_what_they_hold() {
        // Azure names subscriptions and resource groups without regard to case.
        assert_eq!(
            Placement::aci("ABC-1", " My-RG ", "o1"),
            Placement::aci("abc-1", "my-rg", "o1")
        );
        assert_ne!(
            Placement::aci("abc-1", "my-rg", "o1"),
            Placement::aci("abc-1", "my-rg", "o2")
        );
        assert_ne!(Placement::docker("E1", "/s"), Placement::docker("E2", "/s"));
        assert_ne!(Placement::docker("E1", "/s"), Placement::docker("E1", "/t"));
        assert_eq!(
            Placement::process("id", "alpha").to_string(),
            "state folder id, host alpha"
        );
        assert_eq!(Placement::docker("E1", "/s").to_string(), "Docker engine E1, owner /s");
    }

    #[test]
    fn log_tail_is_bounded_and_starts_on_a_line() {
        let log: Vec<u8> = (0..2000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let tail = log_tail(&log);
        assert!(tail.len() <= LOG_TAIL_BYTES);
        assert!(tail.starts_with("line "));
        assert!(tail.ends_with("line 1999\n"));
        assert_eq!(log_tail(b"short"), "short");
    }
}
