//! The docker runtime: each container is a Docker Engine container, driven over the
//! engine's API on its unix socket with `bollard` (never the docker CLI).
//!
//! - **Adopting.** A container's name is a pure function of its task and attempt, so
//!   [`ensure`](Runtime::ensure) first looks the name up: a container made for this
//!   attempt (label [`LABEL_ATTEMPT_ID`]) is adopted (started if it was only created), one
//!   made for another attempt is removed and made afresh. Two `ensure`s racing on one
//!   name end with one container: the loser's create answers 409 and it adopts.
//! - **Ownership.** One engine may serve several skiff controllers (several folders, or
//!   parallel tests), whose containers can share names. Every container is labelled with
//!   the state folder of the controller that made it ([`LABEL_STATE_DIR`]); a controller
//!   inspects, lists, watches, deletes and replaces only its own (another's is "absent"
//!   to it), and waits for a same-named container of another one to go rather than
//!   removing it.
//! - **Images.** An absent image is pulled, within a time limit; an image that cannot be
//!   had fails the attempt ([`Reason::ImagePullFailed`]), never a silent hang.
//! - **Logs.** While a container exists its output is read from the engine. `delete`
//!   copies it into `<state>/logs/<name>.log` before removing the container, the same
//!   file the process runtime keeps, so `skiff logs` and `logTail` work afterwards.
//! - **Events.** [`subscribe`](Runtime::subscribe) follows the engine's event stream, so
//!   an exit is seen at once (`completedBy: engine`); when the engine goes away it
//!   reconnects with backoff and then names every container again, so that nothing
//!   missed meanwhile stays unseen. Polling remains the safety net.
//! - **Errors.** An engine that does not answer, or answers 5xx, is
//!   [`RuntimeError::Transient`] (retried, never counted against `retries`); a request
//!   the engine refuses as wrong (4xx: a bad network, a memory limit it rejects, a
//!   command that is not in the image) is [`RuntimeError::Permanent`].
//!
//! Here: the runtime, its engine client and ownership, creating, starting and removing;
//! [`pull`] (images), [`logs`] (kept logs), [`events`] (the event stream) and [`state`]
//! (what an inspection means) beside it.
//!
//! The engine may be older than bollard: the API version is negotiated on first use
//! (Debian's dockerd 20.10 speaks 1.41), and only calls that 1.41 has are made.

mod auth;
mod errors;
mod events;
mod logs;
mod pull;
mod state;

pub use auth::DockerConfig;
use errors::{engine_message, status_of, transient};
use pull::Pulls;
use state::state_of;

use super::adopt::{self, Verdict};
use super::{
    ContainerSpec, ContainerState, ContainerSummary, Inspection, LABEL_ATTEMPT_ID, LABEL_TASK, Runtime, RuntimeError,
};
use crate::manifest::RuntimeKind;
use crate::status::Reason;
use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, mpsc};

/// The state folder of the controller that made a container: its owner.
pub const LABEL_STATE_DIR: &str = "skiff.state-dir";

/// How long a pull may take before the image counts as one that cannot be had.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the engine may take to answer one request (bollard's default). Not the
/// streams: a pull is bounded by its own limit, logs and events by nothing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the first exchange with the engine (the version handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `delete` waits for a killed container to be reported stopped before it
/// reads the logs (so that the last lines are in them).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How many lines `log_tail` asks the engine for: the engine counts lines, not bytes;
/// 256 lines hold the 4 KiB tail unless the lines are very short.
const TAIL_LINES: &str = "256";
/// How long `ensure` keeps looking again when the name changes under it (a racing
/// create, a removal in flight) before calling it a transient failure. The engine
/// reserves a name before the container can be inspected, and with the vfs driver a
/// create copies the whole image, so the winner of a race may take a while to appear.
const ENSURE_RACE: Duration = Duration::from_secs(30);

/// The docker runtime's options for `task`: its network mode, its host mounts, and its
/// working directory, a path in the container, passed as written.
pub(crate) fn options(task: &crate::manifest::TaskSpec) -> super::RuntimeOptions {
    super::RuntimeOptions::Docker {
        network: task.network.clone(),
        mounts: task
            .volumes
            .iter()
            .filter_map(|volume| {
                Some(super::Mount {
                    host_path: PathBuf::from(volume.host_path.as_ref()?),
                    mount_path: volume.mount_path.clone(),
                    read_only: volume.read_only,
                })
            })
            .collect(),
        working_dir: task.working_dir.clone(),
    }
}

pub struct DockerRuntime {
    inner: Arc<Inner>,
}

/// Shared with the event-watching task, which outlives any one call.
struct Inner {
    /// Made and version-negotiated on first use, so that a controller can start before
    /// the engine does; until then every call is a transient error.
    client: OnceCell<Docker>,
    /// The engine's ID (`GET /info`), asked once the engine first answers: replicas on
    /// one engine see each other's containers, replicas on two engines do not.
    engine_id: OnceCell<String>,
    /// The engine's socket when given explicitly; else `DOCKER_HOST` or the default.
    socket: Option<PathBuf>,
    /// `<state>/logs`, shared with the process runtime.
    logs: PathBuf,
    /// The value of [`LABEL_STATE_DIR`] on this controller's containers.
    owner: String,
    default_network: Option<String>,
    /// `--max-log-size`: the most of a container's output kept after it is deleted.
    max_log_bytes: AtomicU64,
    /// Pulls in flight, and pulls that failed lately, by image reference.
    pulls: Arc<Pulls>,
    /// `--docker-config`: registry credentials for every task's pulls.
    docker_config: std::sync::OnceLock<DockerConfig>,
}

impl DockerRuntime {
    /// A runtime for the engine named by `DOCKER_HOST` (a `unix://` path), else
    /// `/var/run/docker.sock`. Does not talk to the engine yet: the first call does (see
    /// [`DockerRuntime::ping`] to check at start-up). `default_network` is the network
    /// mode (`--docker-network`) of containers whose spec names none; `None` leaves it
    /// to the engine.
    pub fn connect(state_dir: &Path, default_network: Option<String>) -> Result<Self, RuntimeError> {
        Self::new(state_dir, default_network, None)
    }

    /// As [`DockerRuntime::connect`], for the engine listening on the unix socket `socket`
    /// (whatever `DOCKER_HOST` says).
    pub fn connect_to_socket(
        state_dir: &Path,
        default_network: Option<String>,
        socket: &Path,
    ) -> Result<Self, RuntimeError> {
        Self::new(state_dir, default_network, Some(socket.to_path_buf()))
    }

    fn new(state_dir: &Path, default_network: Option<String>, socket: Option<PathBuf>) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(state_dir)?;
        // The owner label must not depend on how the folder was spelled.
        let state_dir = std::fs::canonicalize(state_dir)?;
        let logs = state_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        Ok(DockerRuntime {
            inner: Arc::new(Inner {
                client: OnceCell::new(),
                engine_id: OnceCell::new(),
                socket,
                logs,
                owner: state_dir.to_string_lossy().into_owned(),
                default_network,
                max_log_bytes: AtomicU64::new(super::log_cap::DEFAULT_MAX_LOG_BYTES),
                pulls: Arc::new(Pulls::new(DEFAULT_PULL_TIMEOUT)),
                docker_config: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Registry credentials (a `config.json`'s `auths`) for the pulls of every task that
    /// gives none of its own for the image's registry (`--docker-config`).
    pub fn with_docker_config(self, config: DockerConfig) -> Self {
        let _ = self.inner.docker_config.set(config);
        self
    }

    /// How long a pull may take (default [`DEFAULT_PULL_TIMEOUT`]).
    pub fn with_pull_timeout(self, timeout: Duration) -> Self {
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.inner.pulls.timeout_ms.store(millis, Ordering::Relaxed);
        self
    }

    /// The most output kept per container (default 10 MiB): its head and its tail.
    pub fn with_max_log_bytes(self, bytes: u64) -> Self {
        self.inner.max_log_bytes.store(bytes, Ordering::Relaxed);
        self
    }

    /// Whether the engine answers; its version and API version if so.
    pub async fn ping(&self) -> Result<String, RuntimeError> {
        let docker = self.inner.client().await?;
        let version = docker
            .version()
            .await
            .map_err(|err| transient("ask the engine for its version", err))?;
        Ok(format!(
            "Docker Engine {} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        ))
    }

    /// The container's output, kept after it was deleted.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.inner.log_path(name)
    }
}

impl Inner {
    async fn client(&self) -> Result<&Docker, RuntimeError> {
        self.client
            .get_or_try_init(|| async {
                let docker = match &self.socket {
                    Some(socket) => Docker::connect_with_unix(
                        &socket.to_string_lossy(),
                        REQUEST_TIMEOUT.as_secs(),
                        bollard::API_DEFAULT_VERSION,
                    ),
                    None => Docker::connect_with_local_defaults(),
                }
                .map_err(|err| transient("connect to the Docker engine", err))?;
                // bollard asks for a newer API than older engines speak; agree on theirs.
                match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
                    Ok(Ok(docker)) => Ok(docker),
                    Ok(Err(err)) => Err(transient("agree on an API version with the Docker engine", err)),
                    Err(_) => Err(RuntimeError::Transient(format!(
                        "docker: the engine did not answer within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ))),
                }
            })
            .await
    }

    fn log_path(&self, name: &str) -> PathBuf {
        super::kept_logs::path(&self.logs, name)
    }

    /// `None` when there is no container of that name.
    async fn inspect_raw(&self, docker: &Docker, name: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        match docker.inspect_container(name, None).await {
            Ok(found) => Ok(Some(found)),
            Err(err) if status_of(&err) == Some(404) => Ok(None),
            Err(err) => Err(transient(&format!("inspect {name}"), err)),
        }
    }

    /// Whether this controller made the container (see [`LABEL_STATE_DIR`]).
    fn is_own(&self, found: &ContainerInspectResponse) -> bool {
        labels_of(found).and_then(|l| l.get(LABEL_STATE_DIR)) == Some(&self.owner)
    }

    /// The container of that name if this controller made it. A same-named container of
    /// another controller is, for this one, no container at all: never inspected, stopped
    /// or removed in its name.
    async fn inspect_own(&self, docker: &Docker, name: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        Ok(self.inspect_raw(docker, name).await?.filter(|found| self.is_own(found)))
    }

    fn create_body(&self, spec: &ContainerSpec, image: &str) -> Result<ContainerCreateBody, RuntimeError> {
        let bad = |message: String| RuntimeError::Permanent {
            reason: Reason::CreateFailed,
            message: format!("docker: {}: {message}", spec.name),
        };
        let mut labels: HashMap<String, String> = spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.insert(LABEL_STATE_DIR.to_string(), self.owner.clone());
        let super::RuntimeOptions::Docker {
            network,
            mounts,
            working_dir,
        } = &spec.options
        else {
            return Err(spec.options.mismatch(RuntimeKind::Docker, &spec.name));
        };
        let mut binds = Vec::with_capacity(mounts.len());
        for mount in mounts {
            let host = mount
                .host_path
                .to_str()
                .ok_or_else(|| bad(format!("hostPath {} is not UTF-8", mount.host_path.display())))?;
            // Binds are `host:container[:ro]`; a colon inside either path would be misread.
            if host.contains(':') || mount.mount_path.contains(':') {
                return Err(bad(format!(
                    "volume {host} → {}: docker cannot bind a path containing ':'",
                    mount.mount_path
                )));
            }
            let mode = if mount.read_only { ":ro" } else { "" };
            binds.push(format!("{host}:{}{mode}", mount.mount_path));
        }
        let memory = match spec.memory_bytes {
            Some(bytes) => Some(i64::try_from(bytes).map_err(|_| bad(format!("memory {bytes} bytes is too large")))?),
            None => None,
        };
        let nano_cpus = spec.cpu.map(|cpu| (cpu * 1e9).round() as i64);
        let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        Ok(ContainerCreateBody {
            image: Some(image.to_string()),
            // Kubernetes semantics: `command` replaces the image's entrypoint (and with it
            // the image's cmd), `args` its cmd.
            entrypoint: non_empty(&spec.command),
            cmd: non_empty(&spec.args),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: working_dir.clone(),
            labels: Some(labels),
            tty: Some(false),
            attach_stdin: Some(false),
            open_stdin: Some(false),
            host_config: Some(HostConfig {
                nano_cpus,
                memory,
                network_mode: network.clone().or_else(|| self.default_network.clone()),
                binds: (!binds.is_empty()).then_some(binds),
                // The exit code and the logs are read after the exit; the engine must not
                // throw them away first.
                auto_remove: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn start(&self, docker: &Docker, name: &str) -> Result<(), RuntimeError> {
        match docker.start_container(name, None).await {
            // 304 (already started) arrives as Ok too.
            Ok(()) => Ok(()),
            Err(err) => match status_of(&err) {
                Some(404) => Err(RuntimeError::Transient(format!(
                    "docker: {name} was removed before it started"
                ))),
                // The engine refuses the container itself: a command not in the image, a
                // bind it cannot make. Starting again cannot help.
                Some(code) if (400..500).contains(&code) && code != 408 && code != 429 => {
                    Err(RuntimeError::Permanent {
                        reason: Reason::CreateFailed,
                        message: format!("docker: cannot start {name}: {}", engine_message(&err)),
                    })
                }
                // An engine killed in the middle of a start can leave the container
                // "created" while containerd still holds its task: every later start then
                // fails with "already exists" (or, from containerd, "id already in use").
                // The container never ran as far as the engine knows; remove it, and the
                // next ensure creates it afresh.
                Some(500)
                    if ["already exists", "id already in use"]
                        .iter()
                        .any(|said| engine_message(&err).contains(said)) =>
                {
                    tracing::warn!(container = name, "removing a container the engine can no longer start");
                    self.remove(docker, name).await?;
                    Err(transient(&format!("start {name}"), err))
                }
                _ => Err(transient(&format!("start {name}"), err)),
            },
        }
    }

    async fn remove(&self, docker: &Docker, name: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            // Anonymous volumes (an image's VOLUME) would otherwise pile up.
            v: true,
            ..Default::default()
        };
        match docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if status_of(&err) == Some(404) => Ok(()),
            // "removal already in progress": wait for the other removal to finish, so that
            // the caller is told "gone" only once it is.
            Err(err) if status_of(&err) == Some(409) => {
                let deadline = Instant::now() + STOP_GRACE;
                while Instant::now() < deadline {
                    if self.inspect_raw(docker, name).await?.is_none() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(transient(&format!("remove {name}"), err))
            }
            Err(err) => Err(transient(&format!("remove {name}"), err)),
        }
    }

    /// Waits (a little) until the engine reports the container stopped. `false` when it
    /// vanished meanwhile.
    async fn wait_stopped(&self, docker: &Docker, name: &str) -> Result<bool, RuntimeError> {
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            let Some(found) = self.inspect_raw(docker, name).await? else {
                return Ok(false);
            };
            let running = found.state.as_ref().and_then(|s| s.running).unwrap_or(false);
            if !running || Instant::now() >= deadline {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// This controller's containers (all of them, running or not).
    async fn list(&self, docker: &Docker) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(self.label_filters()),
            ..Default::default()
        };
        let found = docker
            .list_containers(Some(options))
            .await
            .map_err(|err| transient("list containers", err))?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                // The engine names containers "/name".
                let name = c.names?.into_iter().next()?.trim_start_matches('/').to_string();
                Some(ContainerSummary {
                    name,
                    labels: c.labels.unwrap_or_default().into_iter().collect(),
                })
            })
            .collect())
    }

    /// Matches skiff's containers made by this controller (the engine ANDs label filters).
    fn label_filters(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![LABEL_TASK.to_string(), format!("{LABEL_STATE_DIR}={}", self.owner)],
        )])
    }
}

fn labels_of(found: &ContainerInspectResponse) -> Option<&HashMap<String, String>> {
    found.config.as_ref()?.labels.as_ref()
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    async fn placement(&self) -> Result<super::Placement, RuntimeError> {
        let inner = &self.inner;
        let id = inner
            .engine_id
            .get_or_try_init(|| async {
                let docker = inner.client().await?;
                let info = docker
                    .info()
                    .await
                    .map_err(|err| transient("ask the engine who it is", err))?;
                // The ID names the engine; an engine that gives none is known by its
                // host name, which tells two machines apart all the same.
                info.id
                    .filter(|id| !id.trim().is_empty())
                    .or(info
                        .name
                        .filter(|name| !name.trim().is_empty())
                        .map(|name| format!("host:{name}")))
                    .ok_or_else(|| RuntimeError::Transient("docker: the engine gave neither an ID nor a name".into()))
            })
            .await?;
        Ok(super::Placement::docker(id.clone(), inner.owner.clone()))
    }

    async fn ensure(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let docker = inner.client().await?;
        let name = spec.name.as_str();
        let Some(image) = spec.image.as_deref().filter(|i| !i.trim().is_empty()) else {
            return Err(RuntimeError::Permanent {
                reason: Reason::CreateFailed,
                message: format!("docker: {name}: the docker runtime needs spec.image"),
            });
        };
        let deadline = Instant::now() + ENSURE_RACE;
        let mut pause = Duration::from_millis(50);
        while Instant::now() < deadline {
            if let Some(found) = inner.inspect_raw(docker, name).await? {
                let labels = labels_of(&found);
                let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
                let wanted = spec.labels.get(LABEL_ATTEMPT_ID).map(String::as_str);
                match adopt::verdict(label(LABEL_STATE_DIR), &inner.owner, label(LABEL_ATTEMPT_ID), wanted) {
                    // Another controller's (or a person's): never ours to adopt or remove.
                    Verdict::Foreign { owner } => {
                        return Err(adopt::taken("docker", name, "container", owner, "state folder"));
                    }
                    // Same name, another attempt: one an earlier run kept (`cleanup`), or
                    // one left from before its status file was deleted. Never adopt it.
                    Verdict::Replace => {
                        tracing::info!(container = name, "removing a container made for another attempt");
                        inner.remove(docker, name).await?;
                        let _ = tokio::fs::remove_file(inner.log_path(name)).await;
                        continue;
                    }
                    Verdict::Adopt => {
                        return match state_of(&found) {
                            ContainerState::Created => inner.start(docker, name).await,
                            _ => Ok(()),
                        };
                    }
                }
            }
            let credentials = auth::credentials_for(image, &spec.registry_credentials, inner.docker_config.get());
            inner.pulls.ensure_image(docker, image, credentials).await?;
            let body = inner.create_body(spec, image)?;
            let options = CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            };
            match docker.create_container(Some(options), body).await {
                Ok(_) => return inner.start(docker, name).await,
                // Another ensure made it first: look again, and adopt it.
                Err(err) if status_of(&err) == Some(409) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
                // The image went between the look and the create: the next round pulls it.
                Err(err) if status_of(&err) == Some(404) && engine_message(&err).contains("No such image") => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(err) => {
                    return Err(match status_of(&err) {
                        // The engine refuses this container: an unknown network, limits it
                        // does not accept, a bad bind.
                        Some(code) if (400..500).contains(&code) && code != 408 && code != 429 => {
                            RuntimeError::Permanent {
                                reason: Reason::CreateFailed,
                                message: format!("docker: cannot create {name}: {}", engine_message(&err)),
                            }
                        }
                        _ => transient(&format!("create {name}"), err),
                    });
                }
            }
        }
        Err(RuntimeError::Transient(format!(
            "docker: the container {name} kept changing while it was being made; will look again"
        )))
    }

    async fn inspect(&self, name: &str) -> Result<Inspection, RuntimeError> {
        let docker = self.inner.client().await?;
        Ok(match self.inner.inspect_own(docker, name).await? {
            None => Inspection {
                state: ContainerState::Absent,
                attempt_id: None,
                progress: None,
            },
            Some(found) => Inspection {
                state: state_of(&found),
                attempt_id: labels_of(&found).and_then(|l| l.get(LABEL_ATTEMPT_ID)).cloned(),
                progress: None,
            },
        })
    }

    async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let docker = inner.client().await?;
        let Some(found) = inner.inspect_own(docker, name).await? else {
            return Ok(());
        };
        let flag = |get: fn(&bollard::models::ContainerState) -> Option<bool>| {
            found.state.as_ref().and_then(get).unwrap_or(false)
        };
        // A paused container cannot be killed (409); the forced removal ends it.
        if flag(|s| s.running) && !flag(|s| s.paused) {
            let options = KillContainerOptions {
                signal: "SIGKILL".to_string(),
            };
            match docker.kill_container(name, Some(options)).await {
                Ok(()) => {}
                Err(err) if status_of(&err) == Some(404) => return Ok(()),
                // 409: not running any more.
                Err(err) if status_of(&err) == Some(409) => {}
                Err(err) => return Err(transient(&format!("kill {name}"), err)),
            }
            if !inner.wait_stopped(docker, name).await? {
                return Ok(());
            }
        }
        if !inner.save_logs(docker, name).await? {
            return Ok(());
        }
        inner.remove(docker, name).await
    }

    async fn log_tail(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        let bytes = self.inner.output(name, TAIL_LINES).await?;
        Ok(bytes.map(|bytes| crate::status::log_tail(&bytes)))
    }

    /// From the engine while the container exists, else from the copy `delete` kept.
    async fn output(&self, name: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        self.inner.output(name, "all").await
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let docker = self.inner.client().await?;
        self.inner.list(docker).await
    }

    async fn forget(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        super::kept_logs::forget(&self.inner.logs, container_prefix).await
    }

    async fn forget_earlier_run(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        super::kept_logs::forget_earlier(&self.inner.logs, container_prefix).await
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = self.inner.clone();
        handle.spawn(async move {
            // Ends with the receiver, not with the engine: the stream is reopened forever.
            let watching = tx.clone();
            tokio::select! {
                _ = tx.closed() => {}
                _ = inner.watch_events(watching) => {}
            }
        });
        Some(rx)
    }
}
