//! The dashboard's two pages as plain HTML (the table of tasks, one task's page), before
//! the script takes over: everything a user controls goes through [`esc`].

use crate::status::{Phase, TaskStatus};
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

/// Why a page has no data to show.
pub(super) enum NoData {
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

pub(super) fn render_index(statuses: Result<&[TaskStatus], NoData>, auth_required: bool, now: DateTime<Utc>) -> String {
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

pub(super) fn render_task(
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
