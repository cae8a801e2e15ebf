//! Named semaphores end to end on the process runtime and a folder: a real controller
//! with `--semaphore gpu=2` never runs more than two tasks naming gpu at once.

mod support;

use std::time::Duration;
use support::Workspace;

const LONG: Duration = Duration::from_secs(90);

#[test]
fn twelve_tasks_naming_gpu_under_gpu_2_run_at_most_2_at_once_and_all_finish() {
    let ws = Workspace::new();
    for i in 0..12 {
        ws.task(
            &format!("g{i:02}.yaml"),
            &ws.overlap_script(0.4),
            "  semaphores: [gpu]\n",
        );
    }
    let code = ws.controller(&["--once", "--semaphore", "gpu=2"]).wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    for i in 0..12 {
        assert_eq!(ws.phase(&format!("g{i:02}")).as_deref(), Some("Succeeded"));
    }
    assert_eq!(ws.most_at_once(), 2, "{:?}", ws.ledger_lines());
}

#[test]
fn a_task_naming_an_undefined_semaphore_is_invalid_and_bad_flags_are_usage_errors() {
    let ws = Workspace::new();
    ws.task("needs.yaml", "true", "  semaphores: [gpu]\n");
    assert_eq!(ws.controller(&["--once", "--semaphore", "db=1"]).wait(LONG), Some(1));
    let status = ws.status("needs").unwrap();
    assert_eq!(status["phase"], "Invalid");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.semaphores[0]") && message.contains("--semaphore gpu=N"),
        "{message}"
    );
    for bad in ["gpu", "gpu=0", "gpu=x", "=2", "g/u=1"] {
        let out = ws.skiff(&[
            "controller",
            "--dir",
            ws.root().to_str().unwrap(),
            "--once",
            "--semaphore",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--semaphore"), "{out:?}");
    }
}

#[test]
fn semaphores_can_be_set_in_the_config_file() {
    let ws = Workspace::new();
    for i in 0..3 {
        ws.task(
            &format!("c{i}.yaml"),
            &ws.overlap_script(0.3),
            "  semaphores: [db-writer]\n",
        );
    }
    let config = ws.root().join(".config.yaml");
    std::fs::write(&config, "semaphore: [db-writer=1, gpu=4]\n").unwrap();
    let code = ws
        .controller(&["--once", "--config", config.to_str().unwrap()])
        .wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    assert_eq!(ws.most_at_once(), 1, "{:?}", ws.ledger_lines());
}
