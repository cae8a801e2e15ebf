//! The controller end to end: a real `skiff controller` process, real files, real
//! processes under real supervisors.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::{Workspace, processes_mentioning};

const LONG: Duration = Duration::from_secs(60);

/// A sleep length no other test uses, to find its processes by command line.
fn unique_secs() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    100_000 + (std::process::id() as u64 % 10_000) * 10 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn count_lines(ws: &Workspace) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in ws.ledger_lines() {
        *counts.entry(line).or_default() += 1;
    }
    counts
}

#[test]
fn two_hundred_manifests_dropped_into_a_running_controller_each_run_exactly_once() {
    let ws = Workspace::new();
    let controller = ws.controller(&["--max-running", "32"]);
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..200 {
        ws.task(&format!("batch/t{i:03}.yaml"), &ws.ledger_line(), "");
    }
    ws.wait_until(LONG, "200 tasks to succeed", || {
        (0..200).all(|i| ws.phase(&format!("batch/t{i:03}")).as_deref() == Some("Succeeded"))
    });
    let counts = count_lines(&ws);
    assert_eq!(counts.len(), 200, "every task ran");
    for (line, n) in &counts {
        assert_eq!(*n, 1, "{line} ran {n} times");
        assert!(line.ends_with(" 1"), "{line}: first attempt");
    }
    assert_eq!(controller.terminate(), Some(0), "SIGTERM is a clean exit");
    assert!(processes_mentioning(&ws.root().display().to_string()).is_empty());
    // The state files of the 200 deleted containers were emptied and handed on, not
    // unlinked (runtime::spare_states): about one per container that ran at once remains.
    let count = |folder: &str| std::fs::read_dir(ws.root().join(".skiff").join(folder)).map_or(0, |d| d.count());
    assert_eq!(count("containers"), 0, "every container is gone");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let spares = count(&format!("spare-states/{}", boot.trim()));
    assert!(
        (1..=64).contains(&spares),
        "{spares} spare state files for 200 containers, 32 at once"
    );
}

#[test]
fn once_exits_0_when_all_succeed_and_1_when_one_fails() {
    let ws = Workspace::new();
    ws.task("ok.yaml", "true", "");
    assert_eq!(ws.controller(&["--once"]).wait(LONG), Some(0));
    ws.task("bad.yaml", "exit 3", "");
    assert_eq!(ws.controller(&["--once"]).wait(LONG), Some(1));
    let status = ws.status("bad").unwrap();
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["reason"], "ExitCode");
    assert_eq!(status["attempts"][0]["exitCode"], 3);
    // Invariant 3: a finished task is not run again by a restart.
    assert_eq!(ws.status("ok").unwrap()["attempt"], 1);
}

#[test]
fn a_timeout_kills_the_whole_process_group_and_fails_with_deadline_exceeded() {
    let ws = Workspace::new();
    let secs = unique_secs();
    let marker = format!("sleep {secs}");
    // A background grandchild in the same group must die too.
    ws.task("slow.yaml", &format!("sleep {secs} & sleep {secs}"), "  timeout: 1s\n");
    let started = Instant::now();
    assert_eq!(ws.controller(&["--once"]).wait(LONG), Some(1));
    assert!(started.elapsed() < Duration::from_secs(20));
    let status = ws.status("slow").unwrap();
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["reason"], "DeadlineExceeded");
    assert_eq!(status["attempts"][0]["completedBy"], "deadline");
    ws.wait_until(Duration::from_secs(5), "the process group to be gone", || {
        processes_mentioning(&marker).is_empty() && processes_mentioning(&ws.root().display().to_string()).is_empty()
    });
}

#[test]
fn editing_the_spec_mid_run_kills_the_old_attempt_and_starts_again_from_attempt_1() {
    let ws = Workspace::new();
    let old_marker = format!("sleep {}", unique_secs());
    ws.task("job.yaml", &format!("{}; {old_marker}", ws.ledger_line()), "");
    let _controller = ws.controller(&[]);
    ws.wait_phase("job", "Running", LONG);
    ws.wait_until(LONG, "the old process", || {
        !processes_mentioning(&old_marker).is_empty()
    });
    ws.task("job.yaml", &format!("{}; echo new", ws.ledger_line()), "");
    ws.wait_until(LONG, "the new spec to succeed", || {
        ws.status("job")
            .is_some_and(|s| s["phase"] == "Succeeded" && s["logTail"].as_str().unwrap_or("").contains("new"))
    });
    let status = ws.status("job").unwrap();
    assert_eq!(status["attempt"], 1, "a new spec starts from attempt 1");
    assert!(
        processes_mentioning(&old_marker).is_empty(),
        "the old attempt was killed"
    );
    assert_eq!(ws.ledger_lines(), vec!["job 1", "job 1"]);
    // Saving the same spec again (same hash) never re-runs anything.
    let text = std::fs::read_to_string(ws.root().join("job.yaml")).unwrap();
    ws.write("job.yaml", &format!("# a comment\n{text}"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ws.ledger_lines().len(), 2);
    // Deleting the status file is the gesture for "run it again".
    std::fs::remove_file(ws.status_path("job")).unwrap();
    ws.wait_until(LONG, "the re-run", || ws.ledger_lines().len() == 3);
    ws.wait_phase("job", "Succeeded", LONG);
}

#[test]
fn deleting_the_manifest_mid_run_kills_the_process_and_removes_the_status() {
    let ws = Workspace::new();
    let marker = format!("sleep {}", unique_secs());
    ws.task("doomed.yaml", &format!("{marker}; true"), "");
    let _controller = ws.controller(&[]);
    ws.wait_phase("doomed", "Running", LONG);
    std::fs::remove_file(ws.root().join("doomed.yaml")).unwrap();
    ws.wait_until(LONG, "the status file to go", || !ws.status_path("doomed").exists());
    ws.wait_until(Duration::from_secs(5), "the process to die", || {
        processes_mentioning(&marker).is_empty()
    });
    let leftovers: Vec<_> = std::fs::read_dir(ws.root().join(".skiff/containers"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "container folders left: {leftovers:?}");
    // Its kept logs go with it.
    ws.wait_until(Duration::from_secs(5), "its logs to go", || {
        std::fs::read_dir(ws.root().join(".skiff/logs"))
            .map(|d| d.count() == 0)
            .unwrap_or(false)
    });
}

#[test]
fn max_running_caps_live_processes() {
    let ws = Workspace::new();
    // Long enough that the last in line wait more than a second, and so say why.
    for i in 0..12 {
        ws.task(&format!("t{i:02}.yaml"), "sleep 0.5", "");
    }
    let controller = ws.controller(&["--once", "--max-running", "3"]);
    let mut peak = 0;
    let started = Instant::now();
    let mut saw_waiting = false;
    while started.elapsed() < LONG {
        let live = ws.running_process_containers();
        peak = peak.max(live);
        saw_waiting |= (0..12).any(|i| {
            ws.status(&format!("t{i:02}")).is_some_and(|s| {
                s["reason"] == "WaitingForSlot" && s["message"].as_str().unwrap_or("").contains("max-running 3/3")
            })
        });
        if (0..12).all(|i| ws.phase(&format!("t{i:02}")).as_deref() == Some("Succeeded")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(controller.wait(LONG), Some(0));
    assert!(peak <= 3, "saw {peak} live containers");
    assert!(peak >= 2, "the limit was used: peak {peak}");
    assert!(saw_waiting, "a waiting task says which limit holds it");
}

#[test]
fn a_reader_polling_status_files_never_sees_a_torn_one() {
    let ws = Workspace::new();
    for i in 0..200 {
        ws.task(&format!("r{i:03}.yaml"), "echo hi", "");
    }
    let root = ws.root().to_path_buf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir(&root).unwrap().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.ends_with(".status.json") {
                        continue;
                    }
                    let Ok(bytes) = std::fs::read(entry.path()) else {
                        continue;
                    };
                    if let Err(err) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                        panic!("{name} did not parse: {err}");
                    }
                    reads += 1;
                }
            }
            reads
        })
    };
    assert_eq!(ws.controller(&["--once", "--max-running", "16"]).wait(LONG), Some(0));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw only whole files");
    assert!(reads > 200, "the reader read {reads} files");
}

/// Kills the controller with SIGKILL at 10 random moments while 50 tasks run, some
/// failing once, and restarts it each time.
#[test]
fn crash_safety_under_repeated_sigkill() {
    let ws = Workspace::new();
    let mut seed: u64 = std::env::var("SKIFF_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("SKIFF_TEST_SEED={seed}");
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut expect_attempts = HashMap::new();
    for i in 0..50 {
        let secs = 0.2 + (random(19) as f64) / 10.0;
        let fails_once = i % 5 == 0;
        let script = if fails_once {
            format!("{}; sleep {secs:.1}; test $SKIFF_ATTEMPT -ge 2", ws.ledger_line())
        } else {
            format!("{}; sleep {secs:.1}", ws.ledger_line())
        };
        ws.task(&format!("c{i:02}.yaml"), &script, "  retries: 1\n  backoff: 100ms\n");
        expect_attempts.insert(format!("c{i:02}"), if fails_once { 2 } else { 1 });
    }
    for _ in 0..10 {
        let controller = ws.controller(&[]);
        std::thread::sleep(Duration::from_millis(50 + random(400)));
        controller.kill9();
    }
    let controller = ws.controller(&["--once"]);
    assert_eq!(controller.wait(LONG), Some(0), "all tasks end Succeeded");
    for (task, attempts) in &expect_attempts {
        let status = ws.status(task).unwrap_or_else(|| panic!("{task} has no status"));
        assert_eq!(status["phase"], "Succeeded", "{task}");
        assert_eq!(status["attempt"], *attempts, "{task}");
    }
    let counts = count_lines(&ws);
    for (task, attempts) in &expect_attempts {
        for attempt in 1..=*attempts {
            let line = format!("{task} {attempt}");
            assert_eq!(counts.get(&line), Some(&1), "{line} must have run exactly once");
        }
    }
    assert_eq!(counts.values().sum::<usize>(), expect_attempts.values().sum::<usize>());
    ws.wait_until(Duration::from_secs(5), "no supervisor or child left", || {
        processes_mentioning(&ws.root().display().to_string()).is_empty()
    });
}

/// Status files that are not skiff's to read: a FIFO (blocked every read forever), a
/// symlink to /dev/zero (read until memory ran out), a folder, garbage, an empty file, a
/// symlink loop, and a name too long for the file system. Each makes its task alone Invalid, nothing
/// hangs, and `--once` exits 1, leaving every file as the user made it.
fn hostile_status_files(ws: &Workspace) -> String {
    let root = ws.root();
    for task in ["fifo", "zero", "folder", "garbage", "empty", "loop"] {
        ws.task(&format!("{task}.yaml"), "true", "");
    }
    nix::unistd::mkfifo(
        &root.join("fifo.status.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", root.join("zero.status.json")).unwrap();
    std::fs::create_dir(root.join("folder.status.json")).unwrap();
    std::fs::write(root.join("garbage.status.json"), "garbage").unwrap();
    std::fs::write(root.join("empty.status.json"), "").unwrap();
    std::os::unix::fs::symlink("loop.status.json", root.join("loop.status.json")).unwrap();
    // 245 bytes + `.yaml` fits a name; + `.status.json` (257) does not.
    let long = "l".repeat(245);
    ws.task(&format!("{long}.yaml"), "true", "metadata: {name: long}\n");
    ws.task("good.yaml", &ws.ledger_line(), "");
    long
}

fn assert_hostile_files_untouched(ws: &Workspace) {
    use std::os::unix::fs::FileTypeExt;
    let root = ws.root();
    let kind = |name: &str| std::fs::symlink_metadata(root.join(name)).unwrap().file_type();
    assert!(kind("fifo.status.json").is_fifo());
    assert!(kind("zero.status.json").is_symlink());
    assert!(kind("loop.status.json").is_symlink());
    assert!(kind("folder.status.json").is_dir());
    assert_eq!(std::fs::read(root.join("garbage.status.json")).unwrap(), b"garbage");
    assert_eq!(std::fs::read(root.join("empty.status.json")).unwrap(), b"");
}

#[test]
fn once_exits_1_beside_fifo_device_folder_garbage_empty_and_too_long_status_files() {
    let ws = Workspace::new();
    let long = hostile_status_files(&ws);
    // `wait` fails the test (and kills the controller) rather than hang.
    assert_eq!(ws.controller(&["--once"]).wait(Duration::from_secs(30)), Some(1));
    assert_eq!(ws.phase("good").as_deref(), Some("Succeeded"));
    assert_eq!(ws.ledger_lines(), vec!["good 1".to_string()]);
    assert_hostile_files_untouched(&ws);
    let log = ws.controller_log();
    for needle in [
        "fifo.status.json: the status file is a named pipe (FIFO)",
        "zero.status.json: the status file is a device",
        "folder.status.json: the status file is a folder",
        "garbage.status.json: the status file is not valid JSON",
        "empty.status.json: the status file is not valid JSON (it is empty)",
        "loop.status.json: cannot read the status file",
        &format!("{long}.status.json: the status file's name is too long"),
        "rename the manifest to at most 243 bytes",
    ] {
        assert!(log.contains(needle), "the log lacks {needle:?}:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_fifo_manifest_or_status_never_stops_the_controller_its_api_or_sigterm() {
    let ws = Workspace::new();
    hostile_status_files(&ws);
    nix::unistd::mkfifo(
        &ws.root().join("pipe.yaml"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", support::free_port());
    let controller = ws.controller(&["--listen", &listen]);
    ws.wait_phase("good", "Succeeded", LONG);
    ws.wait_phase("pipe", "Invalid", LONG);
    let message = ws.status("pipe").unwrap()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("pipe.yaml") && message.contains("named pipe"),
        "{message}"
    );

    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let health = http
        .get(format!("http://{listen}/healthz"))
        .send()
        .expect("/healthz answers");
    assert!(health.status().is_success(), "{:?}", health.text());
    let listed: Vec<serde_json::Value> = http
        .get(format!("http://{listen}/v1/tasks"))
        .send()
        .expect("GET /v1/tasks answers")
        .json()
        .expect("a JSON array");
    let by_task = |task: &str| listed.iter().find(|s| s["task"] == task).cloned();
    assert_eq!(by_task("good").unwrap()["phase"], "Succeeded");
    for (task, words) in [
        ("fifo", "named pipe"),
        ("zero", "a device"),
        ("folder", "a folder"),
        ("garbage", "not valid JSON"),
    ] {
        let entry = by_task(task).unwrap_or_else(|| panic!("GET /v1/tasks leaves {task} out: {listed:?}"));
        assert_eq!(entry["phase"], "Invalid", "{entry}");
        assert!(entry["message"].as_str().unwrap_or_default().contains(words), "{entry}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(controller.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Bounded: a controller that ignores SIGTERM fails the test instead of hanging it.
    assert_eq!(
        controller.wait(Duration::from_secs(15)),
        Some(0),
        "SIGTERM is a clean exit"
    );
    assert_hostile_files_untouched(&ws);
}

/// A create the OS refuses for the task's own input (here E2BIG: the environment is past
/// ARG_MAX, which a 1 MiB stack limit makes 256 KiB) fails the attempt with the reason,
/// instead of being retried twice a second forever while `--once` never ends.
#[test]
fn a_create_the_os_refuses_for_good_fails_the_task_and_once_exits() {
    let ws = Workspace::new();
    let value = "x".repeat(100_000);
    let env: String = (0..3)
        .map(|i| format!("    - {{name: A{i}, value: {value}}}\n"))
        .collect();
    ws.task("big.yaml", "true", &format!("  env:\n{env}"));
    let log = std::fs::File::create(ws.root().join(".controller.log")).unwrap();
    let child = std::process::Command::new("prlimit")
        .arg("--stack=1048576")
        .arg(support::SKIFF)
        .args(["controller", "--once", "--dir"])
        .arg(ws.root())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prlimit (util-linux) runs the controller");
    let controller = support::Controller { child };
    assert_eq!(
        controller.wait(Duration::from_secs(30)),
        Some(1),
        "{}",
        ws.controller_log()
    );
    let status = ws.status("big").unwrap();
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(status["reason"], "CreateFailed", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Argument list too long"),
        "{status}"
    );
}

/// The pids of the supervisors the state files name, with their command lines.
fn supervisors(ws: &Workspace) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let dir = ws.root().join(".skiff").join("containers");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Some(first) = text.lines().next() else { continue };
        let claim: serde_json::Value = serde_json::from_str(first).unwrap();
        let pid = claim["claimed"]["pid"].as_i64().unwrap() as i32;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    found
}

#[test]
fn supervisors_are_forked_by_a_server_outlive_a_sigkilled_controller_and_run_once() {
    let ws = Workspace::new();
    for i in 0..6 {
        ws.task(&format!("f{i}.yaml"), &format!("{}; sleep 2", ws.ledger_line()), "");
    }
    let controller = ws.controller(&[]);
    ws.wait_until(LONG, "6 tasks running", || {
        (0..6).all(|i| ws.phase(&format!("f{i}")).as_deref() == Some("Running"))
    });
    let forked = supervisors(&ws);
    assert_eq!(forked.len(), 6, "{forked:?}");
    for (pid, cmdline) in &forked {
        assert!(
            cmdline.contains("__supervisor-server"),
            "supervisor {pid} was forked by the server, not exec'd: {cmdline}"
        );
    }
    controller.kill9();
    for (pid, _) in &forked {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "supervisor {pid} outlives the controller"
        );
    }
    // The restarted controller adopts them (told apart by their start time, since their
    // command line is the server's) and runs nothing twice.
    assert_eq!(
        ws.controller(&["--once"]).wait(LONG),
        Some(0),
        "{}",
        ws.controller_log()
    );
    let counts = count_lines(&ws);
    assert_eq!(counts.len(), 6, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "each ran once: {counts:?}");
    ws.wait_until(Duration::from_secs(5), "no supervisor left", || {
        forked.iter().all(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| stat.contains(") Z "))
        })
    });
}
