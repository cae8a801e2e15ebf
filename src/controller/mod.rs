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
mod ownership;
pub mod queue;
pub mod reconcile;
mod replicas;

use act::execute;
use desired::{DesiredRead, read_desired};
use health::HEARTBEAT;
pub use health::{Health, HealthReport};

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
    names: Mutex<HashMap<String, (u64, TaskKey)>>,
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
                names: Mutex::new(HashMap::new()),
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

    /// Runs until `shutdown` fires, or with `once`, until every task is final.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<Outcome, ControllerError> {
        let shared = self.shared.clone();
        let mut store_events = shared.store.watch()?;
        let (runtime_tx, mut runtime_events) = mpsc::unbounded_channel::<String>();
        for runtime in shared.runtimes.values() {
            if let Some(mut rx) = runtime.subscribe() {
                let tx = runtime_tx.clone();
                tokio::spawn(async move {
                    while let Some(name) = rx.recv().await {
                        if tx.send(name).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        drop(runtime_tx);

        let mut queue = WorkQueue::new();
        // Ordered, so that a relist queues the same keys in the same order on every run.
        let mut known: BTreeMap<TaskKey, TaskState> = BTreeMap::new();
        // Fingerprints of final tasks: a relist skips those whose files did not change.
        let mut settled: HashMap<TaskKey, Fingerprint> = HashMap::new();
        let mut running: JoinSet<Reconciled> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, TaskKey> = HashMap::new();

        let started = std::time::Instant::now();
        // A remote store may be unreachable at start: wait for it, saying why on /healthz.
        let mut wait = Duration::from_millis(250);
        loop {
            match self.relist(&mut queue, &mut known, &settled).await {
                Ok(()) => break,
                Err(err @ StoreError::Unavailable { .. }) => {
                    shared.health.store_result::<(), _>(&Err(&err));
                    tracing::warn!("cannot list {}; retrying in {wait:?}: {err}", shared.store.location());
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Outcome::Shutdown),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(MAX_INFRA_BACKOFF);
                }
                Err(err) => return Err(err.into()),
            }
        }
        shared.health.store_result::<(), StoreError>(&Ok(()));
        // Replicas sharing the store say where their containers live (see `replicas`).
        let presence = shared.ownership.clone().map(|owner| {
            let stop = shutdown.child_token();
            let task = tokio::spawn(replicas::announce(shared.clone(), owner, stop.clone()));
            (stop, task)
        });
        // Tasks not yet reconciled since start-up; when none is left, the controller has
        // caught up with the world and says so once.
        let mut unobserved: std::collections::HashSet<TaskKey> = known.keys().cloned().collect();
        let mut caught_up = false;
        let mut deferred: Vec<TaskKey> = Vec::new();
        self.collect_orphans();
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + shared.config.resync, shared.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut control = self.control.take();
        let mut phases: HashMap<TaskKey, (Phase, RuntimeKind, i64)> = HashMap::new();

        let outcome = loop {
            shared.health.turn();
            shared.metrics.queue_depth.set(queue.len() as i64);
            if !caught_up && unobserved.is_empty() && running.is_empty() {
                caught_up = true;
                shared.caught_up.store(true, std::sync::atomic::Ordering::Release);
                for key in deferred.drain(..) {
                    queue.schedule(key, Duration::ZERO);
                }
                let active = known.values().filter(|s| **s == TaskState::Active).count();
                tracing::info!(
                    "caught up: {} tasks observed in {} ms, {active} active",
                    known.len(),
                    started.elapsed().as_millis()
                );
            }
            if shared.config.once && running.is_empty() && queue.is_empty() {
                if let Some(outcome) = once_outcome(&known) {
                    break outcome;
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Outcome::Shutdown,
                Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                    let done = match joined {
                        Ok((id, done)) => {
                            in_flight.remove(&id);
                            done
                        }
                        Err(err) => {
                            // A reconcile that panicked is a bug; the task is retried, not lost.
                            let Some(key) = in_flight.remove(&err.id()) else { continue };
                            tracing::error!(task = %key, "reconcile failed: {err}");
                            Reconciled::retry(&key, shared.infra_backoff(&key))
                        }
                    };
                    queue.done(&done.key);
                    if done.observed {
                        unobserved.remove(&done.key);
                    }
                    update_gauges(&shared.metrics, &mut phases, &done);
                    match done.state {
                        TaskState::Removed => {
                            known.remove(&done.key);
                            settled.remove(&done.key);
                        }
                        state => {
                            known.insert(done.key.clone(), state);
                        }
                    }
                    if matches!(done.state, TaskState::Final(_)) {
                        if let Some(fp) = done.fingerprint.clone() {
                            settled.insert(done.key.clone(), fp);
                        }
                    } else {
                        settled.remove(&done.key);
                    }
                    if let Some(delay) = done.requeue {
                        queue.schedule(done.key.clone(), delay);
                    }
                    if done.deferred {
                        if caught_up {
                            queue.schedule(done.key.clone(), Duration::ZERO);
                        } else {
                            deferred.push(done.key.clone());
                        }
                    }
                    for other in done.wake {
                        queue.schedule(other, Duration::ZERO);
                    }
                }
                Some(event) = store_events.recv() => match event {
                    StoreEvent::Changed(key) => {
                        shared.first_seen(&key);
                        known.entry(key.clone()).or_insert(TaskState::Active);
                        settled.remove(&key);
                        queue.schedule(key, Duration::ZERO);
                    }
                    StoreEvent::Rescan => {
                        let relisted = self.relist(&mut queue, &mut known, &settled).await;
                        shared.health.store_result(&relisted);
                        if let Err(err) = relisted {
                            tracing::warn!("relist of {} failed, will retry: {err}", shared.store.location());
                        }
                    }
                    StoreEvent::Reachable(error) => shared.health.store_result(&error.map_or(Ok(()), Err)),
                },
                Some(name) = runtime_events.recv() => {
                    let key = shared.containers.lock().ok().and_then(|m| m.get(&name).cloned());
                    if let Some(key) = key {
                        shared.memory(&key, |m| m.engine_seen = true);
                        queue.schedule(key, Duration::ZERO);
                    }
                }
                Some(key) = self.woken.recv() => queue.schedule(key, Duration::ZERO),
                Some(request) = next_control(&mut control) => match request {
                    Control::Terminate(key) => {
                        shared.memory(&key, |m| m.terminate = true);
                        queue.schedule(key, Duration::ZERO);
                    }
                    Control::Event(key, at) => {
                        shared.memory(&key, |m| m.event_at = Some(at));
                        queue.schedule(key, Duration::ZERO);
                    }
                },
                _ = heartbeat.tick() => {}
                _ = resync.tick() => {
                    let relisted = self.relist(&mut queue, &mut known, &settled).await;
                    shared.health.store_result(&relisted);
                    if let Err(err) = relisted {
                        tracing::warn!("resync of {} failed, will retry: {err}", shared.store.location());
                    }
                    self.collect_orphans();
                }
                key = queue.next(), if running.len() < shared.config.workers => {
                    let shared = shared.clone();
                    let task_key = key.clone();
                    let handle = running.spawn(async move {
                        let timeout = shared.config.reconcile_timeout;
                        let started = std::time::Instant::now();
                        // Cheap enough: two stats, or the blob store's cached listing.
                        let before = shared.store.list_one(&key).await.ok().flatten().map(|l| l.fingerprint);
                        let result = tokio::time::timeout(timeout, reconcile_task(&shared, &key)).await;
                        shared.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
                        let outcome = if result.is_ok() { "success" } else { "error" };
                        shared.metrics.reconciles.get_or_create(&Metrics::label("result", outcome)).inc();
                        match result {
                            Ok(done) => Reconciled { fingerprint: before, ..done },
                            Err(_) => {
                                tracing::warn!(task = %key, "reconcile took longer than {}s; retrying", timeout.as_secs());
                                Reconciled::retry(&key, shared.infra_backoff(&key))
                            }
                        }
                    });
                    in_flight.insert(handle.id(), task_key);
                }
            }
        };
        // Finish the status writes in flight; running containers are durable and left alone.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while running.join_next().await.is_some() {} }).await;
        // Hand the tasks over: other replicas take them at once rather than when leases lapse.
        if let Some(owner) = &shared.ownership {
            owner.release_all().await;
        }
        if let Some((stop, task)) = presence {
            // Withdrawn, so that the others stop counting this replica as live.
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        Ok(outcome)
    }

    /// Lists the store and queues every task whose files changed since it was last
    /// final, plus every task not yet final.
    async fn relist(
        &self,
        queue: &mut WorkQueue,
        known: &mut BTreeMap<TaskKey, TaskState>,
        settled: &HashMap<TaskKey, Fingerprint>,
    ) -> Result<(), StoreError> {
        let mut listed = self.shared.store.list().await?;
        // First come, first served: order new tasks by when their files last changed.
        listed.sort_by_key(|l| {
            (
                l.fingerprint.0.iter().map(|(_, m)| *m).max().unwrap_or(0),
                l.key.clone(),
            )
        });
        let mut present = std::collections::HashSet::new();
        for item in listed {
            present.insert(item.key.clone());
            self.shared.first_seen(&item.key);
            if settled.get(&item.key) == Some(&item.fingerprint) {
                continue;
            }
            known.entry(item.key.clone()).or_insert(TaskState::Active);
            if !queue.is_pending(&item.key) {
                queue.schedule(item.key, Duration::ZERO);
            }
        }
        // A task whose files all vanished between notifications still needs its cleanup.
        for key in known.keys() {
            if !present.contains(key) {
                queue.schedule(key.clone(), Duration::ZERO);
            }
        }
        Ok(())
    }

    /// Deletes containers that carry skiff's labels but whose task no longer exists:
    /// what a crash between "delete the container" and "forget the task" can leave.
    fn collect_orphans(&self) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            for runtime in shared.runtimes.values() {
                let Ok(containers) = runtime.list().await else { continue };
                for container in containers {
                    let Some(task) = container.labels.get(runtime::LABEL_TASK) else {
                        continue;
                    };
                    // A label is not ours to trust as a path: someone else's container may
                    // carry it.
                    let Ok(key) = TaskKey::parse(task) else {
                        continue;
                    };
                    let has_manifest = !matches!(shared.store.read_manifest(&key).await, Ok(ManifestRead::Missing));
                    let status = shared.store.read_status(&key).await;
                    let has_status = !matches!(status, Ok(None));
                    if !has_manifest && !has_status {
                        tracing::info!(container = %container.name, task = %key, "removing an orphaned container");
                        let _ = runtime.delete(&container.name).await;
                        continue;
                    }
                    if let Ok(Some(status)) = &status
                        && given_up_elsewhere(runtime.as_ref(), status, &container).await
                    {
                        // This replica died holding the task, and another, unable to see
                        // this container, gave its attempt up and ran the next one: what
                        // is left of it here (a duplicate, or its remains) goes.
                        tracing::info!(container = %container.name, task = %key, "removing a container whose attempt another replica gave up (PlacementUnreachable)");
                        let _ = runtime.delete(&container.name).await;
                    }
                }
            }
        });
    }
}

/// The status records `container`'s attempt as given up out of reach, on this very
/// runtime's placement (the same attempt: its attempt id matches).
async fn given_up_elsewhere(
    runtime: &dyn Runtime,
    status: &crate::status::TaskStatus,
    container: &runtime::ContainerSummary,
) -> bool {
    let Ok(ours) = runtime.placement().await else {
        return false;
    };
    let Some(attempt_id) = container.labels.get(runtime::LABEL_ATTEMPT_ID) else {
        return false;
    };
    status.attempts.iter().any(|a| {
        a.container == container.name
            && a.reason == Some(Reason::PlacementUnreachable)
            && a.placement.as_ref() == Some(&ours)
            && a.created_at.map(|t| crate::status::format_time(&t)).as_ref() == Some(attempt_id)
    })
}

async fn next_control(control: &mut Option<mpsc::UnboundedReceiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Keeps the task and live-container gauges in step with the phases just written.
fn update_gauges(metrics: &Metrics, phases: &mut HashMap<TaskKey, (Phase, RuntimeKind, i64)>, done: &Reconciled) {
    let old = match (&done.phase, done.state) {
        (_, TaskState::Removed) => phases.remove(&done.key),
        (Some(new), _) => phases.insert(done.key.clone(), *new),
        (None, _) => return,
    };
    let apply = |(phase, runtime, live): (Phase, RuntimeKind, i64), delta: i64| {
        metrics
            .tasks
            .get_or_create(&Metrics::label("phase", phase.as_str()))
            .inc_by(delta);
        if live > 0 {
            metrics
                .live_containers
                .get_or_create(&Metrics::label("runtime", runtime.as_str()))
                .inc_by(delta * live);
        }
    };
    if let Some(old) = old {
        apply(old, -1);
    }
    if let Some(new) = phases.get(&done.key) {
        apply(*new, 1);
    }
}

fn once_outcome(known: &BTreeMap<TaskKey, TaskState>) -> Option<Outcome> {
    let mut all_succeeded = true;
    for state in known.values() {
        match state {
            TaskState::Active => return None,
            TaskState::Final(Phase::Succeeded) | TaskState::Removed => {}
            TaskState::Final(_) => all_succeeded = false,
        }
    }
    Some(if all_succeeded {
        Outcome::AllSucceeded
    } else {
        Outcome::SomeFailed
    })
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

    /// Claims `name` for `key`; the task seen first keeps a contested name.
    fn claim_name(&self, name: &str, key: &TaskKey, order: u64) -> Result<Option<TaskKey>, TaskKey> {
        let Ok(mut names) = self.names.lock() else {
            return Ok(None);
        };
        names.retain(|n, (_, owner)| owner != key || n == name);
        match names.get(name) {
            Some((_, owner)) if owner == key => Ok(None),
            Some((owner_order, owner)) if *owner_order < order => Err(owner.clone()),
            previous => {
                let displaced = previous.map(|(_, owner)| owner.clone());
                names.insert(name.to_string(), (order, key.clone()));
                Ok(displaced)
            }
        }
    }

    fn release_names(&self, key: &TaskKey) {
        if let Ok(mut names) = self.names.lock() {
            names.retain(|_, (_, owner)| owner != key);
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
                    tracing::debug!(task = %key, "cannot learn the {} runtime's placement: {err}", spec.runtime);
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

/// Looks at one container of the task: its state, its log tail once it has finished,
/// and the completion event recorded for it.
async fn observe(shared: &Shared, key: &TaskKey, record: &crate::status::AttemptRecord, deleting: bool) -> Lane {
    let container = &record.container;
    let kind = record.runtime;
    let attempt_id = crate::callback::attempt_id(record);
    if let Ok(mut map) = shared.containers.lock() {
        map.insert(container.clone(), key.clone());
    }
    let failure = shared.memory(key, |m| m.create_failures.remove(container));
    let mut log_tail = None;
    // A container placed where this replica cannot look is not looked for: not finding
    // it would say nothing, and making it would run the attempt twice.
    let reach = match (&record.placement, shared.runtime(kind)) {
        (Some(theirs), Some(runtime)) => match runtime.placement().await {
            Ok(ours) if ours == *theirs => None,
            Ok(_) => Some(Observed::PlacementUnreachable(theirs.clone())),
            Err(err) => Some(Observed::Unreachable(err.to_string())),
        },
        _ => None,
    };
    let observed = match (failure, reach, shared.runtime(kind)) {
        (Some((reason, message)), _, _) => Observed::CreateFailed { reason, message },
        (None, Some(out_of_sight), _) => out_of_sight,
        (None, None, None) => Observed::Unreachable(format!("the {kind} runtime is not enabled in this controller")),
        (None, None, Some(runtime)) => match runtime.inspect(container).await {
            Ok(inspection) => {
                let stale =
                    matches!((&inspection.attempt_id, &attempt_id), (Some(found), Some(wanted)) if found != wanted);
                if stale {
                    // The name belongs to the current attempt: anything else under it
                    // is a leftover that nothing else would ever remove.
                    tracing::info!(task = %key, container, "removing a stale container of another attempt");
                }
                match (stale, inspection.state) {
                    (true, _) => match runtime.delete(container).await {
                        Ok(()) => Observed::Container(ContainerState::Absent),
                        Err(err) => Observed::Unreachable(format!("cannot remove a stale container: {err}")),
                    },
                    (false, state) => {
                        let finished = matches!(state, ContainerState::Exited { .. })
                            || (state == ContainerState::Absent && deleting);
                        if finished {
                            log_tail = runtime.log_tail(container).await.ok().flatten();
                            if let Some(tail) = &log_tail
                                && let Err(err) = shared.store.save_log(container, tail).await
                            {
                                tracing::debug!(task = %key, "saving the output failed: {err}");
                            }
                        }
                        Observed::Container(state)
                    }
                }
            }
            Err(err) => Observed::Unreachable(err.to_string()),
        },
    };
    // Read after the container: an event recorded before the container exited is then
    // always seen, so a container that called back is never judged ExitedWithoutEvent.
    // Only this attempt's own event: a re-run's container has the same name.
    let event = shared
        .callbacks
        .as_ref()
        .zip(attempt_id.as_deref())
        .and_then(|(c, id)| c.inbox.read(container, id));
    Lane {
        observed,
        seen_by_engine: false,
        log_tail,
        event,
        slot: Slot::Granted,
    }
}
