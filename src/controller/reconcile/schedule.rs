//! A scheduled task's decision: which scheduled times are due, which are missed (and
//! recorded so), when a run starts, and the run itself, moved by the very decision a
//! task without a schedule gets.
//!
//! The status's top-level fields (phase, attempts, indexes, result, ...) are those of the
//! newest run (under Allow, an older run still active moves whole into
//! `schedule.overlapping` when a newer one starts); `status.schedule` says which scheduled
//! times are handled
//! (`handledThrough`), and `status.runs` keeps the history. A run starts in the same
//! status write that advances `handledThrough` and names its first container, before the
//! create: a crash at any instant never runs a scheduled time twice (the time is handled
//! once the write lands) nor loses one (before it lands, the time is still due; after a
//! restart it is judged by `missedRuns`, and a missed time is recorded in `runs`).

use super::{Action, Decision, Desired, Input, SOON, Scheduling};
use crate::manifest::{ConcurrencyPolicy, MissedRuns, ScheduleRules, TaskSpec};
use crate::status::{OverlappingRun, Phase, Reason, RunRecord, ScheduleStatus, TaskStatus, Timestamp, format_time};
use std::time::Duration;

/// Most scheduled times judged one by one in a decision; beyond, the older ones are
/// recorded as one missed range.
const MAX_DUE: usize = 1000;

/// Most runs of one task active at once under `concurrencyPolicy: Allow`. Kubernetes'
/// CronJob sets no bound, so a command slower than its schedule piles runs up without
/// end; here a time due while this many run is recorded as missed (`MissedSchedule`),
/// and the status (which holds each active run) stays small.
pub const MAX_ACTIVE_RUNS: usize = 10;

/// Whether the status belongs to a scheduled task (it has a schedule record).
pub(super) fn is_scheduled(status: Option<&TaskStatus>) -> bool {
    status.is_some_and(|s| s.schedule.is_some())
}

/// A task whose schedule was removed from its manifest: the schedule's record goes; an
/// active run carries on as the task's run, and an idle one runs once, as a task
/// without a schedule.
pub(super) fn unscheduled(input: &Input<'_>, spec: &TaskSpec) -> Decision {
    let Some(status) = input.status else {
        return super::decide(input.clone());
    };
    let active = status.schedule.as_ref().is_some_and(|s| !s.active.is_empty());
    let mut view = status.clone();
    view.schedule = None;
    view.runs.clear();
    let run = status.schedule.as_ref().map(|s| s.run_count);
    let desired = Desired::Valid(Box::new(spec.clone()));
    let inner = Input {
        desired: &desired,
        status: active.then_some(&view),
        scheduling: Scheduling {
            run,
            ..Scheduling::default()
        },
        ..input.clone()
    };
    super::decide(inner)
}

pub(super) fn decide(input: &Input<'_>, spec: &TaskSpec, rules: &ScheduleRules) -> Decision {
    let now = input.now;
    let since = input.scheduling.since.unwrap_or(now).min(now);
    let mut status = match input.status {
        Some(status) => status.clone(),
        None => {
            let mut status = TaskStatus::new(input.key.as_str(), &spec.name, &spec.spec_hash, now);
            status.phase = Phase::Scheduled;
            status
        }
    };
    status.name = spec.name.clone();
    let mut sched = status.schedule.take().unwrap_or_else(|| ScheduleStatus {
        cron: String::new(),
        last_scheduled_at: None,
        next_scheduled_at: None,
        // Afresh from now: a deleted status starts the schedule again.
        handled_through: now,
        active: Vec::new(),
        run_count: 0,
        // A task that ran without a schedule and is still running carries on as run 0.
        triggered_at: None,
        current_run: None,
        overlapping: Vec::new(),
    });
    if status.phase == Phase::Invalid && sched.active.is_empty() {
        // The manifest is valid again: the task shows its newest run's phase, or
        // Scheduled before the first (an active run is resumed by its own decision).
        let newest = status
            .runs
            .iter()
            .filter(|r| r.run.is_some() && r.finished_at.is_some())
            .max_by_key(|r| r.run);
        match newest.and_then(|r| r.phase.filter(|p| p.is_terminal()).map(|p| (p, r.reason))) {
            Some((phase, reason)) => {
                status.phase = phase;
                status.reason = reason;
            }
            None => {
                status.phase = Phase::Scheduled;
                status.reason = None;
            }
        }
    }
    if input
        .status
        .is_some_and(|s| s.schedule.is_none() && !s.phase.is_final() && s.phase != Phase::Scheduled)
    {
        sched.active = vec![now];
    }
    sched.cron = match &rules.time_zone {
        Some(zone) => format!("{} {zone}", rules.cron),
        None => rules.cron.clone(),
    };
    if input.scheduling.trigger {
        sched.triggered_at = Some(now);
    }
    let mut runs = std::mem::take(&mut status.runs);
    let runs_before = runs.len();
    let policy = rules.concurrency_policy;
    // `active` lists the top-level (newest) run's time first (when it is active), then
    // each overlapping run's.
    let top_run = sched.current_run.unwrap_or(sched.run_count);
    let top_active = sched.active.len() > sched.overlapping.len();
    let mut top_at = if top_active {
        sched.active.first().copied()
    } else {
        None
    };
    let active = !sched.active.is_empty();
    // Allow starts a run beside the active ones, up to the bound.
    let room = policy == ConcurrencyPolicy::Allow && sched.active.len() < MAX_ACTIVE_RUNS;
    let held_back = match policy {
        ConcurrencyPolicy::Allow => {
            format!("{MAX_ACTIVE_RUNS} runs were active, the most concurrencyPolicy: Allow runs at once")
        }
        _ => format!(
            "the run scheduled at {} was still active (concurrencyPolicy: {policy:?})",
            sched.active.first().map(format_time).unwrap_or_default()
        ),
    };

    // Judge the scheduled times due, oldest first, up to the first that may run.
    let mut candidate: Option<(Timestamp, Option<Reason>)> = None;
    if spec.suspend {
        // Deliberately not run, so not recorded as missed.
        sched.handled_through = sched.handled_through.max(now);
    } else {
        let (due, more) = rules.schedule.due(sched.handled_through, now, MAX_DUE);
        let mut due = due.into_iter().peekable();
        if more && let Some(newest) = rules.schedule.last_at_or_before(now) {
            // Far too many to judge one by one: all but the newest are recorded as one range.
            let first = due.peek().copied().unwrap_or(newest);
            if let Some(before) = rules
                .schedule
                .last_at_or_before(newest - chrono::Duration::milliseconds(1))
                && before >= first
            {
                let mut range = missed(
                    before,
                    format!(
                        "more than {MAX_DUE} scheduled times, from {} to this one, were missed (the controller was not running)",
                        format_time(&first)
                    ),
                );
                range.missed_from = Some(first);
                runs.insert(0, range);
                sched.handled_through = before;
                sched.last_scheduled_at = Some(before);
            }
            due = rules
                .schedule
                .due(sched.handled_through, now, MAX_DUE)
                .0
                .into_iter()
                .peekable();
        }
        while let Some(t) = due.next() {
            let late = now - t;
            let while_down = t < since;
            let verdict = if let Some(deadline) = rules.starting_deadline
                && late.to_std().unwrap_or_default() > deadline
            {
                Err(format!(
                    "not started within startingDeadline {} of its scheduled time",
                    humantime::format_duration(deadline)
                ))
            } else if while_down {
                match rules.missed_runs {
                    MissedRuns::Skip => Err("the controller was not running at its scheduled time (missedRuns: skip)".into()),
                    MissedRuns::Latest if due.peek().is_some() => Err(
                        "the controller was not running at its scheduled time; only the latest missed time runs (missedRuns: latest)"
                            .into(),
                    ),
                    _ => Ok(()),
                }
            } else {
                Ok(())
            };
            match verdict {
                Err(message) => {
                    runs.insert(0, missed(t, message));
                    sched.handled_through = t;
                    sched.last_scheduled_at = Some(t);
                }
                Ok(()) if active && policy != ConcurrencyPolicy::Replace && !room => {
                    if while_down && matches!(rules.missed_runs, MissedRuns::All | MissedRuns::Latest) {
                        // A catch-up run waits its turn: the active run is usually one the
                        // outage left behind, whose end this controller has yet to see.
                        candidate = Some((t, None));
                        break;
                    }
                    let message = format!("not started: {held_back}");
                    runs.insert(0, missed(t, message));
                    sched.handled_through = t;
                    sched.last_scheduled_at = Some(t);
                }
                Ok(()) => {
                    candidate = Some((t, None));
                    break;
                }
            }
        }
    }
    if candidate.is_none()
        && let Some(at) = sched.triggered_at
    {
        if active && policy != ConcurrencyPolicy::Replace && !room {
            let mut record = missed(at, format!("skiff trigger: not started: {held_back}"));
            record.reason = Some(Reason::ManualTrigger);
            runs.insert(0, record);
            sched.triggered_at = None;
        } else {
            candidate = Some((at, Some(Reason::ManualTrigger)));
        }
    }

    // Every record added so far is a missed time (or a held-back trigger), newest first.
    let added = runs.len() - runs_before;
    fold_missed(&mut runs, added, rules.history_limit as usize);

    // Move the active runs, stopping them first when a new one replaces them.
    let replace = candidate.is_some() && policy == ConcurrencyPolicy::Replace;
    let (other_actions, other_requeue) =
        move_overlapping(input, spec, &mut status, &mut sched, &mut runs, replace, &candidate);
    let mut actions = Vec::new();
    let mut requeue: Option<Duration> = None;
    let mut ended_now = false;
    if top_at.is_some() {
        let mut run_spec = spec.clone();
        run_spec.schedule = None;
        if policy != ConcurrencyPolicy::Replace && !status.spec_hash.is_empty() {
            // An edit applies from the next run (under Replace, it restarts this one).
            run_spec.spec_hash = status.spec_hash.clone();
        }
        let desired = Desired::Valid(Box::new(run_spec));
        let view = status.clone();
        let decided = super::decide(Input {
            desired: &desired,
            status: Some(&view),
            terminate: input.terminate || replace,
            scheduling: Scheduling {
                run: Some(top_run),
                ..Scheduling::default()
            },
            ..input.clone()
        });
        status = decided.status.unwrap_or(status);
        actions = decided.actions;
        requeue = decided.requeue_after;
        if replace && !input.terminate {
            note_replaced(&mut status, &candidate);
        }
        update_record(&mut runs, top_run, &status, now);
        if status.phase.is_final() {
            top_at = None;
            ended_now = true;
        }
    }
    sched.active = active_times(top_at, &sched.overlapping);

    // Start a run for the candidate: once no run is active, or beside them under Allow.
    let startable = match policy {
        ConcurrencyPolicy::Allow => sched.active.len() < MAX_ACTIVE_RUNS,
        _ => sched.active.is_empty(),
    };
    // Under Replace, the stopped run's delete comes first; under Allow the top-level
    // run's own actions do not hold a new run back.
    let beside = policy == ConcurrencyPolicy::Allow && top_at.is_some();
    if startable
        && (actions.is_empty() || beside)
        && let Some((at, reason)) = candidate
    {
        sched.run_count += 1;
        match reason {
            Some(Reason::ManualTrigger) => sched.triggered_at = None,
            _ => {
                sched.handled_through = at;
                sched.last_scheduled_at = Some(at);
            }
        }
        runs.insert(
            0,
            RunRecord {
                scheduled_at: at,
                run: Some(sched.run_count),
                phase: Some(Phase::Pending),
                reason,
                message: None,
                attempts: 0,
                exit_code: None,
                result: None,
                finished_at: None,
                spec_hash: Some(spec.spec_hash.clone()),
                missed_from: None,
                missed_count: None,
            },
        );
        let mut run_spec = spec.clone();
        run_spec.schedule = None;
        let desired = Desired::Valid(Box::new(run_spec));
        // Nothing of the new run's was seen yet; its containers' slots are asked for on
        // its own lanes (by its number, as every scheduled run's).
        let seen = input
            .scheduling
            .overlapping
            .get(&sched.run_count)
            .cloned()
            .unwrap_or_default();
        let run_input = Input {
            desired: &desired,
            status: None,
            observed: super::Observed::NotApplicable,
            log_tail: None,
            event: None,
            heartbeat: None,
            slot: seen.single.slot,
            lanes: seen.lanes,
            terminate: false,
            scheduling: Scheduling {
                run: Some(sched.run_count),
                ..Scheduling::default()
            },
            ..input.clone()
        };
        let decided = super::decide(run_input);
        if let Some(view) = decided.status {
            // The new run takes the top-level fields: `phase`, `attempts`, `skiff logs`
            // show the newest run. A run still active there (Allow) moves beside it
            // wholesale (number, scheduled time, spec, attempts, names, ids, lanes), in
            // this same write: no run is lost or doubled by the move.
            let older = std::mem::replace(&mut status, view);
            if let Some(older_at) = top_at {
                sched
                    .overlapping
                    .push(OverlappingRun::from_view(top_run, older_at, older));
                sched.overlapping.sort_by_key(|r| r.run);
            }
            actions.extend(decided.actions);
            requeue = min_requeue(requeue, decided.requeue_after);
            update_record(&mut runs, sched.run_count, &status, now);
            sched.current_run = Some(sched.run_count);
            top_at = Some(at);
        }
        sched.active = active_times(top_at, &sched.overlapping);
    } else if candidate.is_some() && !ended_now {
        // Waiting for the active run to end (Replace, or a catch-up under Forbid).
        requeue = Some(requeue.unwrap_or(SOON));
    }

    actions.extend(other_actions);
    requeue = min_requeue(requeue, other_requeue);
    newest_on_top(&mut status, &mut sched, &mut top_at);

    // When nothing runs: the newest run's phase, or Scheduled before the first.
    if sched.active.is_empty() && !status.phase.is_final() {
        status.phase = Phase::Scheduled;
    }
    sched.next_scheduled_at = if spec.suspend {
        None
    } else {
        rules.schedule.next_after(sched.handled_through.max(now))
    };
    if sched.active.is_empty() {
        status.message = Some(match (&sched.next_scheduled_at, spec.suspend) {
            (_, true) => "suspended: no new runs start until spec.suspend is false".to_string(),
            (Some(next), _) => format!("next run at {}", format_time(next)),
            (None, _) => "the schedule has no further times".to_string(),
        });
    }
    if let Some(next) = sched.next_scheduled_at {
        let until = (next - now).to_std().unwrap_or_default().max(Duration::from_millis(1));
        requeue = Some(requeue.map_or(until, |r| r.min(until)));
    }
    if sched.triggered_at.is_some() {
        requeue = Some(requeue.map_or(SOON, |r| r.min(SOON)));
    }

    // History: the active run, and the newest `historyLimit` others.
    runs.sort_by_key(|r| std::cmp::Reverse(r.scheduled_at));
    let mut kept = 0;
    runs.retain(|r| {
        let is_active = r.run.is_some() && r.finished_at.is_none() && sched.active.contains(&r.scheduled_at);
        if is_active {
            return true;
        }
        kept += 1;
        kept <= rules.history_limit as usize
    });
    status.runs = runs;
    status.schedule = Some(sched);
    Decision {
        status: Some(status),
        actions,
        requeue_after: requeue,
    }
}

fn missed(at: Timestamp, message: String) -> RunRecord {
    RunRecord {
        scheduled_at: at,
        run: None,
        phase: None,
        reason: Some(Reason::MissedSchedule),
        message: Some(message),
        attempts: 0,
        exit_code: None,
        result: None,
        finished_at: None,
        spec_hash: None,
        missed_from: None,
        missed_count: None,
    }
}

/// Folds the times missed in this decision into one range record when there are more
/// than the history keeps: none is dropped unseen. A held-back trigger recorded in the
/// same decision is not a scheduled time: it keeps a record of its own only when the
/// history has room beside the missed times (found by the simulator's "none lost"
/// check: folded in with them, it once made an upside-down range that hid them).
fn fold_missed(runs: &mut Vec<RunRecord>, new_missed: usize, limit: usize) {
    let limit = limit.max(1);
    if new_missed <= 1 {
        return;
    }
    let added: Vec<RunRecord> = runs.drain(..new_missed.min(runs.len())).collect();
    let (mut missed, mut others): (Vec<RunRecord>, Vec<RunRecord>) = added
        .into_iter()
        .partition(|r| r.reason == Some(Reason::MissedSchedule));
    if missed.is_empty() {
        runs.splice(0..0, others);
        return;
    }
    missed.sort_by_key(|r| std::cmp::Reverse(r.scheduled_at));
    others.sort_by_key(|r| std::cmp::Reverse(r.scheduled_at));
    let room = limit - others.len().min(limit - 1);
    others.truncate(limit - room);
    if missed.len() > room {
        // The newest `room - 1` stay as they are; the rest become one range.
        let keep = room - 1;
        let folded: Vec<RunRecord> = missed.drain(keep..).collect();
        if let (Some(newest), Some(oldest)) = (folded.first(), folded.last()) {
            let from = oldest.missed_from.unwrap_or(oldest.scheduled_at);
            let mut range = newest.clone();
            range.missed_from = Some(from);
            let count: u64 = folded.iter().map(|r| r.missed_count.unwrap_or(1)).sum();
            range.missed_count = Some(count);
            range.message = Some(format!(
                "{count} scheduled times, from {} to this one, were missed: {}",
                format_time(&from),
                oldest.message.as_deref().unwrap_or("")
            ));
            missed.push(range);
        }
    }
    runs.splice(0..0, others.into_iter().chain(missed));
}

/// The scheduled times of the active runs: the top-level run's first.
fn active_times(top_at: Option<Timestamp>, overlapping: &[OverlappingRun]) -> Vec<Timestamp> {
    top_at
        .into_iter()
        .chain(overlapping.iter().map(|r| r.scheduled_at))
        .collect()
}

fn min_requeue(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A run stopped to make way for the candidate says so in its record (it may never have
/// had a container: a crash came between recording it and the create).
fn note_replaced(status: &mut TaskStatus, candidate: &Option<(Timestamp, Option<Reason>)>) {
    if status.reason != Some(Reason::Terminated) {
        return;
    }
    let Some((at, reason)) = candidate else { return };
    let by = if *reason == Some(Reason::ManualTrigger) {
        "triggered"
    } else {
        "scheduled"
    };
    status.message = Some(format!(
        "replaced by the run {by} at {} (concurrencyPolicy: Replace)",
        format_time(at)
    ));
}

/// The input of one overlapping run's own decision: its view, and what was seen of its
/// containers.
fn run_input<'a>(
    input: &Input<'a>,
    desired: &'a Desired,
    view: &'a TaskStatus,
    run: u32,
    terminate: bool,
) -> Input<'a> {
    let seen = input.scheduling.overlapping.get(&run).cloned().unwrap_or_default();
    Input {
        desired,
        status: Some(view),
        observed: seen.single.observed,
        log_tail: seen.single.log_tail,
        event: seen.single.event,
        // Its own attempt's beats, never the top-level run's (`Input::heartbeat`).
        heartbeat: seen.single.heartbeat,
        slot: seen.single.slot,
        lanes: seen.lanes,
        terminate,
        index: None,
        scheduling: Scheduling {
            run: Some(run),
            ..Scheduling::default()
        },
        ..input.clone()
    }
}

/// Moves each run overlapping the top-level one (Allow) by its own decision, under the
/// spec it started with; a run that ended leaves `overlapping` for its record in `runs`.
#[allow(clippy::too_many_arguments)]
fn move_overlapping(
    input: &Input<'_>,
    spec: &TaskSpec,
    status: &mut TaskStatus,
    sched: &mut ScheduleStatus,
    runs: &mut [RunRecord],
    replace: bool,
    candidate: &Option<(Timestamp, Option<Reason>)>,
) -> (Vec<Action>, Option<Duration>) {
    let mut actions = Vec::new();
    let mut requeue = None;
    for run in std::mem::take(&mut sched.overlapping) {
        let mut run_spec = spec.clone();
        run_spec.schedule = None;
        run_spec.spec_hash = run.spec_hash.clone();
        let desired = Desired::Valid(Box::new(run_spec));
        let view = run.view(status);
        let decided = super::decide(run_input(input, &desired, &view, run.run, input.terminate || replace));
        let mut view = decided.status.unwrap_or(view);
        if replace && !input.terminate {
            note_replaced(&mut view, candidate);
        }
        update_record(runs, run.run, &view, input.now);
        actions.extend(decided.actions);
        if !view.phase.is_final() {
            requeue = min_requeue(requeue, decided.requeue_after);
            sched
                .overlapping
                .push(OverlappingRun::from_view(run.run, run.scheduled_at, view));
        }
    }
    (actions, requeue)
}

/// A status written before runs moved kept its oldest active run in the top-level fields
/// and newer ones beside it: the newest goes on top (the older, if still active, beside
/// it), so that `phase` is the newest run's from the first pass that reads it. Each run
/// keeps its record, names and lanes (by number); no run is decided twice, as this
/// comes after every run's decision.
fn newest_on_top(status: &mut TaskStatus, sched: &mut ScheduleStatus, top_at: &mut Option<Timestamp>) {
    let top = sched.current_run.unwrap_or(sched.run_count);
    let Some(newest) = sched
        .overlapping
        .iter()
        .enumerate()
        .max_by_key(|(_, r)| r.run)
        .filter(|(_, r)| r.run > top)
        .map(|(i, _)| i)
    else {
        return;
    };
    let newest = sched.overlapping.remove(newest);
    let older = std::mem::replace(status, newest.view(status));
    if let Some(older_at) = *top_at {
        sched.overlapping.push(OverlappingRun::from_view(top, older_at, older));
        sched.overlapping.sort_by_key(|r| r.run);
    }
    sched.current_run = Some(newest.run);
    *top_at = Some(newest.scheduled_at);
    sched.active = active_times(*top_at, &sched.overlapping);
}

/// Before anything else when the manifest no longer schedules the task (deleted,
/// invalid, or its schedule removed): the overlapping runs are stopped and their
/// containers deleted, each as its own task's would be, so that none is left behind
/// when the status goes or the top-level run carries on alone. `None`: nothing overlaps.
pub(super) fn wind_down_overlapping(input: &Input<'_>) -> Option<Decision> {
    let status = input.status?;
    let sched = status.schedule.as_ref()?;
    if sched.overlapping.is_empty() || matches!(input.desired, Desired::Valid(spec) if spec.schedule.is_some()) {
        return None;
    }
    let mut status = status.clone();
    let mut sched = status.schedule.take()?;
    let top_at = (sched.active.len() > sched.overlapping.len())
        .then(|| sched.active.first().copied())
        .flatten();
    let mut actions = Vec::new();
    let stop = Desired::Absent;
    for run in std::mem::take(&mut sched.overlapping) {
        let view = run.view(&status);
        let decided = super::decide(run_input(input, &stop, &view, run.run, false));
        actions.extend(decided.actions.into_iter().filter(|a| *a != Action::RemoveStatus));
        match decided.status {
            Some(view) => {
                update_record(&mut status.runs, run.run, &view, input.now);
                sched
                    .overlapping
                    .push(OverlappingRun::from_view(run.run, run.scheduled_at, view));
            }
            None => {
                // Its containers are gone: the run ends, stopped from outside.
                let mut view = view;
                view.phase = Phase::Failed;
                view.reason = Some(Reason::Cancelled);
                view.message = Some("stopped: the manifest no longer schedules this task".into());
                update_record(&mut status.runs, run.run, &view, input.now);
            }
        }
    }
    sched.active = active_times(top_at, &sched.overlapping);
    status.schedule = Some(sched);
    Some(Decision {
        status: Some(status),
        actions,
        requeue_after: Some(SOON),
    })
}

/// Copies a run's standing into its record.
fn update_record(runs: &mut [RunRecord], run: u32, status: &TaskStatus, now: Timestamp) {
    let Some(record) = runs.iter_mut().find(|r| r.run == Some(run)) else {
        return;
    };
    record.phase = Some(status.phase);
    record.attempts = status.attempt;
    record.exit_code = status.current().and_then(|a| a.exit_code);
    record.result = status.result.clone();
    if record.reason != Some(Reason::ManualTrigger) {
        record.reason = status.reason;
    }
    record.message = status.message.clone();
    if status.phase.is_final() && record.finished_at.is_none() {
        record.finished_at = Some(now);
    }
}
