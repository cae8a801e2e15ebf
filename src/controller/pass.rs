//! One reconcile pass of one task, top to bottom: read the manifest and the status, own
//! the task (when replicas share the store), observe its containers, decide (the pure
//! [`reconcile::decide`]), admit the containers it starts ([`admit`]), persist and act
//! ([`act`]), then settle its slots and report to the loop ([`run`](super::run)).
//!
//! Slots are settled only after the status is durable: a lane keeps its slot until a
//! written status says its container is gone, or this pass's delete of it returned, or
//! this pass saw it exited (it runs nothing; its slot goes before the write). When a
//! write fails, it may have landed or not, so a lane keeps its slot if either status
//! lets its container exist.

use super::admit::{self, Admitted};
use super::heartbeats;
use super::shared_slots;
use super::*;
use crate::status::{Placement, TaskStatus};

/// How long a task that has no status yet may wait for a slot before its status says
/// `WaitingForSlot`. In a burst, most such waits end within a second, and each of those
/// statuses would be overwritten by `Creating` at once: 468 of the 2,088 writes of 500
/// tasks under `--max-running 32`, all due while the first 32 ran. No action follows a
/// `Pending` status, so it need not be written for the task to be safe; the task keeps
/// its place in line all the same.
pub(super) const QUIET_WAIT: Duration = Duration::from_secs(1);

/// One pass, with its errors turned into what the loop does next.
pub(super) async fn reconcile_task(shared: &Arc<Shared>, key: &TaskKey) -> Reconciled {
    match try_reconcile(shared, key).await {
        Ok(done) => {
            shared.memory(key, |m| m.infra_failures = 0);
            done
        }
        Err(StoreError::Conflict { path }) => {
            // Someone changed the status since it was read: read it again now.
            tracing::info!(task = %key, "{path} changed under this reconcile; re-reading");
            Reconciled::retry(key, Duration::ZERO)
        }
        Err(err) if err.needs_person() => {
            // A status file skiff cannot use (garbage, a FIFO, a folder, too large, a name
            // too long) is never overwritten: it may be a person's, or the only record of
            // what ran. The task is Invalid until someone fixes or deletes the file, which
            // the relist notices (its fingerprint changes); retrying would never succeed,
            // and `--once` must end. `get` and the API show the same problem.
            tracing::warn!(task = %key, "{err}");
            Reconciled::new(key, TaskState::Final(Phase::Invalid), None)
        }
        Err(err) => {
            if matches!(err, StoreError::Unavailable { .. }) {
                shared.health.store_result::<(), _>(&Err(&err));
            }
            tracing::warn!(task = %key, "{err}");
            Reconciled::retry(key, shared.infra_backoff(key))
        }
    }
}

/// What was read of a task: its manifest, judged, and its status.
struct Read {
    desired: Desired,
    /// The manifest's file, for messages.
    file: String,
    /// The manifest's folder on this machine, when it has one.
    local_dir: Option<PathBuf>,
    status: Option<TaskStatus>,
    /// A task whose name this one took over: it is reconciled again.
    wake: Vec<TaskKey>,
    /// The task's files as they were just before they were read.
    fingerprint: Option<Fingerprint>,
}

/// Requests that arrived between passes (an engine event, a terminate from the API),
/// taken for this pass and given back if its decision is never persisted: a terminate
/// must not be lost to a failed status write.
#[derive(Clone, Copy, Default)]
struct Requests {
    seen_by_engine: bool,
    terminate: bool,
    trigger: bool,
}

impl Requests {
    fn take(memory: &mut Memory) -> Self {
        Requests {
            seen_by_engine: std::mem::take(&mut memory.engine_seen),
            terminate: std::mem::take(&mut memory.terminate),
            trigger: std::mem::take(&mut memory.trigger),
        }
    }

    fn put_back(self, memory: &mut Memory) {
        memory.engine_seen |= self.seen_by_engine;
        memory.terminate |= self.terminate;
        memory.trigger |= self.trigger;
    }
}

async fn try_reconcile(shared: &Arc<Shared>, key: &TaskKey) -> Result<Reconciled, StoreError> {
    let order = shared.first_seen(key);

    // Own, before reading: a replica at capacity claims nothing more.
    if let gate @ (ownership::Gate::Later(_) | ownership::Gate::Deferred) = ownership::before_read(shared, key) {
        return Ok(ownership::not_acting(shared, key, order, gate));
    }

    // Read.
    let Some(Read {
        mut desired,
        file,
        local_dir,
        status,
        wake,
        fingerprint,
    }) = read(shared, key, order).await?
    else {
        return Ok(Reconciled::retry(key, SETTLE_TIME));
    };

    // Own, once read: take the task if it needs an owner.
    match ownership::claim(shared, key, &desired, status.as_ref()).await? {
        ownership::Gate::Proceed => {}
        // What was read before the task was ours may be stale (its last owner may have
        // moved it on since): start over, reading afresh as its owner.
        ownership::Gate::Acquired => {
            shared.store.refresh(key).await?;
            return Box::pin(try_reconcile(shared, key)).await;
        }
        gate => return Ok(ownership::not_acting(shared, key, order, gate)),
    }
    let dependencies = dependencies_of(shared, key, &mut desired, &file, status.as_ref()).await?;

    // Observe: first remove what the status no longer records, then look at what it does.
    remove_strays(shared, key, status.as_ref()).await;
    let mut finished = Vec::new();
    let (mut single, mut lanes) = observe_containers(shared, key, status.as_ref(), &mut finished).await;
    let mut overlapping = observe_overlapping(shared, key, status.as_ref(), &mut finished).await;
    let watched = (&mut single, &mut lanes);
    heartbeats::observe(shared, key, &desired, status.as_ref(), watched, &mut overlapping);
    let placement = placement_for(shared, key, &desired).await;
    let requests = shared.memory(key, Requests::take);
    let result = decide_and_act(
        shared,
        key,
        order,
        Pass {
            desired: &desired,
            status: status.as_ref(),
            local_dir,
            single,
            lanes,
            overlapping,
            dependencies,
            placement,
            requests,
            finished,
        },
    )
    .await;
    let done = match result {
        Ok(done) => done,
        Err(err) => {
            shared.memory(key, |m| requests.put_back(m));
            return Err(err);
        }
    };

    // Report.
    let mut wake = wake;
    if done.state == TaskState::Removed {
        shared.release_names(key);
        shared.graph.forget(key);
    }
    if done.changed {
        wake.extend(shared.graph.dependents(key));
    }
    Ok(Reconciled {
        wake,
        phase: done.phase,
        deferred: done.deferred,
        fingerprint,
        ..Reconciled::new(key, done.state, done.requeue)
    })
}

/// Reads the manifest (judged) and the status; settles who owns the task's name.
/// `None`: the manifest is probably still being written.
async fn read(shared: &Arc<Shared>, key: &TaskKey, order: u64) -> Result<Option<Read>, StoreError> {
    let (listed, manifest, status) = shared.store.read_task(key).await?;
    let fingerprint = listed.map(|l| l.fingerprint);
    let Some(DesiredRead {
        mut desired,
        file,
        local_dir,
    }) = read_desired(shared, key, manifest).await?
    else {
        return Ok(None);
    };
    let file = file.unwrap_or_else(|| key.to_string());
    let mut wake = Vec::new();
    match &desired {
        Desired::Valid(spec) => match shared.claim_name(&spec.name, key, order) {
            Ok(other) => wake.extend(other),
            Err(owner) => {
                desired = Desired::Invalid {
                    name: spec.name.clone(),
                    message: format!(
                        "{file}: metadata.name: {:?} is already the name of task {owner}; names must be unique, so rename one of them",
                        spec.name
                    ),
                }
            }
        },
        _ => shared.release_names(key),
    }
    Ok(Some(Read {
        desired,
        file,
        local_dir,
        status,
        wake,
        fingerprint,
    }))
}

/// Where the task's `dependsOn` stand; a dependency that cannot be (a cycle, a task that
/// does not exist) makes the task Invalid.
async fn dependencies_of(
    shared: &Arc<Shared>,
    key: &TaskKey,
    desired: &mut Desired,
    file: &str,
    status: Option<&TaskStatus>,
) -> Result<Dependencies, StoreError> {
    let Desired::Valid(spec) = &*desired else {
        shared.graph.forget(key);
        return Ok(Dependencies::None);
    };
    Ok(match dependencies::evaluate(shared, key, spec, file, status).await? {
        Ok(dependencies) => dependencies,
        Err(message) => {
            *desired = Desired::Invalid {
                name: spec.name.clone(),
                message,
            };
            Dependencies::None
        }
    })
}

/// Observes the containers the status says may exist, each on the runtime it was made
/// on: the single container of a task of one completion, or each live lane of a fan-out.
/// Adds to `finished` those seen exited or gone: they run no more.
async fn observe_containers(
    shared: &Arc<Shared>,
    key: &TaskKey,
    status: Option<&TaskStatus>,
    finished: &mut Vec<String>,
) -> (Lane, BTreeMap<u32, Lane>) {
    let mut single = Lane::default();
    let mut lanes = BTreeMap::new();
    let Some(status) = status else {
        return (single, lanes);
    };
    if status.indexes.is_empty() {
        if let Some(record) = status.live_container().and(status.current()) {
            single = observe(shared, key, record, status.phase == Phase::Deleting).await;
            note_finished(shared, &single, record, finished);
        }
        return (single, lanes);
    }
    for lane in status.indexes.iter().filter(|l| l.phase.has_container()) {
        let record = status
            .attempts
            .iter()
            .find(|a| a.index == Some(lane.index) && a.number == lane.attempt);
        if let Some(record) = record {
            let seen = observe(shared, key, record, lane.phase == Phase::Deleting).await;
            note_finished(shared, &seen, record, finished);
            lanes.insert(lane.index, seen);
        }
    }
    (single, lanes)
}

/// Notes a container seen gone, or exited on a runtime where that frees its slot.
fn note_finished(shared: &Shared, seen: &Lane, record: &crate::status::AttemptRecord, finished: &mut Vec<String>) {
    let done = match &seen.observed {
        Observed::Container(ContainerState::Absent) => true,
        Observed::Container(ContainerState::Exited { .. }) => shared
            .runtime(record.runtime)
            .is_some_and(|runtime| runtime.exited_frees_its_slot()),
        _ => false,
    };
    if done {
        finished.push(record.container.clone());
    }
}

/// Observes the containers of each run overlapping the top-level one (a scheduled task
/// under `concurrencyPolicy: Allow`), as a task's own are.
async fn observe_overlapping(
    shared: &Arc<Shared>,
    key: &TaskKey,
    status: Option<&TaskStatus>,
    finished: &mut Vec<String>,
) -> BTreeMap<u32, reconcile::RunObservation> {
    let mut seen = BTreeMap::new();
    let Some(status) = status else { return seen };
    for run in status.schedule.iter().flat_map(|s| s.overlapping.iter()) {
        let view = run.view(status);
        let (single, lanes) = observe_containers(shared, key, Some(&view), finished).await;
        seen.insert(run.run, reconcile::RunObservation { single, lanes });
    }
    seen
}

/// Removes the task's containers that orphan collection found unrecorded by its status
/// (a person deleted the status under a live container, to run the task again). Only a
/// pass may: passes of one task never overlap, so the name cannot have been given to
/// a new attempt's container between the look and the delete.
async fn remove_strays(shared: &Arc<Shared>, key: &TaskKey, status: Option<&TaskStatus>) {
    let strays = shared.memory(key, |m| std::mem::take(&mut m.strays));
    for (name, (kind, attempt_id)) in strays {
        let recorded = status.is_some_and(|s| {
            s.all_attempts()
                .any(|a| a.container == name && a.attempt_id().as_deref() == Some(attempt_id.as_str()))
        });
        let Some(runtime) = shared.runtime(kind) else { continue };
        if recorded {
            continue;
        }
        let result = match runtime.inspect(&name).await {
            // Still that attempt's: it goes.
            Ok(found) if found.attempt_id.as_deref() == Some(attempt_id.as_str()) => {
                tracing::info!(task = %key, container = %name, "removing a container its status no longer records (the status was deleted under it)");
                runtime.delete(&name).await
            }
            // Gone already, or the name holds another attempt now.
            Ok(_) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            tracing::warn!(task = %key, container = %name, "cannot remove a container its status no longer records; will retry: {err}");
            shared.memory(key, |m| m.strays.insert(name, (kind, attempt_id)));
        }
    }
}

/// Where a container started now would live, recorded with its attempt.
async fn placement_for(shared: &Arc<Shared>, key: &TaskKey, desired: &Desired) -> Option<Placement> {
    let Desired::Valid(spec) = desired else { return None };
    let runtime = shared.runtime(spec.runtime)?;
    match runtime.placement().await {
        Ok(placement) => Some(placement),
        Err(err) => {
            // The status can only say "retrying"; the cause (an engine that does not
            // answer, its socket's path) is here.
            tracing::warn!(task = %key, "cannot reach the {} runtime: {err}", spec.runtime);
            None
        }
    }
}

/// The semaphores the task's lanes hold or wait for: the spec's, and those recorded by
/// any attempt whose container may still exist (its manifest deleted or edited since,
/// this controller restarted since): a container holds its slots until it is gone.
fn semaphores_held(desired: &Desired, status: Option<&TaskStatus>) -> Vec<String> {
    let mut names: Vec<String> = match desired {
        Desired::Valid(spec) => spec.semaphores.clone(),
        _ => Vec::new(),
    };
    let live = status.into_iter().flat_map(|s| {
        s.attempts.iter().filter(move |a| match a.index {
            Some(index) => s
                .indexes
                .iter()
                .any(|l| l.index == index && l.attempt == a.number && l.phase.has_container()),
            None => s.indexes.is_empty() && s.phase.has_container() && a.number == s.attempt,
        })
    });
    for attempt in live {
        names.extend(attempt.semaphores.iter().cloned());
    }
    // The runs overlapping the top-level one hold theirs the same way.
    if let Some(status) = status {
        for run in status.schedule.iter().flat_map(|s| s.overlapping.iter()) {
            names.extend(semaphores_held(&Desired::Absent, Some(&run.view(status))));
        }
    }
    names.sort();
    names.dedup();
    names
}

/// How much longer a task may wait for a slot before its status says so: `None` once
/// it should (or when this decision is not a new task's wait). See [`QUIET_WAIT`].
fn quiet_wait_left(
    shared: &Arc<Shared>,
    key: &TaskKey,
    status: Option<&TaskStatus>,
    decision: &reconcile::Decision,
) -> Option<Duration> {
    let waits = status.is_none()
        && decision.actions.is_empty()
        && decision
            .status
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Pending && s.reason == Some(crate::status::Reason::WaitingForSlot));
    if !waits {
        shared.memory(key, |m| m.waiting_unsaid_since = None);
        return None;
    }
    let now = shared.clock.now();
    let since = shared.memory(key, |m| *m.waiting_unsaid_since.get_or_insert(now));
    let waited = (now - since).to_std().unwrap_or_default();
    QUIET_WAIT.checked_sub(waited).filter(|left| !left.is_zero())
}

/// Everything one pass read and saw, for the decision.
struct Pass<'a> {
    desired: &'a Desired,
    status: Option<&'a TaskStatus>,
    local_dir: Option<PathBuf>,
    single: Lane,
    lanes: BTreeMap<u32, Lane>,
    overlapping: BTreeMap<u32, reconcile::RunObservation>,
    dependencies: Dependencies,
    placement: Option<Placement>,
    requests: Requests,
    /// The containers seen exited or gone.
    finished: Vec<String>,
}

/// Where a pass leaves the task.
struct Done {
    state: TaskState,
    requeue: Option<Duration>,
    /// Held back until start-up has seen every task.
    deferred: bool,
    /// See [`Reconciled::phase`].
    phase: Option<(Phase, RuntimeKind, i64)>,
    /// Its phase or spec changed (or it appeared or went): its dependents look again.
    changed: bool,
}

/// Decide, admit, persist and act, settle. An error means the decision may not have
/// been persisted: a lane then keeps its slot if its container may exist under either
/// the status read or the one decided, until a later pass reads which the store holds.
async fn decide_and_act(shared: &Arc<Shared>, key: &TaskKey, order: u64, pass: Pass<'_>) -> Result<Done, StoreError> {
    let Pass {
        desired,
        status,
        local_dir,
        single,
        mut lanes,
        mut overlapping,
        dependencies,
        placement,
        requests,
        finished,
    } = pass;
    for lane in lanes.values_mut() {
        lane.seen_by_engine = requests.seen_by_engine;
    }
    for run in overlapping.values_mut() {
        run.single.seen_by_engine = requests.seen_by_engine;
        for lane in run.lanes.values_mut() {
            lane.seen_by_engine = requests.seen_by_engine;
        }
    }
    let results = match &dependencies {
        Dependencies::Met { results, .. } => Some(results.clone()),
        _ => None,
    };
    let input = Input {
        key,
        desired,
        status,
        observed: single.observed,
        seen_by_engine: requests.seen_by_engine,
        log_tail: single.log_tail,
        slot: Slot::Granted,
        now: shared.clock.now(),
        jitter: shared.entropy.unit(),
        event: single.event,
        heartbeat: single.heartbeat,
        terminate: requests.terminate,
        index: None,
        lanes,
        dependencies,
        placement,
        scheduling: Scheduling {
            since: Some(*shared.since.get_or_init(|| shared.clock.now())),
            trigger: requests.trigger,
            run: None,
            overlapping,
        },
    };

    // Decide, and admit what it starts.
    let decision = reconcile::decide(input.clone());
    let runtime = match desired {
        Desired::Valid(spec) => spec.runtime,
        _ => shared.config.default_runtime,
    };
    shared.limits.set_semaphores(key, &semaphores_held(desired, status));
    let may_start = shared.start.may_start(order);
    let shared_input = shared_slots::applies(shared, desired).then(|| input.clone());
    let (decision, mut waiting_lane, mut token_wait) =
        match admit::admit(&shared.limits, may_start, key, order, runtime, input, decision) {
            Admitted::Decided {
                decision,
                waiting_lane,
                token_wait,
            } => (*decision, waiting_lane, token_wait),
            Admitted::Deferred(standings) => {
                shared.limits.settle_task(key, order, &standings);
                // Held back is waiting too: a new task says so a second from now.
                if status.is_none() {
                    let now = shared.clock.now();
                    shared.memory(key, |m| {
                        m.waiting_unsaid_since.get_or_insert(now);
                    });
                }
                return Ok(Done {
                    state: TaskState::Active,
                    requeue: None,
                    deferred: true,
                    phase: None,
                    changed: false,
                });
            }
        };

    // The replicas' shared semaphores, after this replica's own slots. A lane they
    // refuse gives up its own slots and asks again a little later.
    let (decision, refused) = shared_slots::admit(shared, key, desired, shared_input, decision).await?;
    if refused {
        waiting_lane = None;
        token_wait = Some(token_wait.map_or(shared_slots::SHARED_RETRY, |t| t.min(shared_slots::SHARED_RETRY)));
    }

    // What has finished runs no more: its slot goes to the next in line now, while this
    // pass writes the status that says so and deletes it.
    if !finished.is_empty() {
        let early = admit::early_standings(status, &decision, waiting_lane, &finished);
        shared.limits.settle_task(key, order, &early);
    }

    // Persist, then act; but a new task's first short wait for a slot goes unsaid.
    let quiet = quiet_wait_left(shared, key, status, &decision);
    let acted = match quiet {
        Some(left) => Ok(act::Acted {
            requeue: Some(decision.requeue_after.map_or(left, |r| r.min(left))),
            gone: Vec::new(),
        }),
        None => execute(shared, key, status, desired, local_dir, results, &decision).await,
    };
    let act::Acted { mut requeue, mut gone } = match acted {
        Ok(acted) => acted,
        Err(err) => {
            shared
                .limits
                .settle_task(key, order, &admit::early_standings(status, &decision, None, &finished));
            return Err(err);
        }
    };

    heartbeats::settle(&shared.heartbeats, key, decision.status.as_ref());
    // Settle: the lanes hold slots as the status now written says, but for containers
    // this pass deleted: those are gone already, and the next in line need not wait for
    // the status that says so (invariant: never more containers than slots, not
    // statuses).
    gone.extend(finished.into_iter().filter(|name| !admit::made_again(&decision, name)));
    let standings = admit::standings_after_deletes(decision.status.as_ref(), waiting_lane, &gone);
    shared.limits.settle_task(key, order, &standings);
    shared_slots::settle(shared, key, desired, &standings).await;
    if let Some(wait) = token_wait {
        requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
    }
    ownership::after(shared, key, decision.status.as_ref()).await;
    // A scheduled task with no active run is done for now (`--once` ends), and is looked
    // at again at its next scheduled time (not under `--once`).
    let idle_schedule = decision
        .status
        .as_ref()
        .and_then(|s| s.schedule.as_ref())
        .is_some_and(|s| s.active.is_empty());
    if idle_schedule && shared.config.once {
        requeue = None;
    }
    let state = match &decision.status {
        None => TaskState::Removed,
        Some(s) if idle_schedule && s.phase == Phase::Scheduled => TaskState::Final(Phase::Succeeded),
        Some(s) if idle_schedule => TaskState::Final(s.phase),
        // Runs overlapping a finished top-level one (Allow) still run.
        Some(s) if s.phase.is_final() && s.schedule.as_ref().is_none_or(|s| s.active.is_empty()) => {
            TaskState::Final(s.phase)
        }
        Some(_) => TaskState::Active,
    };
    let changed = match (status, decision.status.as_ref()) {
        (Some(before), Some(after)) => before.phase != after.phase || before.spec_hash != after.spec_hash,
        (None, None) => false,
        _ => true,
    };
    let phase = decision.status.as_ref().map(|s| {
        let runtime = s.current().map(|a| a.runtime).unwrap_or(shared.config.default_runtime);
        let live = standings
            .iter()
            .filter(|(_, standing, _)| *standing == limits::Standing::Live)
            .count();
        (s.phase, runtime, live as i64)
    });
    Ok(Done {
        state,
        requeue,
        deferred: false,
        phase,
        changed,
    })
}
