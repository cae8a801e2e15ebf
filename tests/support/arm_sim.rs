//! An in-process simulator of Azure Resource Manager for
//! `Microsoft.ContainerInstance/containerGroups`, api-version 2026-05-01, on
//! `127.0.0.1:0`. There is no ACI emulator; this follows the spec
//! (`specification/containerinstance/.../stable/2026-05-01/containerInstance.json`) in
//! what skiff relies on:
//!
//! - PUT answers 201 on create and 200 on update. The 201 carries `Location` and
//!   `Retry-After` (the spec's `final-state-via: location`; `operationResults/{id}`
//!   answers 202 while it runs, then 200 with the group) and `Azure-AsyncOperation`
//!   (`operations/{id}` answers `{"status"}`), or only one of them ([`LroHeaders`]). A PUT
//!   with `If-None-Match: *` on an existing group answers 412; PUTs carrying a condition are
//!   counted, since the spec declares none.
//! - `provisioningState` runs Pending → Creating → Succeeded (or Failed, for an image whose
//!   name contains `doesnotexist`, with ACI's Failed/Warning event and `ErrImagePull`);
//!   the container's `instanceView.currentState` runs Waiting → Running → Terminated, and
//!   its `instanceView.events` say Pulling (while Creating), Pulled, Started, Killing. An
//!   image whose name contains `unhealthy` or `notaccessible` ends in provisioningState
//!   `Unhealthy` or `NotAccessible` instead, with a Warning event. `dnsConfig` is checked
//!   (nameServers a list, searchDomains and options strings) and kept.
//! - The container "runs" its command, read as a tiny shell: `sleep S`, `echo TEXT`
//!   (its output), `exit N`, `false`, and a `wget ... --post-data 'BODY' "$SKIFF_CALLBACK_URL"`,
//!   which POSTs BODY to the URL (given as a `secureValue`) as busybox would. Statements
//!   are separated by `;`, `&&` or new lines; anything else is ignored.
//! - DELETE answers 202 (with `Location` and `Retry-After`), then the GET answers 404 after
//!   a while; DELETE of an absent group answers 204.
//! - `containers/{name}/logs` answers `{"content"}` (`tail` lines); ACI keeps 16 KB of a
//!   stopped container's output.
//! - The listing of a resource group carries tags, no `instanceView`, and pages with
//!   `nextLink`.
//! - Every answer carries `x-ms-ratelimit-remaining-subscription-{reads,writes,deletes}`;
//!   creates also `...-resource-requests-pt5m/-pt1h`.
//! - `secureValue`s and storage keys are never returned.
//! - Requests need `Authorization: Bearer sim-token-...`; revoked tokens get 401.
//! - Faults: injected 429s (with `Retry-After`) and 5xx answers, latency, slow
//!   provisioning, and `400 ProviderFailed` for cpu or memory beyond the configured limits.
//!
//! It counts what the tests check: the most groups alive at once, creates per window,
//! 201s per name, and requests that came before a `Retry-After` had passed.
//!
//! [`identity`] is a token endpoint in the App Service managed-identity protocol
//! (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`), which `azure_identity`'s
//! `ManagedIdentityCredential` talks to; it is one per test process and sets those
//! variables once.
#![allow(dead_code)]

#[path = "azure_identity_sim.rs"]
mod azure_identity_sim;
pub use azure_identity_sim::*;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const API_VERSION: &str = "2026-05-01";
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-00000000cafe";
pub const RESOURCE_GROUP: &str = "rg-skiff";
pub const LOCATION: &str = "westus2";
/// Tokens the simulator accepts start with this.
pub const TOKEN_PREFIX: &str = "sim-token-";
/// Tokens the identity endpoint issues for Key Vault (`resource=https://vault.azure.net`):
/// ARM refuses them, and the Key Vault stub accepts only them.
pub const KEY_VAULT_TOKEN_PREFIX: &str = "sim-token-kv-";
/// ACI keeps this much of a stopped container's output.
const STOPPED_LOG_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Pending → Creating.
    pub pending: Duration,
    /// Creating → Succeeded, when the container starts.
    pub creating: Duration,
    /// DELETE accepted → the GET answers 404.
    pub deleting: Duration,
    /// Added before every answer.
    pub latency: Duration,
    /// Groups per page of a listing.
    pub page_size: usize,
    /// Beyond these, a PUT answers 400 ProviderFailed.
    pub max_cpu: f64,
    pub max_memory_gb: f64,
    /// What the `-pt5m` and `-pt1h` quota headers count down from.
    pub quota_pt5m: u32,
    pub quota_pt1h: u32,
    /// Instead of the tiny shell: run each container's command as a real host process in
    /// this folder, with only the container's environment (and a `PATH`), its output as
    /// the logs and its exit status as the exit code; deleting the group kills it. For
    /// running the examples' real scripts "on ACI". An Azure File share is the folder
    /// `<this folder>/shares/<shareName>`: a host process cannot mount it, so its
    /// `mountPath` is replaced by that folder in the command's words.
    pub run_commands_in: Option<std::path::PathBuf>,
    /// Registries that refuse a pull without credentials: server → (username, password).
    /// A user-assigned identity in the group's `identity` may also pull from them.
    pub private_registries: HashMap<String, (String, String)>,
    /// Resource groups that exist besides [`RESOURCE_GROUP`] (in any subscription); any
    /// other answers 404 `ResourceGroupNotFound`.
    pub other_resource_groups: Vec<String>,
    /// Which long-running-operation headers a create's 201 carries.
    pub create_headers: LroHeaders,
}

/// The headers of a long-running PUT's 201. The spec declares `Location` and
/// `Retry-After` (`final-state-via: location`); ARM's answers also carry
/// `Azure-AsyncOperation`. A client must cope with either alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LroHeaders {
    #[default]
    Both,
    AzureAsyncOperationOnly,
    LocationOnly,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            pending: Duration::from_millis(40),
            creating: Duration::from_millis(80),
            deleting: Duration::from_millis(80),
            latency: Duration::ZERO,
            page_size: 50,
            max_cpu: 4.0,
            max_memory_gb: 16.0,
            quota_pt5m: 100,
            quota_pt1h: 300,
            run_commands_in: None,
            private_registries: HashMap::new(),
            other_resource_groups: Vec::new(),
            create_headers: LroHeaders::Both,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// 429 with this `Retry-After` in seconds.
    Throttle { retry_after: u64 },
    /// An answer with this status (e.g. 500, 503) and ARM's error body.
    Status(u16),
}

/// The next `times` requests (of `method`, or of any) get `fault`, before anything else.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub method: Option<Method>,
    pub fault: Fault,
    pub times: usize,
}

/// What the simulator saw.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub requests: usize,
    /// By kind: `PUT create`, `PUT update`, `GET`, `DELETE`, `LIST`, `LOGS`, `OPERATION`.
    pub by_kind: BTreeMap<String, usize>,
    /// Every 201, in order.
    pub created: Vec<(String, Instant)>,
    /// PUTs that reached ACI for a name that did not exist (ProviderFailed ones too).
    pub create_attempts: Vec<Instant>,
    pub created_per_name: HashMap<String, usize>,
    pub max_live: usize,
    pub deleted: Vec<String>,
    /// 429s answered.
    pub throttled: usize,
    /// Requests on a path that came before the `Retry-After` of a 429 on it had passed.
    pub early_retries: Vec<String>,
    pub faults_answered: usize,
    pub unauthorized: usize,
    pub tokens_seen: HashSet<String>,
    /// Callbacks the simulated containers made: group name and the answer's status.
    pub callbacks: Vec<(String, u16)>,
    /// Every create's body as it arrived (secrets included, for the tests to check what
    /// was sent), with the subscription and resource group of its URL.
    pub create_bodies: Vec<CreateRecord>,
    /// PUTs that carried `If-None-Match` or `If-Match` (the spec declares neither).
    pub conditional_puts: usize,
    /// The `tail` of each logs request, in order.
    pub log_tails: Vec<Option<usize>>,
}

/// One create as ARM received it.
#[derive(Debug, Clone)]
pub struct CreateRecord {
    pub name: String,
    pub subscription: String,
    pub resource_group: String,
    pub body: Value,
}

impl Stats {
    /// The most 201s in any window of this length (half-open, on the simulator's clock).
    pub fn max_creates_in(&self, window: Duration) -> usize {
        max_in_window(self.created.iter().map(|(_, t)| *t).collect(), window)
    }

    pub fn max_create_attempts_in(&self, window: Duration) -> usize {
        max_in_window(self.create_attempts.clone(), window)
    }

    pub fn count(&self, kind: &str) -> usize {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }
}

fn max_in_window(mut times: Vec<Instant>, window: Duration) -> usize {
    times.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[derive(Debug, Clone)]
struct ContainerRun {
    state: &'static str,
    exit_code: Option<i32>,
    start: Option<String>,
    finish: Option<String>,
    detail: String,
}

#[derive(Debug, Clone)]
struct SimGroup {
    generation: u64,
    /// `subscription/resourcegroup`, lower-cased: where the group is.
    at: String,
    location: String,
    tags: BTreeMap<String, String>,
    /// The container as PUT, with every `secureValue` taken out.
    container: Value,
    /// The volumes as PUT, storage keys taken out.
    volumes: Option<Value>,
    restart_policy: String,
    env: HashMap<String, String>,
    image: String,
    command: Vec<String>,
    provisioning: &'static str,
    group_state: &'static str,
    run: ContainerRun,
    events: Vec<Value>,
    logs: String,
    /// `imageRegistryCredentials` as PUT, passwords taken out (never returned).
    registry_credentials: Option<Value>,
    /// The pull is refused for want of credentials: the registry's words.
    pull_refused: Option<String>,
    /// `identity` as PUT, with the ids ARM adds.
    identity: Option<Value>,
    subnet_ids: Option<Value>,
    dns_config: Option<Value>,
}

struct World {
    config: SimConfig,
    groups: BTreeMap<String, SimGroup>,
    faults: VecDeque<FaultRule>,
    stats: Stats,
    /// Per path: no request should come before this (a 429's Retry-After).
    retry_marks: HashMap<String, Instant>,
    revoked: HashSet<String>,
    operations: HashMap<String, (String, u64, &'static str)>,
    next_generation: u64,
    reads: u64,
    writes: u64,
    deletes: u64,
}

pub struct ArmSim {
    /// Where ARM is: pass as the runtime's `arm_endpoint`.
    pub endpoint: String,
    sim: Arc<Sim>,
    server: tokio::task::JoinHandle<()>,
}

struct Sim {
    endpoint: String,
    world: Mutex<World>,
    http: reqwest::Client,
}

impl Drop for ArmSim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ArmSim {
    /// The controller flags that point the aci runtime at this simulator, then `extra`.
    pub fn controller_flags(&self, extra: &[&str]) -> Vec<String> {
        let mut flags: Vec<String> = [
            "--runtime",
            "aci",
            "--aci-subscription-id",
            SUBSCRIPTION,
            "--aci-resource-group",
            RESOURCE_GROUP,
            "--aci-location",
            LOCATION,
            "--arm-endpoint",
            &self.endpoint,
            "--azure-credential",
            "managed",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    }

    /// Starts a simulator on the current tokio runtime.
    pub async fn start(config: SimConfig) -> ArmSim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the simulator");
        let endpoint = format!("http://{}", listener.local_addr().expect("simulator address"));
        let sim = Arc::new(Sim {
            endpoint: endpoint.clone(),
            world: Mutex::new(World {
                config,
                groups: BTreeMap::new(),
                faults: VecDeque::new(),
                stats: Stats::default(),
                retry_marks: HashMap::new(),
                revoked: HashSet::new(),
                operations: HashMap::new(),
                next_generation: 1,
                reads: 12_000,
                writes: 1_200,
                deletes: 15_000,
            }),
            http: reqwest::Client::new(),
        });
        let router = Router::new().fallback(handle).with_state(sim.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        ArmSim { endpoint, sim, server }
    }

    pub fn stats(&self) -> Stats {
        self.sim.world().stats.clone()
    }

    pub fn configure(&self, change: impl FnOnce(&mut SimConfig)) {
        change(&mut self.sim.world().config);
    }

    pub fn inject(&self, rule: FaultRule) {
        self.sim.world().faults.push_back(rule);
    }

    /// Every token seen so far now answers 401 (as an expired one would).
    pub fn revoke_tokens(&self) {
        let mut world = self.sim.world();
        let seen: Vec<String> = world.stats.tokens_seen.iter().cloned().collect();
        world.revoked.extend(seen);
    }

    /// Names of the groups that exist (being deleted included).
    pub fn live(&self) -> Vec<String> {
        self.sim.world().groups.keys().cloned().collect()
    }

    /// The group as a GET returns it.
    pub fn view(&self, name: &str) -> Option<Value> {
        let world = self.sim.world();
        world.groups.get(name).map(|g| self.sim.view(name, g, true))
    }

    /// Makes a group directly, as another tool (or another controller) would.
    pub fn put_foreign(&self, name: &str, tags: &[(&str, &str)]) {
        let mut world = self.sim.world();
        let generation = world.next_generation;
        world.next_generation += 1;
        let group = SimGroup {
            generation,
            at: format!("{SUBSCRIPTION}/{RESOURCE_GROUP}").to_lowercase(),
            location: LOCATION.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            container: json!({"image": "busybox"}),
            volumes: None,
            restart_policy: "Never".into(),
            env: HashMap::new(),
            image: "busybox".into(),
            command: Vec::new(),
            provisioning: "Succeeded",
            group_state: "Running",
            run: ContainerRun {
                state: "Running",
                exit_code: None,
                start: Some(now_text()),
                finish: None,
                detail: String::new(),
            },
            events: Vec::new(),
            logs: String::new(),
            registry_credentials: None,
            pull_refused: None,
            identity: None,
            subnet_ids: None,
            dns_config: None,
        };
        world.groups.insert(name.to_string(), group);
        let live = world.groups.len();
        world.stats.max_live = world.stats.max_live.max(live);
    }
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%20", " ")))
        .collect()
}

impl Sim {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn group_id(at: &str, name: &str) -> String {
        let (subscription, group) = at.split_once('/').unwrap_or((SUBSCRIPTION, RESOURCE_GROUP));
        format!(
            "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.ContainerInstance/containerGroups/{name}"
        )
    }

    /// The group as ARM shows it; listings leave out the instance views.
    fn view(&self, name: &str, g: &SimGroup, instance_view: bool) -> Value {
        let mut container = g.container.clone();
        if instance_view {
            let mut current = json!({"state": g.run.state, "detailStatus": g.run.detail});
            if let Some(code) = g.run.exit_code {
                current["exitCode"] = json!(code);
            }
            if let Some(start) = &g.run.start {
                current["startTime"] = json!(start);
            }
            if let Some(finish) = &g.run.finish {
                current["finishTime"] = json!(finish);
            }
            container["instanceView"] = json!({"restartCount": 0, "currentState": current, "events": g.events});
        }
        let mut properties = json!({
            "provisioningState": g.provisioning,
            "osType": "Linux",
            "restartPolicy": g.restart_policy,
            "containers": [{"name": name, "properties": container}],
        });
        if let Some(volumes) = &g.volumes {
            properties["volumes"] = volumes.clone();
        }
        if let Some(credentials) = &g.registry_credentials {
            properties["imageRegistryCredentials"] = credentials.clone();
        }
        if let Some(subnets) = &g.subnet_ids {
            properties["subnetIds"] = subnets.clone();
        }
        if let Some(dns) = &g.dns_config {
            properties["dnsConfig"] = dns.clone();
        }
        if instance_view {
            properties["instanceView"] = json!({"state": g.group_state, "events": []});
        }
        let mut view = json!({
            "id": Self::group_id(&g.at, name),
            "name": name,
            "type": "Microsoft.ContainerInstance/containerGroups",
            "location": g.location,
            "tags": g.tags,
            "properties": properties,
        });
        if let Some(identity) = &g.identity {
            view["identity"] = identity.clone();
        }
        view
    }

    /// Applies `change` if the group is still the same one and not being deleted.
    fn transition(&self, name: &str, generation: u64, change: impl FnOnce(&mut SimGroup)) -> bool {
        let mut world = self.world();
        match world.groups.get_mut(name) {
            Some(g) if g.generation == generation && g.provisioning != "Deleting" => {
                change(g);
                true
            }
            _ => false,
        }
    }

    fn headers(&self, world: &mut World, method: &Method, create: bool) -> HeaderMap {
        match *method {
            Method::GET => world.reads = world.reads.saturating_sub(1),
            Method::DELETE => {
                world.deletes = world.deletes.saturating_sub(1);
                world.writes = world.writes.saturating_sub(1);
            }
            _ => world.writes = world.writes.saturating_sub(1),
        }
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        put("x-ms-ratelimit-remaining-subscription-reads", world.reads.to_string());
        put("x-ms-ratelimit-remaining-subscription-writes", world.writes.to_string());
        put(
            "x-ms-ratelimit-remaining-subscription-deletes",
            world.deletes.to_string(),
        );
        if create {
            let now = Instant::now();
            let recent = |window: Duration| {
                world
                    .stats
                    .created
                    .iter()
                    .filter(|(_, t)| now.duration_since(*t) < window)
                    .count() as u32
            };
            put(
                "x-ms-ratelimit-remaining-subscription-resource-requests-pt5m",
                world
                    .config
                    .quota_pt5m
                    .saturating_sub(recent(Duration::from_secs(300)))
                    .to_string(),
            );
            put(
                "x-ms-ratelimit-remaining-subscription-resource-requests-pt1h",
                world
                    .config
                    .quota_pt1h
                    .saturating_sub(recent(Duration::from_secs(3600)))
                    .to_string(),
            );
        }
        headers
    }
}

async fn handle(State(sim): State<Arc<Sim>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let latency = sim.world().config.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path = uri.path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let params = query(&uri);
    let now = Instant::now();
    let mut world = sim.world();
    world.stats.requests += 1;
    // Retry-After is checked first: a request that comes too early is noted even if it is
    // then refused for another reason.
    if let Some(until) = world.retry_marks.get(&path)
        && now < *until
    {
        let early = format!("{method} {path} {} ms early", (*until - now).as_millis());
        world.stats.early_retries.push(early);
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    if !token.starts_with(TOKEN_PREFIX) {
        world.stats.unauthorized += 1;
        return error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or invalid.",
        );
    }
    if token.starts_with(KEY_VAULT_TOKEN_PREFIX) {
        world.stats.unauthorized += 1;
        return error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationTokenAudience",
            "The access token has been obtained for wrong audience or resource 'https://vault.azure.net'.",
        );
    }
    if world.revoked.contains(&token) {
        world.stats.unauthorized += 1;
        return error(
            StatusCode::UNAUTHORIZED,
            "ExpiredAuthenticationToken",
            "The access token expiry UTC time is earlier than current UTC time.",
        );
    }
    world.stats.tokens_seen.insert(token);
    if params.get("api-version").map(String::as_str) != Some(API_VERSION) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &format!("The api-version is invalid. The supported versions are '{API_VERSION}'."),
        );
    }
    let position = world
        .faults
        .iter()
        .position(|rule| rule.times > 0 && rule.method.as_ref().is_none_or(|m| *m == method));
    if let Some(position) = position {
        let fault = world.faults[position].fault;
        world.faults[position].times -= 1;
        if world.faults[position].times == 0 {
            world.faults.remove(position);
        }
        world.stats.faults_answered += 1;
        return match fault {
            Fault::Throttle { retry_after } => {
                world.stats.throttled += 1;
                world
                    .retry_marks
                    .insert(path.clone(), Instant::now() + Duration::from_secs(retry_after));
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "The request is being throttled as the limit has been reached for operation type.",
                );
                response.headers_mut().insert(
                    "retry-after",
                    HeaderValue::from_str(&retry_after.to_string()).expect("a number"),
                );
                response
            }
            Fault::Status(status) => error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "InternalServerError",
                "Encountered internal server error. Please try again.",
            ),
        };
    }

    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    // Where the request is: `subscription/resourcegroup`, which must exist.
    let at = match lower.as_slice() {
        ["subscriptions", subscription, "resourcegroups", rg, ..] => {
            let known = *rg == RESOURCE_GROUP.to_lowercase()
                || world
                    .config
                    .other_resource_groups
                    .iter()
                    .any(|g| g.eq_ignore_ascii_case(rg));
            if !known {
                return error(
                    StatusCode::NOT_FOUND,
                    "ResourceGroupNotFound",
                    &format!("Resource group '{}' could not be found.", segments[3]),
                );
            }
            format!("{subscription}/{rg}")
        }
        _ => String::new(),
    };
    // A group of that name elsewhere is none of this resource group's.
    let here = |world: &World, name: &str| world.groups.get(name).is_none_or(|g| g.at == at);
    match lower.as_slice() {
        [
            "subscriptions",
            _,
            "resourcegroups",
            rg,
            "providers",
            "microsoft.containerinstance",
            "containergroups",
        ] if method == Method::GET => {
            let _ = rg;
            *world.stats.by_kind.entry("LIST".into()).or_default() += 1;
            let skip: usize = params.get("$skipToken").and_then(|s| s.parse().ok()).unwrap_or(0);
            let size = world.config.page_size.max(1);
            let names: Vec<String> = world
                .groups
                .iter()
                .filter(|(_, g)| g.at == at)
                .map(|(name, _)| name.clone())
                .collect();
            let value: Vec<Value> = names
                .iter()
                .skip(skip)
                .take(size)
                .filter_map(|n| world.groups.get(n).map(|g| sim.view(n, g, false)))
                .collect();
            let mut page = json!({"value": value});
            if skip + size < names.len() {
                page["nextLink"] = json!(format!(
                    "{}{path}?api-version={API_VERSION}&$skipToken={}",
                    sim.endpoint,
                    skip + size
                ));
            }
            let headers = sim.headers(&mut world, &method, false);
            (StatusCode::OK, headers, axum::Json(page)).into_response()
        }
        [
            "subscriptions",
            _,
            "resourcegroups",
            rg,
            "providers",
            "microsoft.containerinstance",
            "containergroups",
            _,
        ] => {
            let _ = rg;
            let name = segments[7].to_string();
            if !here(&world, &name) {
                return match method {
                    Method::PUT => error(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "The simulator holds one group per name; this one is in another resource group.",
                    ),
                    Method::DELETE => StatusCode::NO_CONTENT.into_response(),
                    _ => not_found(&name),
                };
            }
            match method {
                Method::GET => {
                    *world.stats.by_kind.entry("GET".into()).or_default() += 1;
                    let headers = sim.headers(&mut world, &method, false);
                    match world.groups.get(&name) {
                        Some(g) => (StatusCode::OK, headers, axum::Json(sim.view(&name, g, true))).into_response(),
                        None => not_found(&name),
                    }
                }
                Method::PUT => {
                    if !world.groups.contains_key(name.as_str()) {
                        let record = CreateRecord {
                            name: name.to_string(),
                            subscription: segments[1].to_string(),
                            resource_group: segments[3].to_string(),
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        };
                        world.stats.create_bodies.push(record);
                    }
                    put(&sim, world, &name, &at, &headers, &body)
                }
                Method::DELETE => delete(&sim, world, &name),
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not allowed"),
            }
        }
        [
            "subscriptions",
            _,
            "resourcegroups",
            rg,
            "providers",
            "microsoft.containerinstance",
            "containergroups",
            _,
            "containers",
            _,
            "logs",
        ] if method == Method::GET => {
            let _ = rg;
            *world.stats.by_kind.entry("LOGS".into()).or_default() += 1;
            let tail = params.get("tail").and_then(|t| t.parse::<usize>().ok());
            world.stats.log_tails.push(tail);
            let name = segments[7];
            if !here(&world, name) {
                return not_found(name);
            }
            let headers = sim.headers(&mut world, &method, false);
            let Some(g) = world.groups.get(name) else {
                return not_found(name);
            };
            if segments[9] != name {
                return error(
                    StatusCode::NOT_FOUND,
                    "ContainerNotFound",
                    &format!(
                        "The container '{}' is not found in container group '{name}'.",
                        segments[9]
                    ),
                );
            }
            let mut content = g.logs.clone();
            if let Some(tail) = params.get("tail").and_then(|t| t.parse::<usize>().ok()) {
                let lines: Vec<&str> = content.lines().collect();
                let keep = lines.len().saturating_sub(tail);
                content = lines[keep..].iter().map(|l| format!("{l}\n")).collect();
            }
            (StatusCode::OK, headers, axum::Json(json!({"content": content}))).into_response()
        }
        [
            "subscriptions",
            _,
            "providers",
            "microsoft.containerinstance",
            "locations",
            _,
            "operations",
            id,
        ] if method == Method::GET => {
            *world.stats.by_kind.entry("OPERATION".into()).or_default() += 1;
            let status = match world.operations.get(*id) {
                None => return error(StatusCode::NOT_FOUND, "OperationNotFound", "no such operation"),
                Some((name, generation, "create")) => match world.groups.get(name) {
                    Some(g) if g.generation == *generation => match g.provisioning {
                        "Succeeded" => "Succeeded",
                        "Failed" | "Unhealthy" | "NotAccessible" => "Failed",
                        _ => "InProgress",
                    },
                    _ => "Canceled",
                },
                Some((name, _, _)) => {
                    if world.groups.contains_key(name) {
                        "InProgress"
                    } else {
                        "Succeeded"
                    }
                }
            };
            (StatusCode::OK, axum::Json(json!({"name": id, "status": status}))).into_response()
        }
        [
            "subscriptions",
            _,
            "providers",
            "microsoft.containerinstance",
            "locations",
            _,
            "operationresults",
            id,
        ] if method == Method::GET => {
            // `final-state-via: location`: 202 (with Retry-After) while the operation runs,
            // then 200 with the resource as it ended.
            *world.stats.by_kind.entry("OPERATION RESULT".into()).or_default() += 1;
            let Some((name, generation, _)) = world.operations.get(*id).cloned() else {
                return error(StatusCode::NOT_FOUND, "OperationNotFound", "no such operation");
            };
            let headers = sim.headers(&mut world, &method, false);
            match world.groups.get(&name) {
                Some(g) if g.generation == generation => {
                    if matches!(g.provisioning, "Pending" | "Creating" | "Accepted") {
                        let mut headers = headers;
                        headers.insert("retry-after", HeaderValue::from_static("1"));
                        (StatusCode::ACCEPTED, headers).into_response()
                    } else {
                        (StatusCode::OK, headers, axum::Json(sim.view(&name, g, true))).into_response()
                    }
                }
                _ => not_found(&name),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("The simulator has no route for {method} {path}"),
        ),
    }
}

fn not_found(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.ContainerInstance/containerGroups/{name}' under resource group '{RESOURCE_GROUP}' was not found."
        ),
    )
}

fn put(
    sim: &Arc<Sim>,
    mut world: MutexGuard<'_, World>,
    name: &str,
    at: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "The request content was invalid.",
        );
    };
    let create_only = headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some("*");
    if headers.contains_key("if-none-match") || headers.contains_key("if-match") {
        world.stats.conditional_puts += 1;
    }
    if let Some(existing) = world.groups.get(name).cloned() {
        if create_only {
            return error(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "The condition specified using HTTP conditional header(s) is not met.",
            );
        }
        // An update: ACI lets tags change in place.
        *world.stats.by_kind.entry("PUT update".into()).or_default() += 1;
        let tags = request["tags"].as_object().cloned().unwrap_or_default();
        let mut updated = existing;
        updated.tags = tags
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect();
        let view = sim.view(name, &updated, true);
        world.groups.insert(name.to_string(), updated);
        let headers = sim.headers(&mut world, &Method::PUT, false);
        return (StatusCode::OK, headers, axum::Json(view)).into_response();
    }
    *world.stats.by_kind.entry("PUT create".into()).or_default() += 1;
    world.stats.create_attempts.push(Instant::now());
    let Some(location) = request["location"].as_str().filter(|l| !l.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "LocationRequired",
            "The location property is required for this definition.",
        );
    };
    let mut tags = BTreeMap::new();
    for (key, value) in request["tags"].as_object().cloned().unwrap_or_default() {
        if key.contains(['<', '>', '%', '&', '\\', '?', '/']) {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidTagNameCharacters",
                &format!("The tag names '{key}' have reserved characters '<,>,%,&,\\,?,/' or control characters."),
            );
        }
        let value = value.as_str().unwrap_or_default().to_string();
        if value.chars().count() > 256 {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidTagValueLength",
                "A tag value is longer than 256.",
            );
        }
        tags.insert(key, value);
    }
    let properties = &request["properties"];
    let Some(spec) = properties["containers"].as_array().and_then(|c| c.first()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidContainerGroup",
            "A container group needs a container.",
        );
    };
    let mut container = spec["properties"].clone();
    let Some(image) = container["image"].as_str().map(str::to_string) else {
        return error(StatusCode::BAD_REQUEST, "InvalidImage", "The container needs an image.");
    };
    let cpu = container["resources"]["requests"]["cpu"].as_f64().unwrap_or(0.0);
    let memory = container["resources"]["requests"]["memoryInGB"].as_f64().unwrap_or(0.0);
    if cpu <= 0.0 || memory <= 0.0 || cpu > world.config.max_cpu || memory > world.config.max_memory_gb {
        return error(
            StatusCode::BAD_REQUEST,
            "ProviderFailed",
            &format!(
                "The requested resource is not available in the location '{location}' at this moment. Please retry with a different resource request or in another location. Resource requested: '{cpu}' CPU '{memory}' memory 'Linux' OS"
            ),
        );
    }
    let mut env = HashMap::new();
    if let Some(vars) = container["environmentVariables"].as_array_mut() {
        for var in vars.iter_mut() {
            let key = var["name"].as_str().unwrap_or_default().to_string();
            let value = var["value"]
                .as_str()
                .or_else(|| var["secureValue"].as_str())
                .unwrap_or_default();
            env.insert(key, value.to_string());
            if let Some(object) = var.as_object_mut() {
                // Never returned.
                object.remove("secureValue");
            }
        }
    }
    let identity = match check_identity(&request["identity"]) {
        Ok(identity) => identity,
        Err(message) => return error(StatusCode::BAD_REQUEST, "InvalidIdentity", &message),
    };
    let (registry_credentials, pull_refused) =
        match check_registry_credentials(properties, identity.as_ref(), &image, &world.config.private_registries) {
            Ok(checked) => checked,
            Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, &message),
        };
    let subnet_ids = match properties.get("subnetIds") {
        None => None,
        Some(Value::Array(subnets))
            if subnets
                .iter()
                .all(|s| s["id"].as_str().is_some_and(|id| id.contains("/subnets/"))) =>
        {
            Some(Value::Array(subnets.clone()))
        }
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidSubnetIds",
                "subnetIds must be a list of {\"id\": <subnet resource id>}.",
            );
        }
    };
    let dns_config = match properties.get("dnsConfig") {
        None => None,
        Some(dns)
            if dns["nameServers"]
                .as_array()
                .is_some_and(|s| !s.is_empty() && s.iter().all(Value::is_string))
                && ["searchDomains", "options"]
                    .iter()
                    .all(|k| dns.get(*k).is_none_or(Value::is_string)) =>
        {
            Some(dns.clone())
        }
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidDnsConfig",
                "dnsConfig needs nameServers (a list of addresses); searchDomains and options are strings.",
            );
        }
    };
    let mut volumes = properties.get("volumes").cloned();
    if let Some(list) = volumes.as_mut().and_then(Value::as_array_mut) {
        for volume in list {
            if let Some(file) = volume["azureFile"].as_object_mut() {
                file.remove("storageAccountKey");
            }
        }
    }
    let command: Vec<String> = container["command"]
        .as_array()
        .map(|c| c.iter().filter_map(|p| p.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let generation = world.next_generation;
    world.next_generation += 1;
    let group = SimGroup {
        generation,
        at: at.to_string(),
        location: location.to_string(),
        tags,
        container,
        volumes,
        restart_policy: properties["restartPolicy"].as_str().unwrap_or("Always").to_string(),
        env,
        image,
        command,
        provisioning: "Pending",
        group_state: "Pending",
        run: ContainerRun {
            state: "Waiting",
            exit_code: None,
            start: None,
            finish: None,
            detail: String::new(),
        },
        events: Vec::new(),
        logs: String::new(),
        registry_credentials,
        pull_refused,
        identity,
        subnet_ids,
        dns_config,
    };
    let view = sim.view(name, &group, true);
    world.groups.insert(name.to_string(), group);
    let live = world.groups.len();
    world.stats.max_live = world.stats.max_live.max(live);
    world.stats.created.push((name.to_string(), Instant::now()));
    *world.stats.created_per_name.entry(name.to_string()).or_default() += 1;
    let operation = format!("op-{generation}");
    world
        .operations
        .insert(operation.clone(), (name.to_string(), generation, "create"));
    let mut headers = sim.headers(&mut world, &Method::PUT, true);
    let lro = world.config.create_headers;
    let operations = format!(
        "{}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.ContainerInstance/locations/{location}",
        sim.endpoint
    );
    if lro != LroHeaders::LocationOnly
        && let Ok(value) = HeaderValue::from_str(&format!(
            "{operations}/operations/{operation}?api-version={API_VERSION}"
        ))
    {
        headers.insert("azure-asyncoperation", value);
    }
    if lro != LroHeaders::AzureAsyncOperationOnly
        && let Ok(value) = HeaderValue::from_str(&format!(
            "{operations}/operationResults/{operation}?api-version={API_VERSION}"
        ))
    {
        headers.insert("location", value);
        headers.insert("retry-after", HeaderValue::from_static("1"));
    }
    drop(world);
    tokio::spawn(lifecycle(sim.clone(), name.to_string(), generation));
    (StatusCode::CREATED, headers, axum::Json(view)).into_response()
}

/// The group's `identity` as ARM keeps it (`principalId`s added), or why it is refused.
fn check_identity(identity: &Value) -> Result<Option<Value>, String> {
    if identity.is_null() {
        return Ok(None);
    }
    let kind = identity["type"].as_str().unwrap_or_default();
    let users = identity["userAssignedIdentities"].as_object();
    let wants_users = match kind {
        "SystemAssigned" => false,
        "UserAssigned" | "SystemAssigned, UserAssigned" => true,
        "None" => return Ok(None),
        other => return Err(format!("The identity type '{other}' is not supported.")),
    };
    if wants_users != users.is_some_and(|u| !u.is_empty()) {
        return Err(format!(
            "The identity type '{kind}' and userAssignedIdentities do not go together."
        ));
    }
    let mut kept = json!({"type": kind});
    if kind.starts_with("SystemAssigned") {
        kept["principalId"] = json!("11111111-1111-1111-1111-111111111111");
        kept["tenantId"] = json!("22222222-2222-2222-2222-222222222222");
    }
    if let Some(users) = users {
        let mut map = serde_json::Map::new();
        for id in users.keys() {
            if !id
                .to_ascii_lowercase()
                .contains("/providers/microsoft.managedidentity/userassignedidentities/")
            {
                return Err(format!("'{id}' is not a user-assigned identity's resource id."));
            }
            map.insert(
                id.clone(),
                json!({"principalId": "33333333-3333-3333-3333-333333333333", "clientId": "44444444-4444-4444-4444-444444444444"}),
            );
        }
        kept["userAssignedIdentities"] = Value::Object(map);
    }
    Ok(Some(kept))
}

/// `imageRegistryCredentials`: each a server with a username and password, or an identity
/// the group has. Gives them back without passwords, and the registry's refusal when the
/// image's registry is private and no credential opens it.
#[allow(clippy::type_complexity)]
fn check_registry_credentials(
    properties: &Value,
    identity: Option<&Value>,
    image: &str,
    private: &HashMap<String, (String, String)>,
) -> Result<(Option<Value>, Option<String>), (&'static str, String)> {
    let registry = image
        .split_once('/')
        .map(|(first, _)| first)
        .filter(|first| first.contains(['.', ':']))
        .unwrap_or("docker.io")
        .to_ascii_lowercase();
    let mut opened = !private.contains_key(&registry);
    let Some(list) = properties.get("imageRegistryCredentials") else {
        let refused = (!opened).then(|| "unauthorized: authentication required".to_string());
        return Ok((None, refused));
    };
    let Some(list) = list.as_array() else {
        return Err((
            "InvalidImageRegistryCredential",
            "imageRegistryCredentials must be a list.".into(),
        ));
    };
    let mut kept = Vec::new();
    for credential in list {
        let Some(server) = credential["server"].as_str().filter(|s| !s.is_empty()) else {
            return Err((
                "InvalidImageRegistryCredential",
                "An image registry credential needs a server.".into(),
            ));
        };
        let username = credential["username"].as_str();
        let password = credential["password"].as_str();
        let by_identity = credential["identity"].as_str();
        match (username, password, by_identity) {
            (Some(user), Some(pass), None) => {
                if server.eq_ignore_ascii_case(&registry)
                    && private.get(&registry).is_some_and(|(u, p)| u == user && p == pass)
                {
                    opened = true;
                }
                kept.push(json!({"server": server, "username": user}));
            }
            (None, None, Some(id)) => {
                let assigned = identity
                    .and_then(|i| i["userAssignedIdentities"].as_object())
                    .is_some_and(|users| users.keys().any(|k| k.eq_ignore_ascii_case(id)));
                if !assigned {
                    return Err((
                        "InvalidImageRegistryCredentialIdentity",
                        format!(
                            "The identity '{id}' of the image registry credential for '{server}' is not assigned to the container group."
                        ),
                    ));
                }
                if server.eq_ignore_ascii_case(&registry) {
                    opened = true;
                }
                kept.push(json!({"server": server, "identity": id}));
            }
            _ => {
                return Err((
                    "InvalidImageRegistryCredential",
                    format!(
                        "The image registry credential for '{server}' needs a username and password, or an identity."
                    ),
                ));
            }
        }
    }
    let refused = (!opened).then(|| "unauthorized: authentication required".to_string());
    Ok((Some(Value::Array(kept)), refused))
}

fn delete(sim: &Arc<Sim>, mut world: MutexGuard<'_, World>, name: &str) -> Response {
    *world.stats.by_kind.entry("DELETE".into()).or_default() += 1;
    let headers = sim.headers(&mut world, &Method::DELETE, false);
    let Some(group) = world.groups.get_mut(name) else {
        return (StatusCode::NO_CONTENT, headers).into_response();
    };
    let generation = group.generation;
    if group.provisioning != "Deleting" {
        group.provisioning = "Deleting";
        if group.run.state == "Running" {
            group.run = ContainerRun {
                state: "Terminated",
                exit_code: Some(137),
                start: group.run.start.clone(),
                finish: Some(now_text()),
                detail: "Killed".into(),
            };
        }
        let delay = world.config.deleting;
        let sim = sim.clone();
        let gone = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut world = sim.world();
            if world.groups.get(&gone).is_some_and(|g| g.generation == generation) {
                world.groups.remove(&gone);
                world.stats.deleted.push(gone);
            }
        });
    }
    let operation = format!("del-{generation}");
    world
        .operations
        .insert(operation.clone(), (name.to_string(), generation, "delete"));
    let mut headers = headers;
    let location = format!(
        "{}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.ContainerInstance/locations/{LOCATION}/operations/{operation}?api-version={API_VERSION}",
        sim.endpoint
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert("location", value);
    }
    headers.insert("retry-after", HeaderValue::from_static("1"));
    (StatusCode::ACCEPTED, headers).into_response()
}

/// One statement of a simulated container's script.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Sleep(Duration),
    Echo(String),
    Exit(i32),
    Callback(String),
}

/// Reads a command as the tiny shell the simulated containers speak.
fn script_steps(command: &[String], env: &HashMap<String, String>) -> Vec<Step> {
    let script = match command {
        [shell, flag, script, ..] if shell.ends_with("sh") && flag == "-c" => script.clone(),
        other => other.join(" "),
    };
    let expand = |text: &str| {
        let mut out = text.to_string();
        for (key, value) in env {
            if key != "SKIFF_CALLBACK_URL" {
                out = out
                    .replace(&format!("${{{key}}}"), value)
                    .replace(&format!("${key}"), value);
            }
        }
        out
    };
    let mut steps = Vec::new();
    for statement in script.split(['\n', ';']).flat_map(|s| s.split("&&")) {
        let statement = statement.trim();
        if let Some(rest) = statement.strip_prefix("sleep ") {
            if let Ok(seconds) = rest.trim().parse::<f64>() {
                steps.push(Step::Sleep(Duration::from_secs_f64(seconds.max(0.0))));
            }
        } else if let Some(rest) = statement.strip_prefix("echo ") {
            let text = rest.trim().trim_matches('"').trim_matches('\'');
            steps.push(Step::Echo(expand(text)));
        } else if let Some(rest) = statement.strip_prefix("exit") {
            steps.push(Step::Exit(rest.trim().parse().unwrap_or(0)));
            break;
        } else if statement == "false" {
            steps.push(Step::Exit(1));
            break;
        } else if statement.starts_with("wget") && statement.contains("SKIFF_CALLBACK_URL") {
            let body = statement
                .split_once("--post-data")
                .and_then(|(_, rest)| {
                    let rest = rest.trim_start();
                    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
                    rest[1..].split_once(quote).map(|(body, _)| body.to_string())
                })
                .unwrap_or_default();
            steps.push(Step::Callback(body));
        }
    }
    steps
}

/// The command with each Azure File share's mount path replaced by the share's folder
/// under `dir` (made if need be).
fn with_shares_mounted(
    dir: &std::path::Path,
    container: &Value,
    volumes: Option<&Value>,
    command: &[String],
) -> Vec<String> {
    let mut command = command.to_vec();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let (Some(name), Some(path)) = (mount["name"].as_str(), mount["mountPath"].as_str()) else {
            continue;
        };
        let share = volumes
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .and_then(|v| v["azureFile"]["shareName"].as_str());
        if let Some(share) = share {
            let folder = dir.join("shares").join(share);
            let _ = std::fs::create_dir_all(&folder);
            for word in &mut command {
                *word = word.replace(path, &folder.to_string_lossy());
            }
        }
    }
    command
}

/// Runs a group's command as a host process (see [`SimConfig::run_commands_in`]): its exit
/// code and output, or `None` if the group was deleted meanwhile (the process group is
/// then killed).
async fn run_for_real(
    sim: &Arc<Sim>,
    name: &str,
    generation: u64,
    dir: &std::path::Path,
    command: &[String],
    env: &HashMap<String, String>,
) -> Option<(i32, String)> {
    use tokio::io::AsyncReadExt;
    let Some((program, args)) = command.split_first() else {
        return Some((127, "no command".into()));
    };
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => return Some((127, format!("{program}: {err}"))),
    };
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes).await;
            }
            String::from_utf8_lossy(&bytes).to_string()
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let pid = child.id();
    loop {
        tokio::select! {
            status = child.wait() => {
                let code = status.ok().and_then(|s| s.code()).unwrap_or(137);
                let output = stdout.await.unwrap_or_default() + &stderr.await.unwrap_or_default();
                return Some((code, output));
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                let alive = sim.world().groups.get(name).is_some_and(|g| g.generation == generation);
                if !alive {
                    if let Some(pid) = pid {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    let _ = child.wait().await;
                    return None;
                }
            }
        }
    }
}

/// Drives one group: provisioning, the container's run, its end.
async fn lifecycle(sim: Arc<Sim>, name: String, generation: u64) {
    let (pending, creating) = {
        let world = sim.world();
        (world.config.pending, world.config.creating)
    };
    tokio::time::sleep(pending).await;
    let event = |name: &str, kind: &str, message: String| json!({"name": name, "type": kind, "count": 1, "firstTimestamp": now_text(), "lastTimestamp": now_text(), "message": message});
    let mut image = String::new();
    if !sim.transition(&name, generation, |g| {
        g.provisioning = "Creating";
        image = g.image.clone();
        g.events
            .push(event("Pulling", "Normal", format!("pulling image \"{}\"", g.image)));
    }) {
        return;
    }
    tokio::time::sleep(creating).await;
    let refused = sim.world().groups.get(&name).and_then(|g| g.pull_refused.clone());
    if let Some(words) = refused {
        sim.transition(&name, generation, |g| {
            g.provisioning = "Failed";
            g.group_state = "Failed";
            g.run.detail = "ErrImagePull".into();
            g.events.push(event(
                "Failed",
                "Warning",
                format!("Failed to pull image \"{}\": {words}", g.image),
            ));
        });
        return;
    }
    // Provisioning states that never become a running group by themselves (2026-05-01's
    // ContainerGroupProvisioningState), with the simulator's own words.
    for (marker, state, words) in [
        (
            "unhealthy",
            "Unhealthy",
            "The container group is unhealthy: its host stopped answering health checks",
        ),
        (
            "notaccessible",
            "NotAccessible",
            "The container group's resources are not accessible: its subnet or storage cannot be reached",
        ),
    ] {
        if image.contains(marker) {
            sim.transition(&name, generation, |g| {
                g.provisioning = state;
                g.group_state = state;
                g.events.push(event(state, "Warning", words.to_string()));
            });
            return;
        }
    }
    if image.contains("doesnotexist") {
        sim.transition(&name, generation, |g| {
            g.provisioning = "Failed";
            g.group_state = "Failed";
            g.run.detail = "ErrImagePull".into();
            g.events.push(event(
                "Failed",
                "Warning",
                format!("Failed to pull image \"{}\": manifest unknown", g.image),
            ));
        });
        return;
    }
    let mut steps = Vec::new();
    let mut callback_url = None;
    let mut real = None;
    let run_in = sim.world().config.run_commands_in.clone();
    if !sim.transition(&name, generation, |g| {
        g.provisioning = "Succeeded";
        g.group_state = "Running";
        g.run.state = "Running";
        g.run.start = Some(now_text());
        g.events.push(event(
            "Pulled",
            "Normal",
            format!("Successfully pulled image \"{}\"", g.image),
        ));
        g.events.push(event("Started", "Normal", "Started container".into()));
        steps = script_steps(&g.command, &g.env);
        callback_url = g.env.get("SKIFF_CALLBACK_URL").cloned();
        real = run_in.map(|dir| {
            let command = with_shares_mounted(&dir, &g.container, g.volumes.as_ref(), &g.command);
            (dir, command, g.env.clone())
        });
    }) {
        return;
    }
    if let Some((dir, command, env)) = real {
        steps.clear();
        let Some((code, output)) = run_for_real(&sim, &name, generation, &dir, &command, &env).await else {
            return;
        };
        steps.push(Step::Echo(output.trim_end_matches('\n').to_string()));
        steps.push(Step::Exit(code));
    }
    let mut code = 0;
    for step in steps {
        match step {
            Step::Sleep(pause) => tokio::time::sleep(pause).await,
            Step::Echo(text) => {
                if !sim.transition(&name, generation, |g| {
                    g.logs.push_str(&text);
                    g.logs.push('\n');
                }) {
                    return;
                }
            }
            Step::Exit(n) => {
                code = n;
                break;
            }
            Step::Callback(body) => {
                let Some(url) = callback_url.clone() else { continue };
                let answered = sim
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                sim.world().stats.callbacks.push((name.clone(), answered));
                if !(200..300).contains(&answered) {
                    // busybox wget fails on an error status, and so does `&&`-less scripts' exit.
                    code = 1;
                }
            }
        }
        let alive = sim
            .world()
            .groups
            .get(&name)
            .is_some_and(|g| g.generation == generation);
        if !alive {
            return;
        }
    }
    sim.transition(&name, generation, |g| {
        g.run.state = "Terminated";
        g.run.exit_code = Some(code);
        g.run.finish = Some(now_text());
        g.run.detail = if code == 0 { "Completed".into() } else { "Error".into() };
        g.group_state = if code == 0 { "Succeeded" } else { "Failed" };
        g.events.push(event("Killing", "Normal", "Killing container".into()));
        if g.logs.len() > STOPPED_LOG_BYTES {
            let cut = g.logs.len() - STOPPED_LOG_BYTES;
            g.logs = g.logs[cut..].to_string();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_as_a_tiny_shell() {
        let env = HashMap::from([("SKIFF_TASK".to_string(), "a/b".to_string())]);
        let steps = script_steps(
            &[
                "sh".into(),
                "-c".into(),
                "echo hi $SKIFF_TASK; sleep 0.5 && wget -q -O- --post-data '{\"result\":1}' \"$SKIFF_CALLBACK_URL\"; exit 3; echo never"
                    .into(),
            ],
            &env,
        );
        assert_eq!(
            steps,
            vec![
                Step::Echo("hi a/b".into()),
                Step::Sleep(Duration::from_millis(500)),
                Step::Callback("{\"result\":1}".into()),
                Step::Exit(3),
            ]
        );
    }

    #[test]
    fn windows_are_half_open() {
        let t = Instant::now();
        let times = vec![t, t + Duration::from_secs(1), t + Duration::from_secs(2)];
        assert_eq!(max_in_window(times.clone(), Duration::from_secs(1)), 1);
        assert_eq!(max_in_window(times, Duration::from_millis(1001)), 2);
    }
}
