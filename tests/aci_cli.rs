//! `skiff controller --runtime aci` as a user runs it, against the ARM simulator: flags,
//! managed identity from the environment, a bad resource request judged Invalid before
//! any call, and a controller killed with SIGKILL mid-run and started again.

mod support;

#[path = "support/arm_sim.rs"]
mod arm_sim;

use arm_sim::{ArmSim, SimConfig};
use std::time::{Duration, Instant};
use support::Workspace;

fn task(ws: &Workspace, name: &str, script: &str, extra: &str) {
    ws.write(
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  image: busybox\n  command: [sh, -c, '{}']\n{extra}",
            script.replace('\'', "''")
        ),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_with_sigkill_mid_run_and_restarted_every_group_is_created_once_and_all_finish() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let ws = Workspace::new();
    for i in 0..30 {
        task(
            &ws,
            &format!("k{i:02}"),
            "echo k; sleep 0.5",
            "  completion: {pollInterval: 300ms}\n",
        );
    }
    let flags = sim.controller_flags(&["--once", "--max-running", "10", "--aci-create-quota", "10/1s"]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    for target in [8, 18] {
        let controller = ws.controller(&flags);
        let deadline = Instant::now() + Duration::from_secs(60);
        while sim.stats().created.len() < target {
            assert!(Instant::now() < deadline, "creates stalled\n{}", ws.controller_log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        controller.kill9();
    }
    let controller = ws.controller(&flags);
    let code = tokio::task::spawn_blocking(move || controller.wait(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "all Succeeded\n{}", ws.controller_log());
    let stats = sim.stats();
    for (name, creates) in &stats.created_per_name {
        assert_eq!(*creates, 1, "{name} was answered 201 {creates} times");
    }
    assert_eq!(stats.created.len(), 30);
    assert!(stats.max_live <= 10, "{}", stats.max_live);
    for i in 0..30 {
        let status = ws.status(&format!("k{i:02}")).unwrap();
        assert_eq!(status["phase"], "Succeeded", "{status:#}");
        assert_eq!(status["attempts"].as_array().unwrap().len(), 1, "{status:#}");
    }
    assert!(sim.live().is_empty(), "{:?}", sim.live());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_resource_request_is_invalid_before_any_call() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let ws = Workspace::new();
    task(&ws, "huge", "true", "  resources: {cpu: 8, memory: 64Gi}\n");
    let flags = sim.controller_flags(&["--once"]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ws.controller(&flags);
    let code = tokio::task::spawn_blocking(move || controller.wait(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    let status = ws.status("huge").unwrap();
    assert_eq!(status["phase"], "Invalid", "{status:#}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("spec.resources.cpu") && message.contains("spec.resources.memory"),
        "{message}"
    );
    assert_eq!(sim.stats().count("PUT create"), 0, "no call to ARM");
}

#[test]
fn runtime_aci_without_its_settings_is_a_usage_error() {
    let ws = Workspace::new();
    let output = ws.skiff(&[
        "controller",
        "--dir",
        ws.root().to_str().unwrap(),
        "--runtime",
        "aci",
        "--aci-location",
        "westus2",
        "--once",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--aci-resource-group"), "{stderr}");
}
