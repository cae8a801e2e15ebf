//! The aci runtime: each container is an Azure Container Instances *container group*
//! holding one container of the same name, driven over the Azure Resource Manager REST
//! API (`Microsoft.ContainerInstance/containerGroups`, api-version [`API_VERSION`]) with
//! `reqwest`. There is no usable ACI management crate, so the few calls are made by hand.
//!
//! - **Identity.** ARM tokens come from an `azure_identity` credential chosen by
//!   [`CredentialKind`] (managed identity, workload identity, client secret, Azure CLI),
//!   or from any [`TokenCredential`] ([`AciCredential::Custom`]). The token is cached
//!   and fetched again a little before it expires (see [`token_refresh_margin`]); a
//!   refresh that fails while the old token is still good keeps the old one. The
//!   credentials' own HTTP goes through this module's reqwest client (one reqwest in the
//!   build, rustls), see [`crate::azure::identity`].
//! - **Adopting.** A group's name is the container's deterministic name, so
//!   [`ensure`](Runtime::ensure) first GETs it: a group of this controller made for this
//!   attempt (tag [`LABEL_ATTEMPT_ID`]) is adopted, never created again (invariant 2); one
//!   made for another attempt is deleted first. The create itself is a PUT with
//!   `If-None-Match: *`, so that ARM, where it honours the condition, cannot turn a racing
//!   second create into an update.
//! - **Ownership.** Groups are tagged with [`TAG_OWNER`], a random id kept in the state
//!   folder (`<state>/aci-owner`): several controllers may share a resource group, and each
//!   inspects, lists, adopts and deletes only its own. A state-folder *path* would not do:
//!   two machines can have the same path.
//! - **Provisioning.** After the PUT, `ensure` follows the group with GETs (backing off
//!   from [`AciConfig::poll_min`] to [`AciConfig::poll_max`]) until `provisioningState` is
//!   terminal or [`AciConfig::provision_wait`] has passed. While it is not terminal,
//!   [`inspect`](Runtime::inspect) answers [`ContainerState::Created`], so the controller
//!   calls `ensure` again, which goes on following it: the polling cadence stays that of
//!   this module, not the controller's 100 ms first look. `provisioningState: Failed` (a
//!   failed image pull, a volume that cannot be mounted) becomes a
//!   [`RuntimeError::Permanent`] whose message carries the group's events.
//! - **State.** The container's `instanceView.currentState` gives Running (with its
//!   start) and Terminated (exit code, start, finish, detail).
//! - **Logs.** `delete` copies the container's logs (`containers/{name}/logs`) into
//!   `<state>/logs/<name>.log` before the DELETE (ACI keeps only 16 KB of a stopped
//!   container's output, and nothing once the group is gone), the same file the other
//!   runtimes keep, so `skiff logs` and `logTail` work afterwards.
//! - **Delete.** 200, 202 and 204 are success; `delete` then waits (a little) for the GET
//!   to answer 404, and a group already `Deleting` is only waited for, not deleted again.
//! - **Throttling.** A 429 closes a runtime-wide gate for its `Retry-After`: no request of
//!   this runtime goes out before then (ARM throttles per subscription and principal, not
//!   per resource). A short wait is taken inside the call; a long one is a
//!   [`RuntimeError::Transient`], as are 5xx answers, transport errors and refused tokens:
//!   the controller retries those with backoff and never counts them against `retries`
//!   (invariant 4). The `x-ms-ratelimit-remaining-*` headers of the last answers are kept
//!   for metrics ([`AciRuntime::rate_limit_remaining`]).
//! - **Create quota.** ACI allows a number of creates per window (100 per 5 minutes and
//!   300 per hour by default). [`CreateLimiter`] holds one token per allowed create in
//!   each window; a spent token comes back one window after its PUT was *answered*, so no
//!   window of the server's clock ever sees more creates than the quota, whatever the
//!   latency. A create waits for a token in line (first come, first served) when one comes
//!   back within [`AciConfig::max_wait`], and is otherwise a Transient error saying when
//!   the next one will: waiting briefly keeps creates flowing at the quota's pace without
//!   the controller's growing backoff, while a long wait must not hold a reconcile worker.
//!
//! `ContainerSpec::secret_env` names the variables sent as `secureValue` (which ARM never
//! returns); `SKIFF_CALLBACK_URL`, which carries a token, always is.
//!
//! One file each: [`arm`] (the client, its tokens and its 429 gate), [`quota`] (the create
//! quota), [`wire`] (ARM's types and their mapping to [`ContainerState`](crate::runtime::ContainerState)), [`body`] (the
//! create body), [`runtime`] (the `Runtime` impl). Azure identity is [`crate::azure`]'s,
//! shared with the blob store; the resource limits validation also checks are
//! [`crate::manifest::limits`]'.

mod arm;
mod body;
mod quota;
mod runtime;
mod wire;

pub use arm::token_refresh_margin;
pub use quota::{CreateLimiter, CreateQuota, CreateTicket, QuotaExhausted, QuotaWindow};
pub use runtime::AciRuntime;

use crate::azure::CredentialKind;
use azure_core::credentials::TokenCredential;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The ARM api-version of every call.
pub const API_VERSION: &str = "2026-05-01";
/// Public Azure's Resource Manager.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// The token scope for Resource Manager in public Azure. Sovereign clouds have their own
/// ([`AciConfig::token_scope`]).
pub const DEFAULT_TOKEN_SCOPE: &str = "https://management.azure.com/.default";
/// ACI's default create quota: `100/5m,300/1h`.
pub const DEFAULT_CREATE_QUOTA: &str = "100/5m,300/1h";
/// Resources of a container whose spec names none.
pub const DEFAULT_CPU: f64 = 1.0;
pub const DEFAULT_MEMORY_GB: f64 = 1.5;
/// The tag naming the controller that made a group (the id in `<state>/aci-owner`).
pub const TAG_OWNER: &str = "skiff.owner";
/// Where ARM tokens come from.
#[derive(Debug, Clone)]
pub enum AciCredential {
    /// One of `azure_identity`'s credentials, configured from the environment.
    Azure(CredentialKind),
    /// Any credential, e.g. one an embedding program already has, or a test's.
    Custom(Arc<dyn TokenCredential>),
}

impl AciCredential {
    fn describe(&self) -> String {
        match self {
            AciCredential::Azure(kind) => format!("the {kind} credential"),
            AciCredential::Custom(_) => "the given credential".to_string(),
        }
    }
}

/// How the runtime reaches ARM and where it makes groups. Build it with
/// [`AciConfig::new`] and change the fields that need changing.
#[derive(Debug, Clone)]
pub struct AciConfig {
    pub subscription_id: String,
    pub resource_group: String,
    /// Where groups are made, unless a task names its own (`ContainerSpec::location`).
    pub location: String,
    /// Resource Manager's base URL (`--arm-endpoint`): public Azure by default; a
    /// sovereign cloud's, or a simulator's (plain `http://` is accepted for loopback only).
    pub arm_endpoint: String,
    pub credential: AciCredential,
    /// The scope tokens are asked for: Resource Manager's audience plus `/.default`.
    pub token_scope: String,
    pub create_quota: CreateQuota,
    /// The longest a call waits, inside the runtime, for a create token or for a
    /// `Retry-After` to pass; beyond, it is a Transient error and the controller retries.
    pub max_wait: Duration,
    /// How long one `ensure` follows a group's provisioning before handing back to the
    /// controller (which calls it again while the group is still provisioning). It holds
    /// one of the controller's reconcile workers meanwhile, so it stays well below the
    /// reconcile timeout.
    pub provision_wait: Duration,
    /// How long `delete` waits for a deleted group to be gone.
    pub delete_wait: Duration,
    /// The pause between two GETs of a group being provisioned or deleted: from `poll_min`,
    /// doubling up to `poll_max`. Gentle on the subscription's read quota.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// One HTTP exchange with ARM.
    pub request_timeout: Duration,
    /// Send creates with `If-None-Match: *`, so that a racing second create cannot become
    /// an update where ARM honours the condition (ACI's support for it is not documented;
    /// where it is ignored, the GET before every create is the guard).
    pub create_if_none_match: bool,
}

impl AciConfig {
    /// Public Azure, the default quota and waits.
    pub fn new(
        subscription_id: impl Into<String>,
        resource_group: impl Into<String>,
        location: impl Into<String>,
        credential: AciCredential,
    ) -> Self {
        AciConfig {
            subscription_id: subscription_id.into(),
            resource_group: resource_group.into(),
            location: location.into(),
            arm_endpoint: DEFAULT_ARM_ENDPOINT.to_string(),
            credential,
            token_scope: DEFAULT_TOKEN_SCOPE.to_string(),
            create_quota: CreateQuota::default(),
            max_wait: Duration::from_secs(30),
            provision_wait: Duration::from_secs(30),
            delete_wait: Duration::from_secs(30),
            poll_min: Duration::from_millis(500),
            poll_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            create_if_none_match: true,
        }
    }
}

/// Why the runtime could not be set up: a configuration mistake, to report as such.
#[derive(Debug, thiserror::Error)]
pub enum AciError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Credential(String),
    #[error("the state folder {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
