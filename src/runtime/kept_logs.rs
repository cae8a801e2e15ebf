//! Kept logs: a container's output in `<state>/logs/<name>.log`, the one file every
//! runtime keeps (the process runtime's supervisor writes it as the container runs; docker
//! and aci copy it there before the container goes), so that `skiff logs` and `logTail`
//! work after the container is gone, whatever ran it.

use super::RuntimeError;
use crate::fsutil;
use std::path::{Path, PathBuf};

/// Where the output of container `name` is kept in the logs folder `logs`.
pub fn path(logs: &Path, name: &str) -> PathBuf {
    logs.join(format!("{name}.log"))
}

/// Replaces the kept output of `name` with `bytes`, atomically and durably (before the
/// container, the only other copy, is removed). The error says which file.
pub async fn save(logs: &Path, name: &str, bytes: Vec<u8>) -> Result<(), String> {
    let path = path(logs, name);
    let written = path.clone();
    tokio::task::spawn_blocking(move || fsutil::write_atomic(&written, &bytes))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|err| format!("cannot keep the logs of {name} in {}: {err}", path.display()))
}

/// The most of a kept log [`read`] reads whole: far beyond what a controller keeps
/// (`--max-log-size`).
pub const READ_LIMIT: u64 = 256 * 1024 * 1024;

/// The output of `name` kept in `logs`: all of it (`tail` = `None`), or its last `tail`
/// bytes. `None` when none is kept. Read whole, it must be a regular file of at most
/// [`READ_LIMIT`] bytes: its name comes from a status, which a person may have edited, so
/// it may name a FIFO or a device. The error names the file.
pub async fn read(logs: &Path, name: &str, tail: Option<u64>) -> Result<Option<Vec<u8>>, RuntimeError> {
    let path = path(logs, name);
    let failed = |err: &dyn std::fmt::Display| RuntimeError::Transient(format!("{}: {err}", path.display()));
    match tail {
        Some(_) => match read_end(&path, tail).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(failed(&err)),
        },
        None => {
            let whole = path.clone();
            match tokio::task::spawn_blocking(move || fsutil::read_regular(&whole, READ_LIMIT)).await {
                Ok(Ok(bytes)) => Ok(Some(bytes)),
                Ok(Err(err)) if err.is_not_found() => Ok(None),
                Ok(Err(err)) => Err(failed(&err)),
                Err(err) => Err(failed(&err)),
            }
        }
    }
}

/// The end of a file (its last `limit` bytes), or all of it: how runtimes read the logs
/// they keep after a container is gone. One trip to the blocking pool: `logTail` is read
/// at every container's end, and `tokio::fs` would take one trip per call.
pub async fn read_end(path: &Path, limit: Option<u64>) -> std::io::Result<Vec<u8>> {
    let path = path.to_path_buf();
    let read = move || {
        use std::io::{Read, Seek};
        let mut file = std::fs::File::open(path)?;
        if let Some(limit) = limit {
            let len = file.metadata()?.len();
            file.seek(std::io::SeekFrom::Start(len.saturating_sub(limit)))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    tokio::task::spawn_blocking(read).await.map_err(std::io::Error::other)?
}

/// [`Runtime::forget_earlier_run`](super::Runtime::forget_earlier_run) for a runtime keeping logs in `logs`: looks for the
/// first attempt's log (single or index 0) before listing the folder, so that a new
/// task costs two `stat`s, not a scan of every log; all in one trip to the blocking
/// pool (every new task asks every runtime this).
pub async fn forget_earlier(logs: &Path, container_prefix: &str) -> Result<(), RuntimeError> {
    let (logs, prefix) = (logs.to_path_buf(), container_prefix.to_string());
    super::blocking(move || {
        for first in [format!("{prefix}1.log"), format!("{prefix}1-0.log")] {
            if std::fs::exists(logs.join(first)).unwrap_or(true) {
                return remove_logs(&logs, &prefix);
            }
        }
        Ok(())
    })
    .await
}

/// Removes the kept logs of a task's containers (`<logs>/<name>.log`, and the dot-prefixed
/// temporary copies of a save that was interrupted): what `Runtime::forget` does for every
/// runtime that keeps logs in the state folder.
pub async fn forget(logs: &Path, container_prefix: &str) -> Result<(), RuntimeError> {
    let (logs, prefix) = (logs.to_path_buf(), container_prefix.to_string());
    super::blocking(move || remove_logs(&logs, &prefix)).await
}

fn remove_logs(logs: &Path, container_prefix: &str) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(logs) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        entries => entries?,
    };
    for entry in entries {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.trim_start_matches('.').starts_with(container_prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}
