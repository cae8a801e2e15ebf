//! The controller on a real Docker Engine: poll and event completion side by side.

mod support;

use std::time::Duration;
use support::{DOCKER_IMAGE, Workspace, docker_or_skip, free_port, skiff_containers};

const LONG: Duration = Duration::from_secs(180);

#[test]
fn thirty_docker_tasks_in_poll_and_event_modes_all_succeed_and_leave_no_container() {
    if !docker_or_skip("thirty_docker_tasks") {
        return;
    }
    let ws = Workspace::new();
    for i in 0..30 {
        let (script, extra) = if i % 2 == 0 {
            ("echo poll-$SKIFF_ATTEMPT; sleep 0.2".to_string(), String::new())
        } else {
            (
                format!(
                    "sleep 0.2; wget -q -O- --post-data '{{\"result\":{{\"frames\":{i}}}}}' \"$SKIFF_CALLBACK_URL\"; sleep 5"
                ),
                "  completion: {mode: event, pollInterval: 2s}\n".to_string(),
            )
        };
        ws.write(
            &format!("d{i:02}.yaml"),
            &format!(
                "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: docker\n  image: {DOCKER_IMAGE}\n  command: [sh, -c, '{}']\n{extra}",
                script.replace('\'', "''")
            ),
        );
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let code = ws
        .controller(&[
            "--once",
            "--listen",
            &listen,
            "--docker-network",
            "host",
            "--max-running",
            "8",
        ])
        .wait(LONG);
    assert_eq!(code, Some(0), "all Succeeded\n{}", ws.controller_log());
    for i in 0..30 {
        let status = ws.status(&format!("d{i:02}")).unwrap();
        assert_eq!(status["phase"], "Succeeded", "d{i:02}: {status:#}");
        let attempt = &status["attempts"][0];
        assert_eq!(attempt["runtime"], "docker");
        if i % 2 == 0 {
            assert_eq!(
                attempt["completedBy"], "engine",
                "d{i:02}: exits are seen on the event stream"
            );
            assert!(
                status["logTail"].as_str().unwrap().contains("poll-1"),
                "logs read before removal"
            );
        } else {
            assert_eq!(attempt["completedBy"], "event");
            assert_eq!(status["result"]["frames"], i);
        }
    }
    assert!(
        skiff_containers(&ws.root().join(".skiff")).is_empty(),
        "no container left"
    );
    // `skiff logs` reads the copy saved at deletion.
    let out = ws.skiff(&["logs", "d00", "--dir", &ws.root().display().to_string()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("poll-1"));
}

#[test]
fn an_image_that_cannot_be_had_fails_the_attempt_with_image_pull_failed() {
    if !docker_or_skip("an_image_that_cannot_be_had") {
        return;
    }
    let ws = Workspace::new();
    ws.write(
        "nope.yaml",
        "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: docker\n  image: 127.0.0.1:1/skiff/nope:1\n  command: [true]\n",
    );
    assert_eq!(ws.controller(&["--once"]).wait(LONG), Some(1));
    let status = ws.status("nope").unwrap();
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["reason"], "ImagePullFailed", "{status:#}");
    assert!(skiff_containers(&ws.root().join(".skiff")).is_empty());
}

#[test]
fn containers_of_tasks_that_no_longer_exist_are_removed_at_start_up() {
    if !docker_or_skip("containers_of_tasks_that_no_longer_exist") {
        return;
    }
    let ws = Workspace::new();
    let state = ws.root().join(".skiff");
    std::fs::create_dir_all(&state).unwrap();
    let canonical = std::fs::canonicalize(&state).unwrap();
    let name = format!("skiff-ghost-{}-1", std::process::id());
    let created = std::process::Command::new("docker")
        .args(["create", "--name", &name, "--label", "skiff.task=ghost", "--label"])
        .arg(format!("skiff.state-dir={}", canonical.display()))
        .args([DOCKER_IMAGE, "true"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    // A task that does exist keeps its container.
    ws.write(
        "alive.yaml",
        &format!("apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: docker\n  image: {DOCKER_IMAGE}\n  command: [sleep, '300']\n  network: none\n"),
    );
    let _controller = ws.controller(&[]);
    ws.wait_until(LONG, "the orphan to be removed", || {
        !skiff_containers(&state).contains(&name)
    });
    ws.wait_phase("alive", "Running", LONG);
    let left = skiff_containers(&state);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("skiff-alive-"), "{left:?}");
    // Cancel it, which also leaves the engine clean.
    std::fs::remove_file(ws.root().join("alive.yaml")).unwrap();
    ws.wait_until(LONG, "the cancelled task's container to go", || {
        skiff_containers(&state).is_empty()
    });
}

#[test]
fn on_docker_a_silent_exit_fails_and_a_wrong_token_changes_nothing() {
    if !docker_or_skip("on_docker_a_silent_exit_fails") {
        return;
    }
    let ws = Workspace::new();
    let event = "  completion: {mode: event, pollInterval: 2s}\n";
    let manifest = |script: &str| {
        format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: docker\n  image: {DOCKER_IMAGE}\n  command: [sh, -c, '{script}']\n{event}"
        )
    };
    ws.write("quiet.yaml", &manifest("exit 0"));
    // Prints its callback URL to its log, then waits to be told.
    ws.write("waits.yaml", &manifest("echo \"url=$SKIFF_CALLBACK_URL\"; sleep 60"));
    let listen = format!("127.0.0.1:{}", free_port());
    let _controller = ws.controller(&["--listen", &listen, "--docker-network", "host"]);
    ws.wait_phase("quiet", "Failed", LONG);
    assert_eq!(ws.status("quiet").unwrap()["reason"], "ExitedWithoutEvent");

    ws.wait_phase("waits", "Running", LONG);
    let dir = ws.root().display().to_string();
    let mut url = String::new();
    ws.wait_until(LONG, "the container's callback URL in its log", || {
        let logs = String::from_utf8_lossy(&ws.skiff(&["logs", "waits", "--dir", &dir]).stdout).to_string();
        url = logs
            .lines()
            .find_map(|l| l.strip_prefix("url="))
            .unwrap_or("")
            .trim()
            .to_string();
        !url.is_empty()
    });
    let http = reqwest::blocking::Client::new();
    let (base, _) = url.split_once("&token=").unwrap();
    let wrong = http.post(format!("{base}&token=AAAAAAAA")).send().unwrap();
    assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ws.phase("waits").as_deref(), Some("Running"), "nothing changed");
    let right = http.post(&url).body(r#"{"result":{"ok":true}}"#).send().unwrap();
    assert_eq!(right.status(), reqwest::StatusCode::ACCEPTED);
    ws.wait_phase("waits", "Succeeded", LONG);
    assert_eq!(ws.status("waits").unwrap()["result"]["ok"], true);
    assert!(skiff_containers(&ws.root().join(".skiff")).is_empty());
}
