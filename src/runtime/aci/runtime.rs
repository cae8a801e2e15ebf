//! The aci runtime itself: [`AciRuntime`], its set-up (state folder, owner id, client),
//! and the [`Runtime`] contract over ARM: `ensure` adopts this attempt's group or creates
//! it (after the quota) and follows its provisioning; `inspect`; `delete` keeps the logs,
//! then deletes and waits for the group to be gone; `list` shows only this owner's groups.

use super::arm::{Arm, GroupsAt};
use super::body::{check_name, create_body};
use super::config::{AciConfig, AciCredential, AciError, DEFAULT_START_TIMEOUT, TAG_OWNER, TAG_START_BY};
use super::quota::CreateLimiter;
use super::wire::{Group, Provisioning};
use crate::fsutil;
use crate::manifest::RuntimeKind;
use crate::runtime::adopt::{self, Verdict};
use crate::runtime::lock;
use crate::runtime::{
    ContainerSpec, ContainerState, ContainerSummary, Inspection, LABEL_ATTEMPT_ID, LABEL_TASK, Runtime, RuntimeError,
    kept_logs,
};
use crate::status::Reason;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How many lines `log_tail` asks for (ARM counts lines, not bytes).
const TAIL_LINES: u32 = 256;
/// How often `ensure` looks again when the name changes under it (a racing create, a
/// stale group going away) before calling it a transient failure.
const ENSURE_ROUNDS: usize = 4;

pub struct AciRuntime {
    inner: Arc<Inner>,
    /// The subscription and resource group: replicas see each other's groups exactly
    /// when they share both.
    placement: crate::runtime::Placement,
}

struct Inner {
    arm: Arm,
    /// Where groups are made, unless a task names its own.
    location: String,
    limiter: Arc<CreateLimiter>,
    /// `<state>/logs`, shared with the other runtimes.
    logs: PathBuf,
    owner: String,
    max_wait: Duration,
    provision_wait: Duration,
    delete_wait: Duration,
    poll_min: Duration,
    poll_max: Duration,
    /// The current pause of each group being provisioned, so that the backoff goes on
    /// across `ensure` calls instead of starting again from `poll_min`.
    pauses: std::sync::Mutex<HashMap<String, Duration>>,
    /// The controller's subscription and resource group (`--aci-*`).
    home: GroupsAt,
    /// Where each group of a task with its own placement is, as far as known: from its
    /// create, its file in `placements_dir`, or a listing.
    placed: std::sync::Mutex<HashMap<String, GroupsAt>>,
    /// `<state>/aci-groups/`: one file per group placed elsewhere than `home`, written
    /// before its create, so that a restarted controller finds it.
    placements_dir: PathBuf,
    /// `<state>/aci-resource-groups.json`: every other resource group skiff has made groups
    /// in, listed for orphan collection.
    used_file: PathBuf,
    used: std::sync::Mutex<std::collections::BTreeSet<GroupsAt>>,
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
        let placements_dir = state_dir.join("aci-groups");
        std::fs::create_dir_all(&placements_dir).map_err(state_error)?;
        let used_file = state_dir.join("aci-resource-groups.json");
        let used = match std::fs::read(&used_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(
                    "aci: {} does not parse ({err}); starting a new list",
                    used_file.display()
                );
                Default::default()
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(err) => return Err(state_error(err)),
        };
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            // ARM does not redirect; a redirect must not carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| AciError::Config(format!("cannot make an HTTP client: {err}")))?;
        let credential = match &config.credential {
            AciCredential::Custom(credential) => credential.clone(),
            AciCredential::Azure(kind) => {
                crate::azure::credential(*kind, &http).map_err(|err| AciError::Credential(err.to_string()))?
            }
        };
        Ok(AciRuntime {
            placement: crate::runtime::Placement::aci(&config.subscription_id, &config.resource_group, owner.clone()),
            inner: Arc::new(Inner {
                arm: Arm::new(&config, endpoint, http, credential),
                location: config.location.trim().to_string(),
                limiter: Arc::new(CreateLimiter::new(&config.create_quota)),
                logs,
                owner,
                max_wait: config.max_wait,
                provision_wait: config.provision_wait,
                delete_wait: config.delete_wait,
                poll_min: config.poll_min,
                poll_max: config.poll_max.max(config.poll_min),
                pauses: std::sync::Mutex::new(HashMap::new()),
                home: GroupsAt::new(&config.subscription_id, &config.resource_group),
                placed: std::sync::Mutex::new(HashMap::new()),
                placements_dir,
                used_file,
                used: std::sync::Mutex::new(used),
            }),
        })
    }

    /// The last value of each `x-ms-ratelimit-remaining-*` header ARM sent, by header
    /// name (e.g. `x-ms-ratelimit-remaining-subscription-writes`), for metrics.
    pub fn rate_limit_remaining(&self) -> BTreeMap<String, u64> {
        self.inner.arm.rate_limits()
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
        self.inner.arm.token().await.map(|_| ())
    }

    /// The container's output, kept after the group was deleted.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.inner.log_path(name)
    }

    /// The last `tail` lines of a live group's output, from ARM (never the kept copy);
    /// `None` when the group is gone or has no output to give yet. For following it with
    /// a [`LogFollower`](super::LogFollower).
    pub async fn live_logs(&self, name: &str, tail: u32) -> Result<Option<String>, RuntimeError> {
        check_name(name)?;
        self.inner.arm.logs(&self.inner.at(name), name, Some(tail)).await
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

impl Inner {
    fn log_path(&self, name: &str) -> PathBuf {
        kept_logs::path(&self.logs, name)
    }

    /// Where the group `name` is: where it was made (remembered, or recorded in its file
    /// before the create), else the controller's resource group.
    fn at(&self, name: &str) -> GroupsAt {
        if let Some(at) = lock(&self.placed).get(name) {
            return at.clone();
        }
        let recorded = std::fs::read(self.placements_dir.join(name))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<GroupsAt>(&bytes).ok());
        let at = recorded.unwrap_or_else(|| self.home.clone());
        lock(&self.placed).insert(name.to_string(), at.clone());
        at
    }

    /// Where `spec` wants its group: the task's own subscription and resource group, each
    /// defaulting to the controller's.
    fn wanted(&self, spec: &ContainerSpec) -> GroupsAt {
        let crate::runtime::RuntimeOptions::Aci { extras, .. } = &spec.options else {
            return self.home.clone();
        };
        GroupsAt::new(
            extras.subscription_id.as_deref().unwrap_or(&self.home.subscription_id),
            extras.resource_group.as_deref().unwrap_or(&self.home.resource_group),
        )
    }

    /// Records, durably and before any call, that the group `name` is made at `at`: its
    /// file (none for the controller's own resource group), and `at` in the list of
    /// resource groups orphan collection goes through.
    async fn record(&self, name: &str, at: &GroupsAt) -> Result<(), RuntimeError> {
        let file = self.placements_dir.join(name);
        let io = |err: std::io::Error| RuntimeError::Transient(format!("aci: the state folder: {err}"));
        if *at == self.home {
            match tokio::fs::remove_file(&file).await {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(io(err)),
                _ => {}
            }
        } else {
            let bytes = serde_json::to_vec(at).unwrap_or_default();
            let is_new = !lock(&self.used).contains(at);
            let list = is_new.then(|| {
                let mut used = lock(&self.used).clone();
                used.insert(at.clone());
                used
            });
            let used_file = self.used_file.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                fsutil::write_atomic(&file, &bytes)?;
                if let Some(list) = list {
                    fsutil::write_atomic(&used_file, &serde_json::to_vec_pretty(&list).unwrap_or_default())?;
                }
                Ok(())
            })
            .await
            .map_err(|err| RuntimeError::Transient(format!("aci: the state folder: {err}")))?
            .map_err(io)?;
            lock(&self.used).insert(at.clone());
        }
        lock(&self.placed).insert(name.to_string(), at.clone());
        Ok(())
    }

    /// Forgets where a deleted group was.
    async fn unrecord(&self, name: &str) {
        lock(&self.placed).remove(name);
        let _ = tokio::fs::remove_file(self.placements_dir.join(name)).await;
    }

    fn owns(&self, group: &Group) -> bool {
        group.tag(TAG_OWNER) == Some(self.owner.as_str())
    }

    /// This controller's group of that name; another's is none at all to it.
    async fn own_group(&self, name: &str) -> Result<Option<Group>, RuntimeError> {
        Ok(self.arm.get_group(&self.at(name), name).await?.filter(|g| self.owns(g)))
    }

    /// PUTs the group as a create. The GET just before it is the guard against making a
    /// group twice (invariant 2): no conditional header is sent, since
    /// `ContainerGroups_CreateOrUpdate` declares none and what ACI would do with one is
    /// undefined.
    async fn create(&self, spec: &ContainerSpec) -> Result<Group, RuntimeError> {
        let name = spec.name.as_str();
        let mut body = create_body(spec, &self.owner, &self.location)?;
        // When it must have started: a tag, so that a restarted controller still knows.
        let start_timeout = match &spec.options {
            crate::runtime::RuntimeOptions::Aci { extras, .. } => extras.start_timeout,
            _ => None,
        }
        .unwrap_or(DEFAULT_START_TIMEOUT);
        let start_by = chrono::Utc::now() + chrono::Duration::from_std(start_timeout).unwrap_or(chrono::Duration::MAX);
        body["tags"][TAG_START_BY] =
            serde_json::Value::String(start_by.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        // Whatever an earlier holder of this name wrote is not this container's output.
        let _ = tokio::fs::remove_file(self.log_path(name)).await;
        let ticket = self
            .limiter
            .acquire(self.max_wait)
            .await
            .map_err(|exhausted| RuntimeError::Transient(exhausted.to_string()))?;
        let what = format!("PUT {name}");
        let answer = self
            .arm
            .call(
                reqwest::Method::PUT,
                &self.arm.group_url(&self.at(name), name),
                Some(&body),
                &what,
            )
            .await;
        drop(ticket);
        let answer = answer?;
        match answer.status {
            200 | 201 => {
                if answer.status == 200 {
                    // A group of that name was made between the GET and the PUT (by another
                    // tool: this controller never ensures one name twice at once), and this
                    // PUT updated it. Following it, the next `ensure` judges whose it is.
                    tracing::warn!(container = name, "aci: the create of {name} updated an existing group");
                } else {
                    tracing::debug!(container = name, "aci: created {name}");
                }
                // The 201 also carries `Azure-AsyncOperation` and/or `Location`
                // (`final-state-via: location`); the group's own GET answers both questions,
                // so neither is needed.
                Ok(serde_json::from_slice(&answer.body).unwrap_or_default())
            }
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

    /// Follows the group's provisioning with GETs until it is terminal, the wait is over,
    /// or ACI says something new of it (an event: the controller then looks, and the task's
    /// status says it, instead of keeping silent for the whole wait); a failed
    /// provisioning is Permanent.
    async fn follow_provisioning(&self, name: &str, mut group: Group) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + self.provision_wait;
        let mut pause = lock(&self.pauses).get(name).copied().unwrap_or(self.poll_min);
        let said = group.starting_progress(name);
        loop {
            match group.provisioning(name) {
                Provisioning::InProgress => {
                    let start_by = group
                        .tag(TAG_START_BY)
                        .and_then(|t| crate::runtime::parse_time(Some(t)));
                    if start_by.is_some_and(|by| chrono::Utc::now() > by) {
                        lock(&self.pauses).remove(name);
                        return Err(RuntimeError::Permanent {
                            reason: Reason::StartTimeout,
                            message: format!(
                                "aci: the container group {name} did not start in time (spec.aci.startTimeout): {}",
                                group.progress(name)
                            ),
                        });
                    }
                    if group.starting_progress(name) != said {
                        // Still provisioning: the controller sees Created and calls again.
                        lock(&self.pauses).insert(name.to_string(), pause);
                        return Ok(());
                    }
                }
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

    /// Copies the container's logs into its log file, durably, before the group goes.
    async fn save_logs(&self, name: &str) -> Result<(), RuntimeError> {
        let Some(content) = self.arm.logs(&self.at(name), name, None).await? else {
            return Ok(());
        };
        kept_logs::save(&self.logs, name, content.into_bytes())
            .await
            .map_err(|err| RuntimeError::Transient(format!("aci: {err}")))
    }

    /// Waits until the GET answers 404. `false` if the group is still there at the end.
    async fn wait_gone(&self, name: &str) -> Result<bool, RuntimeError> {
        let deadline = Instant::now() + self.delete_wait;
        let mut pause = self.poll_min;
        loop {
            if self.arm.get_group(&self.at(name), name).await?.is_none() {
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
                .arm
                .call(
                    reqwest::Method::DELETE,
                    &self.arm.group_url(&self.at(name), name),
                    None,
                    &what,
                )
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

    /// This controller's groups in its own resource group and in every other one it has
    /// made groups in. Another resource group that cannot be listed is skipped with a
    /// warning (a deleted one, a role taken away): what is not listed is never removed.
    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut found = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let others: Vec<GroupsAt> = lock(&self.used).iter().cloned().collect();
        for at in std::iter::once(self.home.clone()).chain(others) {
            let groups = match self.arm.list_groups(&at).await {
                Ok(groups) => groups,
                Err(err) if at != self.home => {
                    tracing::warn!("aci: cannot list the container groups of {at}: {err}");
                    continue;
                }
                Err(err) => return Err(err),
            };
            for group in groups {
                if !self.owns(&group) || group.tag(LABEL_TASK).is_none() {
                    continue;
                }
                let Some(name) = group.name.clone() else { continue };
                if !seen.insert(name.clone()) {
                    continue;
                }
                lock(&self.placed).insert(name.clone(), at.clone());
                found.push(ContainerSummary {
                    name,
                    labels: group.tags.unwrap_or_default(),
                });
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

    async fn placement(&self) -> Result<crate::runtime::Placement, RuntimeError> {
        Ok(self.placement.clone())
    }

    async fn ensure(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let name = spec.name.as_str();
        check_name(name)?;
        let at = inner.wanted(spec);
        if inner.at(name) != at {
            // The name's last group was elsewhere (an earlier spec's): it is gone, since the
            // controller deletes an attempt's container before it makes the next.
            tracing::debug!(container = name, "aci: {name} is made in {at}");
        }
        inner.record(name, &at).await?;
        for _ in 0..ENSURE_ROUNDS {
            let group = match inner.arm.get_group(&at, name).await? {
                Some(group) => group,
                None => {
                    let created = inner.create(spec).await?;
                    return inner.follow_provisioning(name, created).await;
                }
            };
            let wanted = spec.labels.get(LABEL_ATTEMPT_ID).map(String::as_str);
            match adopt::verdict(group.tag(TAG_OWNER), &inner.owner, group.tag(LABEL_ATTEMPT_ID), wanted) {
                Verdict::Foreign { owner } => {
                    return Err(adopt::taken("aci", name, "container group", owner, "owner"));
                }
                // Same name, another attempt: never adopt it.
                Verdict::Replace => {
                    let deleting = group.provisioning_state() == "Deleting";
                    tracing::info!(
                        container = name,
                        "aci: deleting a container group made for another attempt"
                    );
                    inner.delete_group(name, deleting).await?;
                    let _ = tokio::fs::remove_file(inner.log_path(name)).await;
                    continue;
                }
                Verdict::Adopt => return inner.follow_provisioning(name, group).await,
            }
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
                progress: None,
            },
            Some(group) => Inspection {
                state: group.state(name),
                attempt_id: group.tag(LABEL_ATTEMPT_ID).map(str::to_string),
                progress: group.starting_progress(name),
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
        inner.delete_group(name, deleting).await?;
        inner.unrecord(name).await;
        Ok(())
    }

    async fn log_tail(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        let bytes = match kept_logs::read(&self.inner.logs, name, None).await? {
            Some(bytes) => bytes,
            None => match self
                .inner
                .arm
                .logs(&self.inner.at(name), name, Some(TAIL_LINES))
                .await?
            {
                Some(text) => text.into_bytes(),
                None => return Ok(None),
            },
        };
        Ok(Some(crate::status::log_tail(&bytes)))
    }

    /// The copy `delete` kept, else ARM's while the group exists.
    async fn output(&self, name: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        if let Some(bytes) = kept_logs::read(&self.inner.logs, name, None).await? {
            return Ok(Some(bytes));
        }
        Ok(self
            .inner
            .arm
            .logs(&self.inner.at(name), name, None)
            .await?
            .map(String::into_bytes))
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.inner.list().await
    }

    async fn forget(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        kept_logs::forget(&self.inner.logs, container_prefix).await
    }

    async fn forget_earlier_run(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        kept_logs::forget_earlier(&self.inner.logs, container_prefix).await
    }

    /// ARM has no event stream for container groups: completion is seen by polling (and
    /// by callbacks in event mode, which do not go through the runtime).
    /// A terminated container group still counts against the subscription's quota of
    /// container groups until its delete is done: its slot waits for that.
    fn exited_frees_its_slot(&self) -> bool {
        false
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        None
    }
}
