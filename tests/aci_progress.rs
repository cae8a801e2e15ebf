//! What a user sees of an ACI task before and beside its run, end to end with the real
//! binary on the ARM simulator: a group slow to start says what ACI says (its events) in
//! the status and in `skiff describe`; a group ARM reports `Unhealthy` or `NotAccessible`
//! fails at once with ARM's words; `skiff logs --follow` shows each line once across ARM's
//! overlapping `tail` windows.

mod support;

#[path = "support/arm_sim.rs"]
mod arm_sim;

use arm_sim::{ArmSim, SimConfig};
use serde_json::Value;
use std::time::{Duration, Instant};
use support::Workspace;

fn manifest(ws: &Workspace, name: &str, image: &str, script: &str, extra: &str) {
    ws.write(
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  image: {image}\n  command: [sh, -c, '{script}']\n  completion: {{pollInterval: 200ms}}\n{extra}"
        ),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_slow_to_start_shows_what_aci_says_in_its_status_and_describe() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig {
        // A large image: the group stays Creating, pulling, for a while.
        creating: Duration::from_secs(6),
        ..SimConfig::default()
    })
    .await;
    let ws = Workspace::new();
    manifest(&ws, "big", "example.azurecr.io/big:1", "echo done", "");
    let flags = sim.controller_flags(&[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ws.controller(&flags);
    ws.wait_until(Duration::from_secs(20), "ACI's events in the status", || {
        ws.status("big")
            .is_some_and(|s| s["phase"] == "Creating" && s["message"].as_str().unwrap_or("").contains("Pulling"))
    });
    let status = ws.status("big").unwrap();
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("provisioningState Creating")
            && message.contains("pulling image \"example.azurecr.io/big:1\""),
        "{message}"
    );
    let root = ws.root().display().to_string();
    let described = ws.skiff(&["describe", "big", "--dir", &root]);
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(described.status.success(), "{text}");
    assert!(text.contains("Phase:        Creating"), "{text}");
    assert!(
        text.contains("Pulling: pulling image"),
        "describe shows ACI's events: {text}"
    );
    ws.wait_phase("big", "Succeeded", Duration::from_secs(30));
    let done = ws.status("big").unwrap();
    assert!(
        !done["message"].as_str().unwrap_or("").contains("Pulling"),
        "the start-up words go once it runs: {done:#}"
    );
    assert_eq!(controller.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_and_not_accessible_groups_fail_promptly_with_arms_words() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let ws = Workspace::new();
    manifest(&ws, "sick", "example.io/unhealthy:1", "echo never", "  timeout: 10s\n");
    manifest(
        &ws,
        "walled",
        "example.io/notaccessible:1",
        "echo never",
        "  timeout: 10s\n",
    );
    let flags = sim.controller_flags(&["--once"]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let started = Instant::now();
    let controller = ws.controller(&flags);
    let code = tokio::task::spawn_blocking(move || controller.wait(Duration::from_secs(60)))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    // Well before the 10s timeout (which only counts once a container runs) and the 15m
    // start timeout.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    for (task, state, words) in [
        ("sick", "unhealthy", "its host stopped answering health checks"),
        ("walled", "notaccessible", "its subnet or storage cannot be reached"),
    ] {
        let status: Value = ws.status(task).unwrap();
        assert_eq!(status["phase"], "Failed", "{status:#}");
        assert_eq!(status["reason"], "CreateFailed", "{status:#}");
        let message = status["message"].as_str().unwrap_or("");
        assert!(message.contains(state) && message.contains(words), "{task}: {message}");
        assert_eq!(status["attempts"].as_array().map(Vec::len), Some(1), "{status:#}");
    }
    assert!(sim.live().is_empty(), "both groups deleted: {:?}", sim.live());
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_shows_each_line_once_across_overlapping_tail_windows() {
    use std::io::BufRead;
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let ws = Workspace::new();
    // 2,400 lines in six bursts of 400, 2.5s apart: more than the 1,000 lines `--follow`
    // asks for, growing by less than that between two of its polls (every 2s).
    let mut script = String::new();
    for burst in 0..6 {
        for i in 0..400 {
            script.push_str(&format!("echo line-{:04}; ", burst * 400 + i));
        }
        script.push_str("sleep 2.5; ");
    }
    script.push_str("exit 0");
    manifest(&ws, "chatty", "busybox", &script, "");
    let flags = sim.controller_flags(&[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ws.controller(&flags);
    ws.wait_phase("chatty", "Running", Duration::from_secs(30));
    let root = ws.root().display().to_string();
    let mut follower = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "logs",
            "chatty",
            "--follow",
            "--dir",
            &root,
            "--azure-credential",
            "managed",
        ])
        .args(["--aci-subscription-id", arm_sim::SUBSCRIPTION])
        .args(["--aci-resource-group", arm_sim::RESOURCE_GROUP])
        .args(["--arm-endpoint", &sim.endpoint])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("skiff logs");
    let stdout = follower.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(follower.wait().unwrap().success());
    let expected: Vec<String> = (0..2400).map(|i| format!("line-{i:04}")).collect();
    assert_eq!(lines.len(), expected.len(), "no line twice, none missed");
    assert_eq!(lines, expected);
    let tails = sim.stats().log_tails;
    assert!(
        tails.iter().filter(|t| **t == Some(1000)).count() >= 4,
        "followed through tail windows: {tails:?}"
    );
    assert_eq!(ws.phase("chatty").as_deref(), Some("Succeeded"));
    assert_eq!(controller.terminate(), Some(0));
}
