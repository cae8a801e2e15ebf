//! Fan-out, fan-in and limits end to end: the real binary, real processes, real files.
//! The pipeline's own logic (limits and their order, a fan-out's lanes and retries,
//! dependency cycles) is checked on the simulator: `src/sim/scenarios.rs`.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::Workspace;

const LONG: Duration = Duration::from_secs(120);

fn results(status: &Value) -> Vec<Value> {
    status["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn the_fan_out_example_merges_all_five_worker_results() {
    let ws = Workspace::new();
    ws.copy_example("fan-out", "busybox");
    // The README's main command: no --listen needed for callbacks from this machine.
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    let workers = ws.status("workers").unwrap();
    assert_eq!(workers["indexes"].as_array().unwrap().len(), 5);
    for (i, lane) in workers["indexes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(lane["phase"], "Succeeded", "{lane}");
        assert_eq!(lane["result"]["index"], i);
    }
    let merge = ws.status("merge").unwrap();
    assert_eq!(merge["phase"], "Succeeded", "{merge:#}");
    assert_eq!(merge["result"]["merged"].as_array().unwrap(), &results(&workers));
    assert_eq!(merge["result"]["workers"], 5);
    assert_eq!(merge["result"]["sumOfSquares"], 30);
    // The merge ran after every worker.
    let last_worker = workers["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["finishedAt"].as_str())
        .max()
        .unwrap()
        .to_string();
    assert!(merge["attempts"][0]["createdAt"].as_str().unwrap() > last_worker.as_str());
}

#[test]
fn a_dependency_that_reruns_reruns_its_dependent_after_it_with_the_new_results() {
    let ws = Workspace::new();
    let ledger = ws.ledger().display().to_string();
    let split = |version: u32| {
        format!(
            "echo split-{version} >> {ledger}; wget -q -O /dev/null --post-data '{{\"result\":{{\"version\":{version}}}}}' \"$SKIFF_CALLBACK_URL\""
        )
    };
    ws.task("split.yaml", &split(1), "  completion: {mode: event}\n");
    ws.task(
        "merge.yaml",
        &format!("echo \"merge $SKIFF_DEPENDENCY_RESULTS\" >> {ledger}"),
        "  dependsOn: [split]\n",
    );
    let controller = ws.controller(&[]);
    ws.wait_phase("merge", "Succeeded", LONG);
    assert_eq!(
        ws.ledger_lines(),
        ["split-1", r#"merge {"split":{"result":{"version":1}}}"#]
    );
    let first = ws.status("merge").unwrap();
    ws.task("split.yaml", &split(2), "  completion: {mode: event}\n");
    ws.wait_until(LONG, "merge to run again", || ws.ledger_lines().len() == 4);
    ws.wait_phase("merge", "Succeeded", LONG);
    assert_eq!(
        ws.ledger_lines()[2..],
        ["split-2", r#"merge {"split":{"result":{"version":2}}}"#]
    );
    let second = ws.status("merge").unwrap();
    assert_eq!(first["specHash"], second["specHash"], "merge's own spec did not change");
    assert_ne!(first["dependencies"]["split"], second["dependencies"]["split"]);
    // Saving the same dependency again re-runs nothing.
    ws.task("split.yaml", &split(2), "  completion: {mode: event}\n");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ws.ledger_lines().len(), 4);
    // Tidying the dependency away leaves the finished dependent as it is.
    std::fs::remove_file(ws.root().join("split.yaml")).unwrap();
    ws.wait_until(LONG, "split's status to go", || ws.status("split").is_none());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ws.phase("merge").as_deref(), Some("Succeeded"));
    assert_eq!(ws.ledger_lines().len(), 4);
    drop(controller);
}

#[test]
fn dependency_results_over_32_kib_fail_the_dependent_with_the_reason_said() {
    let ws = Workspace::new();
    let big = "x".repeat(40 * 1024);
    ws.task(
        "big.yaml",
        &format!("wget -q -O /dev/null --post-data '{{\"result\":\"{big}\"}}' \"$SKIFF_CALLBACK_URL\""),
        "  completion: {mode: event}\n",
    );
    ws.task("small.yaml", "true", "  dependsOn: [big]\n");
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    assert_eq!(ws.phase("big").as_deref(), Some("Succeeded"));
    let small = ws.status("small").unwrap();
    assert_eq!(small["reason"], "DependencyResultsTooLarge", "{small:#}");
    let message = small["message"].as_str().unwrap();
    assert!(
        message.contains("41 KiB") && message.contains("SKIFF_DEPENDENCY_RESULTS"),
        "{message}"
    );
}

#[test]
fn the_create_rate_spreads_creates_and_says_so() {
    let ws = Workspace::new();
    for i in 0..6 {
        ws.task(&format!("r{i}.yaml"), "true", "");
    }
    // A burst of 2, then one create every 500 ms.
    let controller = ws.controller(&["--once", "--create-rate", "process=2/1s"]);
    let mut said = false;
    let started = std::time::Instant::now();
    while started.elapsed() < LONG && !(0..6).all(|i| ws.phase(&format!("r{i}")).as_deref() == Some("Succeeded")) {
        said |= (0..6).any(|i| {
            ws.status(&format!("r{i}"))
                .is_some_and(|s| s["message"].as_str().unwrap_or("").contains("create-rate-process 2/1s"))
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(controller.wait(LONG), Some(0), "{}", ws.controller_log());
    assert!(said, "a task held by the bucket names it");
    let mut created: Vec<chrono::DateTime<chrono::Utc>> = (0..6)
        .map(|i| {
            let status = ws.status(&format!("r{i}")).unwrap();
            status["attempts"][0]["createdAt"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    created.sort();
    let spread = (created[5] - created[0]).to_std().unwrap();
    assert!(
        spread >= Duration::from_millis(1900),
        "6 creates at 2 then 2/s took only {spread:?}"
    );
    // No 1 s window saw more than the burst plus what refills in it.
    for (i, first) in created.iter().enumerate() {
        let within = created[i..]
            .iter()
            .filter(|t| (**t - *first).to_std().unwrap() < Duration::from_secs(1))
            .count();
        assert!(within <= 4, "{within} creates within 1 s of {first}");
    }
}
