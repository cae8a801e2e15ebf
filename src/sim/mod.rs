//! Deterministic simulation of the whole controller, in the manner of FoundationDB's
//! and TigerBeetle's simulation testing: the real [`Controller`](crate::controller::Controller)
//! (its loop, queue, limits, `decide`, persist-then-act) runs over in-memory fakes of
//! the store, the ownership leases and the runtime, on tokio's paused clock in one
//! thread, with every choice drawn from one seed. A schedule writes, edits, breaks and
//! deletes manifests, deletes statuses, sends terminate requests, injects faults and
//! outages, and crashes controllers at any await point (their durable state alone
//! survives); the invariants are checked at every status write and container create,
//! and once everything has calmed down.
//!
//! Built for tests, and with the `sim` feature for the `skiff-sim` binary
//! (`scripts/simulate`).

mod beats;
pub mod clock;
pub mod ownership;
#[cfg(test)]
mod policy_scenarios;
pub mod runtime;
pub mod scenario;
#[cfg(test)]
mod scenarios;
mod schedule;
pub mod store;
pub mod world;

#[cfg(test)]
mod tests;

pub use schedule::{Failed, Passed, run, run_skipping, shrink};

/// Runs `count` schedules from `first` on, on `threads` threads; the failures found, in
/// seed order.
pub fn run_many(first: u64, count: u64, threads: usize) -> Vec<Failed> {
    let threads = threads.max(1) as u64;
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for worker in 0..threads {
            let failures = &failures;
            scope.spawn(move || {
                let mut seed = first + worker;
                while seed < first + count {
                    if let Err(failed) = run(seed) {
                        failures.lock().unwrap_or_else(|p| p.into_inner()).push(failed);
                    }
                    seed += threads;
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort_by_key(|f| f.seed);
    failures
}

const INBOX_PREFIX: &str = "skiff-sim-inbox-";

/// Removes the inbox folders of simulator processes that have ended: a static is never
/// dropped, so each process leaves its (empty) folder behind.
fn sweep_dead_inboxes() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(INBOX_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// What a replica serves of the API: one inbox folder for the whole process (no event is
/// ever recorded in it), under the system's temporary folder.
fn callbacks() -> Option<crate::controller::Callbacks> {
    static INBOX: std::sync::OnceLock<Option<std::sync::Arc<crate::callback::Inbox>>> = std::sync::OnceLock::new();
    let inbox = INBOX.get_or_init(|| {
        sweep_dead_inboxes();
        let dir = std::env::temp_dir().join(format!("{INBOX_PREFIX}{}", std::process::id()));
        crate::callback::Inbox::new(&dir).ok().map(std::sync::Arc::new)
    });
    Some(crate::controller::Callbacks {
        base_url: "http://127.0.0.1:1".into(),
        secret: std::sync::Arc::new(crate::callback::CallbackSecret::from_key(vec![7; 32])),
        inbox: inbox.clone()?,
    })
}
