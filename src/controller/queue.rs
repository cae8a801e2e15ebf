//! The work queue: keyed, deduplicated, delayable, one reconcile per key at a time
//! (DESIGN.md §8), in the manner of kube-runtime's scheduler and runner.
//!
//! A key waiting in the queue is held once, at its earliest requested time. A key
//! that is asked for while its reconcile runs is marked dirty and runs again as soon
//! as the current one finishes, so that no change is ever lost and none is handled by
//! two reconciles at once.
//!
//! A key asked for now goes to a ready line, not the delay queue: the timer wheel has a
//! millisecond's grain, and a zero delay would wait for its next tick, which was half of
//! a completion event's way from the callback's POST to its durable status.

use crate::task::TaskKey;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

#[derive(Default)]
pub struct WorkQueue {
    delays: DelayQueue<TaskKey>,
    /// Keys due now, oldest first; each is also in `scheduled`, as [`Waiting::Ready`].
    ready: VecDeque<TaskKey>,
    scheduled: HashMap<TaskKey, Waiting>,
    busy: HashSet<TaskKey>,
    dirty: HashSet<TaskKey>,
}

/// Where a waiting key is held.
enum Waiting {
    Ready,
    Delayed(delay_queue::Key, Instant),
}

impl WorkQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for `key` to be reconciled after `delay`; an earlier request wins.
    pub fn schedule(&mut self, key: TaskKey, delay: Duration) {
        if delay.is_zero() {
            match self.scheduled.insert(key.clone(), Waiting::Ready) {
                Some(Waiting::Ready) => return,
                Some(Waiting::Delayed(handle, _)) => {
                    self.delays.remove(&handle);
                }
                None => {}
            }
            self.ready.push_back(key);
            return;
        }
        let at = Instant::now() + delay;
        match self.scheduled.get_mut(&key) {
            Some(Waiting::Ready) => {}
            Some(Waiting::Delayed(handle, when)) => {
                if at < *when {
                    self.delays.reset_at(handle, at);
                    *when = at;
                }
            }
            None => {
                let handle = self.delays.insert_at(key.clone(), at);
                self.scheduled.insert(key, Waiting::Delayed(handle, at));
            }
        }
    }

    /// Waits for the next key that is due and not busy, and marks it busy.
    pub async fn next(&mut self) -> TaskKey {
        loop {
            let key = match self.ready.pop_front() {
                Some(key) => key,
                None => {
                    if self.delays.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    let Some(expired) = poll_fn(|cx| self.delays.poll_expired(cx)).await else {
                        continue;
                    };
                    expired.into_inner()
                }
            };
            self.scheduled.remove(&key);
            if self.busy.contains(&key) {
                self.dirty.insert(key);
                continue;
            }
            self.busy.insert(key.clone());
            return key;
        }
    }

    /// The reconcile of `key` finished; runs it again now if it was asked for meanwhile.
    pub fn done(&mut self, key: &TaskKey) {
        self.busy.remove(key);
        if self.dirty.remove(key) {
            self.schedule(key.clone(), Duration::ZERO);
        }
    }

    /// Keys waiting (due or not), for the queue-depth metric.
    pub fn len(&self) -> usize {
        self.scheduled.len() + self.dirty.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A key is due now or busy: work is still in hand for it.
    pub fn is_pending(&self, key: &TaskKey) -> bool {
        self.busy.contains(key) || self.dirty.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> TaskKey {
        TaskKey::new(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_queued_once_at_its_earliest_time() {
        let mut queue = WorkQueue::new();
        queue.schedule(key("a"), Duration::from_secs(10));
        queue.schedule(key("a"), Duration::from_secs(1));
        queue.schedule(key("a"), Duration::from_secs(5));
        queue.schedule(key("b"), Duration::from_secs(3));
        assert_eq!(queue.len(), 2);
        let start = Instant::now();
        assert_eq!(queue.next().await, key("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(queue.next().await, key("b"));
        assert!(queue.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_key_runs_again_after_it_is_done_not_twice_at_once() {
        let mut queue = WorkQueue::new();
        queue.schedule(key("a"), Duration::ZERO);
        assert_eq!(queue.next().await, key("a"));
        queue.schedule(key("a"), Duration::ZERO);
        queue.schedule(key("b"), Duration::from_millis(1));
        // "a" is busy, so the queue hands out "b" and remembers "a" as dirty.
        assert_eq!(queue.next().await, key("b"));
        assert!(queue.is_pending(&key("a")));
        queue.done(&key("a"));
        assert_eq!(queue.next().await, key("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_asked_for_now_is_handed_out_without_waiting_for_a_timer_tick() {
        let mut queue = WorkQueue::new();
        queue.schedule(key("later"), Duration::from_secs(5));
        queue.schedule(key("a"), Duration::ZERO);
        queue.schedule(key("a"), Duration::ZERO);
        queue.schedule(key("a"), Duration::from_secs(1));
        // Asked for now, a delayed key leaves the delay queue: held once.
        queue.schedule(key("later"), Duration::ZERO);
        assert_eq!(queue.len(), 2);
        let start = Instant::now();
        assert_eq!(queue.next().await, key("a"));
        assert_eq!(queue.next().await, key("later"));
        assert_eq!(start.elapsed(), Duration::ZERO, "no timer was waited for");
        assert!(queue.is_empty());
        queue.done(&key("a"));
        queue.done(&key("later"));
        queue.schedule(key("b"), Duration::from_millis(3));
        assert_eq!(queue.next().await, key("b"));
        assert_eq!(start.elapsed(), Duration::from_millis(3));
    }
}
