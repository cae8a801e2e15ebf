//! The simulated wall clock: a fixed start plus tokio's (paused) time since the run
//! began, so that statuses' timestamps, deadlines and lease expiries move exactly as far
//! as the timers do, and a run never reads the real time.

use crate::controller::clock::Clock;
use crate::status::Timestamp;

pub struct SimClock {
    base: Timestamp,
    start: tokio::time::Instant,
}

impl SimClock {
    /// Call it inside the simulation's runtime, once its time is paused.
    pub fn new() -> Self {
        Self::starting_at(chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default())
    }

    /// A clock whose run begins at `base` (a schedule that crosses a DST change).
    pub fn starting_at(base: Timestamp) -> Self {
        SimClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        let elapsed = tokio::time::Instant::now() - self.start;
        self.base + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }
}
