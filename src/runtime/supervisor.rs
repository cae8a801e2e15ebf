//! The supervisor: the skiff binary in a hidden mode, one per process "container".
//!
//! The controller starts it detached (its own session), so it outlives a controller
//! killed with SIGKILL, as containerd's shim outlives containerd. It owns the child,
//! captures its output, and writes the exit status atomically where the controller
//! will find it after any restart.
//!
//! Files, all in the container's folder unless said otherwise:
//! - `claim`: created exclusively first, so that two supervisors started for the same
//!   container (a controller that crashed mid-start and started it again) never both
//!   run the command (invariant 2). Holds the supervisor's pid.
//! - `started.json`: the child's pid (also its process group) and start time.
//! - `output.log`: the child's stdout and stderr.
//! - the exit record (a path given by the controller): exit code and finish time.

use crate::fsutil::write_atomic;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const CLAIM_FILE: &str = "claim";
pub const STARTED_FILE: &str = "started.json";
pub const LOG_FILE: &str = "output.log";
/// What the supervisor prints on stdout once the command runs (or could not).
pub const READY_LINE: &str = "started";
/// What it prints when another supervisor already owns the container.
pub const CLAIMED_LINE: &str = "claimed";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    /// The child's pid, which is also its process group id.
    pub pid: i32,
    pub started_at: chrono::DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<chrono::DateTime<Utc>>,
    pub finished_at: chrono::DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

pub struct SuperviseArgs {
    pub container_dir: PathBuf,
    pub exit_file: PathBuf,
    pub working_dir: Option<PathBuf>,
    pub command: Vec<String>,
}

/// Runs the supervisor to completion; returns the process exit code of the supervisor
/// itself (not of the child, which goes into the exit record).
pub fn supervise(args: SuperviseArgs) -> i32 {
    let mut ready = std::io::stdout();
    let claim = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(args.container_dir.join(CLAIM_FILE));
    let mut claim = match claim {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = writeln!(ready, "{CLAIMED_LINE}");
            return 0;
        }
        Err(err) => {
            eprintln!("skiff supervisor: cannot claim {}: {err}", args.container_dir.display());
            return 1;
        }
    };
    let _ = write!(claim, "{}", std::process::id());
    let _ = claim.sync_all();

    let log = match OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.container_dir.join(LOG_FILE))
    {
        Ok(log) => log,
        Err(err) => return finish_without_child(&args, &mut ready, format!("cannot open the log file: {err}"), 1),
    };
    let Some((program, rest)) = args.command.split_first() else {
        return finish_without_child(&args, &mut ready, "no command given".into(), 127);
    };
    let mut command = Command::new(program);
    command.args(rest).stdin(Stdio::null()).process_group(0);
    match (log.try_clone(), log.try_clone()) {
        (Ok(out), Ok(err)) => {
            command.stdout(out).stderr(err);
        }
        _ => {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    if let Some(dir) = &args.working_dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            // The shell's conventions: 127 not found, 126 found but not runnable.
            let code = if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let where_ = args
                .working_dir
                .as_ref()
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default();
            let message = format!("cannot start `{program}`{where_}: {err}");
            let _ = writeln!(&log, "skiff: {message}");
            return finish_without_child(&args, &mut ready, message, code);
        }
    };
    let started = Started {
        pid: child.id() as i32,
        started_at: Utc::now(),
    };
    let started_json = serde_json::to_vec(&started).unwrap_or_default();
    let _ = write_atomic(&args.container_dir.join(STARTED_FILE), &started_json);
    let _ = writeln!(ready, "{READY_LINE}");
    let _ = ready.flush();
    // The controller may die at any time; nothing more is written to its pipe.
    close_stdout();

    let status = child.wait();
    let (exit_code, signal, message) = match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (code, None, None),
            (None, Some(signal)) => (128 + signal, Some(signal), Some(format!("killed by signal {signal}"))),
            (None, None) => (1, None, None),
        },
        Err(err) => (1, None, Some(format!("lost the child: {err}"))),
    };
    write_exit(
        &args.exit_file,
        &ExitRecord {
            exit_code,
            signal,
            started_at: Some(started.started_at),
            finished_at: Utc::now(),
            message,
        },
    );
    0
}

fn finish_without_child(args: &SuperviseArgs, ready: &mut std::io::Stdout, message: String, code: i32) -> i32 {
    write_exit(
        &args.exit_file,
        &ExitRecord {
            exit_code: code,
            signal: None,
            started_at: None,
            finished_at: Utc::now(),
            message: Some(message),
        },
    );
    let _ = writeln!(ready, "{READY_LINE}");
    0
}

fn write_exit(path: &Path, record: &ExitRecord) {
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    if let Err(err) = write_atomic(path, &bytes) {
        eprintln!("skiff supervisor: cannot write {}: {err}", path.display());
    }
}

fn close_stdout() {
    // Replace fd 1 so that the pipe to the controller is closed.
    if let Ok(devnull) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&devnull);
    }
}
