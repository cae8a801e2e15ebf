//! The dashboard (`GET /`, `GET /tasks/{task}`) and its embedded assets, `GET /v1/watch`,
//! `GET /v1/logs/{task}` (a running task's output, live), and the rerun action
//! (`POST /v1/tasks/{task}/rerun`).
//!
//! Progressive enhancement: both pages are rendered here as plain HTML (a `curl /` shows
//! the table), then `assets/app.js` takes over: it fetches `/v1/tasks`, follows
//! `/v1/watch`, filters, sorts, draws the chart and offers the actions. Everything a user
//! controls (task keys, names, reasons, messages, results, logs) goes through [`esc`]
//! here and through `textContent` in the script, and the Content-Security-Policy allows
//! scripts and styles from this server's files only: no inline script, no eval, no
//! network beyond this origin.

mod render;
#[cfg(test)]
mod tests;

use super::ApiState;
use super::watch::Hub;
use crate::manifest::RuntimeKind;
use crate::runtime::Runtime;
use crate::status::{Phase, TaskStatus};
use crate::task::TaskKey;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use render::NoData::{Locked, Unavailable};
pub use render::{esc, human, human_duration, task_href};
use render::{render_index, render_task};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tower_http::timeout::TimeoutLayer;

const APP_JS: &str = include_str!("../../../web/app.js");
const APP_CSS: &str = include_str!("../../../web/app.css");

/// Scripts, styles and fetches from this origin only; nothing inline, no eval, no frames.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                       img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct Dash {
    api: ApiState,
    hub: Hub,
    /// Where a running task's output is read from, by the runtime its attempt names.
    runtimes: Arc<HashMap<RuntimeKind, Arc<dyn Runtime>>>,
}

/// How often a followed log is read again while its container runs.
const LOG_EVERY: Duration = Duration::from_millis(500);

/// The dashboard's routes, to merge beside [`super::router`]'s. `/v1/watch` and
/// `/v1/logs/{task}` have no request timeout: they are streams that last as long as the
/// reader stays.
pub fn router(api: ApiState, hub: Hub, runtimes: &[Arc<dyn Runtime>]) -> Router {
    let runtimes = Arc::new(runtimes.iter().map(|r| (r.kind(), r.clone())).collect());
    let pages = Router::new()
        .route("/", get(index))
        .route("/tasks/{*task}", get(task_page))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            super::REQUEST_TIMEOUT,
        ));
    Router::new()
        .merge(pages)
        .route("/v1/watch", get(watch))
        .route("/v1/logs/{*task}", get(log_stream))
        .with_state(Dash { api, hub, runtimes })
}

/// The task a route names, checked where it is made (`TaskKey::parse`, DESIGN.md §12), or
/// the 400 that says why (without echoing the bad text, as the API's routes do).
fn parse_key(task: &str) -> Result<TaskKey, Box<Response>> {
    TaskKey::parse(task).map_err(|err| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": format!("not a task: {err}")})),
        )
            .into_response()
            .into()
    })
}

/// Whether a request was sent by a page of another site, as browsers say (`Sec-Fetch-Site`,
/// `Origin`). The dashboard puts the API in a browser: without a token, any page the
/// user visits could otherwise POST terminate or rerun to 127.0.0.1 (a form needs no CORS
/// consent to be sent). Scripts and curl send neither header and are not affected.
pub fn cross_site(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return true;
    }
    match (header("origin"), header("host")) {
        (None, _) => false,
        (Some(origin), Some(host)) => origin != format!("http://{host}") && origin != format!("https://{host}"),
        (Some(_), None) => true,
    }
}

/// Whether the request carries the API's bearer token, or none is required. The same
/// check as the management routes' (`--api-token-file`), in constant time.
fn authorized(api: &ApiState, headers: &HeaderMap) -> bool {
    super::check_bearer(api, headers).is_ok()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "a bearer token is required (see --api-token-file)"})),
    )
        .into_response()
}

async fn watch(State(dash): State<Dash>, headers: HeaderMap) -> Response {
    if !authorized(&dash.api, &headers) {
        return unauthorized();
    }
    let mut response = dash.hub.sse().into_response();
    // Proxies such as nginx buffer responses unless told not to; a buffered stream is not live.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `GET /v1/logs/{task}`: the last 4 KiB of the current attempt's output as Server-Sent
/// Events (`log`, data `{"tail": "...", "final": bool}`), sent again whenever it changes
/// while the container runs, and once more, final, when the task is done (then from the
/// status's `logTail`). The runtime keeps the output in files (or the engine); reading the
/// tail twice a second per reader is cheaper than a change feed per container.
async fn log_stream(State(dash): State<Dash>, Path(task): Path<String>, headers: HeaderMap) -> Response {
    if !authorized(&dash.api, &headers) {
        return unauthorized();
    }
    let key = match parse_key(&task) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    match dash.api.store.read_status(&key).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": format!("no status for task {task}")})),
            )
                .into_response();
        }
        Err(err) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": err.to_string()})),
            )
                .into_response();
        }
    }
    let closed = dash.hub.closed_token();
    // (last tail sent, done)
    let stream = futures_util::stream::unfold((dash, key, None::<String>, false), move |state| {
        let closed = closed.clone();
        async move {
            let (dash, key, last, done) = state;
            if done {
                return None;
            }
            loop {
                // A status that cannot be read or is gone (a rerun) ends the stream; the
                // page follows the task again when it runs.
                let status = dash.api.store.read_status(&key).await.ok().flatten()?;
                let live = status.phase.has_container();
                let tail = match status.current() {
                    Some(attempt) if live => match dash.runtimes.get(&attempt.runtime) {
                        Some(runtime) => runtime.log_tail(&attempt.container).await.ok().flatten(),
                        None => None,
                    },
                    _ => status.log_tail.clone(),
                }
                .unwrap_or_default();
                let finished = !live && status.phase != Phase::Pending;
                if finished || last.as_deref() != Some(tail.as_str()) {
                    let event = Event::default()
                        .event("log")
                        .data(json!({"tail": tail, "final": finished}).to_string());
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (dash, key, Some(tail), finished),
                    ));
                }
                tokio::select! {
                    _ = closed.cancelled() => return None,
                    _ = tokio::time::sleep(LOG_EVERY) => {}
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// `POST /v1/tasks/{task}/rerun`: deletes a final task's status, the contract's "run it
/// again" gesture (DESIGN.md §2). A task that is not final is refused with 409: deleting
/// the status of a live attempt would orphan its container.
pub(super) async fn rerun(state: &ApiState, task: &str) -> Response {
    let key = match parse_key(task) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let problem = |code: StatusCode, message: String| (code, axum::Json(json!({"error": message}))).into_response();
    // A plain read, never `read_status_for_update`: that one belongs to the task's
    // reconcile (the blob store makes the reconcile's next write conditional on it).
    match state.store.read_status(&key).await {
        Ok(Some(status)) if status.phase.is_final() => match state.store.delete_status(&key).await {
            Ok(()) => {
                tracing::info!(task, "rerun requested through the API (it was {})", status.phase);
                (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({"rerun": task, "was": status.phase})),
                )
                    .into_response()
            }
            Err(crate::store::StoreError::Conflict { .. }) => problem(
                StatusCode::CONFLICT,
                format!("task {task} changed while it was being rerun; look at it again"),
            ),
            Err(err) => problem(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
        },
        Ok(Some(status)) => problem(
            StatusCode::CONFLICT,
            format!(
                "task {task} is {}: only a finished task runs again; terminate it first",
                status.phase
            ),
        ),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no status for task {task}")),
        Err(err) => problem(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

/// Every task's status, as `GET /v1/tasks` lists them (an unreadable one with its problem).
async fn statuses(api: &ApiState) -> Result<Vec<TaskStatus>, String> {
    let listed = api.store.list().await.map_err(|err| err.to_string())?;
    let mut statuses = Vec::with_capacity(listed.len());
    for item in listed {
        match api.store.read_status(&item.key).await {
            Ok(Some(status)) => statuses.push(status),
            Ok(None) => {}
            Err(err) if err.is_about_one_task() => statuses.push(crate::store::problem_status(&item.key, &err)),
            Err(err) => return Err(err.to_string()),
        }
    }
    statuses.sort_by(|a, b| a.task.cmp(&b.task));
    Ok(statuses)
}

fn html(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn index(State(dash): State<Dash>, headers: HeaderMap) -> Response {
    let now = Utc::now();
    let auth_required = dash.api.api_token.is_some();
    if !authorized(&dash.api, &headers) {
        // A browser cannot send the bearer token on navigation: the script asks for it.
        return html(StatusCode::OK, render_index(Err(Locked), auth_required, now));
    }
    match statuses(&dash.api).await {
        Ok(list) => html(StatusCode::OK, render_index(Ok(&list), auth_required, now)),
        Err(err) => html(
            StatusCode::SERVICE_UNAVAILABLE,
            render_index(Err(Unavailable(err)), auth_required, now),
        ),
    }
}

async fn task_page(State(dash): State<Dash>, Path(task): Path<String>, headers: HeaderMap) -> Response {
    let now = Utc::now();
    let auth_required = dash.api.api_token.is_some();
    let key = match parse_key(&task) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    if !authorized(&dash.api, &headers) {
        return html(StatusCode::OK, render_task(&task, Err(Locked), auth_required, now));
    }
    match dash.api.store.read_status(&key).await {
        Ok(Some(status)) => html(
            StatusCode::OK,
            render_task(&task, Ok(Some(&status)), auth_required, now),
        ),
        Ok(None) => html(StatusCode::NOT_FOUND, render_task(&task, Ok(None), auth_required, now)),
        Err(err) => html(
            StatusCode::SERVICE_UNAVAILABLE,
            render_task(&task, Err(Unavailable(err.to_string())), auth_required, now),
        ),
    }
}
