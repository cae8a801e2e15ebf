//! The aci runtime against the ARM simulator (`support/arm_sim.rs`): the runtime's own
//! calls first, then the whole controller (library API, DirStore, AciRuntime) over many
//! tasks, events, throttling, and a controller stopped dead mid-run.
//!
//! Every test calls `arm_sim::identity()` first: it sets the managed-identity variables
//! of the process once, before anything else runs.

#[path = "support/arm_sim.rs"]
mod arm_sim;

use arm_sim::{ArmSim, Fault, FaultRule, LOCATION, RESOURCE_GROUP, SUBSCRIPTION, SimConfig};
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use serde_json::Value;
use skiff::api::{self, ApiState};
use skiff::azure::CredentialKind;
use skiff::callback::{CallbackSecret, Inbox};
use skiff::controller::{Callbacks, Controller, ControllerConfig, Outcome};
use skiff::manifest::RuntimeKind;
use skiff::runtime::aci::{AciConfig, AciCredential, AciRuntime, TAG_OWNER};
use skiff::runtime::{
    AzureFileMount, ContainerSpec, ContainerState, LABEL_ATTEMPT_ID, LABEL_TASK, Runtime, RuntimeError, RuntimeOptions,
};
use skiff::status::Reason;
use skiff::store::dir::DirStore;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn config(sim: &ArmSim, credential: AciCredential) -> AciConfig {
    let mut config = AciConfig::new(SUBSCRIPTION, RESOURCE_GROUP, LOCATION, credential);
    config.arm_endpoint = sim.endpoint.clone();
    config.poll_min = Duration::from_millis(50);
    config.poll_max = Duration::from_millis(250);
    config.max_wait = Duration::from_secs(10);
    config.provision_wait = Duration::from_secs(10);
    config.delete_wait = Duration::from_secs(10);
    config
}

fn managed() -> AciCredential {
    arm_sim::identity();
    AciCredential::Azure(CredentialKind::Managed)
}

fn runtime(sim: &ArmSim, state: &Path) -> AciRuntime {
    AciRuntime::new(state, config(sim, managed())).expect("an aci runtime")
}

fn spec(name: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        labels: BTreeMap::from([
            (LABEL_TASK.to_string(), format!("jobs/{name}")),
            (LABEL_ATTEMPT_ID.to_string(), "2026-11-21T10:00:00.000Z".to_string()),
        ]),
        image: Some("busybox".to_string()),
        command: vec!["sh".into(), "-c".into(), script.into()],
        args: Vec::new(),
        options: RuntimeOptions::Aci {
            azure_files: Vec::new(),
            location: None,
            extras: Default::default(),
        },
        env: vec![("SKIFF_TASK".into(), format!("jobs/{name}"))],
        ..Default::default()
    }
}

async fn wait_exited(rt: &AciRuntime, name: &str) -> ContainerState {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = rt.inspect(name).await.expect("inspect").state;
        if matches!(state, ContainerState::Exited { .. }) {
            return state;
        }
        assert!(Instant::now() < deadline, "{name} never exited: {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn permanent(result: Result<(), RuntimeError>) -> (Reason, String) {
    match result {
        Err(RuntimeError::Permanent { reason, message }) => (reason, message),
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_is_created_watched_to_its_exit_code_its_logs_kept_and_deleted() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let state = tempfile::tempdir().unwrap();
    let rt = runtime(&sim, state.path());
    let mut spec = spec(
        "skiff-one-00000001-1",
        "echo hello $SKIFF_TASK; echo world; sleep 0.2; exit 3",
    );
    spec.env.push(("MODE".into(), "fast".into()));
    spec.env.push(("API_KEY".into(), "s3cret".into()));
    spec.env.push((
        "SKIFF_CALLBACK_URL".into(),
        "http://127.0.0.1:1/v1/tasks/x/events?token=t".into(),
    ));
    spec.secret_env.insert("API_KEY".into());
    let mount = AzureFileMount {
        name: "share".into(),
        mount_path: "/out".into(),
        read_only: false,
        share_name: "results".into(),
        storage_account_name: "skiffdata".into(),
        storage_account_key_env: arm_sim::STORAGE_KEY_ENV.into(),
    };
    spec.options = RuntimeOptions::Aci {
        azure_files: vec![mount],
        location: None,
        extras: Default::default(),
    };
    spec.cpu = Some(0.5);
    spec.memory_bytes = Some(512 << 20);

    rt.ensure(&spec).await.expect("ensure");
    let view = sim.view(&spec.name).expect("the group exists");
    let text = view.to_string();
    assert!(!text.contains("s3cret"), "secureValue never comes back: {text}");
    assert!(!text.contains("token=t"), "the callback URL is a secret too");
    assert!(!text.contains("c2ltdWxhdGVk"), "nor the storage key");
    let container = &view["properties"]["containers"][0]["properties"];
    assert_eq!(container["resources"]["requests"]["cpu"], 0.5);
    assert_eq!(container["resources"]["requests"]["memoryInGB"], 0.5);
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/out");
    assert_eq!(view["properties"]["volumes"][0]["azureFile"]["shareName"], "results");
    assert_eq!(view["properties"]["restartPolicy"], "Never");
    assert_eq!(view["properties"]["osType"], "Linux");
    let env = container["environmentVariables"].as_array().unwrap();
    let mode = env.iter().find(|v| v["name"] == "MODE").unwrap();
    assert_eq!(mode["value"], "fast");
    let tags = &view["tags"];
    assert_eq!(tags[LABEL_TASK], "jobs/skiff-one-00000001-1");
    assert_eq!(tags[TAG_OWNER], rt.owner());
    assert!(
        !tags.to_string().contains("API_KEY"),
        "secret names are not tags either: {tags}"
    );

    match wait_exited(&rt, &spec.name).await {
        ContainerState::Exited {
            exit_code,
            started_at,
            finished_at,
            ..
        } => {
            assert_eq!(exit_code, Some(3));
            assert!(started_at.is_some() && finished_at.is_some());
        }
        other => panic!("{other:?}"),
    }
    let tail = rt.log_tail(&spec.name).await.unwrap().expect("logs");
    assert!(tail.contains("hello jobs/skiff-one-00000001-1\nworld"), "{tail:?}");

    rt.delete(&spec.name).await.expect("delete");
    assert_eq!(rt.inspect(&spec.name).await.unwrap().state, ContainerState::Absent);
    assert!(sim.live().is_empty());
    let kept = std::fs::read_to_string(rt.log_path(&spec.name)).expect("logs kept before the delete");
    assert!(kept.contains("world"), "{kept:?}");
    let tail = rt.log_tail(&spec.name).await.unwrap().expect("logs after deletion");
    assert!(tail.contains("hello"));
    // Deleting again is fine.
    rt.delete(&spec.name).await.expect("delete is idempotent");

    let stats = sim.stats();
    assert_eq!(stats.count("PUT create"), 1);
    assert_eq!(stats.count("DELETE"), 1);
    let limits = rt.rate_limit_remaining();
    for header in [
        "x-ms-ratelimit-remaining-subscription-reads",
        "x-ms-ratelimit-remaining-subscription-writes",
        "x-ms-ratelimit-remaining-subscription-deletes",
        "x-ms-ratelimit-remaining-subscription-resource-requests-pt5m",
        "x-ms-ratelimit-remaining-subscription-resource-requests-pt1h",
    ] {
        assert!(limits.contains_key(header), "{header} in {limits:?}");
    }
    assert_eq!(
        limits["x-ms-ratelimit-remaining-subscription-resource-requests-pt5m"],
        99
    );
    assert_eq!(
        rt.create_tokens_available(),
        vec![("100/5m".to_string(), 99), ("300/1h".to_string(), 299)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_identity_tokens_come_from_the_identity_endpoint_and_are_cached() {
    let identity = arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let state = tempfile::tempdir().unwrap();
    let rt = runtime(&sim, state.path());
    let before = identity.issued();
    rt.check_credential().await.expect("a token from the identity endpoint");
    for i in 0..5 {
        rt.inspect(&format!("skiff-none-{i}")).await.unwrap();
    }
    let stats = sim.stats();
    assert_eq!(stats.tokens_seen.len(), 1, "one token, cached: {:?}", stats.tokens_seen);
    assert!(stats.tokens_seen.iter().all(|t| t.starts_with("sim-token-mi-")));
    assert!(identity.issued() > before);
}

/// A credential that counts its calls and issues short-lived tokens.
#[derive(Debug)]
struct CountingCredential {
    lifetime: Duration,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl TokenCredential for CountingCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let lifetime = azure_core::time::Duration::milliseconds(self.lifetime.as_millis() as i64);
        Ok(AccessToken::new(
            format!("{}test-{n}", arm_sim::TOKEN_PREFIX),
            azure_core::time::OffsetDateTime::now_utc() + lifetime,
        ))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_refreshed_before_they_expire_and_after_a_401() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let state = tempfile::tempdir().unwrap();
    let credential = Arc::new(CountingCredential {
        lifetime: Duration::from_secs(2),
        calls: AtomicUsize::new(0),
    });
    let rt = AciRuntime::new(state.path(), config(&sim, AciCredential::Custom(credential.clone()))).unwrap();
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_millis(2600) {
        rt.inspect("skiff-none-1").await.unwrap();
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fetched = credential.calls.load(Ordering::SeqCst);
    // A 2 s token is fetched again after 1 s (half its life): 3 or 4 fetches, not one per call.
    assert!((3..=5).contains(&fetched), "{fetched} fetches for {calls} calls");
    assert_eq!(sim.stats().unauthorized, 0, "no call went out with an expired token");

    sim.revoke_tokens();
    let before = credential.calls.load(Ordering::SeqCst);
    rt.inspect("skiff-none-1").await.expect("a fresh token after the 401");
    assert_eq!(credential.calls.load(Ordering::SeqCst), before + 1);
    assert_eq!(sim.stats().unauthorized, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn ensure_adopts_a_group_by_name_and_never_creates_it_twice() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let state = tempfile::tempdir().unwrap();
    let rt = runtime(&sim, state.path());
    let spec = spec("skiff-adopt-00000002-1", "sleep 1");
    rt.ensure(&spec).await.unwrap();
    rt.ensure(&spec).await.unwrap();
    // A restarted controller (a new runtime on the same state folder) adopts it too.
    let again = runtime(&sim, state.path());
    assert_eq!(again.owner(), rt.owner());
    again.ensure(&spec).await.unwrap();
    let stats = sim.stats();
    assert_eq!(stats.count("PUT create"), 1, "{:?}", stats.by_kind);
    assert_eq!(stats.count("PUT update"), 0);
    assert_eq!(stats.created_per_name[&spec.name], 1);

    // The same name for another attempt: the stale group goes, a new one is made.
    let mut next = spec.clone();
    next.labels
        .insert(LABEL_ATTEMPT_ID.into(), "2026-11-21T11:00:00.000Z".into());
    rt.ensure(&next).await.unwrap();
    let inspection = rt.inspect(&next.name).await.unwrap();
    assert_eq!(inspection.attempt_id.as_deref(), Some("2026-11-21T11:00:00.000Z"));
    assert_eq!(sim.stats().count("PUT create"), 2);
    rt.delete(&next.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_of_others_are_never_seen_adopted_or_deleted_and_listings_follow_next_links() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig {
        page_size: 2,
        ..SimConfig::default()
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let rt = runtime(&sim, state.path());
    for i in 0..3 {
        rt.ensure(&spec(&format!("skiff-mine-0000000{i}-1"), "sleep 5"))
            .await
            .unwrap();
    }
    sim.put_foreign(
        "skiff-theirs-00000009-1",
        &[(LABEL_TASK, "jobs/theirs"), (TAG_OWNER, "another")],
    );
    sim.put_foreign("unrelated", &[]);
    let mut listed: Vec<String> = rt.list().await.unwrap().into_iter().map(|c| c.name).collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "skiff-mine-00000000-1",
            "skiff-mine-00000001-1",
            "skiff-mine-00000002-1"
        ]
    );
    assert!(sim.stats().count("LIST") >= 3, "three pages of two");

    let theirs = "skiff-theirs-00000009-1";
    assert_eq!(rt.inspect(theirs).await.unwrap().state, ContainerState::Absent);
    rt.delete(theirs).await.unwrap();
    assert!(
        sim.live().contains(&theirs.to_string()),
        "another's group is left alone"
    );
    match rt.ensure(&spec(theirs, "true")).await {
        Err(RuntimeError::Transient(message)) => assert!(message.contains("another skiff controller"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_is_waited_out_and_server_errors_are_transient() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let state = tempfile::tempdir().unwrap();
    let rt = runtime(&sim, state.path());
    // Short Retry-Afters are waited out inside the call.
    sim.inject(FaultRule {
        method: None,
        fault: Fault::Throttle { retry_after: 1 },
        times: 2,
    });
    let started = Instant::now();
    rt.ensure(&spec("skiff-throttled-00000001-1", "true"))
        .await
        .expect("waited out");
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    // A 5xx is a transient error for the controller to retry.
    sim.inject(FaultRule {
        method: Some(axum::http::Method::PUT),
        fault: Fault::Status(500),
        times: 1,
    });
    let failing = spec("skiff-failing-00000002-1", "true");
    assert!(matches!(rt.ensure(&failing).await, Err(RuntimeError::Transient(_))));
    rt.ensure(&failing).await.expect("the retry succeeds");
    sim.inject(FaultRule {
        method: Some(axum::http::Method::GET),
        fault: Fault::Status(503),
        times: 1,
    });
    assert!(matches!(
        rt.inspect(&failing.name).await,
        Err(RuntimeError::Transient(_))
    ));
    // A long Retry-After is not waited out: the call says so, and no call of this runtime
    // goes to ARM before it has passed.
    sim.inject(FaultRule {
        method: None,
        fault: Fault::Throttle { retry_after: 60 },
        times: 1,
    });
    match rt.inspect(&failing.name).await {
        Err(RuntimeError::Transient(message)) => assert!(message.contains("throttl"), "{message}"),
        other => panic!("{other:?}"),
    }
    let requests = sim.stats().requests;
    match rt.inspect(&failing.name).await {
        Err(RuntimeError::Transient(message)) => assert!(message.contains("Retry-After"), "{message}"),
        other => panic!("{other:?}"),
    }
    let stats = sim.stats();
    assert_eq!(stats.requests, requests, "held back by the gate");
    assert!(stats.early_retries.is_empty(), "{:?}", stats.early_retries);
    assert_eq!(stats.created.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_failed_and_failed_pulls_are_permanent_with_arms_words() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig {
        max_cpu: 2.0,
        ..SimConfig::default()
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let rt = runtime(&sim, state.path());
    let mut big = spec("skiff-big-00000001-1", "true");
    big.cpu = Some(3.0);
    let (reason, message) = permanent(rt.ensure(&big).await);
    assert_eq!(reason, Reason::CreateFailed);
    assert!(message.contains("ProviderFailed"), "{message}");
    assert!(sim.live().is_empty());

    // Beyond what ACI ever gives: refused before any call.
    let puts = sim.stats().count("PUT create");
    let mut huge = spec("skiff-huge-00000002-1", "true");
    huge.cpu = Some(8.0);
    let (_, message) = permanent(rt.ensure(&huge).await);
    assert!(message.contains("at most 4"), "{message}");
    assert_eq!(sim.stats().count("PUT create"), puts, "no call was made");

    let mut missing = spec("skiff-pull-00000003-1", "true");
    missing.image = Some("example.invalid/doesnotexist:1".into());
    // As the controller does: `ensure` again while the group is still being made (it
    // hands back early when ACI says something new, e.g. Pulling).
    let mut outcome = rt.ensure(&missing).await;
    for _ in 0..10 {
        if outcome.is_err() || rt.inspect(&missing.name).await.expect("inspect").state != ContainerState::Created {
            break;
        }
        outcome = rt.ensure(&missing).await;
    }
    let (reason, message) = permanent(outcome);
    assert_eq!(reason, Reason::ImagePullFailed);
    assert!(message.contains("Failed to pull image"), "{message}");
    rt.delete(&missing.name).await.expect("the failed group is deleted");
    assert!(sim.live().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_create_bucket_never_lets_more_creates_through_than_the_quota_in_any_window() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let state = tempfile::tempdir().unwrap();
    let mut config = config(&sim, managed());
    config.create_quota = "3/1s,5/2s".parse().unwrap();
    let rt = Arc::new(AciRuntime::new(state.path(), config).unwrap());
    let started = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..12 {
        let rt = rt.clone();
        creates.spawn(async move { rt.ensure(&spec(&format!("skiff-q-{i:08}-1"), "true")).await });
    }
    while let Some(done) = creates.join_next().await {
        done.unwrap().expect("every create gets its token in time");
    }
    let stats = sim.stats();
    assert_eq!(stats.created.len(), 12);
    assert!(
        stats.max_creates_in(Duration::from_secs(1)) <= 3,
        "{}",
        stats.max_creates_in(Duration::from_secs(1))
    );
    assert!(
        stats.max_creates_in(Duration::from_secs(2)) <= 5,
        "{}",
        stats.max_creates_in(Duration::from_secs(2))
    );
    // 12 creates at 5 per 2 s: the last ones wait at least two windows.
    assert!(started.elapsed() >= Duration::from_secs(4), "{:?}", started.elapsed());

    // A wait longer than max_wait is a transient error that says when.
    let mut impatient = self::config(&sim, managed());
    impatient.create_quota = "1/1h".parse().unwrap();
    impatient.max_wait = Duration::from_millis(100);
    let other = tempfile::tempdir().unwrap();
    let rt = AciRuntime::new(other.path(), impatient).unwrap();
    rt.ensure(&spec("skiff-first-00000001-1", "true")).await.unwrap();
    match rt.ensure(&spec("skiff-second-00000002-1", "true")).await {
        Err(RuntimeError::Transient(message)) => assert!(message.contains("create quota (1/1h)"), "{message}"),
        other => panic!("{other:?}"),
    }
}

// ---- The controller over the aci runtime -------------------------------------------

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let temp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, &path).unwrap();
}

fn task(root: &Path, name: &str, script: &str, extra: &str) {
    write(
        root,
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  runtime: aci\n  image: busybox\n  command: [sh, -c, '{}']\n{extra}",
            script.replace('\'', "''")
        ),
    );
}

fn status(root: &Path, task: &str) -> Value {
    let bytes = std::fs::read(root.join(format!("{task}.status.json"))).unwrap_or_else(|err| panic!("{task}: {err}"));
    serde_json::from_slice(&bytes).unwrap()
}

fn controller(root: &Path, rt: Arc<AciRuntime>, max_running: usize, once: bool) -> Controller {
    let store = DirStore::new(root).expect("a dir store");
    let config = ControllerConfig {
        default_runtime: RuntimeKind::Aci,
        max_running: Some(max_running),
        once,
        ..ControllerConfig::default()
    };
    Controller::new(Arc::new(store), vec![rt as Arc<dyn Runtime>], config)
}

/// A controller serving the callback route, as `skiff controller --listen` does.
async fn controller_with_api(root: &Path, rt: Arc<AciRuntime>, max_running: usize) -> Controller {
    let state = root.join(".skiff");
    std::fs::create_dir_all(&state).unwrap();
    let store: Arc<dyn skiff::store::Store> = Arc::new(DirStore::new(root).unwrap());
    let config = ControllerConfig {
        default_runtime: RuntimeKind::Aci,
        max_running: Some(max_running),
        once: true,
        ..ControllerConfig::default()
    };
    let controller = Controller::new(store.clone(), vec![rt as Arc<dyn Runtime>], config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callbacks = Callbacks {
        base_url: format!("http://{}", listener.local_addr().unwrap()),
        secret: Arc::new(CallbackSecret::load_or_create(&state).unwrap()),
        inbox: Arc::new(Inbox::new(&state).unwrap()),
    };
    let metrics = controller.metrics();
    let health = controller.health();
    let (controller, control) = controller.with_api(Some(callbacks.clone()));
    let router = api::router(ApiState {
        store,
        secret: callbacks.secret.clone(),
        inbox: callbacks.inbox.clone(),
        metrics,
        health,
        control,
        api_token: None,
        heartbeats: controller.heartbeats(),
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    controller
}

async fn run(controller: Controller, limit: Duration) -> Outcome {
    tokio::time::timeout(limit, controller.run(CancellationToken::new()))
        .await
        .expect("the controller finished in time")
        .expect("the controller ran")
}

fn controller_config(sim: &ArmSim, quota: &str) -> AciConfig {
    let mut config = config(sim, managed());
    config.create_quota = quota.parse().unwrap();
    config.max_wait = Duration::from_secs(30);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_tasks_keep_to_max_running_and_the_create_quota_and_all_succeed() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..100 {
        task(
            root,
            &format!("t{i:03}"),
            "echo out-$SKIFF_TASK; sleep 0.3",
            "  completion: {pollInterval: 200ms}\n",
        );
    }
    let rt = Arc::new(AciRuntime::new(&root.join(".skiff"), controller_config(&sim, "10/2s")).unwrap());
    let outcome = run(controller(root, rt, 20, true), Duration::from_secs(240)).await;
    assert_eq!(outcome, Outcome::AllSucceeded);
    for i in 0..100 {
        let task = format!("t{i:03}");
        let status = status(root, &task);
        assert_eq!(status["phase"], "Succeeded", "{status:#}");
        assert_eq!(status["attempts"].as_array().unwrap().len(), 1, "{status:#}");
        assert_eq!(status["attempts"][0]["runtime"], "aci");
        assert_eq!(status["attempts"][0]["exitCode"], 0);
        let tail = status["logTail"].as_str().unwrap_or_default();
        assert!(
            tail.contains(&format!("out-{task}")),
            "{task}: logs read before the delete: {tail:?}"
        );
    }
    let stats = sim.stats();
    assert!(stats.max_live <= 20, "at most 20 live groups, saw {}", stats.max_live);
    assert!(stats.max_live >= 10, "the slots were used: {}", stats.max_live);
    assert_eq!(stats.created.len(), 100);
    let window = Duration::from_secs(2);
    assert!(
        stats.max_creates_in(window) <= 10,
        "{} creates in 2 s",
        stats.max_creates_in(window)
    );
    assert!(stats.max_create_attempts_in(window) <= 10);
    assert!(stats.created_per_name.values().all(|n| *n == 1), "one 201 per group");
    assert!(sim.live().is_empty(), "every group deleted: {:?}", sim.live());
    assert_eq!(stats.deleted.len(), 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn event_mode_through_a_simulated_callback_and_an_exit_without_one() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let event = "  completion: {mode: event, pollInterval: 300ms}\n";
    task(
        root,
        "calls",
        "sleep 0.2; wget -q -O- --post-data '{\"result\":{\"frames\":7}}' \"$SKIFF_CALLBACK_URL\"; sleep 30",
        event,
    );
    task(root, "silent", "sleep 0.2; exit 0", event);
    let rt = Arc::new(AciRuntime::new(&root.join(".skiff"), controller_config(&sim, "10/1s")).unwrap());
    let outcome = run(controller_with_api(root, rt, 5).await, Duration::from_secs(60)).await;
    assert_eq!(outcome, Outcome::SomeFailed);
    let calls = status(root, "calls");
    assert_eq!(calls["phase"], "Succeeded", "{calls:#}");
    assert_eq!(calls["attempts"][0]["completedBy"], "event");
    assert_eq!(calls["result"]["frames"], 7);
    let silent = status(root, "silent");
    assert_eq!(silent["phase"], "Failed", "{silent:#}");
    assert_eq!(silent["attempts"][0]["reason"], "ExitedWithoutEvent");
    let stats = sim.stats();
    assert_eq!(stats.callbacks.len(), 1);
    assert_eq!(stats.callbacks[0].1, 202);
    assert!(sim.live().is_empty(), "{:?}", sim.live());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_storm_and_5xx_answers_are_retried_without_using_up_retries() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..10 {
        task(
            root,
            &format!("s{i}"),
            "echo ok; sleep 0.2",
            "  completion: {pollInterval: 200ms}\n",
        );
    }
    sim.inject(FaultRule {
        method: None,
        fault: Fault::Throttle { retry_after: 1 },
        times: 8,
    });
    sim.inject(FaultRule {
        method: Some(axum::http::Method::PUT),
        fault: Fault::Status(500),
        times: 3,
    });
    sim.inject(FaultRule {
        method: Some(axum::http::Method::GET),
        fault: Fault::Status(503),
        times: 3,
    });
    sim.inject(FaultRule {
        method: Some(axum::http::Method::DELETE),
        fault: Fault::Status(502),
        times: 2,
    });
    let rt = Arc::new(AciRuntime::new(&root.join(".skiff"), controller_config(&sim, "10/1s")).unwrap());
    let outcome = run(controller(root, rt, 5, true), Duration::from_secs(120)).await;
    assert_eq!(outcome, Outcome::AllSucceeded);
    for i in 0..10 {
        let status = status(root, &format!("s{i}"));
        assert_eq!(status["phase"], "Succeeded", "{status:#}");
        assert_eq!(
            status["attempts"].as_array().unwrap().len(),
            1,
            "no attempt counted: {status:#}"
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.throttled, 8);
    assert_eq!(stats.faults_answered, 16);
    assert!(
        stats.early_retries.is_empty(),
        "Retry-After honoured: {:?}",
        stats.early_retries
    );
    assert!(stats.created_per_name.values().all(|n| *n == 1));
    assert!(sim.live().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_failed_fails_the_attempt_with_arms_message() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig {
        max_cpu: 2.0,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    task(root, "big", "true", "  resources: {cpu: 3}\n");
    let rt = Arc::new(AciRuntime::new(&root.join(".skiff"), controller_config(&sim, "10/1s")).unwrap());
    let outcome = run(controller(root, rt, 5, true), Duration::from_secs(60)).await;
    assert_eq!(outcome, Outcome::SomeFailed);
    let status = status(root, "big");
    assert_eq!(status["phase"], "Failed", "{status:#}");
    assert_eq!(status["attempts"][0]["reason"], "CreateFailed");
    assert!(
        status["message"].as_str().unwrap().contains("ProviderFailed"),
        "{status:#}"
    );
    assert!(sim.live().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_stopped_dead_mid_run_and_started_again_creates_each_group_once() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    for i in 0..40 {
        task(
            &root,
            &format!("r{i:02}"),
            "echo run; sleep 0.5",
            "  completion: {pollInterval: 200ms}\n",
        );
    }
    let state = root.join(".skiff");
    for round in 0..2 {
        let rt = Arc::new(AciRuntime::new(&state, controller_config(&sim, "20/1s")).unwrap());
        let first = controller(&root, rt, 10, true);
        let running = tokio::spawn(first.run(CancellationToken::new()));
        let target = 10 + round * 12;
        let deadline = Instant::now() + Duration::from_secs(60);
        while sim.stats().created.len() < target {
            assert!(Instant::now() < deadline, "creates stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Dropped wherever it is, between any two awaits: the in-process SIGKILL.
        running.abort();
        let _ = running.await;
    }
    let rt = Arc::new(AciRuntime::new(&state, controller_config(&sim, "20/1s")).unwrap());
    let outcome = run(controller(&root, rt, 10, true), Duration::from_secs(120)).await;
    assert_eq!(outcome, Outcome::AllSucceeded);
    let stats = sim.stats();
    for (name, creates) in &stats.created_per_name {
        assert_eq!(*creates, 1, "{name} was answered 201 {creates} times");
    }
    assert_eq!(stats.created.len(), 40);
    for i in 0..40 {
        let status = status(&root, &format!("r{i:02}"));
        assert_eq!(status["phase"], "Succeeded", "{status:#}");
        assert_eq!(status["attempts"].as_array().unwrap().len(), 1, "{status:#}");
    }
    assert!(sim.live().is_empty(), "{:?}", sim.live());
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_of_tasks_that_no_longer_exist_are_deleted_at_resync() {
    arm_sim::identity();
    let sim = ArmSim::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rt = Arc::new(AciRuntime::new(&root.join(".skiff"), controller_config(&sim, "10/1s")).unwrap());
    let orphan = spec("skiff-gone-0000000a-1", "sleep 60");
    rt.ensure(&orphan).await.unwrap();
    sim.put_foreign(
        "skiff-theirs-0000000b-1",
        &[(LABEL_TASK, "jobs/theirs"), (TAG_OWNER, "another")],
    );
    let controller = controller(root, rt, 5, false);
    let stop = CancellationToken::new();
    let running = tokio::spawn(controller.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.live().contains(&orphan.name) {
        assert!(Instant::now() < deadline, "the orphan was never deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = running.await;
    assert_eq!(
        sim.live(),
        ["skiff-theirs-0000000b-1"],
        "another controller's group stays"
    );
}
