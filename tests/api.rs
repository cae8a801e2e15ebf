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
    // Another task's token says nothing about whether a task exists; a valid one does.
    let unknown = url.replace("/v1/tasks/wait/", "/v1/tasks/nope/");
    assert_eq!(post(&unknown, ""), StatusCode::UNAUTHORIZED);
    let nope = skiff::callback::callback_url(&api.base, "nope", 1, 0, &id, &secret.token("nope", 1, 0, &id));
    assert_eq!(post(&nope, ""), StatusCode::NOT_FOUND);

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
    assert!(metrics.contains("skiff_callbacks_total{code=\"401\"} 3"), "{metrics}");
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

/// Sends one raw HTTP/1.1 request (no client normalises its path) and returns the status
/// code and body.
fn raw_request(base: &str, request_line: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{request_line}\r\nHost: {address}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (code, body)
}

#[test]
fn no_route_or_command_reaches_outside_the_folder_and_refusals_are_json() {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "s3cret\n").unwrap();
    let token_path = token_file.path().display().to_string();
    // The folder is watched one level below a sibling the routes must not reach.
    let api = start(&["--api-token-file", &token_path], |ws| {
        ws.task("wait.yaml", "sleep 300", EVENT);
    });
    let outside = api.ws.root().parent().unwrap().join(format!(
        "outside-{}",
        api.ws.root().file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&outside).unwrap();
    let before = r#"{"apiVersion":"skiff/v1","kind":"ContainerTaskStatus","task":"outman","name":"outman","phase":"Running","updatedAt":"2026-01-01T00:00:00Z"}"#;
    std::fs::write(outside.join("outman.status.json"), before).unwrap();
    let escape = format!("..%2F{}%2Foutman", outside.file_name().unwrap().to_string_lossy());
    let root = api.ws.root().display().to_string();
    let auth = "Authorization: Bearer s3cret\r\n";

    for (line, what) in [
        (
            format!("POST /v1/tasks/{escape}/terminate HTTP/1.1"),
            "encoded ../ terminate",
        ),
        (format!("GET /v1/tasks/{escape} HTTP/1.1"), "encoded ../ get"),
        ("GET /v1/tasks/../../etc/passwd HTTP/1.1".to_string(), "raw ../"),
        ("GET /v1/tasks/%2Fetc%2Fpasswd HTTP/1.1".to_string(), "absolute"),
        ("GET /v1/tasks/a%00b HTTP/1.1".to_string(), "NUL"),
        ("GET /v1/tasks/a%5Cb HTTP/1.1".to_string(), "backslash"),
        ("GET /v1/tasks/a%2F%2Fb HTTP/1.1".to_string(), "empty segment"),
        ("GET /v1/tasks/.skiff%2Fsecret HTTP/1.1".to_string(), ".skiff"),
        (
            "POST /v1/tasks/.skiff%2Fx/terminate HTTP/1.1".to_string(),
            ".skiff terminate",
        ),
        ("GET /v1/tasks/%FF HTTP/1.1".to_string(), "not UTF-8"),
    ] {
        let (code, body) = raw_request(&api.base, &line, auth);
        assert_eq!(code, 400, "{what}: {body}");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|err| panic!("{what}: body not JSON ({err}): {body}"));
        assert!(json["error"].is_string(), "{what}: {body}");
        assert!(!body.contains(&root), "{what}: the body names a path: {body}");
    }
    // A callback for a key outside the folder: refused before any token or file is looked at.
    let (code, body) = raw_request(
        &api.base,
        &format!("POST /v1/tasks/{escape}/events?attempt=1&index=0&id=x&token=AAAA HTTP/1.1"),
        "",
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        std::fs::read_to_string(outside.join("outman.status.json")).unwrap(),
        before,
        "the file outside the folder was not touched"
    );

    // Wrong and missing bearer tokens are told apart.
    let (code, body) = raw_request(&api.base, "GET /v1/tasks HTTP/1.1", "Authorization: Bearer nope\r\n");
    assert_eq!(code, 401);
    assert!(body.contains("wrong token"), "{body}");
    let (code, body) = raw_request(&api.base, "GET /v1/tasks HTTP/1.1", "");
    assert_eq!(code, 401);
    assert!(body.contains("bearer token is required"), "{body}");

    // The callback route: an unknown task with a bad token is 401, not 404 (no probing).
    let (code, _) = raw_request(
        &api.base,
        "POST /v1/tasks/nope/events?attempt=1&index=0&id=x&token=AAAA HTTP/1.1",
        "",
    );
    assert_eq!(code, 401);

    // 413 is JSON; a body that is an array is not an event.
    let url = {
        api.ws.wait_phase("wait", "Running", LONG);
        let status = api.ws.status("wait").unwrap();
        let secret = skiff::callback::CallbackSecret::load_or_create(&api.ws.root().join(".skiff")).unwrap();
        let id = status["attempts"][0]["id"].as_str().expect("an attempt id").to_string();
        let token = secret.token("wait", 1, 0, &id);
        skiff::callback::callback_url(&api.base, "wait", 1, 0, &id, &token)
    };
    let big = api.http.post(&url).body("x".repeat(70 * 1024)).send().unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = big.json().expect("a JSON 413");
    assert!(body["error"].is_string(), "{body}");
    for bad in ["[1,2]", "[0,\"m\",{\"a\":1}]", "null", "7"] {
        let answer = api.http.post(&url).body(bad).send().unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(api.ws.phase("wait").as_deref(), Some("Running"));

    // The command line refuses such keys too, with exit code 2.
    let dir = api.ws.root().display().to_string();
    for args in [
        vec!["describe", "../../x", "--dir", &dir],
        vec!["get", "../x", "--dir", &dir],
        vec!["get", "/etc/passwd", "--dir", &dir],
        vec!["wait", "ok", "a\\b", "--dir", &dir, "--timeout", "1s"],
        vec!["logs", ".skiff/secret", "--dir", &dir],
    ] {
        let out = api.ws.skiff(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("is not a task"), "{args:?}: {stderr}");
    }
}

/// The attempt id (`id=`) and the container of the current attempt of `task`.
fn current_attempt(ws: &Workspace, task: &str) -> (String, String) {
    let status = ws.status(task).unwrap();
    let record = &status["attempts"][status["attempts"].as_array().unwrap().len() - 1];
    (
        record["id"].as_str().expect("an attempt id").to_string(),
        record["container"].as_str().unwrap().to_string(),
    )
}

fn inbox_files(ws: &Workspace) -> Vec<String> {
    std::fs::read_dir(ws.root().join(".skiff/events"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn of_two_hundred_concurrent_callbacks_one_wins_and_a_rerun_is_not_completed_by_the_old_one() {
    let api = start(&[], waiting_task);
    let old_url = callback_url(&api);
    api.ws.wait_phase("wait", "Running", LONG);
    let (old_id, container) = current_attempt(&api.ws, "wait");
    assert_eq!(query_param(&old_url, "id"), old_id);

    let codes: Vec<(usize, StatusCode)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..200)
            .map(|n| {
                let (http, url) = (&api.http, &old_url);
                scope.spawn(move || {
                    let body = format!(r#"{{"result":{{"n":{n}}}}}"#);
                    (n, http.post(url).body(body).send().unwrap().status())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let winners: Vec<usize> = codes
        .iter()
        .filter(|(_, c)| *c == StatusCode::ACCEPTED)
        .map(|(n, _)| *n)
        .collect();
    let others: Vec<StatusCode> = codes
        .iter()
        .map(|(_, c)| *c)
        .filter(|c| *c != StatusCode::ACCEPTED)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one 202: {codes:?}");
    assert!(
        others.iter().all(|c| *c == StatusCode::CONFLICT),
        "the rest 409: {others:?}"
    );
    api.ws.wait_phase("wait", "Succeeded", LONG);
    let status = api.ws.status("wait").unwrap();
    assert_eq!(
        status["result"],
        serde_json::json!({"n": winners[0]}),
        "the 202 is the one kept"
    );
    api.ws
        .wait_until(LONG, "the inbox to empty", || inbox_files(&api.ws).is_empty());

    // An event the old attempt might have left in the inbox (a race lost elsewhere), then
    // the gesture for "run it again".
    let leftover = api.ws.root().join(format!(".skiff/events/{container}@{old_id}.json"));
    std::fs::write(&leftover, r#"{"exitCode":0,"result":"old"}"#).unwrap();
    std::fs::remove_file(api.ws.root().join("url.txt")).unwrap();
    std::fs::remove_file(api.ws.status_path("wait")).unwrap();
    let new_url = callback_url(&api);
    api.ws.wait_phase("wait", "Running", LONG);
    let (new_id, new_container) = current_attempt(&api.ws, "wait");
    assert_eq!(
        new_container, container,
        "a re-run's attempt 1 has the same container name"
    );
    assert_ne!(new_id, old_id);
    assert_ne!(new_url, old_url);
    let old = api
        .http
        .post(&old_url)
        .body(r#"{"result":"late"}"#)
        .send()
        .unwrap()
        .status();
    assert!(
        old == StatusCode::UNAUTHORIZED || old == StatusCode::CONFLICT,
        "the old URL must not complete the new run: {old}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let status = api.ws.status("wait").unwrap();
    assert_eq!(status["phase"], "Running", "{status}");
    assert_eq!(status["attempt"], 1);
    assert!(status["attempts"][0]["completedBy"].is_null(), "{status}");
    assert!(
        !leftover.exists(),
        "the old attempt's event went when the new one began"
    );

    assert_eq!(
        api.http
            .post(&new_url)
            .body(r#"{"result":"new"}"#)
            .send()
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    api.ws.wait_phase("wait", "Succeeded", LONG);
    let status = api.ws.status("wait").unwrap();
    assert_eq!(status["result"], "new");
    let record = &status["attempts"][0];
    let at = |field: &str| serde_json::from_value::<chrono::DateTime<chrono::Utc>>(record[field].clone()).unwrap();
    assert!(at("finishedAt") >= at("startedAt"), "{record}");
}

/// Lets this test process hold thousands of sockets.
fn raise_own_fd_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= needed,
        "this test needs {needed} open files; the hard limit is {hard}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// `count` connections that each send half a request's headers and then nothing.
fn half_header_connections(base: &str, count: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    let address = base.trim_start_matches("http://");
    (0..count)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")
                .unwrap();
            stream
        })
        .collect()
}

/// How many of `streams` the server has closed (EOF or reset) within `wait`.
fn closed_by_server(streams: &mut [std::net::TcpStream], wait: Duration) -> usize {
    use std::io::Read;
    let deadline = std::time::Instant::now() + wait;
    let mut closed = vec![false; streams.len()];
    while std::time::Instant::now() < deadline && closed.iter().any(|c| !c) {
        for (stream, closed) in streams.iter_mut().zip(closed.iter_mut()).filter(|(_, c)| !**c) {
            stream.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 256];
            *closed = match stream.read(&mut buf) {
                Ok(_) => true,
                Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
            };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    closed.iter().filter(|c| **c).count()
}

/// `/healthz` answers promptly, measured.
fn healthz_answers_within(api_base: &str, limit: Duration) -> Duration {
    let http = reqwest::blocking::Client::builder().timeout(limit).build().unwrap();
    let started = std::time::Instant::now();
    let answer = http.get(format!("{api_base}/healthz")).send();
    let took = started.elapsed();
    assert!(
        answer.as_ref().is_ok_and(|a| a.status() == StatusCode::OK),
        "/healthz under idle connections: {answer:?} after {took:?}"
    );
    took
}

#[test]
fn two_thousand_half_header_connections_stop_neither_health_nor_work_and_are_closed() {
    raise_own_fd_limit(2_500);
    let api = start(&[], |_| {});
    let mut idle = half_header_connections(&api.base, 2_000);
    let opened = std::time::Instant::now();
    // One that says nothing at all, and one kept alive after a request: the same timeout.
    let address = api.base.trim_start_matches("http://");
    idle.push(std::net::TcpStream::connect(address).unwrap());
    let mut kept = std::net::TcpStream::connect(address).unwrap();
    {
        use std::io::{Read, Write};
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = [0u8; 4096];
        let n = kept.read(&mut answer).unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer[..n])
        );
    }
    idle.push(kept);
    let took = healthz_answers_within(&api.base, Duration::from_secs(3));
    eprintln!("/healthz under 2000 half-header connections: {took:?}");
    api.ws.task("late.yaml", "true", "");
    api.ws.wait_phase("late", "Succeeded", LONG);
    // hyper's header-read timeout (10 s) closes every one of them.
    let wait = Duration::from_secs(20).saturating_sub(opened.elapsed());
    let closed = closed_by_server(&mut idle, wait);
    eprintln!("closed by the server {:?} after opening: {closed}", opened.elapsed());
    assert_eq!(closed, idle.len(), "half-header connections closed after the timeout");
    healthz_answers_within(&api.base, Duration::from_secs(3));
}

/// The issue's reproduction: the controller under `ulimit -n 1024`, more idle
/// connections than it has descriptors.
#[test]
fn under_ulimit_1024_two_thousand_idle_connections_cannot_take_the_descriptors_work_needs() {
    raise_own_fd_limit(2_500);
    let ws = Workspace::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(ws.root().join(".controller.log")).unwrap();
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 1024 && exec \"$0\" controller --dir \"$1\" --listen \"$2\"")
        .arg(support::SKIFF)
        .arg(ws.root())
        .arg(&listen)
        .env("SKIFF_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _controller = support::Controller { child };
    let base = format!("http://{listen}");
    ws.wait_until(LONG, "the API to answer", || {
        reqwest::blocking::get(format!("{base}/healthz")).is_ok_and(|r| r.status() == StatusCode::OK)
    });
    let _idle = half_header_connections(&base, 2_000);
    let took = healthz_answers_within(&base, Duration::from_secs(3));
    eprintln!("/healthz with 2000 idle connections under ulimit -n 1024: {took:?}");
    for n in 0..20 {
        ws.task(&format!("t{n}.yaml"), "cat /dev/null", "");
    }
    for n in 0..20 {
        ws.wait_phase(&format!("t{n}"), "Succeeded", LONG);
    }
    assert!(
        ws.controller_log().contains("api_connections=256"),
        "the API's share was taken from the limit"
    );
}
