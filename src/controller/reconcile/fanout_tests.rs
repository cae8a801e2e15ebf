//! Tests of fan-out and fan-in decisions: table tests for each rule, and a simulated
//! runtime that drives a fan-out to its end under random failures and crashes while
//! checking the invariants (parallelism, one container per attempt, terminal only once
//! every container is gone).

use super::super::*;
use crate::manifest::{Features, RuntimeKind, ValidationContext};
use crate::status::IndexStatus;
use chrono::TimeDelta;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn key() -> TaskKey {
    TaskKey::new("jobs/fan")
}

fn t0() -> Timestamp {
    chrono::DateTime::from_timestamp(1_750_000_000, 0).expect("a valid timestamp")
}

fn spec(lines: &str) -> TaskSpec {
    let text = format!("apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [x]\n{lines}");
    let task = crate::manifest::parse_manifest("jobs/fan.yaml", text.as_bytes()).expect("the manifest parses");
    let ctx = ValidationContext {
        default_runtime: RuntimeKind::Process,
        allow_host_paths: &[],
        features: Features::CURRENT,
        env_is_set: None,
    };
    crate::manifest::validate("jobs/fan.yaml", "fan", &task, &ctx).expect("the manifest validates")
}

fn input<'a>(desired: &'a Desired, status: Option<&'a TaskStatus>, now: Timestamp) -> Input<'a> {
    Input {
        key: Box::leak(Box::new(key())),
        desired,
        status,
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
        placement: Some(crate::status::Placement::process("0000aaaa", "alpha")),
        scheduling: Default::default(),
    }
}

fn ensures(decision: &Decision) -> Vec<(String, u32, Option<u32>)> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::EnsureContainer {
                container,
                attempt,
                index,
            } => Some((container.clone(), *attempt, *index)),
            _ => None,
        })
        .collect()
}

fn deletes(decision: &Decision) -> BTreeSet<String> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteContainer { container } => Some(container.clone()),
            _ => None,
        })
        .collect()
}

fn lane(status: &TaskStatus, index: u32) -> &IndexStatus {
    status
        .indexes
        .iter()
        .find(|l| l.index == index)
        .expect("the lane exists")
}

#[test]
fn a_fan_out_starts_as_many_indexes_as_parallelism_allows_each_named_by_index() {
    let desired = Desired::Valid(Box::new(spec("  completions: 10\n  parallelism: 3\n")));
    let decision = decide(input(&desired, None, t0()));
    let status = decision.status.as_ref().unwrap();
    assert_eq!(status.indexes.len(), 10);
    assert_eq!(
        ensures(&decision),
        (0..3)
            .map(|i| (key().container_name(1, Some(i)), 1, Some(i)))
            .collect::<Vec<_>>()
    );
    assert_eq!(status.phase, Phase::Creating);
    let waiting = lane(status, 3);
    assert_eq!(
        (waiting.phase, waiting.reason),
        (Phase::Pending, Some(Reason::WaitingForSlot))
    );
    assert!(
        waiting.message.as_deref().unwrap().contains("parallelism 3/3"),
        "{waiting:?}"
    );
    assert!(
        status.message.as_deref().unwrap().contains("3 creating, 7 pending"),
        "{status:?}"
    );
    // Every attempt record names its index; the lanes slots went to are the ones started.
    assert!(status.attempts.iter().all(|a| a.index.is_some()));
    assert_eq!(
        decision.started_lanes(None),
        vec![Some(0), Some(1), Some(2)],
        "each started lane needs a slot"
    );
}

#[test]
fn a_lane_refused_a_slot_by_the_controller_waits_with_the_limit_named() {
    let desired = Desired::Valid(Box::new(spec("  completions: 3\n  parallelism: 3\n")));
    let mut held = input(&desired, None, t0());
    held.lanes.insert(
        2,
        Lane {
            slot: Slot::Full {
                limit: "max-running 4/4".into(),
            },
            ..Lane::default()
        },
    );
    let decision = decide(held);
    let status = decision.status.as_ref().unwrap();
    assert_eq!(ensures(&decision).len(), 2);
    assert_eq!(lane(status, 2).reason, Some(Reason::WaitingForSlot));
    assert!(
        status.message.as_deref().unwrap().contains("max-running 4/4"),
        "{status:?}"
    );
}

/// A runtime for fan-outs: a container runs for one look, then exits with the code
/// `exit(index, attempt)`; with `events`, it calls back with a result instead.
struct Sim {
    spec: TaskSpec,
    status: Option<TaskStatus>,
    /// container → (index, attempt, exit code once exited)
    live: BTreeMap<String, (u32, u32, Option<i32>)>,
    made: BTreeSet<String>,
    now: Timestamp,
    most_live: usize,
    events: bool,
}

impl Sim {
    fn new(spec: TaskSpec) -> Sim {
        Sim {
            spec,
            status: None,
            live: BTreeMap::new(),
            made: BTreeSet::new(),
            now: t0(),
            most_live: 0,
            events: false,
        }
    }

    /// One reconcile; `crash` persists the decision but performs none of its actions.
    fn step(&mut self, exit: &dyn Fn(u32, u32) -> i32, crash: bool) -> Result<Decision, TestCaseError> {
        let mut lanes = BTreeMap::new();
        if let Some(status) = &self.status {
            for l in status.indexes.iter().filter(|l| l.phase.has_container()) {
                let Some(record) = status
                    .attempts
                    .iter()
                    .find(|a| a.index == Some(l.index) && a.number == l.attempt)
                else {
                    continue;
                };
                let (observed, event) = match self.live.get(&record.container) {
                    None => (Observed::Container(ContainerState::Absent), None),
                    Some((_, _, None)) => (
                        Observed::Container(ContainerState::Running {
                            started_at: Some(self.now),
                        }),
                        None,
                    ),
                    Some((index, attempt, Some(code))) => {
                        let event = (self.events && *code == 0).then(|| crate::callback::CallbackEvent {
                            result: Some(serde_json::json!({"index": index, "attempt": attempt})),
                            ..Default::default()
                        });
                        let exited = Observed::Container(ContainerState::Exited {
                            exit_code: Some(*code),
                            started_at: None,
                            finished_at: Some(self.now),
                            message: None,
                        });
                        (exited, event)
                    }
                };
                lanes.insert(
                    l.index,
                    Lane {
                        observed,
                        event,
                        ..Lane::default()
                    },
                );
            }
        }
        let desired = Desired::Valid(Box::new(self.spec.clone()));
        let mut ask = input(&desired, self.status.as_ref(), self.now);
        ask.lanes = lanes;
        let decision = decide(ask);
        if let Some(status) = &decision.status
            && status.phase.is_terminal()
        {
            // Invariant 1, for every lane: terminal only once no container is left.
            prop_assert!(self.live.is_empty(), "terminal with live containers {:?}", self.live);
        }
        self.status = decision.status.clone();
        if !crash {
            for action in &decision.actions {
                match action {
                    Action::EnsureContainer {
                        container,
                        attempt,
                        index,
                    } => {
                        if !self.live.contains_key(container) {
                            // Invariant 2: a container is never made twice.
                            prop_assert!(self.made.insert(container.clone()), "{container} made twice");
                            let index = index.expect("a fan-out names the index");
                            self.live.insert(container.clone(), (index, *attempt, None));
                        }
                    }
                    Action::DeleteContainer { container } => {
                        self.live.remove(container);
                    }
                    Action::RemoveStatus => {}
                }
            }
        }
        self.most_live = self.most_live.max(self.live.len());
        prop_assert!(
            self.live.len() <= self.spec.parallelism as usize,
            "{} live over parallelism {}",
            self.live.len(),
            self.spec.parallelism
        );
        // Containers seen running exit before the next look.
        for (index, attempt, code) in self.live.values_mut() {
            if code.is_none() {
                *code = Some(exit(*index, *attempt));
            }
        }
        self.now += TimeDelta::seconds(60);
        Ok(decision)
    }

    fn run(&mut self, exit: &dyn Fn(u32, u32) -> i32, crashes: &[bool]) -> Result<Phase, TestCaseError> {
        for n in 0..400 {
            let crash = crashes.get(n).copied().unwrap_or(false);
            self.step(exit, crash)?;
            let phase = self.status.as_ref().map(|s| s.phase);
            if let Some(phase) = phase.filter(|p| p.is_terminal()) {
                return Ok(phase);
            }
        }
        Err(TestCaseError::fail(format!("never finished: {:?}", self.status)))
    }

    fn attempts_of(&self, index: u32) -> usize {
        let status = self.status.as_ref().expect("a status");
        status.attempts.iter().filter(|a| a.index == Some(index)).count()
    }
}

#[test]
fn an_index_that_fails_once_is_retried_alone_and_the_task_succeeds() {
    let mut sim = Sim::new(spec("  completions: 10\n  parallelism: 3\n  retries: 1\n"));
    let exit = |index: u32, attempt: u32| if index == 7 && attempt == 1 { 1 } else { 0 };
    assert_eq!(sim.run(&exit, &[]).unwrap(), Phase::Succeeded);
    assert_eq!(sim.most_live, 3);
    assert_eq!(sim.attempts_of(7), 2);
    for index in (0..10).filter(|i| *i != 7) {
        assert_eq!(sim.attempts_of(index), 1, "index {index}");
    }
    let status = sim.status.as_ref().unwrap();
    assert_eq!(lane(status, 7).attempt, 2);
    assert!(
        status
            .indexes
            .iter()
            .all(|l| l.phase == Phase::Succeeded && l.exit_code == Some(0))
    );
    assert_eq!(status.message.as_deref(), Some("all 10 indexes succeeded"));
}

#[test]
fn an_index_out_of_retries_fails_the_task_and_stops_the_others() {
    let mut sim = Sim::new(spec("  completions: 10\n  parallelism: 3\n  retries: 1\n"));
    let exit = |index: u32, _: u32| if index == 1 { 1 } else { 0 };
    assert_eq!(sim.run(&exit, &[]).unwrap(), Phase::Failed);
    assert!(sim.live.is_empty());
    let status = sim.status.as_ref().unwrap();
    assert_eq!(lane(status, 1).phase, Phase::Failed);
    assert_eq!(status.reason, Some(Reason::ExitCode));
    assert!(
        status.message.as_deref().unwrap().starts_with("index 1 failed"),
        "{status:?}"
    );
    // Lanes after the failure never started, and say why.
    let unstarted: Vec<&IndexStatus> = status.indexes.iter().filter(|l| l.attempt == 0).collect();
    assert!(!unstarted.is_empty());
    assert!(
        unstarted
            .iter()
            .all(|l| l.message.as_deref() == Some("not run: index 1 failed"))
    );
}

#[test]
fn event_results_land_per_index_and_in_order_in_the_task_result() {
    let mut sim = Sim::new(spec("  completions: 4\n  parallelism: 4\n"));
    sim.spec.completion_mode = CompletionMode::Event;
    sim.events = true;
    assert_eq!(sim.run(&|_, _| 0, &[]).unwrap(), Phase::Succeeded);
    let status = sim.status.as_ref().unwrap();
    let result = status.result.as_ref().expect("a result");
    let indexes: Vec<u64> = result
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2, 3]);
    assert_eq!(
        lane(status, 2).result,
        Some(serde_json::json!({"index": 2, "attempt": 1}))
    );
}

#[test]
fn terminate_stops_every_index_then_fails_the_task() {
    let mut sim = Sim::new(spec("  completions: 5\n  parallelism: 2\n"));
    let forever = |_: u32, _: u32| 0;
    sim.step(&forever, false).unwrap();
    // Lanes 0 and 1 run; now terminate (the request is seen once).
    let desired = Desired::Valid(Box::new(sim.spec.clone()));
    let mut ask = input(&desired, sim.status.as_ref(), sim.now);
    ask.terminate = true;
    let decision = decide(ask);
    let expected: BTreeSet<String> = (0..2).map(|i| key().container_name(1, Some(i))).collect();
    assert_eq!(deletes(&decision), expected);
    assert_eq!(decision.status.as_ref().unwrap().phase, Phase::Deleting);
    sim.status = decision.status.clone();
    sim.live.clear();
    // Without the request again, the task still winds down, and fails once all is gone.
    let decision = sim.step(&forever, false).unwrap();
    let status = decision.status.as_ref().unwrap();
    assert_eq!((status.phase, status.reason), (Phase::Failed, Some(Reason::Terminated)));
    assert!(ensures(&decision).is_empty());
}

#[test]
fn a_spec_change_stops_every_index_then_starts_afresh() {
    let mut sim = Sim::new(spec("  completions: 3\n  parallelism: 3\n"));
    sim.step(&|_, _| 0, false).unwrap();
    assert_eq!(sim.live.len(), 3);
    let old = sim.status.clone();
    sim.spec = spec("  completions: 2\n  parallelism: 2\n  retries: 1\n");
    // Names are (task, attempt, index): the new run reuses them once the old are gone.
    sim.made.clear();
    let decision = sim.step(&|_, _| 0, false).unwrap();
    assert_eq!(deletes(&decision).len(), 3);
    let status = decision.status.as_ref().unwrap();
    assert_eq!(
        status.spec_hash,
        old.unwrap().spec_hash,
        "the old run's status until it is stopped"
    );
    assert!(sim.live.is_empty());
    let decision = sim.step(&|_, _| 0, false).unwrap();
    let status = decision.status.as_ref().unwrap();
    assert_eq!(status.spec_hash, sim.spec.spec_hash);
    assert_eq!(status.indexes.len(), 2);
    assert_eq!(ensures(&decision).len(), 2);
}

#[test]
fn a_deleted_manifest_removes_every_index_then_the_status() {
    let mut sim = Sim::new(spec("  completions: 3\n  parallelism: 3\n"));
    sim.step(&|_, _| 0, false).unwrap();
    let absent = Desired::Absent;
    let decision = decide(input(&absent, sim.status.as_ref(), sim.now));
    assert_eq!(deletes(&decision).len(), 3);
    let status = decision.status.clone().unwrap();
    let mut gone = input(&absent, Some(&status), sim.now);
    for l in &status.indexes {
        gone.lanes.insert(
            l.index,
            Lane {
                observed: Observed::Container(ContainerState::Absent),
                ..Lane::default()
            },
        );
    }
    let decision = decide(gone);
    assert_eq!(decision.status, None);
    assert_eq!(decision.actions, vec![Action::RemoveStatus]);
}

fn met(results: &str) -> Dependencies {
    Dependencies::Met {
        hashes: BTreeMap::from([("split".to_string(), "sha256:s1".to_string())]),
        results: results.to_string(),
    }
}

#[test]
fn a_task_waits_for_its_dependencies_naming_them() {
    let desired = Desired::Valid(Box::new(spec("  dependsOn: [split, other]\n")));
    let mut ask = input(&desired, None, t0());
    ask.dependencies = Dependencies::Waiting {
        hashes: BTreeMap::new(),
        waiting: vec!["split (Running)".into(), "other (not started)".into()],
    };
    let decision = decide(ask);
    let status = decision.status.as_ref().unwrap();
    assert_eq!(
        (status.phase, status.reason),
        (Phase::Pending, Some(Reason::WaitingForDependencies))
    );
    assert_eq!(
        status.message.as_deref(),
        Some("waiting for split (Running), other (not started)")
    );
    assert!(decision.actions.is_empty());
}

#[test]
fn a_failed_dependency_fails_the_task_without_running_it() {
    for lines in ["  dependsOn: [split]\n", "  dependsOn: [split]\n  completions: 3\n"] {
        let desired = Desired::Valid(Box::new(spec(lines)));
        let mut ask = input(&desired, None, t0());
        ask.dependencies = Dependencies::Failed {
            hashes: BTreeMap::from([("split".to_string(), "sha256:s1".to_string())]),
            message: "dependency split failed: exited with code 3".into(),
        };
        let decision = decide(ask);
        let status = decision.status.as_ref().unwrap();
        assert_eq!(
            (status.phase, status.reason),
            (Phase::Failed, Some(Reason::DependencyFailed))
        );
        assert!(status.message.as_deref().unwrap().contains("exited with code 3"));
        assert!(decision.actions.is_empty(), "{lines}");
    }
}

#[test]
fn met_dependencies_start_the_task_and_are_recorded() {
    let desired = Desired::Valid(Box::new(spec("  dependsOn: [split]\n")));
    let mut ask = input(&desired, None, t0());
    ask.dependencies = met(r#"{"split":{"result":1}}"#);
    let decision = decide(ask);
    let status = decision.status.as_ref().unwrap();
    assert_eq!(status.phase, Phase::Creating);
    assert_eq!(status.dependencies["split"], "sha256:s1");
    assert_eq!(ensures(&decision).len(), 1);
}

#[test]
fn results_over_32_kib_fail_the_task_with_the_size_said() {
    let desired = Desired::Valid(Box::new(spec("  dependsOn: [split]\n")));
    let mut ask = input(&desired, None, t0());
    let big = format!(r#"{{"split":{{"result":"{}"}}}}"#, "x".repeat(40 * 1024));
    ask.dependencies = met(&big);
    let decision = decide(ask);
    let status = decision.status.as_ref().unwrap();
    assert_eq!(
        (status.phase, status.reason),
        (Phase::Failed, Some(Reason::DependencyResultsTooLarge))
    );
    let message = status.message.as_deref().unwrap();
    assert!(message.contains("41 KiB") && message.contains("32 KiB"), "{message}");
    assert!(decision.actions.is_empty());
    // Just under the limit runs.
    let fits = format!(r#"{{"split":{{"result":"{}"}}}}"#, "x".repeat(32 * 1024 - 30));
    let mut ask = input(&desired, None, t0());
    ask.dependencies = met(&fits);
    assert_eq!(ensures(&decide(ask)).len(), 1);
}

#[test]
fn a_dependency_that_changes_reruns_a_finished_dependent() {
    let spec = spec("  dependsOn: [split]\n");
    let desired = Desired::Valid(Box::new(spec.clone()));
    let mut done = TaskStatus::new("jobs/fan", "jobs/fan", &spec.spec_hash, t0());
    done.phase = Phase::Succeeded;
    done.attempt = 1;
    done.dependencies = BTreeMap::from([("split".to_string(), "sha256:s1".to_string())]);
    // The same dependency run: nothing happens (invariant 3).
    let mut same = input(&desired, Some(&done), t0());
    same.dependencies = met("{}");
    let decision = decide(same);
    assert_eq!(decision.status.as_ref().unwrap().phase, Phase::Succeeded);
    // The dependency's spec changed and it runs again: this task waits to run after it.
    let mut changed = input(&desired, Some(&done), t0());
    changed.dependencies = Dependencies::Waiting {
        hashes: BTreeMap::from([("split".to_string(), "sha256:s2".to_string())]),
        waiting: vec!["split (Running)".into()],
    };
    let decision = decide(changed);
    let status = decision.status.as_ref().unwrap();
    assert_eq!(
        (status.phase, status.reason),
        (Phase::Pending, Some(Reason::WaitingForDependencies))
    );
    assert_eq!(status.attempt, 0);
    assert!(status.dependencies.is_empty());
}

#[test]
fn a_dependency_that_changes_stops_a_running_dependent_first() {
    let spec = spec("  dependsOn: [split]\n");
    let desired = Desired::Valid(Box::new(spec.clone()));
    let mut ask = input(&desired, None, t0());
    ask.dependencies = met("{}");
    let running = decide(ask).status.unwrap();
    let mut changed = input(&desired, Some(&running), t0());
    changed.observed = Observed::Container(ContainerState::Running { started_at: None });
    changed.dependencies = Dependencies::Waiting {
        hashes: BTreeMap::from([("split".to_string(), "sha256:s2".to_string())]),
        waiting: vec!["split (Pending)".into()],
    };
    let decision = decide(changed);
    let status = decision.status.as_ref().unwrap();
    assert_eq!(
        (status.phase, status.reason),
        (Phase::Deleting, Some(Reason::DependencyChanged))
    );
    assert_eq!(deletes(&decision).len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever fails and whenever the controller crashes, a fan-out keeps to its
    /// parallelism, makes each container once, ends with no container left, and ends
    /// Succeeded exactly when every index succeeded within its retries.
    #[test]
    fn fan_outs_keep_their_invariants(
        completions in 2u32..8,
        parallelism in 1u32..5,
        retries in 0u32..3,
        failures in proptest::collection::vec(0u32..4, 8),
        crashes in proptest::collection::vec(proptest::bool::weighted(0.2), 200),
    ) {
        let mut sim = Sim::new(spec(&format!(
            "  completions: {completions}\n  parallelism: {parallelism}\n  retries: {retries}\n"
        )));
        // Index i fails its first failures[i] attempts.
        let exit = |index: u32, attempt: u32| i32::from(attempt <= failures[index as usize]);
        let phase = sim.run(&exit, &crashes)?;
        prop_assert!(sim.live.is_empty());
        let all_within = (0..completions).all(|i| failures[i as usize] <= retries);
        prop_assert_eq!(phase == Phase::Succeeded, all_within, "{:?}", sim.status);
        let status = sim.status.as_ref().unwrap();
        for l in &status.indexes {
            prop_assert!(l.attempt <= retries + 1);
        }
    }
}

#[test]
fn a_lane_placed_out_of_reach_is_given_up_uncharged_and_runs_again_here_alone() {
    use crate::status::Placement;
    let desired = Desired::Valid(Box::new(spec("  completions: 2\n  parallelism: 2\n")));
    let started = decide(input(&desired, None, t0()));
    let mut status = started.status.clone().unwrap();
    let here = Placement::process("0000aaaa", "alpha");
    assert!(
        status.attempts.iter().all(|a| a.placement.as_ref() == Some(&here)),
        "each lane's attempt records where it lives: {:?}",
        status.attempts
    );
    // Lane 1's container was made by a replica that is gone, on its own state folder.
    let elsewhere = Placement::process("1111bbbb", "beta");
    for a in status.attempts.iter_mut().filter(|a| a.index == Some(1)) {
        a.placement = Some(elsewhere.clone());
    }
    let mut next = input(&desired, Some(&status), t0());
    next.lanes.insert(
        0,
        Lane {
            observed: Observed::Container(ContainerState::Running { started_at: Some(t0()) }),
            ..Lane::default()
        },
    );
    next.lanes.insert(
        1,
        Lane {
            observed: Observed::PlacementUnreachable(elsewhere),
            ..Lane::default()
        },
    );
    let decision = decide(next);
    assert!(
        ensures(&decision).is_empty(),
        "nothing made for lane 1: {:?}",
        decision.actions
    );
    assert!(
        deletes(&decision).is_empty(),
        "nothing to delete from here: {:?}",
        decision.actions
    );
    let after = decision.status.as_ref().unwrap();
    assert_eq!(lane(after, 0).phase, Phase::Running);
    let lost = lane(after, 1);
    assert_eq!(
        (lost.phase, lost.reason, lost.attempt),
        (Phase::Pending, Some(Reason::PlacementUnreachable), 1)
    );
    assert!(lost.message.as_deref().unwrap().contains("host beta"), "{lost:?}");

    // Lane 1 runs its attempt 2 here; lane 0 is left as it was.
    let mut again = input(&desired, Some(after), t0());
    again.lanes.insert(
        0,
        Lane {
            observed: Observed::Container(ContainerState::Running { started_at: Some(t0()) }),
            ..Lane::default()
        },
    );
    let decision = decide(again);
    assert_eq!(ensures(&decision), vec![(key().container_name(2, Some(1)), 2, Some(1))]);
    assert_eq!(decision.started_lanes(Some(after)), vec![Some(1)], "it takes a slot");
    let record = decision
        .status
        .as_ref()
        .unwrap()
        .attempts
        .iter()
        .find(|a| a.index == Some(1) && a.number == 2)
        .cloned()
        .unwrap();
    assert_eq!(record.placement, Some(here));
}

#[test]
fn with_max_failed_indexes_1_one_index_always_failing_ends_succeeded_with_failed_indexes() {
    let mut sim = Sim::new(spec(
        "  completions: 6\n  parallelism: 2\n  retries: 1\n  maxFailedIndexes: 1\n",
    ));
    let exit = |index: u32, _: u32| i32::from(index == 2);
    assert_eq!(sim.run(&exit, &[]).unwrap(), Phase::Succeeded);
    let status = sim.status.as_ref().unwrap();
    assert_eq!(status.reason, Some(Reason::SucceededWithFailedIndexes));
    // The others kept running after index 2 ran out of retries, and all succeeded.
    assert_eq!(sim.attempts_of(2), 2);
    for index in [0, 1, 3, 4, 5] {
        assert_eq!(lane(status, index).phase, Phase::Succeeded, "index {index}");
    }
    assert_eq!(lane(status, 2).phase, Phase::Failed);
    let result = status.result.as_ref().unwrap().as_array().unwrap().clone();
    assert_eq!(result.len(), 6);
    assert!(result[2].is_null());
    let message = status.message.as_deref().unwrap();
    assert!(
        message.starts_with("5 of 6 indexes succeeded; 1 failed, within maxFailedIndexes 1: index 2"),
        "{message}"
    );
}

#[test]
fn with_max_failed_indexes_1_two_indexes_failing_fail_the_task_and_stop_the_rest() {
    let mut sim = Sim::new(spec("  completions: 6\n  parallelism: 2\n  maxFailedIndexes: 1\n"));
    let exit = |index: u32, _: u32| i32::from(index == 1 || index == 3);
    assert_eq!(sim.run(&exit, &[]).unwrap(), Phase::Failed);
    assert!(sim.live.is_empty());
    let status = sim.status.as_ref().unwrap();
    assert_eq!(status.reason, Some(Reason::ExitCode));
    let message = status.message.as_deref().unwrap();
    assert!(message.starts_with("index 3 failed"), "{message}");
    assert!(message.contains("index 1 failed too"), "{message}");
    // Index 1's failure did not stop the others: index 2 and 3 ran after it.
    assert!(sim.attempts_of(2) == 1 && sim.attempts_of(3) == 1);
    // Index 3's did: the lanes after it never started.
    assert!(status.indexes.iter().any(|l| l.attempt == 0), "{status:?}");
}

#[test]
fn a_fail_task_exit_code_fails_a_fan_out_whatever_max_failed_indexes_says() {
    let mut sim = Sim::new(spec(
        "  completions: 4\n  parallelism: 1\n  retries: 3\n  maxFailedIndexes: 2\n  onExit: [{exitCodes: [42], action: FailTask}]\n",
    ));
    let exit = |index: u32, _: u32| if index == 1 { 42 } else { 0 };
    assert_eq!(sim.run(&exit, &[]).unwrap(), Phase::Failed);
    assert_eq!(sim.attempts_of(1), 1, "not retried");
    let status = sim.status.as_ref().unwrap();
    assert!(status.message.as_deref().unwrap().contains("FailTask"), "{status:?}");
    assert_eq!(lane(status, 3).attempt, 0, "the rest was stopped");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With `maxFailedIndexes`, under failures and crashes: the task ends Succeeded
    /// exactly when no more than that many indexes ran out of retries, then with every
    /// other index succeeded and a null result for each failed one.
    #[test]
    fn max_failed_indexes_keeps_its_invariants(
        completions in 2u32..7,
        parallelism in 1u32..4,
        retries in 0u32..2,
        max_failed in 0u32..3,
        failures in proptest::collection::vec(0u32..4, 8),
        crashes in proptest::collection::vec(proptest::bool::weighted(0.2), 200),
    ) {
        let max_failed = max_failed.min(completions - 1);
        let mut sim = Sim::new(spec(&format!(
            "  completions: {completions}\n  parallelism: {parallelism}\n  retries: {retries}\n  maxFailedIndexes: {max_failed}\n"
        )));
        let exit = |index: u32, attempt: u32| i32::from(attempt <= failures[index as usize]);
        let phase = sim.run(&exit, &crashes)?;
        prop_assert!(sim.live.is_empty());
        let failing = (0..completions).filter(|i| failures[*i as usize] > retries).count() as u32;
        prop_assert_eq!(phase == Phase::Succeeded, failing <= max_failed, "{:?}", sim.status);
        let status = sim.status.as_ref().unwrap();
        for l in &status.indexes {
            prop_assert!(l.attempt <= retries + 1);
        }
        if phase == Phase::Succeeded {
            let result = status.result.as_ref().and_then(|r| r.as_array()).cloned().unwrap_or_default();
            prop_assert_eq!(result.len(), completions as usize);
            for l in &status.indexes {
                let should_fail = failures[l.index as usize] > retries;
                prop_assert_eq!(l.phase, if should_fail { Phase::Failed } else { Phase::Succeeded });
                prop_assert!(!should_fail || result[l.index as usize].is_null());
            }
            let reason = if failing == 0 { Reason::Completed } else { Reason::SucceededWithFailedIndexes };
            prop_assert_eq!(status.reason, Some(reason));
        }
    }
}
