//! The controller's loop: the first listing, then each event in turn (a reconcile done,
//! a store or runtime notification, a freed slot, an API request, the resync and
//! heartbeat timers), the relist, and orphan collection. One reconcile pass is in
//! `pass.rs`; observation in `observe.rs`.

use super::*;
use std::sync::atomic::Ordering;

impl Controller {
    /// Runs until `shutdown` fires, or with `once`, until every task is final.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<Outcome, ControllerError> {
        let shared = self.shared.clone();
        let mut store_events = shared.store.watch()?;
        let (runtime_tx, mut runtime_events) = mpsc::unbounded_channel::<String>();
        for runtime in shared.runtimes.values() {
            if let Some(mut rx) = runtime.subscribe() {
                let tx = runtime_tx.clone();
                tokio::spawn(async move {
                    while let Some(name) = rx.recv().await {
                        if tx.send(name).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        drop(runtime_tx);
        // Tasks with a container their status does not record, from orphan collection.
        let (stray_tx, mut strays) = mpsc::unbounded_channel::<TaskKey>();

        let mut queue = WorkQueue::new();
        // Ordered, so that a relist queues the same keys in the same order on every run.
        let mut known: BTreeMap<TaskKey, TaskState> = BTreeMap::new();
        // Fingerprints of final tasks: a relist skips those whose files did not change.
        let mut settled: HashMap<TaskKey, Fingerprint> = HashMap::new();
        let mut running: JoinSet<Reconciled> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, TaskKey> = HashMap::new();

        let started = std::time::Instant::now();
        // A remote store may be unreachable at start: wait for it, saying why on /healthz.
        let mut wait = Duration::from_millis(250);
        let mut with_status = loop {
            match self.relist(&mut queue, &mut known, &settled).await {
                Ok(with_status) => break with_status,
                Err(err @ StoreError::Unavailable { .. }) => {
                    shared.health.store_result::<(), _>(&Err(&err));
                    tracing::warn!("cannot list {}; retrying in {wait:?}: {err}", shared.store.location());
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Outcome::Shutdown),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(MAX_INFRA_BACKOFF);
                }
                Err(err) => return Err(err.into()),
            }
        };
        shared.health.store_result::<(), StoreError>(&Ok(()));
        // Replicas sharing the store say where their containers live (see `replicas`).
        let presence = shared.ownership.clone().map(|owner| {
            let stop = shutdown.child_token();
            let task = tokio::spawn(replicas::announce(shared.clone(), owner, stop.clone()));
            (stop, task)
        });
        // Tasks not yet reconciled since start-up, in the order first seen; when none is
        // left, the controller has caught up with the world and says so once. Until
        // then a task starts only as `StartGate` allows, and waits in `deferred` if not.
        let mut unobserved: std::collections::BTreeSet<(u64, TaskKey)> =
            known.keys().map(|key| (shared.first_seen(key), key.clone())).collect();
        with_status.retain(|key| known.contains_key(key));
        let gate = &shared.start;
        gate.early.store(shared.ownership.is_none(), Ordering::Release);
        gate.statuses_unseen.store(with_status.len(), Ordering::Release);
        gate.seen_through.store(
            unobserved.first().map_or(u64::MAX, |(order, _)| *order),
            Ordering::Release,
        );
        let mut caught_up = false;
        let mut deferred: BTreeMap<u64, TaskKey> = BTreeMap::new();
        self.collect_orphans(&stray_tx);
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + shared.config.resync, shared.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut control = self.control.take();
        let mut phases: HashMap<TaskKey, (Phase, RuntimeKind, i64)> = HashMap::new();

        let outcome = loop {
            shared.health.turn();
            shared.metrics.queue_depth.set(queue.len() as i64);
            if !caught_up && unobserved.is_empty() && running.is_empty() {
                caught_up = true;
                gate.caught_up.store(true, Ordering::Release);
                // The first in line start now; the rest are woken as slots free, and
                // looked at meanwhile only once their wait is long enough to be said
                // (`pass::QUIET_WAIT`): 468 passes of the 500 tasks of a burst under
                // `--max-running 32` would otherwise compete with the first 32's starts.
                shared.limits.wake_free();
                for key in std::mem::take(&mut deferred).into_values() {
                    let order = shared.first_seen(&key);
                    let delay = match shared.limits.in_line(&key, order) {
                        true => pass::QUIET_WAIT,
                        false => Duration::ZERO,
                    };
                    queue.schedule(key, delay);
                }
                let active = known.values().filter(|s| **s == TaskState::Active).count();
                tracing::info!(
                    "caught up: {} tasks observed in {} ms, {active} active",
                    known.len(),
                    started.elapsed().as_millis()
                );
            }
            if shared.config.once && running.is_empty() && queue.is_empty() {
                if let Some(outcome) = once_outcome(&known) {
                    break outcome;
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Outcome::Shutdown,
                Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                    let done = match joined {
                        Ok((id, done)) => {
                            in_flight.remove(&id);
                            done
                        }
                        Err(err) => {
                            // A reconcile that panicked is a bug; the task is retried, not lost.
                            let Some(key) = in_flight.remove(&err.id()) else { continue };
                            tracing::error!(task = %key, "reconcile failed: {err}");
                            Reconciled::retry(&key, shared.infra_backoff(&key))
                        }
                    };
                    queue.done(&done.key);
                    if done.observed && !caught_up {
                        let seen = (shared.first_seen(&done.key), done.key.clone());
                        if unobserved.remove(&seen) {
                            if with_status.remove(&done.key) {
                                gate.statuses_unseen.fetch_sub(1, Ordering::AcqRel);
                            }
                            let through = unobserved.first().map_or(u64::MAX, |(order, _)| *order);
                            gate.seen_through.store(through, Ordering::Release);
                            // The tasks held back that may start now go again (never
                            // for replicas, which start nothing before catching up).
                            if gate.may_start(through) {
                                let later = deferred.split_off(&through.saturating_add(1));
                                for key in std::mem::replace(&mut deferred, later).into_values() {
                                    queue.schedule(key, Duration::ZERO);
                                }
                            }
                        }
                    }
                    update_gauges(&shared.metrics, &mut phases, &done);
                    match done.state {
                        TaskState::Removed => {
                            known.remove(&done.key);
                            settled.remove(&done.key);
                        }
                        state => {
                            known.insert(done.key.clone(), state);
                        }
                    }
                    if matches!(done.state, TaskState::Final(_)) {
                        if let Some(fp) = done.fingerprint.clone() {
                            settled.insert(done.key.clone(), fp);
                        }
                        // A finished task is seldom reconciled again, and then mostly for
                        // a changed manifest: its parsed spec is not worth its memory
                        // (most of a controller's over 100,000 finished tasks).
                        shared.forget_validated(&done.key);
                    } else {
                        settled.remove(&done.key);
                    }
                    if let Some(delay) = done.requeue {
                        queue.schedule(done.key.clone(), delay);
                    }
                    if done.deferred {
                        let order = shared.first_seen(&done.key);
                        if caught_up || gate.may_start(order) {
                            queue.schedule(done.key.clone(), Duration::ZERO);
                        } else {
                            deferred.insert(order, done.key.clone());
                        }
                    }
                    for other in done.wake {
                        queue.schedule(other, Duration::ZERO);
                    }
                }
                Some(event) = store_events.recv() => match event {
                    StoreEvent::Changed(key) => {
                        shared.first_seen(&key);
                        known.entry(key.clone()).or_insert(TaskState::Active);
                        settled.remove(&key);
                        queue.schedule(key, Duration::ZERO);
                    }
                    StoreEvent::Rescan => {
                        let relisted = self.relist(&mut queue, &mut known, &settled).await;
                        shared.health.store_result(&relisted);
                        if let Err(err) = relisted {
                            tracing::warn!("relist of {} failed, will retry: {err}", shared.store.location());
                        }
                    }
                    StoreEvent::Reachable(error) => shared.health.store_result(&error.map_or(Ok(()), Err)),
                },
                Some(name) = runtime_events.recv() => {
                    let key = shared.containers.lock().ok().and_then(|m| m.get(&name).cloned());
                    if let Some(key) = key {
                        shared.memory(&key, |m| m.engine_seen = true);
                        queue.schedule(key, Duration::ZERO);
                    }
                }
                Some(key) = self.woken.recv() => queue.schedule(key, Duration::ZERO),
                Some(key) = strays.recv() => queue.schedule(key, Duration::ZERO),
                Some(request) = next_control(&mut control) => match request {
                    Control::Terminate(key) => {
                        shared.memory(&key, |m| m.terminate = true);
                        queue.schedule(key, Duration::ZERO);
                    }
                    Control::Trigger(key) => {
                        shared.memory(&key, |m| m.trigger = true);
                        queue.schedule(key, Duration::ZERO);
                    }
                    Control::Event(key, at) => {
                        shared.memory(&key, |m| m.event_at = Some(at));
                        queue.schedule(key, Duration::ZERO);
                    }
                    Control::Progress(key, delay) => queue.schedule(key, delay),
                },
                _ = heartbeat.tick() => {}
                _ = resync.tick() => {
                    let relisted = self.relist(&mut queue, &mut known, &settled).await;
                    shared.health.store_result(&relisted);
                    if let Err(err) = relisted {
                        tracing::warn!("resync of {} failed, will retry: {err}", shared.store.location());
                    }
                    self.collect_orphans(&stray_tx);
                }
                key = queue.next(), if running.len() < shared.config.workers => {
                    let shared = shared.clone();
                    let task_key = key.clone();
                    let handle = running.spawn(async move {
                        let timeout = shared.config.reconcile_timeout;
                        let started = std::time::Instant::now();
                        let result = tokio::time::timeout(timeout, pass::reconcile_task(&shared, &key)).await;
                        shared.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
                        let outcome = if result.is_ok() { "success" } else { "error" };
                        shared.metrics.reconciles.get_or_create(&Metrics::label("result", outcome)).inc();
                        match result {
                            // The pass took the fingerprint as it read the files; one that
                            // ended final without reading them (a status file that needs a
                            // person, another replica's task) takes them as they are now.
                            Ok(mut done) => {
                                if done.fingerprint.is_none() && matches!(done.state, TaskState::Final(_)) {
                                    done.fingerprint =
                                        shared.store.list_one(&key).await.ok().flatten().map(|l| l.fingerprint);
                                }
                                done
                            }
                            Err(_) => {
                                tracing::warn!(task = %key, "reconcile took longer than {}s; retrying", timeout.as_secs());
                                Reconciled::retry(&key, shared.infra_backoff(&key))
                            }
                        }
                    });
                    in_flight.insert(handle.id(), task_key);
                }
            }
        };
        // Finish the status writes in flight; running containers are durable and left alone.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while running.join_next().await.is_some() {} }).await;
        // Hand the tasks over: other replicas take them at once rather than when leases lapse.
        if let Some(owner) = &shared.ownership {
            owner.release_all().await;
        }
        if let Some((stop, task)) = presence {
            // Withdrawn, so that the others stop counting this replica as live.
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        Ok(outcome)
    }

    /// Lists the store and queues every task whose files changed since it was last
    /// final, plus every task not yet final. Gives the tasks listed with a status.
    async fn relist(
        &self,
        queue: &mut WorkQueue,
        known: &mut BTreeMap<TaskKey, TaskState>,
        settled: &HashMap<TaskKey, Fingerprint>,
    ) -> Result<std::collections::HashSet<TaskKey>, StoreError> {
        let mut listed = self.shared.store.list().await?;
        // First come, first served: order new tasks by when their files last changed.
        listed.sort_by_key(|l| {
            (
                l.fingerprint.0.iter().map(|(_, m)| *m).max().unwrap_or(0),
                l.key.clone(),
            )
        });
        let mut present = std::collections::HashSet::new();
        let mut with_status = std::collections::HashSet::new();
        for item in listed {
            present.insert(item.key.clone());
            if item.has_status {
                with_status.insert(item.key.clone());
            }
            self.shared.first_seen(&item.key);
            if settled.get(&item.key) == Some(&item.fingerprint) {
                continue;
            }
            known.entry(item.key.clone()).or_insert(TaskState::Active);
            if !queue.is_pending(&item.key) {
                queue.schedule(item.key, Duration::ZERO);
            }
        }
        // A task whose files all vanished between notifications still needs its cleanup.
        for key in known.keys() {
            if !present.contains(key) {
                queue.schedule(key.clone(), Duration::ZERO);
            }
        }
        Ok(with_status)
    }

    /// Deletes containers that carry skiff's labels but whose task no longer exists:
    /// what a crash between "delete the container" and "forget the task" can leave. A
    /// container whose task exists but whose status does not record its attempt (a
    /// person deleted the status under it) is left to the task's next pass, which runs
    /// alone for its task: deleting it from here could race a pass that has just made
    /// the next attempt's container under the same name.
    fn collect_orphans(&self, strays: &mpsc::UnboundedSender<TaskKey>) {
        let shared = self.shared.clone();
        let strays = strays.clone();
        tokio::spawn(async move {
            for runtime in shared.runtimes.values() {
                let Ok(containers) = runtime.list().await else { continue };
                for container in containers {
                    let Some(task) = container.labels.get(runtime::LABEL_TASK) else {
                        continue;
                    };
                    // A label is not ours to trust as a path: someone else's container may
                    // carry it.
                    let Ok(key) = TaskKey::parse(task) else {
                        continue;
                    };
                    let has_manifest = !matches!(shared.store.read_manifest(&key).await, Ok(ManifestRead::Missing));
                    let status = shared.store.read_status(&key).await;
                    let has_status = !matches!(status, Ok(None));
                    if !has_manifest && !has_status {
                        tracing::info!(container = %container.name, task = %key, "removing an orphaned container");
                        let _ = runtime.delete(&container.name).await;
                        continue;
                    }
                    let attempt_id = container.labels.get(runtime::LABEL_ATTEMPT_ID);
                    let recorded = match (&status, attempt_id) {
                        (Ok(Some(status)), Some(id)) => status
                            .all_attempts()
                            .any(|a| a.container == container.name && a.attempt_id().as_ref() == Some(id)),
                        // Read as absent: its status was deleted (a container is made only
                        // once its status records it).
                        (Ok(None), Some(_)) => false,
                        // Unreadable, or made before attempt ids: leave it be.
                        _ => true,
                    };
                    if !recorded && let Some(id) = attempt_id {
                        shared.memory(&key, |m| {
                            m.strays.insert(container.name.clone(), (runtime.kind(), id.clone()))
                        });
                        let _ = strays.send(key);
                        continue;
                    }
                    if let Ok(Some(status)) = &status
                        && given_up_elsewhere(runtime.as_ref(), status, &container).await
                    {
                        // This replica died holding the task, and another, unable to see
                        // this container, gave its attempt up and ran the next one: what
                        // is left of it here (a duplicate, or its remains) goes.
                        tracing::info!(container = %container.name, task = %key, "removing a container whose attempt another replica gave up (PlacementUnreachable)");
                        let _ = runtime.delete(&container.name).await;
                    }
                }
            }
        });
    }
}

/// The status records `container`'s attempt as given up out of reach, on this very
/// runtime's placement (the same attempt: its attempt id matches).
async fn given_up_elsewhere(
    runtime: &dyn Runtime,
    status: &crate::status::TaskStatus,
    container: &runtime::ContainerSummary,
) -> bool {
    let Ok(ours) = runtime.placement().await else {
        return false;
    };
    let Some(attempt_id) = container.labels.get(runtime::LABEL_ATTEMPT_ID) else {
        return false;
    };
    status.attempts.iter().any(|a| {
        a.container == container.name
            && a.reason == Some(Reason::PlacementUnreachable)
            && a.placement.as_ref() == Some(&ours)
            && a.attempt_id().as_ref() == Some(attempt_id)
    })
}

async fn next_control(control: &mut Option<mpsc::UnboundedReceiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Keeps the task and live-container gauges in step with the phases just written.
fn update_gauges(metrics: &Metrics, phases: &mut HashMap<TaskKey, (Phase, RuntimeKind, i64)>, done: &Reconciled) {
    let old = match (&done.phase, done.state) {
        (_, TaskState::Removed) => phases.remove(&done.key),
        (Some(new), _) => phases.insert(done.key.clone(), *new),
        (None, _) => return,
    };
    let apply = |(phase, runtime, live): (Phase, RuntimeKind, i64), delta: i64| {
        metrics
            .tasks
            .get_or_create(&Metrics::label("phase", phase.as_str()))
            .inc_by(delta);
        if live > 0 {
            metrics
                .live_containers
                .get_or_create(&Metrics::label("runtime", runtime.as_str()))
                .inc_by(delta * live);
        }
    };
    if let Some(old) = old {
        apply(old, -1);
    }
    if let Some(new) = phases.get(&done.key) {
        apply(*new, 1);
    }
}

fn once_outcome(known: &BTreeMap<TaskKey, TaskState>) -> Option<Outcome> {
    let mut all_succeeded = true;
    for state in known.values() {
        match state {
            TaskState::Active => return None,
            TaskState::Final(Phase::Succeeded) | TaskState::Removed => {}
            TaskState::Final(_) => all_succeeded = false,
        }
    }
    Some(if all_succeeded {
        Outcome::AllSucceeded
    } else {
        Outcome::SomeFailed
    })
}
