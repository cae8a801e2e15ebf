//! Slot admission: which of the containers a decision would start may start now, and
//! where each of a task's lanes stands towards the limits afterwards.
//!
//! The bargaining with [`Slots`] is the only stateful step; what to ask for, what to
//! hold back when a slot is refused, and which lanes hold slots are pure functions of
//! the decision and the status, tested below.

use super::limits::{Lane, Slots, Standing};
use super::reconcile::{self, Decision, Input, Slot};
use crate::manifest::RuntimeKind;
use crate::status::{Reason, TaskStatus};
use crate::task::TaskKey;
use std::time::Duration;

/// A lane's standing, with the runtime its container lives on (a lane holds a slot of
/// its own runtime's cap as well as of the global limit).
pub(super) type LaneStanding = (Lane, Standing, Option<RuntimeKind>);

/// What admission made of a decision.
pub(super) enum Admitted {
    /// The decision to carry out: the first one, or one deciding again with the
    /// refused lanes held back.
    Decided {
        decision: Box<Decision>,
        /// The lane refused a slot (it waits in line), if one was.
        waiting_lane: Option<Lane>,
        /// How long until the create rate gives its next token, when that refused.
        token_wait: Option<Duration>,
    },
    /// Start-up has not seen enough yet for this task to start ([`super::StartGate`]):
    /// its lanes are put in line and these are the task's standings meanwhile.
    Deferred(Vec<LaneStanding>),
}

/// Asks for a slot for each container the decision starts, in lane order; decides
/// again with every lane not granted held back when one is refused.
pub(super) fn admit(
    slots: &Slots,
    may_start: bool,
    key: &TaskKey,
    order: u64,
    runtime: RuntimeKind,
    mut input: Input<'_>,
    decision: Decision,
) -> Admitted {
    let started = decision.started_lanes(input.status);
    if started.is_empty() {
        return Admitted::Decided {
            decision: Box::new(decision),
            waiting_lane: None,
            token_wait: None,
        };
    }
    if !may_start {
        // Start nothing before every task ahead of this one has been seen once: names
        // are then known, and first come, first served has everyone ahead in line.
        for lane in &started {
            slots.enqueue(key, lane.unwrap_or(0), order, runtime);
        }
        return Admitted::Deferred(deferred_standings(&started, input.status));
    }
    let mut granted = Vec::new();
    for lane in &started {
        let (slot, token_wait) = slots.try_acquire(key, lane.unwrap_or(0), order, runtime);
        if slot != Slot::Granted {
            let lanes = decision.status.as_ref().map_or(0, |s| s.indexes.len() as u32);
            hold_back(&mut input, lanes, &granted, slot);
            return Admitted::Decided {
                decision: Box::new(reconcile::decide(input)),
                waiting_lane: Some(lane.unwrap_or(0)),
                token_wait,
            };
        }
        granted.push(*lane);
    }
    Admitted::Decided {
        decision: Box::new(decision),
        waiting_lane: None,
        token_wait: None,
    }
}

/// Marks every container not granted a slot as refused: the single container (which a
/// fan-out that became a task of one completion starts too), and every lane of a
/// fan-out, or a lane past the parallelism cut of the first decision could start
/// without a slot. The lanes after a refused one are behind it in line, so they are
/// refused too. A scheduled task's runs have lanes by run number, wherever each run's
/// record is (`reconcile::overlapping_lane`).
pub(super) fn hold_back(input: &mut Input<'_>, lanes: u32, granted: &[Option<Lane>], full: Slot) {
    let scheduled = matches!(input.desired, reconcile::Desired::Valid(spec) if spec.schedule.is_some());
    // The run the status's own fields are about: a task's (lane 0 or its indexes), a
    // scheduled run by number, or run 0 when a running task is given a schedule.
    let own = match input.status {
        Some(status) => reconcile::own_run(status).or(scheduled.then_some(0)),
        None => None,
    };
    let own_lanes = lanes.max(input.status.map_or(0, |s| s.indexes.len() as u32));
    // The single container keeps a slot granted before the refusal (one started beside
    // an overlapping run's, whose lanes come after it).
    if !granted.contains(&reconcile::own_lane(own, None)) {
        input.slot = full.clone();
    }
    for index in 0..own_lanes {
        if !granted.contains(&reconcile::own_lane(own, Some(index))) {
            input.lanes.entry(index).or_default().slot = full.clone();
        }
    }
    // Each run overlapping the top-level one (Allow) has lanes of its own.
    if let Some(status) = input.status {
        for run in status.schedule.iter().flat_map(|s| s.overlapping.iter()) {
            let seen = input.scheduling.overlapping.entry(run.run).or_default();
            for (lane, index) in reconcile::overlapping_lanes(run) {
                if granted.contains(&Some(lane)) {
                    continue;
                }
                match index {
                    None => seen.single.slot = full.clone(),
                    Some(index) => seen.lanes.entry(index).or_default().slot = full.clone(),
                }
            }
        }
    } else if !scheduled {
        return;
    }
    // A run the decision starts (not in the status yet) takes the next run number, and
    // so the lanes that follow from it.
    let next = input
        .status
        .and_then(|s| s.schedule.as_ref())
        .map_or(1, |s| s.run_count + 1);
    let completions = match input.desired {
        reconcile::Desired::Valid(spec) if spec.completions > 1 => spec.completions,
        _ => 0,
    };
    let seen = input.scheduling.overlapping.entry(next).or_default();
    if !granted.contains(&Some(reconcile::overlapping_lane(next, None))) {
        seen.single.slot = full.clone();
    }
    for index in 0..completions {
        if !granted.contains(&Some(reconcile::overlapping_lane(next, Some(index)))) {
            seen.lanes.entry(index).or_default().slot = full.clone();
        }
    }
}

/// While start-up is not over: the lanes to start wait in line, and the containers
/// that exist already hold their slots (a fan-out with a live lane and a lane to
/// start), or once caught up another task could take them and run past the limit.
fn deferred_standings(started: &[Option<Lane>], status: Option<&TaskStatus>) -> Vec<LaneStanding> {
    let waiting = started.iter().map(|lane| (lane.unwrap_or(0), Standing::Waiting, None));
    let live = standings(status, None)
        .into_iter()
        .filter(|(lane, standing, _)| *standing == Standing::Live && !started.iter().any(|l| l.unwrap_or(0) == *lane));
    waiting.chain(live).collect()
}

/// Where each lane of a task stands according to a status: a lane whose container may
/// exist holds a slot, the lane refused one waits (when the status says it waits), any
/// other holds nothing. A scheduled task's runs stand on lanes by run number, the
/// top-level one's too, so a run keeps its slots when it moves beside a newer one.
pub(super) fn standings(status: Option<&TaskStatus>, waiting_lane: Option<Lane>) -> Vec<LaneStanding> {
    standings_after_deletes(status, waiting_lane, &[])
}

/// [`standings`], where a lane whose container is among `gone` (deleted by this pass,
/// so known to run no more) stands idle although the status still says `Deleting`.
pub(super) fn standings_after_deletes(
    status: Option<&TaskStatus>,
    waiting_lane: Option<Lane>,
    gone: &[String],
) -> Vec<LaneStanding> {
    let Some(status) = status else {
        return Vec::new();
    };
    let own = reconcile::own_run(status);
    let mut all = run_standings(status, waiting_lane, gone, |index| {
        reconcile::own_lane(own, index).unwrap_or(0)
    });
    // Each run overlapping the top-level one (Allow), on its own lanes.
    for run in status.schedule.iter().flat_map(|s| s.overlapping.iter()) {
        let fan_out = !run.indexes.is_empty();
        all.extend(run_standings(&run.view(status), waiting_lane, gone, |index| {
            reconcile::overlapping_lane(run.run, index.filter(|_| fan_out))
        }));
    }
    all
}

/// [`standings`] of one run's record, its containers on the lanes `lane_of` gives (of
/// its single container, `None`, or of each index).
fn run_standings(
    status: &TaskStatus,
    waiting_lane: Option<Lane>,
    gone: &[String],
    lane_of: impl Fn(Option<u32>) -> Lane,
) -> Vec<LaneStanding> {
    let deleted = |record: Option<&crate::status::AttemptRecord>| record.is_some_and(|a| gone.contains(&a.container));
    if status.indexes.is_empty() {
        let lane = lane_of(None);
        let own_waits = match reconcile::own_run(status) {
            // A task's single container: any lane of its own was refused (a fan-out
            // that became a task of one completion asks for its first).
            None if lane == 0 => waiting_lane.is_some_and(|lane| lane < reconcile::overlapping_lane(0, None)),
            _ => waiting_lane == Some(lane),
        };
        let standing = if status.phase.has_container() && !deleted(status.current()) {
            Standing::Live
        } else if own_waits && status.reason == Some(Reason::WaitingForSlot) {
            Standing::Waiting
        } else {
            Standing::Idle
        };
        return vec![(lane, standing, status.current().map(|a| a.runtime))];
    }
    status
        .indexes
        .iter()
        .map(|l| {
            let lane = lane_of(Some(l.index));
            let record = status
                .attempts
                .iter()
                .find(|a| a.index == Some(l.index) && a.number == l.attempt);
            let standing = if l.phase.has_container() && !deleted(record) {
                Standing::Live
            } else if waiting_lane == Some(lane) {
                Standing::Waiting
            } else {
                Standing::Idle
            };
            (lane, standing, record.map(|a| a.runtime))
        })
        .collect()
}

/// Where each lane stands while a status write is unsure: before it (see
/// [`early_standings`]), or after it failed (it may have been written all the same, by
/// a store that timed out after the write, or not at all). A lane whose container may
/// exist under either status keeps its slot until a later pass reads which it was, and
/// one waiting under either keeps its place; any other holds nothing. A container among
/// `gone` runs no more, whatever either status says.
pub(super) fn standings_unsure(
    before: Option<&TaskStatus>,
    after: Option<&TaskStatus>,
    waiting_lane: Option<Lane>,
    gone: &[String],
) -> Vec<LaneStanding> {
    let rank = |standing: Standing| match standing {
        Standing::Live => 2,
        Standing::Waiting => 1,
        Standing::Idle => 0,
    };
    let mut merged: Vec<LaneStanding> = standings_after_deletes(before, None, gone);
    for (lane, standing, runtime) in standings_after_deletes(after, waiting_lane, gone) {
        match merged.iter_mut().find(|(l, ..)| *l == lane) {
            Some(known) if rank(standing) > rank(known.1) => *known = (lane, standing, runtime),
            Some(_) => {}
            None => merged.push((lane, standing, runtime)),
        }
    }
    merged
}

/// Where each lane stands once a pass has seen some of its containers finished (exited,
/// or gone), before it writes the status that says so: those run no more, so their
/// slots go to the next in line now rather than after a durable write and a delete
/// (invariant: never more running containers than slots). `finished` leaves out any
/// name the decision makes a container under again.
pub(super) fn early_standings(
    before: Option<&TaskStatus>,
    decision: &Decision,
    waiting_lane: Option<Lane>,
    finished: &[String],
) -> Vec<LaneStanding> {
    let finished: Vec<String> = finished
        .iter()
        .filter(|name| !made_again(decision, name))
        .cloned()
        .collect();
    standings_unsure(before, decision.status.as_ref(), waiting_lane, &finished)
}

/// Whether the decision makes a container under `name` (again): that name holds a slot.
pub(super) fn made_again(decision: &Decision, name: &str) -> bool {
    decision
        .actions
        .iter()
        .any(|action| matches!(action, reconcile::Action::EnsureContainer { container, .. } if container == name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{AttemptRecord, IndexStatus, Phase};

    fn attempt(index: Option<u32>, number: u32, runtime: RuntimeKind) -> AttemptRecord {
        AttemptRecord {
            number,
            id: None,
            runtime,
            container: format!("c-{}-{number}", index.unwrap_or(0)),
            index,
            created_at: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            completed_by: None,
            reason: None,
            message: None,
            placement: None,
            semaphores: Vec::new(),
            exit_rule: None,
        }
    }

    fn single(phase: Phase, reason: Option<Reason>) -> TaskStatus {
        let mut status = TaskStatus::new("t", "t", "h", std::time::SystemTime::UNIX_EPOCH.into());
        status.phase = phase;
        status.reason = reason;
        status.attempt = 1;
        status.attempts = vec![attempt(None, 1, RuntimeKind::Docker)];
        status
    }

    fn fan_out(phases: &[Phase]) -> TaskStatus {
        let mut status = TaskStatus::new("t", "t", "h", std::time::SystemTime::UNIX_EPOCH.into());
        status.phase = Phase::Running;
        status.indexes = phases
            .iter()
            .enumerate()
            .map(|(i, phase)| IndexStatus {
                phase: *phase,
                attempt: 1,
                ..IndexStatus::pending(i as u32)
            })
            .collect();
        status.attempts = (0..phases.len() as u32)
            .map(|i| attempt(Some(i), 1, RuntimeKind::Process))
            .collect();
        status
    }

    #[test]
    fn a_container_that_may_exist_holds_its_slot_on_its_runtime() {
        for phase in [Phase::Creating, Phase::Running, Phase::Deleting] {
            assert_eq!(
                standings(Some(&single(phase, None)), None),
                [(0, Standing::Live, Some(RuntimeKind::Docker))],
                "{phase}"
            );
        }
        for phase in [Phase::Pending, Phase::Succeeded, Phase::Failed, Phase::Invalid] {
            assert_eq!(
                standings(Some(&single(phase, None)), None)[0].1,
                Standing::Idle,
                "{phase}"
            );
        }
        assert!(standings(None, None).is_empty(), "a removed task holds nothing");
    }

    #[test]
    fn a_container_seen_finished_frees_its_slot_before_any_status_says_so() {
        let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let decided = |status: TaskStatus, actions: Vec<reconcile::Action>| Decision {
            status: Some(status),
            actions,
            requeue_after: None,
        };
        // Running when read, Deleting as decided, neither written yet: its container
        // exited, so its lane is idle.
        let running = single(Phase::Running, None);
        let deleting = decided(single(Phase::Deleting, None), Vec::new());
        assert_eq!(
            early_standings(Some(&running), &deleting, None, &names(&["c-0-1"]))[0].1,
            Standing::Idle
        );
        // Nothing seen finished: the lane holds its slot whichever status stands.
        assert_eq!(
            early_standings(Some(&running), &deleting, None, &[])[0].1,
            Standing::Live
        );
        // A name the decision makes a container under again keeps its slot.
        let remade = decided(
            single(Phase::Creating, None),
            vec![reconcile::Action::EnsureContainer {
                container: "c-0-1".into(),
                attempt: 1,
                index: None,
            }],
        );
        assert_eq!(
            early_standings(Some(&running), &remade, None, &names(&["c-0-1"]))[0].1,
            Standing::Live
        );
        // Of a fan-out, only the finished index's lane; a lane refused a slot keeps its
        // place in line.
        let before = fan_out(&[Phase::Running, Phase::Running, Phase::Pending]);
        let mut after = fan_out(&[Phase::Deleting, Phase::Running, Phase::Pending]);
        after.reason = Some(Reason::WaitingForSlot);
        let got: Vec<_> = early_standings(Some(&before), &decided(after, Vec::new()), Some(2), &names(&["c-0-1"]))
            .into_iter()
            .map(|(l, s, _)| (l, s))
            .collect();
        assert_eq!(got, [(0, Standing::Idle), (1, Standing::Live), (2, Standing::Waiting)]);
    }

    #[test]
    fn a_container_this_pass_deleted_frees_its_slot_before_its_status_says_gone() {
        let deleting = single(Phase::Deleting, None);
        let gone = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            standings_after_deletes(Some(&deleting), None, &gone(&["c-0-1"]))[0].1,
            Standing::Idle
        );
        // Another container's delete (a stale one, an older attempt's) frees nothing.
        assert_eq!(
            standings_after_deletes(Some(&deleting), None, &gone(&["c-0-0"]))[0].1,
            Standing::Live
        );
        // A lane whose status names a new container holds its slot for it.
        let mut recreated = single(Phase::Creating, None);
        recreated.attempts.push(attempt(None, 2, RuntimeKind::Docker));
        recreated.attempt = 2;
        assert_eq!(
            standings_after_deletes(Some(&recreated), None, &gone(&["c-0-1"]))[0].1,
            Standing::Live
        );
        // Of a fan-out, only the deleted index's lane.
        let lanes = fan_out(&[Phase::Deleting, Phase::Deleting, Phase::Running]);
        let got: Vec<_> = standings_after_deletes(Some(&lanes), None, &gone(&["c-1-1"]))
            .into_iter()
            .map(|(l, s, _)| (l, s))
            .collect();
        assert_eq!(got, [(0, Standing::Live), (1, Standing::Idle), (2, Standing::Live)]);
    }

    #[test]
    fn only_the_refused_lane_that_says_so_waits() {
        let waiting = single(Phase::Pending, Some(Reason::WaitingForSlot));
        assert_eq!(standings(Some(&waiting), Some(0))[0].1, Standing::Waiting);
        // Refused, but the decision went elsewhere (backoff): it gives up its place.
        let backing_off = single(Phase::Pending, Some(Reason::BackoffAfterFailure));
        assert_eq!(standings(Some(&backing_off), Some(0))[0].1, Standing::Idle);
        assert_eq!(standings(Some(&waiting), None)[0].1, Standing::Idle);

        let lanes = fan_out(&[Phase::Running, Phase::Pending, Phase::Pending, Phase::Succeeded]);
        let got: Vec<_> = standings(Some(&lanes), Some(1))
            .into_iter()
            .map(|(l, s, _)| (l, s))
            .collect();
        assert_eq!(
            got,
            [
                (0, Standing::Live),
                (1, Standing::Waiting),
                (2, Standing::Idle),
                (3, Standing::Idle)
            ]
        );
    }

    #[test]
    fn while_deferred_live_lanes_keep_their_slots_and_new_ones_wait() {
        let lanes = fan_out(&[Phase::Running, Phase::Creating, Phase::Pending]);
        let got = deferred_standings(&[Some(1), Some(2)], Some(&lanes));
        let got: Vec<_> = got.into_iter().map(|(l, s, _)| (l, s)).collect();
        assert_eq!(
            got,
            [(1, Standing::Waiting), (2, Standing::Waiting), (0, Standing::Live)]
        );
        assert_eq!(
            deferred_standings(&[None], None)
                .into_iter()
                .map(|(l, s, _)| (l, s))
                .collect::<Vec<_>>(),
            [(0, Standing::Waiting)]
        );
    }

    #[test]
    fn after_a_failed_write_a_lane_live_under_either_status_keeps_its_slot() {
        // The write that would start the container may have landed all the same.
        let before = single(Phase::Pending, None);
        let after = single(Phase::Creating, None);
        assert_eq!(
            standings_unsure(Some(&before), Some(&after), None, &[])[0].1,
            Standing::Live
        );
        // The write that would end it may not have: its container may still run.
        let before = fan_out(&[Phase::Running, Phase::Running]);
        let after = fan_out(&[Phase::Failed, Phase::Running]);
        let got: Vec<_> = standings_unsure(Some(&before), Some(&after), None, &[])
            .into_iter()
            .map(|(l, s, _)| (l, s))
            .collect();
        assert_eq!(got, [(0, Standing::Live), (1, Standing::Live)]);
        // Neither lets a container exist: nothing is held.
        let idle = standings_unsure(
            Some(&single(Phase::Pending, None)),
            Some(&single(Phase::Failed, None)),
            None,
            &[],
        );
        assert_eq!(idle[0].1, Standing::Idle);
        assert_eq!(standings_unsure(None, Some(&after), None, &[]).len(), 2);
    }

    /// A scheduled status: run `top` in the top-level fields, and `beside` overlapping it.
    fn scheduled(top: u32, phase: Phase, beside: &[(u32, Phase)]) -> TaskStatus {
        let mut status = single(phase, None);
        status.attempts[0].container = format!("c-r{top}");
        let overlapping = beside
            .iter()
            .map(|(run, phase)| {
                let mut view = single(*phase, None);
                view.attempts[0].container = format!("c-r{run}");
                crate::status::OverlappingRun::from_view(*run, status.updated_at, view)
            })
            .collect();
        status.schedule = Some(crate::status::ScheduleStatus {
            cron: "@every 2s".into(),
            last_scheduled_at: None,
            next_scheduled_at: None,
            active: Vec::new(),
            handled_through: status.updated_at,
            run_count: top,
            triggered_at: None,
            current_run: Some(top),
            overlapping,
        });
        status
    }

    #[test]
    fn a_scheduled_run_keeps_its_lane_when_it_moves_beside_a_newer_one() {
        let lane = |run| reconcile::overlapping_lane(run, None);
        // Run 1 runs; then run 2 takes the top-level fields and run 1 moves beside it.
        let before = scheduled(1, Phase::Running, &[]);
        let after = scheduled(2, Phase::Creating, &[(1, Phase::Running)]);
        let got = |s: &TaskStatus| {
            standings(Some(s), None)
                .into_iter()
                .map(|(l, s, _)| (l, s))
                .collect::<Vec<_>>()
        };
        assert_eq!(got(&before), [(lane(1), Standing::Live)]);
        assert_eq!(got(&after), [(lane(2), Standing::Live), (lane(1), Standing::Live)]);
        // Only run 2's container asks for a slot: run 1's kept its own by moving.
        let decision = Decision {
            status: Some(after.clone()),
            actions: Vec::new(),
            requeue_after: None,
        };
        assert_eq!(decision.started_lanes(Some(&before)), [Some(lane(2))]);
        // Refused, run 2 waits on its own lane, not on run 1's.
        let mut waiting = after.clone();
        waiting.phase = Phase::Pending;
        waiting.reason = Some(Reason::WaitingForSlot);
        assert_eq!(
            got_waiting(&waiting, lane(2)),
            [(lane(2), Standing::Waiting), (lane(1), Standing::Live)]
        );
    }

    /// An input with nothing observed and the slot granted.
    fn bare_input<'a>(key: &'a TaskKey, desired: &'a reconcile::Desired, status: Option<&'a TaskStatus>) -> Input<'a> {
        Input {
            key,
            desired,
            status,
            observed: Default::default(),
            seen_by_engine: false,
            log_tail: None,
            slot: Slot::Granted,
            now: std::time::SystemTime::UNIX_EPOCH.into(),
            jitter: 0.0,
            event: None,
            heartbeat: None,
            terminate: false,
            index: None,
            lanes: Default::default(),
            dependencies: Default::default(),
            placement: None,
            scheduling: Default::default(),
        }
    }

    #[test]
    fn a_refusal_holds_back_scheduled_runs_by_number() {
        let key = TaskKey::new("t");
        let desired = reconcile::Desired::Absent;
        let before = scheduled(1, Phase::Pending, &[]);
        let mut input = bare_input(&key, &desired, Some(&before));
        let full = Slot::Full {
            limit: "max-running 1/1".into(),
        };
        // Run 1's retry (the top-level run) got its slot; run 2, starting now, did not.
        hold_back(
            &mut input,
            0,
            &[Some(reconcile::overlapping_lane(1, None))],
            full.clone(),
        );
        assert_eq!(input.slot, Slot::Granted, "run 1 keeps the slot granted on its lane");
        assert_eq!(input.scheduling.overlapping[&2].single.slot, full);
    }

    fn got_waiting(status: &TaskStatus, waiting: Lane) -> Vec<(Lane, Standing)> {
        standings(Some(status), Some(waiting))
            .into_iter()
            .map(|(l, s, _)| (l, s))
            .collect()
    }

    #[test]
    fn a_refusal_holds_back_every_lane_not_granted() {
        let key = TaskKey::new("t");
        let desired = reconcile::Desired::Absent;
        let mut input = bare_input(&key, &desired, None);
        let full = Slot::Full {
            limit: "max-running 2/2".into(),
        };
        hold_back(&mut input, 4, &[Some(0), Some(2)], full.clone());
        assert_eq!(input.slot, full);
        let refused: Vec<u32> = input
            .lanes
            .iter()
            .filter(|(_, lane)| lane.slot == full)
            .map(|(index, _)| *index)
            .collect();
        assert_eq!(refused, [1, 3]);
    }
}
