//! The blob store end to end, on a real Azurite: real `skiff` controllers (one, or three
//! replicas), real processes, real blobs; and the store's conditional writes directly.

#[path = "support/azurite.rs"]
mod azurite;
mod support;

use azurite::{
    Container, OwnAzurite, azurite_or_skip, blob_controller, blob_controller_env, skiff_blob, unique_container,
    wait_for,
};
use std::collections::BTreeMap;
use std::time::Duration;
use support::{Workspace, processes_mentioning};

const LONG: Duration = Duration::from_secs(120);

/// Each task's ledger lines: `<task> <attempt> start|end`.
fn ledger_by_task(ws: &Workspace) -> BTreeMap<String, Vec<String>> {
    let mut by_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in ws.ledger_lines() {
        let mut parts = line.splitn(2, ' ');
        let task = parts.next().unwrap_or_default().to_string();
        by_task
            .entry(task)
            .or_default()
            .push(parts.next().unwrap_or_default().to_string());
    }
    by_task
}

/// A script that marks its start and end in the ledger around `sleep secs`.
fn marked(ws: &Workspace, secs: f64) -> String {
    let ledger = ws.ledger().display().to_string();
    format!(
        "echo \"$SKIFF_TASK $SKIFF_ATTEMPT start\" >> {ledger}; sleep {secs}; echo \"$SKIFF_TASK $SKIFF_ATTEMPT end\" >> {ledger}"
    )
}

/// Every task ran attempt 1 exactly once, from start to end, and never twice at once.
fn assert_each_ran_once(ws: &Workspace, tasks: &[String]) {
    let by_task = ledger_by_task(ws);
    for task in tasks {
        let lines = by_task.get(task).cloned().unwrap_or_default();
        assert_eq!(lines, ["1 start", "1 end"], "{task}: ledger {lines:?}");
    }
    assert_eq!(by_task.len(), tasks.len(), "only these tasks ran: {:?}", by_task.keys());
}

#[test]
fn a_hundred_blobs_succeed_beside_their_manifests_then_edits_rerun_and_deletes_cancel() {
    let Some(endpoint) = azurite_or_skip("blob hundred") else {
        return;
    };
    let ws = Workspace::new();
    let box_ = Container::create(&endpoint, &unique_container("hundred"));
    let log = ws.root().join("controller.log");
    let tasks: Vec<String> = (0..100).map(|i| format!("batch/t{i:03}")).collect();
    for task in &tasks {
        box_.task(
            &format!("{task}.yaml"),
            &format!("echo hello from {task}; {}", ws.ledger_line()),
            "",
        );
    }
    let controller = blob_controller(&box_, &ws.root().join("state"), &log, &["--max-running", "16"]);
    wait_for(LONG, "100 tasks to succeed", &log, || {
        let phases = box_.phases();
        tasks
            .iter()
            .all(|t| phases.get(t).map(String::as_str) == Some("Succeeded"))
    });
    let names = box_.list();
    for task in &tasks {
        assert!(
            names.contains(&format!("{task}.status.json")),
            "{task}: status blob beside the manifest"
        );
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in ws.ledger_lines() {
        *counts.entry(line).or_default() += 1;
    }
    assert_eq!(counts.len(), 100, "every task ran");
    assert!(
        counts.iter().all(|(line, n)| *n == 1 && line.ends_with(" 1")),
        "{counts:?}"
    );

    // The commands see it too.
    let out = skiff_blob(
        &box_,
        &[
            "wait",
            "batch/t001",
            "batch/t099",
            "--for",
            "succeeded",
            "--timeout",
            "10s",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = skiff_blob(&box_, &["describe", "batch/t002"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Phase:        Succeeded"));
    let out = skiff_blob(&box_, &["get", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(100));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("AccountKey"));
    let out = skiff_blob(&box_, &["get", "--dir", "/tmp"]);
    assert_eq!(out.status.code(), Some(2), "--dir with --blob is a usage error");
    // From another machine (no state folder here): the output saved in .skiff/logs/.
    let out = skiff_blob(&box_, &["logs", "batch/t003"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello from batch/t003");
    assert!(
        box_.list()
            .iter()
            .any(|n| n.starts_with(".skiff/logs/skiff-batch-t003-"))
    );

    // An edited manifest blob (a new spec) runs again, from attempt 1.
    let old_hash = box_.status("batch/t000").unwrap()["specHash"].clone();
    box_.task("batch/t000.yaml", &format!("{}; # v2", ws.ledger_line()), "");
    wait_for(LONG, "the edited task to run again", &log, || {
        box_.status("batch/t000")
            .is_some_and(|s| s["phase"] == "Succeeded" && s["specHash"] != old_hash)
    });
    let runs = ws.ledger_lines().iter().filter(|l| *l == "batch/t000 1").count();
    assert_eq!(runs, 2, "ran once per spec");

    // A deleted manifest blob cancels its running task and removes its status blob.
    let secs = 100_000 + std::process::id() as u64 % 10_000;
    box_.task("long.yaml", &format!("sleep {secs}"), "");
    wait_for(LONG, "long to run", &log, || {
        box_.phase("long").as_deref() == Some("Running")
    });
    box_.delete("long.yaml");
    wait_for(LONG, "long's status blob to go", &log, || {
        box_.get("long.status.json").is_none()
    });
    wait_for(Duration::from_secs(10), "long's process to be killed", &log, || {
        processes_mentioning(&format!("sleep {secs}")).is_empty()
    });
    // And a finished one's status blob goes too.
    box_.delete("batch/t050.yaml");
    wait_for(LONG, "t050's status blob to go", &log, || {
        box_.get("batch/t050.status.json").is_none()
    });
    // With its lease and saved output: nothing of a removed task stays behind.
    wait_for(
        Duration::from_secs(10),
        "t050's lease and log blobs to go",
        &log,
        || {
            let names = box_.list();
            !names
                .iter()
                .any(|n| n == ".skiff/leases/batch/t050.lease" || n.starts_with(".skiff/logs/skiff-batch-t050-"))
        },
    );
    assert!(
        box_.list().iter().any(|n| n == ".skiff/leases/batch/t051.lease"),
        "the other tasks keep theirs"
    );
    assert_eq!(controller.terminate(), Some(0));
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains(azurite::KEY),
        "the key never reaches the log"
    );
}

#[test]
fn a_status_changed_between_read_and_write_fails_the_write_and_is_read_again() {
    use skiff::status::TaskStatus;
    use skiff::store::blob::location::BlobLocation;
    use skiff::store::blob::{BlobConfig, BlobStore};
    use skiff::store::{Store, StoreError};
    use skiff::task::TaskKey;
    let Some(endpoint) = azurite_or_skip("blob conflict") else {
        return;
    };
    let box_ = Container::create(&endpoint, &unique_container("conflict"));
    let location = BlobLocation::parse(&box_.url()).unwrap();
    let conn = azurite::connection_string(&endpoint);
    let auth = location
        .auth(&|name| (name == "AZURE_STORAGE_CONNECTION_STRING").then(|| conn.clone()))
        .unwrap();
    let store = BlobStore::new(BlobConfig {
        location,
        auth,
        credential: None,
        poll: Duration::from_millis(200),
    })
    .unwrap();
    let key = TaskKey::parse("jobs/a").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The store's calls run on the runtime; the other writer's (blocking) calls outside it.
    let run = |f: std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>>| runtime.block_on(f);
    let read = |store: &BlobStore| runtime.block_on(store.read_status_for_update(&key));
    // Nothing there when read: the first write is If-None-Match: *.
    assert_eq!(read(&store).unwrap(), None);
    let mut ours = TaskStatus::new("jobs/a", "a", "h1", chrono::Utc::now());
    // Someone else writes first: ours must not overwrite theirs.
    box_.put(
        "jobs/a.status.json",
        &String::from_utf8(ours.to_json())
            .unwrap()
            .replace("\"h1\"", "\"theirs\""),
    );
    let lost: Result<(), StoreError> = run(Box::pin(store.write_status(&key, &ours)));
    assert!(matches!(lost, Err(StoreError::Conflict { .. })), "{lost:?}");
    assert_eq!(box_.status("jobs/a").unwrap()["specHash"], "theirs", "theirs survives");
    // Re-read, then write: it goes through, conditional on what was read.
    assert_eq!(read(&store).unwrap().unwrap().spec_hash, "theirs");
    ours.spec_hash = "h2".into();
    run(Box::pin(store.write_status(&key, &ours))).unwrap();
    assert_eq!(box_.status("jobs/a").unwrap()["specHash"], "h2");
    // Changed between our read and our write (If-Match): refused again.
    read(&store).unwrap();
    let (_, etag) = box_.get("jobs/a.status.json").unwrap();
    assert_eq!(box_.put_if_match("jobs/a.status.json", "{\"x\":1}", &etag), 201);
    ours.spec_hash = "h3".into();
    let lost = run(Box::pin(store.write_status(&key, &ours)));
    assert!(matches!(lost, Err(StoreError::Conflict { .. })), "{lost:?}");
    assert_eq!(box_.get("jobs/a.status.json").unwrap().0, b"{\"x\":1}");
    // A read for anyone else (a dependent, the API) does not make the next write blind.
    read(&store).ok();
    let (_, etag) = box_.get("jobs/a.status.json").unwrap();
    assert_eq!(box_.put_if_match("jobs/a.status.json", "{\"x\":2}", &etag), 201);
    let _ = runtime.block_on(store.read_status(&key));
    let lost = run(Box::pin(store.write_status(&key, &ours)));
    assert!(matches!(lost, Err(StoreError::Conflict { .. })), "{lost:?}");
    // A delete is conditional too.
    read(&store).ok();
    assert!(!box_.put("jobs/a.status.json", "{\"y\":2}").is_empty());
    let lost = run(Box::pin(store.delete_status(&key)));
    assert!(matches!(lost, Err(StoreError::Conflict { .. })), "{lost:?}");
    assert!(read(&store).is_err(), "theirs is not a status: reported, not replaced");
    assert!(box_.get("jobs/a.status.json").is_some());

    // The controller: a status rewritten under a running task makes its next write fail;
    // it reads again and carries on, and the task runs once.
    let ws = Workspace::new();
    let log = ws.root().join("controller.log");
    box_.delete("jobs/a.status.json");
    box_.task("race.yaml", &marked(&ws, 0.5), "");
    // Each status write is held 5 s after its read (a failpoint that logs when it holds):
    // while the Deleting write is held, another writer rewrites the status (a new ETag,
    // the same content).
    let controller = blob_controller_env(
        &box_,
        &ws.root().join("state"),
        &log,
        &[],
        &[("SKIFF_TEST_STATUS_WRITE_DELAY", "5s")],
    );
    wait_for(LONG, "the Deleting write to be held", &log, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("holding the Deleting write"))
    });
    let (bytes, etag) = box_.get("race.status.json").unwrap();
    assert_eq!(
        box_.put_if_match("race.status.json", &String::from_utf8(bytes).unwrap(), &etag),
        201
    );
    wait_for(LONG, "race to succeed", &log, || {
        box_.phase("race").as_deref() == Some("Succeeded")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("changed under this reconcile; re-reading"),
        "the write lost the race:\n{text}"
    );
    assert_each_ran_once(&ws, &["race".to_string()]);
    assert_eq!(controller.terminate(), Some(0));
}

#[test]
fn three_replicas_share_two_hundred_tasks_and_survive_one_killed() {
    let Some(endpoint) = azurite_or_skip("blob replicas") else {
        return;
    };
    let ws = Workspace::new();
    let box_ = Container::create(&endpoint, &unique_container("replicas"));
    // One state folder for all three: the process runtime's containers are then visible to
    // every replica, as a Docker engine or an ACI resource group would be.
    let state = ws.root().join("state");
    let logs: Vec<_> = (0..3).map(|i| ws.root().join(format!("replica{i}.log"))).collect();
    let tasks: Vec<String> = (0..200).map(|i| format!("w/t{i:03}")).collect();
    for task in &tasks {
        box_.task(&format!("{task}.yaml"), &marked(&ws, 0.3), "");
    }
    let mut replicas: Vec<Option<support::Controller>> = logs
        .iter()
        .map(|log| Some(blob_controller(&box_, &state, log, &["--max-running", "8"])))
        .collect();
    // Replica 1 must hold work when it dies: the other two, quicker to list the box, could
    // otherwise have taken every task before it started any (seen once in CI).
    wait_for(LONG, "40 tasks to finish and replica 1 to start some", &logs[1], || {
        let started = std::fs::read_to_string(&logs[1]).is_ok_and(|t| t.contains("new -> Creating"));
        started && ws.ledger_lines().iter().filter(|l| l.ends_with(" end")).count() >= 40
    });
    // Mid-run: replica 1 dies at once, holding leases on live tasks.
    let victim = replicas[1].take().unwrap();
    let running_then = ws.ledger_lines().len();
    victim.kill9();
    assert!(running_then < 400, "killed mid-run");
    wait_for(Duration::from_secs(180), "every task to succeed", &logs[0], || {
        let phases = box_.phases();
        tasks
            .iter()
            .all(|t| phases.get(t).map(String::as_str) == Some("Succeeded"))
    });
    assert_each_ran_once(&ws, &tasks);
    // Each replica did a share of the work.
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        let started = text.matches("new -> Creating").count();
        assert!(started > 0, "{} started nothing", log.display());
        // One state folder: one placement, so nothing to warn of.
        assert!(!text.contains("will be re-run, not adopted"), "{}", log.display());
    }
    // Every container the dead replica left was adopted: none was out of reach.
    for (task, attempts) in attempts_by_task(&box_, &tasks) {
        for attempt in attempts {
            assert_ne!(attempt["reason"], "PlacementUnreachable", "{task}: {attempt}");
        }
    }
    for replica in replicas.into_iter().flatten() {
        assert_eq!(replica.terminate(), Some(0));
    }
    assert!(processes_mentioning(&ws.root().display().to_string()).is_empty());
}

/// Every attempt of every status in the container, by task: (number, reason, placement).
fn attempts_by_task(box_: &Container, tasks: &[String]) -> BTreeMap<String, Vec<serde_json::Value>> {
    tasks
        .iter()
        .map(|task| {
            let status = box_.status(task).unwrap_or_else(|| panic!("{task}: no status"));
            let attempts = status["attempts"].as_array().cloned().unwrap_or_default();
            (task.clone(), attempts)
        })
        .collect()
}

#[test]
fn replicas_with_their_own_state_folders_never_run_an_attempt_twice_when_one_is_killed() {
    let Some(endpoint) = azurite_or_skip("blob placements") else {
        return;
    };
    let ws = Workspace::new();
    let box_ = Container::create(&endpoint, &unique_container("placements"));
    // Two state folders, as two machines would have: neither replica can see (or adopt)
    // the other's processes.
    let states = [ws.root().join("state-alpha"), ws.root().join("state-beta")];
    let logs = [ws.root().join("alpha.log"), ws.root().join("beta.log")];
    let tasks: Vec<String> = (0..40).map(|i| format!("p/t{i:02}")).collect();
    for task in &tasks {
        box_.task(&format!("{task}.yaml"), &marked(&ws, 2.0), "");
    }
    let alpha = blob_controller(
        &box_,
        &states[0],
        &logs[0],
        &["--max-running", "4", "--replica-name", "alpha"],
    );
    let beta = blob_controller(
        &box_,
        &states[1],
        &logs[1],
        &["--max-running", "4", "--replica-name", "beta"],
    );
    std::thread::sleep(Duration::from_secs(3));
    // Mid-run (and beta surely running something, however slow this machine is today):
    // beta dies at once, holding leases on live tasks; its supervisors live on.
    let beta_id = || {
        std::fs::read_to_string(states[1].join("placement-id"))
            .map(|id| id.trim().to_string())
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(60), "beta to run a task", &logs[1], || {
        let id = beta_id();
        !id.is_empty()
            && tasks.iter().any(|task| {
                box_.status(task).is_some_and(|s| {
                    s["phase"] == "Running"
                        && s["attempts"]
                            .as_array()
                            .and_then(|a| a.last())
                            .is_some_and(|a| a["placement"]["stateId"] == id.as_str())
                })
            })
    });
    beta.kill9();
    let killed_at = ws.ledger_lines().len();
    assert!(killed_at < 80, "killed mid-run: {killed_at} ledger lines");
    wait_for(
        Duration::from_secs(60),
        "alpha to warn of beta's placement",
        &logs[0],
        || {
            std::fs::read_to_string(&logs[0])
                .unwrap_or_default()
                .contains("replica beta runs processes under another state folder")
        },
    );
    wait_for(Duration::from_secs(180), "every task to succeed", &logs[0], || {
        let phases = box_.phases();
        let failed: Vec<_> = phases.iter().filter(|(_, p)| *p == "Failed").collect();
        assert!(failed.is_empty(), "failed: {failed:?}");
        tasks
            .iter()
            .all(|t| phases.get(t).map(String::as_str) == Some("Succeeded"))
    });
    // Beta's orphaned attempts end by themselves; then the ledger is complete.
    wait_for(
        Duration::from_secs(30),
        "beta's orphaned processes to end",
        &logs[0],
        || processes_mentioning(&states[1].display().to_string()).is_empty(),
    );

    // No (task, attempt) pair ran twice, and every task's last attempt ran to its end.
    let by_task = ledger_by_task(&ws);
    let attempts = attempts_by_task(&box_, &tasks);
    let beta_id = beta_id();
    let alpha_id = std::fs::read_to_string(states[0].join("placement-id")).unwrap();
    let (beta_id, alpha_id) = (beta_id.as_str(), alpha_id.trim());
    assert_ne!(beta_id, alpha_id, "each state folder has an id of its own");
    let mut lost_tasks = Vec::new();
    for task in &tasks {
        let lines = by_task.get(task).cloned().unwrap_or_default();
        let mut starts = BTreeMap::new();
        for line in &lines {
            if let Some(attempt) = line.strip_suffix(" start") {
                *starts.entry(attempt.to_string()).or_insert(0) += 1;
            }
        }
        for (attempt, count) in &starts {
            assert_eq!(*count, 1, "{task}: attempt {attempt} ran {count} times: {lines:?}");
        }
        let records = &attempts[task];
        let last = records.last().unwrap_or_else(|| panic!("{task}: no attempt"));
        let number = last["number"].as_u64().unwrap();
        assert_eq!(last["reason"], "Completed", "{task}: {records:?}");
        assert!(
            lines.contains(&format!("{number} start")) && lines.contains(&format!("{number} end")),
            "{task}: the succeeded attempt {number} ran to its end: {lines:?}"
        );
        let lost: Vec<&serde_json::Value> = records
            .iter()
            .filter(|a| a["reason"] == "PlacementUnreachable")
            .collect();
        if !lost.is_empty() {
            lost_tasks.push(task.clone());
            for record in &lost {
                // Out of reach: beta's, named, and said to be possibly still running.
                assert_eq!(record["placement"]["stateId"], beta_id, "{task}: {record}");
                let message = record["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains(beta_id) && message.contains("may still be running there"),
                    "{task}: {message}"
                );
            }
            // The attempt after it ran on alpha's placement.
            assert_eq!(last["placement"]["stateId"], alpha_id, "{task}: {records:?}");
        }
        // Every attempt says where it lived.
        for record in records {
            assert!(record["placement"]["stateId"].is_string(), "{task}: {record}");
        }
    }
    assert!(
        !lost_tasks.is_empty(),
        "beta held live tasks when it died, so some attempts were out of alpha's reach"
    );
    let alpha_log = std::fs::read_to_string(&logs[0]).unwrap_or_default();
    let warning = alpha_log.lines().find(|l| l.contains("replica beta runs processes"));
    assert!(
        warning.is_some_and(|w| w.contains(&format!("state folder {beta_id}"))),
        "the warning names beta's placement: {warning:?}"
    );
    eprintln!(
        "out of alpha's reach: {lost_tasks:?}; their ledgers: {:?}\nalpha warned: {}",
        lost_tasks.iter().map(|t| (t, &by_task[t])).collect::<Vec<_>>(),
        warning.unwrap_or_default()
    );
    assert_eq!(by_task.len(), tasks.len(), "only these tasks ran: {:?}", by_task.keys());
    assert_eq!(alpha.terminate(), Some(0));
    assert!(processes_mentioning(&ws.root().display().to_string()).is_empty());

    // Beta comes back on its state folder: what is left there of the attempts alpha gave
    // up is removed (nobody else could).
    let left: Vec<std::path::PathBuf> = attempts
        .values()
        .flatten()
        .filter(|a| a["reason"] == "PlacementUnreachable")
        .map(|a| {
            states[1]
                .join("containers")
                .join(format!("{}.state", a["container"].as_str().unwrap()))
        })
        .collect();
    assert!(
        left.iter().all(|p| p.exists()),
        "beta's given-up containers are still there: {left:?}"
    );
    let beta = blob_controller(
        &box_,
        &states[1],
        &logs[1],
        &["--max-running", "4", "--replica-name", "beta"],
    );
    wait_for(
        Duration::from_secs(60),
        "beta to remove what alpha gave up",
        &logs[1],
        || left.iter().all(|p| !p.exists()),
    );
    for task in &tasks {
        assert_eq!(
            box_.phase(task).as_deref(),
            Some("Succeeded"),
            "{task}: nothing ran again"
        );
    }
    assert_eq!(beta.terminate(), Some(0));
    assert_eq!(ledger_by_task(&ws), by_task, "nothing ran again");
}

#[test]
fn controllers_ride_out_azurite_stopped_for_ten_seconds() {
    if azurite_or_skip("blob restart").is_none() {
        return;
    }
    let ws = Workspace::new();
    let mut own = OwnAzurite::start(&ws.root().join("azurite-data"), &ws.root().join("azurite.log"));
    let box_ = Container::create(&own.endpoint(), "restart");
    let state = ws.root().join("state");
    let tasks: Vec<String> = (0..40).map(|i| format!("r/t{i:02}")).collect();
    for task in &tasks {
        box_.task(&format!("{task}.yaml"), &marked(&ws, 1.0), "");
    }
    let ports = [support::free_port(), support::free_port()];
    let logs: Vec<_> = (0..2).map(|i| ws.root().join(format!("replica{i}.log"))).collect();
    let replicas: Vec<_> = (0..2)
        .map(|i| {
            let listen = format!("127.0.0.1:{}", ports[i]);
            blob_controller(&box_, &state, &logs[i], &["--max-running", "3", "--listen", &listen])
        })
        .collect();
    let health = |port: u16| -> Option<serde_json::Value> {
        reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz"))
            .ok()?
            .json()
            .ok()
    };
    wait_for(LONG, "8 tasks to finish", &logs[0], || {
        ws.ledger_lines().iter().filter(|l| l.ends_with(" end")).count() >= 8
    });
    own.stop();
    let stopped = std::time::Instant::now();
    wait_for(Duration::from_secs(9), "/healthz to report the store", &logs[0], || {
        health(ports[0]).is_some_and(|h| h["healthy"] == false && h["storeError"].is_string())
    });
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    own.resume();
    wait_for(Duration::from_secs(180), "every task to succeed", &logs[0], || {
        let phases = box_.phases();
        tasks
            .iter()
            .all(|t| phases.get(t).map(String::as_str) == Some("Succeeded"))
    });
    assert_each_ran_once(&ws, &tasks);
    wait_for(
        Duration::from_secs(30),
        "/healthz to be healthy again",
        &logs[0],
        || ports.iter().all(|p| health(*p).is_some_and(|h| h["healthy"] == true)),
    );
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(text.contains("retrying with backoff"), "the outage was logged");
    for replica in replicas {
        assert_eq!(replica.terminate(), Some(0));
    }
}

#[test]
fn a_lease_is_exclusive_renewed_while_held_released_on_hand_over_and_lapses_when_its_holder_dies() {
    use skiff::store::Store;
    use skiff::store::blob::location::BlobLocation;
    use skiff::store::blob::{BlobConfig, BlobStore};
    use skiff::task::TaskKey;
    let Some(endpoint) = azurite_or_skip("blob leases") else {
        return;
    };
    let box_ = Container::create(&endpoint, &unique_container("leases"));
    let conn = azurite::connection_string(&endpoint);
    let replica = || {
        let location = BlobLocation::parse(&box_.url()).unwrap();
        let auth = location
            .auth(&|name| (name == "AZURE_STORAGE_CONNECTION_STRING").then(|| conn.clone()))
            .unwrap();
        BlobStore::new(BlobConfig {
            location,
            auth,
            credential: None,
            poll: Duration::from_secs(60),
        })
        .unwrap()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (a, b) = (replica(), replica());
        let (own_a, own_b) = (a.ownership().unwrap(), b.ownership().unwrap());
        let key = TaskKey::parse("jobs/a").unwrap();
        assert!(own_a.acquire(&key).await.unwrap(), "a free task is taken");
        assert!(!own_b.acquire(&key).await.unwrap(), "a live lease is never taken");
        // Past a lease's 15 s: still held, because it is renewed.
        tokio::time::sleep(Duration::from_secs(17)).await;
        assert!(own_a.holds(&key), "renewed while held");
        assert!(!own_b.acquire(&key).await.unwrap(), "still not taken");
        assert_eq!(own_a.held(), 1);
        // Hand-over: released, and taken at once.
        own_a.release(&key).await;
        assert!(!own_a.holds(&key));
        assert!(own_b.acquire(&key).await.unwrap(), "taken at once after a release");
        // B dies (no release, no renewal): A takes the task once the lease lapses.
        drop((b, own_b));
        let died = std::time::Instant::now();
        assert!(
            !own_a.acquire(&key).await.unwrap(),
            "not while the dead holder's lease lives"
        );
        while !own_a.acquire(&key).await.unwrap() {
            assert!(died.elapsed() < Duration::from_secs(25), "the lease never lapsed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            died.elapsed() >= Duration::from_secs(5),
            "taken only after the lapse: {:?}",
            died.elapsed()
        );
    });
    assert!(box_.list().contains(&".skiff/leases/jobs/a.lease".to_string()));
}

#[test]
fn a_busy_store_answering_503_is_retried_with_backoff_and_reported_then_work_resumes() {
    let Some(endpoint) = azurite_or_skip("blob busy") else {
        return;
    };
    let ws = Workspace::new();
    let name = unique_container("busy");
    let direct = Container::create(&endpoint, &name);
    let proxy = azurite::BusyProxy::start(&endpoint);
    let via_proxy = Container::create(&proxy.endpoint(), &name);
    let tasks: Vec<String> = (0..16).map(|i| format!("b/t{i:02}")).collect();
    for task in &tasks {
        direct.task(&format!("{task}.yaml"), &marked(&ws, 3.0), "");
    }
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = ws.root().join("controller.log");
    let controller = blob_controller(
        &via_proxy,
        &ws.root().join("state"),
        &log,
        &["--max-running", "4", "--listen", &listen],
    );
    let health = || -> Option<serde_json::Value> {
        reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz"))
            .ok()?
            .json()
            .ok()
    };
    wait_for(LONG, "the first tasks to run", &log, || {
        ws.ledger_lines().iter().filter(|l| l.ends_with(" start")).count() >= 2
    });
    proxy.set_busy(true);
    let running: Vec<String> = ledger_by_task(&ws)
        .into_iter()
        .filter(|(_, lines)| lines.len() == 1)
        .map(|(task, _)| task)
        .collect();
    assert!(
        !running.is_empty(),
        "some tasks were running when the store turned busy"
    );
    wait_for(Duration::from_secs(10), "/healthz to report ServerBusy", &log, || {
        health().is_some_and(|h| {
            h["healthy"] == false && h["storeError"].as_str().is_some_and(|e| e.contains("503 ServerBusy"))
        })
    });
    // Containers keep running meanwhile: those running then end while the store is busy.
    std::thread::sleep(Duration::from_secs(6));
    let by_task = ledger_by_task(&ws);
    for task in &running {
        assert_eq!(
            by_task[task],
            ["1 start", "1 end"],
            "{task} ran on while the store was busy"
        );
    }
    proxy.set_busy(false);
    wait_for(Duration::from_secs(120), "every task to succeed", &log, || {
        let phases = direct.phases();
        tasks
            .iter()
            .all(|t| phases.get(t).map(String::as_str) == Some("Succeeded"))
    });
    assert_each_ran_once(&ws, &tasks);
    for task in &tasks {
        assert_eq!(
            direct.status(task).unwrap()["attempt"],
            1,
            "{task}: no retry was used up"
        );
    }
    wait_for(Duration::from_secs(30), "/healthz to be healthy again", &log, || {
        health().is_some_and(|h| h["healthy"] == true)
    });
    assert_eq!(controller.terminate(), Some(0));
}

/// The operator's commands on a blob store (issue 18): `rerun` (conditional delete),
/// `rerun --failed` (conditional write), `terminate` through the API the controller
/// recorded in its state folder; the controller's `--log-format json` lines all parse.
#[test]
fn rerun_and_terminate_work_on_a_blob_store() {
    let Some(endpoint) = azurite_or_skip("blob operator commands") else {
        return;
    };
    let ws = Workspace::new();
    let box_ = Container::create(&endpoint, &unique_container("operate"));
    let log = ws.root().join("controller.log");
    let state = ws.root().join("state");
    let marker = ws.root().join("marker");
    box_.task("once.yaml", &ws.ledger_line(), "");
    box_.task(
        "fan.yaml",
        &format!(
            "if [ \"$SKIFF_INDEX\" = 1 ] && [ ! -e {m} ]; then touch {m}; exit 1; fi; echo \"fan-$SKIFF_INDEX\" >> {l}",
            m = marker.display(),
            l = ws.ledger().display()
        ),
        "  completions: 3\n  parallelism: 1\n",
    );
    box_.task("long.yaml", "sleep 60", "");
    let controller = blob_controller(&box_, &state, &log, &["--log-format", "json"]);
    wait_for(LONG, "once and fan to finish, long to run", &log, || {
        box_.phase("once").as_deref() == Some("Succeeded")
            && box_.phase("fan").as_deref() == Some("Failed")
            && box_.phase("long").as_deref() == Some("Running")
    });
    let state_arg = state.to_str().expect("utf-8").to_string();
    let out = skiff_blob(&box_, &["rerun", "once", "--state-dir", &state_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = skiff_blob(&box_, &["rerun", "fan", "--failed", "--state-dir", &state_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = skiff_blob(&box_, &["terminate", "long", "--state-dir", &state_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = skiff_blob(&box_, &["rerun", "nosuch", "--state-dir", &state_arg]);
    assert_eq!(out.status.code(), Some(2));
    wait_for(LONG, "the reruns to succeed and long to be terminated", &log, || {
        box_.phase("fan").as_deref() == Some("Succeeded")
            && box_.phase("long").as_deref() == Some("Failed")
            && ws.ledger_lines().iter().filter(|l| l.starts_with("once")).count() == 2
    });
    let fan_runs: Vec<String> = ws
        .ledger_lines()
        .into_iter()
        .filter(|l| l.starts_with("fan-"))
        .collect();
    assert_eq!(
        fan_runs.iter().filter(|l| *l == "fan-0").count(),
        1,
        "index 0 ran once: {fan_runs:?}"
    );
    assert_eq!(
        box_.status("long").expect("status")["attempts"][0]["completedBy"],
        "terminate"
    );
    drop(controller);
    let text = std::fs::read_to_string(&log).expect("log");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
    }
}

/// Exit-code rules and a fan-out tolerating a failed index (issue 16) on the blob
/// store: they live in the status document, which the blob store keeps with
/// conditional writes.
#[test]
fn exit_rules_and_tolerated_failed_indexes_work_on_a_blob_store() {
    let Some(endpoint) = azurite_or_skip("blob policies") else {
        return;
    };
    let ws = Workspace::new();
    let box_ = Container::create(&endpoint, &unique_container("policies"));
    let log = ws.root().join("controller.log");
    let state = ws.root().join("state");
    let rules = "  retries: 5\n  backoff: 100ms\n  onExit:\n    - {exitCodes: [42], action: FailTask}\n    - {exitCodes: [3], action: Succeed}\n";
    box_.task("fails.yaml", "exit 42", rules);
    box_.task("counts.yaml", "exit 3", rules);
    box_.task(
        "fan.yaml",
        "if [ \"$SKIFF_INDEX\" = 1 ]; then exit 1; fi",
        "  completions: 3\n  parallelism: 3\n  retries: 0\n  maxFailedIndexes: 1\n",
    );
    let controller = blob_controller(&box_, &state, &log, &[]);
    wait_for(LONG, "the three tasks to end", &log, || {
        ["fails", "counts", "fan"]
            .iter()
            .all(|t| matches!(box_.phase(t).as_deref(), Some("Succeeded" | "Failed")))
    });
    drop(controller);
    let fails = box_.status("fails").expect("status");
    assert_eq!(fails["phase"], "Failed");
    assert_eq!(fails["attempts"].as_array().map(Vec::len), Some(1), "{fails}");
    assert_eq!(fails["attempts"][0]["exitRule"]["action"], "FailTask");
    let counts = box_.status("counts").expect("status");
    assert_eq!(counts["phase"], "Succeeded");
    assert_eq!(counts["attempts"].as_array().map(Vec::len), Some(1), "{counts}");
    let fan = box_.status("fan").expect("status");
    assert_eq!(fan["phase"], "Succeeded", "{fan}");
    assert_eq!(fan["reason"], "SucceededWithFailedIndexes");
    assert_eq!(fan["result"].as_array().map(Vec::len), Some(3), "{fan}");
    assert!(fan["result"][1].is_null(), "{fan}");
    assert_eq!(fan["indexes"][1]["phase"], "Failed", "{fan}");
}
