//! Semantic validation: a parsed [`ContainerTask`] becomes a resolved [`TaskSpec`], or a
//! list of every mistake, each naming the field path and the fix.
//!
//! Here: the sections every task goes through, in the order their mistakes are listed;
//! [`runtimes`] (what each runtime accepts) and [`aci`] (ACI's rules) beside them, and
//! [`values`] (the texts a manifest spells: names, durations, quantities) and [`context`]
//! (what validation knows of the controller) below them.

mod aci;
mod context;
mod heartbeat;
mod policies;
mod runtimes;
mod secrets;
mod values;

pub use context::{Features, ValidationContext};
pub use policies::ExitRuleSpec;
pub use secrets::{check_secret_url, is_arm_id};

use super::limits::MAX_RETRY_DELAY;
use super::parse::ManifestError;
use super::wire::{
    Cleanup, CompletionMode, ConcurrencyPolicy, ContainerTask, DependencyCondition, DependsOn, MissedRuns, RuntimeKind,
    Spec, Volume,
};
use crate::schedule::Schedule;
use crate::task::{BadTaskKey, TaskKey};
use context::NUL;
use sha2::{Digest, Sha256};
use std::time::Duration;
use values::{MAX_ARG_BYTES, check_name, is_env_name, parse_cpu, parse_duration, parse_memory, too_long};

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
const MAX_RETRIES: u32 = 100;
/// Most indexes of one fan-out: each has its own entry in the status, which is rewritten
/// whole at every step.
const MAX_COMPLETIONS: u32 = 1000;

/// A value for one environment variable of a container.
#[derive(Clone, PartialEq, Eq)]
pub enum EnvValue {
    Value(String),
    /// Read from the controller's environment when the container is created.
    FromEnv(String),
    /// Kept outside the controller (a Key Vault secret): read by the controller's secret
    /// source just before the create, never written anywhere.
    External(SecretRef),
}

impl std::fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvValue::Value(value) => write!(f, "{value:?}"),
            EnvValue::FromEnv(var) => write!(f, "valueFrom(env {var})"),
            EnvValue::External(reference) => write!(f, "valueFrom({})", reference.url),
        }
    }
}

impl EnvValue {
    /// Whether the value is a secret (never shown, hidden where a runtime can hide it).
    pub fn is_secret(&self) -> bool {
        !matches!(self, EnvValue::Value(_))
    }
}

/// A secret kept outside the controller, by its URL (which is no secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub url: String,
}

/// Credentials for pulling from one registry (`spec.imagePullSecrets[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSecret {
    /// The registry's host, e.g. `myacr.azurecr.io`.
    pub server: String,
    pub auth: PullAuth,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullAuth {
    /// A user and a password from a secret source (never a literal).
    Password { username: String, password: EnvValue },
    /// aci: a user-assigned managed identity's ARM id.
    Identity(String),
}

/// What only ACI reads of a task beyond its location: its identity and its subnets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AciExtras {
    /// `spec.aci.identity`.
    pub identity: Option<crate::manifest::wire::AciIdentity>,
    /// `spec.aci.subnetIds`.
    pub subnet_ids: Vec<String>,
    /// `spec.aci.subscriptionId` and `resourceGroup`: the task's own placement (each
    /// defaults to the controller's).
    pub subscription_id: Option<String>,
    pub resource_group: Option<String>,
    /// `spec.aci.startTimeout`; the runtime's default when `None`.
    pub start_timeout: Option<Duration>,
    /// `spec.aci.dnsConfig`.
    pub dns_config: Option<crate::manifest::wire::AciDnsConfig>,
}

/// A validated spec with every default filled in: what the controller acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    pub spec_hash: String,
    pub runtime: RuntimeKind,
    pub image: Option<String>,
    /// The program and its first arguments (docker: the entrypoint); empty means the
    /// image's own.
    pub command: Vec<String>,
    /// Further arguments (docker: the image's cmd is replaced by these).
    pub args: Vec<String>,
    /// docker only: the network mode, overriding `--docker-network`.
    pub network: Option<String>,
    pub working_dir: Option<String>,
    pub env: Vec<(String, EnvValue)>,
    pub cpu: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub volumes: Vec<Volume>,
    /// aci only: `spec.aci.location`, overriding the controller's `--aci-location`.
    pub aci_location: Option<String>,
    /// aci only: the group's identity and subnets.
    pub aci: AciExtras,
    /// `spec.imagePullSecrets`: docker and aci.
    pub pull_secrets: Vec<PullSecret>,
    pub completion_mode: CompletionMode,
    pub poll_interval: Duration,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub backoff: Duration,
    pub cleanup: Cleanup,
    pub completions: u32,
    pub parallelism: u32,
    pub depends_on: Vec<TaskKey>,
    /// `spec.schedule`, parsed: the task runs once per scheduled time.
    pub schedule: Option<ScheduleRules>,
    /// `spec.suspend`: no new scheduled runs.
    pub suspend: bool,
    /// `spec.semaphores`: the named semaphores to hold one slot of each while running.
    pub semaphores: Vec<String>,
    /// `spec.heartbeatTimeout`: an attempt silent for longer fails (`HeartbeatTimeout`).
    pub heartbeat_timeout: Option<Duration>,
    /// Things the user should know that are not errors, e.g. a field this runtime ignores.
    pub notes: Vec<String>,
    /// `spec.onExit`: what a failed attempt's exit code means, first match wins.
    pub on_exit: Vec<ExitRuleSpec>,
    /// `spec.maxFailedIndexes` (0 unless set): indexes that may fail while the task succeeds.
    pub max_failed_indexes: u32,
    /// The tasks of `depends_on` whose condition is `finished`: an end either way will do.
    pub finished_dependencies: Vec<TaskKey>,
}

/// A task's schedule, validated, with its defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRules {
    pub schedule: Schedule,
    /// The cron text as written, for listings.
    pub cron: String,
    pub time_zone: Option<String>,
    pub concurrency_policy: ConcurrencyPolicy,
    pub starting_deadline: Option<Duration>,
    pub missed_runs: MissedRuns,
    pub history_limit: u32,
}

pub const DEFAULT_HISTORY_LIMIT: u32 = 10;
const MAX_HISTORY_LIMIT: u32 = 100;

/// `sha256:<hex>` over the canonical JSON of `spec`: struct fields in declaration order,
/// absent fields omitted. Comments, key order and formatting never change it. `schedule`
/// and `suspend` are left out: they say when runs start, not what a run is, so editing
/// them never stops or re-runs anything (and a task without them hashes as before).
pub fn spec_hash(task: &ContainerTask) -> String {
    let mut spec = task.spec.clone();
    spec.schedule = None;
    spec.suspend = false;
    // `{task: a}` and `{task: a, condition: succeeded}` say what `a` says.
    for dep in &mut spec.depends_on {
        if dep.condition() == DependencyCondition::Succeeded {
            *dep = DependsOn::Task(dep.task().to_string());
        }
    }
    let canonical = serde_json::to_vec(&spec).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&canonical)))
}

/// Validates `task`, read from `file`, whose stem is `default_name`.
pub fn validate(
    file: &str,
    default_name: &str,
    task: &ContainerTask,
    ctx: &ValidationContext<'_>,
) -> Result<TaskSpec, Vec<ManifestError>> {
    let mut errors = Vec::new();
    let mut fail = |detail: String| errors.push(ManifestError::new(file, detail));
    let spec = &task.spec;
    let mut notes = Vec::new();

    // Every section reports into `fail`, in this order, so that every mistake is said at once.
    let name = metadata(task, default_name, &mut fail);
    let runtime = runtimes::runtime(spec, ctx, &mut notes, &mut fail);
    program(spec, &mut fail);
    let env = env(spec, ctx, &mut fail);
    let (cpu, memory_bytes) = resources(spec, &mut fail);
    runtimes::volumes(spec, runtime, ctx, &mut fail);
    let pull_secrets = secrets::pull_secrets(spec, runtime, ctx, &mut notes, &mut fail);
    let (aci_location, aci) = aci::rules(spec, runtime, cpu, memory_bytes, ctx, &mut fail);
    let Timing {
        completion_mode,
        poll_interval,
        timeout,
        backoff,
        retries,
    } = timing(spec, ctx, &mut notes, &mut fail);
    let (completions, parallelism, depends_on) = fan(spec, ctx, &mut fail);
    let schedule = schedule(spec, &mut fail);
    let semaphores = semaphores(spec, &mut fail);
    let on_exit = policies::on_exit(spec, &mut fail);
    let max_failed_indexes = policies::max_failed_indexes(spec, completions, &mut fail);
    let heartbeat_timeout = heartbeat::timeout(spec, ctx, &mut fail);

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(TaskSpec {
        name,
        spec_hash: spec_hash(task),
        runtime,
        image: spec.image.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        network: spec.network.clone(),
        working_dir: spec.working_dir.clone(),
        env,
        cpu,
        memory_bytes,
        volumes: spec.volumes.clone(),
        aci_location,
        aci,
        pull_secrets,
        completion_mode,
        poll_interval,
        timeout,
        retries,
        backoff,
        cleanup: spec.cleanup.unwrap_or(Cleanup::Always),
        completions,
        parallelism,
        depends_on,
        schedule,
        suspend: spec.suspend,
        semaphores,
        heartbeat_timeout,
        notes,
        on_exit,
        max_failed_indexes,
        finished_dependencies: policies::finished_dependencies(spec),
    })
}

/// `schedule` and `suspend`.
fn schedule(spec: &Spec, fail: &mut impl FnMut(String)) -> Option<ScheduleRules> {
    let Some(wire) = &spec.schedule else {
        if spec.suspend {
            fail("spec.suspend: only a task with spec.schedule can be suspended; remove suspend".into());
        }
        return None;
    };
    let mut ok = true;
    let parsed = match Schedule::parse(&wire.cron, wire.time_zone.as_deref()) {
        Ok(parsed) => Some(parsed),
        Err(err) => {
            fail(format!("spec.schedule.{}: {}", err.field, err.message));
            None
        }
    };
    let starting_deadline = match &wire.starting_deadline {
        None => None,
        Some(text) => match parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            _ => {
                ok = false;
                fail(format!(
                    "spec.schedule.startingDeadline: {text:?} is not a duration of at least 1s; write e.g. 10m"
                ));
                None
            }
        },
    };
    let history_limit = wire.history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if history_limit > MAX_HISTORY_LIMIT {
        ok = false;
        fail(format!(
            "spec.schedule.historyLimit: {history_limit} is too many; at most {MAX_HISTORY_LIMIT} runs are kept in the status"
        ));
    }
    if !spec.depends_on.is_empty() {
        ok = false;
        fail("spec.schedule: a scheduled task cannot have spec.dependsOn (not supported); remove one of them".into());
    }
    Some(ScheduleRules {
        schedule: parsed.filter(|_| ok)?,
        cron: wire.cron.trim().to_string(),
        time_zone: wire.time_zone.clone(),
        concurrency_policy: wire.concurrency_policy.unwrap_or_default(),
        starting_deadline,
        missed_runs: wire.missed_runs.unwrap_or_default(),
        history_limit,
    })
}

/// `metadata`: the task's name (from the file's stem unless set) and its labels.
fn metadata(task: &ContainerTask, default_name: &str, fail: &mut impl FnMut(String)) -> String {
    let name = task.metadata.name.clone().unwrap_or_else(|| default_name.to_string());
    if let Err(why) = check_name(&name) {
        if task.metadata.name.is_some() {
            fail(format!("metadata.name: {name:?} {why}"));
        } else {
            // The user never wrote a name: the file's gave it, so blame the file name.
            let problem = why.split("; ").next().unwrap_or(why);
            fail(format!(
                "file name: {name:?} (the file name without its extension) names the task, as metadata.name is not set, and {problem}; rename the file, or set metadata.name"
            ));
        }
    }
    for key in task.metadata.labels.keys() {
        if key.trim().is_empty() {
            fail("metadata.labels: a label key is empty; give every label a name".into());
        }
    }
    name
}

/// The program: what no OS can pass to one (a NUL, an argument beyond Linux's limit).
fn program(spec: &Spec, fail: &mut impl FnMut(String)) {
    // A NUL cannot be passed to a program (the OS ends every argument, variable and path
    // at it), so such a task could never be created: say so now, naming the field.
    for (field, parts) in [("spec.command", &spec.command), ("spec.args", &spec.args)] {
        for (i, part) in parts.iter().enumerate() {
            if part.contains('\0') {
                fail(format!("{field}[{i}]: {NUL}"));
            } else if part.len() >= MAX_ARG_BYTES {
                fail(format!("{field}[{i}]: {}", too_long(part.len())));
            }
        }
    }
    if let Some(dir) = &spec.working_dir {
        if dir.trim().is_empty() {
            fail("spec.workingDir: is empty; remove it or give a directory".into());
        } else if dir.contains('\0') {
            fail(format!("spec.workingDir: {NUL}"));
        }
    }
    if spec.image.as_deref().is_some_and(|image| image.contains('\0')) {
        fail(format!("spec.image: {NUL}"));
    }
}

/// `env`: names, duplicates, reserved names, values and where they come from.
fn env(spec: &Spec, ctx: &ValidationContext<'_>, fail: &mut impl FnMut(String)) -> Vec<(String, EnvValue)> {
    let mut env = Vec::new();
    let mut seen_env = std::collections::HashSet::new();
    for (i, var) in spec.env.iter().enumerate() {
        let at = format!("spec.env[{i}]");
        if !is_env_name(&var.name) {
            fail(format!(
                "{at}.name: {:?} is not a valid variable name; use letters, digits and '_', not starting with a digit",
                var.name
            ));
        } else if var.name.starts_with("SKIFF_") {
            fail(format!(
                "{at}.name: {} is reserved: skiff sets SKIFF_* variables itself; rename it",
                var.name
            ));
        } else if !seen_env.insert(var.name.clone()) {
            fail(format!("{at}.name: {} is set twice; keep one", var.name));
        }
        match (&var.value, &var.value_from) {
            (Some(value), None) => {
                if value.contains('\0') {
                    fail(format!("{at}.value: {NUL}"));
                } else if var.name.len() + 1 + value.len() >= MAX_ARG_BYTES {
                    fail(format!("{at}.value: {}", too_long(value.len())));
                }
                env.push((var.name.clone(), EnvValue::Value(value.clone())));
            }
            (None, Some(from)) => {
                if let Some(value) = secrets::value_from(from, &format!("{at}.valueFrom"), ctx, fail) {
                    env.push((var.name.clone(), value));
                }
            }
            (Some(_), Some(_)) => fail(format!("{at}: has both value and valueFrom; keep one")),
            (None, None) => fail(format!("{at}: has neither value nor valueFrom; add `value: ...`")),
        }
    }
    env
}

/// `resources`: cpu and memory as numbers (what a runtime can give is its own rule).
fn resources(spec: &Spec, fail: &mut impl FnMut(String)) -> (Option<f64>, Option<u64>) {
    let (mut cpu, mut memory_bytes) = (None, None);
    if let Some(resources) = &spec.resources {
        if let Some(q) = &resources.cpu {
            match parse_cpu(q) {
                Ok(value) => cpu = Some(value),
                Err(why) => fail(format!("spec.resources.cpu: {why}")),
            }
        }
        if let Some(q) = &resources.memory {
            match parse_memory(q) {
                Ok(value) => memory_bytes = Some(value),
                Err(why) => fail(format!("spec.resources.memory: {why}")),
            }
        }
    }
    (cpu, memory_bytes)
}

/// Completion, durations and retries.
struct Timing {
    completion_mode: CompletionMode,
    poll_interval: Duration,
    timeout: Option<Duration>,
    backoff: Duration,
    retries: u32,
}

fn timing(spec: &Spec, ctx: &ValidationContext<'_>, notes: &mut Vec<String>, fail: &mut impl FnMut(String)) -> Timing {
    let completion = spec.completion.clone().unwrap_or_default();
    let completion_mode = completion.mode.unwrap_or(CompletionMode::Poll);
    if completion_mode == CompletionMode::Event && !ctx.features.event_completion {
        fail(
            "spec.completion.mode: event completion needs the controller's HTTP API; start it with --listen 127.0.0.1:PORT (and --callback-url if containers reach it at another address), or use `mode: poll`"
                .into(),
        );
    }
    let poll_interval = match &completion.poll_interval {
        None => DEFAULT_POLL_INTERVAL,
        Some(text) => match parse_duration(text) {
            Ok(d) if d < MIN_POLL_INTERVAL => {
                fail(format!(
                    "spec.completion.pollInterval: {text:?} is too short; use at least 100ms"
                ));
                d
            }
            Ok(d) => d,
            Err(()) => {
                fail(format!(
                    "spec.completion.pollInterval: {text:?} is not a duration; write e.g. 10s or 1m"
                ));
                DEFAULT_POLL_INTERVAL
            }
        },
    };
    let timeout = match &spec.timeout {
        None => None,
        Some(text) => match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                fail("spec.timeout: must be longer than zero; remove it for no timeout".into());
                None
            }
            Ok(d) => Some(d),
            Err(()) => {
                fail(format!(
                    "spec.timeout: {text:?} is not a duration; write e.g. 10m or 1h30m"
                ));
                None
            }
        },
    };
    let backoff = match &spec.backoff {
        None => DEFAULT_BACKOFF,
        Some(text) => match parse_duration(text) {
            Ok(d) if d > MAX_RETRY_DELAY => {
                notes.push(format!(
                    "spec.backoff: {} is longer than the longest wait between retries, {}; retries wait {} at most",
                    text.trim(),
                    humantime::format_duration(MAX_RETRY_DELAY),
                    humantime::format_duration(MAX_RETRY_DELAY),
                ));
                d
            }
            Ok(d) => d,
            Err(()) => {
                fail(format!(
                    "spec.backoff: {text:?} is not a duration; write e.g. 10s or 1m"
                ));
                DEFAULT_BACKOFF
            }
        },
    };
    let retries = spec.retries.unwrap_or(0);
    if retries > MAX_RETRIES {
        fail(format!("spec.retries: {retries} is too many; at most {MAX_RETRIES}"));
    }
    Timing {
        completion_mode,
        poll_interval,
        timeout,
        backoff,
        retries,
    }
}

/// Fan-out and fan-in: `completions`, `parallelism`, `dependsOn`.
fn fan(spec: &Spec, ctx: &ValidationContext<'_>, fail: &mut impl FnMut(String)) -> (u32, u32, Vec<TaskKey>) {
    let completions = spec.completions.unwrap_or(1);
    let parallelism = spec.parallelism.unwrap_or(1);
    if completions == 0 {
        fail("spec.completions: must be at least 1".into());
    } else if completions > MAX_COMPLETIONS {
        fail(format!(
            "spec.completions: {completions} is too many for one task; at most {MAX_COMPLETIONS}, so split the work over several tasks"
        ));
    } else if completions > 1 && !ctx.features.fan_out {
        fail(format!(
            "spec.completions: fan-out ({completions} completions) is not supported yet by this version of skiff; remove it or set 1"
        ));
    }
    if parallelism == 0 {
        fail("spec.parallelism: must be at least 1".into());
    } else if parallelism > 1 && !ctx.features.fan_out {
        fail(format!(
            "spec.parallelism: {parallelism} is not supported yet by this version of skiff (it needs fan-out); remove it or set 1"
        ));
    }
    let mut depends_on = Vec::new();
    for (i, entry) in spec.depends_on.iter().enumerate() {
        let dep = entry.task();
        let parsed = match dep.trim() {
            "" => Err(BadTaskKey::Empty),
            _ => TaskKey::parse(dep),
        };
        match parsed {
            Ok(key) => depends_on.push(key),
            Err(problem) => fail(format!(
                "spec.dependsOn[{i}]: {dep:?} is not a task ({problem}); name it by its path without extension, e.g. jobs/split"
            )),
        }
    }
    if !depends_on.is_empty() && !ctx.features.depends_on {
        fail("spec.dependsOn: dependencies are not supported yet by this version of skiff; remove dependsOn".into());
    }
    (completions, parallelism, depends_on)
}

/// `spec.semaphores`: well-formed names, each once. Whether the controller defines them is
/// [`undefined_semaphores`]'s question: `skiff validate` does not know the flags.
fn semaphores(spec: &Spec, fail: &mut impl FnMut(String)) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (i, name) in spec.semaphores.iter().enumerate() {
        if let Err(why) = check_name(name) {
            fail(format!(
                "spec.semaphores[{i}]: {name:?} {}",
                why.replace("the task", "the semaphore")
            ));
        } else if names.contains(name) {
            fail(format!(
                "spec.semaphores[{i}]: {name:?} is listed twice; list each semaphore once"
            ));
        } else {
            names.push(name.clone());
        }
    }
    names
}

/// The semaphores a valid task names that the controller has no `--semaphore` for: the
/// task could never run, so it is `Invalid`, each named with its fix.
pub fn undefined_semaphores(
    file: &str,
    spec: &TaskSpec,
    defined: &std::collections::BTreeMap<String, usize>,
) -> Vec<ManifestError> {
    spec.semaphores
        .iter()
        .enumerate()
        .filter(|(_, name)| !defined.contains_key(*name))
        .map(|(i, name)| {
            ManifestError::new(
                file,
                format!(
                    "spec.semaphores[{i}]: semaphore {name:?} is not defined by this controller; start it with --semaphore {name}=N (or `semaphore: [{name}=N]` in --config), or remove it"
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
