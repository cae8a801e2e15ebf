//! The Docker Engine dies mid-run and comes back: every task still ends terminal and
//! correct. Alone in its binary, because it takes the engine away from everyone.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{DOCKER_IMAGE, Workspace, docker_or_skip, skiff_containers};

const LONG: Duration = Duration::from_secs(240);

fn engine_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills dockerd with SIGKILL and starts it again with the same command line.
fn kill_and_restart_dockerd() {
    let pid: i32 = std::fs::read_to_string("/var/run/docker.pid")
        .expect("dockerd's pid file")
        .trim()
        .parse()
        .expect("a pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("dockerd's command line");
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(args[0].ends_with("dockerd"), "{args:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::env::temp_dir().join("skiff-dockerd.log"))
        .unwrap();
    // --fork: setsid itself exits at once, leaving dockerd detached in its own session.
    Command::new("setsid")
        .arg("--fork")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .expect("start dockerd again");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !engine_answers() {
        assert!(Instant::now() < deadline, "dockerd did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tasks_survive_the_engine_being_killed_and_started_again() {
    if !docker_or_skip("tasks_survive_the_engine_being_killed") {
        return;
    }
    let ws = Workspace::new();
    // `timeout` is part of what is tested: an engine killed with SIGKILL can lose the exit
    // of a container that ended while it was down (containerd restarts with it; seen on
    // Docker 20.10: the container stayed `running` for minutes after its process ended).
    // No controller can see through that; the attempt's timeout stops and retries it.
    for i in 0..12 {
        ws.write(
            &format!("r{i:02}.yaml"),
            &format!(
                "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: docker\n  image: {DOCKER_IMAGE}\n  command: [sh, -c, 'sleep 3; echo done-{i}']\n  retries: 3\n  timeout: 45s\n  backoff: 500ms\n  completion: {{pollInterval: 1s}}\n"
            ),
        );
    }
    let controller = ws.controller(&["--once", "--docker-network", "none", "--max-running", "6"]);
    ws.wait_until(LONG, "some tasks to run", || {
        (0..12)
            .filter(|i| ws.phase(&format!("r{i:02}")).as_deref() == Some("Running"))
            .count()
            >= 3
    });
    kill_and_restart_dockerd();
    let mut controller = controller;
    // wait_until says what the controller logged when it does not end.
    ws.wait_until(LONG, "the --once controller to exit", || {
        matches!(controller.child.try_wait(), Ok(Some(_)))
    });
    let code = controller.wait(Duration::from_secs(5));
    assert_eq!(code, Some(0), "every task ends Succeeded\n{}", ws.controller_log());
    for i in 0..12 {
        let status = ws.status(&format!("r{i:02}")).unwrap();
        assert_eq!(status["phase"], "Succeeded", "{status:#}");
        // The output of a container that ran through the engine's death may be lost by
        // the engine itself (nothing reads its pipe meanwhile), so only the outcome counts.
        let last = status["attempts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["exitCode"], 0, "{status:#}");
        // Every attempt but the last failed because the engine took its container away.
        let attempts = status["attempts"].as_array().unwrap();
        for failed in &attempts[..attempts.len() - 1] {
            assert_ne!(failed["reason"], "Completed", "{status:#}");
        }
    }
    assert!(
        skiff_containers(&ws.root().join(".skiff")).is_empty(),
        "no container left"
    );
}
