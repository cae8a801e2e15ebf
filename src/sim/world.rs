//! The durable state every fake shares (manifests, statuses, containers, leases), the
//! faults they inject, and the invariants checked at the very moment a status is
//! written or a container created. What survives a crash is exactly this; what a
//! controller keeps in memory dies with it.

use super::clock::SimClock;
use crate::controller::clock::Clock;
use crate::runtime::{LABEL_ATTEMPT_ID, LABEL_SPEC_HASH, LABEL_TASK};
use crate::status::{Phase, TaskStatus, Timestamp};
use crate::store::StoreEvent;
use crate::task::TaskKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// How unkind the infrastructure is. Probabilities are per call.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Each call waits up to this long (uniform), before and after its effect.
    pub delay_max: Duration,
    pub store_unavailable: f64,
    /// A write that lands but answers Unavailable (a timeout after the fact).
    pub store_ambiguous: f64,
    /// Every store call fails.
    pub store_outage: bool,
    pub runtime_transient: f64,
    /// A create refused for good (an image that cannot be had).
    pub runtime_permanent: f64,
    /// A create that lands but answers a transient error.
    pub runtime_ambiguous: f64,
    /// A create that succeeds, and whose container the runtime then loses track of.
    pub runtime_lost: f64,
    /// Every runtime call fails transiently (the engine is down).
    pub runtime_outage: bool,
    /// An exit the engine does not report (polling must catch it).
    pub engine_event_drop: f64,
}

impl Faults {
    pub fn none() -> Self {
        Faults::default()
    }
}

/// A manifest as a person left it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub version: u64,
    pub modified: Timestamp,
    /// `spec.parallelism` (the generator keeps it fixed per task), for the limit check.
    pub parallelism: usize,
    /// `spec.semaphores` (fixed per task too), for the semaphore check.
    pub semaphores: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Stored {
    pub status: TaskStatus,
    pub version: u64,
    pub modified: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Container {
    pub task: Option<TaskKey>,
    pub attempt_id: String,
    pub labels: BTreeMap<String, String>,
    pub started: Timestamp,
    /// When it exits on its own.
    pub ends: Timestamp,
    pub exit_code: i32,
    /// The runtime lost track of it: it reports an exit without a code.
    pub lost: bool,
    /// The controller incarnation that made it.
    pub creator: u64,
    /// It POSTs a heartbeat each second while it runs (see `sim::beats`).
    pub beats: bool,
}

impl Container {
    /// Whether it still runs at `now`, as the runtime answers (a lost one says it exited).
    pub fn runs_at(&self, now: Timestamp) -> bool {
        !self.lost && now < self.ends
    }
}

/// A lease on a task, held by a replica (see `FakeOwnership`).
#[derive(Debug, Clone)]
pub struct Lease {
    pub holder: String,
    /// `None` while its holder lives (it renews it); set when the holder dies.
    pub expires: Option<Timestamp>,
}

pub struct State {
    /// The controller incarnations still alive: a call from a dead one (a crashed
    /// controller's leftover task) never returns.
    pub alive: BTreeSet<u64>,
    next_incarnation: u64,
    pub faults: Faults,
    rng: StdRng,
    pub manifests: BTreeMap<TaskKey, Manifest>,
    pub statuses: BTreeMap<TaskKey, Stored>,
    pub next_version: u64,
    pub store_watchers: Vec<(u64, mpsc::UnboundedSender<StoreEvent>)>,
    pub containers: BTreeMap<String, Container>,
    /// Every (container, attempt id) ever created.
    pub created: BTreeSet<(String, String)>,
    pub runtime_watchers: Vec<(u64, mpsc::UnboundedSender<String>)>,
    pub leases: BTreeMap<TaskKey, Lease>,
    /// `--max-running`, and the process runtime's own cap: the lower binds.
    pub max_running: Option<usize>,
    /// `--semaphore NAME=N`: never more than N live containers of tasks naming NAME.
    pub semaphores: BTreeMap<String, usize>,
    /// Replicas share the store: each keeps its own limit, over the tasks it holds.
    pub replicated: bool,
    pub violations: Vec<String>,
    /// A hash of everything that happened, in order: two runs of one seed must agree.
    pub trace: u64,
    /// Per task: the spec hash and phase of its last terminal status, and the highest
    /// attempt written for a spec hash; both forgotten when the status is deleted.
    terminal: BTreeMap<TaskKey, (String, Phase)>,
    attempts: BTreeMap<TaskKey, (String, u32)>,
    /// Attempt id → the exit code recorded for it.
    exit_codes: BTreeMap<String, i32>,
    pub stats: Stats,
    /// Every call, when a replay asks for the whole story (`SKIFF_SIM_VERBOSE=1`).
    pub verbose: bool,
    pub log: Vec<String>,
    /// How containers behave, when a scenario chooses (else the seed does).
    pub behaviour: Option<Behaviour>,
    /// Every container made, in order, when a scenario watches (else `None`: a hundred
    /// thousand schedules keep no history).
    pub creations: Option<Vec<Creation>>,
    /// Every status written, in order, when a scenario watches.
    pub writes: Option<Vec<(TaskKey, TaskStatus)>>,
    /// The most containers that existed at once.
    pub peak: usize,
    /// (container, attempt id) of every attempt recorded in a status a person deleted.
    recorded_then_deleted: BTreeSet<(String, String)>,
    /// (task, spec hash, `SKIFF_SCHEDULED_AT`) → the run (from the container's name) that
    /// ran it: exactly once per scheduled time.
    scheduled_runs: BTreeMap<(TaskKey, String, String), u32>,
    /// Each scheduled task's schedule and `handledThrough` as last written: every time a
    /// write moves it past must be in that write's `runs` (run, or missed), none lost.
    handled: BTreeMap<TaskKey, (String, crate::status::Timestamp)>,
    /// Each live incarnation's heartbeat board, which its API would write.
    pub boards: BTreeMap<u64, Arc<crate::heartbeat::Heartbeats>>,
}

/// How long a container runs and how it exits, chosen from what it was given.
pub type Behaviour = Arc<dyn Fn(&crate::runtime::ContainerSpec) -> (Duration, i32) + Send + Sync>;

/// A container as it was made.
#[derive(Debug, Clone)]
pub struct Creation {
    pub at: Timestamp,
    pub name: String,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub creates: u64,
    pub writes: u64,
    pub crashes: u64,
    /// Containers made for a scheduled task's run (with `SKIFF_SCHEDULED_AT`).
    pub scheduled_creates: u64,
    /// Status writes where an attempt's exit code matched a rule of `spec.onExit`.
    pub exit_rule_writes: u64,
    /// Terminal writes of a fan-out that succeeded with failed indexes (`maxFailedIndexes`).
    pub tolerated_failures: u64,
    /// Of those, runs of a schedule in a time zone (the DST crons).
    pub zoned_scheduled_creates: u64,
    /// Status writes where a run overlapping the top-level one (Allow) has an attempt
    /// failed `HeartbeatTimeout`.
    pub overlapping_heartbeat_timeouts: u64,
}

pub struct World {
    state: Mutex<State>,
    pub clock: Arc<SimClock>,
}

impl World {
    pub fn new(seed: u64, clock: Arc<SimClock>) -> Arc<Self> {
        Arc::new(World {
            state: Mutex::new(State {
                alive: BTreeSet::new(),
                next_incarnation: 1,
                faults: Faults::none(),
                rng: StdRng::seed_from_u64(seed),
                manifests: BTreeMap::new(),
                statuses: BTreeMap::new(),
                next_version: 1,
                store_watchers: Vec::new(),
                containers: BTreeMap::new(),
                created: BTreeSet::new(),
                runtime_watchers: Vec::new(),
                leases: BTreeMap::new(),
                max_running: None,
                semaphores: BTreeMap::new(),
                replicated: false,
                violations: Vec::new(),
                trace: 0xcbf2_9ce4_8422_2325,
                terminal: BTreeMap::new(),
                attempts: BTreeMap::new(),
                exit_codes: BTreeMap::new(),
                stats: Stats::default(),
                verbose: std::env::var_os("SKIFF_SIM_VERBOSE").is_some_and(|v| v == "1"),
                log: Vec::new(),
                behaviour: None,
                creations: None,
                writes: None,
                peak: 0,
                recorded_then_deleted: BTreeSet::new(),
                scheduled_runs: BTreeMap::new(),
                handled: BTreeMap::new(),
                boards: BTreeMap::new(),
            }),
            clock,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Waits as a call to a remote service would: never returns for a dead incarnation.
    pub async fn call(&self, epoch: u64, what: &str) {
        let delay = {
            let mut state = self.lock();
            if !state.alive.contains(&epoch) {
                None
            } else {
                if state.verbose {
                    state.log.push(format!("  [{epoch}]"));
                }
                state.record(what);
                Some(state.delay())
            }
        };
        let Some(delay) = delay else {
            return std::future::pending().await;
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if !self.lock().alive.contains(&epoch) {
            std::future::pending::<()>().await;
        }
    }
}

impl State {
    pub fn record(&mut self, what: &str) {
        if self.verbose {
            self.log.push(format!("    {what}"));
        }
        for byte in what.bytes() {
            self.trace ^= u64::from(byte);
            self.trace = self.trace.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.random_range(0..n) }
    }

    fn delay(&mut self) -> Duration {
        let max = self.faults.delay_max.as_millis() as u64;
        // Most calls are quick; some take the whole allowance.
        if max == 0 || self.chance(0.5) {
            Duration::ZERO
        } else {
            Duration::from_millis(self.below(max + 1))
        }
    }

    pub fn violation(&mut self, message: String) {
        self.violations.push(message);
    }

    pub fn notify_store(&mut self, event: StoreEvent) {
        let alive = &self.alive;
        self.store_watchers
            .retain(|(epoch, tx)| alive.contains(epoch) && tx.send(event.clone()).is_ok());
    }

    pub fn notify_runtime(&mut self, name: &str) {
        let alive = &self.alive;
        self.runtime_watchers
            .retain(|(epoch, tx)| alive.contains(epoch) && tx.send(name.to_string()).is_ok());
    }

    /// A new controller incarnation, alive from now.
    pub fn born(&mut self) -> u64 {
        let epoch = self.next_incarnation;
        self.next_incarnation += 1;
        self.alive.insert(epoch);
        epoch
    }

    /// The incarnation dies: its calls in flight never return, and the leases it held
    /// lapse after `lease` (it no longer renews them).
    pub fn died(&mut self, epoch: u64, now: Timestamp, lease: Duration) {
        self.alive.remove(&epoch);
        self.boards.remove(&epoch);
        self.stats.crashes += 1;
        let holder = epoch.to_string();
        let expires = now + chrono::Duration::from_std(lease).unwrap_or_default();
        for held in self.leases.values_mut().filter(|l| l.holder == holder) {
            held.expires = Some(expires);
        }
    }

    /// Invariants that hold at the moment a status is written.
    pub fn on_status_write(&mut self, key: &TaskKey, new: &TaskStatus) {
        self.stats.writes += 1;
        if let Some(writes) = &mut self.writes {
            writes.push((key.clone(), new.clone()));
        }
        for violation in exit_rule_violations(new) {
            self.violation(format!("{key}: {violation}"));
        }
        if new.attempts.iter().any(|a| a.exit_rule.is_some()) {
            self.stats.exit_rule_writes += 1;
        }
        if new.reason == Some(crate::status::Reason::SucceededWithFailedIndexes) && new.phase == Phase::Succeeded {
            self.stats.tolerated_failures += 1;
        }
        for attempt in new.all_attempts() {
            let Some(id) = attempt.attempt_id() else { continue };
            // An exit code comes from the attempt's own container, never another's.
            if attempt.exit_code.is_some()
                && attempt.completed_by != Some(crate::status::CompletedBy::Event)
                && !self.created.contains(&(attempt.container.clone(), id.clone()))
            {
                let message = format!(
                    "{key}: attempt {} ({}) records exit code {:?} but no container was made for it",
                    attempt.number, attempt.container, attempt.exit_code
                );
                self.violation(message);
            }
            match (self.exit_codes.get(&id), attempt.exit_code) {
                (Some(old), Some(code)) if *old != code => self.violation(format!(
                    "{key}: attempt {} ({}) had exit code {old} recorded, now {code}",
                    attempt.number, attempt.container
                )),
                (Some(old), None) => self.violation(format!(
                    "{key}: attempt {} ({}) had exit code {old} recorded, now none",
                    attempt.number, attempt.container
                )),
                (None, Some(code)) => {
                    self.exit_codes.insert(id, code);
                }
                _ => {}
            }
        }
        self.check_none_lost(key, new);
        self.check_runs_placed(key, new);
        // A scheduled task's status is that of its newest run: each run starts from
        // attempt 1 and ends in its own terminal phase (its runs are checked at each
        // create, by `on_scheduled_run`).
        let scheduled = new.schedule.is_some();
        if let Some((hash, phase)) = self.terminal.get(key)
            && !scheduled
            && *hash == new.spec_hash
            && new.phase != Phase::Invalid
            && new.phase != *phase
        {
            let message = format!(
                "{key}: was {phase} for spec {hash}, now written {} (invariant 3)",
                new.phase
            );
            self.violation(message);
        }
        // A fan-out's `attempt` summarises its lanes; each lane's attempts are checked
        // through their records.
        if let Some((hash, attempt)) = self.attempts.get(key)
            && !scheduled
            && new.indexes.is_empty()
            && *hash == new.spec_hash
            && new.attempt < *attempt
        {
            let message = format!("{key}: attempt went back from {attempt} to {}", new.attempt);
            self.violation(message);
        }
        if scheduled {
            self.attempts.remove(key);
        } else {
            self.attempts.insert(key.clone(), (new.spec_hash.clone(), new.attempt));
        }
        if new.phase.is_terminal() {
            if scheduled {
                self.terminal.remove(key);
            } else {
                self.terminal.insert(key.clone(), (new.spec_hash.clone(), new.phase));
            }
            // Invariant 1 (cleanup: always): no container of its attempts is left.
            let ids: BTreeSet<String> = new.attempts.iter().filter_map(|a| a.attempt_id()).collect();
            let left: Vec<String> = self
                .containers
                .iter()
                .filter(|(_, c)| ids.contains(&c.attempt_id))
                .map(|(name, _)| name.clone())
                .collect();
            if !left.is_empty() {
                let message = format!(
                    "{key}: {} written while container(s) {left:?} still exist (invariant 1)",
                    new.phase
                );
                self.violation(message);
            }
        }
    }

    pub fn on_status_delete(&mut self, key: &TaskKey) {
        self.handled.remove(key);
        self.terminal.remove(key);
        self.attempts.remove(key);
    }

    /// A person deleted the status: a pass that recorded an attempt in it before may
    /// still create its container (it persisted, then acts); that container is then
    /// unrecorded, which orphan collection and the next pass deal with.
    pub fn on_status_deleted_by_person(&mut self, key: &TaskKey, deleted: &TaskStatus) {
        self.on_status_delete(key);
        for attempt in deleted.all_attempts() {
            if let Some(id) = attempt.attempt_id() {
                self.recorded_then_deleted.insert((attempt.container.clone(), id));
            }
        }
    }

    /// Invariants that hold at the moment a container is created.
    pub fn on_create(&mut self, name: &str, container: &Container, now: Timestamp) {
        self.stats.creates += 1;
        let id = container.attempt_id.clone();
        if !self.created.insert((name.to_string(), id.clone())) {
            self.violation(format!("{name}: attempt {id} created a second time (invariant 2)"));
        }
        let Some(key) = container.labels.get(LABEL_TASK).and_then(|t| TaskKey::parse(t).ok()) else {
            self.violation(format!("{name}: created without a task label"));
            return;
        };
        // Persist, then act: the status recorded this very attempt before the create.
        // A scheduled task's overlapping runs (Allow) are runs of their own.
        let recorded = self.statuses.get(&key).is_some_and(|stored| {
            let status = &stored.status;
            let overlapping = status.schedule.iter().flat_map(|s| s.overlapping.iter());
            std::iter::once(status.clone())
                .chain(overlapping.map(|r| r.view(status)))
                .any(|run| {
                    run.phase.has_container()
                        && run
                            .attempts
                            .iter()
                            .any(|a| a.container == name && a.attempt_id().as_deref() == Some(id.as_str()))
                })
        });
        let person_deleted_it = self.recorded_then_deleted.contains(&(name.to_string(), id.clone()));
        if !recorded && !person_deleted_it {
            self.violation(format!(
                "{name}: created before the status recorded attempt {id} (persist, then act)"
            ));
        }
        // Replicas each keep their own limit over the tasks they hold, which this
        // checker cannot attribute yet (leases change hands while slots are held): the
        // limit is checked in schedules of one replica.
        // A container whose status no longer records it (deleted by a person under it)
        // holds no slot: it is the person's until the task's next pass removes it. Nor
        // does one that has exited (as the runtime says): slots bound what runs, and its
        // slot may go to the next container before it is deleted.
        let live = 1 + self
            .containers
            .iter()
            .filter(|(name, c)| self.records(name, c) && c.runs_at(now))
            .count();
        self.peak = self.peak.max(live);
        if !self.replicated
            && let Some(max) = self.max_running
            && live > max
        {
            let names: Vec<&String> = self.containers.keys().collect();
            let message = format!("{name}: {live} containers at once, over the limit of {max} (with {names:?})");
            self.violation(message);
        }
        // Semaphores, in-process for now, are checked in schedules of one replica too.
        let named = match self.replicated {
            true => Vec::new(),
            false => self
                .manifests
                .get(&key)
                .map(|m| m.semaphores.clone())
                .unwrap_or_default(),
        };
        for semaphore in &named {
            let Some(max) = self.semaphores.get(semaphore).copied() else {
                self.violation(format!(
                    "{name}: created for a task naming undefined semaphore {semaphore}"
                ));
                continue;
            };
            let holders = 1 + self
                .containers
                .iter()
                .filter(|(name, c)| {
                    self.records(name, c)
                        && c.runs_at(now)
                        && c.task
                            .as_ref()
                            .and_then(|task| self.manifests.get(task))
                            .is_some_and(|m| m.semaphores.contains(semaphore))
                })
                .count();
            if holders > max {
                self.violation(format!(
                    "{name}: {holders} holders of semaphore {semaphore} at once, over its limit of {max}"
                ));
            }
        }
        if let Some(manifest) = self.manifests.get(&key) {
            // `parallelism` bounds one run: a scheduled task's overlapping runs (Allow)
            // each have their own.
            let run = run_of(&key, name);
            let of_task = 1 + self
                .containers
                .iter()
                .filter(|(other, c)| {
                    c.task.as_ref() == Some(&key) && self.records(other, c) && run_of(&key, other) == run
                })
                .count();
            if of_task > manifest.parallelism {
                let message = format!(
                    "{name}: {of_task} containers of {key} at once, over its parallelism {}",
                    manifest.parallelism
                );
                self.violation(message);
            }
        }
    }

    /// Every scheduled time a status write handles (moves `handledThrough` past) is in
    /// its `runs`, as a run or as missed (one by one, or in a missed range): none is
    /// lost silently, across DST changes too. A suspended schedule's times are skipped
    /// on purpose (its `nextScheduledAt` is then absent), and a changed schedule judges
    /// the new one's times.
    fn check_none_lost(&mut self, key: &TaskKey, new: &TaskStatus) {
        let Some(sched) = &new.schedule else {
            self.handled.remove(key);
            return;
        };
        let before = self
            .handled
            .insert(key.clone(), (sched.cron.clone(), sched.handled_through));
        let Some((cron, prev)) = before else { return };
        if cron != sched.cron || sched.next_scheduled_at.is_none() || sched.handled_through <= prev {
            return;
        }
        let Some(schedule) = schedule_of(&sched.cron) else {
            self.violation(format!("{key}: schedule {:?} in the status does not parse", sched.cron));
            return;
        };
        let (due, _) = schedule.due(prev, sched.handled_through, 10_000);
        let recorded: Vec<String> = new
            .runs
            .iter()
            .map(|r| {
                let from = r.missed_from.map(|f| format!("{}..", crate::status::format_time(&f)));
                format!(
                    "{}{} run {:?} {:?}",
                    from.unwrap_or_default(),
                    crate::status::format_time(&r.scheduled_at),
                    r.run,
                    r.reason
                )
            })
            .collect();
        for t in due {
            let accounted = new
                .runs
                .iter()
                .any(|r| r.scheduled_at == t || r.missed_from.is_some_and(|from| from <= t && t <= r.scheduled_at));
            if !accounted {
                let message = format!(
                    "{key}: scheduled time {} was handled (handledThrough {} -> {}) but is in no run record: lost; runs {recorded:?}",
                    crate::status::format_time(&t),
                    crate::status::format_time(&prev),
                    crate::status::format_time(&sched.handled_through)
                );
                self.violation(message);
            }
        }
    }

    /// A scheduled task's top-level fields (`phase`, `attempts`) are its newest started
    /// run's, and each active run is in exactly one place (the top-level fields or
    /// `schedule.overlapping`): moving a run beside a newer one (Allow) neither loses
    /// nor doubles it.
    fn check_runs_placed(&mut self, key: &TaskKey, new: &TaskStatus) {
        let Some(sched) = &new.schedule else { return };
        let top = sched.current_run.unwrap_or(sched.run_count);
        if sched.run_count > 0 && top != sched.run_count {
            self.violation(format!(
                "{key}: the top-level fields are run {top}'s, not the newest run's ({}): phase {} is not the newest run's",
                sched.run_count, new.phase
            ));
        }
        let mut places: Vec<u32> = sched.overlapping.iter().map(|r| r.run).collect();
        if sched.active.len() > sched.overlapping.len() {
            places.push(top);
        }
        let count = places.len();
        places.sort();
        places.dedup();
        if places.len() != count || sched.active.len() != count.max(sched.overlapping.len()) {
            self.violation(format!(
                "{key}: active runs {places:?} (of {count} places) do not match the active times {:?}",
                sched.active
            ));
        }
    }

    /// A container is made with `SKIFF_SCHEDULED_AT`: no scheduled time of a task runs in
    /// two runs for one spec (its attempts and fan-out indexes share the time).
    pub fn on_scheduled_run(&mut self, name: &str, labels: &BTreeMap<String, String>, scheduled_at: &str) {
        self.stats.scheduled_creates += 1;
        let zoned = labels
            .get(LABEL_TASK)
            .and_then(|t| TaskKey::parse(t).ok())
            .and_then(|key| self.manifests.get(&key))
            .is_some_and(|m| String::from_utf8_lossy(&m.bytes).contains("timeZone: Europe/Paris"));
        if zoned {
            self.stats.zoned_scheduled_creates += 1;
        }
        let Some(key) = labels.get(LABEL_TASK).and_then(|t| TaskKey::parse(t).ok()) else {
            return;
        };
        let hash = labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default();
        let Some(run) = run_of(&key, name) else {
            self.violation(format!(
                "{name}: made with SKIFF_SCHEDULED_AT={scheduled_at} but not named for a run"
            ));
            return;
        };
        // A run started by `skiff trigger` is a run of its own, not a scheduled time's:
        // its time is the trigger's, which may fall within the millisecond of a scheduled
        // time (seed 12825: a trigger 0.9 ms after a scheduled tick, both shown as
        // `...:10.000Z`), and both rightly run.
        let triggered = self.statuses.get(&key).is_some_and(|stored| {
            stored
                .status
                .runs
                .iter()
                .any(|r| r.run == Some(run) && r.reason == Some(crate::status::Reason::ManualTrigger))
        });
        if triggered {
            return;
        }
        match self
            .scheduled_runs
            .get(&(key.clone(), hash.clone(), scheduled_at.to_string()))
        {
            Some(earlier) if *earlier != run => {
                let message = format!(
                    "{key}: scheduled time {scheduled_at} ran in run {earlier} and again in run {run} ({name}) for spec {hash}"
                );
                self.violation(message);
            }
            Some(_) => {}
            None => {
                self.scheduled_runs.insert((key, hash, scheduled_at.to_string()), run);
            }
        }
    }

    /// The container's task's status records its attempt.
    fn records(&self, name: &str, container: &Container) -> bool {
        let Some(task) = &container.task else { return false };
        self.statuses.get(task).is_some_and(|stored| {
            stored
                .status
                .all_attempts()
                .any(|a| a.container == name && a.attempt_id().as_deref() == Some(container.attempt_id.as_str()))
        })
    }

    pub fn container_of(labels: &BTreeMap<String, String>) -> (Option<TaskKey>, String) {
        (
            labels.get(LABEL_TASK).and_then(|t| TaskKey::parse(t).ok()),
            labels.get(LABEL_ATTEMPT_ID).cloned().unwrap_or_default(),
        )
    }
}

/// What `spec.onExit` makes impossible, read from a status alone: an attempt whose code a
/// rule says FailTask or Succeed is the last of its index (the run ended there), and no
/// index takes more uncounted retries than the cap.
fn exit_rule_violations(status: &TaskStatus) -> Vec<String> {
    use crate::manifest::ExitAction;
    let mut found = Vec::new();
    let lanes: BTreeSet<Option<u32>> = status.attempts.iter().map(|a| a.index).collect();
    for lane in lanes {
        let attempts: Vec<_> = status.attempts.iter().filter(|a| a.index == lane).collect();
        let last = attempts.iter().map(|a| a.number).max().unwrap_or(0);
        for attempt in &attempts {
            let Some(rule) = attempt.exit_rule else { continue };
            if matches!(rule.action, ExitAction::FailTask | ExitAction::Succeed) && attempt.number != last {
                found.push(format!(
                    "attempt {} (index {lane:?}) ended by {:?}, yet attempt {last} followed",
                    attempt.number, rule.action
                ));
            }
        }
        let uncounted = attempts
            .iter()
            .filter(|a| {
                a.exit_rule
                    .is_some_and(|r| r.action == ExitAction::RetryUncounted && !r.cap_reached)
            })
            .count();
        if uncounted > crate::controller::reconcile::MAX_UNCOUNTED_RETRIES as usize {
            found.push(format!(
                "index {lane:?} took {uncounted} uncounted retries, past the cap"
            ));
        }
    }
    found
}

/// The run a scheduled task's container belongs to, from its name (`…r<run>-<attempt>`).
fn run_of(key: &TaskKey, name: &str) -> Option<u32> {
    name.strip_prefix(&key.container_prefix())
        .and_then(|rest| rest.strip_prefix('r'))
        .and_then(|rest| rest.split('-').next())
        .and_then(|n| n.parse::<u32>().ok())
}

/// The schedule a status names (`cron`, then the time zone when not UTC).
fn schedule_of(cron: &str) -> Option<crate::schedule::Schedule> {
    match cron.rsplit_once(' ') {
        Some((pattern, zone)) if zone.contains('/') || zone == "UTC" => {
            crate::schedule::Schedule::parse(pattern, Some(zone)).ok()
        }
        _ => crate::schedule::Schedule::parse(cron, None).ok(),
    }
}
