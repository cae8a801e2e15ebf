//! Concurrency limits: `--max-running` and the per-runtime caps (`--max-running-docker`,
//! ...), a slot per live container, served first come, first served by the time each
//! task was first seen (DESIGN.md §8).
//!
//! A task holds its slot from the moment it decides to create a container until that
//! container is gone. A freed slot is offered to the longest-waiting task, and a newer
//! task cannot take it first, so no task starves behind a stream of new ones.

use super::reconcile::Slot;
use crate::manifest::RuntimeKind;
use crate::task::TaskKey;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// A unit's relation to the limit after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Its container may exist: it holds a slot.
    Live,
    /// It waits for a slot (reason `WaitingForSlot`).
    Waiting,
    /// Neither: done, backing off, invalid or removed.
    Idle,
}

/// What holds a slot: one container of a task. A task of one completion is lane 0; a
/// fan-out has a lane per index, all sharing the task's place in line.
pub type Lane = u32;

pub struct Limits {
    name: String,
    max: Option<usize>,
    state: Mutex<State>,
    /// Tasks to reconcile because a slot may be theirs now.
    wake: mpsc::UnboundedSender<TaskKey>,
}

#[derive(Default)]
struct State {
    holders: HashMap<TaskKey, BTreeSet<Lane>>,
    held: usize,
    /// (first-seen order, lane, task)
    waiters: BTreeSet<(u64, Lane, TaskKey)>,
    /// Waiters woken whose task has not come back to this limit since: each release
    /// would wake the head of the line again, and a pass of it already running would
    /// then run twice (ARCHITECTURE.md, "One wake per turn in line").
    told: BTreeSet<(u64, Lane, TaskKey)>,
}

impl State {
    fn holds(&self, key: &TaskKey, lane: Lane) -> bool {
        self.holders.get(key).is_some_and(|lanes| lanes.contains(&lane))
    }

    fn hold(&mut self, key: &TaskKey, lane: Lane) {
        if self.holders.entry(key.clone()).or_default().insert(lane) {
            self.held += 1;
        }
    }

    /// The task is back at this limit: a later release may wake it again.
    fn heard_from(&mut self, key: &TaskKey, lane: Lane, order: u64) {
        self.told.remove(&(order, lane, key.clone()));
    }

    fn release(&mut self, key: &TaskKey, lane: Lane) -> bool {
        let Some(lanes) = self.holders.get_mut(key) else {
            return false;
        };
        let released = lanes.remove(&lane);
        if lanes.is_empty() {
            self.holders.remove(key);
        }
        if released {
            self.held -= 1;
        }
        released
    }
}

impl Limits {
    pub fn new(name: &str, max: Option<usize>) -> (Self, mpsc::UnboundedReceiver<TaskKey>) {
        let (wake, woken) = mpsc::unbounded_channel();
        (Self::with_wake(name, max, wake), woken)
    }

    fn with_wake(name: &str, max: Option<usize>, wake: mpsc::UnboundedSender<TaskKey>) -> Self {
        Limits {
            name: name.to_string(),
            max,
            state: Mutex::new(State::default()),
            wake,
        }
    }

    /// Reserves a slot for the lane if one is free and no earlier lane waits for it.
    pub fn try_acquire(&self, key: &TaskKey, lane: Lane, order: u64) -> Slot {
        let Ok(mut state) = self.state.lock() else {
            return Slot::Granted;
        };
        state.heard_from(key, lane, order);
        if state.holds(key, lane) {
            // A lane keeps its slot from one container to the next (a spec change's
            // restart), unless the limit is overdrawn: a container taken over beyond
            // it (from a dead replica, or a lowered limit) holds a slot while it lives,
            // but its successor waits its turn like anyone.
            if self.max.is_none_or(|max| state.held <= max) {
                return Slot::Granted;
            }
            state.release(key, lane);
        }
        let Some(max) = self.max else {
            state.hold(key, lane);
            return Slot::Granted;
        };
        let free = max.saturating_sub(state.held);
        let me = (order, lane, key.clone());
        let ahead = state.waiters.range(..&me).count();
        if ahead < free {
            state.waiters.remove(&me);
            state.hold(key, lane);
            return Slot::Granted;
        }
        state.waiters.insert(me);
        // Every slot is held, or promised to a lane ahead in line: the limit is in full use.
        let in_use = state.held + ahead.min(free);
        Slot::Full {
            limit: format!("{} {in_use}/{max}", self.name),
        }
    }

    /// Records where a lane stands after its reconcile. A live container always holds a
    /// slot, even beyond the limit (one adopted after a restart, say); a waiting lane
    /// keeps its place in the line; any other frees its slot or place for the next.
    pub fn settle(&self, key: &TaskKey, lane: Lane, standing: Standing, order: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.heard_from(key, lane, order);
        match standing {
            Standing::Live => {
                state.waiters.remove(&(order, lane, key.clone()));
                state.hold(key, lane);
                return;
            }
            Standing::Waiting => return,
            Standing::Idle => {}
        }
        let was_holding = state.release(key, lane);
        let was_waiting = state.waiters.remove(&(order, lane, key.clone()));
        if was_holding || was_waiting {
            self.wake_waiters(&mut state);
        }
    }

    /// A live lane of a task that no longer names this limit: it keeps the slot it holds
    /// (its container still lives), but gives up any place in line.
    fn keep_if_held(&self, key: &TaskKey, lane: Lane, order: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.heard_from(key, lane, order);
        if state.waiters.remove(&(order, lane, key.clone())) {
            self.wake_waiters(&mut state);
        }
    }

    /// Puts the lane in line without asking for a slot yet.
    fn enqueue(&self, key: &TaskKey, lane: Lane, order: u64) {
        if self.max.is_none() {
            return;
        }
        if let Ok(mut state) = self.state.lock() {
            state.heard_from(key, lane, order);
            if !state.holds(key, lane) {
                state.waiters.insert((order, lane, key.clone()));
            }
        }
    }

    /// The lanes of `key` holding a slot or a place in line, to settle each.
    fn lanes_of(&self, key: &TaskKey, order: u64) -> BTreeSet<Lane> {
        let Ok(state) = self.state.lock() else {
            return BTreeSet::new();
        };
        let mut lanes = state.holders.get(key).cloned().unwrap_or_default();
        lanes.extend(
            state
                .waiters
                .range((order, 0, key.clone())..)
                .take_while(|(o, _, k)| *o == order && k == key)
                .map(|(_, lane, _)| *lane),
        );
        lanes
    }

    /// Wakes the first in line that a free slot may be theirs: at the end of start-up,
    /// when the line was formed while nobody could start.
    fn wake_free(&self) {
        if let Ok(mut state) = self.state.lock() {
            self.wake_waiters(&mut state);
        }
    }

    /// Whether a lane of the task waits in this limit's line.
    fn has_in_line(&self, key: &TaskKey, order: u64) -> bool {
        let Ok(state) = self.state.lock() else {
            return false;
        };
        state
            .waiters
            .range((order, 0, key.clone())..)
            .next()
            .is_some_and(|(o, _, k)| *o == order && k == key)
    }

    /// Slots in use, for metrics and status messages.
    pub fn in_use(&self) -> usize {
        self.state.lock().map(|s| s.held).unwrap_or(0)
    }

    /// Wakes the waiters a free slot may be theirs, but none already woken that has not
    /// come back since: its coming pass will see this release too.
    fn wake_waiters(&self, state: &mut State) {
        let free = match self.max {
            Some(max) => max.saturating_sub(state.held),
            None => state.waiters.len(),
        };
        let State { waiters, told, .. } = state;
        for waiter in waiters.iter().take(free) {
            if told.insert(waiter.clone()) {
                let _ = self.wake.send(waiter.2.clone());
            }
        }
    }
}

/// `--create-rate 100/5m`: at most that many creates per period, in a burst or spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateRate {
    pub creates: NonZeroU32,
    pub per: Duration,
}

impl std::str::FromStr for CreateRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let fix = "write it as CREATES/PERIOD, e.g. 100/5m";
        let (creates, per) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a rate; {fix}"))?;
        let creates = creates
            .trim()
            .parse::<NonZeroU32>()
            .map_err(|_| format!("{creates:?} is not a positive number of creates; {fix}"))?;
        let per =
            humantime::parse_duration(per.trim()).map_err(|err| format!("{per:?} is not a period ({err}); {fix}"))?;
        if per.is_zero() {
            return Err(format!("the period cannot be zero; {fix}"));
        }
        Ok(CreateRate { creates, per })
    }
}

impl std::fmt::Display for CreateRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.creates, humantime::format_duration(self.per))
    }
}

/// A token bucket of [`CreateRate`]: full at first, refilled one token every `per /
/// creates`. `governor` does the arithmetic (GCRA), which keeps no timer running.
struct CreateBucket {
    name: String,
    limiter: RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>,
    clock: DefaultClock,
}

impl CreateBucket {
    fn new(runtime: RuntimeKind, rate: CreateRate) -> Option<Self> {
        let quota = Quota::with_period(rate.per / rate.creates.get())?.allow_burst(rate.creates);
        let clock = DefaultClock::default();
        Some(CreateBucket {
            name: format!("create-rate-{runtime} {rate}"),
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        })
    }

    /// Takes a token, or says how long until the next one.
    fn take(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// The global limit, each runtime's own cap, and each runtime's create rate: a lane
/// holds a slot in both limits, or in neither, and takes a create token to start.
pub struct Slots {
    global: Limits,
    runtimes: HashMap<RuntimeKind, Limits>,
    rates: HashMap<RuntimeKind, CreateBucket>,
    /// `--semaphore NAME=N`: a lane of a task naming one holds a slot of each it names.
    semaphores: BTreeMap<String, Limits>,
    /// The semaphores each task names (its current spec's), set by every pass.
    named: Mutex<HashMap<TaskKey, Vec<String>>>,
    wake: mpsc::UnboundedSender<TaskKey>,
}

impl Slots {
    pub fn new(
        global: Option<usize>,
        per_runtime: &HashMap<RuntimeKind, usize>,
        rates: &HashMap<RuntimeKind, CreateRate>,
    ) -> (Self, mpsc::UnboundedReceiver<TaskKey>) {
        let (wake, woken) = mpsc::unbounded_channel();
        let runtimes = per_runtime
            .iter()
            .map(|(kind, max)| {
                (
                    *kind,
                    Limits::with_wake(&format!("max-running-{kind}"), Some(*max), wake.clone()),
                )
            })
            .collect();
        let rates = rates
            .iter()
            .filter_map(|(kind, rate)| Some((*kind, CreateBucket::new(*kind, *rate)?)))
            .collect();
        let global = Limits::with_wake("max-running", global, wake.clone());
        (
            Slots {
                global,
                runtimes,
                rates,
                semaphores: BTreeMap::new(),
                named: Mutex::new(HashMap::new()),
                wake,
            },
            woken,
        )
    }

    /// Adds the named semaphores, each a limit of its own (`semaphore gpu 2/2`).
    pub fn with_semaphores(mut self, semaphores: &BTreeMap<String, usize>) -> Self {
        self.semaphores = semaphores
            .iter()
            .map(|(name, max)| {
                let limits = Limits::with_wake(&format!("semaphore {name}"), Some(*max), self.wake.clone());
                (name.clone(), limits)
            })
            .collect();
        self
    }

    /// Records the semaphores the task's current spec names (none for a task that is not
    /// valid): what its lanes ask for and hold from now on.
    pub fn set_semaphores(&self, key: &TaskKey, names: &[String]) {
        if let Ok(mut named) = self.named.lock() {
            if names.is_empty() {
                named.remove(key);
            } else {
                named.insert(key.clone(), names.to_vec());
            }
        }
    }

    /// The defined semaphores the task names, in name order: every task takes them in
    /// the same order.
    fn semaphores_of(&self, key: &TaskKey) -> Vec<&Limits> {
        let named = self.names_of(key);
        self.semaphores
            .iter()
            .filter(|(name, _)| named.contains(name))
            .map(|(_, limits)| limits)
            .collect()
    }

    fn names_of(&self, key: &TaskKey) -> Vec<String> {
        self.named
            .lock()
            .ok()
            .and_then(|named| named.get(key).cloned())
            .unwrap_or_default()
    }

    /// Slots of semaphore `name` held, for metrics and tests.
    pub fn semaphore_in_use(&self, name: &str) -> Option<usize> {
        self.semaphores.get(name).map(Limits::in_use)
    }

    /// The runtime's cap first, then the global one, then a create token; a lane
    /// refused by a later one gives back what it got from the earlier. With a refusal
    /// by the create rate comes the time until the next token.
    ///
    /// The task's semaphores come first, in name order, each taken or all given back
    /// (a lane never waits holding a semaphore, so two tasks naming the same ones can
    /// never hold each other up).
    pub fn try_acquire(&self, key: &TaskKey, lane: Lane, order: u64, runtime: RuntimeKind) -> (Slot, Option<Duration>) {
        let semaphores = self.semaphores_of(key);
        for (taken, semaphore) in semaphores.iter().enumerate() {
            let slot = semaphore.try_acquire(key, lane, order);
            if slot != Slot::Granted {
                for earlier in &semaphores[..taken] {
                    earlier.settle(key, lane, Standing::Idle, order);
                }
                return (slot, None);
            }
        }
        let give_back_semaphores = || {
            for semaphore in &semaphores {
                semaphore.settle(key, lane, Standing::Idle, order);
            }
        };
        let own = self.runtimes.get(&runtime);
        if let Some(own) = own {
            let slot = own.try_acquire(key, lane, order);
            if slot != Slot::Granted {
                give_back_semaphores();
                return (slot, None);
            }
        }
        let slot = self.global.try_acquire(key, lane, order);
        if slot != Slot::Granted {
            if let Some(own) = own {
                own.settle(key, lane, Standing::Idle, order);
            }
            give_back_semaphores();
            return (slot, None);
        }
        let Some(bucket) = self.rates.get(&runtime) else {
            return (Slot::Granted, None);
        };
        match bucket.take() {
            Ok(()) => (Slot::Granted, None),
            Err(wait) => {
                // Given back without waking anyone: the next token is as far for them.
                self.give_back(key, lane, order, own);
                let limit = format!(
                    "{} (next in {})",
                    bucket.name,
                    humantime::format_duration(round_up_to_ms(wait))
                );
                (Slot::Full { limit }, Some(wait))
            }
        }
    }

    /// Puts a lane in line for its runtime's cap and the global limit before it asks:
    /// at start-up every task is put in line in first-seen order before any asks, so
    /// the order in which their reconciles happen to run does not matter.
    pub fn enqueue(&self, key: &TaskKey, lane: Lane, order: u64, runtime: RuntimeKind) {
        self.global.enqueue(key, lane, order);
        if let Some(own) = self.runtimes.get(&runtime) {
            own.enqueue(key, lane, order);
        }
        for semaphore in self.semaphores_of(key) {
            semaphore.enqueue(key, lane, order);
        }
    }

    fn give_back(&self, key: &TaskKey, lane: Lane, order: u64, own: Option<&Limits>) {
        let semaphores = self.semaphores_of(key);
        for limits in std::iter::once(&self.global).chain(own).chain(semaphores) {
            if let Ok(mut state) = limits.state.lock() {
                state.heard_from(key, lane, order);
                state.release(key, lane);
                state.waiters.remove(&(order, lane, key.clone()));
            }
        }
    }

    /// At the end of start-up: wakes, in each limit, the first in line that a free slot
    /// may be theirs. The others are woken as slots free, one release at a time.
    pub fn wake_free(&self) {
        for limits in self.all() {
            limits.wake_free();
        }
    }

    /// Whether a lane of the task waits in the line of some limit, so that it will be
    /// woken when a slot may be its.
    pub fn in_line(&self, key: &TaskKey, order: u64) -> bool {
        self.all().any(|limits| limits.has_in_line(key, order))
    }

    fn all(&self) -> impl Iterator<Item = &Limits> {
        std::iter::once(&self.global)
            .chain(self.runtimes.values())
            .chain(self.semaphores.values())
    }

    /// Settles every lane of a task after its reconcile: the live ones hold a slot of
    /// their container's runtime, the waiting ones keep their place, and any other lane
    /// the task held or waited with is let go.
    ///
    /// A live lane holds a slot of each semaphore its task names, and keeps one it holds
    /// of a semaphore the task no longer names (its spec changed under a container still
    /// alive) until that container is gone.
    pub fn settle_task(&self, key: &TaskKey, order: u64, lanes: &[(Lane, Standing, Option<RuntimeKind>)]) {
        let mut known: BTreeSet<Lane> = self.global.lanes_of(key, order);
        for limits in self.runtimes.values().chain(self.semaphores.values()) {
            known.extend(limits.lanes_of(key, order));
        }
        let named = self.names_of(key);
        for (lane, standing, runtime) in lanes {
            known.remove(lane);
            self.global.settle(key, *lane, *standing, order);
            for (kind, limits) in &self.runtimes {
                let standing = match standing {
                    Standing::Live if Some(*kind) != *runtime => Standing::Idle,
                    other => *other,
                };
                limits.settle(key, *lane, standing, order);
            }
            for (name, semaphore) in &self.semaphores {
                if named.contains(name) {
                    semaphore.settle(key, *lane, *standing, order);
                } else if *standing == Standing::Live {
                    semaphore.keep_if_held(key, *lane, order);
                } else {
                    semaphore.settle(key, *lane, Standing::Idle, order);
                }
            }
        }
        for lane in known {
            self.global.settle(key, lane, Standing::Idle, order);
            for limits in self.runtimes.values().chain(self.semaphores.values()) {
                limits.settle(key, lane, Standing::Idle, order);
            }
        }
    }
}

fn round_up_to_ms(wait: Duration) -> Duration {
    Duration::from_millis(wait.as_millis() as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> TaskKey {
        TaskKey::new(s)
    }

    #[test]
    fn a_waiter_is_woken_once_until_it_comes_back() {
        let (limits, mut woken) = Limits::new("max-running", Some(2));
        for (name, order) in [("a", 1), ("b", 2), ("c", 3)] {
            limits.try_acquire(&key(name), 0, order);
        }
        limits.settle(&key("c"), 0, Standing::Waiting, 3);
        // Two releases before "c" comes back: one wake, not a second pass of it.
        limits.settle(&key("a"), 0, Standing::Idle, 1);
        limits.settle(&key("b"), 0, Standing::Idle, 2);
        assert_eq!(woken.try_recv().unwrap(), key("c"));
        assert!(woken.try_recv().is_err(), "woken twice");
        // Back, and refused again (two tasks ahead of it in line took the slots): the
        // next release wakes it again.
        assert_eq!(limits.try_acquire(&key("d"), 0, 0), Slot::Granted);
        assert_eq!(limits.try_acquire(&key("e"), 0, 0), Slot::Granted);
        assert!(matches!(limits.try_acquire(&key("c"), 0, 3), Slot::Full { .. }));
        limits.settle(&key("c"), 0, Standing::Waiting, 3);
        limits.settle(&key("d"), 0, Standing::Idle, 0);
        assert_eq!(woken.try_recv().unwrap(), key("c"));
    }

    #[test]
    fn slots_go_to_the_longest_waiting_task() {
        let (limits, mut woken) = Limits::new("max-running", Some(1));
        assert_eq!(limits.try_acquire(&key("a"), 0, 1), Slot::Granted);
        assert_eq!(
            limits.try_acquire(&key("b"), 0, 2),
            Slot::Full {
                limit: "max-running 1/1".into()
            }
        );
        assert!(matches!(limits.try_acquire(&key("c"), 0, 3), Slot::Full { .. }));
        // A waiting task that stays waiting keeps its place.
        limits.settle(&key("b"), 0, Standing::Waiting, 2);
        limits.settle(&key("a"), 0, Standing::Idle, 1);
        assert_eq!(woken.try_recv().unwrap(), key("b"));
        // "c" came later, so it cannot take the slot that "b" waits for.
        assert!(matches!(limits.try_acquire(&key("c"), 0, 3), Slot::Full { .. }));
        assert_eq!(limits.try_acquire(&key("b"), 0, 2), Slot::Granted);
        assert_eq!(limits.in_use(), 1);
    }

    #[test]
    fn a_runtime_cap_holds_a_task_back_and_names_itself() {
        let caps = HashMap::from([(RuntimeKind::Docker, 1)]);
        let (slots, _woken) = Slots::new(Some(10), &caps, &HashMap::new());
        assert_eq!(slots.try_acquire(&key("a"), 0, 1, RuntimeKind::Docker).0, Slot::Granted);
        assert_eq!(
            slots.try_acquire(&key("b"), 0, 2, RuntimeKind::Docker).0,
            Slot::Full {
                limit: "max-running-docker 1/1".into()
            }
        );
        // Other runtimes are not held back by docker's cap.
        assert_eq!(
            slots.try_acquire(&key("c"), 0, 3, RuntimeKind::Process).0,
            Slot::Granted
        );
        slots.settle_task(&key("a"), 1, &[]);
        assert_eq!(slots.try_acquire(&key("b"), 0, 2, RuntimeKind::Docker).0, Slot::Granted);
    }

    #[test]
    fn a_task_refused_by_the_global_limit_gives_back_its_runtime_slot() {
        let caps = HashMap::from([(RuntimeKind::Docker, 5)]);
        let (slots, _woken) = Slots::new(Some(1), &caps, &HashMap::new());
        assert_eq!(
            slots.try_acquire(&key("a"), 0, 1, RuntimeKind::Process).0,
            Slot::Granted
        );
        assert_eq!(
            slots.try_acquire(&key("b"), 0, 2, RuntimeKind::Docker).0,
            Slot::Full {
                limit: "max-running 1/1".into()
            }
        );
        assert_eq!(slots.runtimes[&RuntimeKind::Docker].in_use(), 0);
    }

    #[test]
    fn lanes_of_a_fan_out_each_take_a_slot_in_the_tasks_place_in_line() {
        let (slots, _woken) = Slots::new(Some(3), &HashMap::new(), &HashMap::new());
        assert_eq!(
            slots.try_acquire(&key("late"), 0, 5, RuntimeKind::Process).0,
            Slot::Granted
        );
        for lane in 0..2 {
            assert_eq!(
                slots.try_acquire(&key("fan"), lane, 1, RuntimeKind::Process).0,
                Slot::Granted
            );
        }
        // The line is full: the fan-out's third lane waits, ahead of a later task.
        assert!(matches!(
            slots.try_acquire(&key("fan"), 2, 1, RuntimeKind::Process).0,
            Slot::Full { .. }
        ));
        assert!(matches!(
            slots.try_acquire(&key("later"), 0, 6, RuntimeKind::Process).0,
            Slot::Full { .. }
        ));
        slots.settle_task(&key("late"), 5, &[]);
        assert!(matches!(
            slots.try_acquire(&key("later"), 0, 6, RuntimeKind::Process).0,
            Slot::Full { .. }
        ));
        assert_eq!(
            slots.try_acquire(&key("fan"), 2, 1, RuntimeKind::Process).0,
            Slot::Granted
        );
        assert_eq!(slots.global.in_use(), 3);
        // Settling the task with one live lane lets the other two go.
        slots.settle_task(&key("fan"), 1, &[(1, Standing::Live, Some(RuntimeKind::Process))]);
        assert_eq!(slots.global.in_use(), 1);
        assert_eq!(
            slots.try_acquire(&key("later"), 0, 6, RuntimeKind::Process).0,
            Slot::Granted
        );
    }

    #[test]
    fn the_create_rate_holds_back_the_next_create_and_says_when() {
        let rates = HashMap::from([(RuntimeKind::Docker, "2/1h".parse::<CreateRate>().unwrap())]);
        let (slots, _woken) = Slots::new(None, &HashMap::new(), &rates);
        for (n, task) in ["a", "b"].iter().enumerate() {
            assert_eq!(
                slots.try_acquire(&key(task), 0, n as u64, RuntimeKind::Docker).0,
                Slot::Granted
            );
        }
        let (slot, wait) = slots.try_acquire(&key("c"), 0, 3, RuntimeKind::Docker);
        let Slot::Full { limit } = slot else {
            panic!("the bucket is empty")
        };
        assert!(limit.starts_with("create-rate-docker 2/1h"), "{limit}");
        let wait = wait.expect("says when the next token comes");
        assert!(
            wait > Duration::from_secs(25 * 60) && wait <= Duration::from_secs(30 * 60),
            "{wait:?}"
        );
        // It gave back the slot it could not use, and other runtimes are not held back.
        assert_eq!(slots.global.in_use(), 2);
        assert_eq!(
            slots.try_acquire(&key("d"), 0, 4, RuntimeKind::Process).0,
            Slot::Granted
        );
    }

    #[test]
    fn lanes_put_in_line_before_asking_are_served_in_line_order() {
        let (slots, _woken) = Slots::new(Some(1), &HashMap::new(), &HashMap::new());
        for order in [3, 1, 2] {
            slots.enqueue(&key(&format!("t{order}")), 0, order, RuntimeKind::Process);
        }
        // The reconciles run in any order; only the first in line gets the slot.
        assert!(matches!(
            slots.try_acquire(&key("t3"), 0, 3, RuntimeKind::Process).0,
            Slot::Full { .. }
        ));
        assert!(matches!(
            slots.try_acquire(&key("t2"), 0, 2, RuntimeKind::Process).0,
            Slot::Full { .. }
        ));
        assert_eq!(
            slots.try_acquire(&key("t1"), 0, 1, RuntimeKind::Process).0,
            Slot::Granted
        );
    }

    #[test]
    fn create_rates_parse_and_refuse_nonsense() {
        let rate: CreateRate = "100/5m".parse().unwrap();
        assert_eq!((rate.creates.get(), rate.per), (100, Duration::from_secs(300)));
        for bad in ["100", "0/5m", "x/5m", "10/soon", "10/0s"] {
            let err = bad.parse::<CreateRate>().unwrap_err();
            assert!(err.contains("e.g. 100/5m"), "{bad}: {err}");
        }
    }

    fn gpu(max: usize) -> Slots {
        let (slots, _woken) = Slots::new(None, &HashMap::new(), &HashMap::new());
        let defs = BTreeMap::from([("gpu".to_string(), max), ("db".to_string(), 1)]);
        slots.with_semaphores(&defs)
    }

    #[test]
    fn a_semaphore_admits_its_limit_and_says_so() {
        let slots = gpu(2);
        for task in ["a", "b", "c"] {
            slots.set_semaphores(&key(task), &["gpu".to_string()]);
        }
        assert_eq!(
            slots.try_acquire(&key("a"), 0, 1, RuntimeKind::Process).0,
            Slot::Granted
        );
        assert_eq!(
            slots.try_acquire(&key("b"), 0, 2, RuntimeKind::Process).0,
            Slot::Granted
        );
        assert_eq!(
            slots.try_acquire(&key("c"), 0, 3, RuntimeKind::Process).0,
            Slot::Full {
                limit: "semaphore gpu 2/2".into()
            }
        );
        // A task naming no semaphore is not held back.
        assert_eq!(
            slots.try_acquire(&key("free"), 0, 4, RuntimeKind::Process).0,
            Slot::Granted
        );
        slots.settle_task(&key("a"), 1, &[(0, Standing::Live, Some(RuntimeKind::Process))]);
        slots.settle_task(&key("c"), 3, &[(0, Standing::Waiting, None)]);
        assert_eq!(slots.semaphore_in_use("gpu"), Some(2));
        // Its container gone, "a" frees its slot for "c".
        slots.settle_task(&key("a"), 1, &[(0, Standing::Idle, Some(RuntimeKind::Process))]);
        assert_eq!(
            slots.try_acquire(&key("c"), 0, 3, RuntimeKind::Process).0,
            Slot::Granted
        );
        assert_eq!(slots.semaphore_in_use("gpu"), Some(2));
    }

    #[test]
    fn semaphores_are_taken_all_at_once_or_not_at_all() {
        let slots = gpu(2);
        let both = ["db".to_string(), "gpu".to_string()];
        slots.set_semaphores(&key("writer"), &["db".to_string()]);
        slots.set_semaphores(&key("both"), &both);
        assert_eq!(
            slots.try_acquire(&key("writer"), 0, 1, RuntimeKind::Process).0,
            Slot::Granted
        );
        // "both" gets no gpu slot while it waits for db: nothing is held half.
        assert_eq!(
            slots.try_acquire(&key("both"), 0, 2, RuntimeKind::Process).0,
            Slot::Full {
                limit: "semaphore db 1/1".into()
            }
        );
        assert_eq!(slots.semaphore_in_use("gpu"), Some(0));
        // Refused by the global limit after its semaphores: it gives them all back.
        let (limited, _woken) = Slots::new(Some(1), &HashMap::new(), &HashMap::new());
        let limited = limited.with_semaphores(&BTreeMap::from([("gpu".to_string(), 5), ("db".to_string(), 5)]));
        limited.set_semaphores(&key("both"), &both);
        assert_eq!(
            limited.try_acquire(&key("other"), 0, 1, RuntimeKind::Process).0,
            Slot::Granted
        );
        assert!(matches!(
            limited.try_acquire(&key("both"), 0, 2, RuntimeKind::Process).0,
            Slot::Full { .. }
        ));
        assert_eq!(limited.semaphore_in_use("gpu"), Some(0));
        assert_eq!(limited.semaphore_in_use("db"), Some(0));
    }

    #[test]
    fn a_live_lane_keeps_a_semaphore_its_task_stopped_naming_until_it_is_gone() {
        let slots = gpu(1);
        slots.set_semaphores(&key("a"), &["gpu".to_string()]);
        assert_eq!(
            slots.try_acquire(&key("a"), 0, 1, RuntimeKind::Process).0,
            Slot::Granted
        );
        slots.set_semaphores(&key("a"), &[]);
        slots.settle_task(&key("a"), 1, &[(0, Standing::Live, Some(RuntimeKind::Process))]);
        assert_eq!(slots.semaphore_in_use("gpu"), Some(1));
        slots.settle_task(&key("a"), 1, &[(0, Standing::Idle, None)]);
        assert_eq!(slots.semaphore_in_use("gpu"), Some(0));
        // A removed task lets everything go.
        slots.set_semaphores(&key("b"), &["gpu".to_string()]);
        assert_eq!(
            slots.try_acquire(&key("b"), 0, 2, RuntimeKind::Process).0,
            Slot::Granted
        );
        slots.set_semaphores(&key("b"), &[]);
        slots.settle_task(&key("b"), 2, &[]);
        assert_eq!(slots.semaphore_in_use("gpu"), Some(0));
    }

    #[test]
    fn live_containers_always_hold_a_slot() {
        let (limits, _woken) = Limits::new("max-running", Some(1));
        limits.settle(&key("a"), 0, Standing::Live, 1);
        limits.settle(&key("b"), 0, Standing::Live, 2);
        assert_eq!(limits.in_use(), 2);
        assert!(matches!(limits.try_acquire(&key("c"), 0, 3), Slot::Full { .. }));
        limits.settle(&key("a"), 0, Standing::Idle, 1);
        assert!(matches!(limits.try_acquire(&key("c"), 0, 3), Slot::Full { .. }));
        limits.settle(&key("b"), 0, Standing::Idle, 2);
        assert_eq!(limits.try_acquire(&key("c"), 0, 3), Slot::Granted);
    }
}
