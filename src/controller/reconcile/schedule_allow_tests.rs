//! `concurrencyPolicy: Allow`: runs overlap, each a whole run of its own (attempts,
//! retries, container names), bounded by `MAX_ACTIVE_RUNS`; and the proptest model of
//! `schedule_tests` sees runs overlap under Allow and never under the other policies.

use super::schedule::MAX_ACTIVE_RUNS;
use super::schedule_tests::*;
use super::*;
use crate::runtime::ContainerState;
use crate::status::{Phase, Reason};

fn absent() -> Observed {
    Observed::Container(ContainerState::Absent)
}

fn deletes(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteContainer { container } => Some(container.clone()),
            _ => None,
        })
        .collect()
}

fn step<'a>(status: &'a TaskStatus, now: Timestamp, top: Observed, others: &[(u32, Observed)]) -> Step<'a> {
    Step {
        observed: top,
        overlapping: others.iter().cloned().collect(),
        ..at_(Some(status), now)
    }
}

#[test]
fn allow_starts_a_run_beside_the_active_one_with_its_own_attempts_and_names() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Allow}\n  retries: 1\n  backoff: 1s\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    assert_eq!(s.phase, Phase::Creating);

    // Run 1 still runs at 20 s: run 2 starts beside it, in the same write that handles 20 s.
    let before = s.clone();
    let d = decide_at(&spec, step(&s, at(20), running(), &[]));
    assert_eq!(ensures(&d), vec![key().run_container_name(2, 1, None)]);
    let s = d.status.clone().unwrap();
    let sched = s.schedule.as_ref().unwrap();
    assert_eq!(sched.active, vec![at(10), at(20)]);
    assert_eq!(sched.handled_through, at(20));
    assert_eq!(sched.current_run, Some(1), "the top-level fields stay run 1's");
    assert_eq!(sched.overlapping.len(), 1);
    assert_eq!(sched.overlapping[0].run, 2);
    assert_eq!(sched.overlapping[0].phase, Phase::Creating);
    assert_eq!(s.scheduled_at_of(&key().run_container_name(2, 1, None)), Some(at(20)));
    assert_eq!(s.scheduled_at_of(&key().run_container_name(1, 1, None)), Some(at(10)));
    assert!(missed(&s).is_empty());
    // Its container takes a slot of its own lane.
    assert_eq!(d.started_lanes(Some(&before)), vec![Some(overlapping_lane(2, None))]);

    // Run 2 fails: its own retry, named for run 2, while run 1 carries on.
    let d = decide_at(&spec, step(&s, at(25), running(), &[(2, exited(3))]));
    assert_eq!(deletes(&d), vec![key().run_container_name(2, 1, None)]);
    let s = d.status.unwrap();
    let d = decide_at(&spec, step(&s, at(26), running(), &[(2, absent())]));
    let s = d.status.unwrap();
    let run2 = &s.schedule.as_ref().unwrap().overlapping[0];
    assert_eq!(run2.phase, Phase::Pending);
    assert_eq!(run2.reason, Some(Reason::BackoffAfterFailure));
    assert_eq!(
        s.phase,
        Phase::Running,
        "run 1 moves by what was seen of its own container"
    );
    let d = decide_at(&spec, step(&s, at(28), running(), &[(2, absent())]));
    assert_eq!(ensures(&d), vec![key().run_container_name(2, 2, None)]);
    let s = d.status.unwrap();

    // Run 1 ends and is recorded; run 2 still runs, so the task is still active.
    let d = decide_at(&spec, step(&s, at(29), exited(0), &[(2, running())]));
    let s = d.status.unwrap();
    let s = decide_at(&spec, step(&s, at(29), absent(), &[(2, running())]))
        .status
        .unwrap();
    let sched = s.schedule.as_ref().unwrap();
    assert_eq!(sched.active, vec![at(20)]);
    let run1 = s.runs.iter().find(|r| r.run == Some(1)).unwrap();
    assert_eq!(run1.phase, Some(Phase::Succeeded));
    assert!(run1.finished_at.is_some());

    // 30 s: the top-level fields are free, and run 3 takes them.
    let d = decide_at(&spec, step(&s, at(30), Observed::NotApplicable, &[(2, running())]));
    assert_eq!(ensures(&d), vec![key().run_container_name(3, 1, None)]);
    let s = d.status.unwrap();
    let sched = s.schedule.as_ref().unwrap();
    assert_eq!(sched.current_run, Some(3));
    assert_eq!(sched.active, vec![at(30), at(20)]);

    // Run 2 succeeds on its second attempt: its record says so.
    let s = decide_at(&spec, step(&s, at(31), running(), &[(2, exited(0))]))
        .status
        .unwrap();
    let s = decide_at(&spec, step(&s, at(31), running(), &[(2, absent())]))
        .status
        .unwrap();
    let sched = s.schedule.as_ref().unwrap();
    assert!(sched.overlapping.is_empty());
    assert_eq!(sched.active, vec![at(30)]);
    let run2 = s.runs.iter().find(|r| r.run == Some(2)).unwrap();
    assert_eq!((run2.phase, run2.attempts), (Some(Phase::Succeeded), 2));
}

#[test]
fn allow_bounds_the_runs_active_at_once_and_records_the_rest_missed() {
    let spec = spec("  schedule: {cron: '@every 1s', concurrencyPolicy: Allow}\n");
    let mut s = decide_at(&spec, at_(None, at(0))).status.unwrap();
    for t in 1..=(MAX_ACTIVE_RUNS as i64 + 3) {
        let others: Vec<(u32, Observed)> = s
            .schedule
            .as_ref()
            .unwrap()
            .overlapping
            .iter()
            .map(|r| (r.run, running()))
            .collect();
        s = decide_at(&spec, step(&s, at(t), running(), &others)).status.unwrap();
    }
    let sched = s.schedule.as_ref().unwrap();
    assert_eq!(sched.active.len(), MAX_ACTIVE_RUNS);
    assert_eq!(sched.run_count as usize, MAX_ACTIVE_RUNS);
    let held_back = missed(&s);
    assert_eq!(held_back.len(), 3, "{:?}", s.runs);
    let record = s
        .runs
        .iter()
        .find(|r| r.reason == Some(Reason::MissedSchedule))
        .unwrap();
    assert!(
        record.message.as_deref().unwrap().contains("concurrencyPolicy: Allow"),
        "{record:?}"
    );
}

#[test]
fn a_refused_slot_holds_an_overlapping_run_back_without_handling_its_time_twice() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Allow}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    let s = decide_at(&spec, step(&s, at(20), running(), &[])).status.unwrap();
    // Run 2's first container waits for a slot: recorded, not made.
    let key = key();
    let desired = Desired::Valid(Box::new(spec.clone()));
    let mut input = decide_at_input(&key, &desired, &s, at(10));
    input.now = at(21);
    input.observed = running();
    let full = Slot::Full {
        limit: "max-running 1/1".into(),
    };
    let mut seen = RunObservation::default();
    seen.single.slot = full;
    input.scheduling.overlapping.insert(2, seen);
    // The status decided at 20 s had already made it: a status still before its create
    // (the slot is asked for at the run's start) is what admission holds back.
    let mut waiting = s.clone();
    let run2 = &mut waiting.schedule.as_mut().unwrap().overlapping[0];
    run2.phase = Phase::Pending;
    run2.attempt = 0;
    run2.attempts.clear();
    input.status = Some(&waiting);
    let d = decide(input);
    assert!(ensures(&d).is_empty());
    let after = d.status.unwrap();
    let run2 = &after.schedule.as_ref().unwrap().overlapping[0];
    assert_eq!(run2.reason, Some(Reason::WaitingForSlot));
    assert_eq!(
        after.schedule.as_ref().unwrap().run_count,
        2,
        "no new run for the same time"
    );
}

#[test]
fn a_deleted_manifest_stops_every_overlapping_run_before_the_status_goes() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Allow}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    let s = decide_at(&spec, step(&s, at(20), running(), &[])).status.unwrap();
    let s = decide_at(&spec, step(&s, at(21), running(), &[(2, running())]))
        .status
        .unwrap();
    let key = key();
    let gone = Desired::Absent;
    let mut input = decide_at_input(&key, &gone, &s, at(22));
    input.observed = running();
    input.scheduling.overlapping.insert(
        2,
        RunObservation {
            single: Lane {
                observed: running(),
                ..Lane::default()
            },
            lanes: Default::default(),
        },
    );
    let d = decide(input);
    assert_eq!(deletes(&d), vec![key.run_container_name(2, 1, None)]);
    let s = d.status.unwrap();
    let mut input = decide_at_input(&key, &gone, &s, at(23));
    input.observed = running();
    input.scheduling.overlapping.insert(
        2,
        RunObservation {
            single: Lane {
                observed: absent(),
                ..Lane::default()
            },
            lanes: Default::default(),
        },
    );
    let s = decide(input).status.unwrap();
    assert!(s.schedule.as_ref().unwrap().overlapping.is_empty());
    // Then the top-level run, as for any task; the status goes once it is gone.
    let mut input = decide_at_input(&key, &gone, &s, at(24));
    input.observed = running();
    let d = decide(input);
    assert_eq!(deletes(&d), vec![key.run_container_name(1, 1, None)]);
    let mut input = decide_at_input(&key, &gone, d.status.as_ref().unwrap(), at(25));
    input.observed = absent();
    assert_eq!(decide(input).actions, vec![Action::RemoveStatus]);
}

#[test]
fn the_model_sees_runs_overlap_under_allow_only() {
    // Runs of 12 s every 5 s, with no crash: up to three at once under Allow.
    let steps: Vec<(i64, bool, bool, i64)> = (0..30).map(|_| (2, false, false, 12)).collect();
    assert!(run_model("Allow", "skip", None, &steps).unwrap() >= 3);
    assert_eq!(run_model("Forbid", "skip", None, &steps).unwrap(), 1);
    assert_eq!(run_model("Replace", "skip", None, &steps).unwrap(), 1);
    // A command far slower than its schedule: the bound holds.
    let slow: Vec<(i64, bool, bool, i64)> = (0..60).map(|_| (3, false, false, 500)).collect();
    assert_eq!(run_model("Allow", "all", None, &slow).unwrap(), MAX_ACTIVE_RUNS);
}
