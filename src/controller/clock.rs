//! Where the controller's pipeline gets the time of day and its randomness. In
//! production: the system clock and the OS's entropy. Under the deterministic simulator
//! (`crate::sim`): a clock that follows tokio's paused time and a seeded generator, so
//! that one seed replays one run exactly. Timers (`tokio::time`) need nothing here:
//! tokio's own clock can already be paused.

use crate::status::Timestamp;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

/// The wall clock as the pipeline sees it (statuses' timestamps, deadlines, the age of
/// a manifest being written).
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The real one.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        chrono::Utc::now()
    }
}

/// The pipeline's randomness: backoff and lease jitter, attempt ids.
pub(super) struct Entropy(Mutex<rand::rngs::StdRng>);

impl Entropy {
    pub(super) fn from_os() -> Self {
        Entropy(Mutex::new(rand::rngs::StdRng::from_os_rng()))
    }

    pub(super) fn seeded(seed: u64) -> Self {
        Entropy(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }

    /// Uniform in [0, 1).
    pub(super) fn unit(&self) -> f64 {
        let mut rng = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        rng.random::<f64>()
    }

    /// An attempt id, as `AttemptRecord::new_id` makes them.
    pub(super) fn attempt_id(&self) -> String {
        let mut rng = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        format!("{:016x}", rng.random::<u64>())
    }
}
