//! Pipeline logic, checked on the simulator instead of with real processes and real
//! sleeps: the same assertions the end-to-end tests made, exact and in milliseconds.

use super::scenario::{Scenario, env, every_container};
use crate::controller::{ControllerConfig, Outcome};
use crate::manifest::RuntimeKind;
use crate::status::{Phase, Reason};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_failing_task_is_tried_retries_plus_one_times_then_fails_with_its_reason() {
    let ran = Scenario::new(ControllerConfig::default(), every_container(ms(50), 7))
        .task("flaky", "  retries: 2\n  backoff: 100ms\n")
        .run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::SomeFailed));
    let status = ran.status("flaky");
    assert_eq!((status.phase, status.reason), (Phase::Failed, Some(Reason::ExitCode)));
    assert_eq!(status.attempt, 3);
    assert_eq!(status.attempts.len(), 3);
    assert!(status.attempts.iter().all(|a| a.exit_code == Some(7)));
    assert!(
        status.message.as_deref().unwrap_or("").contains("no retries left"),
        "{status:?}"
    );
    assert!(
        status.log_tail.as_deref().unwrap_or("").contains("output of"),
        "{status:?}"
    );
    assert_eq!(ran.env_of_creations("SKIFF_ATTEMPT"), ["1", "2", "3"]);
    // Retries back off: the second retry waits about twice as long as the first.
    let gap = |i: usize| {
        let created = status.attempts[i].created_at.unwrap_or_default();
        let finished = status.attempts[i - 1].finished_at.unwrap_or_default();
        (created - finished).num_milliseconds()
    };
    assert!(gap(1) >= 70, "first retry after {} ms", gap(1));
    assert!(gap(2) >= 150, "second retry after {} ms", gap(2));
    assert!(gap(2) > gap(1), "{} then {} ms", gap(1), gap(2));
}

#[test]
fn a_silent_attempt_fails_heartbeat_timeout_on_time_and_is_retried_while_a_short_one_succeeds() {
    // Containers that never beat: the long ones run 60 s, the short one 2 s.
    let behaviour = Arc::new(|spec: &crate::runtime::ContainerSpec| {
        if spec.name.contains("short") {
            (Duration::from_secs(2), 0)
        } else {
            (Duration::from_secs(60), 0)
        }
    });
    let mut scenario = Scenario::new(ControllerConfig::default(), behaviour)
        .task("silent", "  heartbeatTimeout: 5s\n  retries: 2\n  backoff: 1s\n")
        .task("short", "  heartbeatTimeout: 5s\n");
    scenario.api = true;
    let ran = scenario.run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::SomeFailed));
    let status = ran.status("silent");
    assert_eq!(
        (status.phase, status.reason),
        (Phase::Failed, Some(Reason::HeartbeatTimeout))
    );
    assert_eq!(status.attempts.len(), 3, "retried as any failure");
    for attempt in &status.attempts {
        assert_eq!(attempt.reason, Some(Reason::HeartbeatTimeout));
        let silent = attempt.finished_at.unwrap_or_default() - attempt.started_at.unwrap_or_default();
        // Judged at its moment: the decision's requeue is the timer, not the poll interval.
        assert!(
            (5_000..=5_600).contains(&silent.num_milliseconds()),
            "attempt {} judged after {} ms of silence",
            attempt.number,
            silent.num_milliseconds()
        );
    }
    assert!(
        ran.env_of_creations("SKIFF_HEARTBEAT_URL")
            .iter()
            .all(|url| url.contains("/heartbeat?"))
    );
    let short = ran.status("short");
    assert_eq!(short.phase, Phase::Succeeded, "{short:?}");
}

#[test]
fn a_hundred_tasks_under_max_running_4_never_run_more_than_4_and_start_in_order() {
    let mut scenario = Scenario::new(
        ControllerConfig {
            max_running: Some(4),
            ..ControllerConfig::default()
        },
        every_container(ms(200), 0),
    );
    for i in 0..100 {
        scenario = scenario.task(&format!("t{i:03}"), "");
    }
    let ran = scenario.run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::AllSucceeded));
    assert_eq!(ran.peak, 4, "the limit was used, and never passed");
    let started = ran.env_of_creations("SKIFF_TASK");
    assert_eq!(started.len(), 100);
    for (position, task) in started.iter().enumerate() {
        let appeared: usize = task[1..].parse().unwrap_or(usize::MAX);
        assert!(
            appeared.abs_diff(position) <= 4,
            "{task} started {position}th, but its manifest was {appeared}th: {started:?}"
        );
    }
    assert!(
        ran.writes.iter().any(|(_, s)| s.reason == Some(Reason::WaitingForSlot)
            && s.message.as_deref().unwrap_or("").contains("max-running 4/4")),
        "a waiting task says which limit holds it"
    );
}

#[test]
fn a_new_task_says_it_waits_for_a_slot_only_once_it_has_waited_a_second() {
    let ran = Scenario::new(
        ControllerConfig {
            max_running: Some(1),
            ..ControllerConfig::default()
        },
        every_container(ms(600), 0),
    )
    .task("a", "")
    .task("b", "")
    .task("c", "")
    .run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::AllSucceeded));
    let written = |task: &str| -> Vec<_> {
        ran.writes
            .iter()
            .filter(|(key, _)| key.as_str() == task)
            .map(|(_, s)| (s.phase, s.reason, s.updated_at))
            .collect()
    };
    let began = written("a")[0].2;
    // "b" waited 0.6 s: its first status is its Creating.
    assert_eq!(written("b")[0].0, Phase::Creating, "{:?}", written("b"));
    // "c" waited 1.2 s: it said so, once, a second into its wait, then started.
    let c = written("c");
    assert_eq!(
        (c[0].0, c[0].1),
        (Phase::Pending, Some(Reason::WaitingForSlot)),
        "{c:?}"
    );
    let said_after = (c[0].2 - began).to_std().unwrap_or_default();
    assert!(
        said_after >= ms(1000) && said_after < ms(1200),
        "said after {said_after:?}"
    );
    assert_eq!(c[1].0, Phase::Creating, "{c:?}");
}

#[test]
fn a_runtime_cap_holds_tasks_back_under_the_global_limit() {
    let mut scenario = Scenario::new(
        ControllerConfig {
            max_running: Some(6),
            max_running_per_runtime: HashMap::from([(RuntimeKind::Process, 2)]),
            ..ControllerConfig::default()
        },
        // Long enough that the last in line waits past `QUIET_WAIT` and says why.
        every_container(ms(500), 0),
    );
    for i in 0..8 {
        scenario = scenario.task(&format!("p{i}"), "");
    }
    let ran = scenario.run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::AllSucceeded));
    assert_eq!(ran.peak, 2, "the process cap, not the global limit, held them");
    assert!(
        ran.writes.iter().any(|(_, s)| s.reason == Some(Reason::WaitingForSlot)
            && s.message.as_deref().unwrap_or("").contains("max-running-process 2/2")),
        "a waiting task names the cap that holds it"
    );
}

#[test]
fn twelve_tasks_naming_gpu_under_gpu_2_never_run_more_than_2_and_all_finish() {
    let mut scenario = Scenario::new(
        ControllerConfig {
            semaphores: std::collections::BTreeMap::from([("gpu".to_string(), 2), ("db".to_string(), 1)]),
            ..ControllerConfig::default()
        },
        every_container(ms(250), 0),
    );
    for i in 0..12 {
        scenario = scenario.task(&format!("g{i:02}"), "  semaphores: [gpu]\n");
    }
    // Two tasks free of any semaphore run beside them; one naming both waits for each.
    scenario = scenario
        .task("free1", "")
        .task("free2", "")
        .task("both", "  semaphores: [db, gpu]\n");
    let ran = scenario.run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::AllSucceeded));
    assert!(
        ran.peak >= 3,
        "the free tasks ran beside the gpu ones: peak {}",
        ran.peak
    );
    assert!(
        ran.writes.iter().any(|(_, s)| s.reason == Some(Reason::WaitingForSlot)
            && s.message.as_deref().unwrap_or("").contains("semaphore gpu 2/2")),
        "a waiting task names the semaphore that holds it"
    );
    // First come, first served: the gpu tasks start in the order they were seen.
    let started: Vec<String> = ran
        .env_of_creations("SKIFF_TASK")
        .into_iter()
        .filter(|t| t.starts_with('g'))
        .collect();
    assert_eq!(started.len(), 12);
    for (position, task) in started.iter().enumerate() {
        let appeared: usize = task[1..].parse().unwrap_or(usize::MAX);
        assert!(
            appeared.abs_diff(position) <= 2,
            "{task} started {position}th: {started:?}"
        );
    }
}

#[test]
fn a_task_naming_an_undefined_semaphore_is_invalid_with_the_fix() {
    let ran = Scenario::new(ControllerConfig::default(), every_container(ms(10), 0))
        .task("needs", "  semaphores: [gpu]\n")
        .run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    let status = ran.status("needs");
    assert_eq!(status.phase, Phase::Invalid);
    let message = status.message.as_deref().unwrap_or("");
    assert!(
        message.contains("spec.semaphores[0]") && message.contains("--semaphore gpu=N"),
        "{message}"
    );
    assert!(ran.creations.is_empty());
}

/// A fan-out of ten, three at a time, whose index `failing` fails its first `fails`
/// attempts; the others run `runs`.
fn fan_out(failing: u32, fails: u32, runs: Duration) -> Scenario {
    let behaviour = Arc::new(move |spec: &crate::runtime::ContainerSpec| {
        let index: u32 = env(spec, "SKIFF_INDEX").parse().unwrap_or(u32::MAX);
        let attempt: u32 = env(spec, "SKIFF_ATTEMPT").parse().unwrap_or(u32::MAX);
        if index == failing && attempt <= fails {
            (ms(100), 1)
        } else {
            (runs, 0)
        }
    });
    Scenario::new(ControllerConfig::default(), behaviour).task(
        "fan",
        "  completions: 10\n  parallelism: 3\n  retries: 1\n  backoff: 200ms\n",
    )
}

#[test]
fn ten_completions_three_at_a_time_retry_a_failed_index_alone_and_succeed() {
    let ran = fan_out(7, 1, ms(300)).run();
    // The world checks at each create that no more than `parallelism` run at once.
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::AllSucceeded));
    assert_eq!(ran.peak, 3, "parallelism was used");
    let runs: Vec<String> = ran
        .creations
        .iter()
        .map(|c| format!("index {} {}", c.env["SKIFF_INDEX"], c.env["SKIFF_ATTEMPT"]))
        .collect();
    assert_eq!(runs.len(), 11, "{runs:?}");
    assert!(runs.contains(&"index 7 2".to_string()), "{runs:?}");
    let status = ran.status("fan");
    assert_eq!(status.phase, Phase::Succeeded);
    let seven = &status.indexes[7];
    assert_eq!((seven.phase, seven.attempt), (Phase::Succeeded, 2));
    assert_eq!(status.attempts.iter().filter(|a| a.index == Some(7)).count(), 2);
    assert_eq!(status.attempts.len(), 11);
}

#[test]
fn an_index_out_of_retries_fails_the_task_and_leaves_no_index_running() {
    // The others run long, so that they are live when index 1 fails for good.
    let ran = fan_out(1, 99, ms(1500)).run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::SomeFailed));
    let status = ran.status("fan");
    assert_eq!(status.phase, Phase::Failed, "{status:?}");
    assert!(
        status.message.as_deref().unwrap_or("").starts_with("index 1 failed"),
        "{status:?}"
    );
    assert_eq!(status.indexes[1].attempt, 2);
    // Some indexes were stopped mid-run or never started; none is left claiming to run
    // (and the world checked, when Failed was written, that no container was left).
    for lane in &status.indexes {
        assert!(
            [Phase::Succeeded, Phase::Failed, Phase::Pending].contains(&lane.phase),
            "{lane:?}"
        );
    }
}

#[test]
fn cycles_and_unknown_dependencies_are_invalid_and_a_failed_dependency_fails_its_dependents() {
    let behaviour = Arc::new(|spec: &crate::runtime::ContainerSpec| {
        let code = if env(spec, "SKIFF_TASK") == "broken" { 3 } else { 0 };
        (ms(50), code)
    });
    let ran = Scenario::new(ControllerConfig::default(), behaviour)
        .task("a", "  dependsOn: [b]\n")
        .task("b", "  dependsOn: [c]\n")
        .task("c", "  dependsOn: [a]\n")
        .task("me", "  dependsOn: [me]\n")
        .task("orphan", "  dependsOn: [nowhere/task]\n")
        .task("outside", "  dependsOn: [a]\n")
        .task("broken", "")
        .task("after-broken", "  dependsOn: [broken]\n")
        .run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    assert_eq!(ran.outcome, Some(Outcome::SomeFailed));
    for task in ["a", "b", "c"] {
        let status = ran.status(task);
        assert_eq!(status.phase, Phase::Invalid, "{task}: {status:?}");
        let message = status.message.as_deref().unwrap_or("");
        assert!(message.contains(&format!("{task}.yaml: spec.dependsOn")), "{message}");
        let cycle = ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"];
        assert!(cycle.iter().any(|c| message.contains(c)), "{task}: {message}");
    }
    let me = ran.status("me");
    assert_eq!(me.phase, Phase::Invalid);
    assert!(
        me.message.as_deref().unwrap_or("").contains("depends on itself"),
        "{me:?}"
    );
    let orphan = ran.status("orphan");
    assert_eq!(orphan.phase, Phase::Invalid);
    assert!(
        orphan
            .message
            .as_deref()
            .unwrap_or("")
            .contains("there is no task nowhere/task"),
        "{orphan:?}"
    );
    let outside = ran.status("outside");
    assert_eq!(
        (outside.phase, outside.reason),
        (Phase::Failed, Some(Reason::DependencyFailed))
    );
    let after = ran.status("after-broken");
    assert_eq!(
        (after.phase, after.reason),
        (Phase::Failed, Some(Reason::DependencyFailed))
    );
    assert!(
        after
            .message
            .as_deref()
            .unwrap_or("")
            .contains("dependency broken failed"),
        "{after:?}"
    );
    assert!(after.attempts.is_empty(), "it never ran");
    assert_eq!(
        ran.env_of_creations("SKIFF_TASK"),
        ["broken"],
        "only the task with no dependency problem ran"
    );
}

#[test]
fn depending_on_a_scheduled_task_is_refused_naming_the_field_and_the_fix() {
    let ran = Scenario::new(ControllerConfig::default(), every_container(ms(50), 0))
        .task("nightly", "  schedule: {cron: '0 2 * * *'}\n")
        .task("report", "  dependsOn: [other, nightly]\n")
        .task("other", "")
        .run();
    assert!(ran.violations.is_empty(), "{:?}", ran.violations);
    let report = ran.status("report");
    assert_eq!(report.phase, Phase::Invalid, "{report:?}");
    let message = report.message.as_deref().unwrap_or("");
    assert!(
        message.contains("report.yaml: spec.dependsOn[1]: nightly has a schedule"),
        "{message}"
    );
    assert!(message.contains("remove nightly from dependsOn"), "{message}");
    assert_eq!(ran.status("nightly").phase, Phase::Scheduled);
    assert_eq!(ran.status("other").phase, Phase::Succeeded);
}
