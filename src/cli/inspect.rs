//! `skiff get` and `skiff describe`: read-only views of the status files.

use super::{DescribeArgs, GetArgs, OutputFormat, UsageError, open_store, printable};
use crate::status::Phase;
use crate::status::{TaskStatus, Timestamp, format_time};
use crate::store::{Store, problem_status};
use crate::task::TaskKey;
use chrono::Utc;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

/// Every task (or the one named) with its status; `None` for a manifest not yet seen
/// by a controller. A task whose status cannot be read is listed with its problem
/// ([`problem_status`]): one bad file never hides the others.
pub(super) async fn load(store: &dyn Store, only: Option<&str>) -> anyhow::Result<Vec<(TaskKey, Option<TaskStatus>)>> {
    let keys: Vec<TaskKey> = match only {
        Some(task) => vec![task_key(task)?],
        None => store.list().await?.into_iter().map(|l| l.key).collect(),
    };
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let status = match store.read_status(&key).await {
            Ok(status) => status,
            Err(err) if err.is_about_one_task() => Some(problem_status(&key, &err)),
            Err(err) => return Err(err.into()),
        };
        if only.is_some() && status.is_none() && store.list_one(&key).await?.is_none() {
            return Err(UsageError(format!(
                "no task {key} in {}; `skiff get` lists the tasks",
                store.location()
            ))
            .into());
        }
        out.push((key, status));
    }
    Ok(out)
}

/// A task as the user typed it: `jobs/thumb`, or its manifest's path. A key that could
/// name something outside the folder is a usage error (exit 2).
pub(super) fn task_key(task: &str) -> Result<TaskKey, UsageError> {
    let trimmed = task.trim_start_matches("./");
    let stem = [".yaml", ".yml", ".json"]
        .iter()
        .find_map(|ext| trimmed.strip_suffix(ext))
        .unwrap_or(trimmed);
    TaskKey::parse(stem).map_err(|problem| {
        UsageError(format!(
            "{task:?} is not a task: {problem}; name it by its path relative to the folder, without extension, e.g. jobs/thumb"
        ))
    })
}

pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.source)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut last = String::new();
        loop {
            let tasks = load(&*store, args.task.as_deref()).await?;
            let text = render(&tasks, args.output)?;
            if text != last {
                if args.watch && !last.is_empty() {
                    println!();
                }
                print!("{text}");
                last = text;
            }
            if !args.watch {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

fn render(tasks: &[(TaskKey, Option<TaskStatus>)], format: OutputFormat) -> anyhow::Result<String> {
    let statuses: Vec<&TaskStatus> = tasks.iter().filter_map(|(_, s)| s.as_ref()).collect();
    Ok(match format {
        OutputFormat::Json => format!("{}\n", serde_json::to_string_pretty(&statuses)?),
        OutputFormat::Yaml => yaml_serde::to_string(&statuses)?,
        OutputFormat::Table => table(tasks, Utc::now()),
    })
}

fn table(tasks: &[(TaskKey, Option<TaskStatus>)], now: Timestamp) -> String {
    // SCHEDULE and NEXT only when a task has a schedule: other listings stay as they were.
    let scheduled = tasks
        .iter()
        .any(|(_, s)| s.as_ref().is_some_and(|s| s.schedule.is_some()));
    // PROGRESS only when a task reports progress through heartbeats, before REASON (whose
    // text may be long).
    let progressing = tasks.iter().any(|(_, s)| {
        s.as_ref()
            .is_some_and(|s| s.progress.is_some() || s.progress_message.is_some())
    });
    let mut header = vec!["TASK", "PHASE", "ATTEMPT", "AGE", "DURATION", "REASON"];
    if progressing {
        header.insert(5, "PROGRESS");
    }
    if scheduled {
        header.extend(["SCHEDULE", "NEXT"]);
    }
    let mut rows: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    for (key, status) in tasks {
        let mut row = match status {
            None => vec![
                key.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                // A controller may hold a new task back for a second before saying
                // it waits for a slot (`pass::QUIET_WAIT`).
                "no status yet: new, or not seen by a controller".into(),
            ],
            Some(s) => {
                let first = s.attempts.first().and_then(|a| a.created_at).unwrap_or(s.updated_at);
                let duration = s.current().and_then(|a| {
                    let start = a.started_at?;
                    Some(short(a.finished_at.unwrap_or(now) - start))
                });
                // An Invalid task has no reason to show, but its message says what to fix.
                let reason = match (s.reason, s.phase, &s.message) {
                    (Some(r), _, _) => format!("{r:?}"),
                    // All of it: a file name in it may hold a newline, escaped below.
                    (None, Phase::Invalid, Some(message)) => message.clone(),
                    _ => String::new(),
                };
                vec![
                    key.to_string(),
                    s.phase.to_string(),
                    s.attempt.to_string(),
                    short(now - first),
                    duration.unwrap_or_else(|| "-".into()),
                    reason,
                ]
            }
        };
        if progressing {
            row.insert(5, status.as_ref().map_or_else(|| "-".into(), progress_cell));
        }
        if scheduled {
            let schedule = status.as_ref().and_then(|s| s.schedule.as_ref());
            row.push(schedule.map_or("-".into(), |s| s.cron.clone()));
            row.push(
                schedule
                    .and_then(|s| s.next_scheduled_at)
                    .map_or("-".into(), |next| format!("in {}", short(next - now))),
            );
        }
        rows.push(row.into_iter().map(|cell| printable(&cell).into_owned()).collect());
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// A heartbeat's progress as a percentage, `-` when none was reported.
fn progress_cell(s: &TaskStatus) -> String {
    s.progress.map_or_else(|| "-".into(), |p| format!("{:.0}%", p * 100.0))
}

/// `3s`, `4m10s`, `2h5m`, `3d4h`: two units at most, as kubectl prints ages.
fn short(delta: chrono::TimeDelta) -> String {
    let secs = delta.num_seconds().max(0);
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) if delta.num_milliseconds() < 10_000 => {
            format!("{:.1}s", delta.num_milliseconds().max(0) as f64 / 1000.0)
        }
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

pub fn describe(args: DescribeArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.source)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tasks = runtime.block_on(load(&*store, Some(&args.task)))?;
    for (key, status) in tasks {
        match status {
            None => println!(
                "Task:     {}\nPhase:    - (no status yet: new, or not seen by a controller)",
                printable(key.as_str())
            ),
            Some(status) => print!("{}", describe_text(&status)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The status for a terminal: every control character escaped except the newlines
/// that lay the text out (a message's own newlines become indented lines).
fn describe_text(s: &TaskStatus) -> String {
    describe_raw(s)
        .split('\n')
        .map(printable)
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe_raw(s: &TaskStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Task:         {}", s.task);
    let _ = writeln!(out, "Name:         {}", s.name);
    let _ = writeln!(out, "Phase:        {}", s.phase);
    if let Some(reason) = s.reason {
        let _ = writeln!(out, "Reason:       {reason:?}");
    }
    if let Some(message) = &s.message {
        let _ = writeln!(out, "Message:      {}", message.replace('\n', "\n              "));
    }
    let _ = writeln!(
        out,
        "Spec hash:    {}",
        if s.spec_hash.is_empty() { "-" } else { &s.spec_hash }
    );
    let _ = writeln!(out, "Attempt:      {}", s.attempt);
    if s.progress.is_some() || s.progress_message.is_some() {
        let _ = writeln!(
            out,
            "Progress:     {}{}",
            progress_cell(s),
            s.progress_message
                .as_ref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default()
        );
    }
    if let Some(at) = &s.next_attempt_at {
        let _ = writeln!(out, "Next attempt: {}", format_time(at));
    }
    let _ = writeln!(out, "Updated:      {}", format_time(&s.updated_at));
    if let Some(at) = &s.observed_at {
        let _ = writeln!(out, "Observed:     {}", format_time(at));
    }
    for (task, hash) in &s.dependencies {
        let _ = writeln!(out, "Depends on:   {task} (spec {hash})");
    }
    if let Some(schedule) = &s.schedule {
        let time = |t: &Option<Timestamp>| t.as_ref().map(format_time).unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "Schedule:     {}", schedule.cron);
        let _ = writeln!(out, "Last time:    {}", time(&schedule.last_scheduled_at));
        let _ = writeln!(out, "Next time:    {}", time(&schedule.next_scheduled_at));
        let active: Vec<String> = schedule.active.iter().map(format_time).collect();
        let _ = writeln!(
            out,
            "Active:       {}",
            if active.is_empty() {
                "-".into()
            } else {
                active.join(", ")
            }
        );
    }
    if !s.runs.is_empty() {
        let _ = writeln!(out, "Runs:");
        for run in &s.runs {
            let _ = writeln!(
                out,
                "  {}  {:<9}  run {}  attempts {}  exit {}  {}{}{}",
                format_time(&run.scheduled_at),
                run.phase.map_or("-", Phase::as_str),
                run.run.map_or("-".into(), |n| n.to_string()),
                run.attempts,
                run.exit_code.map_or("-".into(), |c| c.to_string()),
                run.reason.map(|r| format!("{r:?}")).unwrap_or_default(),
                run.message.as_ref().map(|m| format!("  {m}")).unwrap_or_default(),
                run.result.as_ref().map(|r| format!("  result {r}")).unwrap_or_default(),
            );
        }
    }
    if !s.indexes.is_empty() {
        let _ = writeln!(out, "Indexes:");
        for lane in &s.indexes {
            let _ = writeln!(
                out,
                "  {:>3}  {:<9}  attempt {}  exit {}{}{}",
                lane.index,
                lane.phase.as_str(),
                lane.attempt,
                lane.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                lane.message.as_ref().map(|m| format!("  {m}")).unwrap_or_default(),
                lane.result
                    .as_ref()
                    .map(|r| format!("  result {r}"))
                    .unwrap_or_default(),
            );
        }
    }
    if !s.attempts.is_empty() {
        let _ = writeln!(out, "Attempts:");
        for a in &s.attempts {
            let time = |t: &Option<Timestamp>| t.as_ref().map(format_time).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  #{}{} {} {}\n     created {}  started {}  finished {}\n     exit {}  completed by {}  reason {}{}",
                a.number,
                a.index.map(|i| format!(" index {i}")).unwrap_or_default(),
                a.runtime,
                a.container,
                time(&a.created_at),
                time(&a.started_at),
                time(&a.finished_at),
                a.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                a.completed_by
                    .map(|c| format!("{c:?}").to_lowercase())
                    .unwrap_or_else(|| "-".into()),
                a.reason.map(|r| format!("{r:?}")).unwrap_or_else(|| "-".into()),
                a.message.as_ref().map(|m| format!("\n     {m}")).unwrap_or_default(),
            );
        }
    }
    if let Some(result) = &s.result {
        let _ = writeln!(out, "Result:       {result}");
    }
    if let Some(tail) = &s.log_tail {
        let _ = writeln!(out, "Log tail:");
        for line in tail.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        assert_eq!(short(chrono::TimeDelta::milliseconds(1500)), "1.5s");
        assert_eq!(short(chrono::TimeDelta::seconds(75)), "1m15s");
        assert_eq!(short(chrono::TimeDelta::seconds(7300)), "2h1m");
        assert_eq!(short(chrono::TimeDelta::seconds(90_000)), "1d1h");
    }

    #[test]
    fn table_has_the_contract_columns() {
        let status = TaskStatus::new("jobs/a", "a", "h", Utc::now());
        let text = table(
            &[(TaskKey::new("jobs/a"), Some(status)), (TaskKey::new("b"), None)],
            Utc::now(),
        );
        let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["TASK", "PHASE", "ATTEMPT", "AGE", "DURATION", "REASON"]);
        assert!(text.contains("jobs/a  Pending"));
    }

    #[test]
    fn progress_shows_in_get_and_describe_once_reported() {
        let mut status = TaskStatus::new("r", "r", "h", Utc::now());
        status.phase = Phase::Running;
        status.progress = Some(0.42);
        status.progress_message = Some("frame 420/1000".into());
        let quiet = TaskStatus::new("q", "q", "h", Utc::now());
        let text = table(
            &[
                (TaskKey::new("r"), Some(status.clone())),
                (TaskKey::new("q"), Some(quiet)),
            ],
            Utc::now(),
        );
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            lines[0],
            ["TASK", "PHASE", "ATTEMPT", "AGE", "DURATION", "PROGRESS", "REASON"]
        );
        assert_eq!(lines[1][5], "42%");
        assert_eq!(lines[2][5], "-");
        let described = describe_text(&status);
        assert!(described.contains("Progress:     42%  frame 420/1000"), "{described}");
    }
}
