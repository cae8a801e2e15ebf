//! Persisting a decision, then acting on it: status writes, container creates and
//! deletes, and what each container is given to run (secrets resolved here).

use super::{Callbacks, FIRST_LOOK, Shared};
use crate::callback;
use crate::controller::reconcile::{Action, Decision, Desired};
use crate::manifest::{CompletionMode, EnvValue, PullAuth, TaskSpec};
use crate::runtime::{self, ContainerSpec, RegistryAuth, RegistryCredential, RuntimeError, RuntimeOptions};
use crate::secrets::{SecretError, SecretSource};
use crate::status::{CompletedBy, Phase, Reason, TaskStatus};
use crate::store::StoreError;
use crate::task::TaskKey;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What carrying out a decision came to.
pub(super) struct Acted {
    /// When to look at the task again.
    pub requeue: Option<Duration>,
    /// The containers a delete removed in this pass: gone from the runtime (a delete
    /// returns only once nothing of its container runs), so their slots may go to the
    /// next container before the status that says so is written.
    pub gone: Vec<String>,
}

/// Persists the decision, then performs its actions.
pub(super) async fn execute(
    shared: &Arc<Shared>,
    key: &TaskKey,
    before: Option<&TaskStatus>,
    desired: &Desired,
    local_dir: Option<PathBuf>,
    dependency_results: Option<String>,
    decision: &Decision,
) -> Result<Acted, StoreError> {
    let decided = decision
        .status
        .as_ref()
        .map(|new| with_attempt_ids(shared, before, new, desired));
    if let Some(new) = &decided {
        let changed = before.is_none_or(|old| !old.same_state(new) || old.observed_at != new.observed_at);
        if changed {
            let mut new = new.clone();
            new.updated_at = shared.clock.now();
            if let Some(sink) = &shared.transitions
                && super::transitions::is_terminal_transition(before, &new)
            {
                // Kept before the status says it: a crash in between repeats it (same
                // id), never loses it.
                sink.terminal(key, before, &new)
                    .await
                    .map_err(|source| StoreError::Io {
                        path: format!("the notification outbox (for {key})"),
                        source,
                    })?;
            }
            shared.store.write_status(key, &new).await?;
            log_transition(key, before, &new);
            drop_settled_events(shared, key, before, &new);
        }
    }
    if before.is_none() && decision.status.is_some() {
        // A task without a status starts from attempt 1, under the container names an
        // earlier run (whose status was deleted to re-run it) used: its kept output must
        // not be shown as this run's, nor kept forever.
        for runtime in shared.runtimes.values() {
            if let Err(err) = runtime.forget_earlier_run(&key.container_prefix()).await {
                tracing::debug!(task = %key, "cannot remove the earlier run's logs: {err}");
            }
        }
    }
    let mut requeue = decision.requeue_after;
    let mut gone = Vec::new();
    let soon = |requeue: &mut Option<Duration>, delay: Duration| {
        *requeue = Some(requeue.map_or(delay, |r| r.min(delay)));
    };
    for action in &decision.actions {
        match action {
            Action::EnsureContainer {
                container,
                attempt,
                index,
            } => {
                // A name deleted earlier in this pass (a stale container under it) holds
                // the new container from now on: its slot is not free.
                gone.retain(|name| name != container);
                let Desired::Valid(spec) = desired else { continue };
                let Some(runtime) = shared.runtime(spec.runtime) else {
                    shared.memory(key, |m| {
                        m.create_failures.insert(
                            container.clone(),
                            (
                                Reason::CreateFailed,
                                format!("the {} runtime is not enabled in this controller", spec.runtime),
                            ),
                        )
                    });
                    soon(&mut requeue, Duration::ZERO);
                    continue;
                };
                if let Ok(mut map) = shared.containers.lock() {
                    map.insert(container.clone(), key.clone());
                }
                let attempt_id = decided
                    .as_ref()
                    .and_then(|s| s.all_attempts().filter(|a| a.container == *container).last())
                    .and_then(callback::attempt_id)
                    .unwrap_or_default();
                if let Some(callbacks) = &shared.callbacks {
                    // The same name served an earlier run (a deleted status, a changed
                    // spec): whatever that run was sent must never reach this one.
                    callbacks.inbox.forget_others(container, &attempt_id);
                }
                let made = Made {
                    key,
                    attempt: *attempt,
                    index: *index,
                    attempt_id: &attempt_id,
                    container,
                    dependency_results: dependency_results.as_deref(),
                    scheduled_at: decided
                        .as_ref()
                        .and_then(|s| s.scheduled_at_of(container))
                        .as_ref()
                        .map(crate::status::format_time),
                };
                let made = container_spec(
                    &made,
                    spec,
                    local_dir.clone(),
                    shared.callbacks.as_ref(),
                    shared.secrets.as_ref(),
                )
                .await;
                // The spec, with its secrets, lives for this create only.
                let result = match made {
                    Ok(container_spec) => runtime.ensure(&container_spec).await,
                    Err(err) => Err(err),
                };
                match result {
                    // The runtime reports the exit of a short task by itself; looking a little
                    // later spares it a Running write it would hold for a few milliseconds.
                    Ok(()) => soon(&mut requeue, FIRST_LOOK),
                    Err(RuntimeError::Permanent { reason, message }) => {
                        shared.memory(key, |m| m.create_failures.insert(container.clone(), (reason, message)));
                        soon(&mut requeue, Duration::ZERO);
                    }
                    Err(RuntimeError::Transient(message)) => {
                        tracing::warn!(task = %key, container, "create failed, will retry: {message}");
                        requeue = Some(shared.infra_backoff(key));
                    }
                }
            }
            Action::DeleteContainer { container } => {
                let kind = before
                    .into_iter()
                    .chain(decision.status.as_ref())
                    .flat_map(|s| s.all_attempts())
                    .find(|a| a.container == *container)
                    .map(|a| a.runtime)
                    .unwrap_or(shared.config.default_runtime);
                let Some(runtime) = shared.runtime(kind) else { continue };
                match runtime.delete(container).await {
                    Ok(()) => {
                        gone.push(container.clone());
                        soon(&mut requeue, Duration::ZERO)
                    }
                    Err(err) => {
                        tracing::warn!(task = %key, container, "delete failed, will retry: {err}");
                        requeue = Some(shared.infra_backoff(key));
                    }
                }
            }
            Action::RemoveStatus => {
                shared.store.delete_status(key).await?;
                for runtime in shared.runtimes.values() {
                    let _ = runtime.forget(&key.container_prefix()).await;
                }
                if let Some(callbacks) = &shared.callbacks {
                    callbacks.inbox.forget(&key.container_prefix());
                }
                if let Ok(mut map) = shared.containers.lock() {
                    map.retain(|_, owner| owner != key);
                }
                if let Ok(mut memory) = shared.memory.lock() {
                    memory.remove(key);
                }
                tracing::info!(task = %key, "manifest removed; task cleaned up");
            }
        }
    }
    Ok(Acted { requeue, gone })
}

/// The decision's status with an id given to each attempt it begins. Randomness stays
/// out of the pure decision; the id is written with the `Creating` status, before the
/// create, like everything the act depends on. An attempt already recorded keeps what it
/// has (none, for one written before ids existed: its container is labelled with its
/// `createdAt`).
///
/// A new attempt also records the semaphores its container will hold (`spec.semaphores`).
fn with_attempt_ids(shared: &Shared, before: Option<&TaskStatus>, new: &TaskStatus, desired: &Desired) -> TaskStatus {
    let mut new = new.clone();
    for record in new.all_attempts_mut().filter(|a| a.id.is_none()) {
        // Only a record written before ids existed stays without one. A new attempt
        // whose name and `createdAt` match an earlier one's (a spec change restarting
        // within the same millisecond) is new all the same: without an id of its own
        // it would share the earlier one's (its `createdAt`), and that container could
        // be adopted as its own.
        let known = before.is_some_and(|old| {
            old.all_attempts()
                .any(|b| b.id.is_none() && b.container == record.container && b.created_at == record.created_at)
        });
        if !known {
            record.id = Some(shared.entropy.attempt_id());
            if let Desired::Valid(spec) = desired {
                record.semaphores = spec.semaphores.clone();
            }
        }
    }
    new
}

/// Once the status records an attempt's completion event, or the attempt ends without
/// one, its inbox copy can go: the attempt will never read it again, and an event sent
/// later is refused (409) by the API because the status says the attempt is over.
fn drop_settled_events(shared: &Shared, key: &TaskKey, before: Option<&TaskStatus>, after: &TaskStatus) {
    let ended = |a: &crate::status::AttemptRecord| a.completed_by.is_some();
    let ended_before = |a: &crate::status::AttemptRecord| {
        before
            .and_then(|s| {
                s.all_attempts()
                    .find(|b| b.container == a.container && b.attempt_id() == a.attempt_id())
            })
            .is_some_and(ended)
    };
    // Each index of a fan-out has its own container, and so its own event.
    let newly_ended: Vec<&crate::status::AttemptRecord> =
        after.all_attempts().filter(|a| ended(a) && !ended_before(a)).collect();
    if newly_ended.is_empty() {
        return;
    }
    if let Some(callbacks) = &shared.callbacks {
        for record in &newly_ended {
            if let Some(id) = callback::attempt_id(record) {
                callbacks.inbox.remove(&record.container, &id);
            }
        }
    }
    if !newly_ended.iter().any(|a| a.completed_by == Some(CompletedBy::Event)) {
        return;
    }
    if let Some(at) = shared.memory(key, |m| m.event_at.take()) {
        let latency = at.elapsed();
        shared.metrics.event_to_status_seconds.observe(latency.as_secs_f64());
        tracing::debug!(task = %key, latency_us = latency.as_micros() as u64, "completion event recorded in the status");
    }
}

fn log_transition(key: &TaskKey, before: Option<&TaskStatus>, after: &TaskStatus) {
    let old = before.map(|s| s.phase);
    if old == Some(after.phase) {
        return;
    }
    let reason = after.reason.map(|r| format!(" ({r:?})")).unwrap_or_default();
    // The phase and reason as fields too, for `--log-format json`.
    let reason_field = after.reason.map(|r| format!("{r:?}"));
    match after.phase {
        Phase::Failed | Phase::Invalid => tracing::warn!(
            task = %key,
            attempt = after.attempt,
            phase = %after.phase,
            reason = reason_field,
            "{} -> {}{reason}: {}",
            old.map_or("new", Phase::as_str),
            after.phase,
            after.message.as_deref().unwrap_or("")
        ),
        _ => tracing::info!(
            task = %key,
            attempt = after.attempt,
            phase = %after.phase,
            reason = reason_field,
            "{} -> {}{reason}",
            old.map_or("new", Phase::as_str),
            after.phase
        ),
    }
}

/// Which container of which task is made.
struct Made<'a> {
    key: &'a TaskKey,
    attempt: u32,
    index: Option<u32>,
    attempt_id: &'a str,
    container: &'a str,
    /// `SKIFF_DEPENDENCY_RESULTS`, for a task with `dependsOn`.
    dependency_results: Option<&'a str>,
    /// `SKIFF_SCHEDULED_AT`, for a scheduled task's run.
    scheduled_at: Option<String>,
}

/// A secret's value: from the controller's environment, or from the secret source (a
/// refusal is the attempt's `SecretUnavailable`; an outage is retried).
async fn resolve(what: &str, value: &EnvValue, secrets: &dyn SecretSource) -> Result<String, RuntimeError> {
    match value {
        EnvValue::Value(value) => Ok(value.clone()),
        EnvValue::FromEnv(var) => std::env::var(var).map_err(|_| RuntimeError::Permanent {
            reason: Reason::CreateFailed,
            message: format!("{what}: valueFrom.env {var} is not set in the controller's environment"),
        }),
        EnvValue::External(reference) => secrets.resolve(reference).await.map_err(|err| match err {
            SecretError::Unavailable(message) => RuntimeError::Permanent {
                reason: Reason::SecretUnavailable,
                message: format!("{what}: {message}"),
            },
            SecretError::Transient(message) => RuntimeError::Transient(format!("{what}: {message}")),
        }),
    }
}

/// What the runtime is asked to run for one attempt; secrets are resolved here, just
/// before the create, and live no longer than it.
async fn container_spec(
    made: &Made<'_>,
    spec: &TaskSpec,
    local_dir: Option<PathBuf>,
    callbacks: Option<&Callbacks>,
    secrets: &dyn SecretSource,
) -> Result<ContainerSpec, RuntimeError> {
    let permanent = |message: String| RuntimeError::Permanent {
        reason: Reason::CreateFailed,
        message,
    };
    let Made {
        key,
        attempt,
        attempt_id,
        container,
        ..
    } = *made;
    let index = made.index.unwrap_or(0);
    let mut env = vec![
        ("SKIFF_TASK".to_string(), key.to_string()),
        ("SKIFF_ATTEMPT".to_string(), attempt.to_string()),
        ("SKIFF_INDEX".to_string(), index.to_string()),
    ];
    if let Some(at) = &made.scheduled_at {
        env.push(("SKIFF_SCHEDULED_AT".to_string(), at.clone()));
    }
    if let Some(results) = made.dependency_results {
        env.push(("SKIFF_DEPENDENCY_RESULTS".to_string(), results.to_string()));
    }
    if spec.completion_mode == CompletionMode::Event {
        let Some(callbacks) = callbacks else {
            return Err(permanent(
                "event completion needs the HTTP API: start the controller with --listen".into(),
            ));
        };
        let token = callbacks.secret.token(key.as_str(), attempt, index, attempt_id);
        let url = callback::callback_url(&callbacks.base_url, key.as_str(), attempt, index, attempt_id, &token);
        env.push(("SKIFF_CALLBACK_URL".to_string(), url));
    }
    if spec.heartbeat_timeout.is_some() {
        let Some(callbacks) = callbacks else {
            return Err(permanent(
                "heartbeatTimeout needs the HTTP API: start the controller with --listen".into(),
            ));
        };
        // The callback's token: it signs the attempt, whichever route it is sent to.
        let token = callbacks.secret.token(key.as_str(), attempt, index, attempt_id);
        let url =
            crate::heartbeat::heartbeat_url(&callbacks.base_url, key.as_str(), attempt, index, attempt_id, &token);
        env.push(("SKIFF_HEARTBEAT_URL".to_string(), url));
    }
    for (name, value) in &spec.env {
        let value = resolve(&format!("env {name}"), value, secrets).await?;
        env.push((name.clone(), value));
    }
    let mut registry_credentials = Vec::new();
    for pull in &spec.pull_secrets {
        let auth = match &pull.auth {
            PullAuth::Password { username, password } => RegistryAuth::Password {
                username: username.clone(),
                password: resolve(&format!("imagePullSecrets {}", pull.server), password, secrets).await?,
            },
            PullAuth::Identity(id) => RegistryAuth::Identity(id.clone()),
        };
        registry_credentials.push(RegistryCredential {
            server: pull.server.clone(),
            auth,
        });
    }
    // What only the task's runtime understands: it reads its own options from the spec
    // (and the manifest's folder, against which a host path may be relative).
    let options = RuntimeOptions::for_task(spec, container, local_dir).map_err(permanent)?;
    // Validation refuses a NUL; this catches one from anywhere else (the controller's
    // environment, a key): the OS would refuse such a create on every retry, forever.
    let has_nul = spec.command.iter().chain(&spec.args).any(|s| s.contains('\0'))
        || env
            .iter()
            .any(|(name, value)| name.contains('\0') || value.contains('\0'))
        || options.has_nul();
    if has_nul {
        return Err(permanent(
            "the command, an argument, an environment variable or the working directory contains a NUL character, which no process can be given; remove it from the manifest"
                .into(),
        ));
    }
    let labels = BTreeMap::from([
        (runtime::LABEL_TASK.to_string(), key.to_string()),
        (runtime::LABEL_ATTEMPT.to_string(), attempt.to_string()),
        (runtime::LABEL_INDEX.to_string(), index.to_string()),
        (runtime::LABEL_SPEC_HASH.to_string(), spec.spec_hash.clone()),
        (runtime::LABEL_ATTEMPT_ID.to_string(), attempt_id.to_string()),
    ]);
    let secret_env = spec
        .env
        .iter()
        .filter(|(_, value)| value.is_secret())
        .map(|(name, _)| name.clone())
        .chain(
            spec.completion_mode
                .eq(&CompletionMode::Event)
                .then(|| "SKIFF_CALLBACK_URL".to_string()),
        )
        .chain(
            spec.heartbeat_timeout
                .is_some()
                .then(|| "SKIFF_HEARTBEAT_URL".to_string()),
        )
        .collect();
    Ok(ContainerSpec {
        name: container.to_string(),
        labels,
        image: spec.image.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env,
        cpu: spec.cpu,
        memory_bytes: spec.memory_bytes,
        secret_env,
        options,
        registry_credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Features, RuntimeKind, ValidationContext, parse_manifest, validate};

    #[tokio::test]
    async fn secrets_are_resolved_and_named_but_never_labelled() {
        let text = "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [x]\n  env:\n    - {name: PLAIN, value: v}\n    - {name: KEY, valueFrom: {env: PATH}}\n  completion: {mode: event}\n  heartbeatTimeout: 30s\n";
        let task = parse_manifest("s.yaml", text.as_bytes()).unwrap();
        let ctx = ValidationContext {
            default_runtime: RuntimeKind::Process,
            allow_host_paths: &[],
            features: Features::CURRENT,
            env_is_set: None,
        };
        let spec = validate("s.yaml", "s", &task, &ctx).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let callbacks = Callbacks {
            base_url: "http://127.0.0.1:1".into(),
            secret: Arc::new(crate::callback::CallbackSecret::load_or_create(dir.path()).unwrap()),
            inbox: Arc::new(crate::callback::Inbox::new(dir.path()).unwrap()),
        };
        let key = TaskKey::new("s");
        let which = Made {
            key: &key,
            attempt: 1,
            index: None,
            attempt_id: "id",
            container: "skiff-s-1",
            dependency_results: None,
            scheduled_at: None,
        };
        let made = container_spec(&which, &spec, None, Some(&callbacks), &crate::secrets::NoSecretSource)
            .await
            .unwrap();
        let env: BTreeMap<_, _> = made.env.iter().cloned().collect();
        assert_eq!(env["KEY"], std::env::var("PATH").unwrap());
        assert_eq!(env["PLAIN"], "v");
        assert!(env["SKIFF_CALLBACK_URL"].contains("token="));
        // The heartbeat URL carries the same token, to its own route.
        let heartbeat = &env["SKIFF_HEARTBEAT_URL"];
        assert!(heartbeat.starts_with("http://127.0.0.1:1/v1/tasks/s/heartbeat?attempt=1&index=0&id=id&token="));
        assert_eq!(
            heartbeat.split_once("token=").map(|(_, t)| t),
            env["SKIFF_CALLBACK_URL"].split_once("token=").map(|(_, t)| t)
        );
        assert_eq!(
            made.secret_env.iter().map(String::as_str).collect::<Vec<_>>(),
            ["KEY", "SKIFF_CALLBACK_URL", "SKIFF_HEARTBEAT_URL"]
        );
        let labels = format!("{:?}", made.labels);
        assert!(!labels.contains("token") && !labels.contains(&env["KEY"]), "{labels}");
        assert!(!format!("{made:?}").contains(&env["KEY"]), "Debug hides values");
    }

    #[tokio::test]
    async fn a_nul_that_slipped_past_validation_is_a_permanent_create_failure() {
        let text = "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [x]\n";
        let task = parse_manifest("n.yaml", text.as_bytes()).unwrap();
        let ctx = ValidationContext {
            default_runtime: RuntimeKind::Process,
            allow_host_paths: &[],
            features: Features::CURRENT,
            env_is_set: None,
        };
        let mut spec = validate("n.yaml", "n", &task, &ctx).unwrap();
        let key = TaskKey::new("n");
        let which = Made {
            key: &key,
            attempt: 1,
            index: None,
            attempt_id: "id",
            container: "skiff-n-1",
            dependency_results: None,
            scheduled_at: None,
        };
        let none = crate::secrets::NoSecretSource;
        assert!(container_spec(&which, &spec, None, None, &none).await.is_ok());
        spec.env.push(("A".into(), EnvValue::Value("a\0b".into())));
        let err = container_spec(&which, &spec, None, None, &none).await.unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }
}
