//! Completion notifications end to end: a real controller POSTs CloudEvents to a
//! loopback receiver, at least once, from its outbox, across a receiver that is down
//! or failing and a controller SIGKILLed.

mod support;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Workspace, free_port};

const LONG: Duration = Duration::from_secs(60);

/// What the receiver got: the signature header and the body of each call.
type Calls = Arc<Mutex<Vec<(Option<String>, Vec<u8>)>>>;

/// A loopback receiver on `port` that answers 500 to its first `fail_first` calls and
/// 200 after, recording every call. Runs until the test ends.
fn receiver(port: u16, fail_first: usize) -> Calls {
    let calls: Calls = Arc::default();
    let recorded = calls.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let recorded = recorded.clone();
                    async move {
                        let signature = headers
                            .get("x-skiff-signature")
                            .and_then(|v| v.to_str().ok())
                            .map(String::from);
                        let mut calls = recorded.lock().unwrap();
                        calls.push((signature, body.to_vec()));
                        if calls.len() <= fail_first {
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            axum::http::StatusCode::OK
                        }
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            ready_tx.send(()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the receiver listens");
    calls
}

fn events(calls: &Calls) -> Vec<(Option<String>, Value, Vec<u8>)> {
    calls
        .lock()
        .unwrap()
        .iter()
        .map(|(sig, body)| (sig.clone(), serde_json::from_slice(body).unwrap(), body.clone()))
        .collect()
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn a_success_a_failure_and_an_invalid_manifest_each_post_one_signed_cloudevent() {
    let ws = Workspace::new();
    let port = free_port();
    let calls = receiver(port, 0);
    let secret = ws.root().join(".secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    ws.task("jobs/ok.yaml", "true", "");
    ws.task("bad.yaml", "exit 3", "");
    ws.write(
        "wrong.yaml",
        "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [true]\n  retries: -1\n",
    );
    let url = format!("http://127.0.0.1:{port}/hook");
    let code = ws
        .controller(&[
            "--once",
            "--notify",
            &url,
            "--notify-secret-file",
            secret.to_str().unwrap(),
        ])
        .wait(LONG);
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    let got = events(&calls);
    assert_eq!(got.len(), 3, "one event each: {got:?}");
    let mut by_subject = std::collections::BTreeMap::new();
    for (signature, event, body) in &got {
        assert_eq!(signature.as_deref(), Some(hmac_hex(b"s3cret", body).as_str()));
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["datacontenttype"], "application/json");
        assert!(event["source"].as_str().unwrap().starts_with("file:///"), "{event}");
        assert!(event["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{event}");
        by_subject.insert(event["subject"].as_str().unwrap().to_string(), event.clone());
    }
    let ok = &by_subject["jobs/ok"];
    assert_eq!(ok["type"], "skiff.task.succeeded");
    assert_eq!(ok["data"]["phase"], "Succeeded");
    assert_eq!(ok["data"]["exitCode"], 0);
    assert_eq!(ok["data"]["attempts"], 1);
    let bad = &by_subject["bad"];
    assert_eq!(bad["type"], "skiff.task.failed");
    assert_eq!(
        (bad["data"]["reason"].as_str(), bad["data"]["exitCode"].as_i64()),
        (Some("ExitCode"), Some(3))
    );
    assert_ne!(ok["id"], bad["id"]);
    let wrong = &by_subject["wrong"];
    assert_eq!(wrong["type"], "skiff.task.invalid");
    assert!(
        wrong["data"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("retries"),
        "{wrong}"
    );
    // Delivered: the outbox is empty.
    let outbox = ws.root().join(".skiff/notifications");
    let left: Vec<_> = walk(&outbox).into_iter().filter(|p| p.ends_with(".json")).collect();
    assert!(left.is_empty(), "{left:?}");
    // A rerun of finished tasks is no transition: nothing more is sent.
    assert_eq!(ws.controller(&["--once", "--notify", &url]).wait(LONG), Some(1));
    assert_eq!(events(&calls).len(), 3);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn events_wait_in_the_outbox_for_a_receiver_that_is_down_across_a_controller_kill() {
    let ws = Workspace::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    ws.task("late.yaml", "true", "");
    let controller = ws.controller(&["--notify", &url]);
    ws.wait_phase("late", "Succeeded", LONG);
    // Nobody listens: the event waits in the outbox, in the state folder.
    let outbox = ws.root().join(".skiff/notifications");
    ws.wait_until(LONG, "a retried delivery", || {
        ws.controller_log().contains("notification not delivered")
    });
    let kept: Vec<String> = walk(&outbox).into_iter().filter(|p| p.ends_with(".json")).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let kept_id = std::path::Path::new(&kept[0])
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    controller.kill9();
    // The receiver comes up, failing its first two calls; a new controller delivers.
    let calls = receiver(port, 2);
    let controller = ws.controller(&["--notify", &url]);
    ws.wait_until(LONG, "the event delivered", || calls.lock().unwrap().len() >= 3);
    let got = events(&calls);
    for (_, event, _) in &got {
        assert_eq!(event["id"], kept_id.as_str(), "duplicates carry the same id");
        assert_eq!(event["type"], "skiff.task.succeeded");
        assert_eq!(event["subject"], "late");
    }
    ws.wait_until(LONG, "the outbox emptied", || {
        walk(&outbox).into_iter().all(|p| !p.ends_with(".json"))
    });
    let metrics_ok = ws.controller_log().contains("notification delivered");
    assert!(metrics_ok, "{}", ws.controller_log());
    assert_eq!(controller.terminate(), Some(0));
}

#[test]
fn a_notify_url_that_is_not_http_is_a_usage_error() {
    let ws = Workspace::new();
    for bad in ["ftp://example.com/x", "not a url", "file:///tmp/x"] {
        let out = ws.skiff(&[
            "controller",
            "--dir",
            ws.root().to_str().unwrap(),
            "--once",
            "--notify",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--notify"), "{stderr}");
    }
}

#[test]
fn each_ended_run_of_a_scheduled_task_posts_its_own_event() {
    let ws = Workspace::new();
    let port = free_port();
    let calls = receiver(port, 0);
    ws.task("tick.yaml", "true", "  schedule: {cron: '@every 1s'}\n");
    let url = format!("http://127.0.0.1:{port}/hook");
    let controller = ws.controller(&["--notify", &url]);
    ws.wait_until(LONG, "two runs reported", || calls.lock().unwrap().len() >= 2);
    assert_eq!(controller.terminate(), Some(0));
    let got = events(&calls);
    let mut ids = std::collections::BTreeSet::new();
    let mut runs = std::collections::BTreeSet::new();
    for (_, event, _) in &got {
        assert_eq!(event["type"], "skiff.task.succeeded", "{event}");
        assert_eq!(event["subject"], "tick");
        assert!(event["data"]["scheduledAt"].is_string(), "{event}");
        ids.insert(event["id"].as_str().unwrap().to_string());
        runs.insert(event["data"]["run"].as_u64().unwrap());
    }
    assert_eq!(ids.len(), got.len(), "one id per run: {got:?}");
    assert_eq!(runs.len(), got.len(), "each run once: {runs:?}");
}

/// Issue 16's check as written: a receiver that answers 500 to its first 5 calls, six
/// tasks ending at different times (four succeed, two fail), and the controller SIGKILLed
/// once while deliveries are still being retried. Every task's terminal event reaches the
/// receiver with a 2xx at least once, each task's deliveries all carry one id, and the
/// restarted controller mints no new id for an event it had already queued.
#[test]
fn a_receiver_failing_its_first_five_calls_and_a_sigkill_lose_no_event() {
    let ws = Workspace::new();
    let port = free_port();
    let calls = receiver(port, 5);
    let tasks: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    for (i, task) in tasks.iter().enumerate() {
        let script = if i % 3 == 2 {
            format!("sleep 0.{i}; exit 4")
        } else {
            format!("sleep 0.{i}")
        };
        ws.task(&format!("{task}.yaml"), &script, "");
    }
    let url = format!("http://127.0.0.1:{port}/hook");
    let controller = ws.controller(&["--notify", &url]);
    ws.wait_until(LONG, "three refused deliveries", || calls.lock().unwrap().len() >= 3);
    let before_kill = events(&calls).len();
    controller.kill9();
    let controller = ws.controller(&["--notify", &url]);
    // Delivered: a call past the first five was answered 200.
    let delivered = |calls: &Calls| -> std::collections::BTreeSet<String> {
        events(calls)
            .iter()
            .skip(5)
            .map(|(_, event, _)| event["subject"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    ws.wait_until(LONG, "every task's event delivered", || {
        delivered(&calls).len() == tasks.len()
    });
    ws.wait_until(LONG, "the outbox emptied", || {
        walk(&ws.root().join(".skiff/notifications"))
            .into_iter()
            .all(|p| !p.ends_with(".json"))
    });
    assert_eq!(controller.terminate(), Some(0));
    let got = events(&calls);
    assert!(
        got.len() >= 5 + tasks.len(),
        "{} calls, {before_kill} before the kill",
        got.len()
    );
    let mut ids: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for (_, event, _) in &got {
        let subject = event["subject"].as_str().unwrap().to_string();
        let i: usize = subject[1..].parse().unwrap();
        let expected = if i % 3 == 2 {
            "skiff.task.failed"
        } else {
            "skiff.task.succeeded"
        };
        assert_eq!(event["type"], expected, "{event}");
        ids.entry(subject)
            .or_default()
            .insert(event["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.keys().cloned().collect::<Vec<_>>(), tasks);
    for (subject, ids) in &ids {
        assert_eq!(
            ids.len(),
            1,
            "{subject}: every delivery of one transition carries one id: {ids:?}"
        );
    }
    let distinct: std::collections::BTreeSet<_> = ids.values().flatten().collect();
    assert_eq!(distinct.len(), tasks.len(), "each transition its own id");
}
