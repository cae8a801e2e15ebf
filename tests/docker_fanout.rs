//! Fan-out, fan-in and limits on a real Docker Engine.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{DOCKER_IMAGE, Workspace, docker_or_skip, skiff_containers};

const LONG: Duration = Duration::from_secs(180);

#[test]
fn the_fan_out_example_merges_all_five_worker_results_on_docker() {
    if !docker_or_skip("the_fan_out_example_on_docker") {
        return;
    }
    let ws = Workspace::new();
    ws.copy_example("fan-out", DOCKER_IMAGE);
    let code = ws
        .controller(&["--once", "--runtime", "docker", "--docker-network", "host"])
        .wait(LONG);
    assert_eq!(code, Some(0), "{}", ws.controller_log());
    let workers = ws.status("workers").unwrap();
    assert!(
        workers["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["runtime"] == "docker")
    );
    let merge = ws.status("merge").unwrap();
    assert_eq!(merge["phase"], "Succeeded", "{merge:#}");
    assert_eq!(merge["result"]["merged"], workers["result"]);
    let indexes: Vec<u64> = merge["result"]["merged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4]);
    assert_eq!(merge["result"]["sumOfSquares"], 30);
    assert!(
        skiff_containers(&ws.root().join(".skiff")).is_empty(),
        "every container removed"
    );
}

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
