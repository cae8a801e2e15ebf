//! One schedule: a seed becomes a small world (a few tasks, limits, faults, one or two
//! replicas), a sequence of things happening to it (manifests written, edited, broken
//! and deleted, statuses deleted by a person, terminate requests, crashes and restarts,
//! outages, time passing), then a calm period in which everything must settle. The real
//! `Controller` runs throughout, on tokio's paused clock in one thread, so the run is a
//! pure function of the seed.

use super::clock::SimClock;
use super::ownership::{FakeOwnership, LEASE};
use super::runtime::FakeRuntime;
use super::store::FakeStore;
use super::world::{Faults, Manifest, Stats, World};
use crate::controller::{Control, Controller, ControllerConfig};
use crate::manifest::{Features, RuntimeKind, ValidationContext};
use crate::status::Phase;
use crate::store::StoreEvent;
use crate::task::TaskKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a passing schedule reports.
#[derive(Debug, Clone)]
pub struct Passed {
    /// A hash of every call the fakes saw, in order: equal for two runs of one seed.
    pub trace: u64,
    pub stats: Stats,
}

/// What a failing schedule reports: enough to understand it and to replay it.
#[derive(Debug, Clone)]
pub struct Failed {
    pub seed: u64,
    /// Steps left out of the schedule (by a shrink), for the replay.
    pub skipped: Vec<usize>,
    pub violations: Vec<String>,
    /// What happened, step by step, up to the violation.
    pub story: Vec<String>,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} violated:", self.seed)?;
        for violation in &self.violations {
            writeln!(f, "  - {violation}")?;
        }
        writeln!(f, "what happened:")?;
        for line in &self.story {
            writeln!(f, "  {line}")?;
        }
        if self.skipped.is_empty() {
            write!(f, "replay: scripts/simulate --seed {}", self.seed)
        } else {
            let skipped: Vec<String> = self.skipped.iter().map(usize::to_string).collect();
            write!(
                f,
                "replay: scripts/simulate --seed {} --skip {}",
                self.seed,
                skipped.join(",")
            )
        }
    }
}

/// Runs the schedule of `seed` to its end.
pub fn run(seed: u64) -> Result<Passed, Failed> {
    run_skipping(seed, &BTreeSet::new())
}

/// Runs the schedule of `seed` with some of its steps left out: the other steps are
/// drawn as before (each step has its own stream), though what they meet may differ
/// (the world's faults are drawn as calls happen). As exactly replayable as the first.
pub fn run_skipping(seed: u64, skip: &BTreeSet<usize>) -> Result<Passed, Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|err| Failed {
            seed,
            skipped: Vec::new(),
            violations: vec![format!("cannot build a runtime: {err}")],
            story: Vec::new(),
        })?;
    let mut schedule = Schedule::new(seed);
    schedule.skip = skip.clone();
    runtime.block_on(schedule.play())
}

/// Shrinks a failing schedule: leaves out one step at a time, keeping each omission
/// under which the schedule still fails, until no single step more can go. What is left
/// is a shorter story of the same kind of failure (any violation counts).
pub fn shrink(failed: &Failed) -> Failed {
    /// A schedule has fewer steps than this.
    const MOST_STEPS: usize = 40;
    let mut best = failed.clone();
    let mut skip: BTreeSet<usize> = failed.skipped.iter().copied().collect();
    loop {
        let mut smaller = false;
        for step in 0..MOST_STEPS {
            if skip.contains(&step) {
                continue;
            }
            let mut candidate = skip.clone();
            candidate.insert(step);
            if let Err(mut still) = run_skipping(failed.seed, &candidate) {
                still.skipped = candidate.iter().copied().collect();
                skip = candidate;
                best = still;
                smaller = true;
            }
        }
        if !smaller {
            return best;
        }
    }
}

/// One task as the generator knows it.
struct TaskGen {
    completions: u32,
    parallelism: u32,
    edition: u32,
    retries: u32,
    timeout_s: u32,
    poll_s: u32,
    /// The manifest currently written is garbage.
    broken: bool,
    /// It names the semaphore `gpu` (tasks of even number do).
    gpu: bool,
    /// `spec.schedule`'s flow mapping, for a scheduled task.
    schedule: Option<String>,
    suspend: bool,
    /// `spec.onExit`'s flow sequence, over the codes the fake runtime exits with (1 to 3).
    on_exit: Option<String>,
    /// `spec.maxFailedIndexes`, for a fan-out.
    max_failed_indexes: Option<u32>,
}

impl TaskGen {
    fn manifest(&self) -> Vec<u8> {
        if self.broken {
            return b"apiVersion: skiff/v1\nkind: ContainerTask\nspec: [unclosed\n".to_vec();
        }
        let mut text = format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [work]\n  env: [{{name: EDITION, value: \"{}\"}}]\n  retries: {}\n  backoff: 1s\n  timeout: {}s\n  completion: {{mode: poll, pollInterval: {}s}}\n  completions: {}\n  parallelism: {}\n",
            self.edition, self.retries, self.timeout_s, self.poll_s, self.completions, self.parallelism
        );
        if self.gpu {
            text.push_str("  semaphores: [gpu]\n");
        }
        if let Some(rules) = &self.on_exit {
            text.push_str(&format!("  onExit: {rules}\n"));
        }
        if let Some(max) = self.max_failed_indexes.filter(|_| self.completions > 1) {
            text.push_str(&format!("  maxFailedIndexes: {max}\n"));
        }
        // A quarter of the tasks watch heartbeats, which half their fake containers send
        // (`sim::beats`): each silent attempt that outlives the timeout fails HeartbeatTimeout and is retried,
        // and one outliving a crash gets a whole timeout from the new controller's first
        // look. Derived from the drawn fields, so that every seed's draws stay as they were.
        // Beside `concurrencyPolicy: Allow` too: each overlapping run's attempts are
        // watched, and fail, on their own.
        if self.timeout_s % 4 == 0 {
            text.push_str(&format!("  heartbeatTimeout: {}s\n", self.poll_s * 2));
        }
        if let Some(schedule) = &self.schedule {
            text.push_str(&format!("  schedule: {schedule}\n"));
            if self.suspend {
                text.push_str("  suspend: true\n");
            }
        }
        text.into_bytes()
    }

    /// A new task: a third of them scheduled.
    fn random(rng: &mut StdRng, dst: Option<Dst>) -> Self {
        let completions = if rng.random_bool(0.6) {
            1
        } else {
            rng.random_range(2..=3)
        };
        TaskGen {
            completions,
            parallelism: rng.random_range(1..=completions),
            edition: 0,
            retries: rng.random_range(0..=2),
            timeout_s: rng.random_range(5..=60),
            poll_s: rng.random_range(1..=10),
            broken: false,
            schedule: rng.random_bool(0.35).then(|| random_schedule(rng, dst)),
            suspend: false,
            gpu: false,
            on_exit: rng.random_bool(0.3).then(|| random_exit_rules(rng)),
            max_failed_indexes: (completions > 1 && rng.random_bool(0.6)).then(|| rng.random_range(1..completions)),
        }
    }
}

/// Exit-code rules over the fake runtime's failing codes (1 to 3), each code in one rule.
fn random_exit_rules(rng: &mut StdRng) -> String {
    const ACTIONS: [&str; 4] = ["FailTask", "RetryUncounted", "Succeed", "Count"];
    let mut rules = Vec::new();
    for code in 1..=3 {
        if rng.random_bool(0.6) {
            let action = ACTIONS[rng.random_range(0..ACTIONS.len())];
            rules.push(format!("{{exitCodes: [{code}], action: {action}}}"));
        }
    }
    if rules.is_empty() {
        return "[{exitCodes: [2], action: RetryUncounted}]".into();
    }
    format!("[{}]", rules.join(", "))
}

/// A running controller replica.
struct Node {
    epoch: u64,
    handle: tokio::task::JoinHandle<()>,
    control: mpsc::UnboundedSender<Control>,
}

struct Schedule {
    seed: u64,
    rng: StdRng,
    world: Arc<World>,
    config: ControllerConfig,
    replicas: usize,
    faults: Faults,
    tasks: BTreeMap<TaskKey, TaskGen>,
    nodes: Vec<Node>,
    story: Vec<String>,
    /// Steps left out (see [`run_skipping`]).
    skip: BTreeSet<usize>,
    /// The DST change the clock crosses, if it does.
    dst: Option<Dst>,
}

/// A daylight-saving change in Europe/Paris that the simulated clock crosses a minute
/// into the run (two seeds in five, chosen from the seed so that the others' schedules
/// stay as they were): scheduled tasks then get crons at the local times it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dst {
    /// 2027-03-28: 02:00 CET becomes 03:00 CEST (the local hour 2 does not exist).
    Spring,
    /// 2027-10-31: 03:00 CEST becomes 02:00 CET (the local hour 2 happens twice).
    Fall,
}

impl Dst {
    pub(super) fn for_seed(seed: u64) -> Option<Dst> {
        match seed % 5 {
            3 => Some(Dst::Spring),
            4 => Some(Dst::Fall),
            _ => None,
        }
    }

    /// The instant of the change.
    pub(super) fn change(self) -> crate::status::Timestamp {
        let secs = match self {
            Dst::Spring => 1_806_195_600, // 2027-03-28T01:00:00Z
            Dst::Fall => 1_824_944_400,   // 2027-10-31T01:00:00Z
        };
        chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default()
    }

    /// Crons (seconds first) at the local times around the change, in Europe/Paris.
    pub(super) fn crons(self) -> &'static [&'static str] {
        match self {
            Dst::Spring => &[
                // Every 5 s in the minute before the gap.
                "*/5 59 1 * * *",
                // In the gap: a fixed time runs at the first instant after it (03:00 CEST).
                "0 30 2 * * *",
                "0 0 2 * * *",
                // Every 10 s in the two minutes after the gap.
                "*/10 0,1 3 * * *",
                // An interval job whose hour does not exist today.
                "*/15 * 2 * * *",
            ],
            Dst::Fall => &[
                // The minute before the change, which repeats an hour later: an interval
                // job runs in both, a fixed time once.
                "*/10 59 2 * * *",
                "30 59 2 * * *",
                // The repeated 02:00 (its first instance was before the run began).
                "*/10 0,1 2 * * *",
                "0 0 2 * * *",
                // 03:00 CEST no longer comes: the next 03:00 is CET.
                "0 0 3 * * *",
            ],
        }
    }
}

impl Schedule {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let dst = Dst::for_seed(seed);
        let clock = Arc::new(match dst {
            Some(dst) => SimClock::starting_at(dst.change() - chrono::Duration::seconds(60)),
            None => SimClock::new(),
        });
        let world = World::new(rng.random(), clock);
        let max_running = rng.random_bool(0.7).then(|| rng.random_range(1..=4));
        let per_runtime = rng.random_bool(0.3).then(|| rng.random_range(1..=3));
        let config = ControllerConfig {
            default_runtime: RuntimeKind::Process,
            max_running,
            max_running_per_runtime: per_runtime
                .map(|cap| HashMap::from([(RuntimeKind::Process, cap)]))
                .unwrap_or_default(),
            resync: Duration::from_secs(30),
            workers: rng.random_range(1..=4),
            reconcile_timeout: Duration::from_secs(60),
            // From the seed, not the generator: earlier seeds' schedules stay as they were.
            semaphores: BTreeMap::from([("gpu".to_string(), 1 + (seed % 2) as usize)]),
            ..ControllerConfig::default()
        };
        let replicas = if rng.random_bool(0.2) { 2 } else { 1 };
        let mut state = world.lock();
        state.max_running = match (max_running, per_runtime) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        state.replicated = replicas > 1;
        state.semaphores = config.semaphores.clone();
        drop(state);
        let faults = match rng.random_range(0..4) {
            0 => Faults::none(),
            1 => Faults {
                delay_max: Duration::from_millis(rng.random_range(1..2000)),
                ..Faults::none()
            },
            _ => Faults {
                delay_max: Duration::from_millis(rng.random_range(0..1500)),
                store_unavailable: rng.random_range(0.0..0.15),
                store_ambiguous: rng.random_range(0.0..0.1),
                runtime_transient: rng.random_range(0.0..0.15),
                runtime_permanent: rng.random_range(0.0..0.05),
                runtime_ambiguous: rng.random_range(0.0..0.1),
                runtime_lost: rng.random_range(0.0..0.05),
                engine_event_drop: rng.random_range(0.0..0.5),
                ..Faults::none()
            },
        };
        Schedule {
            seed,
            rng,
            world,
            config,
            replicas,
            faults,
            tasks: BTreeMap::new(),
            nodes: Vec::new(),
            story: Vec::new(),
            skip: BTreeSet::new(),
            dst,
        }
    }

    fn say(&mut self, what: String) {
        let at = self.world.now().format("%H:%M:%S%.3f");
        let line = format!("{at} {what}");
        let mut state = self.world.lock();
        if state.verbose {
            state.log.push(line.clone());
        }
        self.story.push(line);
    }

    fn start_node(&mut self) {
        let epoch = self.world.lock().born();
        let ownership = (self.replicas > 1).then(|| {
            Arc::new(FakeOwnership::new(self.world.clone(), epoch)) as Arc<dyn crate::store::ownership::Ownership>
        });
        let store = Arc::new(FakeStore::new(self.world.clone(), epoch, ownership));
        let runtime = Arc::new(FakeRuntime::new(self.world.clone(), epoch));
        let controller = Controller::new(store, vec![runtime], self.config.clone())
            .deterministic(self.world.clock.clone(), self.rng.random());
        // The callback route served, as with --listen: heartbeatTimeout validates, and
        // containers get their URLs (no task completes by event); heartbeats reach the
        // board its API would write (`sim::beats`).
        let (controller, control) = controller.with_api(super::callbacks());
        self.world.lock().boards.insert(epoch, controller.heartbeats());
        let handle = tokio::spawn(async move {
            let _ = controller.run(CancellationToken::new()).await;
        });
        self.say(format!("controller {epoch} starts"));
        self.nodes.push(Node { epoch, handle, control });
    }

    /// The controller dies at whatever await point it is: nothing it held in memory
    /// survives, and none of its calls in flight ever returns.
    fn crash(&mut self, which: usize) {
        let node = self.nodes.remove(which);
        node.handle.abort();
        let now = self.world.now();
        self.world.lock().died(node.epoch, now, LEASE);
        self.say(format!("controller {} crashes", node.epoch));
    }

    fn write_manifest(&mut self, key: &TaskKey) {
        let Some(task) = self.tasks.get(key) else { return };
        let bytes = task.manifest();
        let parallelism = task.parallelism as usize;
        let semaphores = if task.gpu { vec!["gpu".to_string()] } else { Vec::new() };
        let now = self.world.now();
        let notify = !self.rng.random_bool(0.1);
        let mut state = self.world.lock();
        let version = state.next_version;
        state.next_version += 1;
        state.manifests.insert(
            key.clone(),
            Manifest {
                bytes,
                version,
                modified: now,
                parallelism,
                semaphores,
            },
        );
        state.record(&format!("manifest {key} v{version}"));
        if notify {
            state.notify_store(StoreEvent::Changed(key.clone()));
        }
    }

    async fn sleep(&mut self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    fn check(&self) -> Result<(), Failed> {
        let state = self.world.lock();
        if state.violations.is_empty() {
            return Ok(());
        }
        Err(Failed {
            seed: self.seed,
            skipped: self.skip.iter().copied().collect(),
            violations: state.violations.clone(),
            story: self.story(&state),
        })
    }

    async fn step(&mut self) {
        let keys: Vec<TaskKey> = self.tasks.keys().cloned().collect();
        let roll = self.rng.random_range(0..100);
        match roll {
            // A new task, or an edit of one (a new spec hash), or a broken manifest.
            0..=14 => {
                let n = self.rng.random_range(0..5);
                let key = task_key(n);
                let fresh = !self.tasks.contains_key(&key) || !self.world.lock().manifests.contains_key(&key);
                if fresh && !self.tasks.contains_key(&key) {
                    let mut task = TaskGen::random(&mut self.rng, self.dst);
                    task.gpu = n % 2 == 0;
                    self.tasks.insert(key.clone(), task);
                } else if let Some(task) = self.tasks.get_mut(&key) {
                    task.broken = self.rng.random_bool(0.15);
                    if !task.broken {
                        if task.schedule.is_some() && self.rng.random_bool(0.5) {
                            // Only the schedule changes (the spec hash stays): a new one,
                            // or suspended for a while.
                            if self.rng.random_bool(0.5) {
                                task.schedule = Some(random_schedule(&mut self.rng, self.dst));
                            }
                            task.suspend = self.rng.random_bool(0.25);
                        } else {
                            task.edition += 1;
                            task.retries = self.rng.random_range(0..=2);
                        }
                    }
                }
                let (edition, broken) = self.tasks.get(&key).map(|t| (t.edition, t.broken)).unwrap_or_default();
                self.say(format!(
                    "manifest {key} written (edition {edition}{})",
                    if broken { ", broken" } else { "" }
                ));
                self.write_manifest(&key);
            }
            15..=19 if !keys.is_empty() => {
                let key = keys[self.rng.random_range(0..keys.len())].clone();
                self.say(format!("manifest {key} deleted"));
                let mut state = self.world.lock();
                if state.manifests.remove(&key).is_some() {
                    state.record(&format!("manifest {key} deleted"));
                    state.notify_store(StoreEvent::Changed(key));
                }
            }
            20..=24 if !keys.is_empty() => {
                // A person deletes the status: "run it again". Under a live container too:
                // orphan collection finds the container unrecorded and the task's next pass
                // removes it (until then it runs outside the limits, as the person chose).
                let key = keys[self.rng.random_range(0..keys.len())].clone();
                let mut state = self.world.lock();
                if let Some(deleted) = state.statuses.remove(&key) {
                    drop(state);
                    self.say(format!("status {key} deleted by a person"));
                    let mut state = self.world.lock();
                    state.on_status_deleted_by_person(&key, &deleted.status);
                    state.record(&format!("status {key} deleted"));
                    state.notify_store(StoreEvent::Changed(key));
                }
            }
            25..=28 if !keys.is_empty() && !self.nodes.is_empty() => {
                let key = keys[self.rng.random_range(0..keys.len())].clone();
                let node = self.rng.random_range(0..self.nodes.len());
                self.say(format!("terminate {key}"));
                let _ = self.nodes[node].control.send(Control::Terminate(key));
            }
            29..=33 if !self.nodes.is_empty() => {
                let which = self.rng.random_range(0..self.nodes.len());
                self.crash(which);
                if self.rng.random_bool(0.3) {
                    // A long outage: scheduled times pass while no controller runs.
                    let down = Duration::from_millis(self.rng.random_range(10_000..180_000));
                    self.say(format!("no controller for {down:?}"));
                    while !self.nodes.is_empty() {
                        self.crash(0);
                    }
                    self.sleep(down).await;
                }
            }
            34..=38 if self.nodes.len() < self.replicas => self.start_node(),
            34..=38 if !self.nodes.is_empty() => {
                // `skiff trigger` on a scheduled task (an unscheduled one ignores it).
                let scheduled: Vec<TaskKey> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.schedule.is_some())
                    .map(|(k, _)| k.clone())
                    .collect();
                if !scheduled.is_empty() {
                    let key = scheduled[self.rng.random_range(0..scheduled.len())].clone();
                    let node = self.rng.random_range(0..self.nodes.len());
                    self.say(format!("trigger {key}"));
                    let _ = self.nodes[node].control.send(Control::Trigger(key));
                }
            }
            39..=41 => {
                let mut state = self.world.lock();
                state.faults.store_outage = !state.faults.store_outage;
                let on = state.faults.store_outage;
                drop(state);
                self.say(format!("store outage {}", if on { "begins" } else { "ends" }));
            }
            42..=44 => {
                let mut state = self.world.lock();
                state.faults.runtime_outage = !state.faults.runtime_outage;
                let on = state.faults.runtime_outage;
                drop(state);
                self.say(format!("runtime outage {}", if on { "begins" } else { "ends" }));
            }
            45..=74 => {
                let ms = self.rng.random_range(0..300);
                self.sleep(Duration::from_millis(ms)).await;
            }
            _ => {
                let ms = match self.rng.random_range(0..3) {
                    0 => self.rng.random_range(300..3_000),
                    1 => self.rng.random_range(3_000..15_000),
                    _ => self.rng.random_range(15_000..60_000),
                };
                self.sleep(Duration::from_millis(ms)).await;
            }
        }
    }

    async fn play(mut self) -> Result<Passed, Failed> {
        self.world.lock().faults = self.faults.clone();
        let setup = format!(
            "{} replica(s), max-running {:?}, per-runtime {:?}, {} workers, faults {:?}",
            self.replicas,
            self.config.max_running,
            self.config.max_running_per_runtime.get(&RuntimeKind::Process),
            self.config.workers,
            self.faults
        );
        self.say(setup);
        tokio::spawn(super::beats::beat_forever(self.world.clone()));
        let steps = self.rng.random_range(10..40);
        // A few tasks before the first controller starts, the rest while it runs.
        for _ in 0..self.rng.random_range(0..3) {
            self.step_of_kind_manifest();
        }
        self.start_node();
        for step in 0..steps {
            if self.skip.contains(&step) {
                continue;
            }
            // Each step draws from its own stream, so that leaving one out (a shrink)
            // leaves the others as they were.
            self.rng = StdRng::seed_from_u64(self.seed ^ (step as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            self.step().await;
            self.check()?;
        }
        // Calm: the faults stop, the replicas come back, and everything must settle.
        self.world.lock().faults = Faults::none();
        self.say("calm: faults stop".into());
        // Scheduled tasks are suspended, so that they come to rest: a running run
        // carries on to its end, and no new one starts.
        let scheduled: Vec<TaskKey> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.schedule.is_some() && !t.broken)
            .map(|(k, _)| k.clone())
            .collect();
        for key in scheduled {
            let exists = self.world.lock().manifests.contains_key(&key);
            if let Some(task) = self.tasks.get_mut(&key)
                && exists
                && !task.suspend
            {
                task.suspend = true;
                self.say(format!("manifest {key} suspended"));
                self.write_manifest(&key);
            }
        }
        while self.nodes.len() < self.replicas {
            self.start_node();
        }
        // Up to two hours of simulated time: longer than any backoff, deadline or run.
        for _ in 0..240 {
            self.sleep(Duration::from_secs(30)).await;
            self.check()?;
            if self.settled().is_ok() {
                break;
            }
        }
        self.settled()?;
        let state = self.world.lock();
        Ok(Passed {
            trace: state.trace,
            stats: state.stats.clone(),
        })
    }

    fn step_of_kind_manifest(&mut self) {
        let n = self.rng.random_range(0..5);
        let key = task_key(n);
        if self.tasks.contains_key(&key) {
            return;
        }
        let mut task = TaskGen::random(&mut self.rng, self.dst);
        task.gpu = n % 2 == 0;
        self.tasks.insert(key.clone(), task);
        self.say(format!("manifest {key} written before start"));
        self.write_manifest(&key);
    }

    /// What happened: the steps, or with `SKIFF_SIM_VERBOSE=1` every call between them.
    fn story(&self, state: &super::world::State) -> Vec<String> {
        if state.verbose {
            state.log.clone()
        } else {
            self.story.clone()
        }
    }

    /// After the calm: every task with a manifest is final for its current spec, every
    /// task without one is gone, and no container is left.
    fn settled(&self) -> Result<(), Failed> {
        let mut problems = Vec::new();
        let state = self.world.lock();
        for (key, manifest) in &state.manifests {
            let status = state.statuses.get(key).map(|s| &s.status);
            let broken = self.tasks.get(key).is_some_and(|t| t.broken);
            match (status, broken) {
                (None, _) => problems.push(format!("{key}: has a manifest but no status after the calm (lost)")),
                (Some(status), true) if status.phase != Phase::Invalid => problems.push(format!(
                    "{key}: broken manifest, but the status is {} after the calm",
                    status.phase
                )),
                (Some(status), false) if self.tasks.get(key).is_some_and(|t| t.schedule.is_some()) => {
                    // A scheduled task is never final: it rests with no active run, its
                    // phase that of its newest run (or Scheduled before the first).
                    let rests = status.schedule.as_ref().is_some_and(|s| s.active.is_empty())
                        && (status.phase == Phase::Scheduled || status.phase.is_terminal());
                    if !rests {
                        problems.push(format!(
                            "{key}: scheduled, still {} ({:?}: {}) with active runs {:?} after the calm",
                            status.phase,
                            status.reason,
                            status.message.as_deref().unwrap_or(""),
                            status.schedule.as_ref().map(|s| s.active.clone())
                        ));
                    }
                }
                (Some(status), false) => {
                    let hash = spec_hash(key, &manifest.bytes);
                    if !status.phase.is_terminal() || Some(&status.spec_hash) != hash.as_ref() {
                        problems.push(format!(
                            "{key}: still {} ({:?}: {}) for spec {} after the calm (want final for {hash:?})",
                            status.phase,
                            status.reason,
                            status.message.as_deref().unwrap_or(""),
                            status.spec_hash
                        ));
                    }
                }
                _ => {}
            }
        }
        for key in state.statuses.keys() {
            if !state.manifests.contains_key(key) {
                problems.push(format!(
                    "{key}: its manifest is gone but its status remains after the calm"
                ));
            }
        }
        for (name, container) in &state.containers {
            problems.push(format!(
                "{name}: container (attempt {}) outlives its task after the calm",
                container.attempt_id
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        let mut story = self.story(&state);
        story.extend(state.statuses.iter().map(|(k, s)| {
            format!(
                "final status {k}: {} attempt {} {:?} {:?}",
                s.status.phase, s.status.attempt, s.status.reason, s.status.message
            )
        }));
        Err(Failed {
            seed: self.seed,
            skipped: self.skip.iter().copied().collect(),
            violations: problems,
            story,
        })
    }
}

/// A schedule of a few seconds, with any policy and way of catching up; across a DST
/// change, half of them at the local times it moves.
fn random_schedule(rng: &mut StdRng, dst: Option<Dst>) -> String {
    let zoned = dst
        .filter(|_| rng.random_bool(0.5))
        .map(|dst| dst.crons()[rng.random_range(0..dst.crons().len())]);
    let every = ["5s", "7s"][rng.random_range(0..2)];
    let policy = ["Forbid", "Replace", "Allow"][rng.random_range(0..3)];
    let missed = ["skip", "latest", "all"][rng.random_range(0..3)];
    let deadline = if rng.random_bool(0.3) {
        format!(", startingDeadline: {}s", rng.random_range(1..=30))
    } else {
        String::new()
    };
    let history = rng.random_range(1..=5);
    let cron = match zoned {
        Some(cron) => format!("'{cron}', timeZone: Europe/Paris"),
        None => format!("'@every {every}'"),
    };
    format!("{{cron: {cron}, concurrencyPolicy: {policy}, missedRuns: {missed}{deadline}, historyLimit: {history}}}")
}

/// Task `n`: some at the root, some in a folder.
fn task_key(n: u32) -> TaskKey {
    let name = if n % 2 == 0 {
        format!("t{n}")
    } else {
        format!("jobs/t{n}")
    };
    TaskKey::parse(&name).expect("the simulator's task names are valid keys")
}

/// The spec hash the controller computes for these bytes.
fn spec_hash(key: &TaskKey, bytes: &[u8]) -> Option<String> {
    validated(key, bytes).map(|spec| spec.spec_hash)
}

/// The manifest as the controller validates it (the simulator's runtime is the
/// process runtime), for the checks that need the spec.
pub(super) fn validated(key: &TaskKey, bytes: &[u8]) -> Option<crate::manifest::TaskSpec> {
    let file = format!("{key}.yaml");
    let stem = key.as_str().rsplit('/').next().unwrap_or(key.as_str());
    let task = crate::manifest::parse_manifest(&file, bytes).ok()?;
    let ctx = ValidationContext {
        default_runtime: RuntimeKind::Process,
        allow_host_paths: &[],
        features: Features::CURRENT,
        env_is_set: None,
    };
    crate::manifest::validate(&file, stem, &task, &ctx).ok()
}
