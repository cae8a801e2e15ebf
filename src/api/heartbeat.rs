//! `POST /v1/tasks/{task}/heartbeat?attempt=N&index=I&id=ID&token=T`: a container says it
//! is alive, optionally with its progress. Authorised by the callback's token alone;
//! refused, as a late completion event is, for an attempt that is not the one running.
//!
//! Cheap by design: the token is checked, the body read, and the beat kept in memory
//! ([`Heartbeats`](crate::heartbeat::Heartbeats)); the status is read only when no
//! reconcile has yet named the attempt live (just after its create, or a restart), and
//! nothing is written. A changed progress asks the loop for one coalesced reconcile,
//! which writes it into the status.

use super::{ApiState, CallbackQuery, live_attempt};
use crate::controller::Control;
use crate::heartbeat::{MAX_HEARTBEAT_BYTES, parse_body};
use crate::task::TaskKey;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;

/// Checks and keeps one heartbeat; answers 202 once it is kept (in memory).
pub(super) async fn heartbeat(
    state: &ApiState,
    task: &str,
    query: CallbackQuery,
    body: Result<Bytes, BytesRejection>,
) -> (StatusCode, String) {
    let key = match TaskKey::parse(task) {
        Ok(key) => key,
        Err(problem) => return (StatusCode::BAD_REQUEST, format!("not a task: {problem}")),
    };
    let (Some(token), Some(attempt), Some(id)) = (query.token.as_deref(), query.attempt, query.id.as_deref()) else {
        return (
            StatusCode::UNAUTHORIZED,
            "the heartbeat URL's token is missing; POST to $SKIFF_HEARTBEAT_URL as given".into(),
        );
    };
    let index = query.index.unwrap_or(0);
    if !state.secret.verify(token, key.as_str(), attempt, index, id) {
        tracing::warn!(task = %key, attempt, "heartbeat refused: wrong token");
        return (StatusCode::UNAUTHORIZED, "wrong token".into());
    }
    let body = match body {
        Ok(body) => body,
        // The API's body limit stops a huge body before it is read; a heartbeat says why.
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is too large for a heartbeat (at most {MAX_HEARTBEAT_BYTES} bytes); send nothing, or {{\"progress\": 0.42, \"message\": \"frame 420/1000\"}}"
                ),
            );
        }
        Err(rejection) => return (rejection.status(), rejection.body_text()),
    };
    let beat = match parse_body(&body) {
        Ok(beat) => beat,
        Err(message) => return (StatusCode::BAD_REQUEST, message),
    };
    if !state.heartbeats.is_live(&key, index, attempt, id) {
        match state.store.read_status(&key).await {
            Ok(Some(status)) if live_attempt(&status, attempt, index, id).is_some() => {}
            Ok(Some(_)) => {
                return (
                    StatusCode::CONFLICT,
                    format!(
                        "attempt {attempt} (index {index}) of {key} is not running, or has been judged; its heartbeat is stale"
                    ),
                );
            }
            Ok(None) => return (StatusCode::NOT_FOUND, format!("no task {key}")),
            Err(err) => {
                tracing::warn!(task = %key, "heartbeat: cannot read the status: {err}");
                return (StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable".into());
            }
        }
    }
    if let Some(delay) = state
        .heartbeats
        .beat(&key, index, attempt, id, chrono::Utc::now(), beat)
    {
        let _ = state.control.send(Control::Progress(key, delay));
    }
    (StatusCode::ACCEPTED, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{CallbackSecret, Inbox};
    use crate::heartbeat::Heartbeats;
    use crate::manifest::RuntimeKind;
    use crate::status::{AttemptRecord, OverlappingRun, Phase, ScheduleStatus, TaskStatus};
    use crate::store::Store;
    use crate::store::dir::DirStore;
    use chrono::{TimeZone, Utc};
    use std::sync::Arc;

    /// A run of a scheduled task with its attempt 1 running, under this id.
    fn run(run: u32, id: &str, at_s: i64) -> TaskStatus {
        let at = Utc.timestamp_opt(1_800_000_000 + at_s, 0).unwrap();
        let mut status = TaskStatus::new("tick", "tick", "sha256:x", at);
        status.phase = Phase::Running;
        status.attempt = 1;
        status.attempts.push(AttemptRecord {
            number: 1,
            id: Some(id.into()),
            runtime: RuntimeKind::Process,
            container: TaskKey::new("tick").run_container_name(run, 1, None),
            index: None,
            created_at: Some(at),
            started_at: Some(at),
            finished_at: None,
            exit_code: None,
            completed_by: None,
            reason: None,
            message: None,
            placement: None,
            semaphores: Vec::new(),
            exit_rule: None,
        });
        status
    }

    /// Under `concurrencyPolicy: Allow` run 2 is on top and run 1 still runs beside it,
    /// each with its attempt 1 of index 0: a beat of run 1's is taken (not 409) and kept
    /// as run 1's, never credited to run 2.
    #[tokio::test]
    async fn a_beat_of_an_overlapping_run_is_taken_as_that_runs_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DirStore::new(dir.path()).unwrap());
        let key = TaskKey::new("tick");
        let mut status = run(2, "run2", 20);
        let older = OverlappingRun::from_view(1, status.updated_at, run(1, "run1", 10));
        status.schedule = Some(ScheduleStatus {
            cron: "@every 10s".into(),
            last_scheduled_at: None,
            next_scheduled_at: None,
            active: vec![status.updated_at, older.scheduled_at],
            handled_through: status.updated_at,
            run_count: 2,
            triggered_at: None,
            current_run: Some(2),
            overlapping: vec![older],
        });
        store.write_status(&key, &status).await.unwrap();
        let secret = Arc::new(CallbackSecret::from_key(vec![7; 32]));
        let (control, mut nudges) = tokio::sync::mpsc::unbounded_channel();
        let state = ApiState {
            store,
            secret: secret.clone(),
            inbox: Arc::new(Inbox::new(&dir.path().join(".skiff")).unwrap()),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            health: Arc::new(crate::controller::Health::default()),
            control,
            api_token: None,
            heartbeats: Arc::new(Heartbeats::new()),
        };
        let post = |id: &'static str, body: &'static str| {
            let query = CallbackQuery {
                token: Some(secret.token("tick", 1, 0, id)),
                attempt: Some(1),
                index: Some(0),
                id: Some(id.into()),
            };
            heartbeat(&state, "tick", query, Ok(Bytes::from_static(body.as_bytes())))
        };

        // Run 1's beat, before any reconcile named its attempt (read from the status).
        let (code, text) = post("run1", r#"{"progress": 0.3}"#).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{text}");
        assert!(matches!(nudges.try_recv(), Ok(Control::Progress(..))));
        let (code, text) = post("run2", r#"{"progress": 0.7}"#).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{text}");
        // Each run's beats are its own: run 2's did not replace run 1's, nor the reverse.
        let now = Utc::now();
        let run1 = state.heartbeats.observe(&key, 0, 1, "run1", now);
        let run2 = state.heartbeats.observe(&key, 0, 1, "run2", now);
        assert_eq!((run1.progress, run2.progress), (Some(0.3), Some(0.7)));
        assert!(run1.last_beat.is_some() && run2.last_beat.is_some());
        // Both live on the board now (the fast path): still taken.
        assert_eq!(post("run1", "").await.0, StatusCode::ACCEPTED);
        // Another run's id with the same attempt number and index is stale.
        assert_eq!(post("run0", "").await.0, StatusCode::CONFLICT);
    }
}
