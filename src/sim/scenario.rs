//! Scenarios: the simulator's world with chosen tasks, limits and container behaviour
//! instead of a seed's, run by the real controller with `--once` on tokio's paused
//! clock. Tests of pipeline logic (retries and backoff, limits and their order, fan-out
//! lanes, dependencies) run here in milliseconds, exactly, with every invariant the
//! simulator checks; the end-to-end tests keep what needs the real parts (processes,
//! the engine, Azurite, SIGKILL).

use super::clock::SimClock;
use super::runtime::FakeRuntime;
use super::store::FakeStore;
use super::world::{Behaviour, Creation, Manifest, World};
use crate::controller::{Controller, ControllerConfig, Outcome};
use crate::manifest::RuntimeKind;
use crate::status::TaskStatus;
use crate::store::StoreEvent;
use crate::task::TaskKey;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a scenario sets up.
pub struct Scenario {
    pub config: ControllerConfig,
    /// (task key, manifest YAML), written before the controller starts, in this order.
    pub manifests: Vec<(String, String)>,
    pub behaviour: Behaviour,
    /// The most simulated time the run may take.
    pub limit: Duration,
    /// Serve the callback route (what `--listen` gives): event completion and heartbeats
    /// validate, and containers get their URLs (nothing calls them here).
    pub api: bool,
}

/// What came of it.
#[derive(Debug)]
pub struct Ran {
    /// `None`: `--once` had not ended within the limit.
    pub outcome: Option<Outcome>,
    pub statuses: BTreeMap<TaskKey, TaskStatus>,
    pub creations: Vec<Creation>,
    /// Every status written, in order.
    pub writes: Vec<(TaskKey, TaskStatus)>,
    /// The most containers that existed at once.
    pub peak: usize,
    /// Invariants broken on the way (none, or the test fails).
    pub violations: Vec<String>,
}

impl Ran {
    pub fn status(&self, key: &str) -> &TaskStatus {
        match TaskKey::parse(key).ok().and_then(|key| self.statuses.get(&key)) {
            Some(status) => status,
            None => panic!("no status for {key}: {:?}", self.statuses.keys().collect::<Vec<_>>()),
        }
    }

    /// The value of `name` in the environment of each container made, in order.
    pub fn env_of_creations(&self, name: &str) -> Vec<String> {
        self.creations
            .iter()
            .map(|c| c.env.get(name).cloned().unwrap_or_default())
            .collect()
    }
}

/// A behaviour: every container runs `runs` and exits with `exit_code`.
pub fn every_container(runs: Duration, exit_code: i32) -> Behaviour {
    Arc::new(move |_| (runs, exit_code))
}

/// The value of one of a container's environment variables.
pub fn env(spec: &crate::runtime::ContainerSpec, name: &str) -> String {
    spec.env
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

impl Scenario {
    pub fn new(config: ControllerConfig, behaviour: Behaviour) -> Self {
        Scenario {
            config: ControllerConfig { once: true, ..config },
            manifests: Vec::new(),
            behaviour,
            limit: Duration::from_secs(3600),
            api: false,
        }
    }

    /// A manifest whose spec is `spec` (YAML lines under `spec:`, indented by two).
    pub fn task(mut self, key: &str, spec: &str) -> Self {
        let text = format!("apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [work]\n{spec}");
        self.manifests.push((key.to_string(), text));
        self
    }

    pub fn run(self) -> Ran {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => panic!("cannot build a runtime: {err}"),
        };
        runtime.block_on(self.play())
    }

    async fn play(self) -> Ran {
        let clock = Arc::new(SimClock::new());
        let world = World::new(0, clock);
        let now = world.now();
        {
            let mut state = world.lock();
            state.behaviour = Some(self.behaviour.clone());
            state.creations = Some(Vec::new());
            state.writes = Some(Vec::new());
            let process_cap = self.config.max_running_per_runtime.get(&RuntimeKind::Process).copied();
            state.max_running = match (self.config.max_running, process_cap) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            state.semaphores = self.config.semaphores.clone();
            for (key, text) in &self.manifests {
                let key = match TaskKey::parse(key) {
                    Ok(key) => key,
                    Err(err) => panic!("{key}: {err}"),
                };
                let version = state.next_version;
                state.next_version += 1;
                let (parallelism, semaphores) = limits_of(&key, text.as_bytes()).unwrap_or((usize::MAX, Vec::new()));
                state.manifests.insert(
                    key.clone(),
                    Manifest {
                        bytes: text.clone().into_bytes(),
                        version,
                        // Written a while ago: not one still being written.
                        modified: now - chrono::Duration::minutes(1),
                        parallelism,
                        semaphores,
                    },
                );
                state.notify_store(StoreEvent::Changed(key));
            }
        }
        let epoch = world.lock().born();
        let store = Arc::new(FakeStore::new(world.clone(), epoch, None));
        let runtime = Arc::new(FakeRuntime::new(world.clone(), epoch));
        let mut controller =
            Controller::new(store, vec![runtime], self.config.clone()).deterministic(world.clock.clone(), 0);
        // The inbox is a folder: the scenario's own, removed after the run.
        let inbox_dir = self.api.then(|| {
            std::env::temp_dir().join(format!(
                "skiff-scenario-{}-{:x}",
                std::process::id(),
                rand::random::<u64>()
            ))
        });
        let mut _control = None;
        if let Some(dir) = &inbox_dir
            && let Ok(inbox) = crate::callback::Inbox::new(dir)
        {
            let callbacks = crate::controller::Callbacks {
                base_url: "http://127.0.0.1:1".into(),
                secret: Arc::new(crate::callback::CallbackSecret::from_key(vec![7; 32])),
                inbox: Arc::new(inbox),
            };
            let (with_api, control) = controller.with_api(Some(callbacks));
            controller = with_api;
            _control = Some(control);
        }
        let run = controller.run(CancellationToken::new());
        let outcome = match tokio::time::timeout(self.limit, run).await {
            Ok(Ok(outcome)) => Some(outcome),
            Ok(Err(err)) => panic!("the controller stopped: {err}"),
            Err(_) => None,
        };
        if let Some(dir) = &inbox_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let mut state = world.lock();
        Ran {
            outcome,
            statuses: state
                .statuses
                .iter()
                .map(|(key, stored)| (key.clone(), stored.status.clone()))
                .collect(),
            creations: state.creations.take().unwrap_or_default(),
            writes: state.writes.take().unwrap_or_default(),
            peak: state.peak,
            violations: state.violations.clone(),
        }
    }
}

/// `spec.parallelism` and `spec.semaphores` as validation makes them, for the world's
/// checks.
fn limits_of(key: &TaskKey, bytes: &[u8]) -> Option<(usize, Vec<String>)> {
    let spec = super::schedule::validated(key, bytes)?;
    Some((spec.parallelism as usize, spec.semaphores))
}
