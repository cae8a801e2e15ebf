//! The create body: a [`ContainerSpec`] as the PUT of a container group, or a Permanent
//! error for what ACI cannot do (a working directory, host mounts, resources beyond its
//! limits, labels that cannot be tags), said before anything reaches ARM. Also the names
//! and tag keys ACI accepts.

use super::config::{DEFAULT_CPU, DEFAULT_MEMORY_GB, TAG_OWNER};
use crate::manifest::limits::{aci_memory_gb, aci_resource_problems};
use crate::manifest::{AciExtras, AciIdentityType, TaskSpec};
use crate::runtime::{AzureFileMount, ContainerSpec, RegistryAuth, RuntimeError, RuntimeOptions};
use crate::status::Reason;
use serde_json::{Value, json};

/// Always secrets: the callback and heartbeat URLs carry the attempt's token.
const CALLBACK_ENV: &str = "SKIFF_CALLBACK_URL";
const HEARTBEAT_ENV: &str = "SKIFF_HEARTBEAT_URL";
/// ARM's limits on tags.
const MAX_TAG_KEY: usize = 512;
const MAX_TAG_VALUE: usize = 256;
const MAX_TAGS: usize = 50;

/// The aci runtime's options for `task`, made into container `name`: its Azure Files
/// shares and its location. ACI has neither a working directory nor host folders to
/// mount: validation refuses both, and so does this (a Permanent create failure).
pub(crate) fn options(task: &TaskSpec, name: &str) -> Result<RuntimeOptions, String> {
    let refuse = |message: &str| permanent(name, message).to_string();
    if task.working_dir.is_some() {
        return Err(refuse(
            "ACI cannot set a working directory; remove workingDir (e.g. run `sh -c \"cd /dir && ...\"`)",
        ));
    }
    if task.volumes.iter().any(|volume| volume.host_path.is_some()) {
        return Err(refuse("ACI cannot mount host paths; use azureFile volumes"));
    }
    let azure_files = task
        .volumes
        .iter()
        .filter_map(|volume| {
            let file = volume.azure_file.as_ref()?;
            Some(AzureFileMount {
                name: volume.name.clone(),
                mount_path: volume.mount_path.clone(),
                read_only: volume.read_only,
                share_name: file.share_name.clone(),
                storage_account_name: file.storage_account_name.clone(),
                storage_account_key_env: file.storage_account_key_from.env.clone().unwrap_or_default(),
            })
        })
        .collect();
    Ok(RuntimeOptions::Aci {
        azure_files,
        location: task.aci_location.clone(),
        extras: task.aci.clone(),
    })
}

/// The request body for `spec`: a group of one container, tagged with its labels and
/// `owner`, in the task's location or else `default_location`.
pub(super) fn create_body(spec: &ContainerSpec, owner: &str, default_location: &str) -> Result<Value, RuntimeError> {
    let name = spec.name.as_str();
    let image = spec
        .image
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| permanent(name, "the aci runtime needs spec.image"))?;
    let RuntimeOptions::Aci {
        azure_files,
        location,
        extras,
    } = &spec.options
    else {
        return Err(spec.options.mismatch(crate::manifest::RuntimeKind::Aci, name));
    };
    if spec.command.is_empty() && !spec.args.is_empty() {
        return Err(permanent(
            name,
            "ACI replaces the image's entrypoint and arguments together; give command as well as args",
        ));
    }
    let problems = aci_resource_problems(spec.cpu, spec.memory_bytes);
    if !problems.is_empty() {
        return Err(permanent(name, problems.join("; ")));
    }
    let secret: std::collections::HashSet<&str> = spec
        .secret_env
        .iter()
        .map(String::as_str)
        .chain([CALLBACK_ENV, HEARTBEAT_ENV])
        .collect();
    let env: Vec<Value> = spec
        .env
        .iter()
        .map(|(key, value)| {
            if secret.contains(key.as_str()) {
                json!({"name": key, "secureValue": value})
            } else {
                json!({"name": key, "value": value})
            }
        })
        .collect();
    let mut volumes = Vec::new();
    let mut volume_mounts = Vec::new();
    for mount in azure_files {
        let key = std::env::var(&mount.storage_account_key_env).map_err(|_| {
            permanent(
                name,
                format!(
                    "volume {}: storageAccountKeyFrom.env {} is not set in the controller's environment",
                    mount.name, mount.storage_account_key_env
                ),
            )
        })?;
        volumes.push(json!({
            "name": mount.name,
            "azureFile": {
                "shareName": mount.share_name,
                "storageAccountName": mount.storage_account_name,
                "storageAccountKey": key,
                "readOnly": mount.read_only,
            }
        }));
        volume_mounts.push(json!({"name": mount.name, "mountPath": mount.mount_path, "readOnly": mount.read_only}));
    }
    let mut tags = serde_json::Map::new();
    for (key, value) in &spec.labels {
        if value.chars().count() > MAX_TAG_VALUE {
            return Err(permanent(
                name,
                format!("the label {key} is longer than the {MAX_TAG_VALUE} characters an Azure tag may hold"),
            ));
        }
        tags.insert(tag_key(key), Value::String(value.clone()));
    }
    tags.insert(TAG_OWNER.to_string(), Value::String(owner.to_string()));
    if tags.len() > MAX_TAGS {
        return Err(permanent(
            name,
            format!("more than {MAX_TAGS} labels; Azure allows {MAX_TAGS} tags"),
        ));
    }
    let command: Vec<&String> = spec.command.iter().chain(&spec.args).collect();
    let mut container = json!({
        "image": image,
        "environmentVariables": env,
        "resources": {"requests": {
            "cpu": spec.cpu.unwrap_or(DEFAULT_CPU),
            "memoryInGB": spec.memory_bytes.map(aci_memory_gb).unwrap_or(DEFAULT_MEMORY_GB),
        }},
    });
    if !command.is_empty() {
        container["command"] = json!(command);
    }
    if !volume_mounts.is_empty() {
        container["volumeMounts"] = Value::Array(volume_mounts);
    }
    let mut properties = json!({
        "osType": "Linux",
        "restartPolicy": "Never",
        "containers": [{"name": name, "properties": container}],
    });
    if !volumes.is_empty() {
        properties["volumes"] = Value::Array(volumes);
    }
    if !spec.registry_credentials.is_empty() {
        let credentials: Vec<Value> = spec
            .registry_credentials
            .iter()
            .map(|credential| match &credential.auth {
                RegistryAuth::Password { username, password } => {
                    json!({"server": credential.server, "username": username, "password": password})
                }
                RegistryAuth::Identity(id) => json!({"server": credential.server, "identity": id}),
            })
            .collect();
        properties["imageRegistryCredentials"] = Value::Array(credentials);
    }
    if !extras.subnet_ids.is_empty() {
        properties["subnetIds"] = extras.subnet_ids.iter().map(|id| json!({"id": id})).collect();
    }
    if let Some(dns) = &extras.dns_config {
        // The spec's DnsConfiguration takes the domains and options as one string each.
        let mut config = json!({"nameServers": dns.name_servers.iter().map(|s| s.trim()).collect::<Vec<_>>()});
        if !dns.search_domains.is_empty() {
            config["searchDomains"] = json!(dns.search_domains.join(" "));
        }
        if !dns.options.is_empty() {
            config["options"] = json!(dns.options.join(" "));
        }
        properties["dnsConfig"] = config;
    }
    let mut body = json!({
        "location": location.as_deref().map(str::trim).filter(|l| !l.is_empty()).unwrap_or(default_location),
        "tags": tags,
        "properties": properties,
    });
    if let Some(identity) = group_identity(spec, extras) {
        body["identity"] = identity;
    }
    Ok(body)
}

/// The group's `identity`: `spec.aci.identity`, plus every identity a registry credential
/// pulls with (ACI pulls only with an identity the group has).
fn group_identity(spec: &ContainerSpec, extras: &AciExtras) -> Option<Value> {
    let system = extras
        .identity
        .as_ref()
        .is_some_and(|identity| identity.kind == AciIdentityType::SystemAssigned);
    let mut users: Vec<&str> = extras
        .identity
        .iter()
        .flat_map(|identity| identity.user_assigned_identities.iter().map(String::as_str))
        .collect();
    for credential in &spec.registry_credentials {
        if let RegistryAuth::Identity(id) = &credential.auth
            && !users.iter().any(|known| known.eq_ignore_ascii_case(id))
        {
            users.push(id);
        }
    }
    let kind = match (system, users.is_empty()) {
        (false, true) => return None,
        (true, true) => "SystemAssigned",
        (false, false) => "UserAssigned",
        (true, false) => "SystemAssigned, UserAssigned",
    };
    let mut identity = json!({"type": kind});
    if !users.is_empty() {
        let map: serde_json::Map<String, Value> = users.into_iter().map(|id| (id.to_string(), json!({}))).collect();
        identity["userAssignedIdentities"] = Value::Object(map);
    }
    Some(identity)
}

/// ACI names groups and containers with lowercase letters, digits and single dashes, at
/// most 63 characters, starting and ending with a letter or digit. skiff's names always
/// are; anything else is refused before it reaches a URL.
pub(super) fn check_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Permanent {
            reason: Reason::CreateFailed,
            message: format!(
                "aci: {name:?} cannot name a container group (lowercase letters, digits and single dashes, at most 63)"
            ),
        })
    }
}

/// A label key as a tag key: ARM refuses `<>%&\?/` in tag names.
fn tag_key(key: &str) -> String {
    key.chars()
        .map(|c| if "<>%&\\?/".contains(c) { '_' } else { c })
        .take(MAX_TAG_KEY)
        .collect()
}

fn permanent(name: &str, message: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Permanent {
        reason: Reason::CreateFailed,
        message: format!("aci: {name}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_keys_lose_the_characters_arm_refuses() {
        assert_eq!(tag_key("skiff.task"), "skiff.task");
        assert_eq!(tag_key("a/b?c"), "a_b_c");
    }

    #[test]
    fn names_must_be_what_aci_accepts() {
        assert!(check_name("skiff-jobs-thumb-1a2b3c4d-1").is_ok());
        for bad in ["", "Skiff", "a--b", "-a", "a-", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
