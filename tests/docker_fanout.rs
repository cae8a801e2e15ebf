//! --max-running on a real Docker Engine (the fan-out example on docker is in
//! tests/examples.rs).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{DOCKER_IMAGE, Workspace, docker_or_skip};

const LONG: Duration = Duration::from_secs(180);

/// Running containers of this workspace, as the engine lists them.
fn running_containers(state_dir: &Path) -> usize {
    let canonical = std::fs::canonicalize(state_dir).unwrap_or(state_dir.to_path_buf());
    let output = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=skiff.state-dir={}", canonical.display()))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&output.stdout).lines().count()
}

#[test]
fn docker_tasks_under_max_running_4_never_have_more_than_4_containers_running() {
    if !docker_or_skip("docker_tasks_under_max_running_4") {
        return;
    }
    let ws = Workspace::new();
    for i in 0..16 {
        ws.write(
            &format!("d{i:02}.yaml"),
            &format!(
                "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: docker\n  image: {DOCKER_IMAGE}\n  command: [sh, -c, 'sleep 1']\n"
            ),
        );
    }
    let done = Arc::new(AtomicBool::new(false));
    let state = ws.root().join(".skiff");
    std::fs::create_dir_all(&state).unwrap();
    let sampler = {
        let done = done.clone();
        let state = state.clone();
        std::thread::spawn(move || {
            let peak = AtomicUsize::new(0);
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(running_containers(&state), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.into_inner()
        })
    };
    let code = ws.controller(&["--once", "--max-running", "4"]).wait(LONG);
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    assert!(peak <= 4, "the engine ran {peak} at once");
    assert!(peak >= 2, "the limit was used: peak {peak}");
}
