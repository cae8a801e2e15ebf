//! The HTTP API (DESIGN.md §10): health, metrics, read-only task views, terminate, and
//! the completion callback.
//!
//! Management routes take an optional bearer token (`--api-token-file`); the callback
//! route is authorised by its per-attempt token alone. Tokens never reach a log.

mod heartbeat;
pub mod serve;

use crate::callback::{CallbackEvent, CallbackSecret, Inbox, MAX_EVENT_BYTES, Recorded, attempt_id};
use crate::controller::{Control, Health};
use crate::metrics::Metrics;
use crate::status::{AttemptRecord, CompletedBy, Phase, TaskStatus};
use crate::store::Store;
use crate::task::{BadTaskKey, TaskKey};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tower_http::timeout::TimeoutLayer;

pub mod dashboard;
pub mod watch;

/// Every request, body included, is answered or dropped within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub secret: Arc<CallbackSecret>,
    pub inbox: Arc<Inbox>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub control: mpsc::UnboundedSender<Control>,
    /// The bearer token management routes require, if any.
    pub api_token: Option<Arc<str>>,
    /// Where heartbeats are kept for the controller (`Controller::heartbeats`).
    pub heartbeats: Arc<crate::heartbeat::Heartbeats>,
}

pub fn router(state: ApiState) -> Router {
    let management = Router::new()
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{*task}", get(get_task).post(post_task))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_bearer));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(management)
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such route; see DESIGN.md §10") })
        // The body limit answers 413 by itself; one extra byte tells "too large" apart.
        .layer(DefaultBodyLimit::max(MAX_EVENT_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

fn problem(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn require_bearer(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    // The callback route has its own token; everything else under /v1 is management.
    let path = request.uri().path();
    let is_callback =
        request.method() == axum::http::Method::POST && (path.ends_with("/events") || path.ends_with("/heartbeat"));
    if !is_callback && let Err(refusal) = check_bearer(&state, request.headers()) {
        let mut response = problem(StatusCode::UNAUTHORIZED, refusal);
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// The management token check (`--api-token-file`), in constant time, shared by the API's
/// routes and the dashboard's: `Err` says what is wrong with the request.
pub(crate) fn check_bearer(state: &ApiState, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(expected) = &state.api_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Err("a bearer token is required (see --api-token-file)"),
        Some(given) if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => Err("wrong token"),
        Some(_) => Ok(()),
    }
}

async fn healthz(State(state): State<ApiState>) -> Response {
    let report = state.health.report();
    let code = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(report)).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn list_tasks(State(state): State<ApiState>) -> Response {
    let listed = match state.store.list().await {
        Ok(listed) => listed,
        Err(err) => return unavailable("cannot list the tasks", &err),
    };
    let mut statuses: Vec<TaskStatus> = Vec::with_capacity(listed.len());
    for item in listed {
        // A task whose status cannot be read is listed with its problem, not left out.
        match state.store.read_status(&item.key).await {
            Ok(Some(status)) => statuses.push(status),
            Ok(None) => {}
            Err(err) if err.is_about_one_task() => statuses.push(crate::store::problem_status(&item.key, &err)),
            Err(err) => return problem(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
        }
    }
    axum::Json(statuses).into_response()
}

/// 400 for a key that could leave the folder; the body never echoes a path.
fn bad_key(bad: BadTaskKey) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        format!("not a task: {bad}; name it by its path without extension, URL-encoded (jobs%2Fthumb)"),
    )
}

/// A store failure, said without the store's own words: they may hold filesystem paths
/// or blob URLs, which are for the controller's log, not for clients.
fn unavailable(what: &str, err: &dyn std::fmt::Display) -> Response {
    tracing::warn!("API: {what}: {err}");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{what}: the store is unavailable; the controller's log says why"),
    )
}

async fn get_task(State(state): State<ApiState>, task: Result<Path<String>, PathRejection>) -> Response {
    let task = match task {
        Ok(Path(task)) => task,
        Err(rejection) => return problem(rejection.status(), rejection.body_text()),
    };
    let key = match TaskKey::parse(&task) {
        Ok(key) => key,
        Err(bad) => return bad_key(bad),
    };
    match state.store.read_status(&key).await {
        Ok(Some(status)) => axum::Json(status).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no task {key}")),
        Err(err) => unavailable("cannot read the task's status", &err),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    token: Option<String>,
    attempt: Option<u32>,
    index: Option<u32>,
    /// The attempt's unique id, which the token signs.
    id: Option<String>,
}

async fn post_task(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<CallbackQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let path = match path {
        Ok(Path(path)) => path,
        Err(rejection) => return problem(rejection.status(), rejection.body_text()),
    };
    // The dashboard puts these routes in a browser: another site's page may not use them.
    let from_container = path.ends_with("/events") || path.ends_with("/heartbeat");
    if !from_container && dashboard::cross_site(&headers) {
        return problem(StatusCode::FORBIDDEN, "a request from another site's page is refused");
    }
    if let Some(task) = path.strip_suffix("/terminate") {
        return terminate(&state, task).await;
    }
    if let Some(task) = path.strip_suffix("/trigger") {
        return trigger(&state, task).await;
    }
    if let Some(task) = path.strip_suffix("/rerun") {
        return dashboard::rerun(&state, task).await;
    }
    if let Some(task) = path.strip_suffix("/events") {
        let code = match query {
            Ok(Query(query)) => callback(&state, task, query, body).await,
            Err(rejection) => (rejection.status(), rejection.body_text()),
        };
        state
            .metrics
            .callbacks
            .get_or_create(&Metrics::label("code", code.0.as_str()))
            .inc();
        return problem_or_accept(code);
    }
    if let Some(task) = path.strip_suffix("/heartbeat") {
        let code = match query {
            Ok(Query(query)) => heartbeat::heartbeat(&state, task, query, body).await,
            Err(rejection) => (rejection.status(), rejection.body_text()),
        };
        state
            .metrics
            .heartbeats
            .get_or_create(&Metrics::label("code", code.0.as_str()))
            .inc();
        return problem_or_accept(code);
    }
    problem(
        StatusCode::NOT_FOUND,
        "POST /v1/tasks/{task}/terminate, /v1/tasks/{task}/trigger, /v1/tasks/{task}/rerun, /v1/tasks/{task}/events or /v1/tasks/{task}/heartbeat",
    )
}

fn problem_or_accept((code, message): (StatusCode, String)) -> Response {
    if code == StatusCode::ACCEPTED {
        (code, axum::Json(json!({"accepted": true}))).into_response()
    } else {
        problem(code, message)
    }
}

async fn terminate(state: &ApiState, task: &str) -> Response {
    let key = match TaskKey::parse(task) {
        Ok(key) => key,
        Err(bad) => return bad_key(bad),
    };
    match state.store.read_status(&key).await {
        Ok(Some(status)) if status.phase.is_final() => {
            problem(StatusCode::CONFLICT, format!("task {key} is already {}", status.phase))
        }
        Ok(Some(_)) => {
            let _ = state.control.send(Control::Terminate(key.clone()));
            (StatusCode::ACCEPTED, axum::Json(json!({"terminating": key}))).into_response()
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no task {key}")),
        Err(err) => unavailable("cannot read the task's status", &err),
    }
}

/// `POST /v1/tasks/{task}/trigger`: a run of a scheduled task now.
async fn trigger(state: &ApiState, task: &str) -> Response {
    let key = match TaskKey::parse(task) {
        Ok(key) => key,
        Err(bad) => return bad_key(bad),
    };
    match state.store.read_status(&key).await {
        Ok(Some(status)) if status.schedule.is_none() => problem(
            StatusCode::CONFLICT,
            format!("task {key} has no spec.schedule; `skiff rerun {key}` runs a finished task again"),
        ),
        Ok(Some(_)) => {
            let _ = state.control.send(Control::Trigger(key.clone()));
            (StatusCode::ACCEPTED, axum::Json(json!({"triggered": key}))).into_response()
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no task {key}")),
        Err(err) => unavailable("cannot read the task's status", &err),
    }
}

/// The record of the attempt a callback names, if that attempt is the one running and
/// has not been judged yet.
pub(crate) fn live_attempt<'a>(
    status: &'a TaskStatus,
    attempt: u32,
    index: u32,
    id: &str,
) -> Option<&'a AttemptRecord> {
    live_attempt_of_run(status, attempt, index, id).or_else(|| {
        // A scheduled task's runs overlapping the top-level one (Allow): each is a run
        // of its own, and the attempt may be one of theirs.
        let runs = status.schedule.as_ref()?;
        runs.overlapping.iter().find_map(|run| {
            let view = run.view(status);
            let found = live_attempt_of_run(&view, attempt, index, id)?.container.clone();
            run.attempts.iter().rev().find(|a| a.container == found)
        })
    })
}

/// [`live_attempt`] among the attempts of one run.
fn live_attempt_of_run<'a>(status: &'a TaskStatus, attempt: u32, index: u32, id: &str) -> Option<&'a AttemptRecord> {
    let live = |phase: Phase| matches!(phase, Phase::Creating | Phase::Running);
    let record = if status.indexes.is_empty() {
        status
            .current()
            .filter(|a| a.number == attempt && index == 0 && live(status.phase))
    } else {
        // A fan-out: the index's own attempt must be the one running.
        status
            .indexes
            .iter()
            .find(|l| l.index == index && l.attempt == attempt && live(l.phase))
            .and_then(|_| {
                status
                    .attempts
                    .iter()
                    .rev()
                    .find(|a| a.index == Some(index) && a.number == attempt)
            })
    };
    record.filter(|a| a.completed_by.is_none() && attempt_id(a).as_deref() == Some(id))
}

/// After recording, whether this event is (or already was) the attempt's outcome. The
/// status is read again because the reconcile may have recorded an earlier event, and
/// removed its inbox copy, between the first look and the link: the link then succeeds
/// for an attempt that is already over, and that event must lose.
fn kept_after_record(
    status: Option<&TaskStatus>,
    attempt: u32,
    index: u32,
    id: &str,
    received_at: chrono::DateTime<chrono::Utc>,
) -> bool {
    let Some(status) = status else { return false };
    if live_attempt(status, attempt, index, id).is_some() {
        return true;
    }
    // Already applied: `finishedAt` of an event's attempt is the event's `receivedAt`.
    status.all_attempts().any(|a| {
        a.number == attempt
            && a.index.unwrap_or(0) == index
            && attempt_id(a).as_deref() == Some(id)
            && a.completed_by == Some(CompletedBy::Event)
            && a.finished_at == Some(received_at)
    })
}

/// A completion event is a JSON object (or nothing); serde alone would also read an
/// array as the fields in order.
fn parse_event(body: &[u8]) -> Result<CallbackEvent, String> {
    const SHAPE: &str = r#"send {"result": ..., "exitCode": 0, "message": "..."} or nothing"#;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CallbackEvent::default());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|err| format!("the body is not JSON ({err}); {SHAPE}"))?;
    if !value.is_object() {
        return Err(format!("the body must be a JSON object; {SHAPE}"));
    }
    serde_json::from_value(value).map_err(|err| format!("the body is not a completion event ({err}); {SHAPE}"))
}

/// Checks and records one completion event; answers 202 only once it is durable and the
/// attempt's first. The token is checked before anything is read: a caller without one
/// learns nothing, not even whether the task exists.
async fn callback(
    state: &ApiState,
    task: &str,
    query: CallbackQuery,
    body: Result<Bytes, BytesRejection>,
) -> (StatusCode, String) {
    let received = Instant::now();
    let key = match TaskKey::parse(task) {
        Ok(key) => key,
        Err(problem) => return (StatusCode::BAD_REQUEST, format!("not a task: {problem}")),
    };
    let (Some(token), Some(attempt), Some(id)) = (query.token.as_deref(), query.attempt, query.id.as_deref()) else {
        return (StatusCode::UNAUTHORIZED, "the callback URL's token is missing".into());
    };
    let index = query.index.unwrap_or(0);
    if !state.secret.verify(token, key.as_str(), attempt, index, id) {
        tracing::warn!(task = %key, attempt, "callback refused: wrong token");
        return (StatusCode::UNAUTHORIZED, "wrong token".into());
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return (rejection.status(), rejection.body_text()),
    };
    let mut event = match parse_event(&body) {
        Ok(event) => event,
        Err(message) => return (StatusCode::BAD_REQUEST, message),
    };
    let status = match state.store.read_status(&key).await {
        Ok(Some(status)) => status,
        Ok(None) => return (StatusCode::NOT_FOUND, format!("no task {key}")),
        Err(err) => {
            tracing::warn!(task = %key, "callback: cannot read the status: {err}");
            return (StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable".into());
        }
    };
    let Some(current) = live_attempt(&status, attempt, index, id) else {
        return (
            StatusCode::CONFLICT,
            format!(
                "attempt {attempt} (index {index}) of {key} is not running, or has been judged; its event is stale"
            ),
        );
    };
    let received_at = chrono::Utc::now();
    event.received_at = Some(received_at);
    let inbox = state.inbox.clone();
    let container = current.container.clone();
    let owned_id = id.to_string();
    let recording = Instant::now();
    let recorded = {
        let container = container.clone();
        tokio::task::spawn_blocking(move || inbox.record_first(&container, &owned_id, &event)).await
    };
    let inbox_us = recording.elapsed().as_micros() as u64;
    match recorded {
        Ok(Ok(Recorded::First)) => {}
        Ok(Ok(Recorded::AlreadyHeld)) => {
            return (
                StatusCode::CONFLICT,
                format!("attempt {attempt} (index {index}) of {key} already has its completion event"),
            );
        }
        Ok(Err(err)) => {
            tracing::warn!(task = %key, "callback: cannot record the event: {err}");
            return (StatusCode::SERVICE_UNAVAILABLE, "cannot record the event".into());
        }
        Err(err) => {
            tracing::warn!(task = %key, "callback: cannot record the event: {err}");
            return (StatusCode::SERVICE_UNAVAILABLE, "cannot record the event".into());
        }
    }
    let after = state.store.read_status(&key).await;
    let kept = match &after {
        Ok(after) => kept_after_record(after.as_ref(), attempt, index, id, received_at),
        // Unknown: keep the event; the reconcile applies it only to a live attempt.
        Err(_) => true,
    };
    if !kept {
        state.inbox.remove(&container, id);
        return (
            StatusCode::CONFLICT,
            format!("attempt {attempt} (index {index}) of {key} ended meanwhile; its event is stale"),
        );
    }
    let _ = state.control.send(Control::Event(key.clone(), received));
    tracing::info!(
        task = %key,
        attempt,
        inbox_us,
        accepted_us = received.elapsed().as_micros() as u64,
        "completion event accepted"
    );
    (StatusCode::ACCEPTED, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::RuntimeKind;
    use chrono::{TimeZone, Utc};

    fn running(created_ms: i64) -> (TaskStatus, String) {
        let created = Utc.timestamp_millis_opt(created_ms).unwrap();
        let mut status = TaskStatus::new("t", "t", "sha256:x", created);
        status.phase = Phase::Running;
        status.attempt = 1;
        status.attempts.push(AttemptRecord {
            number: 1,
            id: None,
            runtime: RuntimeKind::Process,
            container: "skiff-t-1".into(),
            index: None,
            created_at: Some(created),
            started_at: Some(created),
            finished_at: None,
            exit_code: None,
            completed_by: None,
            reason: None,
            message: None,
            placement: None,
            semaphores: Vec::new(),
            exit_rule: None,
        });
        let id = crate::status::format_time(&created);
        (status, id)
    }

    #[test]
    fn only_the_running_attempt_with_its_own_id_takes_an_event() {
        let (status, id) = running(1_000);
        assert!(live_attempt(&status, 1, 0, &id).is_some());
        assert!(live_attempt(&status, 2, 0, &id).is_none(), "another attempt");
        assert!(live_attempt(&status, 1, 1, &id).is_none(), "another index");
        // The same attempt number of an earlier run (a deleted status): another id.
        let (_, old_id) = running(500);
        assert!(live_attempt(&status, 1, 0, &old_id).is_none());
        let mut judged = status.clone();
        judged.attempts[0].completed_by = Some(CompletedBy::Poll);
        assert!(live_attempt(&judged, 1, 0, &id).is_none(), "already judged");
        // An attempt with its own random id is known by it alone, not by its createdAt.
        let mut with_id = status.clone();
        with_id.attempts[0].id = Some("5eed".into());
        assert!(live_attempt(&with_id, 1, 0, "5eed").is_some());
        assert!(live_attempt(&with_id, 1, 0, &id).is_none());
    }

    #[test]
    fn an_overlapping_runs_attempt_takes_its_own_event() {
        // Run 1 at the top level has ended; run 2 runs beside it (concurrencyPolicy: Allow).
        let (mut status, _) = running(1_000);
        status.phase = Phase::Succeeded;
        status.attempts[0].completed_by = Some(CompletedBy::Poll);
        let (mut run2, _) = running(1_500);
        run2.attempts[0].id = Some("0a2b".into());
        run2.attempts[0].container = "skiff-t-r2-1".into();
        let created = Utc.timestamp_millis_opt(1_000).unwrap();
        status.schedule = Some(crate::status::ScheduleStatus {
            cron: "@every 1s".into(),
            last_scheduled_at: None,
            next_scheduled_at: None,
            active: vec![created],
            handled_through: created,
            run_count: 2,
            triggered_at: None,
            current_run: Some(1),
            overlapping: vec![crate::status::OverlappingRun::from_view(2, created, run2)],
        });
        let found = live_attempt(&status, 1, 0, "0a2b").expect("run 2's attempt takes the event");
        assert_eq!(found.container, "skiff-t-r2-1");
        assert!(live_attempt(&status, 1, 0, "other").is_none(), "another attempt's id");
    }

    #[test]
    fn an_event_recorded_after_the_attempt_took_another_loses() {
        let (status, id) = running(1_000);
        let ours = Utc.timestamp_millis_opt(2_000).unwrap();
        assert!(
            kept_after_record(Some(&status), 1, 0, &id, ours),
            "still running: ours is the one"
        );
        let mut applied = status.clone();
        applied.phase = Phase::Deleting;
        applied.attempts[0].completed_by = Some(CompletedBy::Event);
        applied.attempts[0].finished_at = Some(ours);
        assert!(
            kept_after_record(Some(&applied), 1, 0, &id, ours),
            "ours was applied already"
        );
        let earlier = Utc.timestamp_millis_opt(1_500).unwrap();
        applied.attempts[0].finished_at = Some(earlier);
        assert!(!kept_after_record(Some(&applied), 1, 0, &id, ours), "another event won");
        let mut ended = status.clone();
        ended.phase = Phase::Failed;
        ended.attempts[0].completed_by = Some(CompletedBy::Terminate);
        assert!(!kept_after_record(Some(&ended), 1, 0, &id, ours));
        assert!(!kept_after_record(None, 1, 0, &id, ours), "the status was deleted");
    }

    #[test]
    fn a_completion_event_is_an_object_or_nothing() {
        assert_eq!(parse_event(b"  \n").unwrap(), CallbackEvent::default());
        assert_eq!(parse_event(br#"{"exitCode":3}"#).unwrap().exit_code, Some(3));
        for bad in [
            &b"[1,2]"[..],
            b"[3,\"m\",{}]",
            b"null",
            b"7",
            b"\"x\"",
            b"{\"exit\":1}",
            b"{",
        ] {
            assert!(parse_event(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
