//! The controller: watches the store, reconciles each task, and acts on the runtime.
//!
//! - [`queue`] decides *when* a task is reconciled (keyed, delayed, never twice at once);
//! - [`reconcile`] decides *what* to do, as a pure function;
//! - [`limits`] decides *whether* a new container may start;
//! - this module runs the loop and one reconcile: read ([`desired`]) the manifest and
//!   the status, observe the container, decide, then persist and act ([`act`]);
//! - [`health`] tells `/healthz` whether the loop still turns.

mod act;
pub mod clock;
mod dependencies;
mod desired;
mod health;
pub mod limits;
mod observe;
mod ownership;
pub mod queue;
pub mod reconcile;
mod replicas;
mod run;

use act::execute;
use desired::{DesiredRead, read_desired};
use health::HEARTBEAT;
pub use health::{Health, HealthReport};
use observe::observe;

use crate::callback::{CallbackSecret, Inbox};
use crate::manifest::{Features, RuntimeKind, TaskSpec};
use crate::metrics::Metrics;
use crate::runtime::{self, ContainerState, Runtime};
use crate::status::{Phase, Reason};
use crate::store::{Fingerprint, ManifestRead, Store, StoreError, StoreEvent};
use crate::task::TaskKey;
use limits::{CreateRate, Slots, Standing};
use queue::WorkQueue;
use reconcile::{Dependencies, Desired, Input, Lane, Observed, Slot};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A manifest that fails to parse and changed less than this long ago is probably
/// still being written: it is looked at again, not judged Invalid.
pub const SETTLE_TIME: Duration = Duration::from_secs(2);
/// When to look at a container after creating it, unless the runtime reports first.
const FIRST_LOOK: Duration = Duration::from_millis(100);
/// Longest wait between retries of an infrastructure error.
const MAX_INFRA_BACKOFF: Duration = Duration::from_secs(60);
/// How long shutdown waits for status writes in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub default_runtime: RuntimeKind,
    /// `--max-running`: live containers across all runtimes.
    pub max_running: Option<usize>,
    /// `--max-running-process`, `--max-running-docker`, `--max-running-aci`.
    pub max_running_per_runtime: HashMap<RuntimeKind, usize>,
    /// `--create-rate`: each runtime's token bucket for creates.
    pub create_rates: HashMap<RuntimeKind, CreateRate>,
    /// Full relist interval, healing missed notifications.
    pub resync: Duration,
    /// Stop once every task is final.
    pub once: bool,
    pub allow_host_paths: Vec<PathBuf>,
    /// Reconciles in flight at once.
    pub workers: usize,
    /// A reconcile that takes longer is abandoned and retried.
    pub reconcile_timeout: Duration,
    /// `--replica-name`: how the other replicas sharing a store name this one.
    pub replica_name: String,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            default_runtime: RuntimeKind::Process,
            max_running: None,
            max_running_per_runtime: HashMap::new(),
            create_rates: HashMap::new(),
            resync: Duration::from_secs(60),
            once: false,
            allow_host_paths: Vec::new(),
            workers: 32,
            reconcile_timeout: Duration::from_secs(120),
            replica_name: "skiff".to_string(),
        }
    }
}

/// Requests from the HTTP API to the controller loop.
#[derive(Debug)]
pub enum Control {
    /// Stop the task's current attempt and fail it with reason Terminated.
    Terminate(TaskKey),
    /// A completion event was recorded for the task (at this instant): look now.
    Event(TaskKey, std::time::Instant),
}

/// How a controller run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `--once`: every task Succeeded.
    AllSucceeded,
    /// `--once`: at least one task Failed or is Invalid.
    SomeFailed,
    /// Stopped by a signal.
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the controller remembers of a task between reconciles. None of it needs to
/// survive a restart: it only speeds things up or explains them.
#[derive(Default)]
struct Memory {
    /// The runtime reported a change of this task's container.
    engine_seen: bool,
    /// Creates that failed for good, by container, to be recorded on their attempts.
    create_failures: HashMap<String, (Reason, String)>,
    /// Consecutive infrastructure errors, for backoff.
    infra_failures: u32,
    /// The last manifest that validated, with its bytes: a task is reconciled several
    /// times per run and its manifest seldom changes in between.
    validated: Option<(Vec<u8>, Box<TaskSpec>)>,
    /// A terminate request from the API, not yet persisted.
    terminate: bool,
    /// When the last completion event was accepted, for the latency metric.
    event_at: Option<std::time::Instant>,
}

/// The `metadata.name` each task holds, both ways round: each task holds at most one.
#[derive(Default)]
struct Names {
    by_name: HashMap<String, (u64, TaskKey)>,
    by_key: HashMap<TaskKey, String>,
}

impl Names {
    fn release(&mut self, key: &TaskKey) {
        if let Some(name) = self.by_key.remove(key)
            && self.by_name.get(&name).is_some_and(|(_, owner)| owner == key)
        {
            self.by_name.remove(&name);
        }
    }
}

/// What the HTTP side shares with the controller, when it is served.
#[derive(Clone)]
pub struct Callbacks {
    /// Where containers reach the callback route, e.g. `http://127.0.0.1:8466`.
    pub base_url: String,
    pub secret: Arc<CallbackSecret>,
    pub inbox: Arc<Inbox>,
}

struct Shared {
    store: Arc<dyn Store>,
    runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>,
    config: ControllerConfig,
    limits: Slots,
    memory: Mutex<HashMap<TaskKey, Memory>>,
    /// First-seen order of each task, for first come, first served.
    order: Mutex<HashMap<TaskKey, u64>>,
    /// Container name → task, to route runtime events.
    containers: Mutex<HashMap<String, TaskKey>>,
    /// `metadata.name` → (first-seen order, task): names are unique.
    names: Mutex<Names>,
    /// Who depends on whom (`dependsOn`).
    graph: dependencies::Graph,
    /// Every task listed at start-up has been reconciled once.
    caught_up: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    callbacks: Option<Callbacks>,
    /// Who owns which task, when replicas share the store (see [`ownership`]).
    ownership: Option<Arc<dyn crate::store::ownership::Ownership>>,
    /// The time of day and the randomness of the pipeline (see [`clock`]).
    clock: Arc<dyn clock::Clock>,
    entropy: clock::Entropy,
    /// Parse manifests on the calling task instead of the blocking pool: a thread's
    /// timing would make the simulator's runs differ.
    parse_inline: bool,
}

/// What one reconcile reports back to the loop.
struct Reconciled {
    key: TaskKey,
    state: TaskState,
    requeue: Option<Duration>,
    /// Tasks to reconcile again: one whose name this one took over, and this one's
    /// dependents when it changed.
    wake: Vec<TaskKey>,
    /// Held back until the controller has caught up after start-up.
    deferred: bool,
    /// The phase written (or kept), the runtime of its current attempt, and how many
    /// of its containers may exist (a fan-out's live indexes).
    phase: Option<(Phase, RuntimeKind, i64)>,
    /// The task was seen through: its containers hold their slots (or it can have none
    /// that skiff may know of). Until every task listed at start-up has been, nothing
    /// starts: a task whose reconcile failed may have a live container, and its slot
    /// would otherwise go to another task, past `--max-running`.
    observed: bool,
    /// The task's files as they were before this reconcile read them: a final task is
    /// skipped by the relist while they stay so. Taken before, not after, so that a
    /// change made while the reconcile ran (whose notification may be lost) is seen by
    /// the next relist.
    fingerprint: Option<Fingerprint>,
}

impl Reconciled {
    /// Seen through, nothing else to report.
    fn new(key: &TaskKey, state: TaskState, requeue: Option<Duration>) -> Self {
        Reconciled {
            key: key.clone(),
            state,
            requeue,
            wake: Vec::new(),
            deferred: false,
            phase: None,
            observed: true,
            fingerprint: None,
        }
    }

    /// Not seen through (an error, a timeout, a manifest being written): look again.
    fn retry(key: &TaskKey, requeue: Duration) -> Self {
        Reconciled {
            observed: false,
            ..Reconciled::new(key, TaskState::Active, Some(requeue))
        }
    }
}

/// A task's standing, as far as `--once` and resync are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    Active,
    Final(Phase),
    Removed,
}

pub struct Controller {
    shared: Arc<Shared>,
    woken: mpsc::UnboundedReceiver<TaskKey>,
    control: Option<mpsc::UnboundedReceiver<Control>>,
}

impl Controller {
    pub fn new(store: Arc<dyn Store>, runtimes: Vec<Arc<dyn Runtime>>, config: ControllerConfig) -> Self {
        let (limits, woken) = Slots::new(
            config.max_running,
            &config.max_running_per_runtime,
            &config.create_rates,
        );
        let runtimes = runtimes.into_iter().map(|r| (r.kind(), r)).collect();
        Controller {
            shared: Arc::new(Shared {
                ownership: store.ownership(),
                store,
                runtimes,
                config,
                limits,
                memory: Mutex::new(HashMap::new()),
                order: Mutex::new(HashMap::new()),
                containers: Mutex::new(HashMap::new()),
                names: Mutex::new(Names::default()),
                graph: dependencies::Graph::default(),
                caught_up: std::sync::atomic::AtomicBool::new(false),
                metrics: Arc::new(Metrics::new()),
                health: Arc::new(Health::default()),
                callbacks: None,
                clock: Arc::new(clock::SystemClock),
                entropy: clock::Entropy::from_os(),
                parse_inline: false,
            }),
            woken,
            control: None,
        }
    }

    /// Serves completion callbacks: containers in event mode get a callback URL, and
    /// the API's requests arrive on the returned sender.
    pub fn with_api(mut self, callbacks: Option<Callbacks>) -> (Self, mpsc::UnboundedSender<Control>) {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.callbacks = callbacks;
        }
        self.control = Some(rx);
        (self, tx)
    }

    /// Runs the pipeline on `clock`, with randomness drawn from `seed`, and parses on
    /// the loop's own thread: what the deterministic simulator needs to replay a run.
    /// Call it before [`Controller::run`], right after [`Controller::new`].
    pub fn deterministic(mut self, clock: Arc<dyn clock::Clock>, seed: u64) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.clock = clock;
            shared.entropy = clock::Entropy::seeded(seed);
            shared.parse_inline = true;
        }
        self
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    pub fn health(&self) -> Arc<Health> {
        self.shared.health.clone()
    }
}

impl Shared {
    fn first_seen(&self, key: &TaskKey) -> u64 {
        let Ok(mut order) = self.order.lock() else { return 0 };
        let next = order.len() as u64;
        *order.entry(key.clone()).or_insert(next)
    }

    fn memory<T>(&self, key: &TaskKey, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut memory = self.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(memory.entry(key.clone()).or_default())
    }

    fn infra_backoff(&self, key: &TaskKey) -> Duration {
        let failures = self.memory(key, |m| {
            m.infra_failures += 1;
            m.infra_failures
        });
        let raw = Duration::from_millis(250).saturating_mul(1 << failures.min(10));
        raw.min(MAX_INFRA_BACKOFF).mul_f64(0.8 + 0.4 * self.entropy.unit())
    }

    /// What this controller can run: what is built, what is enabled, what is served.
    fn features(&self) -> Features {
        Features {
            docker: self.runtimes.contains_key(&RuntimeKind::Docker),
            aci: self.runtimes.contains_key(&RuntimeKind::Aci),
            event_completion: self.callbacks.is_some(),
            ..Features::CURRENT
        }
    }

    fn runtime(&self, kind: RuntimeKind) -> Option<&Arc<dyn Runtime>> {
        self.runtimes.get(&kind)
    }

    /// Claims `name` for `key`; the task seen first keeps a contested name. Constant
    /// time: with 100,000 tasks, a scan of every name per reconcile made start-up
    /// quadratic.
    fn claim_name(&self, name: &str, key: &TaskKey, order: u64) -> Result<Option<TaskKey>, TaskKey> {
        let Ok(mut names) = self.names.lock() else {
            return Ok(None);
        };
        let names = &mut *names;
        // The name the task held before, if another, is free again.
        if names.by_key.get(key).is_some_and(|held| held != name) {
            names.release(key);
        }
        match names.by_name.get(name) {
            Some((_, owner)) if owner == key => Ok(None),
            Some((owner_order, owner)) if *owner_order < order => Err(owner.clone()),
            previous => {
                let displaced = previous.map(|(_, owner)| owner.clone());
                if let Some(displaced) = &displaced {
                    names.by_key.remove(displaced);
                }
                names.by_name.insert(name.to_string(), (order, key.clone()));
                names.by_key.insert(key.clone(), name.to_string());
                Ok(displaced)
            }
        }
    }

    fn release_names(&self, key: &TaskKey) {
        if let Ok(mut names) = self.names.lock() {
            names.release(key);
        }
    }
}

async fn reconcile_task(shared: &Arc<Shared>, key: &TaskKey) -> Reconciled {
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

async fn try_reconcile(shared: &Arc<Shared>, key: &TaskKey) -> Result<Reconciled, StoreError> {
    let order = shared.first_seen(key);
    if let gate @ (ownership::Gate::Later(_) | ownership::Gate::Deferred) = ownership::before_read(shared, key) {
        return Ok(ownership::not_acting(shared, key, order, gate));
    }
    let Some(DesiredRead {
        mut desired,
        file,
        local_dir,
    }) = read_desired(shared, key).await?
    else {
        return Ok(Reconciled::retry(key, SETTLE_TIME));
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
    let status = shared.store.read_status_for_update(key).await?;
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

    let dependencies = match &desired {
        Desired::Valid(spec) => match dependencies::evaluate(shared, key, spec, &file, status.as_ref()).await? {
            Ok(dependencies) => dependencies,
            Err(message) => {
                desired = Desired::Invalid {
                    name: spec.name.clone(),
                    message,
                };
                Dependencies::None
            }
        },
        _ => {
            shared.graph.forget(key);
            Dependencies::None
        }
    };

    // Observe the containers the status says may exist, on the runtime each was made on.
    let mut single = Lane::default();
    let mut lanes = BTreeMap::new();
    if let Some(status) = &status {
        if status.indexes.is_empty() {
            if let Some(record) = status.live_container().and(status.current()) {
                single = observe(shared, key, record, status.phase == Phase::Deleting).await;
            }
        } else {
            for lane in status.indexes.iter().filter(|l| l.phase.has_container()) {
                let record = status
                    .attempts
                    .iter()
                    .find(|a| a.index == Some(lane.index) && a.number == lane.attempt);
                if let Some(record) = record {
                    let seen = observe(shared, key, record, lane.phase == Phase::Deleting).await;
                    lanes.insert(lane.index, seen);
                }
            }
        }
    }
    let (seen_by_engine, terminate) = shared.memory(key, |m| {
        (std::mem::take(&mut m.engine_seen), std::mem::take(&mut m.terminate))
    });
    for lane in lanes.values_mut() {
        lane.seen_by_engine = seen_by_engine;
    }
    let results = match &dependencies {
        Dependencies::Met { results, .. } => Some(results.clone()),
        _ => None,
    };
    // Where a container started now would live, recorded with its attempt.
    let placement = match &desired {
        Desired::Valid(spec) => match shared.runtime(spec.runtime) {
            Some(runtime) => match runtime.placement().await {
                Ok(placement) => Some(placement),
                Err(err) => {
                    // The status can only say "retrying"; the cause (an engine that does
                    // not answer, its socket's path) is here.
                    tracing::warn!(task = %key, "cannot reach the {} runtime: {err}", spec.runtime);
                    None
                }
            },
            None => None,
        },
        _ => None,
    };
    let now = shared.clock.now();
    let mut input = Input {
        key,
        desired: &desired,
        status: status.as_ref(),
        observed: single.observed,
        seen_by_engine,
        log_tail: single.log_tail,
        slot: Slot::Granted,
        now,
        jitter: shared.entropy.unit(),
        event: single.event,
        terminate,
        index: None,
        lanes,
        dependencies,
        placement,
    };
    // Ask for slots only for the containers the decision would start.
    let mut decision = reconcile::decide(input.clone());
    let started = decision.started_lanes(status.as_ref());
    let mut waiting_lane = None;
    let mut token_wait = None;
    if !started.is_empty() {
        let runtime = match &desired {
            Desired::Valid(spec) => spec.runtime,
            _ => shared.config.default_runtime,
        };
        if !shared.caught_up.load(std::sync::atomic::Ordering::Acquire) {
            // Start nothing before every task has been seen once: names are then known
            // and first come, first served has everyone in line.
            for lane in &started {
                shared.limits.enqueue(key, lane.unwrap_or(0), order, runtime);
            }
            // Its containers that exist already hold their slots meanwhile (a fan-out with
            // a live lane and a lane to start): else, once caught up, another task could
            // take their slots and run past --max-running.
            let waiting = started.iter().map(|lane| (lane.unwrap_or(0), Standing::Waiting, None));
            let live =
                live_lanes(status.as_ref()).filter(|(lane, ..)| !started.iter().any(|l| l.unwrap_or(0) == *lane));
            let standings: Vec<_> = waiting.chain(live).collect();
            shared.limits.settle_task(key, order, &standings);
            return Ok(Reconciled {
                wake,
                deferred: true,
                ..Reconciled::new(key, TaskState::Active, None)
            });
        }
        let mut granted = Vec::new();
        let mut refused = None;
        for lane in &started {
            let (slot, wait) = shared.limits.try_acquire(key, lane.unwrap_or(0), order, runtime);
            if slot == Slot::Granted {
                granted.push(*lane);
            } else {
                waiting_lane = Some(lane.unwrap_or(0));
                token_wait = wait;
                refused = Some(slot);
                // The lanes after it are behind it in line.
                break;
            }
        }
        if let Some(full) = refused {
            // Hold back everything not granted: the single container (which a fan-out
            // that became a task of one completion starts too), and every lane of a
            // fan-out, or a lane past the parallelism cut of the first decision could
            // start without a slot.
            input.slot = full.clone();
            let count = decision.status.as_ref().map_or(0, |s| s.indexes.len() as u32);
            for index in 0..count {
                if !granted.contains(&Some(index)) {
                    input.lanes.entry(index).or_default().slot = full.clone();
                }
            }
            decision = reconcile::decide(input);
        }
    }
    let standings: Vec<(u32, Standing, Option<RuntimeKind>)> = match &decision.status {
        None => Vec::new(),
        Some(s) if s.indexes.is_empty() => {
            let standing = if s.phase.has_container() {
                Standing::Live
            } else if waiting_lane.is_some() && s.reason == Some(Reason::WaitingForSlot) {
                Standing::Waiting
            } else {
                Standing::Idle
            };
            vec![(0, standing, s.current().map(|a| a.runtime))]
        }
        Some(s) => s
            .indexes
            .iter()
            .map(|lane| {
                let standing = if lane.phase.has_container() {
                    Standing::Live
                } else if waiting_lane == Some(lane.index) {
                    Standing::Waiting
                } else {
                    Standing::Idle
                };
                let runtime = s
                    .attempts
                    .iter()
                    .find(|a| a.index == Some(lane.index) && a.number == lane.attempt)
                    .map(|a| a.runtime);
                (lane.index, standing, runtime)
            })
            .collect(),
    };
    shared.limits.settle_task(key, order, &standings);

    let mut requeue = execute(shared, key, status.as_ref(), &desired, local_dir, results, &decision).await?;
    if let Some(wait) = token_wait {
        requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
    }
    ownership::after(shared, key, decision.status.as_ref()).await;
    let state = match &decision.status {
        None => TaskState::Removed,
        Some(s) if s.phase.is_final() => TaskState::Final(s.phase),
        Some(_) => TaskState::Active,
    };
    if state == TaskState::Removed {
        shared.release_names(key);
        shared.graph.forget(key);
    }
    let changed = match (status.as_ref(), decision.status.as_ref()) {
        (Some(before), Some(after)) => before.phase != after.phase || before.spec_hash != after.spec_hash,
        (None, None) => false,
        _ => true,
    };
    if changed {
        wake.extend(shared.graph.dependents(key));
    }
    let phase = decision.status.as_ref().map(|s| {
        let runtime = s.current().map(|a| a.runtime).unwrap_or(shared.config.default_runtime);
        let live = standings
            .iter()
            .filter(|(_, standing, _)| *standing == Standing::Live)
            .count();
        (s.phase, runtime, live as i64)
    });
    Ok(Reconciled {
        wake,
        phase,
        ..Reconciled::new(key, state, requeue)
    })
}

/// The lanes whose container may exist according to a status, as standings: each
/// holds a slot of its runtime.
fn live_lanes(
    status: Option<&crate::status::TaskStatus>,
) -> impl Iterator<Item = (u32, Standing, Option<RuntimeKind>)> + '_ {
    let single = status
        .filter(|s| s.indexes.is_empty() && s.phase.has_container())
        .map(|s| (0, Standing::Live, s.current().map(|a| a.runtime)));
    let lanes = status.into_iter().flat_map(|s| {
        s.indexes
            .iter()
            .filter(|lane| lane.phase.has_container())
            .map(move |lane| {
                let runtime = s
                    .attempts
                    .iter()
                    .find(|a| a.index == Some(lane.index) && a.number == lane.attempt)
                    .map(|a| a.runtime);
                (lane.index, Standing::Live, runtime)
            })
    });
    single.into_iter().chain(lanes)
}
