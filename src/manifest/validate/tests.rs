//! Validation's table tests: defaults, every error at once, each runtime's rules, bounds.

use super::*;
use crate::manifest::parse_manifest;

fn ctx() -> ValidationContext<'static> {
    ValidationContext {
        default_runtime: RuntimeKind::Process,
        allow_host_paths: &[],
        features: Features::CURRENT,
        env_is_set: None,
    }
}

fn check(spec_yaml: &str) -> Result<TaskSpec, String> {
    let text = format!("apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n{spec_yaml}");
    let task = parse_manifest("t.yaml", text.as_bytes()).map_err(|e| e.to_string())?;
    validate("t.yaml", "t", &task, &ctx())
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))
}

#[test]
fn defaults_are_filled() {
    let spec = check("  command: [echo]\n  args: [hi]\n").unwrap();
    assert_eq!(spec.command, vec!["echo"]);
    assert_eq!(spec.args, vec!["hi"]);
    assert_eq!(spec.name, "t");
    assert_eq!(spec.retries, 0);
    assert_eq!(spec.cleanup, Cleanup::Always);
    assert_eq!(spec.poll_interval, DEFAULT_POLL_INTERVAL);
    assert!(spec.spec_hash.starts_with("sha256:"));
}

#[test]
fn durations_and_quantities_explain_the_fix() {
    let err = check("  command: [x]\n  timeout: ten minutes\n").unwrap_err();
    assert!(
        err.contains("spec.timeout: \"ten minutes\" is not a duration; write e.g. 10m or 1h30m"),
        "{err}"
    );
    let err = check("  command: [x]\n  resources: {memory: lots}\n").unwrap_err();
    assert!(err.contains("spec.resources.memory"), "{err}");
    let spec = check("  command: [x]\n  resources: {cpu: 500m, memory: 1.5Gi}\n").unwrap();
    assert_eq!(spec.cpu, Some(0.5));
    assert_eq!(spec.memory_bytes, Some(1_610_612_736));
    assert!(spec.notes[0].contains("ignores resources"));
}

#[test]
fn every_error_is_reported_at_once() {
    let err = check("  timeout: x\n  backoff: y\n  retries: 1000\n").unwrap_err();
    for needle in ["spec.command", "spec.timeout", "spec.backoff", "spec.retries"] {
        assert!(err.contains(needle), "missing {needle} in {err}");
    }
}

#[test]
fn aci_requests_beyond_aci_are_invalid_before_any_call() {
    let aci = |yaml: &str| check(&format!("  runtime: aci\n  image: busybox\n  command: [true]\n{yaml}"));
    assert!(aci("  resources: {cpu: 2, memory: 4Gi}\n").is_ok());
    let err = aci("  resources: {cpu: 8}\n").unwrap_err();
    assert!(err.contains("spec.resources.cpu") && err.contains("at most 4"), "{err}");
    let err = aci("  resources: {memory: 64Gi}\n").unwrap_err();
    assert!(
        err.contains("spec.resources.memory") && err.contains("at most 16Gi"),
        "{err}"
    );
    let err = aci("  workingDir: /work\n").unwrap_err();
    assert!(err.contains("spec.workingDir"), "{err}");
    let err = aci("  volumes: [{name: v, mountPath: /v, azureFile: {shareName: S, storageAccountName: a, storageAccountKeyFrom: {env: K}}}]\n").unwrap_err();
    assert!(err.contains("shareName") && err.contains("storageAccountName"), "{err}");
    let spec = aci("  aci: {resourceGroup: other, subscriptionId: 00000000-0000-0000-0000-0000000000aa}\n").unwrap();
    assert_eq!(spec.aci.resource_group.as_deref(), Some("other"));
    let err = aci("  aci: {resourceGroup: 'bad/group.', subscriptionId: my-sub}\n").unwrap_err();
    assert!(
        err.contains("spec.aci.resourceGroup: \"bad/group.\" is not a resource group name")
            && err.contains("spec.aci.subscriptionId: \"my-sub\" is not a subscription id"),
        "{err}"
    );
    let spec = aci("  aci: {location: eastus}\n").unwrap();
    assert_eq!(spec.aci_location.as_deref(), Some("eastus"));
}

#[test]
fn features_a_build_lacks_are_invalid_not_ignored() {
    let without = ValidationContext {
        features: Features {
            fan_out: false,
            depends_on: false,
            ..Features::CURRENT
        },
        ..ctx()
    };
    for (yaml, needle) in [
        ("  command: [x]\n  completions: 5\n", "spec.completions"),
        ("  command: [x]\n  dependsOn: [a]\n", "spec.dependsOn"),
    ] {
        let text = format!("apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n{yaml}");
        let task = parse_manifest("t.yaml", text.as_bytes()).unwrap();
        let err = validate("t.yaml", "t", &task, &without).unwrap_err()[0].to_string();
        assert!(err.contains(needle) && err.contains("not supported yet"), "{err}");
        check(yaml).unwrap();
    }
}

#[test]
fn fan_out_bounds_are_checked() {
    let spec = check("  command: [x]\n  completions: 10\n  parallelism: 3\n  dependsOn: [jobs/split]\n").unwrap();
    assert_eq!((spec.completions, spec.parallelism), (10, 3));
    assert_eq!(spec.depends_on, [TaskKey::new("jobs/split")]);
    for (yaml, needle) in [
        ("  command: [x]\n  completions: 0\n", "at least 1"),
        ("  command: [x]\n  completions: 5000\n", "at most 1000"),
        ("  command: [x]\n  parallelism: 0\n", "at least 1"),
        ("  command: [x]\n  dependsOn: [../up]\n", "path without extension"),
        ("  command: [x]\n  dependsOn: [/etc/x]\n", "spec.dependsOn[0]"),
        ("  command: [x]\n  dependsOn: [ok, 'a\\\\b']\n", "spec.dependsOn[1]"),
        ("  command: [x]\n  dependsOn: [.skiff/events]\n", "state folder"),
        ("  command: [x]\n  dependsOn: [\"a\\u0000b\"]\n", "NUL"),
    ] {
        let err = check(yaml).unwrap_err();
        assert!(err.contains(needle), "{yaml}: {err}");
    }
}

#[test]
fn event_mode_needs_the_api() {
    let text = "apiVersion: skiff/v1\nkind: ContainerTask\nspec: {command: [x], completion: {mode: event}}\n";
    let task = parse_manifest("e.yaml", text.as_bytes()).unwrap();
    let without_api = ValidationContext {
        features: Features {
            event_completion: false,
            ..Features::CURRENT
        },
        ..ctx()
    };
    let err = validate("e.yaml", "e", &task, &without_api).unwrap_err();
    assert!(err[0].to_string().contains("--listen"), "{err:?}");
    assert!(validate("e.yaml", "e", &task, &ctx()).is_ok());
}

#[test]
fn env_and_names_are_checked() {
    let err = check("  command: [x]\n  env: [{name: SKIFF_X, value: a}, {name: A, value: b, valueFrom: {env: B}}]\n")
        .unwrap_err();
    assert!(err.contains("spec.env[0].name: SKIFF_X is reserved"), "{err}");
    assert!(err.contains("spec.env[1]: has both"), "{err}");
    let text = "apiVersion: skiff/v1\nkind: ContainerTask\nmetadata: {name: ../etc}\nspec: {command: [x]}\n";
    let task = parse_manifest("n.yaml", text.as_bytes()).unwrap();
    let err = validate("n.yaml", "n", &task, &ctx()).unwrap_err();
    assert!(
        err[0].to_string().contains("metadata.name: \"../etc\" may not contain"),
        "{:?}",
        err
    );
}

#[test]
fn host_paths_need_the_flag() {
    let err = check("  command: [x]\n  volumes: [{name: m, mountPath: /srv, hostPath: /srv}]\n").unwrap_err();
    assert!(err.contains("--allow-host-path /srv"), "{err}");
}

#[test]
fn hash_ignores_formatting_but_not_content() {
    let a = parse_manifest(
        "a.yaml",
        b"apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  retries: 1 # c\n  command: [a]\n",
    )
    .unwrap();
    let b = parse_manifest(
        "b.json",
        br#"{"kind":"ContainerTask","spec":{"command":["a"],"retries":1},"apiVersion":"skiff/v1"}"#,
    )
    .unwrap();
    let c = parse_manifest(
        "c.yaml",
        b"apiVersion: skiff/v1\nkind: ContainerTask\nspec: {command: [b], retries: 1}\n",
    )
    .unwrap();
    assert_eq!(spec_hash(&a), spec_hash(&b));
    assert_ne!(spec_hash(&a), spec_hash(&c));
}

#[test]
fn a_nul_is_refused_in_every_field_a_process_is_given_naming_the_field() {
    for (yaml, field) in [
        ("  command: [sh, \"a\\0b\"]\n", "spec.command[1]"),
        ("  command: [sh]\n  args: [x, \"\\0\"]\n", "spec.args[1]"),
        (
            "  command: [sh]\n  env: [{name: A, value: \"a\\0b\"}]\n",
            "spec.env[0].value",
        ),
        ("  command: [sh]\n  workingDir: \"/tmp/\\0\"\n", "spec.workingDir"),
    ] {
        let err = check(yaml).unwrap_err();
        assert!(
            err.contains(&format!("{field}: contains a NUL character")),
            "{yaml}: {err}"
        );
    }
}

#[test]
fn an_argument_or_variable_the_kernel_would_refuse_is_refused_here() {
    let big = "x".repeat(MAX_ARG_BYTES);
    let err = check(&format!("  command: [sh]\n  env: [{{name: A, value: {big}}}]\n")).unwrap_err();
    assert!(err.contains("spec.env[0].value: is 131072 bytes"), "{err}");
    let err = check(&format!("  command: [sh, {big}]\n")).unwrap_err();
    assert!(err.contains("spec.command[1]: is 131072 bytes"), "{err}");
    let fits = "x".repeat(MAX_ARG_BYTES - 3);
    assert!(check(&format!("  command: [sh]\n  env: [{{name: A, value: {fits}}}]\n")).is_ok());
}

#[test]
fn a_backoff_past_the_cap_is_noted_not_silently_capped() {
    let spec = check("  command: [x]\n  backoff: 500000000y\n").unwrap();
    assert!(
        spec.notes
            .iter()
            .any(|n| n.contains("spec.backoff: 500000000y") && n.contains("5m at most")),
        "{:?}",
        spec.notes
    );
    assert!(check("  command: [x]\n  backoff: 5m\n").unwrap().notes.is_empty());
}

#[test]
fn a_bad_name_from_the_file_blames_the_file_name_not_metadata_name() {
    let text = b"apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [x]\n";
    let task = parse_manifest("a b\x1b.yaml", text).unwrap();
    let err = validate("a b\x1b.yaml", "a b\x1b", &task, &ctx()).unwrap_err()[0].to_string();
    assert!(
        err.contains("file name: \"a b\\u{1b}\"") && !err.contains("metadata.name:"),
        "{err}"
    );
    assert!(err.contains("rename the file, or set metadata.name"), "{err}");
    let named = parse_manifest(
        "a b.yaml",
        b"apiVersion: skiff/v1\nkind: ContainerTask\nmetadata: {name: ok}\nspec:\n  command: [x]\n",
    )
    .unwrap();
    assert!(validate("a b.yaml", "a b", &named, &ctx()).is_ok());
}

const UAI: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull";

#[test]
fn pull_secrets_key_vault_references_and_identities_are_read() {
    let spec = check(&format!(
        "  runtime: aci\n  image: myacr.azurecr.io/a:1\n  command: [x]\n  imagePullSecrets:\n    - {{server: myacr.azurecr.io, identity: '{UAI}'}}\n    - {{server: other.io, username: u, passwordFrom: {{keyVault: {{secretUrl: 'https://vault1.vault.azure.net/secrets/p'}}}}}}\n  env: [{{name: K, valueFrom: {{keyVault: {{secretUrl: 'https://vault1.vault.azure.net/secrets/k/0123abcd'}}}}}}]\n  aci: {{identity: {{type: SystemAssigned}}, subnetIds: ['/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/a']}}\n"
    ))
    .unwrap();
    assert_eq!(spec.pull_secrets.len(), 2);
    assert_eq!(spec.pull_secrets[0].auth, PullAuth::Identity(UAI.into()));
    assert_eq!(
        spec.pull_secrets[1].auth,
        PullAuth::Password {
            username: "u".into(),
            password: EnvValue::External(SecretRef {
                url: "https://vault1.vault.azure.net/secrets/p".into()
            })
        }
    );
    assert!(matches!(&spec.env[0].1, EnvValue::External(r) if r.url.ends_with("/k/0123abcd")));
    assert!(spec.env[0].1.is_secret());
    assert_eq!(spec.aci.subnet_ids.len(), 1);
    assert!(spec.aci.identity.is_some());
    // The process runtime pulls nothing: a note, not an error.
    let spec =
        check("  command: [x]\n  imagePullSecrets: [{server: r.io, username: u, passwordFrom: {env: P}}]\n").unwrap();
    assert!(
        spec.notes.iter().any(|n| n.contains("imagePullSecrets")),
        "{:?}",
        spec.notes
    );
}

#[test]
fn bad_secret_references_identities_and_pull_secrets_name_the_field_and_the_fix() {
    let err = check(&format!(
        "  runtime: aci\n  image: busybox\n  command: [x]\n  imagePullSecrets:\n    - {{server: r.io, username: u, passwordFrom: {{env: P}}, identity: '{UAI}'}}\n    - {{server: 'https://r.io/v2', username: u, passwordFrom: {{env: P}}}}\n    - {{server: s.io, identity: pull}}\n    - {{server: t.io}}\n  env:\n    - {{name: A, valueFrom: {{keyVault: {{secretUrl: 'https://example.com/secrets/a'}}}}}}\n    - {{name: B, valueFrom: {{keyVault: {{secretUrl: 'http://myvault.vault.azure.net/secrets/b'}}}}}}\n    - {{name: C, valueFrom: {{}}}}\n    - {{name: D, valueFrom: {{env: D, keyVault: {{secretUrl: 'https://vault1.vault.azure.net/secrets/d'}}}}}}\n  aci:\n    identity: {{type: UserAssigned}}\n    subnetIds: [subnet-a]\n"
    ))
    .unwrap_err();
    for expected in [
        "spec.imagePullSecrets[0]: has both a password (username, passwordFrom) and an identity; keep one",
        "spec.imagePullSecrets[1].server: \"https://r.io/v2\" is not a registry host",
        "spec.imagePullSecrets[2].identity: \"pull\" is not a user-assigned identity's ARM id; write /subscriptions/",
        "spec.imagePullSecrets[3]: names no credential",
        "spec.env[0].valueFrom.keyVault.secretUrl: \"https://example.com/secrets/a\": \"example.com\" is not a Key Vault",
        "spec.env[1].valueFrom.keyVault.secretUrl: \"http://myvault.vault.azure.net/secrets/b\": plain http is accepted only on loopback",
        "spec.env[2].valueFrom: names no source",
        "spec.env[3].valueFrom: has both env and keyVault; keep one",
        "spec.aci.identity.userAssignedIdentities: `type: UserAssigned` needs at least one",
        "spec.aci.subnetIds[0]: \"subnet-a\" is not a subnet's ARM id",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // Docker pulls with passwords only.
    let err = check(&format!(
        "  runtime: docker\n  image: busybox\n  imagePullSecrets: [{{server: r.io, identity: '{UAI}'}}]\n"
    ))
    .unwrap_err();
    assert!(
        err.contains("spec.imagePullSecrets[0].identity: a managed identity pulls images on aci only"),
        "{err}"
    );
    // A storage key comes from the environment only.
    let err = check("  runtime: aci\n  image: busybox\n  command: [x]\n  volumes: [{name: s, mountPath: /s, azureFile: {shareName: sss, storageAccountName: acct, storageAccountKeyFrom: {keyVault: {secretUrl: 'https://vault1.vault.azure.net/secrets/k'}}}}]\n").unwrap_err();
    assert!(err.contains("storageAccountKeyFrom: takes `env: VARIABLE`"), "{err}");
}
