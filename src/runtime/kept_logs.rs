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
    // The two looks on this thread: a stat of a name built here opens nothing, and a
    // trip to the blocking pool would cost more than both (every new task pays it).
    let earlier = [format!("{container_prefix}1.log"), format!("{container_prefix}1-0.log")]
        .iter()
        .any(|first| std::fs::exists(logs.join(first)).unwrap_or(true));
    if !earlier {
        return Ok(());
    }
    let (logs, prefix) = (logs.to_path_buf(), container_prefix.to_string());
    super::blocking(move || remove_logs(&logs, &prefix)).await
}

/// The last `limit` bytes of the kept output of `name`, read on this thread: for a
/// runtime whose logs folder is its own and local (the process runtime's), where the
/// read is a few KiB from the page cache and a trip to the blocking pool costs more.
/// Opened without blocking, and only a regular file is read, so a FIFO put there cannot
/// stall the caller. `None` when none is kept.
pub fn read_tail_now(logs: &Path, name: &str, limit: u64) -> Result<Option<Vec<u8>>, RuntimeError> {
    use std::io::{Read, Seek};
    use std::os::unix::fs::OpenOptionsExt;
    let path = path(logs, name);
    let failed = |err: std::io::Error| RuntimeError::Transient(format!("{}: {err}", path.display()));
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(failed(err)),
    };
    let meta = file.metadata().map_err(failed)?;
    if !meta.is_file() {
        return Err(failed(std::io::Error::other("not a regular file")));
    }
    file.seek(std::io::SeekFrom::Start(meta.len().saturating_sub(limit)))
        .map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).map_err(failed)?;
    Ok(Some(bytes))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_read_in_place_is_the_end_of_a_regular_file_and_never_waits_on_a_fifo() {
        let logs = tempfile::tempdir().unwrap();
        std::fs::write(path(logs.path(), "c-1"), b"0123456789").unwrap();
        assert_eq!(read_tail_now(logs.path(), "c-1", 4).unwrap(), Some(b"6789".to_vec()));
        assert_eq!(
            read_tail_now(logs.path(), "c-1", 100).unwrap(),
            Some(b"0123456789".to_vec())
        );
        assert_eq!(read_tail_now(logs.path(), "c-2", 4).unwrap(), None);
        // A FIFO with no writer would block a plain open forever.
        nix::unistd::mkfifo(&path(logs.path(), "c-3"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_tail_now(logs.path(), "c-3", 4).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[tokio::test]
    async fn an_earlier_runs_logs_go_and_a_new_tasks_cost_two_looks() {
        let logs = tempfile::tempdir().unwrap();
        forget_earlier(logs.path(), "skiff-a-1234-").await.unwrap();
        for name in ["skiff-a-1234-1", "skiff-a-1234-2", "skiff-b-9999-1"] {
            std::fs::write(path(logs.path(), name), b"out").unwrap();
        }
        forget_earlier(logs.path(), "skiff-a-1234-").await.unwrap();
        let left: Vec<_> = std::fs::read_dir(logs.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["skiff-b-9999-1.log"]);
    }
}
