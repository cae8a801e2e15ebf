//! The ARM client: bearer tokens from the credential (cached, fetched again before they
//! expire), one call at a time through the runtime-wide 429/`Retry-After` gate, 401/403/5xx
//! and transport errors made Transient, and the reads of a group, its logs and the listing.
//! What a call means for a container is the runtime's business ([`super::runtime`]).

use super::config::{API_VERSION, AciConfig};
use super::wire::{Group, GroupList, Logs};
use crate::runtime::RuntimeError;
use crate::runtime::lock;
use azure_core::credentials::TokenCredential;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A 429 without `Retry-After` (ARM always sends one; be safe).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);
/// 429s answered to one call before it gives up and lets the controller back off.
const MAX_THROTTLED_TRIES: u32 = 3;
/// An old token is still used when a refresh fails, if it has at least this long left.
const TOKEN_GRACE: Duration = Duration::from_secs(30);

/// How long before a token's expiry it is fetched again: five minutes, or half of its
/// lifetime for a short-lived one.
pub fn token_refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 2).min(Duration::from_secs(300))
}

struct CachedToken {
    secret: String,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Where groups are: a subscription and a resource group (the controller's, or a task's
/// own `spec.aci.subscriptionId`/`resourceGroup`). Azure compares both without case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GroupsAt {
    pub(super) subscription_id: String,
    pub(super) resource_group: String,
}

impl GroupsAt {
    pub(super) fn new(subscription_id: &str, resource_group: &str) -> Self {
        GroupsAt {
            subscription_id: subscription_id.trim().to_ascii_lowercase(),
            resource_group: resource_group.trim().to_ascii_lowercase(),
        }
    }
}

impl std::fmt::Display for GroupsAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.subscription_id, self.resource_group)
    }
}

/// The ARM client: tokens (cached, refreshed early), one call with its 429 gate, and the
/// few reads whose answers need interpreting (a group, its logs, the listing).
pub(super) struct Arm {
    http: reqwest::Client,
    /// Only pages of a listing on this origin are followed (the token goes with them).
    endpoint: String,
    resource_group: String,
    scope: String,
    credential: Arc<dyn TokenCredential>,
    credential_name: String,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    /// No request goes out before this instant: the last `Retry-After`.
    gate: std::sync::Mutex<Option<Instant>>,
    rate_limits: std::sync::Mutex<BTreeMap<String, u64>>,
    /// The longest a call waits for a `Retry-After` to pass before it is Transient.
    max_wait: Duration,
}

/// ARM's answer to one call that was not a throttle, an auth failure or a 5xx.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

impl Answer {
    /// ARM's `{"error":{"code","message"}}`, as `code: message`.
    pub(super) fn error(&self) -> String {
        arm_error(&self.body)
    }

    pub(super) fn code(&self) -> Option<String> {
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

impl Arm {
    /// A client of `endpoint` (checked by the caller: https, or http to loopback) for the
    /// subscription and resource group of `config`.
    pub(super) fn new(
        config: &AciConfig,
        endpoint: String,
        http: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
    ) -> Self {
        Arm {
            http,
            endpoint,
            resource_group: config.resource_group.trim().to_string(),
            scope: config.token_scope.clone(),
            credential,
            credential_name: config.credential.describe(),
            token: tokio::sync::Mutex::new(None),
            gate: std::sync::Mutex::new(None),
            rate_limits: std::sync::Mutex::new(BTreeMap::new()),
            max_wait: config.max_wait,
        }
    }

    /// The last value of each `x-ms-ratelimit-remaining-*` header ARM sent.
    pub(super) fn rate_limits(&self) -> BTreeMap<String, u64> {
        lock(&self.rate_limits).clone()
    }

    /// `{arm}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups`
    fn groups_url(&self, at: &GroupsAt) -> String {
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerInstance/containerGroups",
            self.endpoint,
            urlencoding::encode(&at.subscription_id),
            urlencoding::encode(&at.resource_group),
        )
    }

    pub(super) fn group_url(&self, at: &GroupsAt, name: &str) -> String {
        format!("{}/{name}?api-version={API_VERSION}", self.groups_url(at))
    }

    /// A token for ARM: the cached one, else a new one (one fetch at a time).
    pub(super) async fn token(&self) -> Result<String, RuntimeError> {
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
    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        what: &str,
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
                        "aci: {what}: ARM refused {} ({status} {}); the identity needs the Contributor role on the group's resource group (the controller's is {})",
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
    pub(super) async fn get_group(&self, at: &GroupsAt, name: &str) -> Result<Option<Group>, RuntimeError> {
        let what = format!("GET {name}");
        let answer = self
            .call(reqwest::Method::GET, &self.group_url(at, name), None, &what)
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

    /// The container's logs: its last `tail` lines, or all ARM keeps. `None` when the
    /// group is gone, or ACI has none to give (a container that never started).
    pub(super) async fn logs(
        &self,
        at: &GroupsAt,
        name: &str,
        tail: Option<u32>,
    ) -> Result<Option<String>, RuntimeError> {
        let mut url = format!(
            "{}/{name}/containers/{name}/logs?api-version={API_VERSION}",
            self.groups_url(at)
        );
        if let Some(tail) = tail {
            url.push_str(&format!("&tail={tail}"));
        }
        let what = format!("GET the logs of {name}");
        let answer = self.call(reqwest::Method::GET, &url, None, &what).await?;
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

    /// Every group of the resource group, page after page (only pages on this origin are
    /// followed: the token goes with them).
    pub(super) async fn list_groups(&self, at: &GroupsAt) -> Result<Vec<Group>, RuntimeError> {
        let mut url = format!("{}?api-version={API_VERSION}", self.groups_url(at));
        let mut found = Vec::new();
        // A bound on pages, in case a service keeps answering the same nextLink.
        for _ in 0..1000 {
            let answer = self
                .call(reqwest::Method::GET, &url, None, "list the container groups")
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
            found.extend(page.value.unwrap_or_default());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_margin_is_five_minutes_or_half_the_lifetime() {
        assert_eq!(
            token_refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(token_refresh_margin(Duration::from_secs(60)), Duration::from_secs(30));
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
}
