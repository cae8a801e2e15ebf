//! Heartbeats under `concurrencyPolicy: Allow`: each run's attempt is judged by its own
//! beats. A silent older run fails `HeartbeatTimeout` and is retried within its run while
//! the newest (top-level) one carries on, and the reverse; the top-level progress is the
//! newest run's, an older run's stays with it in `schedule.overlapping`.

use super::schedule_tests::*;
use super::*;
use crate::heartbeat::Heartbeat;
use crate::status::{Phase, Reason};

const ALLOW: &str =
    "  schedule: {cron: '@every 10s', concurrencyPolicy: Allow}\n  heartbeatTimeout: 5s\n  retries: 1\n  backoff: 1s\n";

/// Heard from at `s`, with this progress.
fn beat(s: i64, progress: Option<f64>) -> Option<Heartbeat> {
    Some(Heartbeat {
        since: Some(at(s)),
        last_beat: Some(at(s)),
        progress,
        message: progress.map(|p| format!("{p}")),
    })
}

fn absent() -> Observed {
    Observed::Container(crate::runtime::ContainerState::Absent)
}

/// One pass: what was seen of the top-level run's container and its beats, and of each
/// overlapping run's, by run number.
fn pass(
    spec: &TaskSpec,
    status: &TaskStatus,
    now: i64,
    top: (Observed, Option<Heartbeat>),
    others: Vec<(u32, Observed, Option<Heartbeat>)>,
) -> Decision {
    let key = key();
    let desired = Desired::Valid(Box::new(spec.clone()));
    let mut input = decide_at_input(&key, &desired, status, at(now));
    (input.observed, input.heartbeat) = top;
    input.scheduling.since = Some(t0());
    for (run, observed, heartbeat) in others {
        let single = Lane {
            observed,
            heartbeat,
            ..Lane::default()
        };
        let seen = RunObservation {
            single,
            lanes: BTreeMap::new(),
        };
        input.scheduling.overlapping.insert(run, seen);
    }
    decide(input)
}

/// Run 1 (started at 10 s) still runs when run 2 starts at 20 s: run 2 on top, run 1
/// beside it, both alive at 21 s (run 1 last heard from at 19 s).
fn two_runs(spec: &TaskSpec) -> TaskStatus {
    let s = decide_at(spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(spec, at_(Some(&s), at(10))).status.unwrap();
    let s = pass(spec, &s, 12, (running(), beat(12, None)), vec![]).status.unwrap();
    let s = pass(spec, &s, 20, (running(), beat(19, None)), vec![]).status.unwrap();
    let d = pass(
        spec,
        &s,
        21,
        (running(), beat(21, None)),
        vec![(1, running(), beat(19, None))],
    );
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    let s = d.status.unwrap();
    let sched = s.schedule.as_ref().unwrap();
    assert_eq!((sched.current_run, s.phase), (Some(2), Phase::Running));
    assert_eq!(
        sched.overlapping.iter().map(|r| (r.run, r.phase)).collect::<Vec<_>>(),
        vec![(1, Phase::Running)]
    );
    s
}

#[test]
fn a_silent_overlapping_run_fails_and_retries_in_its_own_run_while_the_newest_carries_on() {
    let spec = spec(ALLOW);
    let s = two_runs(&spec);
    let run1 = key().run_container_name(1, 1, None);

    // 25 s: run 1 silent since 19 s (6 s, past its 5 s), run 2 beating. Only run 1 fails.
    let d = pass(
        &spec,
        &s,
        25,
        (running(), beat(24, Some(0.7))),
        vec![(1, running(), beat(19, Some(0.3)))],
    );
    assert_eq!(deletes(&d), vec![run1.clone()], "{:?}", d.actions);
    assert_eq!(d.actions.len(), 1, "nothing of run 2's: {:?}", d.actions);
    let s = d.status.unwrap();
    let older = &s.schedule.as_ref().unwrap().overlapping[0];
    assert_eq!(
        (older.run, older.phase, older.reason),
        (1, Phase::Deleting, Some(Reason::HeartbeatTimeout))
    );
    let record = older.attempts.last().unwrap();
    assert_eq!(record.reason, Some(Reason::HeartbeatTimeout));
    assert!(
        record.message.as_deref().unwrap().contains("no heartbeat for 6s"),
        "{record:?}"
    );
    // The newest run is untouched, and its progress is the one on top; run 1's is its own.
    assert_eq!((s.phase, s.reason), (Phase::Running, Some(Reason::ContainerStarted)));
    assert!(s.attempts.iter().all(|a| a.reason.is_none()), "{:?}", s.attempts);
    assert_eq!(s.progress, Some(0.7));
    assert_eq!(older.progress, Some(0.3), "run 1's progress stays with run 1");
    let record = |s: &TaskStatus, run| s.runs.iter().find(|r| r.run == Some(run)).cloned().unwrap();
    assert_eq!(record(&s, 1).reason, Some(Reason::HeartbeatTimeout));

    // Its container gone: run 1 retries within its own run (retries: 1), named for run 1.
    let s = pass(&spec, &s, 26, (running(), beat(26, None)), vec![(1, absent(), None)])
        .status
        .unwrap();
    let older = &s.schedule.as_ref().unwrap().overlapping[0];
    assert_eq!(
        (older.phase, older.reason),
        (Phase::Pending, Some(Reason::BackoffAfterFailure))
    );
    let d = pass(&spec, &s, 28, (running(), beat(27, None)), vec![(1, absent(), None)]);
    assert_eq!(ensures(&d), vec![key().run_container_name(1, 2, None)]);
    let s = d.status.unwrap();
    assert_eq!(
        (s.phase, s.attempt, s.schedule.as_ref().unwrap().current_run),
        (Phase::Running, 1, Some(2))
    );
    assert_eq!(record(&s, 1).attempts, 2);
    assert_eq!(record(&s, 2).phase, Some(Phase::Running));
}

#[test]
fn a_silent_newest_run_fails_while_an_older_beating_one_carries_on() {
    let spec = spec(ALLOW);
    let s = two_runs(&spec);
    let run2 = key().run_container_name(2, 1, None);

    // 26 s: run 2 never heard from since its start at 20 s; run 1 beat at 25 s.
    let d = pass(
        &spec,
        &s,
        26,
        (running(), None),
        vec![(1, running(), beat(25, Some(0.4)))],
    );
    assert_eq!(deletes(&d), vec![run2], "{:?}", d.actions);
    assert_eq!(d.actions.len(), 1, "nothing of run 1's: {:?}", d.actions);
    let s = d.status.unwrap();
    assert_eq!((s.phase, s.reason), (Phase::Deleting, Some(Reason::HeartbeatTimeout)));
    assert!(
        s.message.as_deref().unwrap().contains("since the attempt started"),
        "{:?}",
        s.message
    );
    let older = &s.schedule.as_ref().unwrap().overlapping[0];
    assert_eq!(
        (older.phase, older.reason),
        (Phase::Running, Some(Reason::ContainerStarted))
    );
    assert!(
        older.attempts.iter().all(|a| a.reason.is_none()),
        "{:?}",
        older.attempts
    );
    assert_eq!(
        (older.progress, s.progress),
        (Some(0.4), None),
        "each run's own progress"
    );

    // Run 2 retries within its run; run 1, still beating, goes on running.
    let s = pass(&spec, &s, 27, (absent(), None), vec![(1, running(), beat(27, None))])
        .status
        .unwrap();
    assert_eq!((s.phase, s.reason), (Phase::Pending, Some(Reason::BackoffAfterFailure)));
    assert_eq!(s.schedule.as_ref().unwrap().overlapping[0].phase, Phase::Running);
}
