//! `skiff logs TASK [--follow]`: the output of the task's current (or last) attempt,
//! read from the process runtime's log files, live or archived.

use super::{LogsArgs, UsageError, inspect, open_dir_store, state_dir};
use crate::runtime::process::Layout;
use crate::store::Store;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let store = open_dir_store(&args.source)?;
    let layout = Layout::new(&state_dir(&args.source));
    let key = inspect::task_key(&args.task);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut container: Option<String> = None;
        let mut offset = 0u64;
        let mut stdout = std::io::stdout();
        loop {
            let status = store.read_status(&key).await?;
            let Some(status) = status else {
                if store.list_one(&key).await?.is_none() {
                    return Err(UsageError(format!("no task {key} in {}", store.location())).into());
                }
                if !args.follow {
                    println!("(task {key} has not started yet)");
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            };
            let current = status.current().map(|a| a.container.clone());
            if current != container {
                if let (Some(_), Some(attempt)) = (&container, status.current()) {
                    writeln!(stdout, "--- attempt {} ---", attempt.number)?;
                }
                container = current;
                offset = 0;
            }
            if let Some(name) = &container {
                offset = copy_from(&layout.log_path(name), offset, &mut stdout)?;
            } else if !args.follow {
                println!("(task {key} has not started yet)");
            }
            stdout.flush()?;
            let done = status.phase.is_final();
            if !args.follow || done {
                if done && let Some(name) = &container {
                    // The last bytes may have landed after the status said "done".
                    copy_from(&layout.log_path(name), offset, &mut stdout)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Copies what `path` holds past `offset`; returns the new offset.
fn copy_from(path: &std::path::Path, offset: u64, out: &mut impl Write) -> std::io::Result<u64> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
        Err(err) => return Err(err),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    out.write_all(&bytes)?;
    Ok(offset + bytes.len() as u64)
}
