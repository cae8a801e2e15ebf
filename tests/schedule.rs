//! Schedules end to end on the process runtime (issue 13): `@every 2s` with Forbid and a
//! 3 s command never overlaps and runs each scheduled time at most once; `skiff trigger`
//! starts a run (reason ManualTrigger) through a running controller; `--once` exits.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;
use support::Workspace;

fn dir(ws: &Workspace) -> String {
    ws.root().to_str().expect("utf-8 path").to_string()
}

#[test]
fn forbid_never_overlaps_each_time_runs_once_trigger_starts_a_run_and_once_exits() {
    let ws = Workspace::new();
    let ledger = ws.ledger().display().to_string();
    // Each run writes "start <time>" and "end <time>" around a 3 s sleep.
    let script = format!(
        "echo \"start $SKIFF_TASK $SKIFF_SCHEDULED_AT\" >> {ledger}; sleep 3; echo \"end $SKIFF_TASK $SKIFF_SCHEDULED_AT\" >> {ledger}"
    );
    ws.task(
        "tick.yaml",
        &script,
        "  schedule: {cron: '@every 2s', concurrencyPolicy: Forbid}\n",
    );
    // Far away: it runs only when triggered.
    ws.task(
        "yearly.yaml",
        &format!("echo \"trigger $SKIFF_SCHEDULED_AT\" >> {ledger}"),
        "  schedule: {cron: '0 0 1 1 *'}\n",
    );
    let controller = ws.controller(&[]);
    ws.wait_phase("yearly", "Scheduled", Duration::from_secs(20));
    let out = ws.skiff(&["trigger", "yearly", "--dir", &dir(&ws)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ws.wait_until(Duration::from_secs(20), "the triggered run to succeed", || {
        ws.status("yearly").is_some_and(|s| {
            s["runs"].as_array().is_some_and(|runs| {
                runs.iter()
                    .any(|r| r["reason"] == "ManualTrigger" && r["phase"] == "Succeeded")
            })
        })
    });
    // Two whole runs of tick at least.
    ws.wait_until(Duration::from_secs(20), "two runs of tick to end", || {
        ws.ledger_lines().iter().filter(|l| l.starts_with("end tick")).count() >= 2
    });
    assert_eq!(controller.terminate(), Some(0));

    // `--once` ends once no run is active (a run left by the SIGTERM finishes first).
    let once = ws.controller(&["--once"]);
    assert_eq!(once.wait(Duration::from_secs(20)), Some(0));

    let lines = ws.ledger_lines();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("trigger ")).count(),
        1,
        "{lines:?}"
    );
    let mut running = 0;
    let mut started = BTreeSet::new();
    for line in lines.iter().filter(|l| l.contains(" tick ")) {
        let (what, at) = line.split_once(" tick ").expect("a tick line");
        if what == "start" {
            running += 1;
            assert!(running <= 1, "runs overlap: {lines:?}");
            assert!(!at.is_empty(), "SKIFF_SCHEDULED_AT is set: {lines:?}");
            assert!(started.insert(at.to_string()), "{at} ran twice: {lines:?}");
        } else {
            running -= 1;
        }
    }
    let status = ws.status("tick").expect("a status");
    assert!(
        status["runs"]
            .as_array()
            .is_some_and(|runs| runs.iter().any(|r| r["reason"] == "MissedSchedule")),
        "times while a run was active are recorded as missed under Forbid: {status}"
    );
}
