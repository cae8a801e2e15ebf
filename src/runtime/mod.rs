//! Runtimes: where containers run. The controller sees only the [`Runtime`] trait; each
//! implementation lives in its own file and knows nothing of tasks or statuses.

pub mod aci;
pub mod adopt;
pub mod cgroup;
pub mod clone_into_cgroup;
pub mod docker;
pub mod kept_logs;
pub mod log_cap;
pub mod options;
pub mod placement;
pub mod process;
pub mod spare_states;
pub mod supervisor;
pub mod supervisor_server;

use crate::manifest::RuntimeKind;
pub use crate::status::Placement;
use crate::status::Timestamp;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio::sync::mpsc;

pub use options::RuntimeOptions;

/// Labels every container carries, so that its task can be found from the container.
pub const LABEL_TASK: &str = "skiff.task";
pub const LABEL_ATTEMPT: &str = "skiff.attempt";
pub const LABEL_INDEX: &str = "skiff.index";
pub const LABEL_SPEC_HASH: &str = "skiff.spec-hash";
/// When the attempt was recorded (its `createdAt`): a container of the right name but
/// another attempt id is a stale one, never to be adopted.
pub const LABEL_ATTEMPT_ID: &str = "skiff.attempt-id";

/// Everything a runtime needs to run one attempt: what every runtime reads, and the
/// [`RuntimeOptions`] only the task's own runtime reads. Secret values are resolved here,
/// in memory, and never written anywhere the user can read.
#[derive(Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub image: Option<String>,
    /// The program (docker: entrypoint); empty means the image's own.
    pub command: Vec<String>,
    /// Its arguments (docker: cmd); with an empty `command`, the image's cmd is replaced.
    pub args: Vec<String>,
    /// Names of `env` entries whose values are secrets (from `valueFrom`, or the callback
    /// URL's token): a runtime that can hide values (ACI's `secureValue`) hides these.
    pub secret_env: std::collections::BTreeSet<String>,
    pub env: Vec<(String, String)>,
    pub cpu: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// What only the task's runtime understands (working directory, network, mounts,
    /// location).
    pub options: RuntimeOptions,
    /// Credentials for pulling the image (`spec.imagePullSecrets`), passwords resolved.
    pub registry_credentials: Vec<RegistryCredential>,
}

/// Credentials for one registry, resolved for one create. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// The registry's host, e.g. `myacr.azurecr.io`.
    pub server: String,
    pub auth: RegistryAuth,
}

#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    Password {
        username: String,
        password: String,
    },
    /// aci: a managed identity's ARM id.
    Identity(String),
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("RegistryCredential");
        out.field("server", &self.server);
        match &self.auth {
            RegistryAuth::Password { username, .. } => out.field("username", username).field("password", &"<hidden>"),
            RegistryAuth::Identity(id) => out.field("identity", id),
        };
        out.finish()
    }
}

impl std::fmt::Debug for ContainerSpec {
    // Env values may be secrets: show names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("options", &self.options)
            .field("registry_credentials", &self.registry_credentials)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub mount_path: String,
    pub read_only: bool,
}

/// One azureFile volume. The storage key is named, not given: the runtime reads it from
/// the controller's environment when it creates the container, so that it is never
/// written into a label, a tag or a status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AzureFileMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
    pub share_name: String,
    pub storage_account_name: String,
    /// The variable of the controller's environment that holds the storage account key.
    pub storage_account_key_env: String,
}

/// What the runtime says about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// No such container (never created, or deleted).
    Absent,
    /// Created but not started; `ensure` starts it.
    Created,
    Running {
        started_at: Option<Timestamp>,
    },
    /// Finished. `exit_code` is `None` when the runtime lost track of the process.
    Exited {
        exit_code: Option<i32>,
        started_at: Option<Timestamp>,
        finished_at: Option<Timestamp>,
        message: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub state: ContainerState,
    pub attempt_id: Option<String>,
    /// What the runtime says of a container still being made ([`ContainerState::Created`]),
    /// e.g. ACI's `Pulling: pulling image "..."`: shown in the task's status message, so a
    /// start that takes minutes says why. `None` when there is nothing to tell.
    pub progress: Option<String>,
}

/// A container that carries skiff's labels, found by listing the runtime.
#[derive(Debug, Clone)]
pub struct ContainerSummary {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Worth retrying with backoff; never counts against `retries` (invariant 4).
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (e.g. an image that cannot be had); fails the attempt.
    #[error("{message}")]
    Permanent {
        reason: crate::status::Reason,
        message: String,
    },
}

impl From<std::io::Error> for RuntimeError {
    fn from(err: std::io::Error) -> Self {
        RuntimeError::Transient(err.to_string())
    }
}

#[async_trait]
pub trait Runtime: Send + Sync {
    fn kind(&self) -> RuntimeKind;

    /// Where this runtime's containers live (see [`Placement`]): learnt once and kept. An
    /// attempt recorded on another placement is out of this runtime's sight, so it must
    /// never be created here (it may be running there). Transient while the runtime
    /// cannot be asked (an engine that is not up yet).
    async fn placement(&self) -> Result<Placement, RuntimeError>;

    /// Creates and starts the container, or adopts it if one already exists under that
    /// name. Idempotent: calling it again never makes a second container (invariant 2).
    async fn ensure(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;

    /// The container's state, and the attempt id it was made for (label
    /// [`LABEL_ATTEMPT_ID`]), so that a stale container of the same name is not taken
    /// for the current attempt's.
    async fn inspect(&self, name: &str) -> Result<Inspection, RuntimeError>;

    /// Stops (killing everything it started) and removes the container, keeping its
    /// logs readable. Idempotent: deleting an absent container succeeds. `Ok` means
    /// gone: nothing of the container runs any more (the controller frees its slot on
    /// it), so a runtime that removes in its own time waits for it or answers `Err`.
    async fn delete(&self, name: &str) -> Result<(), RuntimeError>;

    /// The last bytes of the container's output, also after it was deleted.
    async fn log_tail(&self, name: &str) -> Result<Option<String>, RuntimeError>;

    /// All of the container's output: live while it runs, the kept copy once it is
    /// deleted. `None` when there is neither. For `skiff logs`.
    async fn output(&self, name: &str) -> Result<Option<Vec<u8>>, RuntimeError>;

    /// Containers carrying skiff's labels, for adopting and for removing orphans.
    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError>;

    /// Forgets what is kept of the named containers after deletion (logs).
    async fn forget(&self, container_prefix: &str) -> Result<(), RuntimeError>;

    /// Forgets what an earlier run of the task left behind, when a task starts with no
    /// status (its status was deleted to run it again). Called for every new task, so
    /// it must be cheap when there was no earlier run.
    async fn forget_earlier_run(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        self.forget(container_prefix).await
    }

    /// A stream of container names whose state changed, when the runtime can tell
    /// (`completedBy: engine`). Polling remains the safety net.
    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<String>>;

    /// Whether a container that has exited holds nothing the limits count, so that its
    /// slot may go to the next container before it is deleted: true of a process (its
    /// record is a file) and of a Docker container (stopped, it holds no CPU or memory).
    fn exited_frees_its_slot(&self) -> bool {
        true
    }
}

/// An engine's RFC 3339 time (Docker's, ARM's); the zero time, which engines write for
/// "never", and anything before 1970 are no time.
pub(crate) fn parse_time(text: Option<&str>) -> Option<Timestamp> {
    let time = chrono::DateTime::parse_from_rfc3339(text?).ok()?;
    (time.timestamp() > 0).then(|| time.with_timezone(&chrono::Utc))
}

/// A std mutex's guard, also after a panic elsewhere poisoned it: the guarded maps and
/// gates stay consistent between statements, so the runtime carries on rather than
/// panicking in turn.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs file-system work of a runtime on the blocking pool, in one trip: a slow disk must
/// not stall the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| RuntimeError::Transient(err.to_string()))?
        .map_err(RuntimeError::from)
}
