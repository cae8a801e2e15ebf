//! The controller's own log lines on stderr, written so that stderr can never stop the
//! controller: a closed pipe drops lines instead of panicking, and a pipe nobody reads
//! drops lines instead of blocking a reconcile or the signal handler.

use super::{LogFormat, UsageError};
use std::io::{self, Write};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// How many formatted lines may wait for a slow stderr before new ones are dropped.
const BUFFERED_LINES: usize = 16_384;

/// Stderr that reports every write as done: a log line that cannot be written is lost,
/// which is the right price for a controller that keeps running (its statuses are the
/// record, not its log).
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        super::progress::around_bar(|| {
            let _ = io::stderr().write_all(buf);
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Installs the subscriber. Keep the guard until the end of `main`: dropping it flushes
/// the lines still queued (the last "stopping" line among them).
pub fn init(filter: &str, format: LogFormat) -> anyhow::Result<WorkerGuard> {
    // Other crates speak only when they have something worth a warning.
    let filter = if filter.contains('=') || filter.contains(',') {
        filter.to_string()
    } else {
        format!("warn,skiff={filter}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|err| UsageError(format!("--log {filter}: {err}; write e.g. info or skiff=debug")))?;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("skiff-log")
        .finish(LossyStderr);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        // Its own complaint about a failed write goes through eprintln!, which panics
        // on a closed stderr.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(io::IsTerminal::is_terminal(&io::stderr())).try_init(),
        // Fields at the top level (`task`, `attempt`, `phase`, `reason`, `message`), as
        // log shippers index them.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).try_init(),
    };
    Ok(guard)
}
