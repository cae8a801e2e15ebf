//! Semantic validation: a parsed [`ContainerTask`] becomes a resolved [`TaskSpec`], or a
//! list of every mistake, each naming the field path and the fix.

use super::limits::{MAX_RETRY_DELAY, aci_resource_problems};
use super::{Cleanup, CompletionMode, ContainerTask, ManifestError, Quantity, RuntimeKind, Volume};
use crate::task::{BadTaskKey, TaskKey};
use sha2::{Digest, Sha256};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
const MAX_RETRIES: u32 = 100;
/// Most indexes of one fan-out: each has its own entry in the status, which is rewritten
/// whole at every step.
const MAX_COMPLETIONS: u32 = 1000;
const MAX_NAME_LEN: usize = 63;

/// Which parts of the contract this build acts on. A manifest that needs a part that is
/// not here is `Invalid` with a message saying so, never silently half-run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    pub docker: bool,
    pub aci: bool,
    pub event_completion: bool,
    pub fan_out: bool,
    pub depends_on: bool,
}

impl Features {
    /// What this version of skiff implements.
    pub const CURRENT: Features = Features {
        docker: true,
        aci: true,
        // The controller narrows this to whether it serves the callback route.
        event_completion: true,
        fan_out: true,
        depends_on: true,
    };
}

/// What validation needs to know about the controller.
pub struct ValidationContext<'a> {
    /// `--runtime`: used when `spec.runtime` is absent.
    pub default_runtime: RuntimeKind,
    /// `--allow-host-path` prefixes.
    pub allow_host_paths: &'a [PathBuf],
    pub features: Features,
    /// Whether a variable is set in the controller's environment; `None` skips the
    /// check (as `skiff validate` does, since it does not run where the controller runs).
    pub env_is_set: Option<&'a dyn Fn(&str) -> bool>,
}

/// A value for one environment variable of a container.
#[derive(Clone, PartialEq, Eq)]
pub enum EnvValue {
    Value(String),
    /// Read from the controller's environment when the container is created.
    FromEnv(String),
}

impl std::fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvValue::Value(value) => write!(f, "{value:?}"),
            EnvValue::FromEnv(var) => write!(f, "valueFrom(env {var})"),
        }
    }
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
    pub completion_mode: CompletionMode,
    pub poll_interval: Duration,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub backoff: Duration,
    pub cleanup: Cleanup,
    pub completions: u32,
    pub parallelism: u32,
    pub depends_on: Vec<TaskKey>,
    /// Things the user should know that are not errors, e.g. a field this runtime ignores.
    pub notes: Vec<String>,
}

/// `sha256:<hex>` over the canonical JSON of `spec`: struct fields in declaration order,
/// absent fields omitted. Comments, key order and formatting never change it.
pub fn spec_hash(task: &ContainerTask) -> String {
    let canonical = serde_json::to_vec(&task.spec).unwrap_or_default();
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

    let runtime = spec.runtime.unwrap_or(ctx.default_runtime);
    let runtime_ready = match runtime {
        RuntimeKind::Process => true,
        RuntimeKind::Docker => ctx.features.docker,
        RuntimeKind::Aci => ctx.features.aci,
    };
    if !runtime_ready && runtime == RuntimeKind::Aci && Features::CURRENT.aci {
        fail(
            "spec.runtime: the aci runtime is not configured in this controller; start it with --aci-resource-group, --aci-location and --aci-subscription-id (or AZURE_SUBSCRIPTION_ID)"
                .into(),
        );
    } else if !runtime_ready {
        fail(format!(
            "spec.runtime: the {runtime} runtime is not supported yet by this version of skiff; use `runtime: process`"
        ));
    }
    match runtime {
        RuntimeKind::Process => {
            if spec.command.is_empty() {
                fail("spec.command: the process runtime runs a command on the host and none is given; add e.g. `command: [sh, -c, \"echo hello\"]`".into());
            }
            let mut ignored = Vec::new();
            if spec.image.is_some() {
                ignored.push("image");
            }
            if spec.resources.is_some() {
                ignored.push("resources");
            }
            if !ignored.is_empty() {
                notes.push(format!(
                    "the process runtime ignores {} (the host is the image)",
                    ignored.join(" and ")
                ));
            }
        }
        RuntimeKind::Docker | RuntimeKind::Aci => {
            if spec.image.as_deref().is_none_or(|image| image.trim().is_empty()) {
                fail(format!(
                    "spec.image: the {runtime} runtime needs an image; add e.g. `image: busybox`"
                ));
            }
        }
    }
    if let Some(network) = &spec.network {
        if runtime != RuntimeKind::Docker {
            fail(format!(
                "spec.network: is for the docker runtime only; remove it (this task runs on {runtime})"
            ));
        } else if network.trim().is_empty() {
            fail("spec.network: is empty; write host, none, or a network's name".into());
        }
    }
    // A NUL cannot be passed to a program (the OS ends every argument, variable and path
    // at it), so such a task could never be created: say so now, naming the field.
    const NUL: &str = "contains a NUL character (\\0), which no program, variable or path can hold; remove it";
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
                if !is_env_name(&from.env) {
                    fail(format!(
                        "{at}.valueFrom.env: {:?} is not a valid variable name",
                        from.env
                    ));
                } else if let Some(is_set) = ctx.env_is_set
                    && !is_set(&from.env)
                {
                    fail(format!(
                        "{at}.valueFrom.env: {} is not set in the controller's environment; export it before starting skiff",
                        from.env
                    ));
                }
                env.push((var.name.clone(), EnvValue::FromEnv(from.env.clone())));
            }
            (Some(_), Some(_)) => fail(format!("{at}: has both value and valueFrom; keep one")),
            (None, None) => fail(format!("{at}: has neither value nor valueFrom; add `value: ...`")),
        }
    }

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

    let mut volume_names = std::collections::HashSet::new();
    for (i, volume) in spec.volumes.iter().enumerate() {
        let at = format!("spec.volumes[{i}]");
        if volume.name.trim().is_empty() {
            fail(format!("{at}.name: is empty; name the volume"));
        } else if !volume_names.insert(volume.name.clone()) {
            fail(format!(
                "{at}.name: {} is used twice; volume names must be unique",
                volume.name
            ));
        }
        if volume.mount_path.contains('\0') || volume.host_path.as_deref().is_some_and(|h| h.contains('\0')) {
            fail(format!("{at}: a path {NUL}"));
        } else if !volume.mount_path.starts_with('/') {
            fail(format!(
                "{at}.mountPath: {:?} must be an absolute path, e.g. /data",
                volume.mount_path
            ));
        }
        match (&volume.host_path, &volume.azure_file) {
            (Some(host), None) => {
                if runtime == RuntimeKind::Aci {
                    fail(format!(
                        "{at}.hostPath: the aci runtime cannot mount host paths; use azureFile"
                    ));
                } else if !host.starts_with('/') {
                    fail(format!("{at}.hostPath: {host:?} must be an absolute path"));
                } else if !is_allowed_host_path(Path::new(host), ctx.allow_host_paths) {
                    fail(format!(
                        "{at}.hostPath: {host} is not under an allowed prefix; start the controller with `--allow-host-path {host}` (or a parent folder)"
                    ));
                } else if runtime == RuntimeKind::Process && volume.mount_path != *host {
                    fail(format!(
                        "{at}.mountPath: the process runtime cannot remap host paths; set mountPath to {host}, or use the docker runtime"
                    ));
                }
            }
            (None, Some(_)) => {
                if runtime != RuntimeKind::Aci {
                    fail(format!(
                        "{at}.azureFile: azureFile volumes work only on the aci runtime; use hostPath"
                    ));
                }
            }
            (Some(_), Some(_)) => fail(format!("{at}: has both hostPath and azureFile; keep one")),
            (None, None) => fail(format!(
                "{at}: has no source; add hostPath (docker, process) or azureFile (aci)"
            )),
        }
    }

    let mut aci_location = None;
    if runtime == RuntimeKind::Aci {
        // What ARM would refuse with an opaque 400, or ACI cannot do at all, is said here.
        for problem in aci_resource_problems(cpu, memory_bytes) {
            fail(problem);
        }
        if spec.working_dir.is_some() {
            fail("spec.workingDir: ACI cannot set a container's working directory; remove it and cd in the command, e.g. [sh, -c, \"cd /work && ...\"]".into());
        }
        if spec.command.is_empty() && !spec.args.is_empty() {
            fail("spec.args: ACI replaces the image's entrypoint and arguments together; give spec.command too".into());
        }
        for (i, volume) in spec.volumes.iter().enumerate() {
            let Some(file) = &volume.azure_file else { continue };
            let at = format!("spec.volumes[{i}].azureFile");
            let account = &file.storage_account_name;
            if !(3..=24).contains(&account.len())
                || !account.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                fail(format!(
                    "{at}.storageAccountName: {account:?} is not a storage account name (3 to 24 lowercase letters and digits)"
                ));
            }
            let share = &file.share_name;
            if !(3..=63).contains(&share.len())
                || !share
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                || share.starts_with('-')
                || share.ends_with('-')
                || share.contains("--")
            {
                fail(format!(
                    "{at}.shareName: {share:?} is not a file share name (3 to 63 lowercase letters, digits and single dashes)"
                ));
            }
            let key = &file.storage_account_key_from.env;
            if !is_env_name(key) {
                fail(format!(
                    "{at}.storageAccountKeyFrom.env: {key:?} is not a valid variable name"
                ));
            } else if let Some(is_set) = ctx.env_is_set
                && !is_set(key)
            {
                fail(format!(
                    "{at}.storageAccountKeyFrom.env: {key} is not set in the controller's environment; export it before starting skiff"
                ));
            }
        }
    }
    if let Some(aci) = &spec.aci {
        if runtime != RuntimeKind::Aci {
            fail(format!(
                "spec.aci: is for the aci runtime only; remove it (this task runs on {runtime})"
            ));
        }
        if aci.subscription_id.is_some() || aci.resource_group.is_some() {
            fail("spec.aci: subscriptionId and resourceGroup are the controller's (--aci-subscription-id, --aci-resource-group); per-task values are not supported yet, remove them".into());
        }
        if let Some(location) = &aci.location {
            if location.is_empty() || !location.bytes().all(|b| b.is_ascii_alphanumeric()) {
                fail(format!(
                    "spec.aci.location: {location:?} is not an Azure region name, e.g. westus2"
                ));
            } else {
                aci_location = Some(location.to_ascii_lowercase());
            }
        }
    }

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
    for (i, dep) in spec.depends_on.iter().enumerate() {
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
        completion_mode,
        poll_interval,
        timeout,
        retries,
        backoff,
        cleanup: spec.cleanup.unwrap_or(Cleanup::Always),
        completions,
        parallelism,
        depends_on,
        notes,
    })
}

/// Linux refuses to start a program given one argument or `NAME=value` of this many
/// bytes or more (MAX_ARG_STRLEN, counting the terminating NUL), in a container too.
const MAX_ARG_BYTES: usize = 128 * 1024;

fn too_long(len: usize) -> String {
    format!(
        "is {len} bytes; Linux refuses to start a program given a single argument or variable of {MAX_ARG_BYTES} bytes or more; put large data in a file (a volume) and pass its path"
    )
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty; give the task a name");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("is longer than 63 characters; shorten it");
    }
    if name.contains("..") {
        return Err("may not contain \"..\"; use letters, digits, '-', '_' and '.'");
    }
    if name.starts_with(['.', '-']) {
        return Err("may not start with '.' or '-'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("may hold only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_duration(text: &str) -> Result<Duration, ()> {
    humantime::parse_duration(text.trim()).map_err(|_| ())
}

fn is_allowed_host_path(path: &Path, prefixes: &[PathBuf]) -> bool {
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return false;
    }
    prefixes.iter().any(|prefix| path.starts_with(prefix))
}

fn parse_cpu(q: &Quantity) -> Result<f64, String> {
    let value = match q {
        Quantity::Number(n) => *n,
        Quantity::Text(text) => {
            let text = text.trim();
            let parsed = match text.strip_suffix('m') {
                Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
                None => text.parse::<f64>(),
            };
            parsed.map_err(|_| format!("{text:?} is not a CPU amount; write e.g. 1, 0.5 or \"500m\""))?
        }
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{value} must be more than zero; write e.g. 1 or 0.5"));
    }
    Ok(value)
}

fn parse_memory(q: &Quantity) -> Result<u64, String> {
    let bytes = match q {
        Quantity::Number(n) => *n,
        Quantity::Text(text) => {
            let text = text.trim();
            const UNITS: [(&str, f64); 8] = [
                ("Ki", 1024.0),
                ("Mi", 1024.0 * 1024.0),
                ("Gi", 1024.0 * 1024.0 * 1024.0),
                ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
                ("k", 1e3),
                ("M", 1e6),
                ("G", 1e9),
                ("T", 1e12),
            ];
            let (number, scale) = UNITS
                .iter()
                .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|n| (n, *scale)))
                .unwrap_or((text, 1.0));
            let number: f64 = number
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a memory amount; write e.g. 512Mi or 1.5Gi"))?;
            number * scale
        }
    };
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("{bytes} must be more than zero; write e.g. 512Mi or 1.5Gi"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
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
        let err = aci("  aci: {resourceGroup: other}\n").unwrap_err();
        assert!(err.contains("spec.aci"), "{err}");
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
        let err =
            check("  command: [x]\n  env: [{name: SKIFF_X, value: a}, {name: A, value: b, valueFrom: {env: B}}]\n")
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
}
