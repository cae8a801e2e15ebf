//! Conformance of the aci runtime with ACI's REST spec (api-version 2026-05-01): every
//! create body the runtime sends, with each feature skiff uses (identity, registry
//! credentials, `secureValue`s, subnets, Azure Files, dnsConfig), is checked against the
//! `ContainerGroup` definitions in `fixtures/aci-container-group-2026-05-01.json` (written
//! from the spec; its path and commit are in the file): property names, types, enums and
//! required fields. Also: no conditional header on the PUT (the spec declares none), and a
//! create goes through whichever long-running-operation headers the 201 carries.

#[path = "support/arm_sim.rs"]
mod arm_sim;

use arm_sim::{ArmSim, LOCATION, LroHeaders, RESOURCE_GROUP, STORAGE_KEY_ENV, SUBSCRIPTION, SimConfig};
use serde_json::{Value, json};
use skiff::azure::CredentialKind;
use skiff::manifest::{AciDnsConfig, AciExtras, AciIdentity, AciIdentityType};
use skiff::runtime::aci::{AciConfig, AciCredential, AciRuntime};
use skiff::runtime::{
    AzureFileMount, ContainerSpec, ContainerState, LABEL_ATTEMPT_ID, LABEL_TASK, RegistryAuth, RegistryCredential,
    Runtime, RuntimeOptions,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const FIXTURE: &str = include_str!("fixtures/aci-container-group-2026-05-01.json");
const UAI: &str = "/subscriptions/00000000-0000-0000-0000-00000000cafe/resourceGroups/rg-id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/task";
const SUBNET: &str = "/subscriptions/00000000-0000-0000-0000-00000000cafe/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/aci";

/// Where `value` departs from the fixture's definition `name`, each at its JSON path.
fn check(schema: &Value, name: &str, value: &Value, at: &str, problems: &mut Vec<String>) {
    let definition = &schema["definitions"][name];
    assert!(definition.is_object(), "the fixture has no definition {name}");
    check_against(schema, definition, value, at, problems);
}

fn check_against(schema: &Value, rule: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    if let Some(name) = rule["$ref"].as_str() {
        return check(schema, name, value, at, problems);
    }
    if rule["readOnly"] == json!(true) {
        return problems.push(format!(
            "{at}: read-only in the spec; ARM writes it, a client does not send it"
        ));
    }
    if rule["undescribed"] == json!(true) {
        return problems.push(format!(
            "{at}: in the spec, but not described in the fixture yet: describe it from the spec"
        ));
    }
    let kind = rule["type"].as_str().unwrap_or("");
    let fits = match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "" => true,
        other => panic!("the fixture names an unknown type {other}"),
    };
    if !fits {
        return problems.push(format!("{at}: is {value}, the spec wants a {kind}"));
    }
    if let Some(allowed) = rule["enum"].as_array()
        && !allowed.contains(value)
    {
        problems.push(format!("{at}: {value} is none of the spec's {allowed:?}"));
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            check_against(schema, &rule["items"], item, &format!("{at}[{i}]"), problems);
        }
    }
    let Some(object) = value.as_object() else { return };
    for required in rule["required"].as_array().into_iter().flatten() {
        let required = required.as_str().unwrap_or_default();
        if !object.contains_key(required) {
            problems.push(format!("{at}: lacks {required}, which the spec requires"));
        }
    }
    for (key, inner) in object {
        let path = format!("{at}.{key}");
        if let Some(rule) = rule["properties"].get(key) {
            check_against(schema, rule, inner, &path, problems);
        } else if rule["additionalProperties"].is_object() {
            check_against(schema, &rule["additionalProperties"], inner, &path, problems);
        } else {
            problems.push(format!("{path}: the spec names no such property"));
        }
    }
}

fn problems_of(body: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(FIXTURE).expect("the fixture parses");
    assert_eq!(
        schema["apiVersion"],
        skiff::runtime::aci::API_VERSION,
        "the fixture's version is the runtime's"
    );
    let mut problems = Vec::new();
    check(
        &schema,
        schema["root"].as_str().unwrap_or_default(),
        body,
        "body",
        &mut problems,
    );
    problems
}

fn runtime(sim: &ArmSim, state: &std::path::Path) -> AciRuntime {
    arm_sim::identity();
    let mut config = AciConfig::new(
        SUBSCRIPTION,
        RESOURCE_GROUP,
        LOCATION,
        AciCredential::Azure(CredentialKind::Managed),
    );
    config.arm_endpoint = sim.endpoint.clone();
    config.poll_min = Duration::from_millis(50);
    config.poll_max = Duration::from_millis(250);
    AciRuntime::new(state, config).expect("an aci runtime")
}

fn spec(name: &str, extras: AciExtras) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        labels: BTreeMap::from([
            (LABEL_TASK.to_string(), format!("jobs/{name}")),
            (LABEL_ATTEMPT_ID.to_string(), "2026-11-30T10:00:00.000Z".to_string()),
        ]),
        image: Some("busybox".to_string()),
        command: vec!["sh".into(), "-c".into(), "echo hi".into()],
        options: RuntimeOptions::Aci {
            azure_files: Vec::new(),
            location: None,
            extras,
        },
        env: vec![("SKIFF_TASK".into(), format!("jobs/{name}"))],
        ..Default::default()
    }
}

/// A group using everything skiff can put in a create body.
fn everything(name: &str) -> ContainerSpec {
    let mut spec = spec(
        name,
        AciExtras {
            identity: Some(AciIdentity {
                kind: AciIdentityType::SystemAssigned,
                user_assigned_identities: Vec::new(),
            }),
            subnet_ids: vec![SUBNET.into()],
            dns_config: Some(AciDnsConfig {
                name_servers: vec!["10.0.0.4".into(), "10.0.0.5".into()],
                search_domains: vec!["corp.example.com".into(), "example.com".into()],
                options: vec!["ndots:2".into()],
            }),
            ..Default::default()
        },
    );
    if let RuntimeOptions::Aci { azure_files, .. } = &mut spec.options {
        azure_files.push(AzureFileMount {
            name: "media".into(),
            mount_path: "/media".into(),
            read_only: true,
            share_name: "media".into(),
            storage_account_name: "skiffmedia".into(),
            storage_account_key_env: STORAGE_KEY_ENV.into(),
        });
    }
    spec.image = Some("myacr.azurecr.io/tools/thumb:1".into());
    spec.args = vec!["--fast".into()];
    spec.cpu = Some(1.5);
    spec.memory_bytes = Some(3 * 1024 * 1024 * 1024 / 2);
    spec.env.push(("API_KEY".into(), "s3cret".into()));
    spec.env.push((
        "SKIFF_CALLBACK_URL".into(),
        "http://127.0.0.1:1/v1/tasks/x/events?token=t".into(),
    ));
    spec.secret_env = BTreeSet::from(["API_KEY".to_string()]);
    spec.registry_credentials = vec![
        RegistryCredential {
            server: "myacr.azurecr.io".into(),
            auth: RegistryAuth::Identity(UAI.into()),
        },
        RegistryCredential {
            server: "other.example.io".into(),
            auth: RegistryAuth::Password {
                username: "puller".into(),
                password: "pw".into(),
            },
        },
    ];
    spec
}

async fn wait_exited(rt: &AciRuntime, name: &str) -> ContainerState {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = rt.inspect(name).await.expect("inspect").state;
        if matches!(state, ContainerState::Exited { .. }) {
            return state;
        }
        assert!(Instant::now() < deadline, "{name} never exited: {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_create_body_conforms_to_the_container_group_definitions_of_the_spec() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let state = tempfile::tempdir().unwrap();
    let rt = runtime(&sim, state.path());
    let mut user_and_system = everything("skiff-all-00000000-1");
    user_and_system.name = "skiff-users-00000000-1".into();
    if let RuntimeOptions::Aci { extras, .. } = &mut user_and_system.options {
        extras.identity = Some(AciIdentity {
            kind: AciIdentityType::UserAssigned,
            user_assigned_identities: vec![UAI.into()],
        });
        extras.dns_config = Some(AciDnsConfig {
            name_servers: vec!["10.0.0.4".into()],
            ..Default::default()
        });
    }
    for spec in [
        spec("skiff-plain-00000000-1", AciExtras::default()),
        everything("skiff-all-00000000-1"),
        user_and_system,
    ] {
        rt.ensure(&spec).await.expect("ensure");
        wait_exited(&rt, &spec.name).await;
        rt.delete(&spec.name).await.expect("delete");
    }
    let stats = sim.stats();
    assert_eq!(stats.create_bodies.len(), 3);
    for record in &stats.create_bodies {
        let problems = problems_of(&record.body);
        assert!(problems.is_empty(), "{}: {problems:#?}\n{:#}", record.name, record.body);
    }
    // Each feature was in a checked body, so the check covered it.
    let all = &stats.create_bodies[1].body;
    let properties = &all["properties"];
    let container = &properties["containers"][0]["properties"];
    assert_eq!(all["identity"]["type"], "SystemAssigned, UserAssigned", "{all:#}");
    assert!(
        properties["imageRegistryCredentials"]
            .as_array()
            .is_some_and(|c| c.len() == 2)
    );
    assert!(properties["subnetIds"][0]["id"].is_string());
    assert_eq!(properties["dnsConfig"]["searchDomains"], "corp.example.com example.com");
    assert_eq!(properties["dnsConfig"]["options"], "ndots:2");
    assert!(properties["volumes"][0]["azureFile"]["storageAccountKey"].is_string());
    assert!(container["volumeMounts"][0]["mountPath"].is_string());
    let secure: Vec<&str> = container["environmentVariables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v.get("secureValue").is_some())
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(secure, ["API_KEY", "SKIFF_CALLBACK_URL"]);
    assert_eq!(stats.create_bodies[2].body["identity"]["type"], "UserAssigned");
    assert_eq!(
        stats.conditional_puts, 0,
        "no If-None-Match/If-Match: ContainerGroups_CreateOrUpdate declares neither"
    );
}

#[test]
fn the_check_finds_what_the_spec_refuses() {
    let good = json!({"location": "westus2", "tags": {"a": "b"}, "properties": {
        "osType": "Linux", "restartPolicy": "Never",
        "containers": [{"name": "c", "properties": {"image": "busybox",
            "resources": {"requests": {"cpu": 1, "memoryInGB": 1.5}}}}]}});
    assert_eq!(problems_of(&good), Vec::<String>::new());
    let mut bad = good.clone();
    bad["properties"]["restartPolicy"] = json!("Sometimes");
    bad["properties"]["containers"][0]["properties"]["resources"]["requests"] = json!({"cpu": "1"});
    bad["properties"]["containers"][0]["properties"]["enviromentVariables"] = json!([]);
    bad["properties"]["provisioningState"] = json!("Succeeded");
    bad["properties"]["ipAddress"] = json!({"type": "Public", "ports": []});
    bad["identity"] = json!({"type": "Managed"});
    bad["tags"]["n"] = json!(1);
    let problems = problems_of(&bad);
    let expected = [
        "body.properties.restartPolicy: \"Sometimes\" is none of",
        "body.properties.containers[0].properties.resources.requests: lacks memoryInGB",
        "body.properties.containers[0].properties.resources.requests.cpu: is \"1\", the spec wants a number",
        "body.properties.containers[0].properties.enviromentVariables: the spec names no such property",
        "body.properties.provisioningState: read-only",
        "body.properties.ipAddress: in the spec, but not described",
        "body.identity.type: \"Managed\" is none of",
        "body.tags.n: is 1, the spec wants a string",
    ];
    for want in expected {
        assert!(problems.iter().any(|p| p.starts_with(want)), "{want}\n{problems:#?}");
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_answers_with_location_and_retry_after_and_either_alone_is_enough() {
    arm_sim::identity();
    // The 201 as the spec declares it (final-state-via: location).
    let sim = ArmSim::start(SimConfig::default()).await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.ContainerInstance/containerGroups/by-hand?api-version={}",
        sim.endpoint,
        arm_sim::API_VERSION
    );
    let body = json!({"location": LOCATION, "properties": {"osType": "Linux", "restartPolicy": "Never",
        "containers": [{"name": "by-hand", "properties": {"image": "busybox", "command": ["sleep", "1"],
            "resources": {"requests": {"cpu": 1, "memoryInGB": 1}}}}]}});
    let answer = http
        .put(&url)
        .bearer_auth("sim-token-by-hand")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let location = header("location").expect("Location on the 201");
    assert!(header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok()));
    assert!(header("azure-asyncoperation").is_some());
    let first = http
        .get(&location)
        .bearer_auth("sim-token-by-hand")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202, "still provisioning");
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let answer = http
            .get(&location)
            .bearer_auth("sim-token-by-hand")
            .send()
            .await
            .unwrap();
        if answer.status() == 200 {
            break answer.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the operation never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["properties"]["provisioningState"], "Succeeded");

    // The runtime needs neither header: it follows the group's own GET.
    for headers in [LroHeaders::LocationOnly, LroHeaders::AzureAsyncOperationOnly] {
        let sim = ArmSim::start(SimConfig {
            create_headers: headers,
            ..SimConfig::default()
        })
        .await;
        let state = tempfile::tempdir().unwrap();
        let rt = runtime(&sim, state.path());
        let spec = spec("skiff-lro-00000000-1", AciExtras::default());
        rt.ensure(&spec).await.expect("ensure");
        match wait_exited(&rt, &spec.name).await {
            ContainerState::Exited { exit_code, .. } => assert_eq!(exit_code, Some(0), "{headers:?}"),
            other => panic!("{headers:?}: {other:?}"),
        }
        rt.delete(&spec.name).await.expect("delete");
        assert_eq!(sim.stats().created.len(), 1, "{headers:?}");
    }
}
