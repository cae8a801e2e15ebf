//! Table tests of a scheduled task's decision, and a model under proptest: runs that take
//! a while, crashes between persist and act, restarts and long outages; no scheduled time
//! is started twice, and every one handled is either started or recorded as missed.

use super::schedule::MAX_ACTIVE_RUNS;
use super::*;
use crate::manifest::RuntimeKind;
use crate::status::{Phase, Placement, Reason, TaskStatus, format_time};
use chrono::TimeDelta;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

pub(super) fn key() -> TaskKey {
    TaskKey::new("jobs/tick")
}

pub(super) fn t0() -> Timestamp {
    chrono::DateTime::from_timestamp(1_750_000_000, 0).expect("a valid timestamp")
}

pub(super) fn at(secs: i64) -> Timestamp {
    t0() + TimeDelta::seconds(secs)
}

pub(super) fn spec(schedule_yaml: &str) -> TaskSpec {
    let text = format!(
        "apiVersion: skiff/v1\nkind: ContainerTask\nmetadata: {{name: tick}}\nspec:\n  command: [sh, -c, 'true']\n{schedule_yaml}"
    );
    let task = crate::manifest::parse_manifest("jobs/tick.yaml", text.as_bytes()).expect("the manifest parses");
    let ctx = crate::manifest::ValidationContext {
        default_runtime: RuntimeKind::Process,
        allow_host_paths: &[],
        features: crate::manifest::Features::CURRENT,
        env_is_set: None,
    };
    crate::manifest::validate("jobs/tick.yaml", "tick", &task, &ctx).expect("the manifest validates")
}

pub(super) struct Step<'a> {
    pub(super) status: Option<&'a TaskStatus>,
    pub(super) now: Timestamp,
    pub(super) since: Timestamp,
    pub(super) observed: Observed,
    pub(super) trigger: bool,
    /// What was seen of each overlapping run's container (Allow), by run.
    pub(super) overlapping: BTreeMap<u32, Observed>,
}

pub(super) fn decide_at(spec: &TaskSpec, step: Step<'_>) -> Decision {
    let key = key();
    let desired = Desired::Valid(Box::new(spec.clone()));
    decide(Input {
        key: &key,
        desired: &desired,
        status: step.status,
        observed: step.observed,
        seen_by_engine: false,
        log_tail: None,
        slot: Slot::Granted,
        now: step.now,
        jitter: 0.5,
        event: None,
        heartbeat: None,
        terminate: false,
        index: None,
        lanes: BTreeMap::new(),
        dependencies: Dependencies::None,
        placement: Some(Placement::process("0000aaaa", "alpha")),
        scheduling: Scheduling {
            since: Some(step.since),
            trigger: step.trigger,
            run: None,
            overlapping: step
                .overlapping
                .into_iter()
                .map(|(run, observed)| {
                    let single = Lane {
                        observed,
                        ..Lane::default()
                    };
                    (
                        run,
                        RunObservation {
                            single,
                            lanes: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
        },
    })
}

pub(super) fn at_(status: Option<&TaskStatus>, now: Timestamp) -> Step<'_> {
    Step {
        status,
        now,
        since: t0(),
        observed: Observed::NotApplicable,
        trigger: false,
        overlapping: BTreeMap::new(),
    }
}

pub(super) fn running() -> Observed {
    Observed::Container(crate::runtime::ContainerState::Running { started_at: None })
}

pub(super) fn exited(code: i32) -> Observed {
    Observed::Container(crate::runtime::ContainerState::Exited {
        exit_code: Some(code),
        started_at: None,
        finished_at: None,
        message: None,
    })
}

pub(super) fn ensures(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::EnsureContainer { container, .. } => Some(container.clone()),
            _ => None,
        })
        .collect()
}

/// The containers the decision deletes.
pub(super) fn deletes(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteContainer { container } => Some(container.clone()),
            _ => None,
        })
        .collect()
}

/// Every scheduled time the status records as missed, ranges spelled out.
pub(super) fn missed(status: &TaskStatus) -> Vec<Timestamp> {
    let rules = status.schedule.as_ref().map(|s| s.cron.clone()).unwrap_or_default();
    let schedule = crate::schedule::Schedule::parse(&rules, None).ok();
    let mut times: Vec<Timestamp> = Vec::new();
    for r in status.runs.iter().filter(|r| r.reason == Some(Reason::MissedSchedule)) {
        times.push(r.scheduled_at);
        if let (Some(from), Some(schedule)) = (r.missed_from, &schedule) {
            times.push(from);
            times.extend(schedule.due(from, r.scheduled_at, 100_000).0);
        }
    }
    times.sort();
    times.dedup();
    times
}

#[test]
fn a_new_scheduled_task_waits_for_its_first_time_then_runs_it_in_its_own_container() {
    let spec = spec("  schedule: {cron: '@every 10s'}\n");
    let first = decide_at(&spec, at_(None, at(1)));
    let status = first.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Scheduled);
    assert!(first.actions.is_empty());
    let sched = status.schedule.as_ref().unwrap();
    assert_eq!(sched.next_scheduled_at, Some(at(10)));
    assert_eq!(first.requeue_after, Some(Duration::from_secs(9)));

    let second = decide_at(&spec, at_(Some(&status), at(10)));
    let status = second.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Creating);
    assert_eq!(ensures(&second), vec![key().run_container_name(1, 1, None)]);
    let sched = status.schedule.as_ref().unwrap();
    assert_eq!(sched.active, vec![at(10)]);
    assert_eq!(sched.handled_through, at(10));
    assert_eq!(sched.last_scheduled_at, Some(at(10)));
    assert_eq!(sched.next_scheduled_at, Some(at(20)));
    assert_eq!(status.runs[0].scheduled_at, at(10));
    assert_eq!(status.runs[0].run, Some(1));
}

#[test]
fn forbid_skips_a_time_while_a_run_is_active_and_records_it_missed() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Forbid}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    let d = decide_at(
        &spec,
        Step {
            observed: running(),
            ..at_(Some(&s), at(20))
        },
    );
    assert!(ensures(&d).is_empty());
    let s = d.status.clone().unwrap();
    assert_eq!(missed(&s), vec![at(20)]);
    assert_eq!(s.schedule.as_ref().unwrap().active, vec![at(10)]);
    // The run ends: the task shows its phase until the next time, which starts run 2.
    let s = decide_at(
        &spec,
        Step {
            observed: exited(0),
            ..at_(Some(&s), at(25))
        },
    )
    .status
    .unwrap();
    let s = decide_at(
        &spec,
        Step {
            observed: Observed::Container(crate::runtime::ContainerState::Absent),
            ..at_(Some(&s), at(26))
        },
    )
    .status
    .unwrap();
    assert_eq!(s.phase, Phase::Succeeded);
    assert!(s.schedule.as_ref().unwrap().active.is_empty());
    let run1 = s.runs.iter().find(|r| r.run == Some(1)).unwrap();
    assert_eq!(run1.phase, Some(Phase::Succeeded));
    assert_eq!(run1.exit_code, Some(0));
    let d = decide_at(&spec, at_(Some(&s), at(30)));
    assert_eq!(ensures(&d), vec![key().run_container_name(2, 1, None)]);
}

#[test]
fn times_missed_while_down_follow_missed_runs() {
    for (policy, started, missed_times) in [
        ("skip", None, vec![at(10), at(20), at(30)]),
        ("latest", Some(at(30)), vec![at(10), at(20)]),
        ("all", Some(at(10)), vec![]),
    ] {
        let spec = spec(&format!("  schedule: {{cron: '@every 10s', missedRuns: {policy}}}\n"));
        let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
        // The controller was down from 1 s to 35 s.
        let d = decide_at(
            &spec,
            Step {
                since: at(35),
                ..at_(Some(&s), at(35))
            },
        );
        let s = d.status.clone().unwrap();
        assert_eq!(missed(&s), missed_times, "{policy}");
        assert_eq!(
            s.schedule.as_ref().unwrap().active.first().copied(),
            started,
            "{policy}"
        );
        assert_eq!(ensures(&d).len(), usize::from(started.is_some()), "{policy}");
    }
}

#[test]
fn missed_runs_all_catches_up_oldest_first_one_after_another() {
    let spec = spec("  schedule: {cron: '@every 10s', missedRuns: all}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let down = |s: &TaskStatus, now: i64, observed: Observed| {
        decide_at(
            &spec,
            Step {
                since: at(35),
                observed,
                ..at_(Some(s), at(now))
            },
        )
    };
    let d = down(&s, 35, Observed::NotApplicable);
    let s = d.status.clone().unwrap();
    assert_eq!(s.schedule.as_ref().unwrap().active, vec![at(10)]);
    // While it runs, the next missed time waits (it is not skipped).
    let s = down(&s, 36, running()).status.unwrap();
    assert!(missed(&s).is_empty());
    let s = down(&s, 37, exited(0)).status.unwrap();
    let d = down(&s, 38, Observed::Container(crate::runtime::ContainerState::Absent));
    let s = d.status.clone().unwrap();
    assert_eq!(s.schedule.as_ref().unwrap().active, vec![at(20)]);
    assert_eq!(ensures(&d), vec![key().run_container_name(2, 1, None)]);
}

#[test]
fn a_run_that_would_start_past_starting_deadline_is_missed() {
    let spec = spec("  schedule: {cron: '@every 10s', startingDeadline: 3s, missedRuns: all}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let d = decide_at(&spec, at_(Some(&s), at(15)));
    let s = d.status.clone().unwrap();
    assert_eq!(missed(&s), vec![at(10)]);
    assert!(d.actions.is_empty());
    assert!(s.runs[0].message.as_deref().unwrap().contains("startingDeadline"));
}

#[test]
fn replace_stops_the_active_run_then_starts_the_new_one() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Replace}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    let d = decide_at(
        &spec,
        Step {
            observed: running(),
            ..at_(Some(&s), at(20))
        },
    );
    assert!(
        matches!(&d.actions[..], [Action::DeleteContainer { container }] if *container == key().run_container_name(1, 1, None))
    );
    let s = d.status.clone().unwrap();
    let d = decide_at(
        &spec,
        Step {
            observed: Observed::Container(crate::runtime::ContainerState::Absent),
            ..at_(Some(&s), at(21))
        },
    );
    assert_eq!(ensures(&d), vec![key().run_container_name(2, 1, None)]);
    let s = d.status.clone().unwrap();
    assert_eq!(s.schedule.as_ref().unwrap().active, vec![at(20)]);
    let replaced = s.runs.iter().find(|r| r.run == Some(1)).unwrap();
    assert_eq!(replaced.phase, Some(Phase::Failed));
    assert!(
        replaced
            .message
            .as_deref()
            .unwrap()
            .contains(&format!("replaced by the run scheduled at {}", format_time(&at(20)))),
        "{replaced:?}"
    );
}

#[test]
fn a_trigger_starts_a_run_now_unless_forbid_holds_it_back() {
    let spec = spec("  schedule: {cron: '0 2 * * *'}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let d = decide_at(
        &spec,
        Step {
            trigger: true,
            ..at_(Some(&s), at(5))
        },
    );
    assert_eq!(ensures(&d).len(), 1);
    let s = d.status.clone().unwrap();
    assert_eq!(s.runs[0].reason, Some(Reason::ManualTrigger));
    assert_eq!(s.schedule.as_ref().unwrap().active, vec![at(5)]);
    let d = decide_at(
        &spec,
        Step {
            trigger: true,
            observed: running(),
            ..at_(Some(&s), at(6))
        },
    );
    assert!(ensures(&d).is_empty());
    let s = d.status.clone().unwrap();
    assert!(s.runs[0].message.as_deref().unwrap().contains("not started"));
    assert_eq!(s.schedule.as_ref().unwrap().triggered_at, None);
}

#[test]
fn a_suspended_task_starts_nothing_and_says_so() {
    let spec = spec("  schedule: {cron: '@every 10s'}\n  suspend: true\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let d = decide_at(&spec, at_(Some(&s), at(45)));
    assert!(d.actions.is_empty());
    let s = d.status.clone().unwrap();
    assert!(missed(&s).is_empty());
    assert_eq!(s.schedule.as_ref().unwrap().next_scheduled_at, None);
    assert!(s.message.as_deref().unwrap().contains("suspended"));
}

#[test]
fn a_scheduled_task_whose_manifest_is_fixed_is_no_longer_invalid() {
    // Found by the simulator: the phase stayed Invalid (so `--once` exited 1) until a run.
    let spec = spec("  schedule: {cron: '@every 10s'}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let key = key();
    let broken = Desired::Invalid {
        name: "tick".into(),
        message: "jobs/tick.yaml: broken".into(),
    };
    let s = decide(decide_at_input(&key, &broken, &s, at(2))).status.unwrap();
    assert_eq!(s.phase, Phase::Invalid);
    let s = decide_at(&spec, at_(Some(&s), at(3))).status.unwrap();
    assert_eq!(s.phase, Phase::Scheduled, "{s:?}");
    // After a run: its phase.
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    let s = decide_at(
        &spec,
        Step {
            observed: exited(0),
            ..at_(Some(&s), at(11))
        },
    )
    .status
    .unwrap();
    let s = decide_at(
        &spec,
        Step {
            observed: Observed::Container(crate::runtime::ContainerState::Absent),
            ..at_(Some(&s), at(12))
        },
    )
    .status
    .unwrap();
    assert_eq!(s.phase, Phase::Succeeded);
    let s = decide(decide_at_input(&key, &broken, &s, at(13))).status.unwrap();
    assert_eq!(s.phase, Phase::Invalid);
    let s = decide_at(&spec, at_(Some(&s), at(14))).status.unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{s:?}");
}

pub(super) fn decide_at_input<'a>(
    key: &'a TaskKey,
    desired: &'a Desired,
    status: &'a TaskStatus,
    now: Timestamp,
) -> Input<'a> {
    Input {
        key,
        desired,
        status: Some(status),
        observed: Observed::NotApplicable,
        seen_by_engine: false,
        log_tail: None,
        slot: Slot::Granted,
        now,
        jitter: 0.5,
        event: None,
        heartbeat: None,
        terminate: false,
        index: None,
        lanes: BTreeMap::new(),
        dependencies: Dependencies::None,
        placement: Some(Placement::process("0000aaaa", "alpha")),
        scheduling: Scheduling::default(),
    }
}

#[test]
fn history_is_bounded_by_history_limit() {
    let spec = spec("  schedule: {cron: '@every 1s', historyLimit: 3}\n");
    let s = decide_at(&spec, at_(None, at(0))).status.unwrap();
    let s = decide_at(
        &spec,
        Step {
            since: at(100),
            ..at_(Some(&s), at(100))
        },
    )
    .status
    .unwrap();
    // The active run, and the newest three others.
    assert_eq!(s.runs.len(), 4);
    assert_eq!(s.runs[0].scheduled_at, at(100));
    assert_eq!(s.runs[0].run, Some(1));
    assert_eq!(s.runs[3].scheduled_at, at(97));
}

#[test]
fn specs_differing_only_in_schedule_have_one_hash() {
    assert_eq!(
        spec("  schedule: {cron: '@every 1s'}\n").spec_hash,
        spec("  schedule: {cron: '@every 2s'}\n  suspend: true\n").spec_hash
    );
}

/// What the model's world holds: the status the store has, and the containers.
struct Model {
    status: Option<TaskStatus>,
    /// Container → (scheduled time it runs for, when it exits).
    containers: BTreeMap<String, (Timestamp, Timestamp)>,
    started: Vec<Timestamp>,
    missed: BTreeSet<Timestamp>,
    /// Most runs active at once.
    peak: usize,
}

/// Runs the model: `steps` are (seconds to advance, crash after persisting, restart,
/// how long a run started in this step lasts).
pub(super) fn run_model(
    policy: &str,
    missed_runs: &str,
    deadline: Option<u64>,
    steps: &[(i64, bool, bool, i64)],
) -> Result<usize, String> {
    let deadline = deadline
        .map(|d| format!(", startingDeadline: {d}s"))
        .unwrap_or_default();
    let spec = spec(&format!(
        "  schedule: {{cron: '@every 5s', concurrencyPolicy: {policy}, missedRuns: {missed_runs}{deadline}}}\n"
    ));
    let mut model = Model {
        status: None,
        containers: BTreeMap::new(),
        started: Vec::new(),
        missed: BTreeSet::new(),
        peak: 0,
    };
    // Every scheduled time a run was recorded for, in any status written.
    let mut recorded: BTreeSet<Timestamp> = BTreeSet::new();
    let mut now = at(0);
    let mut since = now;
    let mut first = None;
    for &(advance, crash, restart, run_for) in steps {
        now += TimeDelta::seconds(advance);
        if restart {
            since = now;
        }
        let look = |status: &TaskStatus| match status.live_container() {
            Some(name) => Observed::Container(match model.containers.get(name) {
                None => crate::runtime::ContainerState::Absent,
                Some((_, ends)) if *ends <= now => crate::runtime::ContainerState::Exited {
                    exit_code: Some(0),
                    started_at: None,
                    finished_at: None,
                    message: None,
                },
                Some(_) => crate::runtime::ContainerState::Running { started_at: None },
            }),
            None => Observed::NotApplicable,
        };
        let observed = model.status.as_ref().map_or(Observed::NotApplicable, look);
        // Each overlapping run (Allow) is looked at as a run of its own.
        let overlapping = model
            .status
            .as_ref()
            .and_then(|s| s.schedule.as_ref().map(|sched| (s, sched)))
            .map(|(s, sched)| sched.overlapping.iter().map(|r| (r.run, look(&r.view(s)))).collect())
            .unwrap_or_default();
        let d = decide_at(
            &spec,
            Step {
                status: model.status.as_ref(),
                now,
                since,
                observed,
                trigger: false,
                overlapping,
            },
        );
        // Persisted first; a crash may come before the actions.
        model.status = d.status.clone();
        if first.is_none() {
            first = model
                .status
                .as_ref()
                .and_then(|s| s.schedule.as_ref())
                .map(|s| s.handled_through);
        }
        if let Some(s) = &model.status {
            let active = s.schedule.as_ref().map_or(0, |sched| sched.active.len());
            if active > MAX_ACTIVE_RUNS || (policy != "Allow" && active > 1) {
                return Err(format!("{active} runs active at {now} under {policy}"));
            }
            model.peak = model.peak.max(active);
            // The contract: the top-level fields (`phase`, `attempts`) are the newest
            // started run's, under every policy.
            if let Some(sched) = s.schedule.as_ref().filter(|sched| sched.run_count > 0) {
                let top = sched.current_run.unwrap_or(sched.run_count);
                if top != sched.run_count {
                    return Err(format!(
                        "at {now} the top-level fields are run {top}'s, not the newest's ({})",
                        sched.run_count
                    ));
                }
                if let Some(record) = s.runs.iter().find(|r| r.run == Some(top))
                    && record.phase != Some(s.phase)
                {
                    return Err(format!(
                        "at {now} phase {} is not the newest run's: {record:?}",
                        s.phase
                    ));
                }
            }
            model.missed.extend(missed(s));
            recorded.extend(s.runs.iter().filter(|r| r.run.is_some()).map(|r| r.scheduled_at));
        }
        if crash {
            continue;
        }
        for action in &d.actions {
            match action {
                Action::EnsureContainer { container, .. } => {
                    if !model.containers.contains_key(container) {
                        let s = model.status.as_ref().unwrap();
                        let Some(scheduled) = s.scheduled_at_of(container) else {
                            return Err(format!("{container} belongs to no run of {s:?}"));
                        };
                        model.started.push(scheduled);
                        model
                            .containers
                            .insert(container.clone(), (scheduled, now + TimeDelta::seconds(run_for)));
                    }
                }
                Action::DeleteContainer { container } => {
                    model.containers.remove(container);
                }
                Action::RemoveStatus => {}
            }
        }
    }
    let mut seen = BTreeSet::new();
    for t in &model.started {
        if !seen.insert(*t) {
            return Err(format!("{t} started twice: {:?}", model.started));
        }
        if model.missed.contains(t) {
            return Err(format!("{t} both started and missed"));
        }
    }
    if let Some(s) = &model.status {
        let sched = s.schedule.as_ref().unwrap();
        let rules = spec.schedule.as_ref().unwrap();
        let (due, _) = rules.schedule.due(first.unwrap(), sched.handled_through, 10_000);
        for t in due {
            // A time whose run was recorded but whose create the model crashed before
            // is still accounted: a status named it (its run then failed or was replaced
            // before its container was made, or the next pass adopts it).
            if !(seen.contains(&t) || model.missed.contains(&t) || recorded.contains(&t)) {
                return Err(format!(
                    "{t} was lost; started {:?}, missed {:?}, recorded {recorded:?}",
                    model.started, model.missed
                ));
            }
        }
    }
    Ok(model.peak)
}

/// The case proptest found under Replace (each run lasting 1 s): run 1 (for 10 s) is
/// recorded, then the controller crashes before its create; at 56 s the time 15 s
/// replaces it before it ever had a container; at 66 s, after a restart, the times
/// 20..65 s are missed (`skip`), and their records push run 1's out of the history
/// (`historyLimit` 10). The time was recorded, as a replaced run: a model that looks
/// only at the last status cannot see it, one that keeps every status written can.
#[test]
fn replace_loses_no_time_when_a_run_recorded_before_a_crash_is_replaced() {
    let steps = [
        (7, false, false, 1),
        (36, true, false, 1),
        (13, false, false, 1),
        (10, false, true, 1),
    ];
    run_model("Replace", "skip", None, &steps).unwrap();
    // Step by step: the replaced run says why it ended.
    let spec = spec("  schedule: {cron: '@every 5s', concurrencyPolicy: Replace, missedRuns: skip}\n");
    let s = decide_at(&spec, at_(None, at(7))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(43))).status.unwrap();
    assert_eq!(s.schedule.as_ref().unwrap().active, vec![at(10)]);
    let d = decide_at(
        &spec,
        Step {
            observed: Observed::Container(crate::runtime::ContainerState::Absent),
            ..at_(Some(&s), at(56))
        },
    );
    let s = d.status.unwrap();
    let run1 = s.runs.iter().find(|r| r.run == Some(1)).unwrap();
    assert_eq!(run1.scheduled_at, at(10));
    assert_eq!(run1.phase, Some(Phase::Failed));
    assert!(
        run1.message
            .as_deref()
            .unwrap()
            .contains("replaced by the run scheduled at"),
        "{run1:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn no_scheduled_time_runs_twice_and_none_is_lost(
        policy in prop::sample::select(vec!["Forbid", "Allow", "Replace"]),
        missed_runs in prop::sample::select(vec!["skip", "latest", "all"]),
        deadline in prop::option::of(1u64..30),
        steps in prop::collection::vec((1i64..40, any::<bool>(), any::<bool>(), 1i64..25), 1..60),
    ) {
        if let Err(problem) = run_model(policy, missed_runs, deadline, &steps) {
            prop_assert!(false, "{}", problem);
        }
    }
}

#[test]
fn a_latest_catch_up_waits_for_the_run_the_outage_left_active() {
    let spec = spec("  schedule: {cron: '@every 10s', concurrencyPolicy: Forbid, missedRuns: latest}\n");
    let s = decide_at(&spec, at_(None, at(1))).status.unwrap();
    let s = decide_at(&spec, at_(Some(&s), at(10))).status.unwrap();
    // The controller is down from 11 s to 45 s; run 1 ended meanwhile, unseen.
    let after = |s: &TaskStatus, now: i64, observed: Observed| {
        decide_at(
            &spec,
            Step {
                since: at(45),
                observed,
                ..at_(Some(s), at(now))
            },
        )
    };
    let d = after(&s, 45, exited(0));
    assert!(ensures(&d).is_empty());
    let s = d.status.unwrap();
    assert_eq!(missed(&s), vec![at(20), at(30)], "only the latest waits: {:?}", s.runs);
    let d = after(&s, 46, Observed::Container(crate::runtime::ContainerState::Absent));
    assert_eq!(ensures(&d), vec![key().run_container_name(2, 1, None)]);
    assert_eq!(d.status.unwrap().schedule.unwrap().active, vec![at(40)]);
}
