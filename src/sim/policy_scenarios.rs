//! Failure policies on the simulator, through the whole pipeline (store, queue, decision,
//! runtime, status writes): exit-code rules (`spec.onExit`), failure-tolerant fan-out
//! (`spec.maxFailedIndexes`) and `dependsOn` conditions. The checks, exact.

use super::scenario::{Scenario, env};
use crate::controller::{ControllerConfig, Outcome};
use crate::manifest::ExitAction;
use crate::status::{Phase, Reason};
use std::sync::Arc;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const RULES: &str = "  retries: 5\n  backoff: 100ms\n  onExit:\n    - {exitCodes: [42], action: FailTask}\n    - {exitCodes: [75, 137], action: RetryUncounted}\n    - {exitCodes: [3], action: Succeed}\n";

#[test]
fn exit_codes_42_75_and_3_with_retries_5_end_as_their_rules_say() {
    let behaviour = Arc::new(|spec: &crate::runtime::ContainerSpec| {
        let code = env(spec, "SKIFF_TASK").trim_start_matches("code").parse().unwrap_or(1);
        (ms(50), code)
    });
    let ran = Scenario::new(ControllerConfig::default(), behaviour)
        .task("code42", RULES)
        .task("code75", RULES)
        .task("code3", RULES)
        .task("code1", RULES)
        .run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::SomeFailed));

    let fail_task = ran.status("code42");
    assert_eq!(
        (fail_task.phase, fail_task.reason, fail_task.attempts.len()),
        (Phase::Failed, Some(Reason::ExitCode), 1)
    );
    assert_eq!(
        fail_task.attempts[0].exit_rule.map(|r| (r.rule, r.action)),
        Some((0, ExitAction::FailTask))
    );

    // 10 uncounted retries, then the 5 of `retries`: 16 attempts.
    let uncounted = ran.status("code75");
    assert_eq!(
        (uncounted.phase, uncounted.reason, uncounted.attempts.len()),
        (Phase::Failed, Some(Reason::ExitCode), 16)
    );
    let capped: Vec<bool> = uncounted
        .attempts
        .iter()
        .map(|a| a.exit_rule.is_some_and(|r| r.cap_reached))
        .collect();
    assert_eq!(capped, [vec![false; 10], vec![true; 6]].concat());
    assert_eq!(
        ran.env_of_creations("SKIFF_TASK")
            .iter()
            .filter(|t| *t == "code75")
            .count(),
        16
    );

    let succeed = ran.status("code3");
    assert_eq!(
        (succeed.phase, succeed.reason, succeed.attempts.len()),
        (Phase::Succeeded, Some(Reason::Completed), 1)
    );
    assert_eq!(succeed.attempts[0].exit_code, Some(3));

    // No rule: retries + 1 attempts.
    let counted = ran.status("code1");
    assert_eq!((counted.phase, counted.attempts.len()), (Phase::Failed, 6));
}

fn six_indexes(failing: &'static [&'static str]) -> Scenario {
    let behaviour = Arc::new(move |spec: &crate::runtime::ContainerSpec| {
        let index = env(spec, "SKIFF_INDEX");
        // Failing indexes fail at once; the others run longer, so they are live then.
        if failing.contains(&index.as_str()) {
            (ms(50), 1)
        } else {
            (ms(400), 0)
        }
    });
    Scenario::new(ControllerConfig::default(), behaviour).task(
        "fan",
        "  completions: 6\n  parallelism: 3\n  retries: 1\n  backoff: 100ms\n  maxFailedIndexes: 1\n",
    )
}

#[test]
fn six_indexes_with_max_failed_indexes_1_and_one_always_failing_succeed_with_failed_indexes() {
    let ran = six_indexes(&["4"]).run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::AllSucceeded));
    let status = ran.status("fan");
    assert_eq!(
        (status.phase, status.reason),
        (Phase::Succeeded, Some(Reason::SucceededWithFailedIndexes)),
        "{status:?}"
    );
    let phases: Vec<Phase> = status.indexes.iter().map(|l| l.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Succeeded,
            Phase::Succeeded,
            Phase::Succeeded,
            Phase::Succeeded,
            Phase::Failed,
            Phase::Succeeded
        ]
    );
    assert_eq!(status.indexes[4].attempt, 2, "its retry was taken");
    let result = status
        .result
        .as_ref()
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    assert_eq!(result.len(), 6);
    assert!(result[4].is_null());
    // Every index ran: the failed one stopped nobody.
    assert_eq!(ran.creations.len(), 7);
}

#[test]
fn six_indexes_with_max_failed_indexes_1_and_two_always_failing_fail_and_stop_the_rest() {
    let ran = six_indexes(&["1", "2"]).run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::SomeFailed));
    let status = ran.status("fan");
    assert_eq!(
        (status.phase, status.reason),
        (Phase::Failed, Some(Reason::ExitCode)),
        "{status:?}"
    );
    assert_eq!(status.indexes.iter().filter(|l| l.phase == Phase::Failed).count(), 2);
    // The rest was stopped, or never started; none claims to run.
    assert!(
        status
            .indexes
            .iter()
            .any(|l| l.attempt == 0 || l.phase == Phase::Pending)
    );
    for lane in &status.indexes {
        assert!(!lane.phase.has_container(), "{lane:?}");
    }
}

#[test]
fn a_finished_dependency_runs_its_dependent_after_a_failure_and_says_its_phase() {
    let behaviour = Arc::new(|spec: &crate::runtime::ContainerSpec| {
        let code = if env(spec, "SKIFF_TASK") == "flaky" { 9 } else { 0 };
        (ms(50), code)
    });
    let ran = Scenario::new(ControllerConfig::default(), behaviour)
        .task("flaky", "")
        .task("fine", "")
        .task("report", "  dependsOn: [fine, {task: flaky, condition: finished}]\n")
        .task("strict", "  dependsOn: [{task: flaky, condition: succeeded}]\n")
        .run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.status("flaky").phase, Phase::Failed);
    let report = ran.status("report");
    assert_eq!(report.phase, Phase::Succeeded, "{report:?}");
    let strict = ran.status("strict");
    assert_eq!(
        (strict.phase, strict.reason),
        (Phase::Failed, Some(Reason::DependencyFailed))
    );
    let results: Vec<String> = ran
        .creations
        .iter()
        .filter(|c| c.env.get("SKIFF_TASK").map(String::as_str) == Some("report"))
        .map(|c| c.env["SKIFF_DEPENDENCY_RESULTS"].clone())
        .collect();
    assert_eq!(results.len(), 1);
    let results: serde_json::Value = serde_json::from_str(&results[0]).unwrap();
    assert_eq!(results["flaky"]["phase"], "Failed");
    assert_eq!(results["flaky"]["reason"], "ExitCode");
    assert!(results["flaky"]["result"].is_null());
    // A plain dependency's entry is as it always was: its result alone.
    assert_eq!(results["fine"], serde_json::json!({"result": null}));
}

#[test]
fn a_container_killed_by_the_runtime_with_137_is_retried_uncounted() {
    // 137 (SIGKILL, an OOM kill): retried without using `retries: 0`, then it succeeds.
    let behaviour = Arc::new(|spec: &crate::runtime::ContainerSpec| {
        let code = if env(spec, "SKIFF_ATTEMPT") == "3" { 0 } else { 137 };
        (ms(50), code)
    });
    let ran = Scenario::new(ControllerConfig::default(), behaviour)
        .task(
            "oom",
            "  backoff: 100ms\n  onExit: [{exitCodes: [137], action: RetryUncounted}]\n",
        )
        .run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::AllSucceeded));
    assert_eq!(ran.status("oom").attempts.len(), 3);
}
