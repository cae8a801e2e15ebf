//! A task that starts a daemon with setsid leaves its process group, not its cgroup:
//! deleting its container, after its exit or its timeout, kills the daemon too.
//! (Only where the controller may make cgroups v2; elsewhere the README's limit holds.)

mod support;

use std::time::Duration;
use support::{Workspace, processes_mentioning};

fn cgroups_usable(ws: &Workspace) -> bool {
    let usable = !ws
        .controller_log()
        .contains("containers run without a cgroup of their own");
    if !usable && std::env::var("SKIFF_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("no cgroup v2 here, which CI's machines have:\n{}", ws.controller_log());
    }
    usable
}

#[test]
fn a_daemon_left_by_a_finished_task_is_killed_with_its_container() {
    let ws = Workspace::new();
    let marker = format!("skiff-daemon-{}", std::process::id());
    // The daemon's own session and group; its shell's argv carries the marker.
    ws.task(
        "leaves.yaml",
        &format!("setsid sh -c 'sleep 300; : {marker}' >/dev/null 2>&1 < /dev/null & sleep 0.3"),
        "",
    );
    ws.task(
        "slow.yaml",
        &format!("setsid sh -c 'sleep 300; : {marker}-t' >/dev/null 2>&1 < /dev/null & sleep 100"),
        "  timeout: 1s\n",
    );
    let code = ws.controller(&["--once"]).wait(Duration::from_secs(60));
    assert_eq!(code, Some(1), "slow times out: {}", ws.controller_log());
    assert_eq!(ws.phase("leaves").as_deref(), Some("Succeeded"));
    assert_eq!(ws.status("slow").expect("status")["reason"], "DeadlineExceeded");
    if !cgroups_usable(&ws) {
        eprintln!("no cgroup v2 to use here: the daemons' survival is the documented limit");
        return;
    }
    let left = processes_mentioning(&marker);
    // Kill them anyway, so that a failure leaves nothing behind.
    for (pid, _) in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
    }
    assert!(left.is_empty(), "daemons outlived their tasks: {left:?}");
}
