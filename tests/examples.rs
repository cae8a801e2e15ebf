//! The examples, run as their READMEs say, on the process and docker runtimes: the two
//! workloads skiff grew from (a thumbnail polled to completion; five workers calling back
//! and a merge fanning in), and callbacks that ride out a controller killed again and
//! again (issue 18, items 4 and 5).

mod support;

#[path = "support/arm_sim.rs"]
mod arm_sim;

use arm_sim::{ArmSim, SimConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{DOCKER_IMAGE, Workspace, docker_or_skip, skiff_containers};

const LONG: Duration = Duration::from_secs(180);

fn example(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(rel)
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn yaml(path: &Path) -> Value {
    yaml_serde::from_str(&text(path)).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn dir(ws: &Workspace) -> String {
    ws.root().to_str().expect("utf-8 path").to_string()
}

/// What the thumbnail must be: a PGM image of the clip's middle frame, computed here
/// from the YUV4MPEG2 file independently of the example's script.
fn expected_thumbnail() -> Vec<u8> {
    let clip = std::fs::read(example("thumbnail/process/clip.y4m")).unwrap();
    let header_end = clip.iter().position(|b| *b == b'\n').unwrap();
    let header = String::from_utf8_lossy(&clip[..header_end]).to_string();
    let field = |tag: char| -> usize {
        header
            .split(' ')
            .find_map(|f| f.strip_prefix(tag))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let (w, h) = (field('W'), field('H'));
    let mut frames = Vec::new();
    let mut at = header_end + 1;
    while at < clip.len() {
        assert_eq!(&clip[at..at + 6], b"FRAME\n", "a frame header at byte {at}");
        frames.push(&clip[at + 6..at + 6 + w * h]);
        at += 6 + w * h;
    }
    assert_eq!(frames.len(), 24);
    let mut pgm = format!("P5\n{w} {h}\n255\n").into_bytes();
    pgm.extend_from_slice(frames[frames.len() / 2]);
    pgm
}

/// What both runtimes' thumbnail statuses show: one attempt that exited 0, seen by the
/// runtime (`engine`) or the poll, and the kept log with the frame drawn in text.
fn check_thumbnail_status(ws: &Workspace, runtime: &str) {
    let status = ws.status("thumbnail").expect("a status");
    assert_eq!(status["phase"], "Succeeded", "{status:#}");
    assert_eq!(status["reason"], "Completed", "{status:#}");
    let attempts = status["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{status:#}");
    let attempt = &attempts[0];
    assert_eq!(attempt["runtime"], runtime);
    assert_eq!(attempt["exitCode"], 0);
    assert!(
        attempt["completedBy"] == "engine" || attempt["completedBy"] == "poll",
        "{attempt}"
    );
    let container = attempt["container"].as_str().unwrap();
    assert!(container.starts_with("skiff-thumbnail-"), "{container}");
    let tail = status["logTail"].as_str().unwrap();
    assert!(tail.contains("clip.y4m: 32x24, 24 frames; keeping frame 12"), "{tail}");
    assert!(tail.contains("thumbnail.pgm: 781 bytes"), "{tail}");
    assert!(tail.contains("@@@@@@"), "the frame drawn in the log: {tail}");
    // The log is kept after the container is gone, and `skiff logs` prints it.
    let kept = ws.root().join(format!(".skiff/logs/{container}.log"));
    assert!(text(&kept).contains("keeping frame 12"));
    let logs = ws.skiff(&["logs", "thumbnail", "--dir", &dir(ws)]);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    assert!(String::from_utf8_lossy(&logs.stdout).contains("keeping frame 12"));
}

#[test]
fn the_thumbnail_example_on_process_writes_the_middle_frame_beside_its_manifest() {
    let ws = Workspace::new();
    ws.copy_example("thumbnail/process", "busybox");
    // The README's command.
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    check_thumbnail_status(&ws, "process");
    let thumbnail = std::fs::read(ws.root().join("thumbnail.pgm")).expect("the thumbnail");
    assert_eq!(thumbnail, expected_thumbnail(), "the clip's middle frame as a PGM");
    assert_eq!(ws.live_process_containers(), 0, "the container is deleted");
}

#[test]
fn the_thumbnail_example_on_docker_reads_and_writes_a_mounted_host_folder() {
    if !docker_or_skip("the_thumbnail_example_on_docker") {
        return;
    }
    let ws = Workspace::new();
    ws.copy_example("thumbnail/docker", DOCKER_IMAGE);
    // The README's /tmp/skiff-thumbnail, made this test's own.
    let media = ws.root().join("media");
    std::fs::create_dir(&media).unwrap();
    std::fs::copy(example("thumbnail/process/clip.y4m"), media.join("clip.y4m")).unwrap();
    let manifest = text(&ws.root().join("thumbnail.yaml"));
    assert!(manifest.contains("hostPath: /tmp/skiff-thumbnail"), "{manifest}");
    ws.write(
        "thumbnail.yaml",
        &manifest.replace("/tmp/skiff-thumbnail", media.to_str().unwrap()),
    );
    let code = ws
        .controller(&["--once", "--allow-host-path", media.to_str().unwrap()])
        .wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    check_thumbnail_status(&ws, "docker");
    let thumbnail = std::fs::read(media.join("thumbnail.pgm")).expect("the thumbnail");
    assert_eq!(thumbnail, expected_thumbnail(), "the clip's middle frame as a PGM");
    assert!(
        skiff_containers(&ws.root().join(".skiff")).is_empty(),
        "the container is deleted"
    );
}

#[test]
fn the_thumbnail_example_without_its_host_folder_allowed_is_invalid_and_says_the_flag() {
    let ws = Workspace::new();
    ws.copy_example("thumbnail/docker", DOCKER_IMAGE);
    // Judged before any container: no engine needed.
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    let status = ws.status("thumbnail").unwrap();
    assert_eq!(status["phase"], "Invalid", "{status:#}");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("--allow-host-path /tmp/skiff-thumbnail"), "{message}");
}

#[test]
fn the_two_thumbnail_manifests_run_the_same_script() {
    let process = yaml(&example("thumbnail/process/thumbnail.yaml"));
    let docker = yaml(&example("thumbnail/docker/thumbnail.yaml"));
    assert_eq!(process["spec"]["command"], docker["spec"]["command"]);
    assert_eq!(process["spec"]["args"], docker["spec"]["args"]);
    assert_eq!(process["spec"]["completion"], docker["spec"]["completion"]);
    assert_eq!(docker["spec"]["workingDir"], "/media");
    // ACI has no workingDir: the same script after a `cd` into the share.
    let aci = yaml(&example("thumbnail/aci/thumbnail.yaml"));
    assert_eq!(process["spec"]["command"], aci["spec"]["command"]);
    let aci_script = aci["spec"]["args"][0].as_str().unwrap();
    assert_eq!(
        aci_script.strip_prefix("cd /media\n"),
        process["spec"]["args"][0].as_str(),
        "the aci script is the process one after `cd /media`"
    );
    assert_eq!(process["spec"]["completion"], aci["spec"]["completion"]);
    assert_eq!(aci["spec"]["volumes"][0]["mountPath"], "/media");
}

/// Workload 1 as the story ran it: on the aci runtime (the ARM simulator running the
/// real script, the Azure File share a host folder), polled to completion, its logs
/// read before the group is deleted; the storage key never lands in a status.
#[tokio::test(flavor = "multi_thread")]
async fn the_thumbnail_example_on_aci_reads_and_writes_its_file_share() {
    arm_sim::identity();
    let run = tempfile::tempdir().unwrap();
    let share = run.path().join("shares/media");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::copy(example("thumbnail/process/clip.y4m"), share.join("clip.y4m")).unwrap();
    let sim = ArmSim::start(SimConfig {
        run_commands_in: Some(run.path().to_path_buf()),
        ..SimConfig::default()
    })
    .await;
    let ws = Workspace::new();
    ws.copy_example("thumbnail/aci", "busybox");
    const KEY: &str = "c2tpZmYtbWVkaWEta2V5LW5ldmVyLWluLWEtc3RhdHVz";
    let log = std::fs::File::create(ws.root().join(".controller.log")).unwrap();
    let child = std::process::Command::new(support::SKIFF)
        .args(["controller", "--dir", &dir(&ws)])
        .args(sim.controller_flags(&["--once"]))
        .env("SKIFF_MEDIA_KEY", KEY)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start skiff controller");
    let controller = support::Controller { child };
    let code = tokio::task::spawn_blocking(move || controller.wait(LONG))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    check_thumbnail_status(&ws, "aci");
    let thumbnail = std::fs::read(share.join("thumbnail.pgm")).expect("the thumbnail on the share");
    assert_eq!(thumbnail, expected_thumbnail(), "the clip's middle frame as a PGM");
    let stats = sim.stats();
    assert_eq!(stats.created.len(), 1);
    assert!(sim.live().is_empty(), "the group is deleted: {:?}", sim.live());
    let status = text(&ws.status_path("thumbnail"));
    assert!(!status.contains(KEY), "the storage key is in the status");
    assert!(!ws.controller_log().contains(KEY), "the storage key is in the log");
}

fn check_fan_out(ws: &Workspace, runtime: &str) {
    let workers = ws.status("workers").expect("workers' status");
    assert_eq!(workers["phase"], "Succeeded", "{workers:#}");
    let lanes = workers["indexes"].as_array().unwrap();
    assert_eq!(lanes.len(), 5);
    for (i, lane) in lanes.iter().enumerate() {
        assert_eq!(lane["phase"], "Succeeded", "{lane}");
        assert_eq!(lane["result"], serde_json::json!({"index": i, "square": i * i}));
    }
    for attempt in workers["attempts"].as_array().unwrap() {
        assert_eq!(attempt["runtime"], runtime, "{attempt}");
        assert_eq!(attempt["completedBy"], "event", "each worker called back: {attempt}");
    }
    let merge = ws.status("merge").expect("merge's status");
    assert_eq!(merge["phase"], "Succeeded", "{merge:#}");
    assert_eq!(merge["attempts"][0]["completedBy"], "event", "{merge:#}");
    assert_eq!(merge["result"]["workers"], 5);
    assert_eq!(merge["result"]["sumOfSquares"], 30);
    assert_eq!(merge["result"]["merged"], workers["result"]);
    let indexes: Vec<u64> = workers["result"]
        .as_array()
        .expect("the fan-out's result lists its indexes' results")
        .iter()
        .map(|r| r["index"].as_u64().expect("an index"))
        .collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4], "in index order");
}

#[test]
fn the_fan_out_example_on_process_completes_by_callback_and_fans_in() {
    let ws = Workspace::new();
    ws.copy_example("fan-out", "busybox");
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    check_fan_out(&ws, "process");
    assert_eq!(ws.live_process_containers(), 0);
}

#[test]
fn the_fan_out_example_on_docker_completes_by_callback_and_fans_in() {
    if !docker_or_skip("the_fan_out_example_on_docker_by_callback") {
        return;
    }
    let ws = Workspace::new();
    ws.copy_example("fan-out", DOCKER_IMAGE);
    let code = ws
        .controller(&["--once", "--runtime", "docker", "--docker-network", "host"])
        .wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    check_fan_out(&ws, "docker");
    assert!(skiff_containers(&ws.root().join(".skiff")).is_empty());
}

/// The fan-out example on the aci runtime, against the ARM simulator running the
/// example's real scripts as host processes (the callbacks take the curl branch: no
/// `SKIFF_BIN` on ACI): six container groups, each created once, all deleted.
#[tokio::test(flavor = "multi_thread")]
async fn the_fan_out_example_on_aci_completes_by_callback_and_fans_in() {
    arm_sim::identity();
    let run = tempfile::tempdir().unwrap();
    let sim = ArmSim::start(SimConfig {
        run_commands_in: Some(run.path().to_path_buf()),
        ..SimConfig::default()
    })
    .await;
    let ws = Workspace::new();
    ws.copy_example("fan-out", "busybox");
    let listen = format!("127.0.0.1:{}", support::free_port());
    let callback = format!("http://{listen}");
    let flags = sim.controller_flags(&["--once", "--listen", &listen, "--callback-url", &callback]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ws.controller(&flags);
    let code = tokio::task::spawn_blocking(move || controller.wait(LONG))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    check_fan_out(&ws, "aci");
    let stats = sim.stats();
    assert_eq!(stats.created.len(), 6, "five workers and the merge");
    for (name, creates) in &stats.created_per_name {
        assert_eq!(*creates, 1, "{name} was created {creates} times");
    }
    assert_eq!(
        stats.callbacks.len(),
        0,
        "the real scripts called back, not the tiny shell"
    );
    assert!(sim.live().is_empty(), "every group deleted: {:?}", sim.live());
    let merge = ws.status("merge").unwrap();
    let tail = merge["logTail"].as_str().unwrap_or_default();
    assert!(
        tail.contains("sum of squares: 30"),
        "the logs were read before the delete: {tail}"
    );
}

/// The README's first command: `controller --dir examples/quickstart --once`.
#[test]
fn the_quickstart_example_runs_every_task_to_success() {
    let ws = Workspace::new();
    ws.copy_example("quickstart", "busybox");
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    let hello = ws.status("hello").unwrap();
    assert_eq!(hello["phase"], "Succeeded", "{hello:#}");
    assert!(
        hello["logTail"]
            .as_str()
            .unwrap()
            .contains("hello from hello, attempt 1")
    );
    let count = ws.status("jobs/count").unwrap();
    assert_eq!(count["phase"], "Succeeded", "{count:#}");
    assert_eq!(count["logTail"], "line 1\nline 2\nline 3\n");
    let flaky = ws.status("jobs/flaky").unwrap();
    assert_eq!(flaky["phase"], "Succeeded", "{flaky:#}");
    assert_eq!(
        flaky["attempts"].as_array().unwrap().len(),
        2,
        "failed once, then retried"
    );
    assert_eq!(flaky["attempts"][0]["exitCode"], 1);
}

#[test]
fn the_callback_example_reports_its_result() {
    let ws = Workspace::new();
    ws.copy_example("callback", "busybox");
    let code = ws.controller(&["--once"]).wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    let status = ws.status("frames").unwrap();
    assert_eq!(status["phase"], "Succeeded", "{status:#}");
    assert_eq!(status["attempts"][0]["completedBy"], "event");
    assert_eq!(status["result"], serde_json::json!({"frames": 24}));
}

/// Every callback in the examples and the README retries: a single `wget`/`curl` that
/// hits a controller restart fails its task (`ExitedWithoutEvent`).
#[test]
fn every_documented_callback_retries() {
    let mut files = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")];
    for entry in walk(&example("")) {
        if entry.extension().is_some_and(|e| e == "yaml" || e == "md") {
            files.push(entry);
        }
    }
    let mut callbacks = 0;
    for file in files {
        let text = text(&file);
        let markdown = file.extension().is_some_and(|e| e == "md");
        let mut in_code = !markdown;
        for (n, line) in text.lines().enumerate() {
            if markdown && line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            // Commands only: code blocks of the READMEs, the manifests' lines but comments.
            if !in_code || line.trim_start().starts_with('#') || !line.contains("SKIFF_CALLBACK_URL") {
                continue;
            }
            let line = line.trim();
            let at = format!("{}:{}: {line}", file.display(), n + 1);
            if line.contains("wget") {
                callbacks += 1;
                assert!(line.starts_with("until "), "a wget callback not in a retry loop: {at}");
            } else if line.starts_with("curl") || line.starts_with("-d ") || line.contains("curl -") {
                callbacks += 1;
                let command = text.lines().nth(n.saturating_sub(1)).unwrap_or_default().to_string() + line;
                assert!(
                    command.contains("--retry 30 --retry-all-errors --retry-delay 1"),
                    "a curl callback without retries: {at}"
                );
            }
        }
    }
    assert!(callbacks >= 6, "found only {callbacks} callbacks");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn each_example_has_a_readme_with_its_exact_commands() {
    for (readme, commands) in [
        (
            "thumbnail/README.md",
            &[
                "skiff controller --dir examples/thumbnail/process --once",
                "skiff controller --dir examples/thumbnail/docker --allow-host-path /tmp/skiff-thumbnail --once",
                "skiff controller --dir examples/thumbnail/aci --aci-resource-group rg-skiff --aci-location westus2 --once",
            ][..],
        ),
        (
            "fan-out/README.md",
            &[
                "skiff controller --dir examples/fan-out --once",
                "skiff controller --dir examples/fan-out --once --runtime docker --docker-network host",
            ][..],
        ),
    ] {
        let text = text(&example(readme));
        for command in commands {
            assert!(text.contains(command), "{readme} lacks `{command}`");
        }
        assert!(text.contains("status.json"), "{readme} says what the statuses show");
    }
}

/// The ledger: one line "<task> <attempt>" per container start.
fn assert_no_attempt_ran_twice(lines: Vec<String>, tasks: usize) {
    let all = lines.len();
    let mut unique = lines.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all, "an attempt ran twice: {lines:?}");
    assert!(all >= tasks, "every task ran: {lines:?}");
}

/// SIGKILLs the controller `kills` times while its tasks run and call back, then lets a
/// `--once` controller finish them. Without `--listen`, a restarted controller takes the
/// port of the last one again, so the callback URLs the containers hold keep working.
fn kill_and_restart(ws: &Workspace, flags: &[&str], kills: usize, up: Duration) -> Option<i32> {
    for _ in 0..kills {
        let controller = ws.controller(flags);
        std::thread::sleep(up);
        controller.kill9();
        std::thread::sleep(Duration::from_millis(1200));
    }
    let mut once = flags.to_vec();
    once.push("--once");
    ws.controller(&once).wait(LONG)
}

fn check_restarted_results(ws: &Workspace, tasks: usize) {
    for i in 0..tasks {
        let status = ws.status(&format!("ev{i}")).expect("status");
        assert_eq!(status["phase"], "Succeeded", "{status:#}");
        assert_eq!(status["result"]["n"], i, "{status:#}");
        let attempts = status["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{status:#}");
        assert_eq!(attempts[0]["completedBy"], "event", "{status:#}");
    }
}

/// The README's busybox callback, a `wget` loop, on docker with the host network: every
/// task succeeds by its event while the controller is SIGKILLed and restarted again and
/// again, and no (task, attempt) runs twice. The containers write the ledger through a
/// mounted host folder.
#[test]
fn wget_loop_callbacks_on_docker_ride_out_controller_restarts() {
    if !docker_or_skip("wget_loop_callbacks_on_docker_ride_out_controller_restarts") {
        return;
    }
    let ws = Workspace::new();
    let shared = ws.root().join("shared");
    std::fs::create_dir(&shared).unwrap();
    const TASKS: usize = 8;
    for i in 0..TASKS {
        ws.write(
            &format!("ev{i}.yaml"),
            &format!(
                r#"apiVersion: skiff/v1
kind: ContainerTask
spec:
  image: {DOCKER_IMAGE}
  command: [sh, -c]
  args:
    - |
      echo "$SKIFF_TASK $SKIFF_ATTEMPT" >> /shared/ledger.txt
      sleep {sleep}
      n=0
      until wget -q -O /dev/null --post-data '{{"result":{{"n":{i}}}}}' "$SKIFF_CALLBACK_URL"; do
        n=$((n + 1)); [ "$n" -lt 30 ] || exit 1; sleep 1
      done
  volumes:
    - {{name: shared, mountPath: /shared, hostPath: {shared}}}
  completion: {{mode: event, pollInterval: 1s}}
"#,
                sleep = 1 + i % 3,
                shared = shared.display(),
            ),
        );
    }
    let flags = [
        "--runtime",
        "docker",
        "--docker-network",
        "host",
        "--allow-host-path",
        shared.to_str().unwrap(),
    ];
    let code = kill_and_restart(&ws, &flags, 5, Duration::from_millis(1500));
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    check_restarted_results(&ws, TASKS);
    let ledger = std::fs::read_to_string(shared.join("ledger.txt")).unwrap_or_default();
    assert_no_attempt_ran_twice(ledger.lines().map(str::to_string).collect(), TASKS);
    assert!(skiff_containers(&ws.root().join(".skiff")).is_empty());
}

/// The README's curl callback (`--retry 30 --retry-all-errors --retry-delay 1`), on the
/// process runtime with the host's curl, through the same restarts.
#[test]
fn curl_retry_callbacks_ride_out_controller_restarts() {
    let ws = Workspace::new();
    const TASKS: usize = 8;
    for i in 0..TASKS {
        ws.task(
            &format!("ev{i}.yaml"),
            &format!(
                "{}; sleep {}; curl -fsS --retry 30 --retry-all-errors --retry-delay 1 -o /dev/null -d '{{\"result\":{{\"n\":{i}}}}}' \"$SKIFF_CALLBACK_URL\"",
                ws.ledger_line(),
                1 + i % 3
            ),
            "  completion: {mode: event, pollInterval: 1s}\n",
        );
    }
    let code = kill_and_restart(&ws, &[], 5, Duration::from_millis(900));
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    check_restarted_results(&ws, TASKS);
    assert_no_attempt_ran_twice(ws.ledger_lines(), TASKS);
}

/// The unit's command line, joined over its `\` continuations.
fn exec_start(unit: &str) -> Vec<String> {
    let mut command = String::new();
    let mut inside = false;
    for line in unit.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("ExecStart=") {
            inside = true;
            command.push_str(rest);
        } else if inside {
            command.push(' ');
            command.push_str(line);
        } else {
            continue;
        }
        match command.strip_suffix('\\') {
            Some(cut) => command = cut.to_string(),
            None => break,
        }
    }
    command.split_whitespace().map(str::to_string).collect()
}

/// `examples/systemd/skiff.service`: the settings the README promises, and its very
/// command line (folders and port made this test's own) runs a task and logs JSON.
#[test]
fn the_systemd_unit_restarts_on_failure_delegates_cgroups_and_its_command_runs() {
    let unit = text(&example("systemd/skiff.service"));
    let settings: Vec<&str> = unit.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for setting in [
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "KillMode=process",
        "Delegate=yes",
        "StateDirectory=skiff",
        "WantedBy=multi-user.target",
    ] {
        assert!(settings.contains(&setting), "the unit lacks {setting}");
    }
    let command = exec_start(&unit);
    assert_eq!(command[..2], ["/usr/local/bin/skiff", "controller"], "{command:?}");
    for flag in ["--dir", "--state-dir", "--listen", "--log-format"] {
        assert!(command.iter().any(|a| a == flag), "ExecStart lacks {flag}: {command:?}");
    }

    let ws = Workspace::new();
    let state = tempfile::tempdir().unwrap();
    let port = support::free_port().to_string();
    ws.task("hello.yaml", "echo hello from the service", "");
    let args: Vec<String> = command[1..]
        .iter()
        .map(|a| match a.as_str() {
            "/srv/skiff/tasks" => dir(&ws),
            "/var/lib/skiff" => state.path().to_str().unwrap().to_string(),
            "127.0.0.1:8466" => format!("127.0.0.1:{port}"),
            other => other.to_string(),
        })
        .chain(["--once".to_string()])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ws.skiff(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}\n{stderr}");
    assert_eq!(ws.phase("hello").as_deref(), Some("Succeeded"));
    assert!(stderr.lines().count() >= 3, "{stderr}");
    for line in stderr.lines() {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON log line: {line}");
    }
    let api = text(&state.path().join("api.json"));
    assert!(api.contains(&format!("http://127.0.0.1:{port}")), "{api}");

    // systemd's own check of the unit, where systemd-analyze is installed.
    if let Ok(version) = std::process::Command::new("systemd-analyze").arg("--version").output()
        && version.status.success()
    {
        let checked = ws.root().join("skiff.service");
        let unit = unit
            .replace("/usr/local/bin/skiff", support::SKIFF)
            .replace("User=skiff", "User=root")
            .replace("Group=skiff", "Group=root")
            .replace("Documentation=man:skiff(1)\n", "");
        std::fs::write(&checked, unit).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&checked)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify: {said}"
        );
    } else {
        eprintln!("note: systemd-analyze is not installed; the unit's syntax was not checked by systemd");
    }
}

/// The curl callback on the aci runtime (the ARM simulator running the real scripts):
/// every task succeeds by its event through five controller SIGKILLs, each container
/// group is created once, and no (task, attempt) runs twice.
#[tokio::test(flavor = "multi_thread")]
async fn curl_callbacks_on_aci_ride_out_controller_restarts() {
    arm_sim::identity();
    let run = tempfile::tempdir().unwrap();
    let sim = ArmSim::start(SimConfig {
        run_commands_in: Some(run.path().to_path_buf()),
        ..SimConfig::default()
    })
    .await;
    let ws = Workspace::new();
    const TASKS: usize = 8;
    for i in 0..TASKS {
        ws.task(
            &format!("ev{i}.yaml"),
            &format!(
                "{}; sleep {}; curl -fsS --retry 30 --retry-all-errors --retry-delay 1 -o /dev/null -d '{{\"result\":{{\"n\":{i}}}}}' \"$SKIFF_CALLBACK_URL\"",
                ws.ledger_line(),
                1 + i % 3
            ),
            "  image: busybox\n  completion: {mode: event, pollInterval: 1s}\n",
        );
    }
    // ACI needs a callback URL the containers reach: a fixed one, the same after restarts.
    let listen = format!("127.0.0.1:{}", support::free_port());
    let callback = format!("http://{listen}");
    let flags = sim.controller_flags(&["--listen", &listen, "--callback-url", &callback]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let code = tokio::task::block_in_place(|| kill_and_restart(&ws, &flags, 5, Duration::from_millis(1500)));
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    check_restarted_results(&ws, TASKS);
    assert_no_attempt_ran_twice(ws.ledger_lines(), TASKS);
    let stats = sim.stats();
    assert_eq!(stats.created.len(), TASKS, "{:?}", stats.created_per_name);
    for (name, creates) in &stats.created_per_name {
        assert_eq!(*creates, 1, "{name} was created {creates} times");
    }
    assert!(sim.live().is_empty(), "every group deleted: {:?}", sim.live());
}
