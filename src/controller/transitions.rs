//! Where the controller reports a task's terminal transitions (completion
//! notifications): an interface, so that the controller names no transport.
//!
//! The report is made before the status that records the transition is written: a
//! sink that keeps it durably (an outbox) then never misses one. A write that fails
//! after the report may leave a report of a transition that is written again later
//! (same id, a duplicate) or, rarely, never (the status changed under the write).

use crate::status::{Phase, RunRecord, TaskStatus};
use crate::task::TaskKey;

#[async_trait::async_trait]
pub trait TransitionSink: Send + Sync {
    /// Keeps, durably, that writing `status` over `before` is a terminal transition (see
    /// [`is_terminal_transition`]). An error fails the status write, which the pass retries.
    async fn terminal(&self, key: &TaskKey, before: Option<&TaskStatus>, status: &TaskStatus) -> std::io::Result<()>;
}

/// Whether writing `new` over `before` is a terminal transition to report: a final
/// phase reached, or reached again for another spec; for a scheduled task, a run ended
/// (each run is reported, not the task's phase, which follows its newest run).
pub fn is_terminal_transition(before: Option<&TaskStatus>, new: &TaskStatus) -> bool {
    if new.schedule.is_some() && new.phase != Phase::Invalid {
        return !ended_runs(before, new).is_empty();
    }
    new.phase.is_final() && before.is_none_or(|old| old.phase != new.phase || old.spec_hash != new.spec_hash)
}

/// The scheduled runs `new` records as ended (Succeeded or Failed) that `before` did not.
pub fn ended_runs<'a>(before: Option<&TaskStatus>, new: &'a TaskStatus) -> Vec<&'a RunRecord> {
    new.runs
        .iter()
        .filter(|run| run.run.is_some() && run.phase.is_some_and(Phase::is_terminal))
        .filter(|run| {
            !before.is_some_and(|old| {
                old.runs
                    .iter()
                    .any(|o| o.run == run.run && o.scheduled_at == run.scheduled_at && o.phase == run.phase)
            })
        })
        .collect()
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

    fn run(number: u32, phase: Option<Phase>) -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "scheduledAt": format!("2026-01-0{number}T02:00:00Z"),
            "run": number,
            "phase": phase,
        }))
        .unwrap()
    }

    #[test]
    fn a_scheduled_task_reports_each_run_that_ends_not_its_phase() {
        let mut before = status(Phase::Running, "a");
        before.schedule = Some(
            serde_json::from_value(serde_json::json!({"cron": "0 2 * * *", "handledThrough": "2026-01-01T00:00:00Z"}))
                .unwrap(),
        );
        before.runs = vec![run(2, Some(Phase::Running)), run(1, Some(Phase::Succeeded))];
        let mut after = before.clone();
        after.phase = Phase::Failed;
        after.runs[0] = run(2, Some(Phase::Failed));
        let ended: Vec<Option<u32>> = ended_runs(Some(&before), &after).iter().map(|r| r.run).collect();
        assert_eq!(ended, [Some(2)], "run 1 ended before");
        assert!(is_terminal_transition(Some(&before), &after));
        // Rewritten with nothing newly ended: nothing to report, whatever the phase.
        assert!(!is_terminal_transition(Some(&after), &after));
    }
}
