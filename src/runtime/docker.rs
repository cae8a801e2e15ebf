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
//! The engine may be older than bollard: the API version is negotiated on first use
//! (Debian's dockerd 20.10 speaks 1.41), and only calls that 1.41 has are made.

use super::{
    ContainerSpec, ContainerState, ContainerSummary, Inspection, LABEL_ATTEMPT_ID, LABEL_TASK, Runtime, RuntimeError,
};
use crate::fsutil;
use crate::manifest::RuntimeKind;
use crate::status::{LOG_TAIL_BYTES, Reason, Timestamp};
use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions,
};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, mpsc, watch};

/// The state folder of the controller that made a container: its owner.
pub const LABEL_STATE_DIR: &str = "skiff.state-dir";

/// How long a pull may take before the image counts as one that cannot be had.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a failed pull is remembered: an `ensure` that stopped waiting for it (its
/// reconcile timed out) learns the outcome rather than starting the same pull again.
const FAILED_PULL_MEMORY: Duration = Duration::from_secs(60);
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
/// Backoff between reconnections to the event stream.
const EVENTS_BACKOFF_MIN: Duration = Duration::from_millis(200);
const EVENTS_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// An event stream that lasted this long was a working connection: the backoff starts
/// again from its minimum.
const EVENTS_HEALTHY: Duration = Duration::from_secs(10);
/// How long `ensure` keeps looking again when the name changes under it (a racing
/// create, a removal in flight) before calling it a transient failure. The engine
/// reserves a name before the container can be inspected, and with the vfs driver a
/// create copies the whole image, so the winner of a race may take a while to appear.
const ENSURE_RACE: Duration = Duration::from_secs(30);

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

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
    pull_timeout_ms: AtomicU64,
    /// `--max-log-size`: the most of a container's output kept after it is deleted.
    max_log_bytes: AtomicU64,
    /// Pulls in flight, and pulls that failed lately, by image reference.
    pulls: std::sync::Mutex<HashMap<String, Pull>>,
}

enum Pull {
    Running(watch::Receiver<Option<PullResult>>),
    Failed { at: Instant, error: PullError },
}

type PullResult = Result<(), PullError>;

#[derive(Clone)]
struct PullError {
    /// The image cannot be had (as opposed to: the engine went away meanwhile).
    permanent: bool,
    message: String,
}

impl PullError {
    fn into_runtime_error(self) -> RuntimeError {
        if self.permanent {
            RuntimeError::Permanent {
                reason: Reason::ImagePullFailed,
                message: self.message,
            }
        } else {
            RuntimeError::Transient(self.message)
        }
    }
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
                pull_timeout_ms: AtomicU64::new(DEFAULT_PULL_TIMEOUT.as_millis() as u64),
                max_log_bytes: AtomicU64::new(super::log_cap::DEFAULT_MAX_LOG_BYTES),
                pulls: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// How long a pull may take (default [`DEFAULT_PULL_TIMEOUT`]).
    pub fn with_pull_timeout(self, timeout: Duration) -> Self {
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.inner.pull_timeout_ms.store(millis, Ordering::Relaxed);
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

    /// All of a container's output: from the engine while the container exists, else
    /// from the copy `delete` kept. `None` when there is neither. For `skiff logs`.
    pub async fn output(&self, name: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        self.inner.output(name, "all").await
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
        self.logs.join(format!("{name}.log"))
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

    /// All of the output (`tail` = "all") or its last lines (`tail` = a number; then the
    /// kept copy is read from its last 4 KiB or so): from the engine while this
    /// controller's container exists, else from the copy `delete` kept, also when the
    /// engine does not answer. `None` when there is neither.
    async fn output(&self, name: &str, tail: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        let from_engine = async {
            let docker = self.client().await?;
            match self.inspect_own(docker, name).await? {
                Some(_) => self.engine_logs(docker, name, tail).await,
                None => Ok(None),
            }
        };
        let engine_error = match from_engine.await {
            Ok(Some(bytes)) => return Ok(Some(bytes)),
            Ok(None) => None,
            Err(err) => Some(err),
        };
        // A little more than the tail, so that it can start on a line boundary.
        let limit = (tail != "all").then_some(LOG_TAIL_BYTES as u64 + 256);
        match super::read_end(&self.log_path(name), limit).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => match engine_error {
                Some(err) => Err(err),
                None => Ok(None),
            },
            Err(err) => Err(err.into()),
        }
    }

    /// Makes sure `image` is present, pulling it if not. The pull runs in a task of its
    /// own, shared by every `ensure` that needs the image (a fan-out of a hundred pulls
    /// once), and it goes on when the `ensure` waiting for it is cancelled (a reconcile
    /// that timed out): the next `ensure` joins it, or learns how it failed.
    async fn ensure_image(self: &Arc<Self>, docker: &Docker, image: &str) -> Result<(), RuntimeError> {
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(err) if status_of(&err) == Some(404) => {}
            Err(err) => return Err(transient(&format!("inspect the image {image}"), err)),
        }
        let reference = with_default_tag(image);
        let mut outcome = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match pulls.get(&reference) {
                Some(Pull::Failed { at, error }) if at.elapsed() < FAILED_PULL_MEMORY => {
                    return Err(error.clone().into_runtime_error());
                }
                // (A pull whose task ended without a word, in a panic, is started again.)
                Some(Pull::Running(outcome)) if outcome.has_changed().is_ok() => outcome.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    pulls.insert(reference.clone(), Pull::Running(rx.clone()));
                    tokio::spawn(self.clone().pull(docker.clone(), reference.clone(), tx));
                    rx
                }
            }
        };
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or(Ok(())),
            // The pulling task ended without a word: the runtime is shutting down.
            Err(_) => Err(PullError {
                permanent: false,
                message: format!("docker: the pull of {reference} was abandoned"),
            }),
        };
        result.map_err(PullError::into_runtime_error)?;
        // A pull that "succeeds" without producing the image must not loop forever.
        match docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(err) if status_of(&err) == Some(404) => Err(RuntimeError::Permanent {
                reason: Reason::ImagePullFailed,
                message: format!("docker: the image {image} is still absent after pulling {reference}"),
            }),
            Err(err) => Err(transient(&format!("inspect the image {image}"), err)),
        }
    }

    /// Pulls `reference` within the pull time limit, and tells the waiters how it went.
    async fn pull(self: Arc<Self>, docker: Docker, reference: String, tx: watch::Sender<Option<PullResult>>) {
        tracing::info!(image = %reference, "pulling the image");
        let options = CreateImageOptions {
            from_image: Some(reference.clone()),
            ..Default::default()
        };
        let pulling = async {
            let mut progress = docker.create_image(Some(options), None, None);
            while let Some(item) = progress.next().await {
                match item {
                    // Progress lines; a failure comes as an error item (bollard turns the
                    // stream's errorDetail into one) or as an error answer.
                    Ok(_) => {}
                    Err(
                        err @ (EngineError::DockerResponseServerError { .. } | EngineError::DockerStreamError { .. }),
                    ) => {
                        return Err(PullError {
                            permanent: true,
                            message: format!("docker: cannot pull the image {reference}: {}", engine_message(&err)),
                        });
                    }
                    // The engine went away mid-pull: not the image's fault.
                    Err(err) => {
                        return Err(PullError {
                            permanent: false,
                            message: format!("docker: cannot pull the image {reference}: {err}"),
                        });
                    }
                }
            }
            Ok(())
        };
        let limit = Duration::from_millis(self.pull_timeout_ms.load(Ordering::Relaxed));
        let result = match tokio::time::timeout(limit, pulling).await {
            Ok(result) => result,
            Err(_) => Err(PullError {
                permanent: true,
                message: format!(
                    "docker: the image {reference} could not be pulled within {}",
                    humantime::format_duration(limit)
                ),
            }),
        };
        match &result {
            Ok(()) => tracing::info!(image = %reference, "pulled the image"),
            Err(err) => tracing::warn!(image = %reference, "{}", err.message),
        }
        {
            let mut pulls = self.pulls.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match &result {
                // Remembered for a while, for an `ensure` that stopped waiting.
                Err(error) if error.permanent => {
                    let failed = Pull::Failed {
                        at: Instant::now(),
                        error: error.clone(),
                    };
                    pulls.insert(reference.clone(), failed);
                }
                _ => {
                    pulls.remove(&reference);
                }
            }
            // Failures of other images are forgotten in time, not only when retried.
            pulls.retain(|_, pull| !matches!(pull, Pull::Failed { at, .. } if at.elapsed() >= FAILED_PULL_MEMORY));
        }
        let _ = tx.send(Some(result));
    }

    fn create_body(&self, spec: &ContainerSpec, image: &str) -> Result<ContainerCreateBody, RuntimeError> {
        let bad = |message: String| RuntimeError::Permanent {
            reason: Reason::CreateFailed,
            message: format!("docker: {}: {message}", spec.name),
        };
        let mut labels: HashMap<String, String> = spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.insert(LABEL_STATE_DIR.to_string(), self.owner.clone());
        let working_dir = match &spec.working_dir {
            Some(dir) => Some(
                dir.to_str()
                    .ok_or_else(|| bad(format!("workingDir {} is not UTF-8", dir.display())))?
                    .to_string(),
            ),
            None => None,
        };
        let mut binds = Vec::with_capacity(spec.mounts.len());
        for mount in &spec.mounts {
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
            working_dir,
            labels: Some(labels),
            tty: Some(false),
            attach_stdin: Some(false),
            open_stdin: Some(false),
            host_config: Some(HostConfig {
                nano_cpus,
                memory,
                network_mode: spec.network.clone().or_else(|| self.default_network.clone()),
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
                // fails with "already exists". The container never ran as far as the engine
                // knows; remove it, and the next ensure creates it afresh.
                Some(500) if engine_message(&err).contains("already exists") => {
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

    /// The container's logs (stdout and stderr, interleaved as the engine stored them),
    /// `tail` lines or "all". `None` when there is no such container.
    async fn engine_logs(&self, docker: &Docker, name: &str, tail: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = docker.logs(name, Some(options));
        let mut bytes = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => bytes.extend_from_slice(chunk.as_ref()),
                Err(err) if status_of(&err) == Some(404) => return Ok(None),
                Err(err) if unreadable_logs(&err) => {
                    bytes.extend_from_slice(format!("(skiff: the engine cannot give the logs: {err})\n").as_bytes());
                    break;
                }
                Err(err) => return Err(transient(&format!("read the logs of {name}"), err)),
            }
        }
        Ok(Some(bytes))
    }

    /// Copies all of the container's output into its log file, replacing the file
    /// atomically (a repeated `delete` must not double it). `false` when there is no
    /// such container.
    async fn save_logs(&self, docker: &Docker, name: &str) -> Result<bool, RuntimeError> {
        let path = self.log_path(name);
        let temp = self.logs.join(format!(
            ".{name}.log.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.copy_logs(docker, name, &temp).await;
        match result {
            Ok(true) => {}
            other => {
                let _ = tokio::fs::remove_file(&temp).await;
                return other;
            }
        }
        let renamed = async {
            tokio::fs::rename(&temp, &path).await?;
            // Durable before the container (the only other copy) is removed.
            let logs = self.logs.clone();
            tokio::task::spawn_blocking(move || fsutil::sync_dir(&logs))
                .await
                .map_err(std::io::Error::other)?
        };
        if let Err(err) = renamed.await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(RuntimeError::Transient(format!(
                "docker: cannot keep the logs of {name} in {}: {err}",
                path.display()
            )));
        }
        Ok(true)
    }

    /// Streams the logs into `temp`, fsynced, keeping the head and tail within
    /// `--max-log-size` (they may be large). The file is written on a blocking thread.
    async fn copy_logs(&self, docker: &Docker, name: &str, temp: &Path) -> Result<bool, RuntimeError> {
        let io_error = |err: std::io::Error| {
            RuntimeError::Transient(format!(
                "docker: cannot write the logs of {name} to {}: {err}",
                temp.display()
            ))
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(temp)
            .map_err(io_error)?;
        let cap = self.max_log_bytes.load(Ordering::Relaxed);
        let (chunks, mut received) = mpsc::channel::<Vec<u8>>(16);
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut log = super::log_cap::CappedLog::new(file, cap)?;
            while let Some(chunk) = received.blocking_recv() {
                log.append(&chunk)?;
            }
            log.sync()
        });
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: "all".to_string(),
            ..Default::default()
        };
        let mut stream = docker.logs(name, Some(options));
        let mut found = true;
        let mut failure = None;
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(chunk) => Vec::from(chunk.into_bytes()),
                Err(err) if status_of(&err) == Some(404) => {
                    found = false;
                    break;
                }
                // A logging driver that cannot be read back (e.g. `none`): say so in the
                // file, and let the deletion go on rather than keep the container forever.
                Err(err) if unreadable_logs(&err) => {
                    let note = format!("(skiff: the engine cannot give the logs: {err})\n");
                    let _ = chunks.send(note.into()).await;
                    break;
                }
                Err(err) => {
                    failure = Some(transient(&format!("read the logs of {name}"), err));
                    break;
                }
            };
            if chunks.send(chunk).await.is_err() {
                // The writer stopped: its error is reported below.
                break;
            }
        }
        drop(chunks);
        let written = writer.await.map_err(|err| io_error(std::io::Error::other(err)))?;
        if let Some(failure) = failure {
            return Err(failure);
        }
        written.map_err(io_error)?;
        Ok(found)
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

    /// Follows the engine's event stream for as long as `tx` has a receiver, sending the
    /// names of containers that started, died, ran out of memory or were removed. The
    /// stream is reopened whenever it ends (the engine restarted, the socket broke).
    async fn watch_events(self: Arc<Self>, tx: mpsc::UnboundedSender<String>) {
        let mut backoff = EVENTS_BACKOFF_MIN;
        // Whether the current outage was reported: one warning per outage, not per try.
        let mut reported = false;
        // Until the engine was reached once, its absence is no news: a controller that
        // runs only process tasks need not have one, and one that runs docker tasks hears
        // of it loudly from their creates.
        let mut connected = false;
        loop {
            match self.follow_events(&tx, reported).await {
                Followed::ReceiverGone => return,
                Followed::Failed(err) => {
                    if !reported {
                        if connected {
                            tracing::warn!("docker events: {err}; retrying");
                        } else {
                            tracing::debug!("docker events: {err}; retrying");
                        }
                        reported = true;
                    }
                }
                Followed::Ended { reason, healthy } => {
                    connected = true;
                    tracing::warn!("docker events: {reason}; reconnecting");
                    reported = true;
                    if healthy {
                        backoff = EVENTS_BACKOFF_MIN;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(EVENTS_BACKOFF_MAX);
        }
    }

    /// One connection to the event stream, from the listing that opens it to its end.
    async fn follow_events(&self, tx: &mpsc::UnboundedSender<String>, reconnecting: bool) -> Followed {
        let docker = match self.client().await {
            Ok(docker) => docker,
            Err(err) => return Followed::Failed(err.to_string()),
        };
        // Ask for events from a little before the listing below, so that nothing that
        // happens between the listing and the stream's start is missed (the engine replays
        // its recent events; the margin covers the rounding to seconds).
        let since = chrono::Utc::now().timestamp() - 2;
        // Everything that may have changed while no stream was open (before the start, or
        // while the engine restarted) is looked at again.
        match self.list(docker).await {
            Ok(containers) => {
                for container in containers {
                    if tx.send(container.name).is_err() {
                        return Followed::ReceiverGone;
                    }
                }
            }
            Err(err) => return Followed::Failed(err.to_string()),
        }
        if reconnecting {
            tracing::info!("docker events: following the engine's events");
        }
        let mut filters = self.label_filters();
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert(
            "event".into(),
            ["start", "die", "oom", "destroy"].map(String::from).to_vec(),
        );
        let options = EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        };
        let opened = Instant::now();
        let mut stream = docker.events(Some(options));
        let reason = loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    let name = event.actor.and_then(|actor| actor.attributes?.remove("name"));
                    if let Some(name) = name
                        && tx.send(name).is_err()
                    {
                        return Followed::ReceiverGone;
                    }
                }
                Some(Err(err)) => break err.to_string(),
                None => break "the engine closed the stream".to_string(),
            }
        };
        Followed::Ended {
            reason,
            // A stream that worked for a while was a good connection: the backoff starts
            // again from its minimum, while one that fails at once keeps backing off. (Not
            // "delivered an event": the replay of recent events delivers some at once.)
            healthy: opened.elapsed() >= EVENTS_HEALTHY,
        }
    }
}

/// How one connection to the event stream ended.
enum Followed {
    /// Nobody listens any more: stop for good.
    ReceiverGone,
    /// It could not be opened.
    Failed(String),
    Ended {
        reason: String,
        healthy: bool,
    },
}

/// The HTTP status of an engine's error answer.
fn status_of(err: &EngineError) -> Option<u16> {
    match err {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own words, without bollard's wrapping.
fn engine_message(err: &EngineError) -> String {
    match err {
        EngineError::DockerResponseServerError { message, .. } => message.clone(),
        EngineError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

fn transient(action: &str, err: EngineError) -> RuntimeError {
    RuntimeError::Transient(format!("docker: cannot {action}: {err}"))
}

/// The engine answered that this container's logs cannot be read back: 501, its logging
/// driver keeps none; 409, it is dead or being removed. Retrying will not change that.
fn unreadable_logs(err: &EngineError) -> bool {
    matches!(status_of(err), Some(409 | 501))
}

/// `name` → `name:latest`: a pull of a bare name would fetch every tag of the repository.
fn with_default_tag(image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The engine's RFC 3339 times; it writes the zero time for "never".
fn parse_time(text: Option<&str>) -> Option<Timestamp> {
    let text = text?;
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    (time.timestamp() > 0).then(|| time.with_timezone(&chrono::Utc))
}

fn state_of(found: &ContainerInspectResponse) -> ContainerState {
    let Some(state) = &found.state else {
        // An answer without a state: the container exists but says nothing; look again.
        return ContainerState::Running { started_at: None };
    };
    let started_at = parse_time(state.started_at.as_deref());
    let finished_at = parse_time(state.finished_at.as_deref());
    let exited = || ContainerState::Exited {
        exit_code: state.exit_code.and_then(|code| i32::try_from(code).ok()),
        // The engine stamps the start after the process began, so a process that ends at
        // once can seem to finish before it started; a status must not say so.
        started_at: match (started_at, finished_at) {
            (Some(started), Some(finished)) if started > finished => Some(finished),
            _ => started_at,
        },
        finished_at,
        message: match &state.error {
            Some(error) if !error.is_empty() => Some(error.clone()),
            _ if state.oom_killed == Some(true) => Some("OOMKilled".to_string()),
            _ => None,
        },
    };
    match state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(
            ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING | ContainerStateStatusEnum::PAUSED,
        ) => ContainerState::Running { started_at },
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => exited(),
        // Removing, stopping, or a status this version does not know: go by the flag.
        _ if state.running == Some(true) => ContainerState::Running { started_at },
        _ => exited(),
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
                let label = |key: &str| labels.and_then(|l| l.get(key));
                if label(LABEL_STATE_DIR) != Some(&inner.owner) {
                    // Another controller's (or a person's): never ours to adopt or remove.
                    return Err(RuntimeError::Transient(format!(
                        "docker: the name {name} is taken by a container that {}; waiting for it to go",
                        match label(LABEL_STATE_DIR) {
                            Some(other) => format!("another skiff controller made (state folder {other})"),
                            None => "skiff did not make".to_string(),
                        }
                    )));
                }
                if let Some(wanted) = spec.labels.get(LABEL_ATTEMPT_ID)
                    && label(LABEL_ATTEMPT_ID) != Some(wanted)
                {
                    // Same name, another attempt: one an earlier run kept (`cleanup`), or
                    // one left from before its status file was deleted. Never adopt it.
                    tracing::info!(container = name, "removing a container made for another attempt");
                    inner.remove(docker, name).await?;
                    let _ = tokio::fs::remove_file(inner.log_path(name)).await;
                    continue;
                }
                return match state_of(&found) {
                    ContainerState::Created => inner.start(docker, name).await,
                    _ => Ok(()),
                };
            }
            inner.ensure_image(docker, image).await?;
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
            },
            Some(found) => Inspection {
                state: state_of(&found),
                attempt_id: labels_of(&found).and_then(|l| l.get(LABEL_ATTEMPT_ID)).cloned(),
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

    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let docker = self.inner.client().await?;
        self.inner.list(docker).await
    }

    async fn forget(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        super::forget_logs(&self.inner.logs, container_prefix).await
    }

    async fn forget_earlier_run(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        super::forget_earlier_logs(&self.inner.logs, container_prefix).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_image_names_get_the_latest_tag() {
        assert_eq!(with_default_tag("busybox"), "busybox:latest");
        assert_eq!(with_default_tag("skiff-busybox:test"), "skiff-busybox:test");
        assert_eq!(with_default_tag("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(with_default_tag("localhost:5000/a/b:1"), "localhost:5000/a/b:1");
        assert_eq!(with_default_tag("a/b@sha256:00"), "a/b@sha256:00");
    }

    #[test]
    fn the_zero_time_is_no_time() {
        assert_eq!(parse_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(parse_time(None), None);
        assert_eq!(parse_time(Some("garbage")), None);
        let t = parse_time(Some("2026-11-21T10:00:00.123456789Z")).map(|t| t.timestamp_millis());
        assert_eq!(t, Some(1_795_255_200_123));
    }
}
