//! The operator's commands: `skiff rerun TASK...` (the "delete its status" gesture, made
//! safe) and `skiff terminate TASK...` (through the running controller's API).

use super::{RerunArgs, TerminateArgs, UsageError, inspect, open_store, state_dir};
use crate::status::{IndexStatus, Phase, TaskStatus};
use std::process::ExitCode;
use std::time::Duration;

/// Runs finished tasks again, from attempt 1. A task still running is left alone (it
/// must be terminated first): deleting the status of a live attempt would orphan its
/// container. On a blob store the delete is conditional on the status just read, so a
/// controller's write in between is never lost.
pub fn rerun(args: RerunArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.source)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut code = ExitCode::SUCCESS;
        for task in &args.tasks {
            let key = inspect::task_key(task)?;
            let status = store.read_status_for_update(&key).await?;
            let Some(status) = status else {
                if store.list_one(&key).await?.is_none() {
                    return Err(UsageError(format!(
                        "no task {key} in {}; `skiff get` lists the tasks",
                        store.location()
                    ))
                    .into());
                }
                println!("{key} has not run yet; nothing to do");
                continue;
            };
            if !status.phase.is_final() {
                eprintln!(
                    "{key} is {}: it runs now; stop it first with `skiff terminate {key}`, then rerun it",
                    status.phase
                );
                code = ExitCode::from(1);
                continue;
            }
            if args.failed && status.indexes.is_empty() {
                return Err(UsageError(format!(
                    "{key} is not a fan-out (no `completions`); --failed reruns a fan-out's failed indexes"
                ))
                .into());
            }
            if args.failed {
                let Some((rerun, indexes)) = rerun_failed_indexes(status.clone()) else {
                    println!("{key}: no index failed; nothing to do");
                    continue;
                };
                match store.write_status(&key, &rerun).await {
                    Ok(()) => println!("{key}: indexes {indexes} will run again"),
                    Err(crate::store::StoreError::Conflict { .. }) => {
                        eprintln!("{key} changed while it was being rerun; look at it again with `skiff get {key}`");
                        code = ExitCode::from(1);
                    }
                    Err(err) => return Err(err.into()),
                }
                continue;
            }
            match store.delete_status(&key).await {
                Ok(()) => println!("{key} will run again (it was {})", status.phase),
                Err(crate::store::StoreError::Conflict { .. }) => {
                    eprintln!("{key} changed while it was being rerun; look at it again with `skiff get {key}`");
                    code = ExitCode::from(1);
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(code)
    })
}

/// A finished fan-out's status with every index that did not succeed made new again
/// (Pending, no attempt: as in a fresh run, so each gets its full `retries` again), and
/// the others kept with their results. `None` when every index succeeded.
fn rerun_failed_indexes(mut status: TaskStatus) -> Option<(TaskStatus, String)> {
    let again: Vec<u32> = status
        .indexes
        .iter()
        .filter(|lane| lane.phase != Phase::Succeeded)
        .map(|lane| lane.index)
        .collect();
    if again.is_empty() {
        return None;
    }
    for lane in status.indexes.iter_mut().filter(|l| again.contains(&l.index)) {
        *lane = IndexStatus::pending(lane.index);
    }
    // Their attempts go: a new attempt 1 of the index must not count the old ones
    // against `retries`, nor be taken for them.
    status
        .attempts
        .retain(|a| a.index.is_none_or(|index| !again.contains(&index)));
    let list = again.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    status.phase = Phase::Pending;
    status.reason = None;
    status.message = Some(format!("rerunning the indexes that did not succeed: {list}"));
    status.next_attempt_at = None;
    status.attempt = status.attempts.iter().map(|a| a.number).max().unwrap_or(0);
    Some((status, list))
}

/// Asks the running controller to stop tasks' current attempts (`POST
/// /v1/tasks/{task}/terminate`), at `--server` or at the address it recorded in its
/// state folder.
pub fn terminate(args: TerminateArgs) -> anyhow::Result<ExitCode> {
    post_to_tasks(args, "terminate", "terminating")
}

/// Asks the running controller to start a run of scheduled tasks now (`POST
/// /v1/tasks/{task}/trigger`).
pub fn trigger(args: TerminateArgs) -> anyhow::Result<ExitCode> {
    post_to_tasks(args, "trigger", "triggered")
}

fn post_to_tasks(args: TerminateArgs, verb: &str, done: &str) -> anyhow::Result<ExitCode> {
    let state = state_dir(&args.source);
    let recorded = super::endpoint::read(&state);
    let url = match (&args.server, &recorded) {
        (Some(server), _) => server.trim_end_matches('/').to_string(),
        (None, Some(endpoint)) => endpoint.url.clone(),
        (None, None) => {
            return Err(UsageError(format!(
                "no controller has recorded its API in {}; is one running for this folder? Else give --server URL",
                state.join("api.json").display()
            ))
            .into());
        }
    };
    let token_file = args
        .api_token_file
        .clone()
        .or_else(|| recorded.and_then(|e| e.token_file));
    let token = match &token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|err| UsageError(format!("--api-token-file {}: {err}", path.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut code = ExitCode::SUCCESS;
        for task in &args.tasks {
            let key = inspect::task_key(task)?;
            let target = format!("{url}/v1/tasks/{}/{verb}", urlencoding::encode(key.as_str()));
            let mut request = client.post(&target);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let answer = request.send().await.map_err(|err| {
                UsageError(format!(
                    "no controller answers at {url} ({err}); is it running? (`--server URL` names another)"
                ))
            })?;
            let status = answer.status();
            let body: serde_json::Value = answer.json().await.unwrap_or_default();
            let said = body["error"].as_str().unwrap_or_default().to_string();
            match status.as_u16() {
                202 => println!("{key}: {done}"),
                404 => {
                    return Err(UsageError(format!("no task {key} at {url}; `skiff get` lists the tasks")).into());
                }
                409 => {
                    eprintln!("{key}: {said}");
                    code = ExitCode::from(1);
                }
                401 => {
                    return Err(UsageError(format!(
                        "{url} wants the API token: give --api-token-file FILE ({said})"
                    ))
                    .into());
                }
                400 => return Err(UsageError(format!("{task}: {said}")).into()),
                _ => anyhow::bail!("{url} answered {status} for {key}: {said}"),
            }
        }
        Ok(code)
    })
}
