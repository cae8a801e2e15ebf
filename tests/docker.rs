//! The docker runtime against a real Docker Engine, with the registry-free test image
//! `skiff-busybox:test` (built by `build_test_image` in scripts/services.sh).
//!
//! When no engine answers, these tests fail if `SKIFF_REQUIRE_SERVICES=1` (CI sets it)
//! and otherwise say loudly that they did not run; they never pass by skipping in CI.

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use skiff::runtime::docker::{DockerRuntime, LABEL_STATE_DIR};
use skiff::runtime::{
    ContainerSpec, ContainerState, LABEL_ATTEMPT, LABEL_ATTEMPT_ID, LABEL_TASK, Runtime, RuntimeError, RuntimeOptions,
};
use skiff::status::Reason;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const IMAGE: &str = "skiff-busybox:test";
const SETUP_HINT: &str = "start one with `source scripts/services.sh && ensure_docker && build_test_image`";

/// A runtime on a fresh state folder, and a raw client to check what the runtime did.
struct Engine {
    runtime: DockerRuntime,
    docker: Docker,
    state: tempfile::TempDir,
    /// Containers this test made; removed when the test ends, even when it fails.
    cleanup: Cleanup,
}

/// Each test gets its own state folder, so its containers are its own (the runtime
/// lists and watches only the containers of its state folder).
async fn engine(test: &str) -> Option<Engine> {
    engine_with(test, None).await
}

async fn engine_with(test: &str, default_network: Option<&str>) -> Option<Engine> {
    let required = std::env::var("SKIFF_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    let unavailable = |why: String| {
        if required {
            panic!("{test}: {why}; SKIFF_REQUIRE_SERVICES=1 makes this a failure ({SETUP_HINT})");
        }
        // Straight to stderr, past the harness's capture: a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {why} ({SETUP_HINT}; set SKIFF_REQUIRE_SERVICES=1 to fail instead)"
        );
        None
    };
    let state = tempfile::Builder::new()
        .prefix("skiff-docker-test-")
        .tempdir()
        .expect("tempdir");
    let runtime = DockerRuntime::connect(state.path(), default_network.map(String::from)).expect("connect");
    if let Err(err) = runtime.ping().await {
        return unavailable(format!("no Docker engine answers: {err}"));
    }
    let docker = match raw_client().await {
        Ok(docker) => docker,
        Err(err) => return unavailable(format!("no Docker engine answers: {err}")),
    };
    if docker.inspect_image(IMAGE).await.is_err() {
        return unavailable(format!("the test image {IMAGE} is missing"));
    }
    Some(Engine {
        runtime,
        docker,
        state,
        cleanup: Cleanup(Vec::new()),
    })
}

async fn raw_client() -> Result<Docker, bollard::errors::Error> {
    Docker::connect_with_local_defaults()?.negotiate_version().await
}

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        if names.is_empty() {
            return;
        }
        // Drop cannot await, and the test's runtime may be the one unwinding: use a
        // runtime of our own on a thread of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                let Ok(docker) = raw_client().await else { return };
                for name in names {
                    let options = RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    };
                    let _ = docker.remove_container(&name, Some(options)).await;
                }
            });
        })
        .join();
    }
}

impl Engine {
    /// A unique container name for this test run, removed when the test ends.
    fn name(&mut self, tag: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "skiff-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.cleanup.0.push(name.clone());
        name
    }

    /// Containers of exactly this name, as the engine lists them.
    async fn count(&self, name: &str) -> usize {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("name".to_string(), vec![format!("^/{name}$")])])),
            ..Default::default()
        };
        self.docker.list_containers(Some(options)).await.expect("list").len()
    }

    async fn id(&self, name: &str) -> String {
        let found = self.docker.inspect_container(name, None).await.expect("inspect");
        found.id.expect("an id")
    }

    async fn state(&self, name: &str) -> ContainerState {
        self.runtime.inspect(name).await.expect("inspect").state
    }

    /// Waits until the container has exited; its final state.
    async fn exited(&self, name: &str) -> ContainerState {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = self.state(name).await;
            if matches!(state, ContainerState::Exited { .. }) {
                return state;
            }
            assert!(Instant::now() < deadline, "{name} did not exit within 60 s: {state:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn running(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = self.state(name).await;
            if matches!(state, ContainerState::Running { .. }) {
                return;
            }
            assert!(Instant::now() < deadline, "{name} is not running after 60 s: {state:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spec(name: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        labels: BTreeMap::from([
            (LABEL_TASK.to_string(), format!("tests/{name}")),
            (LABEL_ATTEMPT.to_string(), "1".to_string()),
            (LABEL_ATTEMPT_ID.to_string(), "attempt-1".to_string()),
        ]),
        image: Some(IMAGE.to_string()),
        command: vec!["sh".into(), "-c".into()],
        args: vec![script.to_string()],
        env: Vec::new(),
        options: RuntimeOptions::Docker {
            network: Some("none".into()),
            mounts: Vec::new(),
            working_dir: None,
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exit_code_and_the_logs_are_kept_after_delete() {
    let Some(mut engine) = engine("an_exit_code_and_the_logs_are_kept_after_delete").await else {
        return;
    };
    let name = engine.name("exit");
    engine
        .runtime
        .ensure(&spec(&name, "echo hi; echo oops >&2; exit 3"))
        .await
        .expect("ensure");
    let ContainerState::Exited {
        exit_code,
        started_at,
        finished_at,
        message,
    } = engine.exited(&name).await
    else {
        unreachable!()
    };
    assert_eq!(exit_code, Some(3));
    let (started_at, finished_at) = (started_at.expect("startedAt"), finished_at.expect("finishedAt"));
    assert!(started_at <= finished_at, "{started_at} > {finished_at}");
    assert_eq!(message, None);

    let tail = engine.runtime.log_tail(&name).await.expect("log_tail").expect("a tail");
    assert!(tail.contains("hi\n") && tail.contains("oops\n"), "tail: {tail:?}");

    engine.runtime.delete(&name).await.expect("delete");
    assert_eq!(engine.state(&name).await, ContainerState::Absent);
    assert_eq!(engine.count(&name).await, 0);
    // Kept for `skiff logs` and logTail: stdout and stderr both.
    let tail = engine
        .runtime
        .log_tail(&name)
        .await
        .expect("log_tail")
        .expect("a tail after delete");
    assert!(
        tail.contains("hi\n") && tail.contains("oops\n"),
        "tail after delete: {tail:?}"
    );
    let saved = std::fs::read_to_string(engine.runtime.log_path(&name)).expect("the saved log");
    assert!(saved.contains("hi\n"), "saved: {saved:?}");
    assert_eq!(
        engine.runtime.log_path(&name),
        engine
            .state
            .path()
            .canonicalize()
            .unwrap()
            .join("logs")
            .join(format!("{name}.log"))
    );
    let output = engine
        .runtime
        .output(&name)
        .await
        .expect("output")
        .expect("some output");
    assert!(String::from_utf8_lossy(&output).contains("hi\n"));

    // forget drops what was kept.
    engine.runtime.forget("skiff-test-exit-").await.expect("forget");
    assert!(!engine.runtime.log_path(&name).exists());
    assert_eq!(engine.runtime.log_tail(&name).await.expect("log_tail"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn ensure_adopts_and_replaces_only_a_stale_attempt() {
    let Some(mut engine) = engine("ensure_adopts_and_replaces_only_a_stale_attempt").await else {
        return;
    };
    let name = engine.name("idem");
    let first = spec(&name, "sleep 300");
    engine.runtime.ensure(&first).await.expect("ensure");
    let id = engine.id(&name).await;
    engine.runtime.ensure(&first).await.expect("ensure again");
    assert_eq!(engine.count(&name).await, 1);
    assert_eq!(engine.id(&name).await, id, "the same container is adopted");
    let inspection = engine.runtime.inspect(&name).await.expect("inspect");
    assert_eq!(inspection.attempt_id.as_deref(), Some("attempt-1"));
    assert!(matches!(
        inspection.state,
        ContainerState::Running { started_at: Some(_) }
    ));

    // Same name, another attempt: the old container goes, a new one comes.
    let mut second = first.clone();
    second
        .labels
        .insert(LABEL_ATTEMPT_ID.to_string(), "attempt-2".to_string());
    engine
        .runtime
        .ensure(&second)
        .await
        .expect("ensure for the new attempt");
    assert_eq!(engine.count(&name).await, 1);
    assert_ne!(engine.id(&name).await, id, "the stale container was replaced");
    let inspection = engine.runtime.inspect(&name).await.expect("inspect");
    assert_eq!(inspection.attempt_id.as_deref(), Some("attempt-2"));

    engine.runtime.delete(&name).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_ensures_make_one_container() {
    let Some(mut engine) = engine("racing_ensures_make_one_container").await else {
        return;
    };
    let name = engine.name("race");
    let spec = spec(&name, "sleep 300");
    let results = futures_util::future::join_all((0..4).map(|_| engine.runtime.ensure(&spec))).await;
    for result in results {
        result.expect("every racing ensure succeeds (the losers adopt)");
    }
    assert_eq!(engine.count(&name).await, 1);
    engine.running(&name).await;
    engine.runtime.delete(&name).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_kills_a_running_container_and_is_idempotent() {
    let Some(mut engine) = engine("delete_kills_a_running_container_and_is_idempotent").await else {
        return;
    };
    let name = engine.name("del");
    engine
        .runtime
        .ensure(&spec(&name, "echo started; sleep 300"))
        .await
        .expect("ensure");
    engine.running(&name).await;
    let started = Instant::now();
    engine.runtime.delete(&name).await.expect("delete");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "delete took {:?}",
        started.elapsed()
    );
    assert_eq!(engine.state(&name).await, ContainerState::Absent);
    assert_eq!(engine.count(&name).await, 0);
    engine.runtime.delete(&name).await.expect("a second delete");
    let never = engine.name("never");
    engine
        .runtime
        .delete(&never)
        .await
        .expect("delete of a container that never was");
    assert_eq!(engine.state(&never).await, ContainerState::Absent);
    let saved = std::fs::read_to_string(engine.runtime.log_path(&name)).expect("the saved log");
    assert_eq!(saved, "started\n");

    // A paused container (which the engine will not kill) goes too, and soon.
    let paused = engine.name("paused");
    engine
        .runtime
        .ensure(&spec(&paused, "sleep 300"))
        .await
        .expect("ensure");
    engine.running(&paused).await;
    engine.docker.pause_container(&paused).await.expect("pause");
    let started = Instant::now();
    engine.runtime.delete(&paused).await.expect("delete");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "delete took {:?}",
        started.elapsed()
    );
    assert_eq!(engine.state(&paused).await, ContainerState::Absent);
}

#[tokio::test(flavor = "multi_thread")]
async fn env_working_dir_labels_and_network_are_applied() {
    let Some(mut engine) = engine_with("env_working_dir_labels_and_network_are_applied", Some("host")).await else {
        return;
    };
    let name = engine.name("env");
    let mut spec = spec(
        &name,
        r#"echo "foo=$FOO"; echo "index=$SKIFF_INDEX"; pwd; echo "args=$0 $1""#,
    );
    spec.args.extend(["zero".to_string(), "one".to_string()]);
    spec.env = vec![("FOO".into(), "bar baz".into()), ("SKIFF_INDEX".into(), "0".into())];
    spec.options = RuntimeOptions::Docker {
        network: None, // the runtime's default: host
        mounts: Vec::new(),
        working_dir: Some("/work/here".into()),
    };
    spec.memory_bytes = Some(64 * 1024 * 1024);
    spec.cpu = Some(0.5);
    engine.runtime.ensure(&spec).await.expect("ensure");
    let state = engine.exited(&name).await;
    assert!(
        matches!(state, ContainerState::Exited { exit_code: Some(0), .. }),
        "{state:?}"
    );
    let tail = engine.runtime.log_tail(&name).await.expect("log_tail").expect("a tail");
    assert_eq!(tail, "foo=bar baz\nindex=0\n/work/here\nargs=zero one\n");

    let found = engine.docker.inspect_container(&name, None).await.expect("inspect");
    let labels = found.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
    for (key, value) in &spec.labels {
        assert_eq!(labels.get(key), Some(value), "label {key}");
    }
    let owner = engine
        .state
        .path()
        .canonicalize()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(labels.get(LABEL_STATE_DIR), Some(&owner));
    let host = found.host_config.expect("host config");
    assert_eq!(host.network_mode.as_deref(), Some("host"));
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.auto_remove, Some(false));
    engine.runtime.delete(&name).await.expect("delete");

    // A network named in the spec wins over the default.
    let name = engine.name("net");
    let mut spec = self::spec(&name, "true");
    spec.options = RuntimeOptions::Docker {
        network: Some("none".into()),
        mounts: Vec::new(),
        working_dir: None,
    };
    engine.runtime.ensure(&spec).await.expect("ensure");
    let found = engine.docker.inspect_container(&name, None).await.expect("inspect");
    assert_eq!(found.host_config.and_then(|h| h.network_mode).as_deref(), Some("none"));
    engine.runtime.delete(&name).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_folders_are_mounted() {
    let Some(mut engine) = engine("host_folders_are_mounted").await else {
        return;
    };
    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::write(shared.path().join("in.txt"), "from the host\n").expect("write");
    let name = engine.name("mount");
    let mut spec = spec(&name, "cat /in/in.txt; echo written > /out/out.txt; touch /in/nope");
    spec.options = RuntimeOptions::Docker {
        network: Some("none".into()),
        mounts: vec![
            skiff::runtime::Mount {
                host_path: shared.path().to_path_buf(),
                mount_path: "/in".into(),
                read_only: true,
            },
            skiff::runtime::Mount {
                host_path: shared.path().to_path_buf(),
                mount_path: "/out".into(),
                read_only: false,
            },
        ],
        working_dir: None,
    };
    engine.runtime.ensure(&spec).await.expect("ensure");
    let state = engine.exited(&name).await;
    // `touch` on the read-only mount fails, so the script's last command fails.
    assert!(
        matches!(state, ContainerState::Exited { exit_code: Some(1), .. }),
        "{state:?}"
    );
    let tail = engine.runtime.log_tail(&name).await.expect("log_tail").expect("a tail");
    // The engine keeps stdout and stderr in the order it read them, not necessarily the
    // order they were written.
    assert!(tail.contains("from the host\n"), "tail: {tail:?}");
    assert!(tail.contains("Read-only file system"), "tail: {tail:?}");
    assert_eq!(
        std::fs::read_to_string(shared.path().join("out.txt")).expect("out.txt"),
        "written\n"
    );
    engine.runtime.delete(&name).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_that_cannot_be_had_fails_permanently_and_soon() {
    let Some(mut engine) = engine("an_image_that_cannot_be_had_fails_permanently_and_soon").await else {
        return;
    };
    let runtime = DockerRuntime::connect(engine.state.path(), None)
        .expect("connect")
        .with_pull_timeout(Duration::from_secs(30));
    let names = [engine.name("noimage"), engine.name("noimage")];
    let specs = names.clone().map(|name| {
        let mut spec = spec(&name, "true");
        spec.image = Some("skiff-no-such-image:nope".into());
        spec
    });
    let started = Instant::now();
    // An ensure given up on (its reconcile timed out) leaves the pull going, for the
    // next one to join or to learn from.
    let _ = tokio::time::timeout(Duration::from_millis(1), runtime.ensure(&specs[0])).await;
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(specs.iter().map(|spec| runtime.ensure(spec))),
    )
    .await
    .expect("ensure must not hang on an image that cannot be had");
    for result in results {
        match result {
            Err(RuntimeError::Permanent {
                reason: Reason::ImagePullFailed,
                message,
            }) => assert!(message.contains("skiff-no-such-image:nope"), "message: {message}"),
            other => panic!("expected a permanent ImagePullFailed, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
    for name in &names {
        assert_eq!(engine.state(name).await, ContainerState::Absent);
    }

    // A registry that never answers: the pull is cut at its time limit, and fails the
    // same way, saying why. (The engine runs on the host network; 127.0.0.1 is ours.)
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let impatient = DockerRuntime::connect(engine.state.path(), None)
        .expect("connect")
        .with_pull_timeout(Duration::from_secs(2));
    let mut hanging = specs[0].clone();
    hanging.image = Some(format!("127.0.0.1:{port}/skiff/hang:1"));
    let started = Instant::now();
    match impatient.ensure(&hanging).await {
        Err(RuntimeError::Permanent {
            reason: Reason::ImagePullFailed,
            message,
        }) => assert!(message.contains("within 2s"), "message: {message}"),
        other => panic!("expected a permanent ImagePullFailed, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_not_in_the_image_fails_permanently() {
    let Some(mut engine) = engine("a_command_not_in_the_image_fails_permanently").await else {
        return;
    };
    let name = engine.name("nocmd");
    let mut spec = spec(&name, "");
    spec.command = vec!["/no/such/program".into()];
    spec.args = Vec::new();
    for round in 0..2 {
        // Again after a restart: the created container is adopted, and fails the same way.
        match engine.runtime.ensure(&spec).await {
            Err(RuntimeError::Permanent {
                reason: Reason::CreateFailed,
                message,
            }) => assert!(message.contains("/no/such/program"), "message: {message}"),
            other => panic!("round {round}: expected a permanent CreateFailed, got {other:?}"),
        }
    }
    assert_eq!(engine.count(&name).await, 1);
    engine.runtime.delete(&name).await.expect("delete");
    assert_eq!(engine.state(&name).await, ContainerState::Absent);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_reports_an_exit() {
    let Some(mut engine) = engine("subscribe_reports_an_exit").await else {
        return;
    };
    let mut events = engine.runtime.subscribe().expect("the docker runtime reports changes");
    let name = engine.name("sub");
    engine
        .runtime
        .ensure(&spec(&name, "sleep 2; exit 7"))
        .await
        .expect("ensure");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = tokio::time::timeout(left, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no report of {name}'s exit within 60 s; saw {seen:?}"))
            .expect("the event stream stays open");
        seen.push(got.clone());
        if got == name
            && let ContainerState::Exited { exit_code, .. } = engine.state(&name).await
        {
            assert_eq!(exit_code, Some(7));
            break;
        }
    }
    // Removal is news too (a container deleted behind the controller's back).
    engine.runtime.delete(&name).await.expect("delete");
    assert!(
        report_within(&mut events, &name, 30).await,
        "no report of {name}'s removal within 30 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_finds_only_this_controllers_containers() {
    let Some(mut engine) = engine("list_finds_only_this_controllers_containers").await else {
        return;
    };
    let name = engine.name("list");
    let spec = spec(&name, "sleep 300");
    engine.runtime.ensure(&spec).await.expect("ensure");
    let listed = engine.runtime.list().await.expect("list");
    let found = listed.iter().find(|c| c.name == name).expect("listed by its labels");
    assert_eq!(found.labels.get(LABEL_TASK), Some(&format!("tests/{name}")));
    assert_eq!(
        found.labels.get(LABEL_ATTEMPT_ID).map(String::as_str),
        Some("attempt-1")
    );

    // Another controller (another state folder) on the same engine neither lists it nor
    // takes it over, even for another attempt.
    let other_state = tempfile::tempdir().expect("tempdir");
    let other = DockerRuntime::connect(other_state.path(), None).expect("connect");
    let listed = other.list().await.expect("list");
    assert!(listed.iter().all(|c| c.name != name), "another controller lists {name}");
    let mut theirs = spec.clone();
    theirs
        .labels
        .insert(LABEL_ATTEMPT_ID.to_string(), "attempt-9".to_string());
    let id = engine.id(&name).await;
    match other.ensure(&theirs).await {
        Err(RuntimeError::Transient(message)) => assert!(message.contains("another skiff controller"), "{message}"),
        result => panic!("expected a transient refusal, got {result:?}"),
    }
    assert_eq!(engine.id(&name).await, id, "the other controller left it alone");
    // For the other controller, the name holds no container of its own: nothing to
    // inspect, and nothing to delete.
    assert_eq!(
        other.inspect(&name).await.expect("inspect").state,
        ContainerState::Absent
    );
    other.delete(&name).await.expect("delete");
    assert_eq!(
        engine.id(&name).await,
        id,
        "the other controller's delete left it alone"
    );
    assert!(matches!(engine.state(&name).await, ContainerState::Running { .. }));

    engine.runtime.delete(&name).await.expect("delete");
    let listed = engine.runtime.list().await.expect("list");
    assert!(listed.iter().all(|c| c.name != name));
}

/// A unix-socket proxy to the real engine that can be cut and restored, to play an
/// engine restart without disturbing the engine other tests use.
struct Proxy {
    path: PathBuf,
    target: PathBuf,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    fn new(dir: &std::path::Path) -> Self {
        let target = match std::env::var("DOCKER_HOST") {
            Ok(host) if host.starts_with("unix://") => PathBuf::from(host.trim_start_matches("unix://")),
            _ => PathBuf::from("/var/run/docker.sock"),
        };
        let mut proxy = Proxy {
            path: dir.join("engine.sock"),
            target,
            serving: None,
        };
        proxy.start();
        proxy
    }

    fn start(&mut self) {
        let listener = tokio::net::UnixListener::bind(&self.path).expect("bind the proxy socket");
        let target = self.target.clone();
        self.serving = Some(tokio::spawn(async move {
            // Owned by this task: cutting the proxy (aborting it) drops every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        }));
    }

    /// Cuts every connection and refuses new ones, as an engine that went down.
    fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `name` is reported.
async fn reported(events: &mut tokio::sync::mpsc::UnboundedReceiver<String>, name: &str) {
    assert!(
        report_within(events, name, 60).await,
        "{name} was not reported within 60 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_reconnects_and_reports_what_it_missed() {
    let Some(mut engine) = engine("subscribe_reconnects_and_reports_what_it_missed").await else {
        return;
    };
    let sockets = tempfile::tempdir().expect("tempdir");
    let mut proxy = Proxy::new(sockets.path());
    // The same state folder as `engine.runtime` (so the same owner), through the proxy.
    let through_proxy = DockerRuntime::connect_to_socket(engine.state.path(), None, &proxy.path).expect("connect");
    let mut events = through_proxy.subscribe().expect("the docker runtime reports changes");

    let before = engine.name("before");
    through_proxy.ensure(&spec(&before, "sleep 300")).await.expect("ensure");
    reported(&mut events, &before).await;

    // The "engine" goes away: calls fail as transient, and a container finishes unseen.
    proxy.stop();
    match through_proxy.inspect(&before).await {
        Err(RuntimeError::Transient(_)) => {}
        other => panic!("expected a transient error while the engine is away, got {other:?}"),
    }
    let missed = engine.name("missed");
    engine
        .runtime
        .ensure(&spec(&missed, "echo missed; exit 4"))
        .await
        .expect("ensure");
    assert!(matches!(
        engine.exited(&missed).await,
        ContainerState::Exited { exit_code: Some(4), .. }
    ));
    // Long enough for the watcher to notice and back off a few times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while events.try_recv().is_ok() {}

    proxy.start();
    reported(&mut events, &missed).await;
    assert!(matches!(
        through_proxy.inspect(&missed).await.expect("inspect").state,
        ContainerState::Exited { exit_code: Some(4), .. }
    ));

    // And it follows events again.
    through_proxy.delete(&before).await.expect("delete");
    reported(&mut events, &before).await;
    through_proxy.delete(&missed).await.expect("delete");

    // The kept logs are readable also while the engine is away.
    proxy.stop();
    let tail = through_proxy
        .log_tail(&missed)
        .await
        .expect("log_tail from the kept copy");
    assert_eq!(tail.as_deref(), Some("missed\n"));
}

/// Whether the runtime's event stream names `name` within `secs` seconds.
async fn report_within(events: &mut tokio::sync::mpsc::UnboundedReceiver<String>, name: &str, secs: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match events.recv().await {
                Some(got) if got == name => return,
                Some(_) => {}
                None => panic!("the event stream closed"),
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_placement_names_the_engine_by_its_id_and_the_state_folder_as_owner() {
    let Some(engine) = engine("docker placement").await else {
        return;
    };
    let placement = engine.runtime.placement().await.expect("the engine answers");
    let info = engine.docker.info().await.expect("GET /info");
    assert_eq!(placement.engine_id, info.id.filter(|id| !id.is_empty()), "{placement}");
    let folder = std::fs::canonicalize(engine.state.path()).unwrap();
    assert_eq!(placement.owner.as_deref(), Some(folder.to_string_lossy().as_ref()));
    // The same engine under another state folder: its containers are out of reach (the
    // runtime neither adopts nor deletes another folder's), so it is another placement.
    let other = tempfile::tempdir().unwrap();
    let elsewhere = DockerRuntime::connect(other.path(), None).expect("connect");
    let theirs = elsewhere.placement().await.expect("the engine answers");
    assert_eq!(theirs.engine_id, placement.engine_id);
    assert_ne!(theirs, placement);
}
