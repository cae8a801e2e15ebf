//! Schedules end to end on the process runtime (issue 13): `@every 2s` with Forbid and a
//! 3 s command never overlaps and runs each scheduled time at most once, with Allow its
//! runs overlap, and the status (`phase`, `attempts`) and `skiff logs` show the newest
//! run's; `skiff trigger` starts a run (reason ManualTrigger) through a running
//! controller; `--once` exits; a controller SIGKILLed mid-run and down for 10 s runs no
//! scheduled time twice, one catch-up run under `missedRuns: latest` and none under
//! `skip`, and `runs` names the missed times; `suspend: true` starts nothing.

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
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

/// A script that marks "start <task> <SKIFF_SCHEDULED_AT>" and "end ..." in the ledger
/// around `sleep secs`.
fn marked(ws: &Workspace, secs: u32) -> String {
    let ledger = ws.ledger().display().to_string();
    format!(
        "echo \"start $SKIFF_TASK $SKIFF_SCHEDULED_AT\" >> {ledger}; sleep {secs}; echo \"end $SKIFF_TASK $SKIFF_SCHEDULED_AT\" >> {ledger}"
    )
}

/// The scheduled times each run of `task` started for, in ledger order.
fn started(ws: &Workspace, task: &str) -> Vec<String> {
    ws.ledger_lines()
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("start {task} ")).map(str::to_string))
        .collect()
}

/// The most runs of `task` in the ledger at once.
fn most_at_once(ws: &Workspace, task: &str) -> i32 {
    let (mut now, mut most) = (0, 0);
    for line in ws.ledger_lines() {
        if line.starts_with(&format!("start {task} ")) {
            now += 1;
        } else if line.starts_with(&format!("end {task} ")) {
            now -= 1;
        }
        most = most.max(now);
    }
    most
}

fn assert_each_time_started_once(ws: &Workspace, task: &str) {
    let times = started(ws, task);
    let mut seen = BTreeSet::new();
    for at in &times {
        assert!(!at.is_empty(), "SKIFF_SCHEDULED_AT is set: {times:?}");
        assert!(seen.insert(at), "{task}: {at} ran twice: {:?}", ws.ledger_lines());
    }
}

fn runs(status: &Value) -> Vec<Value> {
    status["runs"].as_array().cloned().unwrap_or_default()
}

#[test]
fn allow_overlaps_runs_each_time_once_and_lists_every_active_run() {
    let ws = Workspace::new();
    ws.task(
        "tick.yaml",
        &marked(&ws, 3),
        "  schedule: {cron: '@every 2s', concurrencyPolicy: Allow}\n",
    );
    let controller = ws.controller(&[]);
    let mut most_active = 0;
    ws.wait_until(Duration::from_secs(30), "two runs of tick at once", || {
        let active = ws
            .status("tick")
            .and_then(|s| s["schedule"]["active"].as_array().map(Vec::len))
            .unwrap_or(0);
        most_active = most_active.max(active);
        most_at_once(&ws, "tick") >= 2 && most_active >= 2
    });
    // Some runs end while others run: each is recorded on its own.
    ws.wait_until(Duration::from_secs(30), "three runs of tick to succeed", || {
        ws.status("tick")
            .is_some_and(|s| runs(&s).iter().filter(|r| r["phase"] == "Succeeded").count() >= 3)
    });
    assert_eq!(controller.terminate(), Some(0));
    assert_each_time_started_once(&ws, "tick");
    let status = ws.status("tick").expect("a status");
    assert!(
        runs(&status).iter().all(|r| r["reason"] != "MissedSchedule"),
        "under Allow no time is skipped for an active run: {status}"
    );
    // Each run is recorded under its own number.
    let numbers: BTreeSet<i64> = runs(&status).iter().filter_map(|r| r["run"].as_i64()).collect();
    assert_eq!(numbers.len(), runs(&status).len(), "{status}");
}

/// The contract's `phase` under Allow: while runs overlap, the status's top-level fields
/// (`phase`, `attempts`) and `skiff logs` are those of the run with the latest
/// `scheduledAt` (the newest started), never those of an older one still running.
#[test]
fn allow_shows_the_newest_run_while_older_ones_still_run() {
    let ws = Workspace::new();
    let script = format!("echo \"out $SKIFF_SCHEDULED_AT\"; {}", marked(&ws, 3));
    ws.task(
        "tick.yaml",
        &script,
        "  schedule: {cron: '@every 2s', concurrencyPolicy: Allow}\n",
    );
    let controller = ws.controller(&[]);
    let mut newest_seen = BTreeSet::new();
    let mut logs_seen = 0;
    ws.wait_until(
        Duration::from_secs(40),
        "three newest runs seen while runs overlap",
        || {
            let Some(status) = ws.status("tick") else { return false };
            let active: Vec<String> = status["schedule"]["active"]
                .as_array()
                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            if active.len() < 2 {
                return false;
            }
            let newest_at = active.iter().max().expect("two active runs").clone();
            let record = runs(&status)
                .into_iter()
                .find(|r| r["scheduledAt"] == newest_at.as_str() && r["run"].is_i64())
                .unwrap_or_else(|| panic!("the newest active run has a record: {status}"));
            let run = record["run"].as_i64().expect("a run number");
            assert_eq!(status["schedule"]["currentRun"], run, "{status}");
            assert_eq!(status["phase"], record["phase"], "phase is the newest run's: {status}");
            for attempt in status["attempts"].as_array().cloned().unwrap_or_default() {
                let container = attempt["container"].as_str().unwrap_or_default();
                assert!(
                    container.contains(&format!("-r{run}-")),
                    "the attempts are the newest run's ({run}): {status}"
                );
            }
            newest_seen.insert(run);
            if logs_seen < 3 && status["phase"] == "Running" {
                // The newest run's output (or a newer one's, started since), never an
                // older run's.
                let out = ws.skiff(&["logs", "tick", "--dir", &dir(&ws)]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let outs: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("out ")).collect();
                let time = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("{t}: {e}"));
                for at in &outs {
                    assert!(
                        time(at) >= time(&newest_at),
                        "skiff logs shows the run of {at}, older than the newest {newest_at}: {text}"
                    );
                }
                logs_seen += usize::from(!outs.is_empty());
            }
            newest_seen.len() >= 3 && logs_seen >= 1
        },
    );
    assert_eq!(controller.terminate(), Some(0));
    assert_each_time_started_once(&ws, "tick");
    // No run lost or doubled by the moves: each in `runs` once, by its own number.
    let status = ws.status("tick").expect("a status");
    let numbers: BTreeSet<i64> = runs(&status).iter().filter_map(|r| r["run"].as_i64()).collect();
    assert_eq!(numbers.len(), runs(&status).len(), "{status}");
    let top = status["schedule"]["currentRun"].as_i64().expect("a current run");
    assert_eq!(Some(top), numbers.iter().max().copied(), "{status}");
}

#[test]
fn a_controller_killed_mid_run_and_down_ten_seconds_runs_no_time_twice_and_catches_up_by_missed_runs() {
    let ws = Workspace::new();
    for (task, missed) in [("latest", "latest"), ("skip", "skip")] {
        ws.task(
            &format!("{task}.yaml"),
            &marked(&ws, 1),
            &format!("  schedule: {{cron: '@every 2s', concurrencyPolicy: Forbid, missedRuns: {missed}}}\n"),
        );
    }
    let controller = ws.controller(&[]);
    // Mid-run: a run of each has started and not ended.
    ws.wait_until(Duration::from_secs(30), "a run of each task in flight", || {
        let lines = ws.ledger_lines();
        ["latest", "skip"].iter().all(|task| {
            let last = lines.iter().rev().find(|l| l.contains(&format!(" {task} ")));
            last.is_some_and(|l| l.starts_with("start "))
        })
    });
    let killed = chrono::Utc::now();
    controller.kill9();
    std::thread::sleep(Duration::from_secs(10));
    let restarted = chrono::Utc::now();
    let controller = ws.controller(&[]);
    ws.wait_until(Duration::from_secs(30), "runs after the restart", || {
        ["latest", "skip"].iter().all(|task| {
            started(&ws, task)
                .iter()
                .filter_map(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                .any(|at| at > restarted + chrono::Duration::seconds(2))
        })
    });
    assert_eq!(controller.terminate(), Some(0));

    for task in ["latest", "skip"] {
        assert_each_time_started_once(&ws, task);
        let status = ws.status(task).expect("a status");
        let at = |r: &Value| {
            chrono::DateTime::parse_from_rfc3339(r["scheduledAt"].as_str().unwrap_or_default())
                .expect("scheduledAt is RFC 3339")
                .with_timezone(&chrono::Utc)
        };
        // The times that passed while no controller ran, as `runs` records them.
        let missed_while_down: BTreeSet<_> = runs(&status)
            .iter()
            .filter(|r| {
                r["reason"] == "MissedSchedule" && r["message"].as_str().is_some_and(|m| m.contains("was not running"))
            })
            .map(at)
            .collect();
        assert!(
            missed_while_down.len() >= 3,
            "{task}: 10 s down at @every 2s misses several times, each in runs: {status}"
        );
        let (first, last) = (*missed_while_down.first().unwrap(), *missed_while_down.last().unwrap());
        assert!(first > killed - chrono::Duration::seconds(2) && last < restarted + chrono::Duration::seconds(3));
        let ran: BTreeMap<_, _> = started(&ws, task)
            .iter()
            .map(|t| {
                let time = chrono::DateTime::parse_from_rfc3339(t)
                    .unwrap()
                    .with_timezone(&chrono::Utc);
                (time, t.clone())
            })
            .collect();
        assert!(
            ran.keys().all(|t| !missed_while_down.contains(t)),
            "{task}: a time both missed and run"
        );
        let in_outage: Vec<_> = ran.keys().filter(|t| **t > first && **t < last).collect();
        assert!(in_outage.is_empty(), "{task}: ran {in_outage:?} inside the outage");
        let next = last + chrono::Duration::seconds(2);
        match task {
            // One catch-up run: the latest time missed while down, right after the others.
            "latest" => {
                let catch_up: Vec<_> = runs(&status)
                    .iter()
                    .filter(|r| r["run"].is_number() && at(r) == next)
                    .cloned()
                    .collect();
                assert_eq!(catch_up.len(), 1, "latest: {status}");
                assert!(ran.contains_key(&next), "latest: the catch-up run ran: {ran:?}");
            }
            // None: every time while down is missed; the next run is on time.
            _ => assert!(missed_while_down.len() >= 4, "skip: {missed_while_down:?} {status}"),
        }
    }
}

#[test]
fn a_suspended_schedule_starts_nothing_until_triggered_or_resumed() {
    let ws = Workspace::new();
    let every = "  schedule: {cron: '@every 1s'}\n";
    ws.task("nap.yaml", &marked(&ws, 0), &format!("{every}  suspend: true\n"));
    let controller = ws.controller(&[]);
    ws.wait_until(Duration::from_secs(20), "nap to say it is suspended", || {
        ws.status("nap").is_some_and(|s| {
            s["message"].as_str().is_some_and(|m| m.starts_with("suspended"))
                && s["schedule"]["nextScheduledAt"].is_null()
        })
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(started(&ws, "nap").is_empty(), "{:?}", ws.ledger_lines());
    // A trigger starts one run all the same, as a job made by hand from a suspended
    // CronJob does.
    let dir = dir(&ws);
    let out = ws.skiff(&["trigger", "nap", "--dir", &dir]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ws.wait_until(Duration::from_secs(20), "the triggered run", || {
        started(&ws, "nap").len() == 1
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(started(&ws, "nap").len(), 1, "only the triggered run");
    // Resumed: runs start again.
    ws.task("nap.yaml", &marked(&ws, 0), every);
    ws.wait_until(Duration::from_secs(20), "runs after resuming", || {
        started(&ws, "nap").len() >= 3
    });
    assert_eq!(controller.terminate(), Some(0));
    assert_each_time_started_once(&ws, "nap");
}
