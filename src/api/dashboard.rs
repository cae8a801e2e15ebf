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
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tower_http::timeout::TimeoutLayer;

const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

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

/// Why a page has no data to show.
enum NoData {
    /// A token is required and the request had none: the script will ask for it.
    Locked,
    Unavailable(String),
}
use NoData::{Locked, Unavailable};

/// Text made safe for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            ch => out.push(ch),
        }
    }
    out
}

/// The one-task page's address: each path segment percent-encoded.
pub fn task_href(task: &str) -> String {
    let encoded: Vec<String> = task.split('/').map(|s| urlencoding::encode(s).into_owned()).collect();
    format!("/tasks/{}", encoded.join("/"))
}

/// `42s`, `3m 5s`, `2h 4m`, `3d 1h`: what a glance needs.
pub fn human(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A run's duration: tenths of a second below 10 s (most tasks of a batch take less than
/// one, and "0s" for all of them says nothing), else as [`human`].
pub fn human_duration(millis: i64) -> String {
    if millis < 10_000 {
        format!("{:.1}s", millis.max(0) as f64 / 1000.0)
    } else {
        human(millis / 1000)
    }
}

/// What a row shows beside the phase, computed the same way as in `app.js`.
struct Facts {
    age: String,
    duration: String,
    runtime: String,
    progress: String,
}

fn facts(status: &TaskStatus, now: DateTime<Utc>) -> Facts {
    let since = |t: DateTime<Utc>| (now - t).num_seconds();
    let first = status.attempts.iter().filter_map(|a| a.created_at).min();
    let current = status.current();
    let duration = current.and_then(|a| {
        let start = a.started_at?;
        let end = a.finished_at.unwrap_or(now);
        Some(human_duration((end - start).num_milliseconds()))
    });
    let progress = if status.indexes.is_empty() {
        String::new()
    } else {
        let done = status.indexes.iter().filter(|l| l.phase == Phase::Succeeded).count();
        format!("{done}/{}", status.indexes.len())
    };
    Facts {
        age: human(since(first.unwrap_or(status.updated_at))),
        duration: duration.unwrap_or_default(),
        runtime: current.map(|a| a.runtime.as_str().to_string()).unwrap_or_default(),
        progress,
    }
}

fn reason(status: &TaskStatus) -> String {
    status.reason.map(|r| format!("{r:?}")).unwrap_or_default()
}

/// The reason, or the message when there is none (an Invalid task has only a message).
fn reason_or_message(status: &TaskStatus) -> String {
    match status.reason {
        Some(_) => reason(status),
        None => status.message.clone().unwrap_or_default(),
    }
}

fn badge(phase: Phase) -> String {
    format!(r#"<span class="badge phase-{p}">{p}</span>"#, p = phase.as_str())
}

fn page(title: &str, view: &str, task: &str, auth_required: bool, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/app.css">
<script src="/assets/app.js" defer></script>
</head>
<body data-view="{view}" data-task="{task}" data-auth="{auth}">
<header>
<h1><a href="/">skiff</a></h1>
<span id="live" class="live off" title="live updates from /v1/watch">static</span>
<form id="token-form" class="hidden"><label>API token <input id="token" type="password" autocomplete="off"></label> <button type="submit">Use</button></form>
<button id="forget-token" class="hidden" type="button">Forget token</button>
</header>
<main>
{body}
</main>
<div id="notice" class="notice hidden" role="status"></div>
</body>
</html>
"#,
        title = esc(title),
        view = view,
        task = esc(task),
        auth = if auth_required { "required" } else { "open" },
    )
}

fn no_data_row(columns: usize, why: &NoData) -> String {
    let text = match why {
        Locked => "This controller requires its API token (--api-token-file): enter it above.".to_string(),
        Unavailable(err) => format!("The store cannot be read: {err}"),
    };
    format!(r#"<tr class="empty"><td colspan="{columns}">{}</td></tr>"#, esc(&text))
}

const COLUMNS: [(&str, &str); 8] = [
    ("task", "Task"),
    ("phase", "Phase"),
    ("reason", "Reason"),
    ("attempt", "Attempt"),
    ("age", "Age"),
    ("duration", "Duration"),
    ("runtime", "Runtime"),
    ("progress", "Progress"),
];

fn render_index(statuses: Result<&[TaskStatus], NoData>, auth_required: bool, now: DateTime<Utc>) -> String {
    let mut body = String::new();
    let empty: &[TaskStatus] = &[];
    let list = statuses.as_ref().map(|l| *l).unwrap_or(empty);
    body.push_str(r#"<section id="counts" class="counts">"#);
    let _ = write!(
        body,
        r#"<span class="count count-all" data-phase="">All <b>{}</b></span>"#,
        list.len()
    );
    for phase in Phase::ALL {
        let n = list.iter().filter(|s| s.phase == phase).count();
        let _ = write!(
            body,
            r#"<span class="count phase-{p}" data-phase="{p}">{p} <b>{n}</b></span>"#,
            p = phase.as_str()
        );
    }
    body.push_str("</section>\n");
    body.push_str(
        r#"<section id="tools" class="tools hidden"><input id="filter-text" type="search" placeholder="filter by text" aria-label="filter by text"> <select id="filter-phase" aria-label="filter by phase"><option value="">every phase</option>"#,
    );
    for phase in Phase::ALL {
        let _ = write!(body, r#"<option value="{p}">{p}</option>"#, p = phase.as_str());
    }
    body.push_str("</select></section>\n");
    body.push_str(r#"<table id="tasks"><thead><tr>"#);
    for (key, label) in COLUMNS {
        let _ = write!(body, r#"<th data-sort="{key}">{label}</th>"#);
    }
    body.push_str(r#"<th class="actions-col"></th></tr></thead><tbody>"#);
    match &statuses {
        Err(why) => body.push_str(&no_data_row(COLUMNS.len() + 1, why)),
        Ok(list) => {
            for status in list.iter() {
                let f = facts(status, now);
                let why = status.message.as_deref().unwrap_or("");
                // A waiting task says why in so many words (`max-running 8/8`).
                let waiting = match (status.phase, &status.message) {
                    (Phase::Pending, Some(message)) => format!(r#"<div class="why">{}</div>"#, esc(message)),
                    _ => String::new(),
                };
                let _ = write!(
                    body,
                    r#"<tr data-task="{key}" data-phase="{phase}"><td class="task"><a href="{href}">{key}</a>{name}</td><td>{badge}</td><td class="reason" title="{why}">{reason}{waiting}</td><td class="num">{attempt}</td><td class="num">{age}</td><td class="num">{duration}</td><td>{runtime}</td><td class="num">{progress}</td><td class="actions"></td></tr>"#,
                    key = esc(&status.task),
                    href = esc(&task_href(&status.task)),
                    name = if status.name.is_empty() || status.task.ends_with(&status.name) {
                        String::new()
                    } else {
                        format!(r#" <span class="name">{}</span>"#, esc(&status.name))
                    },
                    phase = status.phase.as_str(),
                    badge = badge(status.phase),
                    why = esc(why),
                    reason = esc(&reason_or_message(status)),
                    attempt = status.attempt,
                    age = f.age,
                    duration = f.duration,
                    runtime = esc(&f.runtime),
                    progress = f.progress,
                );
            }
            if list.is_empty() {
                let _ = write!(
                    body,
                    r#"<tr class="empty"><td colspan="{}">No tasks yet.</td></tr>"#,
                    COLUMNS.len() + 1
                );
            }
        }
    }
    body.push_str("</tbody></table>\n");
    body.push_str(
        r#"<section id="chart" class="chart hidden"><h2>Durations of the last finished tasks</h2><div id="chart-svg"></div></section>"#,
    );
    page("skiff tasks", "index", "", auth_required, &body)
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn render_task(
    task: &str,
    status: Result<Option<&TaskStatus>, NoData>,
    auth_required: bool,
    now: DateTime<Utc>,
) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<h2 id="task-title">{}</h2><div id="task-actions" class="actions"></div><div id="task-body">"#,
        esc(task)
    );
    match status {
        Err(why) => {
            let _ = write!(body, "<table>{}</table>", no_data_row(1, &why));
        }
        Ok(None) => {
            let _ = write!(body, r#"<p class="empty">No status for {} (yet).</p>"#, esc(task));
        }
        Ok(Some(status)) => body.push_str(&render_task_body(status, now)),
    }
    body.push_str("</div>");
    page(&format!("skiff {task}"), "task", task, auth_required, &body)
}

fn render_task_body(status: &TaskStatus, now: DateTime<Utc>) -> String {
    let mut body = String::new();
    let f = facts(status, now);
    let _ = write!(
        body,
        r#"<dl class="facts"><dt>Phase</dt><dd>{badge}</dd><dt>Reason</dt><dd>{reason}</dd><dt>Message</dt><dd>{message}</dd><dt>Name</dt><dd>{name}</dd><dt>Attempt</dt><dd>{attempt}</dd><dt>Age</dt><dd>{age}</dd><dt>Duration</dt><dd>{duration}</dd><dt>Spec hash</dt><dd class="mono">{hash}</dd><dt>Next attempt</dt><dd>{next}</dd><dt>Updated</dt><dd>{updated}</dd></dl>"#,
        badge = badge(status.phase),
        reason = esc(&reason(status)),
        message = esc(status.message.as_deref().unwrap_or("")),
        name = esc(&status.name),
        attempt = status.attempt,
        age = f.age,
        duration = f.duration,
        hash = esc(&status.spec_hash),
        next = time(status.next_attempt_at),
        updated = time(Some(status.updated_at)),
    );
    body.push_str(
        r#"<h3>Attempts</h3><table class="attempts"><thead><tr><th>#</th><th>Index</th><th>Runtime</th><th>Container</th><th>Created</th><th>Started</th><th>Finished</th><th>Exit code</th><th>Completed by</th><th>Reason</th></tr></thead><tbody>"#,
    );
    for a in &status.attempts {
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="mono">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td title="{}">{}</td></tr>"#,
            a.number,
            a.index.map(|i| i.to_string()).unwrap_or_default(),
            a.runtime.as_str(),
            esc(&a.container),
            time(a.created_at),
            time(a.started_at),
            time(a.finished_at),
            a.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            a.completed_by
                .and_then(|c| serde_json::to_value(c).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            esc(a.message.as_deref().unwrap_or("")),
            a.reason.map(|r| format!("{r:?}")).unwrap_or_default(),
        );
    }
    body.push_str("</tbody></table>");
    if !status.indexes.is_empty() {
        body.push_str(
            r#"<h3>Indexes</h3><table class="indexes"><thead><tr><th>Index</th><th>Phase</th><th>Attempt</th><th>Exit code</th><th>Reason</th></tr></thead><tbody>"#,
        );
        for lane in &status.indexes {
            let _ = write!(
                body,
                r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td title="{}">{}</td></tr>"#,
                lane.index,
                badge(lane.phase),
                lane.attempt,
                lane.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                esc(lane.message.as_deref().unwrap_or("")),
                lane.reason.map(|r| format!("{r:?}")).unwrap_or_default(),
            );
        }
        body.push_str("</tbody></table>");
    }
    if !status.dependencies.is_empty() {
        body.push_str(r#"<h3>Dependencies</h3><ul class="deps">"#);
        for dep in status.dependencies.keys() {
            let _ = write!(body, r#"<li><a href="{}">{}</a></li>"#, esc(&task_href(dep)), esc(dep));
        }
        body.push_str("</ul>");
    }
    if let Some(result) = &status.result {
        let pretty = serde_json::to_string_pretty(result).unwrap_or_default();
        let _ = write!(body, r#"<h3>Result</h3><pre class="result">{}</pre>"#, esc(&pretty));
    }
    let _ = write!(
        body,
        r#"<h3>Log tail</h3><pre class="log">{}</pre>"#,
        esc(status.log_tail.as_deref().unwrap_or(""))
    );
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::RuntimeKind;
    use crate::status::AttemptRecord;

    fn status(task: &str, phase: Phase) -> TaskStatus {
        let mut s = TaskStatus::new(task, task, "sha256:x", Utc::now());
        s.phase = phase;
        s
    }

    #[test]
    fn api_dashboard_escapes_what_users_control() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        let hostile = "<script>alert(1)</script>";
        let mut s = status(hostile, Phase::Failed);
        s.name = "<img src=x onerror=alert(2)>".into();
        s.message = Some("\"><b>m</b>".into());
        s.log_tail = Some("<b>bold</b>\n".into());
        s.result = Some(serde_json::json!({"html": "</pre><script>x()</script>"}));
        let index = render_index(Ok(std::slice::from_ref(&s)), false, Utc::now());
        let one = render_task(hostile, Ok(Some(&s)), false, Utc::now());
        for page in [&index, &one] {
            // The only script element is the page's own, by its source.
            assert_eq!(page.matches("<script").count(), 1, "{page}");
            assert!(!page.contains("<img"), "{page}");
            assert!(!page.contains("<b>bold") && !page.contains("<b>m"), "{page}");
            assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        }
        assert!(
            index.contains(r#"href="/tasks/%3Cscript%3Ealert%281%29%3C/script%3E""#),
            "{index}"
        );
        assert!(one.contains("&lt;/pre&gt;&lt;script&gt;x()"));
    }

    #[test]
    fn api_dashboard_table_has_a_row_per_task_counts_and_fan_out_progress() {
        let mut fan = status("jobs/fan", Phase::Running);
        for (i, phase) in [Phase::Succeeded, Phase::Running, Phase::Pending]
            .into_iter()
            .enumerate()
        {
            fan.indexes.push(crate::status::IndexStatus {
                index: i as u32,
                phase,
                attempt: 1,
                exit_code: None,
                result: None,
                reason: None,
                message: None,
                next_attempt_at: None,
            });
        }
        let now = Utc::now();
        let mut done = status("done", Phase::Succeeded);
        done.attempt = 1;
        done.attempts.push(AttemptRecord {
            number: 1,
            id: None,
            placement: None,
            runtime: RuntimeKind::Process,
            container: "skiff-done-1".into(),
            index: None,
            created_at: Some(now - chrono::Duration::seconds(130)),
            started_at: Some(now - chrono::Duration::seconds(125)),
            finished_at: Some(now - chrono::Duration::seconds(5)),
            exit_code: Some(0),
            completed_by: None,
            reason: None,
            message: None,
        });
        let mut waiting = status("queued", Phase::Pending);
        waiting.reason = Some(crate::status::Reason::WaitingForSlot);
        waiting.message = Some("max-running 1/1".into());
        let list = vec![done, fan, waiting];
        let page = render_index(Ok(&list), false, now);
        assert_eq!(page.matches("<tr data-task=").count(), 3);
        assert!(
            page.contains(r#"WaitingForSlot<div class="why">max-running 1/1</div>"#),
            "{page}"
        );
        assert!(page.contains(r#"data-phase="Running">Running <b>1</b>"#), "{page}");
        assert!(page.contains(r#"data-phase="Succeeded">Succeeded <b>1</b>"#));
        assert!(page.contains(r#"<td class="num">1/3</td>"#));
        // Age from the first attempt's creation; duration from start to finish.
        assert!(
            page.contains(r#"<td class="num">2m 10s</td><td class="num">2m 0s</td><td>process</td>"#),
            "{page}"
        );
    }

    #[test]
    fn api_dashboard_locked_pages_show_no_data() {
        let page = render_index(Err(Locked), true, Utc::now());
        assert!(page.contains(r#"data-auth="required""#));
        assert!(page.contains("requires its API token"));
        assert_eq!(page.matches("<tr data-task=").count(), 0);
    }

    #[test]
    fn api_dashboard_refuses_keys_outside_the_root() {
        for good in ["a", "jobs/thumb", "<script>alert(1)</script>", "a.b/c..d"] {
            assert!(TaskKey::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/x",
            "../x",
            "a/../b",
            "a//b",
            "a/",
            ".skiff/secret",
            "a/./b",
            "a\\b",
            "a\0b",
        ] {
            assert!(TaskKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn api_dashboard_tells_cross_site_requests() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_static(v));
            }
            map
        };
        assert!(!cross_site(&headers(&[])), "curl");
        assert!(!cross_site(&headers(&[
            ("host", "127.0.0.1:8466"),
            ("origin", "http://127.0.0.1:8466")
        ])));
        assert!(!cross_site(&headers(&[
            ("sec-fetch-site", "same-origin"),
            ("host", "a:1"),
            ("origin", "http://a:1")
        ])));
        assert!(cross_site(&headers(&[
            ("host", "127.0.0.1:8466"),
            ("origin", "http://evil.example")
        ])));
        assert!(cross_site(&headers(&[("host", "127.0.0.1:8466"), ("origin", "null")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])));
    }

    #[test]
    fn api_dashboard_human_durations() {
        assert_eq!(human(-3), "0s");
        assert_eq!(human(59), "59s");
        assert_eq!(human(61), "1m 1s");
        assert_eq!(human(3 * 3600 + 120), "3h 2m");
        assert_eq!(human(2 * 86400 + 3600), "2d 1h");
        assert_eq!(human_duration(340), "0.3s");
        assert_eq!(human_duration(9_960), "10.0s");
        assert_eq!(human_duration(75_000), "1m 15s");
    }
}
