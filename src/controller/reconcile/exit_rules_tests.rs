//! Exit-code rules: table tests of the verdicts, a task of one completion driven to its
//! end against a runtime model (the checks: codes 42, 75 and 3 with
//! `retries: 5`), and a property over random rules, exit codes and crashes.

use super::super::*;
use super::MAX_UNCOUNTED_RETRIES;
use crate::manifest::{ExitAction, Features, RuntimeKind, ValidationContext};
use chrono::TimeDelta;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const RULES: &str = "  onExit:\n    - {exitCodes: [42], action: FailTask}\n    - {exitCodes: [75, 137], action: RetryUncounted}\n    - {exitCodes: [3], action: Succeed}\n    - {exitCodes: [4], action: Count}\n";

fn key() -> TaskKey {
    TaskKey::new("jobs/rules")
}

fn t0() -> Timestamp {
    chrono::DateTime::from_timestamp(1_750_000_000, 0).expect("a valid timestamp")
}

fn spec(lines: &str) -> TaskSpec {
    let text = format!("apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [x]\n  backoff: 1s\n{lines}");
    let task = crate::manifest::parse_manifest("jobs/rules.yaml", text.as_bytes()).expect("the manifest parses");
    let ctx = ValidationContext {
        default_runtime: RuntimeKind::Process,
        allow_host_paths: &[],
        features: Features::CURRENT,
        env_is_set: None,
    };
    crate::manifest::validate("jobs/rules.yaml", "rules", &task, &ctx).expect("the manifest validates")
}

/// A task of one completion against a model runtime: a container made by one decision
/// has exited, with `exit(attempt)`, by the next look.
struct Run {
    spec: TaskSpec,
    status: Option<TaskStatus>,
    /// container → exit code
    live: BTreeMap<String, i32>,
    made: BTreeSet<String>,
    now: Timestamp,
}

impl Run {
    fn new(spec: TaskSpec) -> Run {
        Run {
            spec,
            status: None,
            live: BTreeMap::new(),
            made: BTreeSet::new(),
            now: t0(),
        }
    }

    /// One reconcile; `crash` persists the decision but performs none of its actions.
    fn step(&mut self, exit: &dyn Fn(u32) -> i32, crash: bool) -> Result<(), TestCaseError> {
        let observed = match self.status.as_ref().and_then(|s| s.live_container()) {
            None => Observed::NotApplicable,
            Some(container) => match self.live.get(container) {
                None => Observed::Container(ContainerState::Absent),
                Some(code) => Observed::Container(ContainerState::Exited {
                    exit_code: Some(*code),
                    started_at: None,
                    finished_at: Some(self.now),
                    message: None,
                }),
            },
        };
        let desired = Desired::Valid(Box::new(self.spec.clone()));
        let key = key();
        let decision = decide(Input {
            key: &key,
            desired: &desired,
            status: self.status.as_ref(),
            observed,
            seen_by_engine: false,
            heartbeat: None,
            log_tail: None,
            slot: Slot::Granted,
            now: self.now,
            jitter: 0.5,
            event: None,
            terminate: false,
            index: None,
            lanes: BTreeMap::new(),
            dependencies: Dependencies::None,
            placement: Some(crate::status::Placement::process("0000aaaa", "alpha")),
            scheduling: Default::default(),
        });
        if let Some(status) = &decision.status
            && status.phase.is_terminal()
        {
            prop_assert!(self.live.is_empty(), "terminal with live containers {:?}", self.live);
        }
        self.status = decision.status.clone();
        if !crash {
            for action in &decision.actions {
                match action {
                    Action::EnsureContainer { container, attempt, .. } => {
                        if !self.live.contains_key(container) {
                            prop_assert!(self.made.insert(container.clone()), "{container} made twice");
                            self.live.insert(container.clone(), exit(*attempt));
                        }
                    }
                    Action::DeleteContainer { container } => {
                        self.live.remove(container);
                    }
                    Action::RemoveStatus => {}
                }
            }
        }
        // Past any backoff (at most 5 minutes).
        self.now += TimeDelta::seconds(301);
        Ok(())
    }

    fn run(&mut self, exit: &dyn Fn(u32) -> i32, crashes: &[bool]) -> Result<&TaskStatus, TestCaseError> {
        for n in 0..600 {
            self.step(exit, crashes.get(n).copied().unwrap_or(false))?;
            if self.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
                return Ok(self.status.as_ref().expect("a status"));
            }
        }
        Err(TestCaseError::fail(format!("never finished: {:?}", self.status)))
    }
}

#[test]
fn the_first_rule_listing_a_code_wins_and_unlisted_codes_have_none() {
    let spec = spec(RULES);
    assert_eq!(super::rule_for(&spec, 42), Some((0, ExitAction::FailTask)));
    assert_eq!(super::rule_for(&spec, 137), Some((1, ExitAction::RetryUncounted)));
    assert_eq!(super::rule_for(&spec, 3), Some((2, ExitAction::Succeed)));
    assert_eq!(super::rule_for(&spec, 4), Some((3, ExitAction::Count)));
    assert_eq!(super::rule_for(&spec, 1), None);
    assert_eq!(super::rule_for(&spec, 0), None);
}

#[test]
fn exit_code_42_fails_the_task_on_its_first_attempt_whatever_retries_says() {
    let mut run = Run::new(spec(&format!("  retries: 5\n{RULES}")));
    let status = run.run(&|_| 42, &[]).unwrap().clone();
    assert_eq!((status.phase, status.reason), (Phase::Failed, Some(Reason::ExitCode)));
    assert_eq!(status.attempts.len(), 1);
    let rule = status.attempts[0].exit_rule.expect("the rule is recorded");
    assert_eq!(
        (rule.rule, rule.action, rule.cap_reached),
        (0, ExitAction::FailTask, false)
    );
    let message = status.message.unwrap();
    assert!(message.contains("spec.onExit[0] says FailTask"), "{message}");
    assert!(!message.contains("no retries left"), "{message}");
}

#[test]
fn exit_code_75_is_retried_ten_times_uncounted_then_counts_against_retries() {
    let mut run = Run::new(spec(&format!("  retries: 5\n{RULES}")));
    let status = run.run(&|_| 75, &[]).unwrap().clone();
    assert_eq!((status.phase, status.reason), (Phase::Failed, Some(Reason::ExitCode)));
    let cap = MAX_UNCOUNTED_RETRIES as usize;
    assert_eq!(status.attempts.len(), cap + 5 + 1, "10 uncounted, then retries + 1");
    for (i, attempt) in status.attempts.iter().enumerate() {
        let rule = attempt.exit_rule.expect("every attempt says its rule");
        assert_eq!((rule.rule, rule.action), (1, ExitAction::RetryUncounted));
        assert_eq!(rule.cap_reached, i >= cap, "attempt {}", attempt.number);
    }
    let last = status.attempts.last().unwrap().message.clone().unwrap();
    assert!(last.contains("the cap of 10 uncounted retries is reached"), "{last}");
    assert!(status.message.unwrap().contains("no retries left (retries: 5)"));
}

#[test]
fn exit_code_3_succeeds_on_its_first_attempt() {
    let mut run = Run::new(spec(&format!("  retries: 5\n{RULES}")));
    let status = run.run(&|_| 3, &[]).unwrap().clone();
    assert_eq!(
        (status.phase, status.reason),
        (Phase::Succeeded, Some(Reason::Completed))
    );
    assert_eq!(status.attempts.len(), 1);
    assert_eq!(status.attempts[0].exit_code, Some(3));
    assert_eq!(status.attempts[0].reason, Some(Reason::Completed));
    assert_eq!(
        status.attempts[0].exit_rule.map(|r| r.action),
        Some(ExitAction::Succeed)
    );
    assert!(status.message.unwrap().contains("a success by spec.onExit[2]"));
}

#[test]
fn an_unlisted_code_and_count_are_charged_like_any_failure() {
    for code in [1, 4] {
        let mut run = Run::new(spec(&format!("  retries: 2\n{RULES}")));
        let status = run.run(&|_| code, &[]).unwrap().clone();
        assert_eq!(status.phase, Phase::Failed);
        assert_eq!(status.attempts.len(), 3, "code {code}");
    }
}

#[test]
fn uncounted_retries_then_a_success_succeed_with_retries_untouched() {
    // Two uncounted failures, then one counted, then success: with retries: 1 it succeeds.
    let mut run = Run::new(spec(&format!("  retries: 1\n{RULES}")));
    let exit = |attempt: u32| match attempt {
        1 | 2 => 75,
        3 => 1,
        _ => 0,
    };
    let status = run.run(&exit, &[]).unwrap().clone();
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(status.attempts.len(), 4);
    let waits: Vec<_> = status.attempts.iter().map(|a| a.exit_rule.is_some()).collect();
    assert_eq!(waits, [true, true, false, false]);
}

#[test]
fn a_rule_in_event_mode_applies_to_the_reported_code_but_an_exit_without_event_never_succeeds() {
    let spec = spec(&format!("  retries: 5\n  completion: {{mode: event}}\n{RULES}"));
    let mut status = TaskStatus::new(key().as_str(), "rules", &spec.spec_hash, t0());
    status.attempt = 1;
    status.phase = Phase::Running;
    status.attempts.push(AttemptRecord {
        number: 1,
        id: None,
        runtime: RuntimeKind::Process,
        container: key().container_name(1, None),
        index: None,
        created_at: Some(t0()),
        started_at: Some(t0()),
        finished_at: None,
        exit_code: None,
        completed_by: None,
        reason: None,
        message: None,
        placement: Some(crate::status::Placement::process("0000aaaa", "alpha")),
        semaphores: Vec::new(),
        exit_rule: None,
    });
    let desired = Desired::Valid(Box::new(spec.clone()));
    let key = key();
    let base = Input {
        key: &key,
        desired: &desired,
        status: Some(&status),
        observed: Observed::Container(ContainerState::Running { started_at: Some(t0()) }),
        seen_by_engine: false,
        heartbeat: None,
        log_tail: None,
        slot: Slot::Granted,
        now: t0(),
        jitter: 0.5,
        event: None,
        terminate: false,
        index: None,
        lanes: BTreeMap::new(),
        dependencies: Dependencies::None,
        placement: Some(crate::status::Placement::process("0000aaaa", "alpha")),
        scheduling: Default::default(),
    };
    // The callback reports 42: FailTask.
    let reported = decide(Input {
        event: Some(crate::callback::CallbackEvent {
            exit_code: Some(42),
            ..Default::default()
        }),
        ..base.clone()
    });
    let record = reported.status.as_ref().unwrap().current().unwrap().clone();
    assert_eq!(record.exit_rule.map(|r| r.action), Some(ExitAction::FailTask));
    // Exit 3 without a callback: Succeed does not apply, the attempt failed.
    let exited = decide(Input {
        observed: Observed::Container(ContainerState::Exited {
            exit_code: Some(3),
            started_at: None,
            finished_at: Some(t0()),
            message: None,
        }),
        ..base
    });
    let record = exited.status.as_ref().unwrap().current().unwrap().clone();
    assert_eq!(record.reason, Some(Reason::ExitedWithoutEvent));
    assert_eq!(record.exit_rule, None);
}

fn action() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("FailTask"), Just("RetryUncounted"), Just("Succeed"), Just("Count")]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the rules, the exit codes and the crashes: attempts never exceed
    /// retries + 1 + the uncounted cap; an attempt whose code a rule says FailTask ends
    /// the task there, Failed; one it says Succeed ends it there, Succeeded; and the
    /// outcome is the one a plain reading of the rules gives.
    #[test]
    fn exit_rules_keep_their_invariants(
        retries in 0u32..4,
        actions in proptest::collection::vec(action(), 4),
        codes in proptest::collection::vec(0i32..6, 40),
        crashes in proptest::collection::vec(proptest::bool::weighted(0.2), 600),
    ) {
        // Rule i lists code i + 1; code 5 is listed by none.
        let rules: String = actions
            .iter()
            .enumerate()
            .map(|(i, action)| format!("    - {{exitCodes: [{}], action: {action}}}\n", i + 1))
            .collect();
        let spec = spec(&format!("  retries: {retries}\n  onExit:\n{rules}"));
        let exit = |attempt: u32| codes.get(attempt as usize - 1).copied().unwrap_or(0);
        let mut run = Run::new(spec.clone());
        let status = run.run(&exit, &crashes)?.clone();
        prop_assert!(run.live.is_empty());
        let attempts = status.attempts.len() as u32;
        prop_assert!(attempts <= retries + 1 + MAX_UNCOUNTED_RETRIES, "{} attempts", attempts);
        prop_assert_eq!(status.attempt, attempts);

        // The model: what each code means, in order.
        let (mut charged, mut uncounted) = (0u32, 0u32);
        let mut expected = None;
        for n in 1..=attempts {
            let code = exit(n);
            let action = (1..=4).contains(&code).then(|| actions[code as usize - 1]);
            let outcome = match (code, action) {
                (0, _) | (_, Some("Succeed")) => Some(Phase::Succeeded),
                (_, Some("FailTask")) => Some(Phase::Failed),
                (_, Some("RetryUncounted")) if uncounted < MAX_UNCOUNTED_RETRIES => {
                    uncounted += 1;
                    None
                }
                _ => {
                    charged += 1;
                    (charged > retries).then_some(Phase::Failed)
                }
            };
            if let Some(phase) = outcome {
                prop_assert_eq!(n, attempts, "the task went on after attempt {}", n);
                expected = Some(phase);
            }
        }
        prop_assert_eq!(Some(status.phase), expected, "{:?}", status);
    }
}
