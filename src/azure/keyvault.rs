//! Key Vault secrets over REST: `GET {secretUrl}?api-version=7.4` with a bearer token for
//! the vault's scope (`https://vault.azure.net/.default` in public Azure), answering
//! `{"value": ...}`. The credential is the controller's own (`--azure-credential`), built
//! on first use so that a controller that never reads a vault never needs one.
//!
//! Errors name the secret's URL and Key Vault's words, never a value. A refusal (403), an
//! absent secret (404) or a bad request is [`KeyVaultError::Unavailable`]: asking again
//! will not help. 5xx, 429, transport errors and a refused token are
//! [`KeyVaultError::Transient`].

use super::identity::{CredentialKind, credential};
use azure_core::credentials::TokenCredential;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The Key Vault REST api-version.
pub const KEY_VAULT_API_VERSION: &str = "7.4";
/// One exchange with the vault.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest secret read (Key Vault's own limit is 25 KiB).
const MAX_SECRET_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyVaultError {
    /// Refused (403), absent (404) or not a secret: retrying cannot help.
    #[error("{0}")]
    Unavailable(String),
    /// The vault or the token endpoint failed for now.
    #[error("{0}")]
    Transient(String),
}

enum Credential {
    Ready(Arc<dyn TokenCredential>),
    Lazy(CredentialKind, OnceLock<Result<Arc<dyn TokenCredential>, String>>),
}

/// Reads Key Vault secrets with one credential; tokens cached per vault scope.
pub struct KeyVault {
    http: reqwest::Client,
    credential: Credential,
    tokens: tokio::sync::Mutex<HashMap<String, (String, Instant)>>,
}

/// The token scope of the vault serving `url`: its cloud's Key Vault audience.
pub fn vault_scope(url: &str) -> &'static str {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if host.ends_with(".vault.azure.cn") {
        "https://vault.azure.cn/.default"
    } else if host.ends_with(".vault.usgovcloudapi.net") {
        "https://vault.usgovcloudapi.net/.default"
    } else {
        "https://vault.azure.net/.default"
    }
}

impl KeyVault {
    /// With the credential `kind` names, built on first use.
    pub fn new(kind: CredentialKind, http: reqwest::Client) -> Self {
        KeyVault {
            http,
            credential: Credential::Lazy(kind, OnceLock::new()),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// With a given credential (an embedding program's, a test's).
    pub fn with_credential(credential: Arc<dyn TokenCredential>, http: reqwest::Client) -> Self {
        KeyVault {
            http,
            credential: Credential::Ready(credential),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    fn credential(&self) -> Result<Arc<dyn TokenCredential>, KeyVaultError> {
        match &self.credential {
            Credential::Ready(credential) => Ok(credential.clone()),
            Credential::Lazy(kind, cell) => cell
                .get_or_init(|| credential(*kind, &self.http).map_err(|err| err.to_string()))
                .clone()
                .map_err(KeyVaultError::Transient),
        }
    }

    async fn token(&self, scope: &str, fresh: bool) -> Result<String, KeyVaultError> {
        let mut tokens = self.tokens.lock().await;
        let now = Instant::now();
        if !fresh
            && let Some((token, refresh_at)) = tokens.get(scope)
            && now < *refresh_at
        {
            return Ok(token.clone());
        }
        let access = self
            .credential()?
            .get_token(&[scope], None)
            .await
            .map_err(|err| KeyVaultError::Transient(format!("cannot get a token for {scope}: {err}")))?;
        let left = access.expires_on - azure_core::time::OffsetDateTime::now_utc();
        let left = Duration::from_millis(u64::try_from(left.whole_milliseconds()).unwrap_or(0));
        let token = access.token.secret().to_string();
        tokens.insert(scope.to_string(), (token.clone(), now + left - refresh_margin(left)));
        Ok(token)
    }

    /// The value of the secret at `url` (a Key Vault secret URL, or for tests the same path
    /// on loopback http).
    pub async fn get(&self, url: &str) -> Result<String, KeyVaultError> {
        let url = url.trim();
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| url.starts_with(p) && url[p.len()..].starts_with([':', '/']));
        if !url.starts_with("https://") && !loopback {
            return Err(KeyVaultError::Unavailable(format!(
                "{url}: only https (or http on loopback) is read"
            )));
        }
        let scope = vault_scope(url);
        let mut fresh = false;
        loop {
            let token = self.token(scope, fresh).await?;
            let answer = self
                .http
                .get(format!("{url}?api-version={KEY_VAULT_API_VERSION}"))
                .bearer_auth(token)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(|err| KeyVaultError::Transient(format!("{url}: {}", without_url(&err))))?;
            let status = answer.status().as_u16();
            let body = answer
                .bytes()
                .await
                .map_err(|err| KeyVaultError::Transient(format!("{url}: {}", without_url(&err))))?;
            match status {
                200 => {
                    if body.len() > MAX_SECRET_BYTES {
                        return Err(KeyVaultError::Unavailable(format!("{url}: the secret is too large")));
                    }
                    let value: serde_json::Value = serde_json::from_slice(&body)
                        .map_err(|_| KeyVaultError::Transient(format!("{url}: Key Vault's answer is not JSON")))?;
                    return match value.get("value").and_then(|v| v.as_str()) {
                        Some(secret) => Ok(secret.to_string()),
                        None => Err(KeyVaultError::Unavailable(format!(
                            "{url}: Key Vault's answer has no value (a disabled secret?)"
                        ))),
                    };
                }
                401 if !fresh => fresh = true,
                401 => {
                    return Err(KeyVaultError::Transient(format!(
                        "{url}: Key Vault refused the controller's token (401): {}",
                        error_words(&body)
                    )));
                }
                408 | 429 | 500..=599 => {
                    return Err(KeyVaultError::Transient(format!(
                        "{url}: Key Vault answered {status}: {}",
                        error_words(&body)
                    )));
                }
                _ => {
                    let what = match status {
                        403 => "the controller's identity may not read it (grant it Key Vault Secrets User)",
                        404 => "no such secret or version",
                        _ => "refused",
                    };
                    return Err(KeyVaultError::Unavailable(format!(
                        "{url}: Key Vault answered {status}, {what}: {}",
                        error_words(&body)
                    )));
                }
            }
        }
    }
}

/// How long before a token's expiry it is fetched again (as for ARM's).
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 2).min(Duration::from_secs(300))
}

/// Key Vault's `{"error":{"code","message"}}` as `code: message`, bounded.
fn error_words(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = value["error"]["code"].as_str().unwrap_or("");
    let message = value["error"]["message"].as_str().unwrap_or("");
    let words = match (code.is_empty(), message.is_empty()) {
        (false, false) => format!("{code}: {message}"),
        (false, true) => code.to_string(),
        (true, false) => message.to_string(),
        (true, true) => "(no detail)".to_string(),
    };
    words.chars().take(300).collect()
}

/// A reqwest error without the URL it carries (the caller names the URL itself).
fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    match std::error::Error::source(err) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cloud_has_its_vault_scope() {
        assert_eq!(
            vault_scope("https://v.vault.azure.net/secrets/x"),
            "https://vault.azure.net/.default"
        );
        assert_eq!(
            vault_scope("https://v.vault.azure.cn/secrets/x"),
            "https://vault.azure.cn/.default"
        );
        assert_eq!(
            vault_scope("http://127.0.0.1:9/secrets/x"),
            "https://vault.azure.net/.default"
        );
    }

    #[test]
    fn errors_read_as_code_and_message() {
        assert_eq!(
            error_words(br#"{"error":{"code":"Forbidden","message":"no access"}}"#),
            "Forbidden: no access"
        );
        assert_eq!(error_words(b""), "(no detail)");
    }
}
