//! Observation: what the runtime and the inbox say about one container of a task.

use super::*;

/// Looks at one container of the task: its state, its log tail once it has finished,
/// and the completion event recorded for it.
pub(super) async fn observe(
    shared: &Shared,
    key: &TaskKey,
    record: &crate::status::AttemptRecord,
    deleting: bool,
) -> Lane {
    let container = &record.container;
    let kind = record.runtime;
    let attempt_id = crate::callback::attempt_id(record);
    if let Ok(mut map) = shared.containers.lock() {
        map.insert(container.clone(), key.clone());
    }
    let failure = shared.memory(key, |m| m.create_failures.remove(container));
    let mut log_tail = None;
    // A container placed where this replica cannot look is not looked for: not finding
    // it would say nothing, and making it would run the attempt twice.
    let reach = match (&record.placement, shared.runtime(kind)) {
        (Some(theirs), Some(runtime)) => match runtime.placement().await {
            Ok(ours) if ours == *theirs => None,
            Ok(_) => Some(Observed::PlacementUnreachable(theirs.clone())),
            Err(err) => Some(Observed::Unreachable(err.to_string())),
        },
        _ => None,
    };
    let observed = match (failure, reach, shared.runtime(kind)) {
        (Some((reason, message)), _, _) => Observed::CreateFailed { reason, message },
        (None, Some(out_of_sight), _) => out_of_sight,
        (None, None, None) => Observed::Unreachable(format!("the {kind} runtime is not enabled in this controller")),
        (None, None, Some(runtime)) => match runtime.inspect(container).await {
            Ok(inspection) => {
                let stale =
                    matches!((&inspection.attempt_id, &attempt_id), (Some(found), Some(wanted)) if found != wanted);
                if stale {
                    // The name belongs to the current attempt: anything else under it
                    // is a leftover that nothing else would ever remove.
                    tracing::info!(task = %key, container, "removing a stale container of another attempt");
                }
                let progress = inspection.progress;
                match (stale, inspection.state) {
                    (true, _) => match runtime.delete(container).await {
                        Ok(()) => Observed::Container(ContainerState::Absent),
                        Err(err) => Observed::Unreachable(format!("cannot remove a stale container: {err}")),
                    },
                    (false, ContainerState::Created) if progress.is_some() => {
                        Observed::Starting(progress.unwrap_or_default())
                    }
                    (false, state) => {
                        let finished = matches!(state, ContainerState::Exited { .. })
                            || (state == ContainerState::Absent && deleting);
                        if finished {
                            log_tail = runtime.log_tail(container).await.ok().flatten();
                            if let Some(tail) = &log_tail
                                && let Err(err) = shared.store.save_log(container, tail).await
                            {
                                tracing::debug!(task = %key, "saving the output failed: {err}");
                            }
                        }
                        Observed::Container(state)
                    }
                }
            }
            Err(err) => Observed::Unreachable(err.to_string()),
        },
    };
    // Read after the container: an event recorded before the container exited is then
    // always seen, so a container that called back is never judged ExitedWithoutEvent.
    // Only this attempt's own event: a re-run's container has the same name.
    let event = shared
        .callbacks
        .as_ref()
        .zip(attempt_id.as_deref())
        .and_then(|(c, id)| c.inbox.read(container, id));
    Lane {
        observed,
        seen_by_engine: false,
        log_tail,
        event,
        heartbeat: None,
        slot: Slot::Granted,
    }
}
