//! Heartbeats under `concurrencyPolicy: Allow` end to end on the process runtime: runs
//! overlap, and each run's attempts are watched by their own beats. A run that goes on
//! beating succeeds however many newer runs start beside it; a run that falls silent
//! fails `HeartbeatTimeout` (retried within its own run) while the newer runs beat.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::{Workspace, free_port};

const LONG: Duration = Duration::from_secs(90);

/// Whether the run scheduled at this time (RFC 3339, `@every 2s`: even seconds) is one
/// that beats to the end: those at a multiple of 4 s; the others beat once and hang.
fn beats_to_the_end(scheduled_at: &str) -> bool {
    let seconds: u32 = scheduled_at[17..19].parse().expect("seconds in an RFC 3339 time");
    (seconds / 2) % 2 == 0
}

fn runs(status: &Value) -> Vec<Value> {
    status["runs"].as_array().cloned().unwrap_or_default()
}

fn finished(status: &Value, phase: &str) -> usize {
    runs(status)
        .iter()
        .filter(|r| r["run"].is_u64() && r["phase"] == phase && r["finishedAt"].is_string())
        .count()
}

#[test]
fn overlapping_runs_are_each_watched_by_their_own_heartbeats() {
    let ws = Workspace::new();
    // Every 2 s a run starts and lasts longer than that, so runs overlap. Runs at a
    // multiple of 4 s beat each second for 6 s (with progress) and succeed; the others
    // beat once and hang, so each of their attempts falls silent.
    let script = "beat() { busybox wget -q -O- --post-data \"$1\" \"$SKIFF_HEARTBEAT_URL\" >/dev/null; }; \
        s=$(echo \"$SKIFF_SCHEDULED_AT\" | cut -c18-19); \
        if [ \"$(expr $s / 2 % 2)\" = 0 ]; then \
          for i in 1 2 3 4 5 6; do beat \"{\\\"progress\\\": 0.$i, \\\"message\\\": \\\"beat $i\\\"}\"; sleep 1; done; \
        else beat \"\"; sleep 300; fi";
    ws.task(
        "tick.yaml",
        script,
        "  schedule: {cron: '@every 2s', concurrencyPolicy: Allow}\n  heartbeatTimeout: 3s\n  retries: 1\n  backoff: 1s\n",
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let controller = ws.controller(&["--listen", &listen]);

    let mut overlapping_progress = false;
    ws.wait_until(
        LONG,
        "two beating runs succeeded and two silent ones failed, beside newer runs",
        || {
            let Some(status) = ws.status("tick") else { return false };
            let sched = &status["schedule"];
            let overlapping = sched["overlapping"].as_array().cloned().unwrap_or_default();
            // An older run's progress shows beside the newest run's, in its own entry.
            overlapping_progress |= overlapping.iter().any(|r| r["progress"].is_f64());
            // The top-level progress is the newest run's: none for a run that never reports it.
            let newest = runs(&status)
                .into_iter()
                .find(|r| r["run"] == sched["currentRun"] && r["run"].is_u64());
            if let Some(newest) = newest
                && !beats_to_the_end(newest["scheduledAt"].as_str().unwrap_or("0000-00-00T00:00:00"))
            {
                assert!(status["progress"].is_null(), "an older run's progress on top: {status}");
            }
            finished(&status, "Succeeded") >= 2 && finished(&status, "Failed") >= 2 && overlapping_progress
        },
    );
    let status = ws.status("tick").expect("a status");
    // The manifest deleted: every run still active is stopped (no `sleep 300` outlives
    // the test), overlapping ones first.
    std::fs::remove_file(ws.root().join("tick.yaml")).unwrap();
    ws.wait_until(LONG, "every run's container stopped", || {
        ws.live_process_containers() == 0 && ws.status("tick").is_none()
    });
    assert_eq!(controller.terminate(), Some(0));

    // Each finished run by what its command did: the beating ones succeeded on their first
    // attempt, the silent ones failed HeartbeatTimeout on each of their two attempts.
    let ended: Vec<Value> = runs(&status)
        .into_iter()
        .filter(|r| r["run"].is_u64() && r["finishedAt"].is_string())
        .collect();
    assert!(ended.len() >= 4, "{status}");
    for run in &ended {
        let at = run["scheduledAt"].as_str().expect("a scheduled time");
        if beats_to_the_end(at) {
            assert_eq!(
                (&run["phase"], &run["attempts"]),
                (&Value::from("Succeeded"), &Value::from(1)),
                "{run}"
            );
        } else {
            assert_eq!(
                (&run["phase"], &run["reason"], &run["attempts"]),
                (
                    &Value::from("Failed"),
                    &Value::from("HeartbeatTimeout"),
                    &Value::from(2)
                ),
                "{run}"
            );
            // Its last attempt (a retry, made while newer runs ran) beat once, and that
            // beat was its own: its silence counts from it.
            let message = run["message"].as_str().unwrap_or_default();
            assert!(message.contains("the last arrived at"), "{run}");
        }
    }
}
