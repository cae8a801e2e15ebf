//! The wire types: exactly the YAML/JSON of a `ContainerTask`, unknown fields rejected,
//! durations and quantities still as written. Everything else in `manifest/` builds on them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const API_VERSION: &str = "skiff/v1";
pub const KIND: &str = "ContainerTask";

/// A `ContainerTask` document, exactly as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "ContainerTask")]
pub struct ContainerTask {
    /// Always `skiff/v1`.
    pub api_version: String,
    /// Always `ContainerTask`.
    pub kind: String,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Shown in listings; defaults to the file stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The desired state. Its canonical JSON form is what `specHash` is taken over.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Where the task runs; defaults to the controller's `--runtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeKind>,
    /// Required for docker and aci; the process runtime ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<Completion>,
    /// Per attempt, from the container's start (humantime, e.g. `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Further attempts after a failed one (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// First retry delay, doubling up to 5m, with jitter (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<Cleanup>,
    /// Fan-out: number of indexed containers (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions: Option<u32>,
    /// At most this many indexes at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Fan-in: tasks that must have Succeeded first (a name), or ended either way
    /// (`{task: NAME, condition: finished}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<DependsOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aci: Option<AciSpec>,
    /// docker only: the network mode (`host`, `none`, or a network's name), overriding
    /// the controller's `--docker-network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Run on a schedule: each scheduled time is one whole run of the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// With a schedule: `true` starts no new runs (a running one carries on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// Named semaphores: the task runs only while it holds one slot of each, all taken at
    /// once. Their limits come from the controller's `--semaphore NAME=N`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub semaphores: Vec<String>,
    /// Fail an attempt that sends no heartbeat (a POST to `SKIFF_HEARTBEAT_URL`) for this
    /// long, counted from its start (humantime, at least 1s, e.g. `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<String>,
    /// Credentials for pulling `image` from private registries (docker and aci).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<ImagePullSecret>,
    /// Exit-code rules: what a failed attempt's exit code means; the first rule listing
    /// the code wins, and a code no rule lists is a failed attempt (`Count`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_exit: Vec<ExitRule>,
    /// With `completions`: how many indexes may fail (run out of retries) while the others
    /// carry on; the task then ends Succeeded (`SucceededWithFailedIndexes`). One more
    /// fails the task and stops the rest. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_indexes: Option<u32>,
}

/// One rule of `spec.onExit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExitRule {
    /// Exit codes from 1 to 255 (0 is success and may not be listed).
    #[schemars(length(min = 1), inner(range(min = 1, max = 255)))]
    pub exit_codes: Vec<i64>,
    pub action: ExitAction,
}

// FailTask: no more retries, whatever `retries` says; RetryUncounted: retried without
// counting against `retries` (at most 10 times a run, then counted); Succeed: the attempt
// succeeded; Count: a failed attempt, as without a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExitAction {
    FailTask,
    RetryUncounted,
    Succeed,
    Count,
}

impl ExitAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitAction::FailTask => "FailTask",
            ExitAction::RetryUncounted => "RetryUncounted",
            ExitAction::Succeed => "Succeed",
            ExitAction::Count => "Count",
        }
    }
}

/// One entry of `spec.dependsOn`: a task's name (it must have Succeeded), or the task
/// with the condition it must meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum DependsOn {
    Task(String),
    Conditional(ConditionalDependency),
}

impl DependsOn {
    pub fn task(&self) -> &str {
        match self {
            DependsOn::Task(task) => task,
            DependsOn::Conditional(entry) => &entry.task,
        }
    }

    pub fn condition(&self) -> DependencyCondition {
        match self {
            DependsOn::Task(_) => DependencyCondition::Succeeded,
            DependsOn::Conditional(entry) => entry.condition.unwrap_or_default(),
        }
    }
}

// By hand rather than `untagged`, whose only error is "did not match any variant": a
// mapping's mistakes (an unknown field, a wrong condition) are said as they are.
impl<'de> Deserialize<'de> for DependsOn {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = DependsOn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a task's name, or {task: NAME, condition: succeeded|finished}")
            }
            fn visit_str<E: serde::de::Error>(self, task: &str) -> Result<DependsOn, E> {
                Ok(DependsOn::Task(task.to_string()))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<DependsOn, M::Error> {
                ConditionalDependency::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(DependsOn::Conditional)
            }
        }
        de.deserialize_any(Entry)
    }
}

impl From<&str> for DependsOn {
    fn from(task: &str) -> Self {
        DependsOn::Task(task.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionalDependency {
    /// The task, by its path without extension, e.g. `jobs/split`.
    pub task: String,
    /// `succeeded` (default) or `finished` (Succeeded or Failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<DependencyCondition>,
}

// succeeded: the dependency must have Succeeded (if it Failed, so does this task);
// finished: it must have ended, Succeeded or Failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DependencyCondition {
    #[default]
    Succeeded,
    Finished,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first;
    /// or @hourly, @daily, @weekly, @monthly, @yearly, or `@every 90s` (at least 1s).
    pub cron: String,
    /// An IANA time zone, e.g. `Europe/Paris` (default UTC). DST gaps and repeats are
    /// handled as cron(8) does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What a scheduled time does while a run is active (default Forbid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// A run not started within this of its scheduled time is missed, not run (humantime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<String>,
    /// Scheduled times that passed while the controller was not running (default skip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_runs: Option<MissedRuns>,
    /// Finished and missed runs kept in the status (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_limit: Option<u32>,
}

// Allow: runs may overlap; Forbid: a scheduled time is skipped while a run is active;
// Replace: the active run is stopped and a new one started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ConcurrencyPolicy {
    Allow,
    #[default]
    Forbid,
    Replace,
}

// skip: none are run; latest: one catch-up run for the newest; all: each, oldest first,
// bounded by startingDeadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MissedRuns {
    #[default]
    Skip,
    Latest,
    All,
}

// Which runtime runs a task. The default (`--runtime` unset) is the process runtime:
// it needs nothing installed. (A plain comment: a doc comment would enter the schema.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    #[default]
    Process,
    Docker,
    Aci,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
            RuntimeKind::Aci => "aci",
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Taken from the controller's environment when the container starts; never written out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
}

/// Where a secret comes from: exactly one of `env` and `keyVault`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueFrom {
    /// Name of a variable in the controller's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// An Azure Key Vault secret, read by the controller with its own Azure credential just
    /// before the container is created (never written anywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_vault: Option<KeyVaultRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyVaultRef {
    /// `https://VAULT.vault.azure.net/secrets/NAME[/VERSION]`.
    pub secret_url: String,
}

/// Credentials for one registry: a user name and a password from a secret, or (aci only)
/// a managed identity's ARM id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImagePullSecret {
    /// The registry's host name, e.g. `myacr.azurecr.io`.
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_from: Option<ValueFrom>,
    /// aci only: a user-assigned managed identity's ARM id, which pulls with no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// CPU cores: a number (`1`, `0.5`) or millicores (`"500m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory: bytes, or a number with a suffix (`1.5Gi`, `512Mi`, `1G`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// A number or a string with a unit, as in Kubernetes resource quantities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Quantity {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// docker and process; allowed only under `--allow-host-path` prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// aci only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_file: Option<AzureFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AzureFile {
    pub share_name: String,
    pub storage_account_name: String,
    pub storage_account_key_from: ValueFrom,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Completion {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<CompletionMode>,
    /// How often the runtime is polled (humantime; default 10s); a safety net in event mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompletionMode {
    Poll,
    Event,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Cleanup {
    Always,
    OnSuccess,
    Never,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AciSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The group's managed identity, so the task reaches Azure resources with no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<AciIdentity>,
    /// Subnets (ARM ids) the group is placed in (VNet injection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ids: Vec<String>,
    /// How long the group may take to start (image pulls included) before the attempt
    /// fails with `StartTimeout` (humantime; default 15m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<String>,
    /// The group's DNS resolver settings (ACI's `dnsConfig`), e.g. for a VNet's own DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<AciDnsConfig>,
}

/// ACI's `dnsConfig`: what the containers' `/etc/resolv.conf` says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AciDnsConfig {
    /// DNS servers' IP addresses (at least one).
    pub name_servers: Vec<String>,
    /// Domains to search for short host names, e.g. `[corp.example.com]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_domains: Vec<String>,
    /// Resolver options, e.g. `[ndots:2, timeout:3]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AciIdentity {
    #[serde(rename = "type")]
    pub kind: AciIdentityType,
    /// ARM ids of user-assigned identities (with `type: UserAssigned`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_assigned_identities: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AciIdentityType {
    SystemAssigned,
    UserAssigned,
}

/// The JSON Schema of a ContainerTask, generated from these types.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(ContainerTask);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
