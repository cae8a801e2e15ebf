//! What `decide` is given (the desired spec, the recorded status, what was observed,
//! the slot's answer, the time) and what it returns (the new status and the actions):
//! plain data, so that table tests and the simulator can build them freely.

use crate::callback::CallbackEvent;
use crate::heartbeat::Heartbeat;
use crate::manifest::TaskSpec;
use crate::runtime::ContainerState;
use crate::status::{Placement, Reason, TaskStatus, Timestamp};
use crate::task::TaskKey;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the manifest asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Desired {
    /// The manifest was deleted: cancel and forget the task.
    Absent,
    /// The manifest cannot be run; `message` names the file, the place and the fix.
    Invalid {
        name: String,
        message: String,
    },
    Valid(Box<TaskSpec>),
}

/// What the controller saw of the current attempt's container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Observed {
    /// The status names no live container, so nothing was looked at.
    #[default]
    NotApplicable,
    Container(ContainerState),
    /// Made and not started yet, as [`ContainerState::Created`], with what the runtime
    /// says of its start (e.g. ACI's `Pulling: pulling image "..."`), for the status.
    Starting(String),
    /// The runtime could not be asked (invariant 4: this never uses up `retries`).
    Unreachable(String),
    /// The create call failed for a reason retrying cannot fix.
    CreateFailed {
        reason: Reason,
        message: String,
    },
    /// The attempt's container was placed where this replica cannot look (another state
    /// folder, engine or resource group; see [`Placement`]): it was not looked for, and
    /// it must never be created here, for it may be running there.
    PlacementUnreachable(Placement),
}

/// Whether a new container may start now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Slot {
    #[default]
    Granted,
    /// Held back by a limit, named with its use, e.g. `max-running 32/32`.
    Full { limit: String },
}

#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub key: &'a TaskKey,
    pub desired: &'a Desired,
    pub status: Option<&'a TaskStatus>,
    pub observed: Observed,
    /// The runtime reported the change itself (an engine event), rather than a poll.
    pub seen_by_engine: bool,
    /// The container's output tail, when it has finished.
    pub log_tail: Option<String>,
    pub slot: Slot,
    pub now: Timestamp,
    /// A number in [0, 1) that spreads retry delays.
    pub jitter: f64,
    /// The completion event recorded for the current attempt's container, if any.
    pub event: Option<CallbackEvent>,
    /// The current attempt's heartbeats, when its spec has `heartbeatTimeout`.
    pub heartbeat: Option<Heartbeat>,
    /// Someone asked, through the API, to stop the task and fail it.
    pub terminate: bool,
    /// Which index of a fan-out this decision is for; `None` for a task of one completion.
    pub index: Option<u32>,
    /// A fan-out's observation of each index (`observed`, `event`, ... above are then
    /// unused). An index missing here was not looked at.
    pub lanes: BTreeMap<u32, Lane>,
    /// Where the task's `dependsOn` stand.
    pub dependencies: Dependencies,
    /// Where a container started now would live: this replica's placement on the spec's
    /// runtime. `None` while the runtime cannot say (an engine not up yet): then no
    /// attempt is recorded, for it could not say where it lives.
    pub placement: Option<Placement>,
    /// What a scheduled task's decision needs beyond a run's.
    pub scheduling: Scheduling,
}

/// What a scheduled task's decision is given beyond a run's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scheduling {
    /// When this controller started: a scheduled time before it passed while no
    /// controller ran, so `missedRuns` applies to it. `None`: taken as `now`.
    pub since: Option<Timestamp>,
    /// `skiff trigger` asked for a run now.
    pub trigger: bool,
    /// The run whose containers a decision names (given by the schedule's decision to the
    /// run's): its number goes into container names, so two runs never share one.
    pub run: Option<u32>,
    /// What was seen of each run overlapping the top-level one (`concurrencyPolicy:
    /// Allow`), by run number. A run missing here was not looked at.
    pub overlapping: BTreeMap<u32, RunObservation>,
}

/// What the controller saw of one overlapping run's containers: as [`Input`] has it for
/// a task's own run (`single` for a run of one completion, `lanes` for a fan-out).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunObservation {
    pub single: Lane,
    pub lanes: BTreeMap<u32, Lane>,
}

/// Where the slot lanes of scheduled runs begin: above any fan-out index, so that a
/// run's containers never share a lane (and so a slot) with another run's.
const OVERLAPPING_LANES: u32 = 1 << 30;
/// Lanes per scheduled run: room for every index of a fan-out (at most 1000).
const LANES_PER_RUN: u32 = 1024;

/// The slot lane of a container of a scheduled task's run, by the run's number: the
/// same whether the run's record is the status's own (top-level) fields or one of
/// `schedule.overlapping`, so that a run moved beside a newer one (Allow) keeps the
/// slots its containers hold.
pub fn overlapping_lane(run: u32, index: Option<u32>) -> u32 {
    let runs = (u32::MAX - OVERLAPPING_LANES) / LANES_PER_RUN;
    OVERLAPPING_LANES + (run % runs) * LANES_PER_RUN + index.unwrap_or(0).min(LANES_PER_RUN - 1)
}

/// The run the status's own (top-level) fields are about, when the task is scheduled:
/// its containers' lanes are that run's ([`overlapping_lane`]). `None`: a task without
/// a schedule, whose lanes are 0 (one completion) or its indexes.
pub fn own_run(status: &TaskStatus) -> Option<u32> {
    status.schedule.as_ref().map(|s| s.current_run.unwrap_or(s.run_count))
}

/// The lane (as [`Decision::started_lanes`] names it) of a container of the status's own
/// run `run` ([`own_run`]), for `index` of a fan-out or `None`.
pub fn own_lane(run: Option<u32>, index: Option<u32>) -> Option<u32> {
    match run {
        Some(run) => Some(overlapping_lane(run, index)),
        None => index,
    }
}

/// A run's record in `status`, as a status of its own: the top-level fields when they
/// are about run `run`, else its entry in `schedule.overlapping`.
fn record_of_run(status: &TaskStatus, run: u32) -> Option<std::borrow::Cow<'_, TaskStatus>> {
    if own_run(status) == Some(run) {
        return Some(std::borrow::Cow::Borrowed(status));
    }
    let sched = status.schedule.as_ref()?;
    let found = sched.overlapping.iter().find(|r| r.run == run)?;
    Some(std::borrow::Cow::Owned(found.view(status)))
}

/// The lanes of each overlapping run's containers, with the index each is for.
pub fn overlapping_lanes(run: &crate::status::OverlappingRun) -> Vec<(u32, Option<u32>)> {
    if run.indexes.is_empty() {
        vec![(overlapping_lane(run.run, None), None)]
    } else {
        run.indexes
            .iter()
            .map(|l| (overlapping_lane(run.run, Some(l.index)), Some(l.index)))
            .collect()
    }
}

/// What the controller saw of one index of a fan-out: the fields of [`Input`] that a
/// task of one completion has once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Lane {
    pub observed: Observed,
    pub seen_by_engine: bool,
    pub log_tail: Option<String>,
    pub event: Option<CallbackEvent>,
    pub heartbeat: Option<Heartbeat>,
    pub slot: Slot,
}

/// Where a task's dependencies stand. Each variant carries the spec hash of every
/// dependency that has one, keyed by task: a change there re-runs this task.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Dependencies {
    /// The task depends on nothing.
    #[default]
    None,
    /// Every dependency has Succeeded; `results` is `SKIFF_DEPENDENCY_RESULTS`.
    Met {
        hashes: BTreeMap<String, String>,
        results: String,
    },
    /// Some dependency has not Succeeded yet; each is named with what it is doing.
    Waiting {
        hashes: BTreeMap<String, String>,
        waiting: Vec<String>,
    },
    /// A dependency Failed (or cannot run): this task cannot run either.
    Failed {
        hashes: BTreeMap<String, String>,
        message: String,
    },
}

impl Dependencies {
    pub(super) fn hashes(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Dependencies::None => None,
            Dependencies::Met { hashes, .. }
            | Dependencies::Waiting { hashes, .. }
            | Dependencies::Failed { hashes, .. } => Some(hashes),
        }
    }

    /// The first dependency whose spec changed since this run began, if any.
    pub(super) fn changed_since(&self, status: &TaskStatus) -> Option<String> {
        let now = self.hashes()?;
        status
            .dependencies
            .iter()
            .find(|(task, then)| now.get(*task).is_some_and(|hash| hash != *then))
            .map(|(task, _)| task.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create (or adopt, or start) the named container for this attempt.
    EnsureContainer {
        container: String,
        attempt: u32,
        /// The index of a fan-out's container (`SKIFF_INDEX`).
        index: Option<u32>,
    },
    DeleteContainer {
        container: String,
    },
    /// Remove the status document: the manifest is gone and so is its container.
    RemoveStatus,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The status to persist; `None` when it is to be removed.
    pub status: Option<TaskStatus>,
    pub actions: Vec<Action>,
    /// When to reconcile again if nothing else wakes the task.
    pub requeue_after: Option<Duration>,
}

impl Decision {
    pub(super) fn keep(status: TaskStatus, requeue_after: Option<Duration>) -> Self {
        Decision {
            status: Some(status),
            actions: Vec::new(),
            requeue_after,
        }
    }

    pub(super) fn act(status: TaskStatus, action: Action, requeue_after: Duration) -> Self {
        Decision {
            status: Some(status),
            actions: vec![action],
            requeue_after: Some(requeue_after),
        }
    }

    /// The decision starts a new attempt, and so needs a concurrency slot.
    pub fn starts_attempt(&self, before: Option<&TaskStatus>) -> bool {
        !self.started_lanes(before).is_empty()
    }

    /// Which containers this decision starts, each needing a concurrency slot: `None`
    /// for a task of one completion, `Some(index)` for each index of a fan-out, and
    /// `Some(`[`overlapping_lane`]`)` for each container of a scheduled task's run.
    ///
    /// A scheduled run is compared with its own record before the decision, wherever
    /// that was: a run that moved from the top-level fields beside a newer one (Allow)
    /// starts nothing by moving.
    pub fn started_lanes(&self, before: Option<&TaskStatus>) -> Vec<Option<u32>> {
        let Some(after) = &self.status else {
            return Vec::new();
        };
        let own = own_run(after);
        let earlier = match (own, before) {
            // A new run took the top-level fields: compared with its own record (none,
            // when it starts in this decision), never with the run it took them from.
            (Some(run), Some(b)) if own_run(b).is_some_and(|r| r != run) => record_of_run(b, run),
            // The same run, or a task whose schedule was just added or removed (its run
            // carries on).
            (_, b) => b.map(std::borrow::Cow::Borrowed),
        };
        let mut started: Vec<Option<u32>> = started_in_run(after, earlier.as_deref())
            .into_iter()
            .map(|index| own_lane(own, index))
            .collect();
        // Each overlapping run starts containers as a task of its own does, on lanes
        // of its own.
        for run in after.schedule.iter().flat_map(|s| s.overlapping.iter()) {
            let earlier = before.and_then(|b| record_of_run(b, run.run));
            for index in started_in_run(&run.view(after), earlier.as_deref()) {
                started.push(Some(overlapping_lane(run.run, index)));
            }
        }
        started
    }

    /// Adds deletes of containers left by an earlier spec, before anything else.
    pub(super) fn deleting_first(mut self, containers: Vec<String>) -> Self {
        let deletes = containers
            .into_iter()
            .map(|container| Action::DeleteContainer { container });
        self.actions.splice(0..0, deletes);
        self
    }
}

/// The containers one run starts, comparing its record after a decision with the one
/// before (`None`: the run begins now): `None` for its single container, `Some(index)`
/// for each index of a fan-out.
fn started_in_run(after: &TaskStatus, before: Option<&TaskStatus>) -> Vec<Option<u32>> {
    if after.indexes.is_empty() {
        // The same attempt's container, not merely a live one: a new attempt that
        // follows a live one at once (a spec change's restart) starts a container
        // too. Its lane usually still holds its slot and gets it back at once, but
        // one whose slot went back (the status write that ended the earlier attempt
        // was lost) must ask again, or it would run past the limit.
        let attempt = |s: &TaskStatus| s.current().map(|a| (a.container.clone(), a.created_at));
        let was_live =
            before.is_some_and(|s| s.indexes.is_empty() && s.phase.has_container() && attempt(s) == attempt(after));
        return if after.phase.has_container() && !was_live {
            vec![None]
        } else {
            Vec::new()
        };
    }
    let was_live = |index: u32| {
        before.is_some_and(|s| {
            s.spec_hash == after.spec_hash && s.indexes.iter().any(|l| l.index == index && l.phase.has_container())
        })
    };
    after
        .indexes
        .iter()
        .filter(|l| l.phase.has_container() && !was_live(l.index))
        .map(|l| Some(l.index))
        .collect()
}
