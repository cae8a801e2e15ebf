//! Heartbeats on the aci runtime: the ARM simulator runs the container's real command as
//! a host process, which gets `SKIFF_HEARTBEAT_URL` (sent as a `secureValue`) and beats
//! to the controller; silence fails the attempt and its group is deleted.

mod support;

#[path = "support/arm_sim.rs"]
mod arm_sim;

use arm_sim::{ArmSim, SimConfig};
use std::time::Duration;
use support::Workspace;

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn on_aci_a_group_beats_shows_its_progress_then_fails_heartbeat_timeout_when_silent() {
    arm_sim::identity();
    let run = tempfile::tempdir().unwrap();
    let sim = ArmSim::start(SimConfig {
        run_commands_in: Some(run.path().to_path_buf()),
        ..SimConfig::default()
    })
    .await;
    let ws = Workspace::new();
    ws.write(
        "render.yaml",
        "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  image: busybox\n  command: [sh, -c]\n  args:\n    - |\n      busybox wget -q -O- --post-data '{\"progress\": 0.5, \"message\": \"half\"}' \"$SKIFF_HEARTBEAT_URL\"\n      sleep 300\n  heartbeatTimeout: 3s\n",
    );
    let listen = format!("127.0.0.1:{}", support::free_port());
    let flags = sim.controller_flags(&["--listen", &listen]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let _controller = ws.controller(&flags);
    // The simulator serves on this runtime's threads: wait beside it, not on it.
    tokio::task::block_in_place(|| {
        ws.wait_until(LONG, "the group's progress in the status", || {
            ws.status("render")
                .is_some_and(|s| s["phase"] == "Running" && s["progress"] == 0.5)
        });
        ws.wait_phase("render", "Failed", LONG);
    });
    let status = ws.status("render").unwrap();
    assert_eq!(status["reason"], "HeartbeatTimeout", "{status}");
    assert_eq!(status["attempts"][0]["runtime"], "aci");
    assert!(sim.live().is_empty(), "the silent group is deleted: {:?}", sim.live());
}
