//! Whether the controller is making progress, for `/healthz`.

use std::sync::Mutex;
use std::time::Duration;

/// Whether the controller is making progress, for `/healthz`.
#[derive(Debug)]
pub struct Health {
    started: std::time::Instant,
    /// Milliseconds since `started` of the loop's last turn.
    last_turn: std::sync::atomic::AtomicU64,
    store_error: Mutex<Option<String>>,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub healthy: bool,
    /// Seconds since the controller loop last turned.
    pub last_progress_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}

/// The loop turns at least this often when healthy; three missed turns is unhealthy.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);

impl Default for Health {
    fn default() -> Self {
        Health {
            started: std::time::Instant::now(),
            last_turn: std::sync::atomic::AtomicU64::new(0),
            store_error: Mutex::new(None),
        }
    }
}

impl Health {
    pub(super) fn turn(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_turn.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn store_result<T, E: std::fmt::Display>(&self, result: &Result<T, E>) {
        if let Ok(mut slot) = self.store_error.lock() {
            *slot = result.as_ref().err().map(ToString::to_string);
        }
    }

    pub fn report(&self) -> HealthReport {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_turn.load(std::sync::atomic::Ordering::Relaxed);
        let since = Duration::from_millis(now.saturating_sub(last));
        let store_error = self.store_error.lock().ok().and_then(|e| e.clone());
        HealthReport {
            healthy: since < HEARTBEAT * 3 && store_error.is_none(),
            last_progress_seconds: since.as_secs_f64(),
            store_error,
        }
    }
}
