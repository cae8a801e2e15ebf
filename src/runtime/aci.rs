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

use super::{
    ContainerSpec, ContainerState, ContainerSummary, Inspection, LABEL_ATTEMPT_ID, LABEL_TASK, Runtime, RuntimeError,
};
use crate::azure::CredentialKind;
use crate::fsutil;
use crate::manifest::RuntimeKind;
use crate::manifest::limits::{aci_memory_gb, aci_resource_problems};
use crate::status::{Reason, Timestamp};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant as TokioInstant;

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
/// Always a secret: the callback URL carries the task's token.
const CALLBACK_ENV: &str = "SKIFF_CALLBACK_URL";
/// ARM's limits on tags.
const MAX_TAG_KEY: usize = 512;
const MAX_TAG_VALUE: usize = 256;
const MAX_TAGS: usize = 50;
/// How many lines `log_tail` asks for (ARM counts lines, not bytes).
const TAIL_LINES: u32 = 256;
/// A 429 without `Retry-After` (ARM always sends one; be safe).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);
/// 429s answered to one call before it gives up and lets the controller back off.
const MAX_THROTTLED_TRIES: u32 = 3;
/// An old token is still used when a refresh fails, if it has at least this long left.
const TOKEN_GRACE: Duration = Duration::from_secs(30);
/// How often `ensure` looks again when the name changes under it (a racing create, a
/// stale group going away) before calling it a transient failure.
const ENSURE_ROUNDS: usize = 4;

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

/// The create quota: at most `limit` creates in any `period`, for each window
/// (`--aci-create-quota 100/5m,300/1h`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateQuota {
    pub windows: Vec<QuotaWindow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaWindow {
    pub limit: u32,
    pub period: Duration,
}

impl std::fmt::Display for QuotaWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.limit, humantime::format_duration(self.period))
    }
}

impl std::fmt::Display for CreateQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let windows: Vec<String> = self.windows.iter().map(ToString::to_string).collect();
        f.write_str(&windows.join(","))
    }
}

impl Default for CreateQuota {
    fn default() -> Self {
        CreateQuota {
            windows: vec![
                QuotaWindow {
                    limit: 100,
                    period: Duration::from_secs(300),
                },
                QuotaWindow {
                    limit: 300,
                    period: Duration::from_secs(3600),
                },
            ],
        }
    }
}

impl std::str::FromStr for CreateQuota {
    type Err = String;

    /// `N/DURATION[,N/DURATION...]`, e.g. `100/5m,300/1h` or `10/2s`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut windows = Vec::new();
        for part in text.split(',').map(str::trim) {
            let Some((limit, period)) = part.split_once('/') else {
                return Err(format!("{part:?} is not a quota; write COUNT/DURATION, e.g. 100/5m"));
            };
            let limit: u32 = limit
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: {limit:?} is not a whole number of creates"))?;
            let period = humantime::parse_duration(period.trim())
                .map_err(|_| format!("{part:?}: {period:?} is not a duration; write e.g. 5m or 1h"))?;
            if limit == 0 || period.is_zero() {
                return Err(format!(
                    "{part:?}: a quota must allow at least one create in a window longer than zero"
                ));
            }
            windows.push(QuotaWindow { limit, period });
        }
        Ok(CreateQuota { windows })
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

/// How long before a token's expiry it is fetched again: five minutes, or half of its
/// lifetime for a short-lived one.
pub fn token_refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 2).min(Duration::from_secs(300))
}

pub struct AciRuntime {
    inner: Arc<Inner>,
    /// The subscription and resource group: replicas see each other's groups exactly
    /// when they share both.
    placement: super::Placement,
}

struct Inner {
    http: reqwest::Client,
    /// `{arm}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups`
    groups_url: String,
    /// Only pages of a listing on this origin are followed (the token goes with them).
    endpoint: String,
    resource_group: String,
    location: String,
    scope: String,
    credential: Arc<dyn TokenCredential>,
    credential_name: String,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    limiter: Arc<CreateLimiter>,
    /// No request goes out before this instant: the last `Retry-After`.
    gate: std::sync::Mutex<Option<Instant>>,
    rate_limits: std::sync::Mutex<BTreeMap<String, u64>>,
    /// `<state>/logs`, shared with the other runtimes.
    logs: PathBuf,
    owner: String,
    max_wait: Duration,
    provision_wait: Duration,
    delete_wait: Duration,
    poll_min: Duration,
    poll_max: Duration,
    create_if_none_match: bool,
    /// The current pause of each group being provisioned, so that the backoff goes on
    /// across `ensure` calls instead of starting again from `poll_min`.
    pauses: std::sync::Mutex<HashMap<String, Duration>>,
}

struct CachedToken {
    secret: String,
    refresh_at: Instant,
    expires_at: Instant,
}

impl AciRuntime {
    /// A runtime making groups as `config` says, keeping logs and its owner id in
    /// `state_dir`. Builds the credential (reading its environment variables) but makes no
    /// call yet: the first token is fetched by the first call, so that a controller starts
    /// while Azure is out of reach.
    pub fn new(state_dir: &Path, config: AciConfig) -> Result<Self, AciError> {
        let state_error = |source: std::io::Error| AciError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        };
        for (flag, value) in [
            ("--aci-subscription-id", &config.subscription_id),
            ("--aci-resource-group", &config.resource_group),
            ("--aci-location", &config.location),
        ] {
            if value.trim().is_empty() {
                return Err(AciError::Config(format!("{flag} is empty; the aci runtime needs it")));
            }
        }
        let endpoint = config.arm_endpoint.trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&endpoint)
            .map_err(|err| AciError::Config(format!("--arm-endpoint {endpoint}: {err}")))?;
        let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(AciError::Config(format!(
                "--arm-endpoint {endpoint}: tokens go only over https (plain http only to a local simulator)"
            )));
        }
        if config.create_quota.windows.is_empty() {
            return Err(AciError::Config(
                "--aci-create-quota: give at least one window, e.g. 100/5m".into(),
            ));
        }
        std::fs::create_dir_all(state_dir).map_err(state_error)?;
        let logs = state_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(state_error)?;
        let owner = load_or_create_owner(state_dir).map_err(state_error)?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            // ARM does not redirect; a redirect must not carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| AciError::Config(format!("cannot make an HTTP client: {err}")))?;
        let credential_name = config.credential.describe();
        let credential = match &config.credential {
            AciCredential::Custom(credential) => credential.clone(),
            AciCredential::Azure(kind) => {
                crate::azure::credential(*kind, &http).map_err(|err| AciError::Credential(err.to_string()))?
            }
        };
        let groups_url = format!(
            "{endpoint}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerInstance/containerGroups",
            urlencoding::encode(config.subscription_id.trim()),
            urlencoding::encode(config.resource_group.trim()),
        );
        Ok(AciRuntime {
            placement: super::Placement::aci(&config.subscription_id, &config.resource_group, owner.clone()),
            inner: Arc::new(Inner {
                http,
                groups_url,
                endpoint,
                resource_group: config.resource_group.trim().to_string(),
                location: config.location.trim().to_string(),
                scope: config.token_scope.clone(),
                credential,
                credential_name,
                token: tokio::sync::Mutex::new(None),
                limiter: Arc::new(CreateLimiter::new(&config.create_quota)),
                gate: std::sync::Mutex::new(None),
                rate_limits: std::sync::Mutex::new(BTreeMap::new()),
                logs,
                owner,
                max_wait: config.max_wait,
                provision_wait: config.provision_wait,
                delete_wait: config.delete_wait,
                poll_min: config.poll_min,
                poll_max: config.poll_max.max(config.poll_min),
                create_if_none_match: config.create_if_none_match,
                pauses: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The last value of each `x-ms-ratelimit-remaining-*` header ARM sent, by header
    /// name (e.g. `x-ms-ratelimit-remaining-subscription-writes`), for metrics.
    pub fn rate_limit_remaining(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.rate_limits).clone()
    }

    /// For each window of the create quota (as written, e.g. `100/5m`), how many creates
    /// it allows right now, for metrics.
    pub fn create_tokens_available(&self) -> Vec<(String, u32)> {
        self.inner.limiter.available()
    }

    /// The id this controller's groups are tagged with ([`TAG_OWNER`]).
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Fetches a token now: a start-up check of the credential.
    pub async fn check_credential(&self) -> Result<(), RuntimeError> {
        self.inner.token().await.map(|_| ())
    }

    /// The container's output, kept after the group was deleted.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.inner.log_path(name)
    }

    /// All of a container's output: the copy `delete` kept, else ARM's while the group
    /// exists. `None` when there is neither. For `skiff logs`.
    pub async fn output(&self, name: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        match tokio::fs::read(self.inner.log_path(name)).await {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
        Ok(self.inner.arm_logs(name, None).await?.map(String::into_bytes))
    }
}

/// The owner id, made once per state folder.
fn load_or_create_owner(state_dir: &Path) -> std::io::Result<String> {
    let path = state_dir.join("aci-owner");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let owner = format!("{:032x}", rand::random::<u128>());
    fsutil::write_atomic(&path, format!("{owner}\n").as_bytes())?;
    Ok(owner)
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The create token bucket: for each window one token per allowed create. A token is
/// taken before a PUT and comes back one period after the PUT was answered (or abandoned),
/// so that at most `limit` creates reach ARM in any period of its clock: the next create
/// leaves after the previous answer came back, hence after ARM counted it.
pub struct CreateLimiter {
    state: std::sync::Mutex<LimiterState>,
    /// Woken when a create in flight ends, which may make a token's return time known.
    changed: Notify,
    /// Waiting creates take their turn in order (tokio's mutex is fair).
    line: tokio::sync::Mutex<()>,
}

struct LimiterState {
    windows: Vec<WindowState>,
    next_ticket: u64,
}

struct WindowState {
    quota: QuotaWindow,
    /// Spent tokens: the ticket that spent it, and when it comes back (`None` while its
    /// create is in flight).
    spent: VecDeque<(u64, Option<TokioInstant>)>,
}

/// What stands between a create and its token.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    Now,
    Until(TokioInstant),
    /// Every token of some window is held by a create in flight.
    InFlight,
}

impl LimiterState {
    fn purge(&mut self, now: TokioInstant) {
        for window in &mut self.windows {
            window.spent.retain(|(_, back)| back.is_none_or(|back| back > now));
        }
    }

    fn wait(&self) -> Wait {
        let mut until: Option<TokioInstant> = None;
        for window in &self.windows {
            let held = window.spent.len();
            let limit = window.quota.limit as usize;
            if held < limit {
                continue;
            }
            // This many must come back before one is free.
            let needed = held - limit + 1;
            let mut known: Vec<TokioInstant> = window.spent.iter().filter_map(|(_, back)| *back).collect();
            if known.len() < needed {
                return Wait::InFlight;
            }
            known.sort();
            let at = known[needed - 1];
            until = Some(until.map_or(at, |u| u.max(at)));
        }
        until.map_or(Wait::Now, Wait::Until)
    }
}

impl CreateLimiter {
    pub fn new(quota: &CreateQuota) -> Self {
        CreateLimiter {
            state: std::sync::Mutex::new(LimiterState {
                windows: quota
                    .windows
                    .iter()
                    .map(|quota| WindowState {
                        quota: *quota,
                        spent: VecDeque::new(),
                    })
                    .collect(),
                next_ticket: 0,
            }),
            changed: Notify::new(),
            line: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes a token, waiting in line for at most `max_wait`. `Err` says how long the
    /// wait would have been, when known.
    pub async fn acquire(self: &Arc<Self>, max_wait: Duration) -> Result<CreateTicket, QuotaExhausted> {
        let deadline = TokioInstant::now() + max_wait;
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.line.lock()).await else {
            return Err(QuotaExhausted {
                next_in: None,
                quota: self.describe(),
            });
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut state = lock(&self.state);
                state.purge(TokioInstant::now());
                let wait = state.wait();
                if wait == Wait::Now {
                    let ticket = state.next_ticket;
                    state.next_ticket += 1;
                    for window in &mut state.windows {
                        window.spent.push_back((ticket, None));
                    }
                    return Ok(CreateTicket {
                        limiter: self.clone(),
                        ticket,
                    });
                }
                wait
            };
            match wait {
                // (Taken above.)
                Wait::Now => continue,
                Wait::Until(at) => {
                    if at > deadline {
                        return Err(QuotaExhausted {
                            next_in: Some(at.saturating_duration_since(TokioInstant::now())),
                            quota: self.describe(),
                        });
                    }
                    tokio::time::sleep_until(at).await;
                }
                Wait::InFlight => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(QuotaExhausted { next_in: None, quota: self.describe() });
                        }
                    }
                }
            }
        }
    }

    /// Tokens free now, per window.
    pub fn available(&self) -> Vec<(String, u32)> {
        let mut state = lock(&self.state);
        state.purge(TokioInstant::now());
        state
            .windows
            .iter()
            .map(|w| {
                let held = u32::try_from(w.spent.len()).unwrap_or(u32::MAX);
                (w.quota.to_string(), w.quota.limit.saturating_sub(held))
            })
            .collect()
    }

    fn describe(&self) -> String {
        let state = lock(&self.state);
        let windows: Vec<String> = state.windows.iter().map(|w| w.quota.to_string()).collect();
        windows.join(",")
    }

    fn finish(&self, ticket: u64) {
        let now = TokioInstant::now();
        {
            let mut state = lock(&self.state);
            for window in &mut state.windows {
                let back = now + window.quota.period;
                for spent in window.spent.iter_mut().filter(|(t, _)| *t == ticket) {
                    spent.1 = Some(back);
                }
            }
        }
        self.changed.notify_waiters();
    }
}

/// A create token, held while the create is in flight. Dropping it starts the token's
/// way back (one period from now), also when the create failed or was abandoned: ARM may
/// have counted it all the same.
pub struct CreateTicket {
    limiter: Arc<CreateLimiter>,
    ticket: u64,
}

impl Drop for CreateTicket {
    fn drop(&mut self) {
        self.limiter.finish(self.ticket);
    }
}

#[derive(Debug)]
pub struct QuotaExhausted {
    pub next_in: Option<Duration>,
    pub quota: String,
}

impl std::fmt::Display for QuotaExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.next_in {
            Some(next) => write!(
                f,
                "aci: the create quota ({}) allows the next create in {}; waiting for it",
                self.quota,
                humantime::format_duration(Duration::from_secs(next.as_secs() + 1))
            ),
            None => write!(
                f,
                "aci: the create quota ({}) is spent by creates in flight; waiting for a token",
                self.quota
            ),
        }
    }
}

/// ARM's answer to one call that was not a throttle, an auth failure or a 5xx.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    /// ARM's `{"error":{"code","message"}}`, as `code: message`.
    fn error(&self) -> String {
        arm_error(&self.body)
    }

    fn code(&self) -> Option<String> {
        let value: Value = serde_json::from_slice(&self.body).ok()?;
        value["error"]["code"].as_str().map(str::to_string)
    }
}

fn arm_error(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Wrapper {
        error: Option<Detail>,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_slice::<Wrapper>(body) {
        Ok(Wrapper {
            error: Some(Detail { code, message }),
        }) => match (code, message) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(text), None) | (None, Some(text)) => text,
            (None, None) => "(no detail)".to_string(),
        },
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(no detail)".to_string()
            } else {
                text.chars().take(300).collect()
            }
        }
    }
}

/// `Retry-After` in seconds (ARM's form) or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let left = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(left.to_std().unwrap_or(Duration::ZERO))
}

// The group as ARM describes it: only the fields read here, every one optional (ARM
// leaves out what it has not yet, e.g. `instanceView` in listings).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Group {
    name: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    properties: Option<GroupProperties>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupProperties {
    provisioning_state: Option<String>,
    containers: Option<Vec<GroupContainer>>,
    instance_view: Option<InstanceView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupContainer {
    name: Option<String>,
    properties: Option<ContainerProperties>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerProperties {
    instance_view: Option<InstanceView>,
}

/// Both the group's and the container's `instanceView` (each has only some fields).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstanceView {
    current_state: Option<CurrentState>,
    events: Option<Vec<Event>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CurrentState {
    state: Option<String>,
    exit_code: Option<i64>,
    start_time: Option<String>,
    finish_time: Option<String>,
    detail_status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    name: Option<String>,
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupList {
    value: Option<Vec<Group>>,
    next_link: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Logs {
    content: Option<String>,
}

/// Where a group's provisioning stands.
#[derive(Debug, PartialEq, Eq)]
enum Provisioning {
    /// Succeeded (or the container already ended): nothing left for `ensure` to follow.
    Done,
    InProgress,
    Deleting,
    Failed {
        reason: Reason,
        message: String,
    },
}

impl Group {
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags.as_ref()?.get(key).map(String::as_str)
    }

    fn provisioning_state(&self) -> &str {
        self.properties
            .as_ref()
            .and_then(|p| p.provisioning_state.as_deref())
            .unwrap_or("")
    }

    /// The group's one container (by name; the first one if none has it).
    fn container(&self, name: &str) -> Option<&GroupContainer> {
        let containers = self.properties.as_ref()?.containers.as_ref()?;
        containers
            .iter()
            .find(|c| c.name.as_deref() == Some(name))
            .or_else(|| containers.first())
    }

    fn current_state(&self, name: &str) -> Option<&CurrentState> {
        self.container(name)?
            .properties
            .as_ref()?
            .instance_view
            .as_ref()?
            .current_state
            .as_ref()
    }

    /// The events of the container, then of the group.
    fn events(&self, name: &str) -> impl Iterator<Item = &Event> {
        let container = self
            .container(name)
            .and_then(|c| c.properties.as_ref()?.instance_view.as_ref()?.events.as_ref());
        let group = self
            .properties
            .as_ref()
            .and_then(|p| p.instance_view.as_ref()?.events.as_ref());
        container.into_iter().flatten().chain(group.into_iter().flatten())
    }

    fn provisioning(&self, name: &str) -> Provisioning {
        let terminated = self.current_state(name).and_then(|s| s.state.as_deref()) == Some("Terminated");
        match self.provisioning_state() {
            _ if terminated => Provisioning::Done,
            "Succeeded" => Provisioning::Done,
            "Deleting" => Provisioning::Deleting,
            state @ ("Failed" | "Canceled") => {
                let (reason, detail) = self.failure(name);
                Provisioning::Failed {
                    reason,
                    message: format!(
                        "aci: provisioning the container group {name} {}: {detail}",
                        state.to_lowercase()
                    ),
                }
            }
            // Pending, Creating, Accepted, Updating, Repairing, or not said yet.
            _ => Provisioning::InProgress,
        }
    }

    /// Why provisioning failed, from the events worth a person's eyes.
    fn failure(&self, name: &str) -> (Reason, String) {
        let mut details = Vec::new();
        let mut pull_failed = false;
        for event in self.events(name) {
            let event_name = event.name.as_deref().unwrap_or("");
            let message = event.message.as_deref().unwrap_or("");
            let bad = event.kind.as_deref() == Some("Warning")
                || ["Fail", "Error", "BackOff"].iter().any(|w| event_name.contains(w));
            if !bad {
                continue;
            }
            let lower = message.to_lowercase();
            if lower.contains("pull") || lower.contains("image") {
                pull_failed = true;
            }
            details.push(format!("{event_name}: {message}"));
        }
        if let Some(detail) = self.current_state(name).and_then(|s| s.detail_status.as_deref())
            && !detail.is_empty()
        {
            if detail.contains("ImagePull") {
                pull_failed = true;
            }
            details.push(detail.to_string());
        }
        let reason = if pull_failed {
            Reason::ImagePullFailed
        } else {
            Reason::CreateFailed
        };
        let detail = if details.is_empty() {
            "ARM gave no reason".to_string()
        } else {
            details.join("; ")
        };
        (reason, detail)
    }

    /// What the controller sees.
    fn state(&self, name: &str) -> ContainerState {
        let current = self.current_state(name);
        let time = |t: Option<&String>| parse_time(t.map(String::as_str));
        if let Some(current) = current
            && current.state.as_deref() == Some("Terminated")
        {
            let started_at = time(current.start_time.as_ref());
            let finished_at = time(current.finish_time.as_ref());
            return ContainerState::Exited {
                exit_code: current.exit_code.and_then(|c| i32::try_from(c).ok()),
                started_at: match (started_at, finished_at) {
                    (Some(started), Some(finished)) if started > finished => Some(finished),
                    _ => started_at,
                },
                finished_at,
                message: current
                    .detail_status
                    .clone()
                    .filter(|d| !d.is_empty() && d != "Completed"),
            };
        }
        match self.provisioning(name) {
            Provisioning::Done => ContainerState::Running {
                started_at: current
                    .filter(|c| c.state.as_deref() == Some("Running"))
                    .and_then(|c| time(c.start_time.as_ref())),
            },
            Provisioning::Deleting => ContainerState::Exited {
                exit_code: None,
                started_at: None,
                finished_at: None,
                message: Some("the container group is being deleted".to_string()),
            },
            // Not running yet, or failed to: `ensure` follows it, and reports a failure.
            Provisioning::InProgress | Provisioning::Failed { .. } => ContainerState::Created,
        }
    }
}

/// ARM's RFC 3339 times.
fn parse_time(text: Option<&str>) -> Option<Timestamp> {
    let time = chrono::DateTime::parse_from_rfc3339(text?).ok()?;
    (time.timestamp() > 0).then(|| time.with_timezone(&chrono::Utc))
}

/// ACI names groups and containers with lowercase letters, digits and single dashes, at
/// most 63 characters, starting and ending with a letter or digit. skiff's names always
/// are; anything else is refused before it reaches a URL.
fn check_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Permanent {
            reason: Reason::CreateFailed,
            message: format!(
                "aci: {name:?} cannot name a container group (lowercase letters, digits and single dashes, at most 63)"
            ),
        })
    }
}

/// A label key as a tag key: ARM refuses `<>%&\?/` in tag names.
fn tag_key(key: &str) -> String {
    key.chars()
        .map(|c| if "<>%&\\?/".contains(c) { '_' } else { c })
        .take(MAX_TAG_KEY)
        .collect()
}

fn permanent(name: &str, message: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Permanent {
        reason: Reason::CreateFailed,
        message: format!("aci: {name}: {message}"),
    }
}

impl Inner {
    fn group_url(&self, name: &str) -> String {
        format!("{}/{name}?api-version={API_VERSION}", self.groups_url)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    fn owns(&self, group: &Group) -> bool {
        group.tag(TAG_OWNER) == Some(self.owner.as_str())
    }

    /// A token for ARM: the cached one, else a new one (one fetch at a time).
    async fn token(&self) -> Result<String, RuntimeError> {
        let mut cached = self.token.lock().await;
        let now = Instant::now();
        if let Some(token) = cached.as_ref()
            && now < token.refresh_at
        {
            return Ok(token.secret.clone());
        }
        match self.credential.get_token(&[self.scope.as_str()], None).await {
            Ok(access) => {
                let left = access.expires_on - azure_core::time::OffsetDateTime::now_utc();
                let left = Duration::from_millis(u64::try_from(left.whole_milliseconds()).unwrap_or(0));
                let secret = access.token.secret().to_string();
                *cached = Some(CachedToken {
                    secret: secret.clone(),
                    refresh_at: now + left - token_refresh_margin(left),
                    expires_at: now + left,
                });
                Ok(secret)
            }
            Err(err) => match cached.as_ref() {
                Some(token) if token.expires_at > now + TOKEN_GRACE => {
                    tracing::warn!("aci: refreshing the ARM token failed, using the current one meanwhile: {err}");
                    Ok(token.secret.clone())
                }
                _ => Err(RuntimeError::Transient(format!(
                    "aci: cannot get an ARM token from {}: {err}",
                    self.credential_name
                ))),
            },
        }
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// Waits until no `Retry-After` forbids a request, if that is within `max_wait`.
    async fn wait_gate(&self, what: &str) -> Result<(), RuntimeError> {
        loop {
            let until = *lock(&self.gate);
            let Some(until) = until else { return Ok(()) };
            let now = Instant::now();
            if until <= now {
                return Ok(());
            }
            let left = until - now;
            if left > self.max_wait {
                return Err(RuntimeError::Transient(format!(
                    "aci: ARM asked to wait {}s before {what} (Retry-After); will retry",
                    left.as_secs() + 1
                )));
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        }
    }

    fn close_gate(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut gate = lock(&self.gate);
        *gate = Some(gate.map_or(until, |g| g.max(until)));
    }

    fn record_rate_limits(&self, headers: &reqwest::header::HeaderMap) {
        let mut found = Vec::new();
        for (name, value) in headers {
            if name.as_str().starts_with("x-ms-ratelimit-remaining-")
                && let Some(value) = value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok())
            {
                found.push((name.as_str().to_string(), value));
            }
        }
        if !found.is_empty() {
            lock(&self.rate_limits).extend(found);
        }
    }

    /// One ARM call. Throttling (429) is waited out here when short; 401 gets one fresh
    /// token; refusals, 5xx and transport errors are Transient. Any other answer is the
    /// caller's to read.
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        what: &str,
        create_only: bool,
    ) -> Result<Answer, RuntimeError> {
        let mut throttled = 0;
        let mut fresh_token = false;
        loop {
            self.wait_gate(what).await?;
            let token = self.token().await?;
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(&token)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            if create_only {
                request = request.header(reqwest::header::IF_NONE_MATCH, "*");
            }
            let response = request
                .send()
                .await
                .map_err(|err| RuntimeError::Transient(format!("aci: {what}: ARM did not answer: {err}")))?;
            self.record_rate_limits(response.headers());
            let status = response.status().as_u16();
            let wait = retry_after(response.headers());
            let body = response
                .bytes()
                .await
                .map_err(|err| RuntimeError::Transient(format!("aci: {what}: reading ARM's answer failed: {err}")))?
                .to_vec();
            match status {
                429 => {
                    let wait = wait.unwrap_or(DEFAULT_RETRY_AFTER);
                    self.close_gate(wait);
                    throttled += 1;
                    tracing::debug!("aci: {what}: throttled (429), Retry-After {}s", wait.as_secs());
                    if throttled >= MAX_THROTTLED_TRIES || wait > self.max_wait {
                        return Err(RuntimeError::Transient(format!(
                            "aci: {what}: ARM is throttling ({}); retrying after {}s",
                            arm_error(&body),
                            wait.as_secs()
                        )));
                    }
                }
                401 if !fresh_token => {
                    fresh_token = true;
                    self.forget_token().await;
                }
                401 | 403 => {
                    return Err(RuntimeError::Transient(format!(
                        "aci: {what}: ARM refused {} ({status} {}); the identity needs the Contributor role on resource group {}",
                        self.credential_name,
                        arm_error(&body),
                        self.resource_group
                    )));
                }
                500..=599 => {
                    return Err(RuntimeError::Transient(format!(
                        "aci: {what}: ARM answered {status}: {}",
                        arm_error(&body)
                    )));
                }
                _ => return Ok(Answer { status, body }),
            }
        }
    }

    /// The group, or `None` when there is none of that name.
    async fn get_group(&self, name: &str) -> Result<Option<Group>, RuntimeError> {
        let what = format!("GET {name}");
        let answer = self
            .call(reqwest::Method::GET, &self.group_url(name), None, &what, false)
            .await?;
        match answer.status {
            200 => serde_json::from_slice(&answer.body)
                .map(Some)
                .map_err(|err| RuntimeError::Transient(format!("aci: {what}: ARM's answer does not parse: {err}"))),
            // A missing resource group or subscription is a configuration problem, not a
            // group that is gone: its tasks must not be judged lost.
            404 if !matches!(
                answer.code().as_deref(),
                Some("ResourceGroupNotFound" | "SubscriptionNotFound")
            ) =>
            {
                Ok(None)
            }
            status => Err(RuntimeError::Transient(format!(
                "aci: {what}: ARM answered {status}: {}",
                answer.error()
            ))),
        }
    }

    /// This controller's group of that name; another's is none at all to it.
    async fn own_group(&self, name: &str) -> Result<Option<Group>, RuntimeError> {
        Ok(self.get_group(name).await?.filter(|g| self.owns(g)))
    }

    /// The request body for `spec`.
    fn create_body(&self, spec: &ContainerSpec) -> Result<Value, RuntimeError> {
        let name = spec.name.as_str();
        let image = spec
            .image
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| permanent(name, "the aci runtime needs spec.image"))?;
        if spec.working_dir.is_some() {
            return Err(permanent(
                name,
                "ACI cannot set a working directory; remove workingDir (e.g. run `sh -c \"cd /dir && ...\"`)",
            ));
        }
        if !spec.mounts.is_empty() {
            return Err(permanent(name, "ACI cannot mount host paths; use azureFile volumes"));
        }
        if spec.command.is_empty() && !spec.args.is_empty() {
            return Err(permanent(
                name,
                "ACI replaces the image's entrypoint and arguments together; give command as well as args",
            ));
        }
        let problems = aci_resource_problems(spec.cpu, spec.memory_bytes);
        if !problems.is_empty() {
            return Err(permanent(name, problems.join("; ")));
        }
        let secret: std::collections::HashSet<&str> = spec
            .secret_env
            .iter()
            .map(String::as_str)
            .chain([CALLBACK_ENV])
            .collect();
        let env: Vec<Value> = spec
            .env
            .iter()
            .map(|(key, value)| {
                if secret.contains(key.as_str()) {
                    json!({"name": key, "secureValue": value})
                } else {
                    json!({"name": key, "value": value})
                }
            })
            .collect();
        let mounts = &spec.azure_files;
        let mut volumes = Vec::new();
        let mut volume_mounts = Vec::new();
        for mount in mounts {
            let key = std::env::var(&mount.storage_account_key_env).map_err(|_| {
                permanent(
                    name,
                    format!(
                        "volume {}: storageAccountKeyFrom.env {} is not set in the controller's environment",
                        mount.name, mount.storage_account_key_env
                    ),
                )
            })?;
            volumes.push(json!({
                "name": mount.name,
                "azureFile": {
                    "shareName": mount.share_name,
                    "storageAccountName": mount.storage_account_name,
                    "storageAccountKey": key,
                    "readOnly": mount.read_only,
                }
            }));
            volume_mounts.push(json!({"name": mount.name, "mountPath": mount.mount_path, "readOnly": mount.read_only}));
        }
        let mut tags = serde_json::Map::new();
        for (key, value) in &spec.labels {
            if value.chars().count() > MAX_TAG_VALUE {
                return Err(permanent(
                    name,
                    format!("the label {key} is longer than the {MAX_TAG_VALUE} characters an Azure tag may hold"),
                ));
            }
            tags.insert(tag_key(key), Value::String(value.clone()));
        }
        tags.insert(TAG_OWNER.to_string(), Value::String(self.owner.clone()));
        if tags.len() > MAX_TAGS {
            return Err(permanent(
                name,
                format!("more than {MAX_TAGS} labels; Azure allows {MAX_TAGS} tags"),
            ));
        }
        let command: Vec<&String> = spec.command.iter().chain(&spec.args).collect();
        let mut container = json!({
            "image": image,
            "environmentVariables": env,
            "resources": {"requests": {
                "cpu": spec.cpu.unwrap_or(DEFAULT_CPU),
                "memoryInGB": spec.memory_bytes.map(aci_memory_gb).unwrap_or(DEFAULT_MEMORY_GB),
            }},
        });
        if !command.is_empty() {
            container["command"] = json!(command);
        }
        if !volume_mounts.is_empty() {
            container["volumeMounts"] = Value::Array(volume_mounts);
        }
        let mut properties = json!({
            "osType": "Linux",
            "restartPolicy": "Never",
            "containers": [{"name": name, "properties": container}],
        });
        if !volumes.is_empty() {
            properties["volumes"] = Value::Array(volumes);
        }
        Ok(json!({
            "location": spec.location.as_deref().map(str::trim).filter(|l| !l.is_empty()).unwrap_or(&self.location),
            "tags": tags,
            "properties": properties,
        }))
    }

    /// PUTs the group as a create. `Ok(None)`: it exists already (a racing create); look
    /// again and adopt it.
    async fn create(&self, spec: &ContainerSpec) -> Result<Option<Group>, RuntimeError> {
        let name = spec.name.as_str();
        let body = self.create_body(spec)?;
        // Whatever an earlier holder of this name wrote is not this container's output.
        let _ = tokio::fs::remove_file(self.log_path(name)).await;
        let ticket = self
            .limiter
            .acquire(self.max_wait)
            .await
            .map_err(|exhausted| RuntimeError::Transient(exhausted.to_string()))?;
        let what = format!("PUT {name}");
        let answer = self
            .call(
                reqwest::Method::PUT,
                &self.group_url(name),
                Some(&body),
                &what,
                self.create_if_none_match,
            )
            .await;
        drop(ticket);
        let answer = answer?;
        match answer.status {
            200 | 201 => {
                if answer.status == 200 {
                    // ARM ignored If-None-Match and updated a group made meanwhile.
                    tracing::warn!(container = name, "aci: the create of {name} updated an existing group");
                } else {
                    tracing::debug!(container = name, "aci: created {name}");
                }
                Ok(Some(serde_json::from_slice(&answer.body).unwrap_or_default()))
            }
            412 => Ok(None),
            // The group is being deleted, or the resource group is missing: conditions that
            // pass, or that a person fixes; not the task's fault.
            404 | 409 => Err(RuntimeError::Transient(format!(
                "aci: {what}: ARM answered {}: {}",
                answer.status,
                answer.error()
            ))),
            status => {
                let code = answer.code().unwrap_or_default();
                let config = ["Quota", "Registration", "NotRegistered", "Throttl"]
                    .iter()
                    .any(|w| code.contains(w));
                if config {
                    Err(RuntimeError::Transient(format!(
                        "aci: {what}: ARM answered {status}: {}",
                        answer.error()
                    )))
                } else {
                    // ProviderFailed (resources ACI cannot give), an image name it refuses,
                    // a bad volume: creating again cannot help.
                    Err(RuntimeError::Permanent {
                        reason: Reason::CreateFailed,
                        message: format!("aci: ARM refused to create {name} ({status}): {}", answer.error()),
                    })
                }
            }
        }
    }

    /// Follows the group's provisioning with GETs until it is terminal or the wait is
    /// over; a failed provisioning is Permanent.
    async fn follow_provisioning(&self, name: &str, mut group: Group) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + self.provision_wait;
        let mut pause = lock(&self.pauses).get(name).copied().unwrap_or(self.poll_min);
        loop {
            match group.provisioning(name) {
                Provisioning::InProgress => {}
                done => {
                    lock(&self.pauses).remove(name);
                    return match done {
                        Provisioning::Failed { reason, message } => Err(RuntimeError::Permanent { reason, message }),
                        Provisioning::Deleting => Err(RuntimeError::Transient(format!(
                            "aci: the container group {name} is being deleted; will look again"
                        ))),
                        _ => Ok(()),
                    };
                }
            }
            if Instant::now() + pause > deadline {
                // Still provisioning: the controller sees Created and calls again.
                lock(&self.pauses).insert(name.to_string(), pause);
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.poll_max);
            group = match self.own_group(name).await? {
                Some(group) => group,
                None => {
                    return Err(RuntimeError::Transient(format!(
                        "aci: the container group {name} vanished while it was provisioned"
                    )));
                }
            };
        }
    }

    /// The container's logs: its last `tail` lines, or all ARM keeps. `None` when the
    /// group is gone, or ACI has none to give (a container that never started).
    async fn arm_logs(&self, name: &str, tail: Option<u32>) -> Result<Option<String>, RuntimeError> {
        let mut url = format!(
            "{}/{name}/containers/{name}/logs?api-version={API_VERSION}",
            self.groups_url
        );
        if let Some(tail) = tail {
            url.push_str(&format!("&tail={tail}"));
        }
        let what = format!("GET the logs of {name}");
        let answer = self.call(reqwest::Method::GET, &url, None, &what, false).await?;
        match answer.status {
            200 => {
                let logs: Logs = serde_json::from_slice(&answer.body).map_err(|err| {
                    RuntimeError::Transient(format!("aci: {what}: ARM's answer does not parse: {err}"))
                })?;
                Ok(Some(logs.content.unwrap_or_default()))
            }
            404 => Ok(None),
            status if (400..500).contains(&status) => {
                tracing::debug!(
                    container = name,
                    "aci: no logs for {name} ({status}): {}",
                    answer.error()
                );
                Ok(None)
            }
            status => Err(RuntimeError::Transient(format!(
                "aci: {what}: ARM answered {status}: {}",
                answer.error()
            ))),
        }
    }

    /// Copies the container's logs into its log file, durably, before the group goes.
    async fn save_logs(&self, name: &str) -> Result<(), RuntimeError> {
        let Some(content) = self.arm_logs(name, None).await? else {
            return Ok(());
        };
        let path = self.log_path(name);
        let written = path.clone();
        tokio::task::spawn_blocking(move || fsutil::write_atomic(&written, content.as_bytes()))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|err| {
                RuntimeError::Transient(format!(
                    "aci: cannot keep the logs of {name} in {}: {err}",
                    path.display()
                ))
            })
    }

    /// Waits until the GET answers 404. `false` if the group is still there at the end.
    async fn wait_gone(&self, name: &str) -> Result<bool, RuntimeError> {
        let deadline = Instant::now() + self.delete_wait;
        let mut pause = self.poll_min;
        loop {
            if self.get_group(name).await?.is_none() {
                return Ok(true);
            }
            if Instant::now() + pause > deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.poll_max);
        }
    }

    /// DELETE (200, 202, 204: accepted; 404: gone already), then wait for it to be gone.
    async fn delete_group(&self, name: &str, already_deleting: bool) -> Result<(), RuntimeError> {
        if !already_deleting {
            let what = format!("DELETE {name}");
            let answer = self
                .call(reqwest::Method::DELETE, &self.group_url(name), None, &what, false)
                .await?;
            match answer.status {
                200 | 202 | 204 => {}
                404 => return Ok(()),
                status => {
                    return Err(RuntimeError::Transient(format!(
                        "aci: {what}: ARM answered {status}: {}",
                        answer.error()
                    )));
                }
            }
        }
        if self.wait_gone(name).await? {
            Ok(())
        } else {
            Err(RuntimeError::Transient(format!(
                "aci: the container group {name} is still being deleted; will look again"
            )))
        }
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut url = format!("{}?api-version={API_VERSION}", self.groups_url);
        let mut found = Vec::new();
        // A bound on pages, in case a service keeps answering the same nextLink.
        for _ in 0..1000 {
            let answer = self
                .call(reqwest::Method::GET, &url, None, "list the container groups", false)
                .await?;
            if answer.status != 200 {
                return Err(RuntimeError::Transient(format!(
                    "aci: list the container groups: ARM answered {}: {}",
                    answer.status,
                    answer.error()
                )));
            }
            let page: GroupList = serde_json::from_slice(&answer.body).map_err(|err| {
                RuntimeError::Transient(format!("aci: the list of container groups does not parse: {err}"))
            })?;
            for group in page.value.unwrap_or_default() {
                if !self.owns(&group) || group.tag(LABEL_TASK).is_none() {
                    continue;
                }
                let Some(name) = group.name.clone() else { continue };
                found.push(ContainerSummary {
                    name,
                    labels: group.tags.unwrap_or_default(),
                });
            }
            match page.next_link {
                Some(next) if next.starts_with(&format!("{}/", self.endpoint)) => url = next,
                Some(next) => {
                    tracing::warn!(
                        "aci: not following a listing's nextLink outside {}: {next}",
                        self.endpoint
                    );
                    return Ok(found);
                }
                None => return Ok(found),
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Runtime for AciRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Aci
    }

    async fn placement(&self) -> Result<super::Placement, RuntimeError> {
        Ok(self.placement.clone())
    }

    async fn ensure(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let name = spec.name.as_str();
        check_name(name)?;
        for _ in 0..ENSURE_ROUNDS {
            let group = match inner.get_group(name).await? {
                Some(group) => group,
                None => match inner.create(spec).await? {
                    Some(created) => return inner.follow_provisioning(name, created).await,
                    // Made meanwhile by a racing create: adopt it.
                    None => continue,
                },
            };
            if !inner.owns(&group) {
                return Err(RuntimeError::Transient(format!(
                    "aci: the name {name} is taken by a container group that {}; waiting for it to go",
                    match group.tag(TAG_OWNER) {
                        Some(other) => format!("another skiff controller made (owner {other})"),
                        None => "skiff did not make".to_string(),
                    }
                )));
            }
            let deleting = group.provisioning_state() == "Deleting";
            if let Some(wanted) = spec.labels.get(LABEL_ATTEMPT_ID)
                && group.tag(LABEL_ATTEMPT_ID) != Some(wanted.as_str())
            {
                // Same name, another attempt: never adopt it.
                tracing::info!(
                    container = name,
                    "aci: deleting a container group made for another attempt"
                );
                inner.delete_group(name, deleting).await?;
                let _ = tokio::fs::remove_file(inner.log_path(name)).await;
                continue;
            }
            return inner.follow_provisioning(name, group).await;
        }
        Err(RuntimeError::Transient(format!(
            "aci: the container group {name} kept changing while it was being made; will look again"
        )))
    }

    async fn inspect(&self, name: &str) -> Result<Inspection, RuntimeError> {
        Ok(match self.inner.own_group(name).await? {
            None => Inspection {
                state: ContainerState::Absent,
                attempt_id: None,
            },
            Some(group) => Inspection {
                state: group.state(name),
                attempt_id: group.tag(LABEL_ATTEMPT_ID).map(str::to_string),
            },
        })
    }

    async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let Some(group) = inner.own_group(name).await? else {
            return Ok(());
        };
        lock(&inner.pauses).remove(name);
        let deleting = group.provisioning_state() == "Deleting";
        if !deleting {
            inner.save_logs(name).await?;
        }
        inner.delete_group(name, deleting).await
    }

    async fn log_tail(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        let bytes = match tokio::fs::read(self.inner.log_path(name)).await {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                match self.inner.arm_logs(name, Some(TAIL_LINES)).await? {
                    Some(text) => text.into_bytes(),
                    None => return Ok(None),
                }
            }
            Err(err) => return Err(err.into()),
        };
        Ok(Some(crate::status::log_tail(&bytes)))
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.inner.list().await
    }

    async fn forget(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        super::forget_logs(&self.inner.logs, container_prefix).await
    }

    async fn forget_earlier_run(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        super::forget_earlier_logs(&self.inner.logs, container_prefix).await
    }

    /// ARM has no event stream for container groups: completion is seen by polling (and
    /// by callbacks in event mode, which do not go through the runtime).
    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_and_print() {
        let quota: CreateQuota = DEFAULT_CREATE_QUOTA.parse().unwrap();
        assert_eq!(quota, CreateQuota::default());
        assert_eq!(quota.to_string(), "100/5m,300/1h");
        let quota: CreateQuota = "10/2s".parse().unwrap();
        assert_eq!(quota.windows[0].period, Duration::from_secs(2));
        for bad in ["", "10", "0/5m", "10/0s", "x/5m", "10/forever"] {
            assert!(bad.parse::<CreateQuota>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tag_keys_lose_the_characters_arm_refuses() {
        assert_eq!(tag_key("skiff.task"), "skiff.task");
        assert_eq!(tag_key("a/b?c"), "a_b_c");
    }

    #[test]
    fn names_must_be_what_aci_accepts() {
        assert!(check_name("skiff-jobs-thumb-1a2b3c4d-1").is_ok());
        for bad in ["", "Skiff", "a--b", "-a", "a-", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_refresh_margin_is_five_minutes_or_half_the_lifetime() {
        assert_eq!(
            token_refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(token_refresh_margin(Duration::from_secs(60)), Duration::from_secs(30));
    }

    fn group(json: Value) -> Group {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn states_follow_provisioning_then_the_container() {
        let g = group(json!({"properties": {"provisioningState": "Creating"}}));
        assert_eq!(g.state("c"), ContainerState::Created);
        let g = group(json!({"properties": {"provisioningState": "Succeeded", "containers": [
            {"name": "c", "properties": {"instanceView": {"currentState":
                {"state": "Running", "startTime": "2026-11-21T10:00:00Z"}}}}]}}));
        assert!(matches!(g.state("c"), ContainerState::Running { started_at: Some(_) }));
        let g = group(json!({"properties": {"provisioningState": "Succeeded", "containers": [
            {"name": "c", "properties": {"instanceView": {"currentState":
                {"state": "Terminated", "exitCode": 3, "detailStatus": "Error",
                 "startTime": "2026-11-21T10:00:00Z", "finishTime": "2026-11-21T10:00:05Z"}}}}]}}));
        match g.state("c") {
            ContainerState::Exited { exit_code, message, .. } => {
                assert_eq!(exit_code, Some(3));
                assert_eq!(message.as_deref(), Some("Error"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_pull_is_a_permanent_image_pull_failure_with_arms_words() {
        let g = group(json!({"properties": {"provisioningState": "Failed", "containers": [
            {"name": "c", "properties": {"instanceView": {
                "currentState": {"state": "Waiting", "detailStatus": "ErrImagePull"},
                "events": [{"name": "Pulling", "type": "Normal", "message": "pulling image \"nope\""},
                           {"name": "Failed", "type": "Warning", "message": "Failed to pull image \"nope\": not found"}]}}}]}}));
        assert_eq!(g.state("c"), ContainerState::Created, "ensure reports it");
        match g.provisioning("c") {
            Provisioning::Failed { reason, message } => {
                assert_eq!(reason, Reason::ImagePullFailed);
                assert!(message.contains("Failed to pull image"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arm_errors_read_as_code_and_message() {
        assert_eq!(
            arm_error(br#"{"error":{"code":"ProviderFailed","message":"no"}}"#),
            "ProviderFailed: no"
        );
        assert_eq!(arm_error(b""), "(no detail)");
        assert_eq!(arm_error(b"oops"), "oops");
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_gives_each_token_back_one_window_after_its_create_ended() {
        let quota: CreateQuota = "2/10s".parse().unwrap();
        let limiter = Arc::new(CreateLimiter::new(&quota));
        let a = limiter.acquire(Duration::ZERO).await.unwrap();
        let b = limiter.acquire(Duration::ZERO).await.unwrap();
        // Both in flight: the third waits for one of them to end.
        assert!(limiter.acquire(Duration::from_secs(1)).await.is_err());
        drop(a);
        let started = tokio::time::Instant::now();
        let waited = limiter.acquire(Duration::from_secs(60)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(10), "{:?}", started.elapsed());
        drop(b);
        drop(waited);
        // Too long a wait is an error that says how long.
        let err = match limiter.acquire(Duration::from_secs(1)).await {
            Err(err) => err,
            Ok(_) => panic!("a token came back too soon"),
        };
        assert!(err.next_in.is_some(), "{err}");
        assert!(err.to_string().contains("2/10s"), "{err}");
    }
}
