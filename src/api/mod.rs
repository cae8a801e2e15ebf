//! The HTTP API (DESIGN.md §10): health, metrics, read-only task views, terminate, and
//! the completion callback.
//!
//! Management routes take an optional bearer token (`--api-token-file`); the callback
//! route is authorised by its per-attempt token alone. Tokens never reach a log.

use crate::callback::{CallbackEvent, CallbackSecret, Inbox, MAX_EVENT_BYTES};
use crate::controller::{Control, Health};
use crate::metrics::Metrics;
use crate::status::{Phase, TaskStatus};
use crate::store::Store;
use crate::task::TaskKey;
use axum::Router;
use axum::body::Bytes;
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
    let is_callback = request.method() == axum::http::Method::POST && request.uri().path().ends_with("/events");
    if let Some(expected) = &state.api_token
        && !is_callback
    {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return problem(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required (see --api-token-file)",
            );
        }
    }
    next.run(request).await
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
        Err(err) => return problem(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
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

async fn get_task(State(state): State<ApiState>, Path(task): Path<String>) -> Response {
    match state.store.read_status(&TaskKey::new(task.clone())).await {
        Ok(Some(status)) => axum::Json(status).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no task {task}")),
        Err(err) => problem(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    token: Option<String>,
    attempt: Option<u32>,
    index: Option<u32>,
}

async fn post_task(
    State(state): State<ApiState>,
    Path(path): Path<String>,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The dashboard puts these routes in a browser: another site's page may not use them.
    if !path.ends_with("/events") && dashboard::cross_site(&headers) {
        return problem(StatusCode::FORBIDDEN, "a request from another site's page is refused");
    }
    if let Some(task) = path.strip_suffix("/terminate") {
        return terminate(&state, task).await;
    }
    if let Some(task) = path.strip_suffix("/rerun") {
        return dashboard::rerun(&state, task).await;
    }
    if let Some(task) = path.strip_suffix("/events") {
        let code = callback(&state, task, query, body).await;
        state
            .metrics
            .callbacks
            .get_or_create(&Metrics::label("code", code.0.as_str()))
            .inc();
        return problem_or_accept(code);
    }
    problem(
        StatusCode::NOT_FOUND,
        "POST /v1/tasks/{task}/terminate, /v1/tasks/{task}/rerun or /v1/tasks/{task}/events",
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
    let key = TaskKey::new(task);
    match state.store.read_status(&key).await {
        Ok(Some(status)) if status.phase.is_final() => {
            problem(StatusCode::CONFLICT, format!("task {task} is already {}", status.phase))
        }
        Ok(Some(_)) => {
            let _ = state.control.send(Control::Terminate(key));
            (StatusCode::ACCEPTED, axum::Json(json!({"terminating": task}))).into_response()
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no task {task}")),
        Err(err) => problem(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

/// Checks and records one completion event; answers 202 only once it is durable.
async fn callback(state: &ApiState, task: &str, query: CallbackQuery, body: Bytes) -> (StatusCode, String) {
    let received = Instant::now();
    let key = TaskKey::new(task);
    let status = match state.store.read_status(&key).await {
        Ok(Some(status)) => status,
        Ok(None) => return (StatusCode::NOT_FOUND, format!("no task {task}")),
        Err(err) => return (StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    };
    let (Some(token), Some(attempt)) = (query.token.as_deref(), query.attempt) else {
        return (StatusCode::UNAUTHORIZED, "the callback URL's token is missing".into());
    };
    let index = query.index.unwrap_or(0);
    if !state.secret.verify(token, task, attempt, index, &status.spec_hash) {
        tracing::warn!(task, attempt, "callback refused: wrong token");
        return (StatusCode::UNAUTHORIZED, "wrong token".into());
    }
    let live = |phase: Phase| matches!(phase, Phase::Creating | Phase::Running);
    let current = if status.indexes.is_empty() {
        status.current().filter(|a| a.number == attempt && live(status.phase))
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
                    .find(|a| a.index == Some(index) && a.number == attempt)
            })
    };
    let Some(current) = current else {
        return (
            StatusCode::CONFLICT,
            format!("attempt {attempt} (index {index}) of {task} is not the running attempt; its event is stale"),
        );
    };
    let mut event: CallbackEvent = if body.iter().all(u8::is_ascii_whitespace) {
        CallbackEvent::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(event) => event,
            Err(err) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body is not a completion event ({err}); send {{\"result\": ..., \"exitCode\": 0, \"message\": \"...\"}} or nothing"
                    ),
                );
            }
        }
    };
    event.received_at = Some(chrono::Utc::now());
    let inbox = state.inbox.clone();
    let container = current.container.clone();
    let recorded = tokio::task::spawn_blocking(move || inbox.record(&container, &event)).await;
    match recorded {
        Ok(Ok(())) => {
            let _ = state.control.send(Control::Event(key, received));
            tracing::info!(task, attempt, "completion event accepted");
            (StatusCode::ACCEPTED, String::new())
        }
        Ok(Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot record the event: {err}"),
        ),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot record the event: {err}"),
        ),
    }
}
