//! `--once` on a terminal: a live line on stderr with the tasks by phase and how many of
//! them are done, drawn from the controller's own task gauges. Never shown when stderr is
//! not a terminal (CI logs, pipes, files stay plain lines).

use crate::metrics::Metrics;
use crate::status::Phase;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The bar while it is shown: log lines are written around it (see `cli::logging`).
static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Runs `write` with the bar (if any) cleared, so that a log line never lands inside it.
pub fn around_bar(write: impl FnOnce()) {
    match BAR.get() {
        Some(bar) if !bar.is_finished() => bar.suspend(write),
        _ => write(),
    }
}

/// Starts the live line when stderr is a terminal; `None` otherwise.
pub fn start(metrics: Arc<Metrics>) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} done  {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    let bar = BAR.get_or_init(|| bar).clone();
    Some(tokio::spawn(async move {
        loop {
            let (done, total, message) = summary(&metrics);
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(message);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }))
}

/// Clears the live line and leaves one plain summary line in its place.
pub fn finish(metrics: &Metrics) {
    if let Some(bar) = BAR.get() {
        let (done, total, message) = summary(metrics);
        bar.finish_and_clear();
        eprintln_lossy(&format!("{done} of {total} tasks done: {message}"));
    }
}

fn eprintln_lossy(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// (done, total, "3 running, 1 failed, ...") from the task gauges.
fn summary(metrics: &Metrics) -> (u64, u64, String) {
    let (mut done, mut total, mut parts) = (0u64, 0u64, Vec::new());
    for phase in Phase::ALL {
        let count = metrics
            .tasks
            .get_or_create(&Metrics::label("phase", phase.as_str()))
            .get()
            .max(0) as u64;
        total += count;
        if phase.is_final() {
            done += count;
        }
        if count > 0 {
            parts.push(format!("{count} {}", phase.as_str().to_lowercase()));
        }
    }
    (done, total, parts.join(", "))
}
