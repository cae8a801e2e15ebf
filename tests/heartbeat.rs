//! Heartbeats and progress (`spec.heartbeatTimeout`, DESIGN.md §12) end to end on the
//! process runtime: real controllers, real processes beating with busybox wget.

mod support;

use reqwest::StatusCode;
use std::time::{Duration, Instant, SystemTime};
use support::{DOCKER_IMAGE, Workspace, docker_or_skip, free_port, skiff_containers};

const LONG: Duration = Duration::from_secs(60);

/// A shell function that POSTs one heartbeat, as a container may send it.
const BEAT: &str = "beat() { busybox wget -q -O- --post-data \"$1\" \"$SKIFF_HEARTBEAT_URL\" >/dev/null; }";

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn wait_healthy(ws: &Workspace, base: &str) {
    let http = http();
    ws.wait_until(LONG, "the API to answer", || {
        http.get(format!("{base}/healthz"))
            .send()
            .is_ok_and(|r| r.status() == StatusCode::OK)
    });
}

#[test]
fn a_task_that_beats_twice_then_hangs_fails_heartbeat_timeout_in_time_and_showed_its_progress() {
    let ws = Workspace::new();
    let marks = ws.root().join("marks");
    std::fs::create_dir(&marks).unwrap();
    ws.task(
        "render.yaml",
        &format!(
            "{BEAT}; beat '{{\"progress\":0.25,\"message\":\"frame 1/4\"}}'; sleep 1; beat '{{\"progress\":0.5,\"message\":\"frame 2/4\"}}'; touch {}/beat2-$SKIFF_ATTEMPT; sleep 300",
            marks.display()
        ),
        "  heartbeatTimeout: 3s\n  retries: 1\n  backoff: 1s\n",
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let _controller = ws.controller(&["--listen", &listen]);

    // While attempt 1 runs, its progress reaches the status, `get` and `describe`.
    ws.wait_until(LONG, "progress 0.5 in the status while running", || {
        ws.status("render")
            .is_some_and(|s| s["phase"] == "Running" && s["progress"] == 0.5)
    });
    let status = ws.status("render").unwrap();
    assert_eq!(status["progressMessage"], "frame 2/4");
    let dir = ws.root().to_str().unwrap();
    let get = ws.skiff(&["get", "--dir", dir]);
    let table = String::from_utf8_lossy(&get.stdout);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert!(header.contains(&"PROGRESS"), "{table}");
    assert!(table.contains("50%"), "{table}");
    let describe = ws.skiff(&["describe", "render", "--dir", dir]);
    let text = String::from_utf8_lossy(&describe.stdout);
    assert!(text.contains("Progress:     50%  frame 2/4"), "{text}");

    // Each attempt is failed for its silence within the timeout plus 2 s of its last beat.
    for attempt in 1..=2 {
        let mark = marks.join(format!("beat2-{attempt}"));
        ws.wait_until(LONG, &format!("attempt {attempt}'s second beat"), || mark.exists());
        let last_beat = std::fs::metadata(&mark).unwrap().modified().unwrap();
        ws.wait_until(LONG, &format!("attempt {attempt} to fail HeartbeatTimeout"), || {
            ws.status("render").is_some_and(|s| {
                s["attempts"]
                    .as_array()
                    .and_then(|a| a.get(attempt - 1))
                    .is_some_and(|a| a["reason"] == "HeartbeatTimeout")
            })
        });
        let failed_after = SystemTime::now().duration_since(last_beat).unwrap();
        assert!(
            failed_after <= Duration::from_secs(5),
            "attempt {attempt} failed {failed_after:?} after its last heartbeat (timeout 3s)"
        );
    }
    ws.wait_phase("render", "Failed", LONG);
    let status = ws.status("render").unwrap();
    assert_eq!(status["reason"], "HeartbeatTimeout");
    let attempts = status["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "retried once, as any failure: {status}");
    for a in attempts {
        assert_eq!(a["completedBy"], "deadline");
        assert!(a["message"].as_str().unwrap().contains("no heartbeat for"), "{a}");
    }
    assert_eq!(status["progress"], 0.5, "the last progress stays");
    assert_eq!(ws.live_process_containers(), 0, "the silent containers were stopped");
    // The URL is a secret: it never reaches the status.
    let text = std::fs::read_to_string(ws.status_path("render")).unwrap();
    assert!(!text.contains("token"), "{text}");
}

#[test]
fn heartbeats_are_answered_401_409_and_400_with_the_fix_and_only_the_live_attempt_counts() {
    let ws = Workspace::new();
    let url_file = ws.root().join("url.txt");
    ws.task(
        "wait.yaml",
        &format!("echo \"$SKIFF_HEARTBEAT_URL\" > {}; sleep 300", url_file.display()),
        "  heartbeatTimeout: 60s\n",
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let _controller = ws.controller(&["--listen", &listen]);
    wait_healthy(&ws, &base);
    ws.wait_until(LONG, "the heartbeat URL", || {
        std::fs::read_to_string(&url_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let url = std::fs::read_to_string(&url_file).unwrap().trim().to_string();
    assert!(url.starts_with(&format!("{base}/v1/tasks/wait/heartbeat?")), "{url}");
    ws.wait_phase("wait", "Running", LONG);
    let http = http();
    let post = |url: &str, body: &str| {
        let answer = http.post(url).body(body.to_string()).send().unwrap();
        let code = answer.status();
        (code, answer.text().unwrap_or_default())
    };

    let (without_token, _) = url.split_once("&token=").unwrap();
    assert_eq!(post(without_token, "").0, StatusCode::UNAUTHORIZED);
    let wrong = format!("{without_token}&token=AAAA{}", &url[url.len() - 10..]);
    assert_eq!(post(&wrong, "").0, StatusCode::UNAUTHORIZED);
    // A well-signed URL for another attempt (an old one's, or a re-run's) is stale.
    let id = url
        .split('&')
        .find_map(|p| p.strip_prefix("id="))
        .map(|id| urlencoding::decode(id).unwrap().into_owned())
        .unwrap();
    let secret = skiff::callback::CallbackSecret::load_or_create(&ws.root().join(".skiff")).unwrap();
    let other = skiff::heartbeat::heartbeat_url(&base, "wait", 2, 0, &id, &secret.token("wait", 2, 0, &id));
    let (code, body) = post(&other, "");
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("stale"), "{body}");

    for (bad, says) in [
        (r#"{"progress": 1.5}"#.to_string(), "outside 0..1"),
        (r#"{"progress": -1}"#.to_string(), "outside 0..1"),
        ("{not json".to_string(), "not JSON"),
        (r#"{"percent": 50}"#.to_string(), "not a heartbeat"),
        (
            format!(r#"{{"message": "{}"}}"#, "x".repeat(5000)),
            "more than a heartbeat's",
        ),
        ("x".repeat(70 * 1024), "too large for a heartbeat"),
    ] {
        let (code, body) = post(&url, &bad);
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains(says) && body.contains("progress"), "{says}: {body}");
    }
    // Nothing was taken from them.
    std::thread::sleep(Duration::from_millis(1500));
    let status = ws.status("wait").unwrap();
    assert!(status["progress"].is_null(), "{status}");

    let (code, body) = post(&url, r#"{"progress": 0.42, "message": "frame 420/1000"}"#);
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(post(&url, "").0, StatusCode::ACCEPTED, "an empty beat says alive");
    let sent = Instant::now();
    ws.wait_until(LONG, "the progress in the status", || {
        ws.status("wait").is_some_and(|s| s["progress"] == 0.42)
    });
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "progress took {:?} to reach the status",
        sent.elapsed()
    );
    assert_eq!(ws.status("wait").unwrap()["progressMessage"], "frame 420/1000");

    // The attempt over, its URL is stale.
    let answer = http.post(format!("{base}/v1/tasks/wait/terminate")).send().unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    ws.wait_phase("wait", "Failed", LONG);
    assert_eq!(post(&url, "").0, StatusCode::CONFLICT, "a finished attempt's heartbeat");

    let metrics = http.get(format!("{base}/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("skiff_heartbeats_total{code=\"202\"} 2"), "{metrics}");
    assert!(metrics.contains("skiff_heartbeats_total{code=\"400\"} 6"), "{metrics}");
}

#[test]
fn a_controller_restart_longer_than_the_timeout_fails_no_healthy_attempt() {
    let ws = Workspace::new();
    // Beats every 2 s for 16 s, then succeeds; a failed beat (no controller) is ignored.
    // The restarted controller first looks at the attempt long after its start and, most
    // likely, before its next beat: counted from either, it would fail at once.
    ws.task(
        "steady.yaml",
        &format!("{BEAT}; i=0; while [ $i -lt 8 ]; do beat '{{\"progress\":0.1}}' || true; sleep 2; i=$((i+1)); done"),
        "  heartbeatTimeout: 4s\n",
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let first = ws.controller(&["--listen", &listen]);
    ws.wait_until(LONG, "a first progress", || {
        ws.status("steady").is_some_and(|s| s["progress"] == 0.1)
    });
    first.kill9();
    // Down for longer than the timeout: the beats sent meanwhile are lost.
    std::thread::sleep(Duration::from_secs(5));
    let _second = ws.controller(&["--listen", &listen]);
    ws.wait_until(LONG, "the task to finish", || {
        ws.phase("steady").is_some_and(|p| p == "Succeeded" || p == "Failed")
    });
    let status = ws.status("steady").unwrap();
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["attempt"], 1, "{status}");
}

#[test]
fn on_docker_beats_reach_the_controller_over_the_host_network_and_silence_fails_the_attempt() {
    if !docker_or_skip("on_docker_beats_reach_the_controller") {
        return;
    }
    let ws = Workspace::new();
    let script = format!("{BEAT}; beat '{{\"progress\":0.5,\"message\":\"half\"}}'; sleep 300").replace('\'', "''");
    ws.write(
        "boxed.yaml",
        &format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: docker\n  image: {DOCKER_IMAGE}\n  command: [sh, -c, '{script}']\n  heartbeatTimeout: 3s\n"
        ),
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let _controller = ws.controller(&["--listen", &listen, "--docker-network", "host"]);
    ws.wait_until(LONG, "the container's progress in the status", || {
        ws.status("boxed")
            .is_some_and(|s| s["phase"] == "Running" && s["progress"] == 0.5)
    });
    ws.wait_phase("boxed", "Failed", LONG);
    let status = ws.status("boxed").unwrap();
    assert_eq!(status["reason"], "HeartbeatTimeout", "{status}");
    assert_eq!(status["progressMessage"], "half");
    ws.wait_until(LONG, "no container left", || {
        skiff_containers(&ws.root().join(".skiff")).is_empty()
    });
}
