//! The Azure identity side of the ARM simulator: a managed-identity token endpoint (the
//! App Service protocol, `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`) and a Key Vault stub on
//! loopback. Included by `arm_sim.rs`, whose users reach these through it.

use super::{KEY_VAULT_TOKEN_PREFIX, TOKEN_PREFIX, query};
use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// The token endpoint, one per test process.
pub struct Identity {
    /// `IDENTITY_ENDPOINT`.
    pub url: String,
    /// `IDENTITY_HEADER`.
    pub header: String,
}

/// A variable [`identity`] also sets, holding a (fake) storage account key, for azureFile
/// volumes whose key the runtime reads from its environment.
pub const STORAGE_KEY_ENV: &str = "SKIFF_SIM_STORAGE_KEY";

static ISSUED: AtomicUsize = AtomicUsize::new(0);
static LIFETIME_SECS: AtomicU64 = AtomicU64::new(3600);

impl Identity {
    /// Tokens issued so far (by every test of the process).
    pub fn issued(&self) -> usize {
        ISSUED.load(Ordering::SeqCst)
    }
}

/// Starts the token endpoint and points `IDENTITY_ENDPOINT` / `IDENTITY_HEADER` at it
/// (and sets [`STORAGE_KEY_ENV`]), once. Call it first thing in every test of a binary that uses it: the variables are
/// set while no other test thread runs anything else.
pub fn identity() -> &'static Identity {
    static CELL: OnceLock<Identity> = OnceLock::new();
    CELL.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the token endpoint");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/msi/token", listener.local_addr().expect("address"));
        let header = format!("skiff-sim-{}", std::process::id());
        let expected = header.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the token endpoint");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let router = Router::new().route(
                    "/msi/token",
                    axum::routing::get(move |uri: Uri, headers: HeaderMap| {
                        let expected = expected.clone();
                        async move { token(uri, headers, &expected) }
                    }),
                );
                let _ = axum::serve(listener, router).await;
            });
        });
        // SAFETY: set once, inside the OnceLock's initialisation, which every test calls
        // before it starts anything; no other thread of the process reads the environment
        // meanwhile.
        unsafe {
            std::env::set_var("IDENTITY_ENDPOINT", &url);
            std::env::set_var("IDENTITY_HEADER", &header);
            std::env::set_var(STORAGE_KEY_ENV, "c2ltdWxhdGVkIHN0b3JhZ2Uga2V5");
        }
        Identity { url, header }
    })
}

/// The App Service managed-identity protocol: GET with `api-version=2019-08-01`,
/// `resource`, and the `x-identity-header`; `expires_on` is epoch seconds as a string.
fn token(uri: Uri, headers: HeaderMap, expected: &str) -> Response {
    let params = query(&uri);
    if headers.get("x-identity-header").and_then(|v| v.to_str().ok()) != Some(expected) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "missing or wrong x-identity-header"})),
        )
            .into_response();
    }
    if params.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "api-version must be 2019-08-01"})),
        )
            .into_response();
    }
    let Some(resource) = params.get("resource") else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "resource is required"})),
        )
            .into_response();
    };
    let n = ISSUED.fetch_add(1, Ordering::SeqCst) + 1;
    let expires = chrono::Utc::now().timestamp() + LIFETIME_SECS.load(Ordering::SeqCst) as i64;
    // The token's audience is what it was asked for: a vault's token is no ARM token.
    let audience = if resource.contains("vault.azure.net") {
        "kv-"
    } else {
        ""
    };
    axum::Json(json!({
        "access_token": format!("{TOKEN_PREFIX}{audience}mi-{n}"),
        "expires_on": expires.to_string(),
        "resource": resource.replace("%3A", ":").replace("%2F", "/"),
        "token_type": "Bearer",
    }))
    .into_response()
}

/// A Key Vault stub on loopback: `GET /secrets/{name}[/{version}]?api-version=7.4` with a
/// vault-scoped bearer token (from [`identity`]) answers `{"value", "id", "attributes"}`;
/// 401 without such a token, 403 for a secret the caller may not read, 404 for an unknown
/// one; queued faults (e.g. 503) come first.
pub struct KeyVaultSim {
    /// `http://127.0.0.1:PORT`: secret URLs are `{url}/secrets/NAME`.
    pub url: String,
    state: Arc<Mutex<VaultState>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct VaultState {
    secrets: HashMap<String, String>,
    forbidden: HashSet<String>,
    faults: VecDeque<u16>,
    /// Every request: (path, answered status).
    requests: Vec<(String, u16)>,
}

impl Drop for KeyVaultSim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl KeyVaultSim {
    pub async fn start() -> KeyVaultSim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the vault");
        let url = format!("http://{}", listener.local_addr().expect("vault address"));
        let state = Arc::new(Mutex::new(VaultState::default()));
        let shared = state.clone();
        let router = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let state = shared.clone();
            async move { vault(&state, &uri, &headers) }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        KeyVaultSim { url, state, server }
    }

    pub fn secret_url(&self, name: &str) -> String {
        format!("{}/secrets/{name}", self.url)
    }

    pub fn set(&self, name: &str, value: &str) {
        self.lock().secrets.insert(name.to_string(), value.to_string());
    }

    pub fn forbid(&self, name: &str) {
        self.lock().forbidden.insert(name.to_string());
    }

    /// The next requests answer these statuses, in order.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.lock().faults.extend(statuses);
    }

    pub fn requests(&self) -> Vec<(String, u16)> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> MutexGuard<'_, VaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn vault(state: &Mutex<VaultState>, uri: &Uri, headers: &HeaderMap) -> Response {
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let path = uri.path().to_string();
    let answer = |state: &mut VaultState, status: u16, body: Value| {
        state.requests.push((path.clone(), status));
        (StatusCode::from_u16(status).expect("a status"), axum::Json(body)).into_response()
    };
    let kv_error = |code: &str, message: &str| json!({"error": {"code": code, "message": message}});
    if let Some(status) = state.faults.pop_front() {
        return answer(
            &mut state,
            status,
            kv_error("ServiceUnavailable", "The service is unavailable."),
        );
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token.starts_with(KEY_VAULT_TOKEN_PREFIX) {
        return answer(
            &mut state,
            401,
            kv_error(
                "Unauthorized",
                "AKV10022: Invalid audience. Expected https://vault.azure.net.",
            ),
        );
    }
    if query(uri).get("api-version").map(String::as_str) != Some("7.4") {
        return answer(
            &mut state,
            400,
            kv_error("BadParameter", "The api-version must be 7.4."),
        );
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let name = match parts.as_slice() {
        ["secrets", name] | ["secrets", name, _] => name.to_string(),
        _ => return answer(&mut state, 404, kv_error("NotFound", "No such route.")),
    };
    if state.forbidden.contains(&name) {
        return answer(
            &mut state,
            403,
            kv_error(
                "Forbidden",
                "Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'",
            ),
        );
    }
    match state.secrets.get(&name).cloned() {
        Some(value) => answer(
            &mut state,
            200,
            json!({"value": value, "id": path, "attributes": {"enabled": true}}),
        ),
        None => answer(
            &mut state,
            404,
            kv_error(
                "SecretNotFound",
                &format!("A secret with (name/id) {name} was not found in this key vault."),
            ),
        ),
    }
}
