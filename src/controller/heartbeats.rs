//! Heartbeats in the pipeline: before the decision, each live attempt's latest beat is
//! read from the board the API writes ([`Heartbeats`]) into its observation; after the
//! status is written, the board forgets the attempts that status no longer runs.

use super::Shared;
use super::reconcile::{Desired, Lane};
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

/// Puts each live attempt's heartbeats into its observation, when the spec watches them.
pub(super) fn observe(
    shared: &Shared,
    key: &TaskKey,
    desired: &Desired,
    status: Option<&TaskStatus>,
    single: &mut Lane,
    lanes: &mut BTreeMap<u32, Lane>,
) {
    let watched = matches!(desired, Desired::Valid(spec) if spec.heartbeat_timeout.is_some());
    let Some(status) = status.filter(|_| watched) else {
        return;
    };
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

/// After the status is written: forget the beats of attempts it no longer runs. An
/// attempt the decision just began has no id in it yet (the act gives one, written with
/// it): what its container already sent under its number is kept.
pub(super) fn settle(board: &Heartbeats, key: &TaskKey, written: Option<&TaskStatus>) {
    let live: Vec<(u32, u32, Option<String>)> = written
        .map(live_attempts)
        .unwrap_or_default()
        .into_iter()
        .map(|(index, record)| (index, record.number, record.id.clone()))
        .collect();
    board.settle(key, &live);
}
