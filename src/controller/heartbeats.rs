//! Heartbeats in the pipeline: before the decision, each live attempt's latest beat is
//! read from the board the API writes ([`Heartbeats`]) into its observation; after the
//! status is written, the board forgets the attempts that status no longer runs. A
//! scheduled task's runs that overlap the top-level one (`concurrencyPolicy: Allow`)
//! are watched the same way, each into its own run's observation.

use super::Shared;
use super::reconcile::{Desired, Lane, RunObservation};
use crate::heartbeat::Heartbeats;
use crate::status::{AttemptRecord, Phase, TaskStatus};
use crate::task::TaskKey;
use std::collections::BTreeMap;

/// The attempts of `status` whose heartbeats count, by index: each one Creating or
/// Running and not yet judged (index 0 for a task of one completion).
fn live_attempts(status: &TaskStatus) -> Vec<(u32, &AttemptRecord)> {
    let live = |phase: Phase| matches!(phase, Phase::Creating | Phase::Running);
    let unjudged = |a: &&AttemptRecord| a.completed_by.is_none() && a.reason.is_none();
    if status.indexes.is_empty() {
        return status
            .current()
            .filter(|_| live(status.phase))
            .filter(unjudged)
            .map(|a| (0, a))
            .into_iter()
            .collect();
    }
    status
        .indexes
        .iter()
        .filter(|l| live(l.phase))
        .filter_map(|l| {
            let record = status
                .attempts
                .iter()
                .rev()
                .find(|a| a.index == Some(l.index) && a.number == l.attempt)
                .filter(unjudged)?;
            Some((l.index, record))
        })
        .collect()
}

/// Puts each live attempt's heartbeats into its observation, when the spec watches them:
/// the top-level run's into `single`/`lanes`, each overlapping run's into its own.
pub(super) fn observe(
    shared: &Shared,
    key: &TaskKey,
    desired: &Desired,
    status: Option<&TaskStatus>,
    (single, lanes): (&mut Lane, &mut BTreeMap<u32, Lane>),
    overlapping: &mut BTreeMap<u32, RunObservation>,
) {
    let watched = matches!(desired, Desired::Valid(spec) if spec.heartbeat_timeout.is_some());
    let Some(status) = status.filter(|_| watched) else {
        return;
    };
    observe_run(shared, key, status, single, lanes);
    for run in status.schedule.iter().flat_map(|s| s.overlapping.iter()) {
        // A run the pass did not look at gets no observation of its beats either.
        if let Some(seen) = overlapping.get_mut(&run.run) {
            observe_run(shared, key, &run.view(status), &mut seen.single, &mut seen.lanes);
        }
    }
}

/// [`observe`] for one run, given as a status of its own.
fn observe_run(
    shared: &Shared,
    key: &TaskKey,
    status: &TaskStatus,
    single: &mut Lane,
    lanes: &mut BTreeMap<u32, Lane>,
) {
    let now = shared.clock.now();
    for (index, record) in live_attempts(status) {
        // The id its token signs (a record written before ids existed: its createdAt).
        let Some(attempt_id) = record.attempt_id() else {
            continue;
        };
        let beat = Some(shared.heartbeats.observe(key, index, record.number, &attempt_id, now));
        if status.indexes.is_empty() {
            single.heartbeat = beat;
        } else if let Some(lane) = lanes.get_mut(&index) {
            lane.heartbeat = beat;
        }
    }
}

/// After the status is written: forget the beats of attempts it no longer runs, in any
/// of its runs. An attempt the decision just began has no id in it yet (the act gives
/// one, written with it): what its container already sent under its number is kept.
pub(super) fn settle(board: &Heartbeats, key: &TaskKey, written: Option<&TaskStatus>) {
    let mut live: Vec<(u32, u32, Option<String>)> = Vec::new();
    let mut add = |run: &TaskStatus| {
        live.extend(
            live_attempts(run)
                .into_iter()
                .map(|(index, record)| (index, record.number, record.id.clone())),
        )
    };
    if let Some(status) = written {
        add(status);
        for run in status.schedule.iter().flat_map(|s| s.overlapping.iter()) {
            add(&run.view(status));
        }
    }
    board.settle(key, &live);
}
