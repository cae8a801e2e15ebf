//! An in-memory [`Runtime`] that behaves as `runtime::process` does: `ensure` adopts a
//! container of the name made for the same attempt and replaces one made for another,
//! `delete` is idempotent, logs outlive their container. Its containers exit on their
//! own (and the engine says so, unless the event is dropped), and its calls can be
//! slow, fail transiently, fail for good, land but answer an error, or succeed on a
//! container the runtime then loses track of.

use super::world::{Container, State, World};
use crate::manifest::RuntimeKind;
use crate::runtime::{ContainerSpec, ContainerState, ContainerSummary, Inspection, Placement, Runtime, RuntimeError};
use crate::status::Reason;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The longest a simulated container runs on its own.
pub const LONGEST_RUN: Duration = Duration::from_secs(40);

pub struct FakeRuntime {
    world: Arc<World>,
    epoch: u64,
}

impl FakeRuntime {
    pub fn new(world: Arc<World>, epoch: u64) -> Self {
        FakeRuntime { world, epoch }
    }

    fn transient(&self) -> Result<(), RuntimeError> {
        let mut state = self.world.lock();
        let p = state.faults.runtime_transient;
        if state.faults.runtime_outage || state.chance(p) {
            return Err(RuntimeError::Transient("the engine is unreachable".into()));
        }
        Ok(())
    }

    fn state_of(container: &Container, now: crate::status::Timestamp) -> ContainerState {
        if container.lost {
            return ContainerState::Exited {
                exit_code: None,
                started_at: Some(container.started),
                finished_at: None,
                message: Some("the runtime lost track of the container".into()),
            };
        }
        if now >= container.ends {
            ContainerState::Exited {
                exit_code: Some(container.exit_code),
                started_at: Some(container.started),
                finished_at: Some(container.ends),
                message: None,
            }
        } else {
            ContainerState::Running {
                started_at: Some(container.started),
            }
        }
    }

    /// Makes the container, and tells the engine's subscribers when it exits.
    fn create(&self, state: &mut State, spec: &ContainerSpec) {
        let now = self.world.now();
        let (task, attempt_id) = State::container_of(&spec.labels);
        let (runs, exit_code) = match state.behaviour.clone() {
            Some(behaviour) => behaviour(spec),
            None => {
                let runs = Duration::from_millis(state.below(LONGEST_RUN.as_millis() as u64));
                let exit_code = if state.chance(0.7) {
                    0
                } else {
                    1 + state.below(3) as i32
                };
                (runs, exit_code)
            }
        };
        if let Some(creations) = &mut state.creations {
            creations.push(super::world::Creation {
                at: now,
                name: spec.name.clone(),
                env: spec.env.iter().cloned().collect(),
            });
        }
        let p = state.faults.runtime_lost;
        let container = Container {
            task,
            attempt_id: attempt_id.clone(),
            labels: spec.labels.clone(),
            started: now,
            ends: now + chrono::Duration::from_std(runs).unwrap_or_default(),
            exit_code,
            lost: state.chance(p),
            creator: self.epoch,
            beats: super::beats::beats(state, &spec.env, &attempt_id),
        };
        state.on_create(&spec.name, &container, now);
        if let Some((_, at)) = spec.env.iter().find(|(name, _)| name == "SKIFF_SCHEDULED_AT") {
            state.on_scheduled_run(&spec.name, &spec.labels, at);
        }
        state.record(&format!(
            "created {} {attempt_id} runs {runs:?} exit {exit_code}",
            spec.name
        ));
        state.containers.insert(spec.name.clone(), container);
        let world = self.world.clone();
        let name = spec.name.clone();
        tokio::spawn(async move {
            tokio::time::sleep(runs).await;
            let mut state = world.lock();
            let p = state.faults.engine_event_drop;
            let exists = state.containers.get(&name).is_some_and(|c| c.attempt_id == attempt_id);
            if exists && !state.chance(p) {
                state.notify_runtime(&name);
            }
        });
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    async fn placement(&self) -> Result<Placement, RuntimeError> {
        Ok(Placement::process("sim", "sim-host"))
    }

    async fn ensure(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        self.world
            .call(self.epoch, &format!("runtime.ensure {}", spec.name))
            .await;
        self.transient()?;
        let ambiguous = {
            let mut state = self.world.lock();
            let p = state.faults.runtime_permanent;
            if state.chance(p) {
                return Err(RuntimeError::Permanent {
                    reason: Reason::CreateFailed,
                    message: "the image cannot be had".into(),
                });
            }
            let (_, wanted) = State::container_of(&spec.labels);
            match state.containers.get(&spec.name) {
                // Adopted: never made twice.
                Some(existing) if existing.attempt_id == wanted => {}
                existing => {
                    // Same name, another attempt: never adopted, replaced.
                    if existing.is_some() {
                        state.containers.remove(&spec.name);
                    }
                    self.create(&mut state, spec);
                }
            }
            let p = state.faults.runtime_ambiguous;
            state.chance(p)
        };
        self.world.call(self.epoch, "runtime.ensure answered").await;
        if ambiguous {
            return Err(RuntimeError::Transient("timed out (the create landed)".into()));
        }
        Ok(())
    }

    async fn inspect(&self, name: &str) -> Result<Inspection, RuntimeError> {
        self.world.call(self.epoch, &format!("runtime.inspect {name}")).await;
        self.transient()?;
        let now = self.world.now();
        let state = self.world.lock();
        Ok(match state.containers.get(name) {
            Some(container) => Inspection {
                state: Self::state_of(container, now),
                attempt_id: Some(container.attempt_id.clone()),
                progress: None,
            },
            None => Inspection {
                state: ContainerState::Absent,
                attempt_id: None,
                progress: None,
            },
        })
    }

    async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        self.world.call(self.epoch, &format!("runtime.delete {name}")).await;
        self.transient()?;
        self.world.lock().containers.remove(name);
        self.world.call(self.epoch, "runtime.delete answered").await;
        Ok(())
    }

    async fn log_tail(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        let made = self.world.lock().created.iter().any(|(n, _)| n == name);
        Ok(made.then(|| format!("output of {name}\n")))
    }

    async fn output(&self, name: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        Ok(self.log_tail(name).await?.map(String::into_bytes))
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.world.call(self.epoch, "runtime.list").await;
        self.transient()?;
        let state = self.world.lock();
        Ok(state
            .containers
            .iter()
            .map(|(name, c)| ContainerSummary {
                name: name.clone(),
                labels: c.labels.clone(),
            })
            .collect())
    }

    async fn forget(&self, _container_prefix: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.world.lock();
        if state.alive.contains(&self.epoch) {
            state.runtime_watchers.push((self.epoch, tx));
        }
        Some(rx)
    }
}
