//! The controller's stderr is a pipe someone may close: it must neither crash the
//! controller nor make it deaf to SIGTERM (issue 10, item 4). Get's stdout likewise.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{SKIFF, Workspace};

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A controller whose stderr is a pipe that its reader closes after the first line.
fn controller_reading_one_line(ws: &Workspace, flags: &[&str]) -> std::process::Child {
    let mut child = Command::new(SKIFF)
        .arg("controller")
        .args(flags)
        .arg("--dir")
        .arg(ws.root())
        .env("SKIFF_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start skiff");
    let mut first = String::new();
    BufReader::new(child.stderr.take().expect("piped"))
        .read_line(&mut first)
        .expect("one line");
    child
}

/// `skiff controller --dir d --once 2>&1 | head -1`: the reader leaves after one line,
/// and the controller still runs every task and exits 0.
#[test]
fn once_with_stderr_closed_after_one_line_runs_every_task() {
    let ws = Workspace::new();
    for i in 0..5 {
        ws.task(&format!("t{i}.yaml"), &format!("sleep 0.2; {}", ws.ledger_line()), "");
    }
    let mut child = controller_reading_one_line(&ws, &["--once"]);
    // The reader (and the only copy of the pipe's read end) is gone here.
    let status = wait_exit(&mut child, Duration::from_secs(60)).expect("--once exits");
    assert_eq!(status.code(), Some(0), "exit status {status:?} (101 is a panic)");
    for i in 0..5 {
        assert_eq!(ws.phase(&format!("t{i}")).as_deref(), Some("Succeeded"), "t{i}");
    }
    assert_eq!(ws.ledger_lines().len(), 5);
}

/// A long-running controller whose stderr closes later: it keeps running tasks, and
/// SIGTERM still stops it with 0.
#[test]
fn a_controller_whose_stderr_closed_keeps_working_and_stops_on_sigterm() {
    let ws = Workspace::new();
    let mut child = controller_reading_one_line(&ws, &[]);
    // Each task makes log lines, all written into the closed pipe.
    for i in 0..3 {
        ws.task(&format!("late{i}.yaml"), &ws.ledger_line(), "");
    }
    for i in 0..3 {
        ws.wait_phase(&format!("late{i}"), "Succeeded", Duration::from_secs(30));
    }
    assert!(child.try_wait().expect("wait").is_none(), "the controller died");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("SIGTERM stops it");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// `skiff get | head -1` over many tasks ends quietly, like any Unix filter: no panic
/// message about a broken pipe.
#[test]
fn get_into_a_closed_pipe_does_not_panic() {
    let ws = Workspace::new();
    for i in 0..300 {
        ws.task(&format!("g{i:03}.yaml"), "true", "");
    }
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{SKIFF}' get --dir '{}' 2>&1 | head -c 1 >/dev/null; sleep 0.2; exit 0",
            ws.root().display()
        ))
        .output()
        .expect("run sh");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("panicked"), "{text}");
    let mut child = Command::new(SKIFF)
        .args(["get", "--dir"])
        .arg(ws.root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start get");
    drop(child.stdout.take());
    let status = wait_exit(&mut child, Duration::from_secs(20)).expect("get exits");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr).expect("stderr");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(status.code(), Some(101), "{status:?}: {stderr}");
}

/// `--log-format json`: every line is one JSON object, and transitions carry the task,
/// attempt, phase and reason as fields, for log shippers.
#[test]
fn json_log_lines_parse_and_carry_the_task_fields() {
    let ws = Workspace::new();
    ws.task("ok.yaml", "true", "");
    ws.task("bad.yaml", "exit 3", "");
    let output = Command::new(SKIFF)
        .args(["controller", "--once", "--log-format", "json", "--dir"])
        .arg(ws.root())
        .env("SKIFF_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .expect("run skiff");
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}")))
        .collect();
    assert!(lines.len() > 4, "{text}");
    let failed = lines
        .iter()
        .find(|l| l["task"] == "bad" && l["phase"] == "Failed")
        .unwrap_or_else(|| panic!("no Failed line for bad: {text}"));
    assert_eq!(failed["attempt"], 1);
    assert_eq!(failed["reason"], "ExitCode");
    assert_eq!(failed["level"], "WARN");
    assert!(failed["message"].as_str().is_some_and(|m| m.contains("Failed")));
    assert!(lines.iter().any(|l| l["task"] == "ok" && l["phase"] == "Succeeded"));
}

/// `--once` on a terminal draws a live progress line and ends with a summary; into a
/// pipe or a file it never does.
#[test]
fn once_shows_progress_on_a_terminal_only() {
    let ws = Workspace::new();
    ws.task("a.yaml", "sleep 0.5", "");
    ws.task("b.yaml", "exit 2", "");
    let plain = Command::new(SKIFF)
        .args(["controller", "--once", "--dir"])
        .arg(ws.root())
        .output()
        .expect("run skiff");
    assert_eq!(plain.status.code(), Some(1));
    let text = String::from_utf8_lossy(&plain.stderr);
    assert!(!text.contains("tasks done") && !text.contains('\r'), "{text}");

    std::fs::remove_file(ws.status_path("a")).expect("rerun a");
    std::fs::remove_file(ws.status_path("b")).expect("rerun b");
    // `script` gives the controller a pseudo-terminal and copies what it drew.
    let typescript = ws.root().join(".typescript");
    let shown = Command::new("script")
        .arg("-qec")
        .arg(format!(
            "'{SKIFF}' controller --once --log warn --dir '{}'",
            ws.root().display()
        ))
        .arg(&typescript)
        .stdout(Stdio::null())
        .status()
        .expect("script (util-linux)");
    assert_eq!(shown.code(), Some(1));
    let drawn = String::from_utf8_lossy(&std::fs::read(&typescript).expect("typescript")).into_owned();
    assert!(drawn.contains("2 of 2 tasks done: 1 succeeded, 1 failed"), "{drawn}");
    assert!(drawn.contains("/2 done"), "a live line was drawn: {drawn}");
}
