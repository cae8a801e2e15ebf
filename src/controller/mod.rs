//! The controller: watches the store, reconciles each task, and acts on the runtime.
//!
//! - [`queue`] decides *when* a task is reconciled (keyed, delayed, never twice at once);
//! - [`reconcile`] decides *what* to do, as a pure function;
//! - [`limits`] decides *whether* a new container may start;
//! - [`pass`] is one reconcile, top to bottom: read ([`desired`]), own ([`ownership`]),
//!   observe ([`observe`]), decide, admit ([`admit`]), persist and act ([`act`]), settle;
//! - [`run`] is the loop around it: relist, events, timers, orphan collection;
//! - [`health`] tells `/healthz` whether the loop still turns.

mod act;
mod admit;
pub mod clock;
mod dependencies;
mod desired;
mod health;
mod heartbeats;
pub mod limits;
mod observe;
mod ownership;
mod pass;
pub mod queue;
pub mod reconcile;
mod replicas;
mod run;
mod shared_slots;
pub mod transitions;

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
use limits::{CreateRate, Slots};
use queue::WorkQueue;
use reconcile::{Dependencies, Desired, Input, Lane, Observed, Scheduling, Slot};
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
    /// `--semaphore NAME=N`: named semaphores tasks hold a slot of while they run.
    pub semaphores: BTreeMap<String, usize>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            default_runtime: RuntimeKind::default(),
            max_running: None,
            max_running_per_runtime: HashMap::new(),
            create_rates: HashMap::new(),
            resync: Duration::from_secs(60),
            once: false,
            allow_host_paths: Vec::new(),
            workers: 32,
            reconcile_timeout: Duration::from_secs(120),
            replica_name: "skiff".to_string(),
            semaphores: BTreeMap::new(),
        }
    }
}

/// Requests from the HTTP API to the controller loop.
#[derive(Debug)]
pub enum Control {
    /// Stop the task's current attempt and fail it with reason Terminated.
    Terminate(TaskKey),
    /// Start a run of a scheduled task now (`skiff trigger`).
    Trigger(TaskKey),
    /// A completion event was recorded for the task (at this instant): look now.
    Event(TaskKey, std::time::Instant),
    /// A heartbeat changed the task's progress: write it into the status after this delay
    /// (coalesced: the API asks once per pending write).
    Progress(TaskKey, Duration),
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
    /// A trigger request from the API, not yet persisted.
    trigger: bool,
    /// When the last completion event was accepted, for the latency metric.
    event_at: Option<std::time::Instant>,
    /// Containers of the task that its status does not record, found by orphan
    /// collection, by name: (runtime, attempt id). The next pass removes them.
    strays: HashMap<String, (RuntimeKind, String)>,
    /// When a task without a status was first refused a slot, while it has not said so
    /// yet (see `pass::QUIET_WAIT`).
    waiting_unsaid_since: Option<crate::status::Timestamp>,
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
    /// Whether start-up has seen enough to let a task start.
    start: StartGate,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    callbacks: Option<Callbacks>,
    /// Who owns which task, when replicas share the store (see [`ownership`]).
    ownership: Option<Arc<dyn crate::store::ownership::Ownership>>,
    /// The time of day and the randomness of the pipeline (see [`clock`]).
    clock: Arc<dyn clock::Clock>,
    entropy: clock::Entropy,
    /// When this controller first reconciled: scheduled times before it passed while no
    /// controller ran (`missedRuns`).
    since: std::sync::OnceLock<crate::status::Timestamp>,
    /// Parse manifests on the calling task instead of the blocking pool: a thread's
    /// timing would make the simulator's runs differ.
    parse_inline: bool,
    /// Where terminal transitions are reported (`--notify`), if anywhere.
    transitions: Option<Arc<dyn transitions::TransitionSink>>,
    /// Named semaphores shared with the other replicas of the store, when it has any.
    shared_semaphores: Option<Arc<dyn crate::store::ownership::SharedSemaphores>>,
    /// Where `valueFrom` references outside the controller's environment are read.
    secrets: Arc<dyn crate::secrets::SecretSource>,
    /// The latest heartbeat of each live attempt, written by the API (`heartbeatTimeout`).
    heartbeats: Arc<crate::heartbeat::Heartbeats>,
}

/// Whether a task may start a container while start-up has not yet seen every task
/// (see `run`). It may once every task listed with a status has been seen (a container
/// exists only where a status records it, and holds its slot from the first look), and
/// every task seen before it (first come, first served; of two tasks with one name, the
/// first keeps it). In a folder of new tasks the first starts as soon as it is read,
/// not after all of them are.
///
/// Replicas sharing a store wait to catch up before any start, as their claims do
/// (`ownership`): what another replica holds is not known from this one's statuses.
#[derive(Default)]
struct StartGate {
    /// Every task listed at start-up has been reconciled once.
    caught_up: std::sync::atomic::AtomicBool,
    /// Tasks may start before catching up (a lone controller).
    early: std::sync::atomic::AtomicBool,
    /// Tasks listed at start-up with a status, not yet reconciled.
    statuses_unseen: std::sync::atomic::AtomicUsize,
    /// Every task first seen before this order has been reconciled (the task of this
    /// order, the first not yet, may start in its own first pass).
    seen_through: std::sync::atomic::AtomicU64,
}

impl StartGate {
    fn caught_up(&self) -> bool {
        self.caught_up.load(std::sync::atomic::Ordering::Acquire)
    }

    fn may_start(&self, order: u64) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.caught_up()
            || (self.early.load(Acquire)
                && self.statuses_unseen.load(Acquire) == 0
                && order <= self.seen_through.load(Acquire))
    }
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
        let limits = limits.with_semaphores(&config.semaphores);
        let runtimes = runtimes.into_iter().map(|r| (r.kind(), r)).collect();
        Controller {
            shared: Arc::new(Shared {
                ownership: store.ownership(),
                shared_semaphores: store.semaphores().filter(|_| !config.semaphores.is_empty()),
                store,
                runtimes,
                config,
                limits,
                memory: Mutex::new(HashMap::new()),
                order: Mutex::new(HashMap::new()),
                containers: Mutex::new(HashMap::new()),
                names: Mutex::new(Names::default()),
                graph: dependencies::Graph::default(),
                start: StartGate::default(),
                metrics: Arc::new(Metrics::new()),
                health: Arc::new(Health::default()),
                callbacks: None,
                clock: Arc::new(clock::SystemClock),
                entropy: clock::Entropy::from_os(),
                since: std::sync::OnceLock::new(),
                parse_inline: false,
                transitions: None,
                secrets: Arc::new(crate::secrets::NoSecretSource),
                heartbeats: Arc::new(crate::heartbeat::Heartbeats::new()),
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

    /// Reports every terminal transition to `sink` before its status is written.
    pub fn with_transitions(mut self, sink: Arc<dyn transitions::TransitionSink>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.transitions = Some(sink);
        }
        self
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

    /// Reads external secrets (`valueFrom` that is not `env`) from `secrets`. Call it
    /// right after [`Controller::new`].
    pub fn with_secrets(mut self, secrets: Arc<dyn crate::secrets::SecretSource>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.secrets = secrets;
        }
        self
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    pub fn health(&self) -> Arc<Health> {
        self.shared.health.clone()
    }

    /// The heartbeat board the API writes and reconciles read.
    pub fn heartbeats(&self) -> Arc<crate::heartbeat::Heartbeats> {
        self.shared.heartbeats.clone()
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

    /// Drops the task's cached manifest, if it has any memory at all.
    fn forget_validated(&self, key: &TaskKey) {
        let mut memory = self.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(memory) = memory.get_mut(key) {
            memory.validated = None;
        }
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
        Features::enabled(self.runtimes.keys().copied(), self.callbacks.is_some())
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
