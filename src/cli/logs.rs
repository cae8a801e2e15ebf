//! `skiff logs TASK [--follow]`: the output of the task's current (or last) attempt.
//! Process output is read from its log file; Docker output from the engine while the
//! container exists, and from the copy saved at deletion afterwards.

use super::{LogsArgs, UsageError, inspect, open_store, state_dir};
use crate::manifest::RuntimeKind;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::Layout;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let key = inspect::task_key(&args.task)?;
    let store = open_store(&args.source)?;
    let state = state_dir(&args.source);
    let layout = Layout::new(&state);
    // With --blob and no --state-dir there is no local state to read (nor to create):
    // the output comes from what the controller saved in the store.
    let local = args.source.blob.is_none() || args.source.state_dir.is_some();
    let docker = if local {
        DockerRuntime::connect(&state, None).ok()
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut shown: Option<String> = None;
        let mut offset = 0usize;
        let mut stdout = std::io::stdout();
        loop {
            let Some(status) = store.read_status(&key).await? else {
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
            let current = status.current().map(|a| (a.container.clone(), a.runtime, a.number));
            if let Some((container, runtime, number)) = &current {
                if shown.as_ref() != Some(container) {
                    if shown.is_some() {
                        writeln!(stdout, "--- attempt {number} ---")?;
                    }
                    shown = Some(container.clone());
                    offset = 0;
                }
                let output = match runtime {
                    RuntimeKind::Docker => match &docker {
                        Some(docker) => docker.output(container).await.ok().flatten(),
                        None => None,
                    },
                    _ if local => read_log(&layout.log_path(container)),
                    _ => None,
                };
                // Another machine's container: the output its controller saved in the store.
                let output = match output {
                    Some(bytes) => Some(bytes),
                    None => store.read_log(container).await.ok().flatten(),
                };
                if let Some(bytes) = output
                    && bytes.len() > offset
                {
                    stdout.write_all(&bytes[offset..])?;
                    offset = bytes.len();
                }
            } else if !args.follow {
                println!("(task {key} has not started yet)");
            }
            stdout.flush()?;
            if !args.follow || status.phase.is_final() {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The most of a kept log `skiff logs` reads: far beyond what a controller keeps.
const LOG_READ_LIMIT: u64 = 256 * 1024 * 1024;

/// A process container's kept output, through the bounded reader: the path comes from
/// a status file, which a person may have edited, so it may name a FIFO or a device.
fn read_log(path: &std::path::Path) -> Option<Vec<u8>> {
    let bytes = crate::fsutil::read_regular(path, LOG_READ_LIMIT);
    if let Err(err) = &bytes
        && !err.is_not_found()
    {
        eprintln!("{}: {err}", super::printable(&path.display().to_string()));
    }
    bytes.ok()
}
