//! `spec.onExit`: what an attempt's non-zero exit code means, pure. The first rule
//! listing the code wins and is recorded on the attempt (`exitRule`), so a restarted
//! controller, the status's reader and the next decision all see the same verdict:
//!
//! - `FailTask`: no more retries, whatever `retries` says (in a fan-out, the whole task
//!   fails, whatever `maxFailedIndexes` says);
//! - `RetryUncounted`: retried without counting against `retries`, at most
//!   [`MAX_UNCOUNTED_RETRIES`] times in one run (one index of a fan-out); past that the
//!   failure counts, and `capReached` says so: a rule never loops forever;
//! - `Succeed`: the attempt succeeded (not in event mode without a callback: there only
//!   the callback says "done");
//! - `Count` (and a code no rule lists): a failed attempt, charged to `retries`.
//!
//! The rule applies to the exit code the runtime (or the completion event) reports, so
//! it works alike on every runtime. A timeout or a lost container has no exit code of
//! its own, and no rule applies to it.

use super::*;
use crate::manifest::ExitAction;
use crate::status::ExitRuleApplied;

/// Most retries one run (one index of a fan-out) may take without counting them.
pub const MAX_UNCOUNTED_RETRIES: u32 = 10;

/// The first rule of `spec.onExit` listing `code`: its place and its action.
pub(super) fn rule_for(spec: &TaskSpec, code: i32) -> Option<(u32, ExitAction)> {
    spec.on_exit
        .iter()
        .position(|rule| rule.exit_codes.contains(&code))
        .map(|i| (u32::try_from(i).unwrap_or(u32::MAX), spec.on_exit[i].action))
}

/// An ended attempt that was retried without counting against `retries`.
pub(super) fn uncounted(record: &AttemptRecord) -> bool {
    record
        .exit_rule
        .is_some_and(|r| r.action == ExitAction::RetryUncounted && !r.cap_reached)
}

/// An ended attempt whose exit code ends the task, retries left or not.
pub(super) fn fails_the_task(record: &AttemptRecord) -> bool {
    record.exit_rule.is_some_and(|r| r.action == ExitAction::FailTask)
}

/// Judges the current attempt, just ended with the exit code and reason it records:
/// records the rule its code matches, and returns the attempt's reason as the rule
/// makes it (`Completed` for `Succeed`). The same recorded attempts always give the same
/// verdict, so a decision taken again after a lost write agrees with the first.
pub(super) fn judge(spec: &TaskSpec, status: &mut TaskStatus) -> Option<Reason> {
    let number = status.attempt;
    let uncounted_before = status
        .attempts
        .iter()
        .filter(|a| a.number != number && uncounted(a))
        .count();
    let record = status.current_mut()?;
    let reason = record.reason?;
    let Some(code) = record.exit_code.filter(|code| *code != 0) else {
        return Some(reason);
    };
    if !matches!(reason, Reason::ExitCode | Reason::ExitedWithoutEvent) {
        return Some(reason);
    }
    let Some((rule, action)) = rule_for(spec, code) else {
        return Some(reason);
    };
    if action == ExitAction::Succeed && reason == Reason::ExitedWithoutEvent {
        // In event mode only the callback says "done": the exit alone stays a failure.
        return Some(reason);
    }
    let cap_reached = action == ExitAction::RetryUncounted && uncounted_before >= MAX_UNCOUNTED_RETRIES as usize;
    record.exit_rule = Some(ExitRuleApplied {
        rule,
        action,
        cap_reached,
    });
    let at = format!("spec.onExit[{rule}]");
    let verdict = match action {
        ExitAction::FailTask => format!("{at} says FailTask: not retried"),
        ExitAction::RetryUncounted if cap_reached => format!(
            "{at} says RetryUncounted, but the cap of {MAX_UNCOUNTED_RETRIES} uncounted retries is reached: this failure counts against retries"
        ),
        ExitAction::RetryUncounted => format!(
            "{at} says RetryUncounted: retried without counting against retries ({} of {MAX_UNCOUNTED_RETRIES})",
            uncounted_before + 1
        ),
        ExitAction::Succeed => format!("{at} says Succeed: counted as success"),
        ExitAction::Count => format!("{at} says Count: a failed attempt"),
    };
    record.message = Some(match record.message.take() {
        Some(message) => format!("{message}; {verdict}"),
        None => verdict,
    });
    if action == ExitAction::Succeed {
        record.reason = Some(Reason::Completed);
    }
    record.reason
}

#[cfg(test)]
#[path = "exit_rules_tests.rs"]
mod tests;
