//! Failure policies end to end, on real processes (and real Docker containers): exit-code
//! rules (`spec.onExit`), a fan-out tolerating failed indexes (`spec.maxFailedIndexes`)
//! and a `dependsOn` entry with `condition: finished`. The pipeline's logic is checked
//! exactly on the simulator (`src/sim/policy_scenarios.rs`); these prove the real
//! runtimes' exit codes reach it.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::{DOCKER_IMAGE, Workspace, docker_or_skip};

const LONG: Duration = Duration::from_secs(180);

const RULES: &str = "  retries: 5\n  backoff: 100ms\n  onExit:\n    - {exitCodes: [42], action: FailTask}\n    - {exitCodes: [75, 137], action: RetryUncounted}\n    - {exitCodes: [3], action: Succeed}\n";

fn attempts(status: &Value) -> Vec<Value> {
    status["attempts"].as_array().cloned().unwrap_or_default()
}

/// (phase, reason, number of attempts) of a task.
fn outcome(ws: &Workspace, task: &str) -> (String, String, usize) {
    let status = ws.status(task).unwrap_or_else(|| panic!("no status for {task}"));
    (
        status["phase"].as_str().unwrap_or_default().to_string(),
        status["reason"].as_str().unwrap_or_default().to_string(),
        attempts(&status).len(),
    )
}

#[test]
fn exit_codes_42_75_and_3_with_retries_5_on_real_processes() {
    let ws = Workspace::new();
    for code in [42, 75, 3] {
        let script = format!("{}; exit {code}", ws.ledger_line());
        ws.task(&format!("code{code}.yaml"), &script, RULES);
    }
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(1), "one task Failed: {}", ws.controller_log());

    assert_eq!(outcome(&ws, "code42"), ("Failed".into(), "ExitCode".into(), 1));
    let failed = ws.status("code42").unwrap();
    assert_eq!(failed["attempts"][0]["exitCode"], 42);
    assert_eq!(
        failed["attempts"][0]["exitRule"],
        serde_json::json!({"rule": 0, "action": "FailTask"})
    );
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("spec.onExit[0] says FailTask"),
        "{failed:#}"
    );

    // Ten uncounted retries, then `retries: 5` counted ones: 16 attempts, all exit 75.
    assert_eq!(outcome(&ws, "code75"), ("Failed".into(), "ExitCode".into(), 16));
    let capped = ws.status("code75").unwrap();
    for (i, attempt) in attempts(&capped).iter().enumerate() {
        assert_eq!(attempt["exitCode"], 75);
        assert_eq!(attempt["exitRule"]["action"], "RetryUncounted");
        assert_eq!(
            attempt["exitRule"]["capReached"].as_bool().unwrap_or(false),
            i >= 10,
            "{attempt}"
        );
    }

    assert_eq!(outcome(&ws, "code3"), ("Succeeded".into(), "Completed".into(), 1));
    let succeeded = ws.status("code3").unwrap();
    assert_eq!(succeeded["attempts"][0]["exitCode"], 3);
    assert_eq!(succeeded["attempts"][0]["reason"], "Completed");

    // Every attempt was a real process run: the ledger has one line per attempt.
    let ran = ws.ledger_lines();
    assert_eq!(ran.iter().filter(|l| l.starts_with("code42 ")).count(), 1);
    assert_eq!(ran.iter().filter(|l| l.starts_with("code75 ")).count(), 16);
    assert_eq!(ran.iter().filter(|l| l.starts_with("code3 ")).count(), 1);
}

#[test]
fn six_indexes_with_max_failed_indexes_1_on_real_processes() {
    let ws = Workspace::new();
    let fan = "  completions: 6\n  parallelism: 3\n  retries: 1\n  backoff: 100ms\n  maxFailedIndexes: 1\n";
    // Index 4 always fails; the others take a while, so they run while it fails.
    ws.task(
        "one-fails.yaml",
        "if [ \"$SKIFF_INDEX\" = 4 ]; then exit 1; fi; sleep 0.5",
        fan,
    );
    ws.task(
        "two-fail.yaml",
        "case \"$SKIFF_INDEX\" in 1|2) exit 1;; esac; sleep 0.5",
        fan,
    );
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(1), "two-fail Failed: {}", ws.controller_log());

    let one = ws.status("one-fails").unwrap();
    assert_eq!(one["phase"], "Succeeded", "{one:#}");
    assert_eq!(one["reason"], "SucceededWithFailedIndexes");
    let lanes = one["indexes"].as_array().unwrap();
    for lane in lanes {
        let expected = if lane["index"] == 4 { "Failed" } else { "Succeeded" };
        assert_eq!(lane["phase"], expected, "{lane}");
    }
    assert_eq!(lanes[4]["attempt"], 2, "index 4 used its retry");
    assert_eq!(one["result"].as_array().unwrap().len(), 6);
    assert!(one["result"][4].is_null());

    let two = ws.status("two-fail").unwrap();
    assert_eq!(two["phase"], "Failed", "{two:#}");
    assert_eq!(two["reason"], "ExitCode");
    let failed = two["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["phase"] == "Failed")
        .count();
    assert_eq!(failed, 2);
    // No process of either task is left.
    assert_eq!(ws.live_process_containers(), 0);
}

#[test]
fn a_finished_dependency_runs_the_dependent_after_a_failure_with_its_phase() {
    let ws = Workspace::new();
    let ledger = ws.ledger().display().to_string();
    ws.task("extract.yaml", "exit 9", "");
    ws.task("load.yaml", "true", "");
    ws.task(
        "report.yaml",
        &format!("echo \"$SKIFF_DEPENDENCY_RESULTS\" >> {ledger}"),
        "  dependsOn: [{task: extract, condition: finished}, {task: load, condition: finished}]\n",
    );
    ws.task("strict.yaml", "true", "  dependsOn: [extract]\n");
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    assert_eq!(ws.phase("extract").as_deref(), Some("Failed"));
    assert_eq!(ws.phase("report").as_deref(), Some("Succeeded"));
    let strict = ws.status("strict").unwrap();
    assert_eq!(
        (strict["phase"].as_str(), strict["reason"].as_str()),
        (Some("Failed"), Some("DependencyFailed"))
    );
    assert_eq!(
        ws.ledger_lines(),
        [
            r#"{"extract":{"phase":"Failed","reason":"ExitCode","result":null},"load":{"phase":"Succeeded","result":null}}"#
        ]
    );
}

#[test]
fn exit_code_rules_apply_to_docker_containers_exit_codes() {
    if !docker_or_skip("exit_code_rules_apply_to_docker_containers_exit_codes") {
        return;
    }
    let ws = Workspace::new();
    for code in [42, 3] {
        ws.write(
            &format!("d{code}.yaml"),
            &format!(
                "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: docker\n  image: {DOCKER_IMAGE}\n  command: [sh, -c, 'exit {code}']\n{RULES}"
            ),
        );
    }
    let code = ws.controller(&["--once", "--docker-network", "none"]).wait(LONG);
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    assert_eq!(outcome(&ws, "d42"), ("Failed".into(), "ExitCode".into(), 1));
    assert_eq!(outcome(&ws, "d3"), ("Succeeded".into(), "Completed".into(), 1));
    let failed = ws.status("d42").unwrap();
    assert_eq!(failed["attempts"][0]["exitRule"]["action"], "FailTask");
}

#[test]
fn a_process_killed_by_sigkill_exits_137_and_is_retried_uncounted() {
    let ws = Workspace::new();
    // Killed twice (as an out-of-memory kill would), then it gets through, with `retries: 0`.
    ws.task(
        "oom.yaml",
        &format!(
            "{}; if [ \"$SKIFF_ATTEMPT\" -le 2 ]; then kill -9 $$; fi",
            ws.ledger_line()
        ),
        "  backoff: 100ms\n  onExit: [{exitCodes: [137], action: RetryUncounted}]\n",
    );
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    let status = ws.status("oom").unwrap();
    assert_eq!(status["phase"], "Succeeded", "{status:#}");
    let codes: Vec<i64> = attempts(&status)
        .iter()
        .map(|a| a["exitCode"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(codes, [137, 137, 0]);
    assert_eq!(ws.ledger_lines(), ["oom 1", "oom 2", "oom 3"]);
}
