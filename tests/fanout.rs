//! Fan-out, fan-in and limits end to end: the real binary, real processes, real files.

mod support;

use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{Workspace, processes_mentioning};

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

/// Samples the live tasks (the shells whose script mentions `marker`, told apart by the
/// task named in the script: a shell's fork shows its parent's command line until it
/// execs) until `done`.
fn sample_live(marker: String, done: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let peak = AtomicUsize::new(0);
        while !done.load(Ordering::Relaxed) {
            let live = processes_mentioning(&marker)
                .into_iter()
                .filter(|(_, cmd)| cmd.starts_with("sh -c"))
                .map(|(_, cmd)| cmd)
                .collect::<std::collections::HashSet<_>>()
                .len();
            peak.fetch_max(live, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
        }
        peak.into_inner()
    })
}

#[test]
fn a_hundred_tasks_under_max_running_4_never_run_more_than_4_and_start_in_order() {
    let ws = Workspace::new();
    let ledger = ws.ledger().display().to_string();
    for i in 0..100 {
        ws.task(
            &format!("t{i:03}.yaml"),
            &format!("echo t{i:03} >> {ledger}; sleep 0.2"),
            "",
        );
    }
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample_live(ledger.clone(), done.clone());
    let code = ws.controller(&["--once", "--max-running", "4"]).wait(LONG);
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    assert!(peak <= 4, "saw {peak} live tasks");
    assert!(peak >= 3, "the limit was used: peak {peak}");
    let started = ws.ledger_lines();
    assert_eq!(started.len(), 100);
    for (position, task) in started.iter().enumerate() {
        let appeared: usize = task[1..].parse().unwrap();
        assert!(
            appeared.abs_diff(position) <= 4,
            "{task} started {position}th, but its manifest was {appeared}th: {started:?}"
        );
    }
}

/// A fan-out whose index `failing` fails its first `fails` attempts.
fn fan_out_task(ws: &Workspace, failing: u32, fails: u32, sleep: f64) {
    let ledger = ws.ledger().display().to_string();
    let script = format!(
        "echo start >> {ledger}; echo \"index $SKIFF_INDEX $SKIFF_ATTEMPT\" >> {ledger}.runs; sleep {sleep}; \
         if [ \"$SKIFF_INDEX\" = {failing} ] && [ \"$SKIFF_ATTEMPT\" -le {fails} ]; then echo end >> {ledger}; exit 1; fi; \
         echo end >> {ledger}"
    );
    ws.task(
        "fan.yaml",
        &script,
        "  completions: 10\n  parallelism: 3\n  retries: 1\n  backoff: 200ms\n",
    );
}

fn runs(ws: &Workspace) -> Vec<String> {
    std::fs::read_to_string(format!("{}.runs", ws.ledger().display()))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn ten_completions_three_at_a_time_retry_a_failed_index_alone_and_succeed() {
    let ws = Workspace::new();
    fan_out_task(&ws, 7, 1, 0.3);
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    assert!(
        ws.most_at_once() <= 3,
        "at most 3 indexes at once: {:?}",
        ws.ledger_lines()
    );
    assert_eq!(ws.most_at_once(), 3, "parallelism was used");
    let runs = runs(&ws);
    assert_eq!(runs.len(), 11, "{runs:?}");
    assert!(runs.contains(&"index 7 2".to_string()));
    let status = ws.status("fan").unwrap();
    assert_eq!(status["phase"], "Succeeded");
    let seven = &status["indexes"][7];
    assert_eq!(
        (seven["phase"].as_str(), seven["attempt"].as_u64()),
        (Some("Succeeded"), Some(2))
    );
    let attempts_of_7 = status["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["index"] == 7)
        .count();
    assert_eq!(attempts_of_7, 2);
    assert_eq!(status["attempts"].as_array().unwrap().len(), 11);
}

#[test]
fn an_index_out_of_retries_fails_the_task_and_leaves_no_index_running() {
    let ws = Workspace::new();
    // The others run long, so that they are live when index 1 fails for good.
    fan_out_task(&ws, 1, 99, 1.5);
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    let status = ws.status("fan").unwrap();
    assert_eq!(status["phase"], "Failed", "{status:#}");
    assert!(
        status["message"].as_str().unwrap().starts_with("index 1 failed"),
        "{status:#}"
    );
    assert_eq!(status["indexes"][1]["attempt"], 2);
    let ledger = ws.ledger().display().to_string();
    assert!(processes_mentioning(&ledger).is_empty(), "no index left running");
    let live = ws.live_process_containers();
    assert_eq!(live, 0, "every index's container is deleted");
    // Some indexes were stopped mid-run or never started; none is left claiming to run.
    for lane in status["indexes"].as_array().unwrap() {
        assert!(
            ["Succeeded", "Failed", "Pending"].contains(&lane["phase"].as_str().unwrap()),
            "{lane}"
        );
    }
}

#[test]
fn cycles_and_unknown_dependencies_are_invalid_and_a_failed_dependency_fails_its_dependents() {
    let ws = Workspace::new();
    ws.task("a.yaml", "true", "  dependsOn: [b]\n");
    ws.task("b.yaml", "true", "  dependsOn: [c]\n");
    ws.task("c.yaml", "true", "  dependsOn: [a]\n");
    ws.task("me.yaml", "true", "  dependsOn: [me]\n");
    ws.task("orphan.yaml", "true", "  dependsOn: [nowhere/task]\n");
    ws.task("outside.yaml", "true", "  dependsOn: [a]\n");
    ws.task("broken.yaml", "exit 3", "");
    ws.task("after-broken.yaml", "true", "  dependsOn: [broken]\n");
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    for task in ["a", "b", "c"] {
        let status = ws.status(task).unwrap();
        assert_eq!(status["phase"], "Invalid", "{task}: {status:#}");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains(&format!("{task}.yaml: spec.dependsOn")), "{message}");
        let cycle = ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"];
        assert!(cycle.iter().any(|c| message.contains(c)), "{task}: {message}");
    }
    let me = ws.status("me").unwrap();
    assert_eq!(me["phase"], "Invalid");
    assert!(me["message"].as_str().unwrap().contains("depends on itself"), "{me:#}");
    let orphan = ws.status("orphan").unwrap();
    assert_eq!(orphan["phase"], "Invalid");
    assert!(
        orphan["message"]
            .as_str()
            .unwrap()
            .contains("there is no task nowhere/task"),
        "{orphan:#}"
    );
    let outside = ws.status("outside").unwrap();
    assert_eq!(
        (outside["phase"].as_str(), outside["reason"].as_str()),
        (Some("Failed"), Some("DependencyFailed"))
    );
    let after = ws.status("after-broken").unwrap();
    assert_eq!(
        (after["phase"].as_str(), after["reason"].as_str()),
        (Some("Failed"), Some("DependencyFailed"))
    );
    assert!(
        after["message"].as_str().unwrap().contains("dependency broken failed"),
        "{after:#}"
    );
    assert_eq!(after["attempts"].as_array().map_or(0, Vec::len), 0, "it never ran");
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
