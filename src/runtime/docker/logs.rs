//! Kept logs: while a container exists its output is read from the engine; `delete`
//! first copies all of it (capped to `--max-log-size`, head and tail) into
//! `<state>/logs/<name>.log`, atomically and durably, so that `skiff logs` and `logTail`
//! work once the container is gone.

use super::Inner;
use super::errors::{status_of, transient, unreadable_logs};
use crate::fsutil;
use crate::runtime::{RuntimeError, kept_logs};
use crate::status::LOG_TAIL_BYTES;
use bollard::Docker;
use bollard::query_parameters::LogsOptions;
use futures_util::StreamExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

impl Inner {
    /// All of the output (`tail` = "all") or its last lines (`tail` = a number; then the
    /// kept copy is read from its last 4 KiB or so): from the engine while this
    /// controller's container exists, else from the copy `delete` kept, also when the
    /// engine does not answer. `None` when there is neither.
    pub(super) async fn output(&self, name: &str, tail: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        let from_engine = async {
            let docker = self.client().await?;
            match self.inspect_own(docker, name).await? {
                Some(_) => self.engine_logs(docker, name, tail).await,
                None => Ok(None),
            }
        };
        let engine_error = match from_engine.await {
            Ok(Some(bytes)) => return Ok(Some(bytes)),
            Ok(None) => None,
            Err(err) => Some(err),
        };
        // A little more than the tail, so that it can start on a line boundary.
        let limit = (tail != "all").then_some(LOG_TAIL_BYTES as u64 + 256);
        match kept_logs::read(&self.logs, name, limit).await? {
            Some(bytes) => Ok(Some(bytes)),
            None => match engine_error {
                Some(err) => Err(err),
                None => Ok(None),
            },
        }
    }

    /// The container's logs (stdout and stderr, interleaved as the engine stored them),
    /// `tail` lines or "all". `None` when there is no such container.
    async fn engine_logs(&self, docker: &Docker, name: &str, tail: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = docker.logs(name, Some(options));
        let mut bytes = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => bytes.extend_from_slice(chunk.as_ref()),
                Err(err) if status_of(&err) == Some(404) => return Ok(None),
                Err(err) if unreadable_logs(&err) => {
                    bytes.extend_from_slice(format!("(skiff: the engine cannot give the logs: {err})\n").as_bytes());
                    break;
                }
                Err(err) => return Err(transient(&format!("read the logs of {name}"), err)),
            }
        }
        Ok(Some(bytes))
    }

    /// Copies all of the container's output into its log file, replacing the file
    /// atomically (a repeated `delete` must not double it). `false` when there is no
    /// such container.
    pub(super) async fn save_logs(&self, docker: &Docker, name: &str) -> Result<bool, RuntimeError> {
        let path = self.log_path(name);
        let temp = fsutil::temp_path(&path);
        let result = self.copy_logs(docker, name, &temp).await;
        match result {
            Ok(true) => {}
            other => {
                let _ = tokio::fs::remove_file(&temp).await;
                return other;
            }
        }
        let renamed = async {
            tokio::fs::rename(&temp, &path).await?;
            // Durable before the container (the only other copy) is removed.
            let logs = self.logs.clone();
            tokio::task::spawn_blocking(move || fsutil::sync_dir(&logs))
                .await
                .map_err(std::io::Error::other)?
        };
        if let Err(err) = renamed.await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(RuntimeError::Transient(format!(
                "docker: cannot keep the logs of {name} in {}: {err}",
                path.display()
            )));
        }
        Ok(true)
    }

    /// Streams the logs into `temp`, fsynced, keeping the head and tail within
    /// `--max-log-size` (they may be large). The file is written on a blocking thread.
    async fn copy_logs(&self, docker: &Docker, name: &str, temp: &Path) -> Result<bool, RuntimeError> {
        let io_error = |err: std::io::Error| {
            RuntimeError::Transient(format!(
                "docker: cannot write the logs of {name} to {}: {err}",
                temp.display()
            ))
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(temp)
            .map_err(io_error)?;
        let cap = self.max_log_bytes.load(Ordering::Relaxed);
        let (chunks, mut received) = mpsc::channel::<Vec<u8>>(16);
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut log = crate::runtime::log_cap::CappedLog::new(file, cap)?;
            while let Some(chunk) = received.blocking_recv() {
                log.append(&chunk)?;
            }
            log.sync()
        });
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: "all".to_string(),
            ..Default::default()
        };
        let mut stream = docker.logs(name, Some(options));
        let mut found = true;
        let mut failure = None;
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(chunk) => Vec::from(chunk.into_bytes()),
                Err(err) if status_of(&err) == Some(404) => {
                    found = false;
                    break;
                }
                // A logging driver that cannot be read back (e.g. `none`): say so in the
                // file, and let the deletion go on rather than keep the container forever.
                Err(err) if unreadable_logs(&err) => {
                    let note = format!("(skiff: the engine cannot give the logs: {err})\n");
                    let _ = chunks.send(note.into()).await;
                    break;
                }
                Err(err) => {
                    failure = Some(transient(&format!("read the logs of {name}"), err));
                    break;
                }
            };
            if chunks.send(chunk).await.is_err() {
                // The writer stopped: its error is reported below.
                break;
            }
        }
        drop(chunks);
        let written = writer.await.map_err(|err| io_error(std::io::Error::other(err)))?;
        if let Some(failure) = failure {
            return Err(failure);
        }
        written.map_err(io_error)?;
        Ok(found)
    }
}
