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
//!   made for another attempt is deleted first. That GET is the guard: the create is a
//!   plain PUT, without `If-None-Match: *`, which `ContainerGroups_CreateOrUpdate` does
//!   not declare (what ACI does with it is undefined). The 201's `Azure-AsyncOperation` or
//!   `Location` is not followed: the group's own GET tells everything either would.
//! - **Ownership.** Groups are tagged with [`TAG_OWNER`], a random id kept in the state
//!   folder (`<state>/aci-owner`): several controllers may share a resource group, and each
//!   inspects, lists, adopts and deletes only its own. A state-folder *path* would not do:
//!   two machines can have the same path.
//! - **Provisioning.** After the PUT, `ensure` follows the group with GETs (backing off
//!   from [`AciConfig::poll_min`] to [`AciConfig::poll_max`]) until `provisioningState` is
//!   terminal, [`AciConfig::provision_wait`] has passed, or ACI has said something new of
//!   it (an event, e.g. `Pulling`). While it is not terminal,
//!   [`inspect`](Runtime::inspect) answers [`ContainerState::Created`] with ACI's last
//!   events as the inspection's `progress` (for the task's status), so the controller
//!   calls `ensure` again, which goes on following it: the polling cadence stays that of
//!   this module, not the controller's 100 ms first look. `provisioningState` `Failed` (a
//!   failed image pull, a volume that cannot be mounted), `Canceled`, `Unhealthy` or
//!   `NotAccessible` (neither recovers by itself) becomes a
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
//! One file each: [`config`] (its configuration and constants), [`arm`] (the client, its tokens and its 429 gate), [`follow`] (live logs
//! from ARM's overlapping `tail` windows), [`quota`] (the create
//! quota), [`wire`] (ARM's types and their mapping to [`ContainerState`](crate::runtime::ContainerState)), [`body`] (the
//! create body), [`runtime`] (the `Runtime` impl). Azure identity is [`crate::azure`]'s,
//! shared with the blob store; the resource limits validation also checks are
//! [`crate::manifest::limits`]'.

mod arm;
mod body;
mod config;
mod follow;
mod quota;
mod runtime;
mod wire;

pub use arm::token_refresh_margin;
pub(crate) use body::options;
pub use config::{
    API_VERSION, AciConfig, AciCredential, AciError, DEFAULT_ARM_ENDPOINT, DEFAULT_CPU, DEFAULT_CREATE_QUOTA,
    DEFAULT_MEMORY_GB, DEFAULT_TOKEN_SCOPE, TAG_OWNER,
};
pub use follow::{Followed, LogFollower};
pub use quota::{CreateLimiter, CreateQuota, CreateTicket, QuotaExhausted, QuotaWindow};
pub use runtime::AciRuntime;
