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
