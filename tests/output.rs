//! What is kept of a container's output (issue 10, item 8): at most --max-log-size, head
//! and tail, and nothing of an earlier run once the task is run again.

mod support;

use std::time::Duration;
use support::Workspace;

fn logs_in_state(ws: &Workspace) -> Vec<(String, u64)> {
    let mut logs: Vec<(String, u64)> = std::fs::read_dir(ws.root().join(".skiff/logs"))
        .expect("the logs folder")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    logs.sort();
    logs
}

#[test]
fn a_chatty_task_keeps_only_head_and_tail_within_the_cap() {
    let ws = Workspace::new();
    // About 24 MB of numbered lines, then a last line.
    ws.task(
        "chatty.yaml",
        "i=0; yes 0123456789012345678901234567890123456789 | head -n 600000; echo THE-END",
        "",
    );
    let code = ws
        .controller(&["--once", "--max-log-size", "64KiB"])
        .wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    let logs = logs_in_state(&ws);
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].1 <= 64 * 1024, "kept {} bytes: {logs:?}", logs[0].1);
    let out = ws.skiff(&["logs", "chatty", "--dir", ws.root().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("0123456789"), "the head is kept");
    assert!(text.trim_end().ends_with("THE-END"), "the tail is kept");
    assert!(text.contains("bytes of output cut here"), "the cut is said");
    let status = ws.status("chatty").expect("status");
    assert!(
        status["logTail"].as_str().unwrap_or_default().contains("THE-END"),
        "{status}"
    );
}

#[test]
fn a_rerun_removes_the_earlier_runs_logs() {
    let ws = Workspace::new();
    let count = ws.root().join("count");
    ws.task(
        "again.yaml",
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo run-$n; [ $n -ge 2 ]",
            c = count.display()
        ),
        "  retries: 1\n  backoff: 1s\n",
    );
    let dir = ws.root().to_str().unwrap().to_string();
    assert_eq!(ws.controller(&["--once"]).wait(Duration::from_secs(60)), Some(0));
    assert_eq!(logs_in_state(&ws).len(), 2, "attempts 1 and 2 kept their output");
    std::fs::remove_file(ws.status_path("again")).expect("delete the status");
    assert_eq!(ws.controller(&["--once"]).wait(Duration::from_secs(60)), Some(0));
    let status = ws.status("again").expect("status");
    assert_eq!(status["attempt"], 1, "{status}");
    let logs = logs_in_state(&ws);
    assert_eq!(logs.len(), 1, "only the new run's attempt 1 is kept: {logs:?}");
    let out = ws.skiff(&["logs", "again", "--dir", &dir]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "run-3");
}

/// The docker runtime copies a container's output before removing it: within the cap too.
#[test]
fn a_chatty_docker_container_keeps_only_head_and_tail_within_the_cap() {
    if !support::docker_or_skip("a_chatty_docker_container_keeps_only_head_and_tail_within_the_cap") {
        return;
    }
    let ws = Workspace::new();
    ws.write(
        "chatty.yaml",
        &format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: docker\n  image: {}\n  command: [sh, -c, 'yes 0123456789012345678901234567890123456789 | head -n 100000; echo THE-END']\n",
            support::DOCKER_IMAGE
        ),
    );
    let code = ws
        .controller(&["--once", "--max-log-size", "32KiB", "--docker-network", "none"])
        .wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    let logs = logs_in_state(&ws);
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].1 <= 32 * 1024, "kept {} bytes: {logs:?}", logs[0].1);
    let kept = std::fs::read_to_string(ws.root().join(".skiff/logs").join(&logs[0].0)).expect("log");
    assert!(kept.starts_with("0123456789"));
    assert!(kept.contains("bytes of output cut here"));
    assert!(kept.trim_end().ends_with("THE-END"));
}
