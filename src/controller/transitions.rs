//! Where the controller reports a task's terminal transitions (completion
//! notifications): an interface, so that the controller names no transport.
//!
//! The report is made before the status that records the transition is written: a
//! sink that keeps it durably (an outbox) then never misses one. A write that fails
//! after the report may leave a report of a transition that is written again later
//! (same id, a duplicate) or, rarely, never (the status changed under the write).

use crate::status::TaskStatus;
use crate::task::TaskKey;

#[async_trait::async_trait]
pub trait TransitionSink: Send + Sync {
    /// Keeps, durably, that `status` is the task's new terminal (or Invalid) state. An
    /// error fails the status write, which the pass retries.
    async fn terminal(&self, key: &TaskKey, status: &TaskStatus) -> std::io::Result<()>;
}

/// Whether writing `new` over `before` is a terminal transition to report: a final
/// phase reached, or reached again for another spec.
pub fn is_terminal_transition(before: Option<&TaskStatus>, new: &TaskStatus) -> bool {
    new.phase.is_final() && before.is_none_or(|old| old.phase != new.phase || old.spec_hash != new.spec_hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Phase;

    fn status(phase: Phase, hash: &str) -> TaskStatus {
        let mut status = TaskStatus::new("t", "t", hash, std::time::SystemTime::UNIX_EPOCH.into());
        status.phase = phase;
        status
    }

    #[test]
    fn only_reaching_a_final_phase_is_a_transition() {
        let running = status(Phase::Running, "a");
        let done = status(Phase::Succeeded, "a");
        assert!(is_terminal_transition(Some(&running), &done));
        assert!(is_terminal_transition(None, &status(Phase::Invalid, "")));
        assert!(!is_terminal_transition(Some(&done), &done), "rewritten, not reached");
        assert!(is_terminal_transition(Some(&done), &status(Phase::Succeeded, "b")));
        assert!(is_terminal_transition(Some(&done), &status(Phase::Failed, "a")));
        assert!(!is_terminal_transition(Some(&done), &running));
    }
}
