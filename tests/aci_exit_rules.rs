//! Exit-code rules on the aci runtime, against the ARM simulator (`support/arm_sim.rs`):
//! the code ACI reports in `instanceView.currentState.exitCode` is judged as the
//! process and docker runtimes' are (`tests/exit_rules.rs`).

#[path = "support/arm_sim.rs"]
mod arm_sim;

use arm_sim::{ArmSim, LOCATION, RESOURCE_GROUP, SUBSCRIPTION, SimConfig};
use serde_json::Value;
use skiff::azure::CredentialKind;
use skiff::controller::{Controller, ControllerConfig, Outcome};
use skiff::manifest::RuntimeKind;
use skiff::runtime::Runtime;
use skiff::runtime::aci::{AciConfig, AciCredential, AciRuntime};
use skiff::store::dir::DirStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn status(root: &Path, task: &str) -> Value {
    let bytes = std::fs::read(root.join(format!("{task}.status.json"))).unwrap_or_else(|err| panic!("{task}: {err}"));
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_code_rules_judge_the_exit_code_aci_reports() {
    arm_sim::identity();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The simulated groups run their commands as host processes, so the exit code is the
    // script's own.
    let run = tempfile::tempdir().unwrap();
    let sim = ArmSim::start(SimConfig {
        run_commands_in: Some(run.path().to_path_buf()),
        ..SimConfig::default()
    })
    .await;
    let rules = "  retries: 3\n  backoff: 100ms\n  completion: {pollInterval: 200ms}\n  onExit:\n    - {exitCodes: [42], action: FailTask}\n    - {exitCodes: [75], action: RetryUncounted}\n    - {exitCodes: [3], action: Succeed}\n";
    for (task, script) in [
        ("fatal", "sleep 0.2; exit 42"),
        ("nothing-to-do", "sleep 0.2; exit 3"),
        // Attempts 1 and 2 exit 75 (uncounted), then 1 three times: 2 + retries + 1.
        (
            "busy",
            "sleep 0.2; if [ $SKIFF_ATTEMPT -le 2 ]; then exit 75; fi; exit 1",
        ),
    ] {
        let text = format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: aci\n  image: busybox\n  command: [sh, -c, '{script}']\n{rules}"
        );
        std::fs::write(root.join(format!("{task}.yaml")), text).unwrap();
    }
    let mut config = AciConfig::new(
        SUBSCRIPTION,
        RESOURCE_GROUP,
        LOCATION,
        AciCredential::Azure(CredentialKind::Managed),
    );
    config.arm_endpoint = sim.endpoint.clone();
    config.poll_min = Duration::from_millis(50);
    config.poll_max = Duration::from_millis(250);
    config.max_wait = Duration::from_secs(30);
    config.create_quota = "10/1s".parse().unwrap();
    let rt: Arc<dyn Runtime> = Arc::new(AciRuntime::new(&root.join(".skiff"), config).unwrap());
    let controller = Controller::new(
        Arc::new(DirStore::new(root).unwrap()),
        vec![rt],
        ControllerConfig {
            default_runtime: RuntimeKind::Aci,
            once: true,
            ..ControllerConfig::default()
        },
    );
    let outcome = tokio::time::timeout(Duration::from_secs(120), controller.run(CancellationToken::new()))
        .await
        .expect("the controller finished in time")
        .expect("the controller ran");
    assert_eq!(outcome, Outcome::SomeFailed);

    let fatal = status(root, "fatal");
    assert_eq!(
        (fatal["phase"].as_str(), fatal["reason"].as_str()),
        (Some("Failed"), Some("ExitCode"))
    );
    assert_eq!(fatal["attempts"].as_array().unwrap().len(), 1, "{fatal:#}");
    assert_eq!(fatal["attempts"][0]["exitCode"], 42);
    assert_eq!(fatal["attempts"][0]["exitRule"]["action"], "FailTask");

    let fine = status(root, "nothing-to-do");
    assert_eq!(fine["phase"], "Succeeded", "{fine:#}");
    assert_eq!(fine["attempts"].as_array().unwrap().len(), 1);

    let busy = status(root, "busy");
    assert_eq!(busy["phase"], "Failed", "{busy:#}");
    let codes: Vec<i64> = busy["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["exitCode"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(codes, [75, 75, 1, 1, 1, 1]);
    assert!(sim.live().is_empty(), "every group deleted: {:?}", sim.live());
}
