//! Azure for real work, end to end on the ARM simulator and a loopback Key Vault stub,
//! with the real binary and managed-identity tokens (the App Service protocol): private
//! registry credentials (password and identity), the group's identity, subnets, Key Vault
//! references resolved with a vault-scoped token into `secureValue`s, and no secret in any
//! status, log or answer; Key Vault refusals fail the attempt, outages are retried.

mod support;

#[path = "support/arm_sim.rs"]
mod arm_sim;

use arm_sim::{ArmSim, KeyVaultSim, STORAGE_KEY_ENV, SimConfig};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use support::Workspace;

const ACR: &str = "myacr.azurecr.io";
const PULL_ID: &str = "/subscriptions/00000000-0000-0000-0000-00000000cafe/resourceGroups/rg-id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull";
const TASK_ID: &str = "/subscriptions/00000000-0000-0000-0000-00000000cafe/resourceGroups/rg-id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/task";
const SUBNET: &str = "/subscriptions/00000000-0000-0000-0000-00000000cafe/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/aci";
const VAULT_VALUE: &str = "kv-s3cret-value-0451";

fn manifest(ws: &Workspace, name: &str, image: &str, extra: &str) {
    ws.write(
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  image: {image}\n  command: [sh, -c, 'echo ran $SKIFF_TASK']\n  completion: {{pollInterval: 200ms}}\n{extra}"
        ),
    );
}

/// Every file under `dir`, as text.
fn all_files(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all_files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
}

fn body_of<'a>(sim: &'a [arm_sim::CreateRecord], prefix: &str) -> &'a Value {
    &sim.iter()
        .find(|r| r.name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no create of {prefix}"))
        .body
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_credentials_identity_subnets_and_key_vault_reach_arm_and_no_secret_is_written() {
    arm_sim::identity();
    let password = std::env::var(STORAGE_KEY_ENV).unwrap();
    let sim = ArmSim::start(SimConfig {
        private_registries: HashMap::from([(ACR.to_string(), ("myacr".to_string(), password.clone()))]),
        ..SimConfig::default()
    })
    .await;
    let vault = KeyVaultSim::start().await;
    vault.set("db-password", VAULT_VALUE);
    let ws = Workspace::new();
    manifest(
        &ws,
        "withpassword",
        &format!("{ACR}/app:1"),
        &format!(
            "  imagePullSecrets: [{{server: {ACR}, username: myacr, passwordFrom: {{env: {STORAGE_KEY_ENV}}}}}]\n  env:\n    - {{name: MODE, value: plain}}\n    - name: DB_PASSWORD\n      valueFrom: {{keyVault: {{secretUrl: '{}'}}}}\n  aci:\n    identity: {{type: UserAssigned, userAssignedIdentities: ['{TASK_ID}']}}\n    subnetIds: ['{SUBNET}']\n",
            vault.secret_url("db-password")
        ),
    );
    manifest(
        &ws,
        "withidentity",
        &format!("{ACR}/app:2"),
        &format!("  imagePullSecrets: [{{server: {ACR}, identity: '{PULL_ID}'}}]\n"),
    );
    manifest(&ws, "withnothing", &format!("{ACR}/app:3"), "");
    let flags = sim.controller_flags(&["--once"]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ws.controller(&flags);
    let code = tokio::task::spawn_blocking(move || controller.wait(Duration::from_secs(90)))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "withnothing fails\n{}", ws.controller_log());

    for name in ["withpassword", "withidentity"] {
        let status = ws.status(name).unwrap();
        assert_eq!(status["phase"], "Succeeded", "{status:#}\n{}", ws.controller_log());
    }
    let refused = ws.status("withnothing").unwrap();
    assert_eq!(refused["phase"], "Failed", "{refused:#}");
    assert_eq!(refused["reason"], "ImagePullFailed", "{refused:#}");
    assert!(
        refused["message"].as_str().unwrap_or("").contains("unauthorized"),
        "the registry's words: {refused:#}"
    );

    let stats = sim.stats();
    let body = body_of(&stats.create_bodies, "skiff-withpassword");
    let properties = &body["properties"];
    assert_eq!(
        properties["imageRegistryCredentials"],
        serde_json::json!([{"server": ACR, "username": "myacr", "password": password}]),
        "{body:#}"
    );
    assert_eq!(body["identity"]["type"], "UserAssigned", "{body:#}");
    assert!(
        body["identity"]["userAssignedIdentities"].get(TASK_ID).is_some(),
        "{body:#}"
    );
    assert_eq!(properties["subnetIds"], serde_json::json!([{"id": SUBNET}]), "{body:#}");
    let env = properties["containers"][0]["properties"]["environmentVariables"]
        .as_array()
        .unwrap();
    let var = |name: &str| env.iter().find(|v| v["name"] == name).cloned().unwrap_or_default();
    assert_eq!(var("DB_PASSWORD")["secureValue"], VAULT_VALUE, "{body:#}");
    assert!(var("DB_PASSWORD").get("value").is_none());
    assert_eq!(var("MODE")["value"], "plain");

    let body = body_of(&stats.create_bodies, "skiff-withidentity");
    assert_eq!(
        body["properties"]["imageRegistryCredentials"],
        serde_json::json!([{"server": ACR, "identity": PULL_ID}])
    );
    assert_eq!(
        body["identity"]["type"], "UserAssigned",
        "the pull identity is the group's: {body:#}"
    );
    assert!(
        body["identity"]["userAssignedIdentities"].get(PULL_ID).is_some(),
        "{body:#}"
    );

    // Key Vault was read once, with a vault-scoped token (the stub answers 401 otherwise).
    let requests = vault.requests();
    assert_eq!(
        requests,
        vec![("/secrets/db-password".to_string(), 200)],
        "{requests:?}"
    );

    // No secret anywhere: statuses, kept logs, the state folder, the controller's log,
    // the CLI's answers, and ARM's own answers.
    let mut files = Vec::new();
    all_files(ws.root(), &mut files);
    let mut texts: Vec<(String, String)> = files;
    texts.push(("controller log".into(), ws.controller_log()));
    let root = ws.root().display().to_string();
    for args in [
        vec!["get", "--dir", root.as_str(), "-o", "json"],
        vec!["describe", "withpassword", "--dir", root.as_str()],
        vec!["logs", "withpassword", "--dir", root.as_str()],
    ] {
        let out = ws.skiff(&args);
        texts.push((
            args.join(" "),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    for name in stats.created_per_name.keys() {
        if let Some(view) = sim.view(name) {
            texts.push((format!("ARM's view of {name}"), view.to_string()));
        }
    }
    for (place, text) in &texts {
        assert!(!text.contains(VAULT_VALUE), "the vault's secret in {place}");
        assert!(!text.contains(&password), "the registry password in {place}");
    }
    let logs = ws.skiff(&["logs", "withpassword", "--dir", root.as_str()]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("ran withpassword"));
}

#[tokio::test(flavor = "multi_thread")]
async fn key_vault_refusals_fail_the_attempt_and_outages_are_retried() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let vault = KeyVaultSim::start().await;
    vault.set("flaky", "flaky-value-77");
    vault.set("locked", "locked-value-88");
    vault.forbid("locked");
    // The first two reads answer 503, whichever task they are for.
    vault.fail_next(&[503, 503]);
    let ws = Workspace::new();
    for (name, secret) in [("flaky", "flaky"), ("forbidden", "locked"), ("missing", "absent")] {
        manifest(
            &ws,
            name,
            "busybox",
            &format!(
                "  retries: 2\n  backoff: 100ms\n  env: [{{name: VAULT_SECRET, valueFrom: {{keyVault: {{secretUrl: '{}'}}}}}}]\n",
                vault.secret_url(secret)
            ),
        );
    }
    let flags = sim.controller_flags(&["--once"]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ws.controller(&flags);
    let code = tokio::task::spawn_blocking(move || controller.wait(Duration::from_secs(90)))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    let flaky = ws.status("flaky").unwrap();
    assert_eq!(flaky["phase"], "Succeeded", "503 is transient: {flaky:#}");
    assert_eq!(
        flaky["attempts"].as_array().unwrap().len(),
        1,
        "no retry spent: {flaky:#}"
    );
    for (name, secret, code) in [("forbidden", "locked", "403"), ("missing", "absent", "404")] {
        let status = ws.status(name).unwrap();
        assert_eq!(status["phase"], "Failed", "{status:#}");
        assert_eq!(status["reason"], "SecretUnavailable", "{status:#}");
        let message = status["message"].as_str().unwrap_or("");
        assert!(
            message.contains(&vault.secret_url(secret)) && message.contains(code),
            "names the URL and the answer: {message}"
        );
    }
    let requests = vault.requests();
    assert_eq!(requests.iter().filter(|(_, s)| *s == 503).count(), 2, "{requests:?}");
    assert!(requests.contains(&("/secrets/flaky".to_string(), 200)), "{requests:?}");
    let created: Vec<String> = sim.stats().created_per_name.keys().cloned().collect();
    assert!(
        created.iter().all(|name| name.starts_with("skiff-flaky")),
        "no group for a secret that cannot be read: {created:?}"
    );
    let mut files = Vec::new();
    all_files(ws.root(), &mut files);
    files.push(("controller log".into(), ws.controller_log()));
    for (place, text) in &files {
        assert!(
            !text.contains("flaky-value-77") && !text.contains("locked-value-88"),
            "a secret in {place}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_in_its_own_resource_group_is_adopted_there_after_sigkill_and_its_orphans_are_collected() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig {
        other_resource_groups: vec!["rg-other".into()],
        ..SimConfig::default()
    })
    .await;
    let ws = Workspace::new();
    let elsewhere = "  aci: {resourceGroup: rg-other}\n";
    for name in ["kept", "orphan"] {
        ws.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  image: busybox\n  command: [sh, -c, 'echo {name}; sleep 2']\n  completion: {{pollInterval: 200ms}}\n{elsewhere}"
            ),
        );
    }
    let flags = sim.controller_flags(&[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ws.controller(&flags);
    ws.wait_until(Duration::from_secs(30), "both groups created", || {
        sim.stats().created.len() == 2
    });
    controller.kill9();
    let stats = sim.stats();
    assert!(
        stats.create_bodies.iter().all(|r| r.resource_group == "rg-other"),
        "made in the task's resource group: {:?}",
        stats
            .create_bodies
            .iter()
            .map(|r| &r.resource_group)
            .collect::<Vec<_>>()
    );
    let used = std::fs::read_to_string(ws.root().join(".skiff/aci-resource-groups.json")).unwrap();
    assert!(used.contains("rg-other"), "{used}");
    // While the controller is down, a person removes one task altogether: its group is
    // now recorded nowhere but in ARM, in a resource group that is not the controller's.
    std::fs::remove_file(ws.root().join("orphan.yaml")).unwrap();
    std::fs::remove_file(ws.status_path("orphan")).unwrap();
    // Its placement file goes too: the listing of the resource groups used must find it.
    for entry in std::fs::read_dir(ws.root().join(".skiff/aci-groups"))
        .unwrap()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("skiff-orphan") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }

    let controller = ws.controller(&flags);
    ws.wait_phase("kept", "Succeeded", Duration::from_secs(60));
    ws.wait_until(Duration::from_secs(30), "the orphan collected", || {
        sim.live().is_empty()
    });
    assert_eq!(controller.terminate(), Some(0), "{}", ws.controller_log());
    let stats = sim.stats();
    assert_eq!(
        stats.created.len(),
        2,
        "kept was adopted, not made again: {:?}",
        stats.created
    );
    assert!(
        stats.deleted.iter().any(|n| n.starts_with("skiff-orphan")),
        "{:?}",
        stats.deleted
    );
    let kept = ws.status("kept").unwrap();
    assert_eq!(kept["attempts"].as_array().unwrap().len(), 1, "{kept:#}");
    assert!(kept["logTail"].as_str().unwrap_or("").contains("kept"), "{kept:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_that_does_not_start_within_its_start_timeout_fails_with_what_aci_said() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig {
        // The image takes "minutes" to pull: the group stays Creating.
        creating: Duration::from_secs(20),
        ..SimConfig::default()
    })
    .await;
    let ws = Workspace::new();
    manifest(&ws, "slow", "busybox", "  aci: {startTimeout: 1500ms}\n");
    let flags = sim.controller_flags(&["--once"]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ws.controller(&flags);
    let code = tokio::task::spawn_blocking(move || controller.wait(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{}", ws.controller_log());
    let status = ws.status("slow").unwrap();
    assert_eq!(status["phase"], "Failed", "{status:#}");
    assert_eq!(status["reason"], "StartTimeout", "{status:#}");
    let message = status["message"].as_str().unwrap_or("");
    assert!(
        message.contains("Creating") && message.contains("Pulling"),
        "ACI's words: {message}"
    );
    assert!(sim.live().is_empty(), "the group is deleted: {:?}", sim.live());
    let body = &sim.stats().create_bodies[0].body;
    assert!(body["tags"]["skiff.start-by"].is_string(), "{body:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_streams_a_running_aci_task_from_arm() {
    use std::io::BufRead;
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let ws = Workspace::new();
    ws.write(
        "live.yaml",
        "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  image: busybox\n  command: [sh, -c, 'echo one; sleep 3; echo two; sleep 3; echo three']\n  completion: {pollInterval: 300ms}\n",
    );
    let flags = sim.controller_flags(&[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ws.controller(&flags);
    ws.wait_phase("live", "Running", Duration::from_secs(30));
    let root = ws.root().display().to_string();
    let mut follower = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "logs",
            "live",
            "--follow",
            "--dir",
            &root,
            "--azure-credential",
            "managed",
        ])
        .args([
            "--aci-subscription-id",
            arm_sim::SUBSCRIPTION,
            "--aci-resource-group",
            arm_sim::RESOURCE_GROUP,
        ])
        .args(["--arm-endpoint", &sim.endpoint])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("skiff logs");
    let stdout = follower.stdout.take().unwrap();
    let status_path = ws.status_path("live");
    let lines = tokio::task::spawn_blocking(move || {
        // Each line with the task's phase when it arrived.
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let status: Value =
                serde_json::from_slice(&std::fs::read(&status_path).unwrap_or_default()).unwrap_or_default();
            seen.push((line, status["phase"].as_str().unwrap_or("").to_string()));
        }
        seen
    });
    let seen = lines.await.unwrap();
    assert!(follower.wait().unwrap().success());
    let text: Vec<&str> = seen.iter().map(|(line, _)| line.as_str()).collect();
    assert_eq!(text, ["one", "two", "three"], "each line once, in order: {seen:?}");
    assert_eq!(seen[0].1, "Running", "streamed while it ran: {seen:?}");
    assert_eq!(seen[1].1, "Running", "streamed while it ran: {seen:?}");
    assert_eq!(ws.phase("live").as_deref(), Some("Succeeded"));
    assert_eq!(controller.terminate(), Some(0));
}
