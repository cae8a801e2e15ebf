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

fn step<'a>(status: &'a TaskStatus, now: Timestamp, top: Observed, others: &[(u32, Observed)]) -> Step<'a> {
    Step {
        observed: top,
        overlapping: others.iter().cloned().collect(),
        ..at_(Some(status), now)
    }
}

/// What a pass saw of an overlapping run of one container.
fn seen_run(observed: Observed) -> RunObservation {
    RunObservation {
        single: Lane {
            observed,
            ..Lane::default()
        },
        lanes: Default::default(),
    }
}

/// The active runs' numbers, the top-level one first, and each active run's record:
/// every active run is in exactly one place, and has a record in `runs`.
fn active_runs(s: &TaskStatus) -> Vec<u32> {
    let sched = s.schedule.as_ref().unwrap();
    let mut runs = Vec::new();
    if sched.active.len() > sched.overlapping.len() {
        runs.push(sched.current_run.unwrap());
    }
    runs.extend(sched.overlapping.iter().map(|r| r.run));
    let mut unique = runs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), runs.len(), "a run in two places: {runs:?}");
    for run in &runs {
        let record = s
            .runs
            .iter()
            .find(|r| r.run == Some(*run))
            .expect("an active run's record");
        assert!(
            record.finished_at.is_none(),
            "run {run} is active yet finished: {record:?}"
        );
    }
    runs
}

#[test]
fn allow_starts_a_run_beside_the_active_one_with_its_own_attempts_and_names() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Allow}\n  retries: 1\n  backoff: 1s\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    assert_eq!(s.phase, Phase::Creating);

    // Run 1 still runs at 20 s: run 2 starts, in the same write that handles 20 s. It
    // takes the top-level fields (the newest run's), and run 1 moves beside it whole.
    let before = s.clone();
    let d = decide_at(&spec, step(&s, at(20), running(), &[]));
    assert_eq!(ensures(&d), vec![key().run_container_name(2, 1, None)]);
    let s = d.status.clone().unwrap();
    let sched = s.schedule.as_ref().unwrap();
    assert_eq!(sched.active, vec![at(20), at(10)]);
    assert_eq!(sched.handled_through, at(20));
    assert_eq!(sched.current_run, Some(2), "the top-level fields are the newest run's");
    assert_eq!(s.phase, Phase::Creating);
    assert_eq!(s.attempts.len(), 1);
    assert_eq!(s.attempts[0].container, key().run_container_name(2, 1, None));
    assert_eq!(sched.overlapping.len(), 1);
    let run1 = &sched.overlapping[0];
    assert_eq!((run1.run, run1.scheduled_at, run1.phase), (1, at(10), Phase::Running));
    let names = |attempts: &[crate::status::AttemptRecord]| {
        attempts
            .iter()
            .map(|a| (a.number, a.container.clone(), a.attempt_id()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&run1.attempts),
        names(&before.attempts),
        "run 1 moved with its attempts (names, ids)"
    );
    assert_eq!(run1.spec_hash, before.spec_hash);
    assert_eq!(active_runs(&s), vec![2, 1]);
    assert_eq!(s.scheduled_at_of(&key().run_container_name(2, 1, None)), Some(at(20)));
    assert_eq!(s.scheduled_at_of(&key().run_container_name(1, 1, None)), Some(at(10)));
    assert!(missed(&s).is_empty());
    // Only run 2's container takes a slot, on its own lane; run 1 keeps its lane.
    assert_eq!(d.started_lanes(Some(&before)), vec![Some(overlapping_lane(2, None))]);

    // Run 2 fails: its own retry, named for run 2, while run 1 carries on.
    let d = decide_at(&spec, step(&s, at(25), exited(3), &[(1, running())]));
    assert_eq!(deletes(&d), vec![key().run_container_name(2, 1, None)]);
    let s = d.status.unwrap();
    let d = decide_at(&spec, step(&s, at(26), absent(), &[(1, running())]));
    let s = d.status.unwrap();
    assert_eq!(s.phase, Phase::Pending);
    assert_eq!(s.reason, Some(Reason::BackoffAfterFailure));
    assert_eq!(
        s.schedule.as_ref().unwrap().overlapping[0].phase,
        Phase::Running,
        "run 1 moves by what was seen of its own container"
    );
    let d = decide_at(&spec, step(&s, at(28), absent(), &[(1, running())]));
    assert_eq!(ensures(&d), vec![key().run_container_name(2, 2, None)]);
    let s = d.status.unwrap();

    // Run 1 ends and is recorded; run 2 still runs, so the task is still active.
    let d = decide_at(&spec, step(&s, at(29), running(), &[(1, exited(0))]));
    let s = d.status.unwrap();
    let s = decide_at(&spec, step(&s, at(29), running(), &[(1, absent())]))
        .status
        .unwrap();
    let sched = s.schedule.as_ref().unwrap();
    assert_eq!(sched.active, vec![at(20)]);
    assert!(sched.overlapping.is_empty());
    let run1 = s.runs.iter().find(|r| r.run == Some(1)).unwrap();
    assert_eq!(run1.phase, Some(Phase::Succeeded));
    assert!(run1.finished_at.is_some());
    assert_eq!((s.phase, s.attempt), (Phase::Running, 2), "still run 2's: {s:?}");

    // 30 s: run 3 starts and takes the top-level fields; run 2 moves beside it.
    let d = decide_at(&spec, step(&s, at(30), running(), &[]));
    assert_eq!(ensures(&d), vec![key().run_container_name(3, 1, None)]);
    let s = d.status.unwrap();
    let sched = s.schedule.as_ref().unwrap();
    assert_eq!(sched.current_run, Some(3));
    assert_eq!(sched.active, vec![at(30), at(20)]);
    assert_eq!(active_runs(&s), vec![3, 2]);

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

/// The contract: `phase` is the phase of the newest run (the newest started), under
/// Allow too, while older runs still run; each older run still ends in its own record.
#[test]
fn phase_is_the_newest_runs_while_older_runs_still_run() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Allow}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    assert_eq!(s.phase, Phase::Scheduled, "before the first run");
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    let s = decide_at(&spec, step(&s, at(11), running(), &[])).status.unwrap();
    assert_eq!(s.phase, Phase::Running);

    // A run of each of rows: (time, what the top-level run's container does, what run
    // 1's does) → the phase shown, and whose attempts are shown.
    let s = decide_at(&spec, step(&s, at(20), running(), &[])).status.unwrap();
    assert_eq!(
        (s.phase, s.schedule.as_ref().unwrap().current_run),
        (Phase::Creating, Some(2))
    );
    let rows: [(i64, Observed, Observed, Phase); 3] = [
        (21, running(), running(), Phase::Running),
        // The newest run ends first: its terminal phase, while run 1 still runs.
        (22, exited(0), running(), Phase::Deleting),
        (23, absent(), running(), Phase::Succeeded),
    ];
    let mut s = s;
    for (t, top, run1, phase) in rows {
        s = decide_at(&spec, step(&s, at(t), top, &[(1, run1)])).status.unwrap();
        assert_eq!(s.phase, phase, "at {t} s: {s:?}");
        assert_eq!(s.attempts[0].container, key().run_container_name(2, 1, None));
        let sched = s.schedule.as_ref().unwrap();
        assert!(sched.active.contains(&at(10)), "run 1 is still active at {t} s");
        assert_eq!(sched.overlapping[0].phase, Phase::Running);
    }
    let run2 = s.runs.iter().find(|r| r.run == Some(2)).unwrap();
    assert_eq!(run2.phase, Some(Phase::Succeeded));

    // Run 1 then fails: its record says so; the phase stays the newest run's.
    let s = decide_at(&spec, step(&s, at(25), Observed::NotApplicable, &[(1, exited(2))]))
        .status
        .unwrap();
    let s = decide_at(&spec, step(&s, at(26), Observed::NotApplicable, &[(1, absent())]))
        .status
        .unwrap();
    let sched = s.schedule.as_ref().unwrap();
    assert!(sched.active.is_empty() && sched.overlapping.is_empty());
    let run1 = s.runs.iter().find(|r| r.run == Some(1)).unwrap();
    assert_eq!((run1.phase, run1.exit_code), (Some(Phase::Failed), Some(2)));
    assert!(run1.finished_at.is_some());
    assert_eq!(s.phase, Phase::Succeeded, "the newest run's, not the last to end");

    // 30 s: run 3, the newest, shows again.
    let s = decide_at(&spec, step(&s, at(30), Observed::NotApplicable, &[]))
        .status
        .unwrap();
    assert_eq!(
        (s.phase, s.schedule.as_ref().unwrap().current_run),
        (Phase::Creating, Some(3))
    );
}

/// A fan-out run that moves beside a newer one starts nothing by moving, and the newer
/// run's indexes each ask for a slot of their own (not taken for the older run's).
#[test]
fn a_fan_out_run_moves_beside_a_newer_one_keeping_its_lanes() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Allow}\n  completions: 2\n  parallelism: 2\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    assert_eq!(s.indexes.len(), 2);
    assert!(s.indexes.iter().all(|l| l.phase.has_container()), "{s:?}");
    let before = s.clone();
    let d = decide_at(&spec, step(&s, at(20), Observed::NotApplicable, &[]));
    let s = d.status.clone().unwrap();
    assert_eq!(s.schedule.as_ref().unwrap().current_run, Some(2));
    let run1 = &s.schedule.as_ref().unwrap().overlapping[0];
    assert_eq!((run1.run, &run1.indexes), (1, &before.indexes));
    assert_eq!(
        d.started_lanes(Some(&before)),
        vec![Some(overlapping_lane(2, Some(0))), Some(overlapping_lane(2, Some(1)))]
    );
}

/// A status written before runs moved (run 1, the oldest, in the top-level fields; run 2
/// beside it) shows the newest run from the first pass that reads it, each run whole.
#[test]
fn a_status_with_an_older_run_on_top_gets_the_newest_on_top() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Allow}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    let s = decide_at(&spec, step(&s, at(20), running(), &[])).status.unwrap();
    // Put it the old way round.
    let mut legacy = s.clone();
    let mut sched = legacy.schedule.take().unwrap();
    let run1 = sched.overlapping.remove(0);
    let run2 = crate::status::OverlappingRun::from_view(2, at(20), s.clone());
    let runs = std::mem::take(&mut legacy.runs);
    legacy = run1.view(&s);
    legacy.runs = runs;
    sched.overlapping = vec![run2];
    sched.current_run = Some(1);
    sched.active = vec![at(10), at(20)];
    legacy.schedule = Some(sched);

    let d = decide_at(&spec, step(&legacy, at(21), running(), &[(2, running())]));
    assert!(ensures(&d).is_empty() && deletes(&d).is_empty(), "{:?}", d.actions);
    assert!(d.started_lanes(Some(&legacy)).is_empty(), "no run starts by moving");
    let s = d.status.unwrap();
    let sched = s.schedule.as_ref().unwrap();
    assert_eq!(sched.current_run, Some(2));
    assert_eq!(
        (s.phase, s.attempts[0].container.clone()),
        (Phase::Running, key().run_container_name(2, 1, None))
    );
    assert_eq!(sched.overlapping.iter().map(|r| r.run).collect::<Vec<_>>(), vec![1]);
    assert_eq!(sched.active, vec![at(20), at(10)]);
    assert_eq!(active_runs(&s), vec![2, 1]);
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
fn a_refused_slot_holds_a_new_run_back_without_handling_its_time_twice() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Allow}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    // Run 2's first container waits for a slot (admission refused its lane): recorded,
    // not made; run 1 moves beside it all the same.
    let key = key();
    let desired = Desired::Valid(Box::new(spec.clone()));
    let mut input = decide_at_input(&key, &desired, &s, at(20));
    input.observed = running();
    let full = Slot::Full {
        limit: "max-running 1/1".into(),
    };
    let mut seen = RunObservation::default();
    seen.single.slot = full.clone();
    input.scheduling.overlapping.insert(2, seen);
    let d = decide(input);
    assert!(ensures(&d).is_empty());
    let after = d.status.unwrap();
    assert_eq!(
        (after.phase, after.reason),
        (Phase::Pending, Some(Reason::WaitingForSlot))
    );
    let sched = after.schedule.as_ref().unwrap();
    assert_eq!(sched.current_run, Some(2));
    assert_eq!(sched.overlapping[0].run, 1);
    assert_eq!(sched.handled_through, at(20));

    // Still refused at 21 s (the top-level run's slot is the input's own): no new run
    // for the same time.
    let mut input = decide_at_input(&key, &desired, &after, at(21));
    input.slot = full;
    input.scheduling.overlapping.insert(1, seen_run(running()));
    let d = decide(input);
    assert!(ensures(&d).is_empty());
    let after = d.status.unwrap();
    assert_eq!(after.reason, Some(Reason::WaitingForSlot));
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
    let s = decide_at(&spec, step(&s, at(21), running(), &[(1, running())]))
        .status
        .unwrap();
    let key = key();
    let gone = Desired::Absent;
    let mut input = decide_at_input(&key, &gone, &s, at(22));
    input.observed = running();
    input.scheduling.overlapping.insert(1, seen_run(running()));
    let d = decide(input);
    assert_eq!(deletes(&d), vec![key.run_container_name(1, 1, None)]);
    let s = d.status.unwrap();
    let mut input = decide_at_input(&key, &gone, &s, at(23));
    input.observed = running();
    input.scheduling.overlapping.insert(1, seen_run(absent()));
    let s = decide(input).status.unwrap();
    assert!(s.schedule.as_ref().unwrap().overlapping.is_empty());
    // Then the top-level run (the newest), as for any task; the status goes once it is gone.
    let mut input = decide_at_input(&key, &gone, &s, at(24));
    input.observed = running();
    let d = decide(input);
    assert_eq!(deletes(&d), vec![key.run_container_name(2, 1, None)]);
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
