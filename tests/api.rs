//! The HTTP API and completion by callback event (DESIGN.md §5, §10), on the process
//! runtime: a real controller, real processes calling back with busybox wget.

mod support;

use reqwest::StatusCode;
use std::time::Duration;
use support::{Workspace, free_port};

const LONG: Duration = Duration::from_secs(60);

struct Api {
    ws: Workspace,
    base: String,
    _controller: support::Controller,
    http: reqwest::blocking::Client,
}

fn start(extra: &[&str], setup: impl FnOnce(&Workspace)) -> Api {
    let ws = Workspace::new();
    setup(&ws);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut flags = vec!["--listen", listen.as_str()];
    flags.extend_from_slice(extra);
    let controller = ws.controller(&flags);
    let base = format!("http://{listen}");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    ws.wait_until(LONG, "the API to answer", || {
        http.get(format!("{base}/healthz"))
            .send()
            .is_ok_and(|r| r.status() == StatusCode::OK)
    });
    Api {
        ws,
        base,
        _controller: controller,
        http,
    }
}

/// A busybox wget callback, as DESIGN.md §5 says a container may send it.
fn wget(body: &str) -> String {
    format!("busybox wget -q -O- --post-data '{body}' \"$SKIFF_CALLBACK_URL\"")
}

const EVENT: &str = "  completion: {mode: event, pollInterval: 1s}\n";

#[test]
fn a_wget_callback_becomes_the_result_and_completes_by_event() {
    let api = start(&[], |ws| {
        ws.task(
            "cb.yaml",
            &format!("{}; sleep 30", wget(r#"{"result":{"frames":1}}"#)),
            EVENT,
        );
    });
    api.ws.wait_phase("cb", "Succeeded", LONG);
    let status = api.ws.status("cb").unwrap();
    assert_eq!(status["result"], serde_json::json!({"frames": 1}));
    assert_eq!(status["attempts"][0]["completedBy"], "event");
    assert_eq!(status["attempts"][0]["exitCode"], 0);
    // The status never carries the token.
    let text = std::fs::read_to_string(api.ws.status_path("cb")).unwrap();
    assert!(!text.contains("token"), "{text}");
}

#[test]
fn an_event_can_report_failure_with_an_exit_code_and_message() {
    let api = start(&[], |ws| {
        ws.task("bad.yaml", &wget(r#"{"exitCode":4,"message":"no frames"}"#), EVENT);
    });
    api.ws.wait_phase("bad", "Failed", LONG);
    let status = api.ws.status("bad").unwrap();
    assert_eq!(status["reason"], "ExitCode");
    assert_eq!(status["attempts"][0]["exitCode"], 4);
    assert_eq!(status["attempts"][0]["message"], "no frames");
}

#[test]
fn a_container_that_exits_without_calling_back_fails_exited_without_event() {
    let api = start(&[], |ws| ws.task("quiet.yaml", "exit 0", EVENT));
    api.ws.wait_phase("quiet", "Failed", LONG);
    assert_eq!(api.ws.status("quiet").unwrap()["reason"], "ExitedWithoutEvent");
}

/// A running event-mode task that writes its callback URL where the test can read it.
fn waiting_task(ws: &Workspace) {
    let url_file = ws.root().join("url.txt");
    ws.task(
        "wait.yaml",
        &format!("echo \"$SKIFF_CALLBACK_URL\" > {}; sleep 300", url_file.display()),
        EVENT,
    );
}

/// One decoded query parameter of a URL.
fn query_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {url}"));
    urlencoding::decode(raw).unwrap().into_owned()
}

fn callback_url(api: &Api) -> String {
    let path = api.ws.root().join("url.txt");
    api.ws.wait_until(LONG, "the callback URL", || {
        std::fs::read_to_string(&path).is_ok_and(|s| s.ends_with('\n'))
    });
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[test]
fn callbacks_are_answered_401_409_413_400_and_404_and_change_nothing() {
    let api = start(&[], waiting_task);
    let url = callback_url(&api);
    assert!(url.starts_with(&format!("{}/v1/tasks/wait/events?", api.base)), "{url}");
    api.ws.wait_phase("wait", "Running", LONG);
    let post = |url: &str, body: &str| api.http.post(url).body(body.to_string()).send().unwrap().status();

    let (without_token, _) = url.split_once("&token=").unwrap();
    assert_eq!(post(without_token, ""), StatusCode::UNAUTHORIZED, "missing token");
    let wrong = format!("{without_token}&token=AAAA{}", &url[url.len() - 10..]);
    assert_eq!(post(&wrong, ""), StatusCode::UNAUTHORIZED, "wrong token");

    // A token valid for attempt 2 while attempt 1 runs: a stale (or early) attempt.
    let id = query_param(&url, "id");
    let secret = skiff::callback::CallbackSecret::load_or_create(&api.ws.root().join(".skiff")).unwrap();
    let token = secret.token("wait", 2, 0, &id);
    let stale = skiff::callback::callback_url(&api.base, "wait", 2, 0, &id, &token);
    assert_eq!(post(&stale, ""), StatusCode::CONFLICT);

    assert_eq!(post(&url, &"x".repeat(70 * 1024)), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(post(&url, "{not json"), StatusCode::BAD_REQUEST);
    let unknown = url.replace("/v1/tasks/wait/", "/v1/tasks/nope/");
    assert_eq!(post(&unknown, ""), StatusCode::NOT_FOUND);

    std::thread::sleep(Duration::from_millis(300));
    let after = api.ws.status("wait").unwrap();
    assert_eq!(after["phase"], "Running", "nothing changed");
    assert!(after["attempts"][0]["completedBy"].is_null());

    // The real token still works, once.
    assert_eq!(post(&url, r#"{"result":"ok"}"#), StatusCode::ACCEPTED);
    api.ws.wait_phase("wait", "Succeeded", LONG);
    assert_eq!(post(&url, ""), StatusCode::CONFLICT, "the attempt is over");
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("skiff_callbacks_total{code=\"401\"} 2"), "{metrics}");
    assert!(metrics.contains("skiff_callbacks_total{code=\"202\"} 1"), "{metrics}");
}

#[test]
fn terminate_stops_the_attempt_and_fails_the_task_without_retry() {
    let api = start(&[], |ws| ws.task("long.yaml", "sleep 300", "  retries: 3\n"));
    api.ws.wait_phase("long", "Running", LONG);
    let answer = api
        .http
        .post(format!("{}/v1/tasks/long/terminate", api.base))
        .send()
        .unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    api.ws.wait_phase("long", "Failed", LONG);
    let status = api.ws.status("long").unwrap();
    assert_eq!(status["reason"], "Terminated");
    assert_eq!(status["attempt"], 1);
    assert_eq!(status["attempts"][0]["completedBy"], "terminate");
    let again = api
        .http
        .post(format!("{}/v1/tasks/long/terminate", api.base))
        .send()
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
}

#[test]
fn tasks_health_and_metrics_are_served_and_management_needs_the_bearer_token() {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "s3cret\n").unwrap();
    let token_path = token_file.path().display().to_string();
    let api = start(&["--api-token-file", &token_path], |ws| {
        ws.task("jobs/a.yaml", "true", "");
    });
    api.ws.wait_phase("jobs/a", "Succeeded", LONG);
    let get = |path: &str, token: Option<&str>| {
        let mut request = api.http.get(format!("{}{path}", api.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().unwrap()
    };
    assert_eq!(get("/v1/tasks", None).status(), StatusCode::UNAUTHORIZED);
    assert_eq!(get("/v1/tasks", Some("wrong")).status(), StatusCode::UNAUTHORIZED);
    let tasks: serde_json::Value = get("/v1/tasks", Some("s3cret")).json().unwrap();
    assert_eq!(tasks[0]["task"], "jobs/a");
    let one: serde_json::Value = get("/v1/tasks/jobs%2Fa", Some("s3cret")).json().unwrap();
    assert_eq!(one["phase"], "Succeeded");
    assert_eq!(get("/v1/tasks/nope", Some("s3cret")).status(), StatusCode::NOT_FOUND);
    let health: serde_json::Value = get("/healthz", None).json().unwrap();
    assert_eq!(health["healthy"], true);
    let metrics = get("/metrics", None).text().unwrap();
    for name in [
        "skiff_reconcile_total{result=\"success\"}",
        "skiff_reconcile_time_seconds_bucket",
        "skiff_workqueue_depth",
        "skiff_tasks{phase=\"Succeeded\"} 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
}
