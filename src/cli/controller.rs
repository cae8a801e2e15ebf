//! `skiff controller`: wires the store, the runtimes and the controller together, and
//! turns SIGTERM / Ctrl+C into a graceful stop.

use super::{ControllerArgs, UsageError, state_dir, tokio_runtime};
use crate::api::{self, ApiState};
use crate::azure::CredentialKind;
use crate::callback::{CallbackSecret, Inbox};
use crate::controller::{Callbacks, Controller, ControllerConfig, Outcome};
use crate::manifest::RuntimeKind;
use crate::runtime::Runtime;
use crate::runtime::aci::{AciConfig, AciCredential, AciRuntime};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `--create-rate 100/5m` for every runtime, `--create-rate docker=20/1m` for one; a
/// runtime named on its own wins over the general rate.
fn create_rates(
    flags: &[String],
) -> Result<std::collections::HashMap<RuntimeKind, crate::controller::limits::CreateRate>, UsageError> {
    let all = [RuntimeKind::Process, RuntimeKind::Docker, RuntimeKind::Aci];
    let mut general = None;
    let mut own = std::collections::HashMap::new();
    for flag in flags {
        let (runtime, rate) = match flag.split_once('=') {
            Some((runtime, rate)) => {
                let runtime = all
                    .into_iter()
                    .find(|kind| kind.as_str() == runtime.trim())
                    .ok_or_else(|| {
                        UsageError(format!(
                            "--create-rate {flag}: {runtime:?} is not a runtime; use process, docker or aci"
                        ))
                    })?;
                (Some(runtime), rate)
            }
            None => (None, flag.as_str()),
        };
        let rate = rate
            .parse()
            .map_err(|err| UsageError(format!("--create-rate {flag}: {err}")))?;
        match runtime {
            Some(runtime) => {
                own.insert(runtime, rate);
            }
            None => general = Some(rate),
        }
    }
    Ok(all
        .into_iter()
        .filter_map(|kind| Some((kind, own.get(&kind).copied().or(general)?)))
        .collect())
}

/// `--semaphore gpu=2`, repeatable: each name once, each limit at least 1.
fn semaphores(flags: &[String]) -> Result<std::collections::BTreeMap<String, usize>, UsageError> {
    let mut defined = std::collections::BTreeMap::new();
    for flag in flags {
        let fix = "write it as NAME=N, e.g. gpu=2";
        let (name, max) = flag
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--semaphore {flag}: {fix}")))?;
        let name = name.trim();
        if name.is_empty()
            || name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(UsageError(format!(
                "--semaphore {flag}: {name:?} is not a semaphore name (letters, digits, '-', '_' and '.', at most 63); {fix}"
            )));
        }
        let max: usize = match max.trim().parse() {
            Ok(max) if max > 0 => max,
            _ => {
                return Err(UsageError(format!(
                    "--semaphore {flag}: {max:?} is not a positive number of slots; {fix}"
                )));
            }
        };
        if defined.insert(name.to_string(), max).is_some() {
            return Err(UsageError(format!(
                "--semaphore {flag}: semaphore {name:?} is given twice; give each once"
            )));
        }
    }
    Ok(defined)
}

/// `--notify URL`, repeatable: each an http(s) URL with a host.
fn notify_urls(flags: &[String]) -> Result<Vec<String>, UsageError> {
    let mut urls = Vec::new();
    for flag in flags {
        let url = reqwest::Url::parse(flag.trim()).map_err(|err| {
            UsageError(format!(
                "--notify {flag}: not a URL ({err}); give an http(s) URL, e.g. https://hooks.example.com/skiff"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(UsageError(format!(
                "--notify {flag}: only http:// and https:// URLs with a host can be notified; e.g. https://hooks.example.com/skiff"
            )));
        }
        if !urls.contains(&url.to_string()) {
            urls.push(url.to_string());
        }
    }
    Ok(urls)
}

/// `--notify-secret-file F`: the HMAC key, the file's contents without trailing white space.
fn notify_secret(path: Option<&Path>, notifying: bool) -> Result<Option<Vec<u8>>, UsageError> {
    let Some(path) = path else { return Ok(None) };
    if !notifying {
        return Err(UsageError(
            "--notify-secret-file signs notifications, but no --notify URL is given; add one or drop it".into(),
        ));
    }
    let bytes = crate::fsutil::read_regular(path, 64 * 1024)
        .map_err(|err| UsageError(format!("--notify-secret-file {}: {err}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let secret = text.trim_end();
    if secret.is_empty() {
        return Err(UsageError(format!(
            "--notify-secret-file {}: the file is empty; put a secret in it",
            path.display()
        )));
    }
    Ok(Some(secret.as_bytes().to_vec()))
}

pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let _log_flush = super::logging::init(&args.log, args.log_format)?;
    // Before anything opens a file: the API's share is taken from what this yields.
    let nofile = api::serve::raise_fd_limit();
    let serve_limits = api::serve::ServeLimits::for_fd_limit(nofile);
    tracing::debug!(
        nofile,
        api_connections = serve_limits.max_connections,
        "open files: the API may hold at most a quarter"
    );
    let default_runtime = RuntimeKind::from(args.runtime);
    if args.listen.is_none() && (args.callback_url.is_some() || args.api_token_file.is_some()) {
        return Err(UsageError("--callback-url and --api-token-file need --listen ADDRESS:PORT".into()).into());
    }
    let api_token = match &args.api_token_file {
        None => None,
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .map_err(|err| UsageError(format!("--api-token-file {}: {err}", path.display())))?;
            let token = token.trim().to_string();
            if token.is_empty() {
                return Err(UsageError(format!(
                    "--api-token-file {}: the file is empty; put a token in it",
                    path.display()
                ))
                .into());
            }
            Some(Arc::<str>::from(token))
        }
    };
    let mut per_runtime = std::collections::HashMap::new();
    for (flag, kind, value) in [
        ("--max-running", None, args.max_running),
        (
            "--max-running-process",
            Some(RuntimeKind::Process),
            args.max_running_process,
        ),
        (
            "--max-running-docker",
            Some(RuntimeKind::Docker),
            args.max_running_docker,
        ),
        ("--max-running-aci", Some(RuntimeKind::Aci), args.max_running_aci),
    ] {
        if value == Some(0) {
            return Err(UsageError(format!("{flag} 0 would never run anything; give at least 1")).into());
        }
        if let (Some(kind), Some(max)) = (kind, value) {
            per_runtime.insert(kind, max);
        }
    }
    let create_rates = create_rates(&args.create_rate)?;
    let semaphores = semaphores(&args.semaphore)?;
    let notify = notify_urls(&args.notify)?;
    let notify_secret = notify_secret(args.notify_secret_file.as_deref(), !notify.is_empty())?;
    for prefix in &args.allow_host_path {
        if !prefix.is_absolute() {
            return Err(UsageError(format!("--allow-host-path {}: give an absolute path", prefix.display())).into());
        }
    }
    let source = super::source::open_source(&args.source)?;
    let state = state_dir(&args.source);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state)
        .map_err(|err| UsageError(format!("--state-dir {}: {err}", state.display())))?;
    let exe = std::env::current_exe()?;
    let process = ProcessRuntime::new(&state, exe)
        .map_err(|err| UsageError(format!("--state-dir {}: {err}", state.display())))?
        .with_max_log_bytes(args.max_log_size)
        .with_cgroups(&state);
    // The docker runtime costs nothing until a task uses it; an engine that does not
    // answer is an infrastructure error, retried, never a reason not to start.
    let docker = DockerRuntime::connect(&state, args.docker_network.clone())
        .map_err(|err| UsageError(format!("--state-dir {}: {err}", state.display())))?
        .with_max_log_bytes(args.max_log_size);
    let docker = match &args.docker_config {
        Some(path) => {
            let config = crate::runtime::docker::DockerConfig::load(path).map_err(UsageError)?;
            tracing::info!(
                "docker: registry credentials for {} servers from {}",
                config.servers(),
                path.display()
            );
            docker.with_docker_config(config)
        }
        None => docker,
    };
    let host = process.placement_host();
    let mut runtimes: Vec<Arc<dyn Runtime>> = vec![Arc::new(process), Arc::new(docker)];
    let aci = aci_runtime(&args, &state, default_runtime)?;
    if let Some(aci) = &aci {
        runtimes.push(aci.clone());
    }
    // The dashboard reads running containers' output through them too.
    let api_runtimes = runtimes.clone();
    let config = ControllerConfig {
        default_runtime,
        max_running: args.max_running,
        max_running_per_runtime: per_runtime,
        create_rates,
        semaphores,
        resync: args.resync,
        once: args.once,
        allow_host_paths: args.allow_host_path.clone(),
        replica_name: args
            .replica_name
            .clone()
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| format!("{host}:{}", state.display())),
        ..ControllerConfig::default()
    };
    // Every status write and delete, the controller's and the API's, is published for
    // `GET /v1/watch` (the dashboard's live updates).
    let hub = api::watch::Hub::new();
    let store: Arc<dyn crate::store::Store> =
        Arc::new(api::watch::WatchedStore::new(source.store.clone(), hub.clone()));
    // Key Vault references are read with the controller's Azure credential, built on first
    // use: a controller that never meets one needs no credential.
    let vault_http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        // A redirect must not carry the token elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| anyhow::anyhow!("cannot build the HTTP client: {err}"))?;
    let vault_kind = args.source.azure_credential.unwrap_or_else(CredentialKind::guess);
    let secrets = crate::secrets::KeyVaultSecrets(crate::azure::keyvault::KeyVault::new(vault_kind, vault_http));
    let controller = Controller::new(store.clone(), runtimes, config).with_secrets(Arc::new(secrets));
    let (controller, delivery) = if notify.is_empty() {
        (controller, None)
    } else {
        let outbox = crate::notifications::outbox::Outbox::open(&state, &notify).map_err(|err| {
            UsageError(format!(
                "--state-dir {}: the notification outbox: {err}",
                state.display()
            ))
        })?;
        let outbox = Arc::new(outbox);
        let wake = Arc::new(tokio::sync::Notify::new());
        // The CloudEvents `source`: the store, without any secret in its URL.
        let origin = match (&args.source.dir, &args.source.blob) {
            (Some(dir), _) => format!("file://{}", std::fs::canonicalize(dir).unwrap_or(dir.clone()).display()),
            (None, Some(url)) => crate::store::blob::location::BlobLocation::parse(url)
                .map(|location| location.display())
                .unwrap_or_else(|_| "skiff".to_string()),
            (None, None) => "skiff".to_string(),
        };
        let notifier = crate::notifications::Notifier::new(outbox.clone(), origin, wake.clone());
        let delivery = crate::notifications::Delivery::new(outbox, notify_secret, controller.metrics(), wake);
        (controller.with_transitions(Arc::new(notifier)), Some(delivery))
    };

    let runtime = tokio_runtime()?;
    // Bind before anything runs, so that a taken port is a usage error, not a late failure.
    // Without --listen, the API still serves on an ephemeral loopback port: event-mode
    // tasks on this machine (process, docker with the host network) then just work.
    let listener = match &args.listen {
        Some(listen) => std::net::TcpListener::bind(listen).map_err(|err| {
            UsageError(format!(
                "--listen {listen}: {err}; pick another address or port (`ss -ltn` lists those taken)"
            ))
        })?,
        None => super::endpoint::bind_default(&state)
            .map_err(|err| UsageError(format!("cannot listen on 127.0.0.1: {err}; give --listen ADDRESS:PORT")))?,
    };
    listener.set_nonblocking(true)?;
    warn_if_exposed(&listener, args.api_token_file.as_deref());
    let listener = Some(listener);
    let (controller, api) = match &listener {
        None => (controller, None),
        Some(listener) => {
            let local = listener.local_addr()?;
            let endpoint = super::endpoint::Endpoint {
                url: format!("http://{local}"),
                pid: std::process::id(),
                token_file: args
                    .api_token_file
                    .as_ref()
                    .map(|path| std::fs::canonicalize(path).unwrap_or(path.clone())),
            };
            if let Err(err) = super::endpoint::record(&state, &endpoint) {
                tracing::warn!("cannot record the API's address in {}: {err}", state.display());
            }
            let base_url = args.callback_url.clone().unwrap_or_else(|| format!("http://{local}"));
            let callbacks = Callbacks {
                base_url,
                // Replicas on a blob store share one secret, kept in the container.
                secret: Arc::new(match &source.blob {
                    Some(blob) => CallbackSecret::from_key(runtime.block_on(shared_secret(blob))?),
                    None => CallbackSecret::load_or_create(&state)?,
                }),
                inbox: Arc::new(Inbox::new(&state)?),
            };
            let metrics = controller.metrics();
            let health = controller.health();
            let (controller, control) = controller.with_api(Some(callbacks.clone()));
            let state = ApiState {
                store: store.clone(),
                secret: callbacks.secret.clone(),
                inbox: callbacks.inbox.clone(),
                metrics,
                health,
                control,
                api_token: api_token.clone(),
                heartbeats: controller.heartbeats(),
            };
            tracing::info!("serving the API on http://{local}");
            let dashboard = api::dashboard::router(state.clone(), hub.clone(), &api_runtimes);
            (controller, Some(api::router(state).merge(dashboard)))
        }
    };
    let metrics = controller.metrics();
    let once = args.once;
    let progress_metrics = metrics.clone();
    let outcome = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let progress = if once {
            super::progress::start(progress_metrics.clone())
        } else {
            None
        };
        if let Some(aci) = aci {
            // ARM's remaining-request headers and the create bucket, for /metrics.
            tokio::spawn(async move {
                loop {
                    for (header, remaining) in aci.rate_limit_remaining() {
                        let labels = crate::metrics::Metrics::label("header", header);
                        metrics
                            .aci_ratelimit_remaining
                            .get_or_create(&labels)
                            .set(remaining as i64);
                    }
                    for (window, available) in aci.create_tokens_available() {
                        let labels = crate::metrics::Metrics::label("window", window);
                        metrics
                            .aci_create_tokens
                            .get_or_create(&labels)
                            .set(i64::from(available));
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            });
        }
        if let (Some(listener), Some(router)) = (listener, api) {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let stop = shutdown.clone();
            tokio::spawn(api::serve::serve(listener, router, serve_limits, stop));
        }
        let delivering = delivery.map(|delivery| {
            // `--once` ends with its notifications sent, if the receivers answer soon.
            let linger = if once { Duration::from_secs(10) } else { Duration::ZERO };
            let stop = CancellationToken::new();
            (tokio::spawn(delivery.run(stop.clone(), linger)), stop)
        });
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stopping: finishing the status writes in flight; containers keep running");
            trigger.cancel();
        });
        // On a worker, not this thread: the loop spawns every pass and hears every end,
        // and from a worker those stay on its own queue rather than wake another thread
        // each time (a tenth fewer context switches for `scripts/bench throughput`).
        let outcome = match tokio::spawn(controller.run(shutdown)).await {
            Ok(outcome) => outcome.map_err(anyhow::Error::from),
            Err(err) => Err(anyhow::anyhow!("the controller's loop failed: {err}")),
        };
        if let Some((delivering, stop)) = delivering {
            stop.cancel();
            let _ = delivering.await;
        }
        // Open /v1/watch streams end with the controller; readers reconnect to the next one.
        hub.close();
        if let Some(progress) = progress {
            progress.abort();
            super::progress::finish(&progress_metrics);
        }
        outcome
    })?;
    // Reaper tasks of finished supervisors may still be parked; do not wait for them.
    runtime.shutdown_background();
    Ok(match outcome {
        Outcome::AllSucceeded | Outcome::Shutdown => ExitCode::SUCCESS,
        Outcome::SomeFailed => ExitCode::from(1),
    })
}

/// Warns (and goes on) when the management routes are reachable from other machines
/// without a token, or when the token can be read by other users. A warning rather than
/// a refusal: behind a firewall or in a container's own network namespace a wildcard
/// address is what one wants, and refusing would break such setups.
fn warn_if_exposed(listener: &std::net::TcpListener, token_file: Option<&Path>) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(address) = listener.local_addr() else { return };
    let token_mode = token_file
        .and_then(|path| std::fs::metadata(path).ok())
        .map(|meta| meta.permissions().mode());
    for warning in exposure_warnings(address, token_file, token_mode) {
        tracing::warn!("{warning}");
    }
}

fn exposure_warnings(address: std::net::SocketAddr, token_file: Option<&Path>, token_mode: Option<u32>) -> Vec<String> {
    let mut warnings = Vec::new();
    if !address.ip().is_loopback() && token_file.is_none() {
        warnings.push(format!(
            "the API listens on {address}, not a loopback address, without --api-token-file: anyone who can reach it may read tasks and terminate them"
        ));
    }
    if let (Some(path), Some(mode)) = (token_file, token_mode)
        && mode & 0o077 != 0
    {
        warnings.push(format!(
            "--api-token-file {} can be read by other users (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        ));
    }
    warnings
}

/// The callback secret the replicas share, waiting for a store that cannot be reached yet
/// (a replica restarted during an outage starts once the store answers).
async fn shared_secret(blob: &crate::store::blob::BlobStore) -> anyhow::Result<Vec<u8>> {
    let mut wait = std::time::Duration::from_millis(250);
    loop {
        match blob.shared_secret().await {
            Ok(key) => return Ok(key),
            Err(err @ crate::store::StoreError::Unavailable { .. }) => {
                tracing::warn!("cannot read the shared callback secret; retrying in {wait:?}: {err}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// The aci runtime, when it is configured. `--runtime aci` needs it; otherwise it is made
/// when the subscription, resource group and location are all given, so that single
/// tasks can say `runtime: aci`.
fn aci_runtime(
    args: &ControllerArgs,
    state: &Path,
    default_runtime: RuntimeKind,
) -> anyhow::Result<Option<Arc<AciRuntime>>> {
    let given = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
    let subscription = given(&args.aci_subscription_id).or_else(|| given(&std::env::var("AZURE_SUBSCRIPTION_ID").ok()));
    let (Some(subscription), Some(group), Some(location)) =
        (subscription, given(&args.aci_resource_group), given(&args.aci_location))
    else {
        if default_runtime == RuntimeKind::Aci {
            let mut missing = Vec::new();
            if given(&args.aci_subscription_id).is_none() && std::env::var("AZURE_SUBSCRIPTION_ID").is_err() {
                missing.push("--aci-subscription-id (or AZURE_SUBSCRIPTION_ID)");
            }
            if given(&args.aci_resource_group).is_none() {
                missing.push("--aci-resource-group");
            }
            if given(&args.aci_location).is_none() {
                missing.push("--aci-location");
            }
            return Err(UsageError(format!("--runtime aci needs {}", missing.join(", "))).into());
        }
        return Ok(None);
    };
    let kind = args.source.azure_credential.unwrap_or_else(CredentialKind::guess);
    let mut config = AciConfig::new(subscription, group, location, AciCredential::Azure(kind));
    config.arm_endpoint = args.arm_endpoint.clone();
    config.create_quota = args.aci_create_quota.clone();
    let aci = AciRuntime::new(state, config).map_err(|err| UsageError(err.to_string()))?;
    tracing::info!("aci: containers run as container groups; tokens from the {kind} credential");
    Ok(Some(Arc::new(aci)))
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
#[cfg(test)]
mod tests {
    #[test]
    fn an_exposed_api_or_a_readable_token_is_warned_about() {
        use super::exposure_warnings;
        let wild: std::net::SocketAddr = "0.0.0.0:8466".parse().unwrap();
        let local: std::net::SocketAddr = "127.0.0.1:8466".parse().unwrap();
        let token = std::path::Path::new("/etc/skiff/token");
        assert!(exposure_warnings(local, None, None).is_empty());
        assert!(exposure_warnings(wild, None, None)[0].contains("without --api-token-file"));
        assert!(exposure_warnings(wild, Some(token), Some(0o100600)).is_empty());
        let readable = exposure_warnings(local, Some(token), Some(0o100644));
        assert_eq!(readable.len(), 1);
        assert!(readable[0].contains("mode 644"), "{readable:?}");
    }
}
