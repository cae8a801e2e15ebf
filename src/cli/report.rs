//! `skiff report`: a container's completion event, POSTed to `$SKIFF_CALLBACK_URL` with
//! retries, so that a controller restarting meanwhile does not fail the attempt.
//!
//! It retries connection errors, timeouts, 408, 429 and 5xx with a doubling backoff (up
//! to `--timeout`), and stops at once on a final answer: 2xx, or another 4xx. A 409 after
//! a try that got no answer means that try was recorded (only the first event of an
//! attempt is kept), so it counts as done.

use super::{ReportArgs, UsageError};
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let url = std::env::var("SKIFF_CALLBACK_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            UsageError(
                "SKIFF_CALLBACK_URL is not set: skiff report runs inside a task with `completion: {mode: event}`"
                    .into(),
            )
        })?;
    let mut body = serde_json::Map::new();
    if let Some(result) = &args.result {
        let result: serde_json::Value = serde_json::from_str(result).map_err(|err| {
            UsageError(format!(
                "--result is not JSON ({err}); e.g. --result '{{\"frames\": 1}}'"
            ))
        })?;
        body.insert("result".into(), result);
    }
    if let Some(code) = args.exit_code {
        body.insert("exitCode".into(), code.into());
    }
    if let Some(message) = &args.message {
        body.insert("message".into(), message.clone().into());
    }
    let body = serde_json::Value::Object(body).to_string();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deadline = Instant::now() + args.timeout;
    runtime.block_on(async {
        let mut wait = Duration::from_millis(250);
        let mut unanswered = false;
        loop {
            let answer = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let why = match answer {
                Ok(answer) => {
                    let status = answer.status();
                    let text = answer.text().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(ExitCode::SUCCESS);
                    }
                    if status.as_u16() == 409 && unanswered {
                        eprintln!("skiff report: an earlier try was recorded ({text})");
                        return Ok(ExitCode::SUCCESS);
                    }
                    if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
                        eprintln!("skiff report: the controller refused the event: {status} {text}");
                        return Ok(ExitCode::from(1));
                    }
                    format!("{status} {text}")
                }
                Err(err) => {
                    unanswered = true;
                    err.to_string()
                }
            };
            if Instant::now() + wait > deadline {
                eprintln!(
                    "skiff report: gave up after {}: {why}",
                    humantime::format_duration(args.timeout)
                );
                return Ok(ExitCode::from(1));
            }
            eprintln!("skiff report: {why}; retrying in {wait:?}");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    })
}
