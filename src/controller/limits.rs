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
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// A task's relation to the limit after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Its container may exist: it holds a slot.
    Live,
    /// It waits for a slot (reason `WaitingForSlot`).
    Waiting,
    /// Neither: done, backing off, invalid or removed.
    Idle,
}

pub struct Limits {
    name: String,
    max: Option<usize>,
    state: Mutex<State>,
    /// Tasks to reconcile because a slot may be theirs now.
    wake: mpsc::UnboundedSender<TaskKey>,
}

#[derive(Default)]
struct State {
    holders: HashSet<TaskKey>,
    /// (first-seen order, task)
    waiters: BTreeSet<(u64, TaskKey)>,
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

    /// Reserves a slot for `key` if one is free and no earlier task waits for it.
    pub fn try_acquire(&self, key: &TaskKey, order: u64) -> Slot {
        let Ok(mut state) = self.state.lock() else {
            return Slot::Granted;
        };
        if state.holders.contains(key) {
            return Slot::Granted;
        }
        let Some(max) = self.max else {
            state.holders.insert(key.clone());
            return Slot::Granted;
        };
        let free = max.saturating_sub(state.holders.len());
        let me = (order, key.clone());
        let ahead = state.waiters.range(..&me).count();
        if ahead < free {
            state.waiters.remove(&me);
            state.holders.insert(key.clone());
            return Slot::Granted;
        }
        state.waiters.insert(me);
        Slot::Full {
            limit: format!("{} {}/{max}", self.name, state.holders.len()),
        }
    }

    /// Records where `key` stands after its reconcile. A live container always holds a
    /// slot, even beyond the limit (one adopted after a restart, say); a waiting task
    /// keeps its place in the line; any other frees its slot or place for the next.
    pub fn settle(&self, key: &TaskKey, standing: Standing, order: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match standing {
            Standing::Live => {
                state.waiters.remove(&(order, key.clone()));
                state.holders.insert(key.clone());
                return;
            }
            Standing::Waiting => return,
            Standing::Idle => {}
        }
        let was_holding = state.holders.remove(key);
        let was_waiting = state.waiters.remove(&(order, key.clone()));
        if was_holding || was_waiting {
            self.wake_waiters(&state);
        }
    }

    /// Slots in use, for metrics and status messages.
    pub fn in_use(&self) -> usize {
        self.state.lock().map(|s| s.holders.len()).unwrap_or(0)
    }

    fn wake_waiters(&self, state: &State) {
        let free = match self.max {
            Some(max) => max.saturating_sub(state.holders.len()),
            None => state.waiters.len(),
        };
        for (_, key) in state.waiters.iter().take(free) {
            let _ = self.wake.send(key.clone());
        }
    }
}

/// The global limit and each runtime's own: a task holds a slot in both, or in neither.
pub struct Slots {
    global: Limits,
    runtimes: HashMap<RuntimeKind, Limits>,
}

impl Slots {
    pub fn new(
        global: Option<usize>,
        per_runtime: &HashMap<RuntimeKind, usize>,
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
        let global = Limits::with_wake("max-running", global, wake);
        (Slots { global, runtimes }, woken)
    }

    /// The runtime's cap first, then the global one; a task refused by the second gives
    /// back what it got from the first.
    pub fn try_acquire(&self, key: &TaskKey, order: u64, runtime: RuntimeKind) -> Slot {
        let own = self.runtimes.get(&runtime);
        if let Some(own) = own {
            let slot = own.try_acquire(key, order);
            if slot != Slot::Granted {
                return slot;
            }
        }
        let slot = self.global.try_acquire(key, order);
        if slot != Slot::Granted
            && let Some(own) = own
        {
            own.settle(key, Standing::Idle, order);
        }
        slot
    }

    /// See [`Limits::settle`]; a live task holds a slot of its container's runtime.
    pub fn settle(&self, key: &TaskKey, standing: Standing, order: u64, runtime: Option<RuntimeKind>) {
        self.global.settle(key, standing, order);
        for (kind, limits) in &self.runtimes {
            let standing = match standing {
                Standing::Live if Some(*kind) != runtime => Standing::Idle,
                other => other,
            };
            limits.settle(key, standing, order);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> TaskKey {
        TaskKey::new(s)
    }

    #[test]
    fn slots_go_to_the_longest_waiting_task() {
        let (limits, mut woken) = Limits::new("max-running", Some(1));
        assert_eq!(limits.try_acquire(&key("a"), 1), Slot::Granted);
        assert_eq!(
            limits.try_acquire(&key("b"), 2),
            Slot::Full {
                limit: "max-running 1/1".into()
            }
        );
        assert!(matches!(limits.try_acquire(&key("c"), 3), Slot::Full { .. }));
        // A waiting task that stays waiting keeps its place.
        limits.settle(&key("b"), Standing::Waiting, 2);
        limits.settle(&key("a"), Standing::Idle, 1);
        assert_eq!(woken.try_recv().unwrap(), key("b"));
        // "c" came later, so it cannot take the slot that "b" waits for.
        assert!(matches!(limits.try_acquire(&key("c"), 3), Slot::Full { .. }));
        assert_eq!(limits.try_acquire(&key("b"), 2), Slot::Granted);
        assert_eq!(limits.in_use(), 1);
    }

    #[test]
    fn a_runtime_cap_holds_a_task_back_and_names_itself() {
        let caps = HashMap::from([(RuntimeKind::Docker, 1)]);
        let (slots, _woken) = Slots::new(Some(10), &caps);
        assert_eq!(slots.try_acquire(&key("a"), 1, RuntimeKind::Docker), Slot::Granted);
        assert_eq!(
            slots.try_acquire(&key("b"), 2, RuntimeKind::Docker),
            Slot::Full {
                limit: "max-running-docker 1/1".into()
            }
        );
        // Other runtimes are not held back by docker's cap.
        assert_eq!(slots.try_acquire(&key("c"), 3, RuntimeKind::Process), Slot::Granted);
        slots.settle(&key("a"), Standing::Idle, 1, None);
        assert_eq!(slots.try_acquire(&key("b"), 2, RuntimeKind::Docker), Slot::Granted);
    }

    #[test]
    fn a_task_refused_by_the_global_limit_gives_back_its_runtime_slot() {
        let caps = HashMap::from([(RuntimeKind::Docker, 5)]);
        let (slots, _woken) = Slots::new(Some(1), &caps);
        assert_eq!(slots.try_acquire(&key("a"), 1, RuntimeKind::Process), Slot::Granted);
        assert_eq!(
            slots.try_acquire(&key("b"), 2, RuntimeKind::Docker),
            Slot::Full {
                limit: "max-running 1/1".into()
            }
        );
        assert_eq!(slots.runtimes[&RuntimeKind::Docker].in_use(), 0);
    }

    #[test]
    fn live_containers_always_hold_a_slot() {
        let (limits, _woken) = Limits::new("max-running", Some(1));
        limits.settle(&key("a"), Standing::Live, 1);
        limits.settle(&key("b"), Standing::Live, 2);
        assert_eq!(limits.in_use(), 2);
        assert!(matches!(limits.try_acquire(&key("c"), 3), Slot::Full { .. }));
        limits.settle(&key("a"), Standing::Idle, 1);
        assert!(matches!(limits.try_acquire(&key("c"), 3), Slot::Full { .. }));
        limits.settle(&key("b"), Standing::Idle, 2);
        assert_eq!(limits.try_acquire(&key("c"), 3), Slot::Granted);
    }
}
