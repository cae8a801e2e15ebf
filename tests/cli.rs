//! The command line (DESIGN.md §9): get, describe, logs, validate, wait, exit codes,
//! environment variables and the config file.

mod support;

use std::time::Duration;
use support::Workspace;

const LONG: Duration = Duration::from_secs(60);

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn finished_workspace() -> Workspace {
    let ws = Workspace::new();
    ws.task("jobs/ok.yaml", "echo hello from ok", "");
    ws.task("bad.yaml", "echo oops; exit 2", "");
    assert_eq!(ws.controller(&["--once"]).wait(LONG), Some(1));
    ws
}

#[test]
fn get_prints_a_table_json_and_yaml() {
    let ws = finished_workspace();
    let dir = ws.root().display().to_string();
    let table = ws.skiff(&["get", "--dir", &dir]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(table.lines().next().unwrap().starts_with("TASK"), "{table}");
    assert!(table.contains("jobs/ok") && table.contains("Succeeded"), "{table}");
    assert!(
        table.contains("bad") && table.contains("Failed") && table.contains("ExitCode"),
        "{table}"
    );

    let json = ws.skiff(&["get", "--dir", &dir, "-o", "json"]);
    let statuses: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).expect("a JSON array");
    assert_eq!(statuses.len(), 2);
    assert!(statuses.iter().all(|s| s["kind"] == "ContainerTaskStatus"));

    let yaml = ws.skiff(&["get", "jobs/ok", "--dir", &dir, "-o", "yaml"]);
    let parsed: Vec<serde_json::Value> = yaml_serde::from_slice(&yaml.stdout).expect("YAML");
    assert_eq!(parsed[0]["phase"], "Succeeded");

    let missing = ws.skiff(&["get", "nope", "--dir", &dir]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("no task nope"), "{}", text(&missing));
}

#[test]
fn describe_and_logs_show_the_attempts_and_the_output() {
    let ws = finished_workspace();
    let dir = ws.root().display().to_string();
    let described = text(&ws.skiff(&["describe", "bad", "--dir", &dir]));
    for needle in [
        "Phase:        Failed",
        "Reason:       ExitCode",
        "#1 process skiff-bad-",
        "exit 2",
        "oops",
    ] {
        assert!(described.contains(needle), "{needle} missing from\n{described}");
    }
    let logs = ws.skiff(&["logs", "jobs/ok", "--dir", &dir]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "hello from ok\n");
    // A manifest's path works as well as the task's name.
    let logs = ws.skiff(&["logs", "jobs/ok.yaml", "--dir", &dir, "--follow"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "hello from ok\n");
}

#[test]
fn logs_follow_streams_until_the_task_ends() {
    let ws = Workspace::new();
    ws.task("slow.yaml", "for i in 1 2 3; do echo line $i; sleep 0.3; done", "");
    let _controller = ws.controller(&[]);
    ws.wait_phase("slow", "Running", LONG);
    let dir = ws.root().display().to_string();
    let logs = ws.skiff(&["logs", "slow", "--dir", &dir, "--follow"]);
    assert!(logs.status.success());
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "line 1\nline 2\nline 3\n");
}

#[test]
fn wait_exits_0_on_success_1_on_failure_and_1_on_timeout() {
    let ws = Workspace::new();
    ws.task("quick.yaml", "true", "");
    ws.task("fails.yaml", "exit 1", "");
    ws.task("long.yaml", "sleep 300", "");
    let _controller = ws.controller(&[]);
    let dir = ws.root().display().to_string();
    let ok = ws.skiff(&["wait", "quick", "--dir", &dir, "--for", "succeeded", "--timeout", "30s"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let failed = ws.skiff(&["wait", "fails", "--dir", &dir, "--for", "succeeded", "--timeout", "30s"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(text(&failed).contains("fails is Failed"), "{}", text(&failed));
    let terminal = ws.skiff(&[
        "wait",
        "fails",
        "quick",
        "--dir",
        &dir,
        "--for",
        "terminal",
        "--timeout",
        "30s",
    ]);
    assert_eq!(terminal.status.code(), Some(0));
    let timeout = ws.skiff(&["wait", "long", "--dir", &dir, "--timeout", "1s"]);
    assert_eq!(timeout.status.code(), Some(1));
    assert!(text(&timeout).contains("timed out"), "{}", text(&timeout));
}

#[test]
fn validate_prints_every_error_and_exits_1() {
    let ws = Workspace::new();
    ws.write(
        "bad.yaml",
        "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  timeout: ten minutes\n  backoff: soon\n",
    );
    ws.task("good.yaml", "true", "");
    let bad = ws.root().join("bad.yaml").display().to_string();
    let good = ws.root().join("good.yaml").display().to_string();
    let out = ws.skiff(&["validate", &bad, &good]);
    assert_eq!(out.status.code(), Some(1));
    let out = text(&out);
    assert!(
        out.contains("spec.timeout: \"ten minutes\" is not a duration; write e.g. 10m or 1h30m"),
        "{out}"
    );
    assert!(out.contains("spec.backoff"), "{out}");
    assert!(out.contains("spec.command"), "{out}");
    assert!(out.contains("good.yaml: ok"), "{out}");
    assert_eq!(ws.skiff(&["validate", &good]).status.code(), Some(0));
}

#[test]
fn usage_errors_exit_2_and_name_the_fix() {
    let ws = Workspace::new();
    let missing = ws.skiff(&["controller", "--dir", "/nonexistent/skiff", "--once"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing).contains("--dir /nonexistent/skiff"),
        "{}",
        text(&missing)
    );
    let dir = ws.root().display().to_string();
    let zero = ws.skiff(&["controller", "--dir", &dir, "--max-running", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    let typo = ws.skiff(&["controller", "--dir", &dir, "--max-runing", "3"]);
    assert_eq!(typo.status.code(), Some(2));
    let bad_duration = ws.skiff(&["controller", "--dir", &dir, "--resync", "often"]);
    assert_eq!(bad_duration.status.code(), Some(2));
    assert!(text(&bad_duration).contains("write e.g."), "{}", text(&bad_duration));
}

#[test]
fn flags_beat_the_environment_which_beats_the_config_file() {
    let ws = Workspace::new();
    for i in 0..6 {
        ws.task(&format!("t{i}.yaml"), &ws.overlap_script(0.3), "");
    }
    let config = ws.root().join(".skiff.yaml");
    std::fs::write(&config, "max-running: 1\nonce: true\n").unwrap();
    let dir = ws.root().display().to_string();
    // The most tasks that ran at once, from the ledger's start and end lines.
    let run = |env: &[(&str, &str)], flags: &[&str]| {
        let _ = std::fs::remove_dir_all(ws.root().join(".skiff"));
        let _ = std::fs::remove_file(ws.ledger());
        for i in 0..6 {
            let _ = std::fs::remove_file(ws.status_path(&format!("t{i}")));
        }
        let mut command = std::process::Command::new(support::SKIFF);
        command
            .args(["controller", "--dir", &dir, "--config", &config.display().to_string()])
            .args(flags);
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        ws.most_at_once()
    };
    // The file alone: one at a time (and `once: true` came from it too).
    assert_eq!(run(&[], &[]), 1);
    // The environment beats the file; a flag beats the environment.
    assert!(run(&[("SKIFF_MAX_RUNNING", "6")], &[]) > 1);
    assert!(run(&[("SKIFF_MAX_RUNNING", "1")], &["--max-running", "6"]) > 1);
    assert_eq!(run(&[("SKIFF_MAX_RUNNING", "1")], &[]), 1);
    std::fs::write(&config, "max-runing: 1\n").unwrap();
    let bad = ws.skiff(&["controller", "--dir", &dir, "--config", &config.display().to_string()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).contains("unknown setting `max-runing`"), "{}", text(&bad));
}

#[test]
fn get_watch_prints_again_when_something_changes() {
    use std::io::BufRead;
    let ws = Workspace::new();
    ws.task("w.yaml", "sleep 0.5", "");
    let dir = ws.root().display().to_string();
    let mut watcher = std::process::Command::new(support::SKIFF)
        .args(["get", "--dir", &dir, "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let _controller = ws.controller(&[]);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + LONG;
    while std::time::Instant::now() < deadline && !seen.iter().any(|l: &String| l.contains("Succeeded")) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    let headers = seen.iter().filter(|l| l.starts_with("TASK")).count();
    assert!(seen.iter().any(|l| l.contains("Succeeded")), "{seen:#?}");
    assert!(headers >= 2, "the table is printed again on change: {seen:#?}");
}

/// Runs `skiff <args>`, failing the test (and killing skiff) if it takes longer than
/// `limit`: a command that hangs must not hang the test suite.
fn skiff_within(limit: Duration, args: &[&str]) -> std::process::Output {
    let child = std::process::Command::new(support::SKIFF)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run skiff");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("skiff's output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("skiff {args:?} did not finish within {limit:?}");
        }
    }
}

#[test]
fn get_lists_every_task_and_shows_each_unreadable_status_with_its_problem() {
    let ws = finished_workspace();
    let root = ws.root();
    for task in ["garbage", "folder", "fifo"] {
        ws.task(&format!("{task}.yaml"), "true", "");
    }
    std::fs::write(root.join("garbage.status.json"), "{not json").unwrap();
    std::fs::create_dir(root.join("folder.status.json")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo.status.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let long = "l".repeat(245);
    ws.task(&format!("{long}.yaml"), "true", "metadata: {name: long}\n");
    let dir = root.display().to_string();

    let out = skiff_within(Duration::from_secs(20), &["get", "--dir", &dir]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let row = |task: &str| {
        table
            .lines()
            .find(|line| line.split_whitespace().next() == Some(task))
            .unwrap_or_else(|| panic!("no row for {task}:\n{table}"))
            .to_string()
    };
    assert!(row("jobs/ok").contains("Succeeded"), "{table}");
    assert!(row("bad").contains("Failed"), "{table}");
    for (task, words) in [
        ("garbage", "garbage.status.json: the status file is not valid JSON"),
        ("folder", "folder.status.json: the status file is a folder"),
        ("fifo", "fifo.status.json: the status file is a named pipe"),
        (long.as_str(), "the status file's name is too long"),
    ] {
        let row = row(task);
        assert!(row.contains("Invalid") && row.contains(words), "{row}");
    }
    assert_eq!(table.lines().count(), 7, "a header and six rows:\n{table}");

    let out = skiff_within(Duration::from_secs(20), &["get", "--dir", &dir, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let statuses: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert_eq!(statuses.len(), 6, "{statuses:?}");
    let garbage = statuses
        .iter()
        .find(|s| s["task"] == "garbage")
        .expect("garbage is listed");
    assert_eq!(garbage["phase"], "Invalid");
    assert!(garbage["message"].as_str().unwrap().contains("delete it"), "{garbage}");

    let out = skiff_within(Duration::from_secs(20), &["describe", "fifo", "--dir", &dir]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Phase:        Invalid") && text(&out).contains("named pipe"),
        "{}",
        text(&out)
    );
}

#[test]
fn get_and_describe_escape_control_characters_from_names_and_messages() {
    let ws = Workspace::new();
    // A file name with ESC (a terminal colour code) and one with a newline; their
    // messages quote the file name.
    ws.task("esc\u{1b}[31m.yaml", "true", "");
    ws.task("new\nline.yaml", "true", "");
    assert_eq!(ws.controller(&["--once"]).wait(LONG), Some(1));
    let dir = ws.root().display().to_string();
    let out = skiff_within(Duration::from_secs(20), &["get", "--dir", &dir]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert!(table.contains("esc\\u{1b}[31m"), "{table}");
    assert!(table.contains("new\\nline"), "{table}");
    assert_eq!(table.lines().count(), 3, "one row per task:\n{table}");
    for row in table.lines().skip(1) {
        assert!(row.contains("Invalid") && row.contains("file name"), "{row}");
    }
    let out = skiff_within(Duration::from_secs(20), &["describe", "esc\u{1b}[31m", "--dir", &dir]);
    let described = text(&out);
    assert!(out.status.success(), "{described}");
    assert!(
        !described.contains('\u{1b}') && described.contains("esc\\u{1b}[31m"),
        "{described:?}"
    );
}

#[test]
fn validate_says_when_a_backoff_is_capped() {
    let ws = Workspace::new();
    ws.task("slow.yaml", "true", "  backoff: 500000000y\n");
    let file = ws.root().join("slow.yaml").display().to_string();
    let out = ws.skiff(&["validate", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = text(&out);
    assert!(out.contains("slow.yaml: ok"), "{out}");
    assert!(
        out.contains("slow.yaml: note: spec.backoff: 500000000y is longer than the longest wait between retries, 5m"),
        "{out}"
    );
}

/// An edited status naming a container `../../secret` must not lead `skiff logs` (or
/// `describe`) to read a file outside the state folder.
#[test]
fn logs_never_follow_a_container_name_out_of_the_state_folder() {
    let ws = Workspace::new();
    ws.task("t.yaml", "echo hello", "");
    let dir = ws.root().to_str().expect("utf-8").to_string();
    assert_eq!(ws.controller(&["--once"]).wait(Duration::from_secs(60)), Some(0));
    // `<dir>/.skiff/logs/../../secret.log` is `<dir>/secret.log`.
    std::fs::write(ws.root().join("secret.log"), "TOP SECRET\n").expect("write");
    let status = std::fs::read_to_string(ws.status_path("t")).expect("status");
    let container = ws.status("t").expect("status")["attempts"][0]["container"]
        .as_str()
        .expect("container")
        .to_string();
    std::fs::write(ws.status_path("t"), status.replace(&container, "../../secret")).expect("edit");
    for command in [vec!["logs", "t", "--dir", &dir], vec!["describe", "t", "--dir", &dir]] {
        let out = ws.skiff(&command);
        let all = format!("{}{}", text(&out), String::from_utf8_lossy(&out.stderr));
        assert!(
            !all.contains("TOP SECRET"),
            "{command:?} read outside the folder: {all}"
        );
    }
}
