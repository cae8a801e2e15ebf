//! The operator's commands on the built binary: rerun, terminate, report, completion,
//! man (issue 18, item 3 and 5).

mod support;

use std::process::Command;
use std::time::Duration;
use support::{SKIFF, Workspace};

fn dir(ws: &Workspace) -> String {
    ws.root().to_str().expect("utf-8 path").to_string()
}

#[test]
fn completion_scripts_parse_and_an_unknown_shell_is_a_usage_error() {
    let ws = Workspace::new();
    let out = ws.skiff(&["completion", "bash"]);
    assert!(out.status.success());
    let script = ws.root().join("skiff.bash");
    std::fs::write(&script, &out.stdout).expect("write");
    let checked = Command::new("bash").arg("-n").arg(&script).status().expect("bash");
    assert!(checked.success(), "bash -n rejects the completion script");
    assert!(String::from_utf8_lossy(&out.stdout).contains("rerun"));
    for shell in ["zsh", "fish", "powershell"] {
        let out = ws.skiff(&["completion", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let out = ws.skiff(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
    let man = ws.skiff(&["man"]);
    assert!(man.status.success());
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH skiff 1"));
}

#[test]
fn rerun_runs_a_finished_task_again_and_refuses_running_or_unknown_ones() {
    let ws = Workspace::new();
    ws.task("once.yaml", &ws.ledger_line(), "");
    assert_eq!(ws.controller(&["--once"]).wait(Duration::from_secs(60)), Some(0));
    assert_eq!(ws.ledger_lines(), ["once 1"]);

    let out = ws.skiff(&["rerun", "once", "--dir", &dir(&ws)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("will run again (it was Succeeded)"));
    assert_eq!(ws.controller(&["--once"]).wait(Duration::from_secs(60)), Some(0));
    assert_eq!(ws.ledger_lines(), ["once 1", "once 1"], "ran again, from attempt 1");

    let out = ws.skiff(&["rerun", "nosuch", "--dir", &dir(&ws)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task nosuch"));

    ws.task("long.yaml", "sleep 30", "");
    let _controller = ws.controller(&[]);
    ws.wait_phase("long", "Running", Duration::from_secs(30));
    let out = ws.skiff(&["rerun", "long", "--dir", &dir(&ws)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("skiff terminate long"));
    assert_eq!(ws.phase("long").as_deref(), Some("Running"), "left alone");
}

#[test]
fn terminate_finds_the_controller_through_its_state_folder() {
    let ws = Workspace::new();
    let out = ws.skiff(&["terminate", "x", "--dir", &dir(&ws)]);
    assert_eq!(out.status.code(), Some(2), "no controller");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is one running"));

    ws.task("long.yaml", "sleep 60", "");
    let controller = ws.controller(&[]);
    ws.wait_phase("long", "Running", Duration::from_secs(30));
    let out = ws.skiff(&["terminate", "long", "--dir", &dir(&ws)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ws.wait_phase("long", "Failed", Duration::from_secs(30));
    let status = ws.status("long").expect("status");
    assert_eq!(status["attempts"][0]["completedBy"], "terminate", "{status}");

    let out = ws.skiff(&["terminate", "nosuch", "--dir", &dir(&ws)]);
    assert_eq!(out.status.code(), Some(2));
    drop(controller);
    let out = ws.skiff(&["terminate", "long", "--dir", &dir(&ws)]);
    assert_eq!(out.status.code(), Some(2), "the controller is gone");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no controller answers"));
}

/// Event-mode tasks that call back with `skiff report` all succeed while the controller
/// is SIGKILLed and restarted again and again (it takes its port again), and no attempt
/// runs twice.
#[test]
fn report_rides_out_controller_restarts() {
    let ws = Workspace::new();
    for i in 0..8 {
        ws.task(
            &format!("ev{i}.yaml"),
            &format!(
                "{}; sleep {}; \"$SKIFF_BIN\" report --result '{{\"n\": {i}}}'",
                ws.ledger_line(),
                1 + i % 3
            ),
            "  completion: {mode: event, pollInterval: 1s}\n",
        );
    }
    for _ in 0..4 {
        let controller = ws.controller(&[]);
        std::thread::sleep(Duration::from_millis(900));
        controller.kill9();
        std::thread::sleep(Duration::from_millis(700));
    }
    let code = ws.controller(&["--once"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    for i in 0..8 {
        let status = ws.status(&format!("ev{i}")).expect("status");
        assert_eq!(status["phase"], "Succeeded", "{status}");
        assert_eq!(status["result"]["n"], i, "{status}");
    }
    let mut lines = ws.ledger_lines();
    let all = lines.len();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), all, "an attempt ran twice: {:?}", ws.ledger_lines());
}

#[test]
fn report_outside_a_task_is_a_usage_error() {
    let out = Command::new(SKIFF)
        .args(["report"])
        .env_remove("SKIFF_CALLBACK_URL")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SKIFF_CALLBACK_URL"));
}

/// `rerun --failed` on a finished fan-out runs only the indexes that did not succeed;
/// the others keep their results and do not run again.
#[test]
fn rerun_failed_runs_only_a_fanouts_failed_indexes() {
    let ws = Workspace::new();
    let marker = ws.root().join("marker");
    ws.task(
        "fan.yaml",
        &format!(
            "{}; if [ \"$SKIFF_INDEX\" = 2 ] && [ ! -e {m} ]; then touch {m}; exit 1; fi; echo ok-$SKIFF_INDEX",
            ws.ledger_line().replace("$SKIFF_ATTEMPT", "$SKIFF_INDEX"),
            m = marker.display()
        ),
        "  completions: 4\n  parallelism: 1\n",
    );
    assert_eq!(ws.controller(&["--once"]).wait(Duration::from_secs(60)), Some(1));
    let first = ws.status("fan").expect("status");
    assert_eq!(first["phase"], "Failed", "{first}");
    let first_runs = ws.ledger_lines();
    assert!(first_runs.contains(&"fan 2".to_string()), "{first_runs:?}");

    let out = ws.skiff(&["rerun", "fan", "--failed", "--dir", &dir(&ws)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        ws.controller(&["--once"]).wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        ws.controller_log()
    );
    let status = ws.status("fan").expect("status");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    let again: Vec<String> = ws.ledger_lines()[first_runs.len()..].to_vec();
    for line in &again {
        let index: u64 = line.trim_start_matches("fan ").parse().expect("an index");
        let succeeded_before = first["indexes"]
            .as_array()
            .expect("indexes")
            .iter()
            .any(|l| l["index"] == index && l["phase"] == "Succeeded");
        assert!(
            !succeeded_before,
            "index {index} had succeeded and ran again: {again:?}"
        );
    }
    assert!(again.contains(&"fan 2".to_string()), "{again:?}");

    let out = ws.skiff(&["rerun", "fan", "--failed", "--dir", &dir(&ws)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do"));
}
