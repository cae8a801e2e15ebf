//! Concurrency limits: `--max-running`, a slot per live container, served first come,
//! first served by the time each task was first seen (DESIGN.md §8).
//!
//! A task holds its slot from the moment it decides to create a container until that
//! container is gone. A freed slot is offered to the longest-waiting task, and a newer
//! task cannot take it first, so no task starves behind a stream of new ones.

use super::reconcile::Slot;
use crate::task::TaskKey;
use std::collections::{BTreeSet, HashSet};
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
        let limits = Limits {
            name: name.to_string(),
            max,
            state: Mutex::new(State::default()),
            wake,
        };
        (limits, woken)
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
