//! The supervisor: the skiff binary in a hidden mode, one per process "container".
//!
//! The controller starts it, and it detaches into its own session, so it outlives a
//! controller killed with SIGKILL, as containerd's shim outlives containerd. It owns the
//! child, sends its output to the log file, and records what happens in the
//! container's state file, where the controller finds it after any restart.
//!
//! The state file is append-only, one JSON [`Entry`] per line:
//! 1. `claimed`: written once the file is claimed exclusively (created, or a spare renamed
//!    into place without replacing: [`super::spare_states`]), so that two supervisors
//!    started for the same container (a controller that crashed mid-start and started
//!    it again) never both run the command (invariant 2);
//! 2. `started`: the child's pid (also its process group) and start time;
//! 3. `exited`: its exit code and finish time.
//!
//! Each entry is one `write`, so a reader sees whole lines. The file is not fsynced: it
//! must outlive the controller, not the machine, whose crash ends the processes too.
//! One file per container, not one per fact: creating files is the dearest thing the
//! process runtime does.

use super::clone_into_cgroup::Spawned;
use chrono::Utc;
use nix::sys::wait::{WaitStatus, waitpid};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// What the supervisor prints on stdout once the command runs (or could not start).
pub const READY_LINE: &str = "started";
/// What it prints when another supervisor already owns the container.
pub const CLAIMED_LINE: &str = "claimed";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Entry {
    #[serde(rename_all = "camelCase")]
    Claimed {
        /// The supervisor's pid.
        pid: i32,
        /// When that process started, in clock ticks since boot (`/proc/PID/stat`): with
        /// the pid, it names the process, a recycled pid aside. Absent in files written
        /// by older supervisors, which are told by their command line instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process_start: Option<u64>,
        labels: BTreeMap<String, String>,
        created_at: chrono::DateTime<Utc>,
    },
    #[serde(rename_all = "camelCase")]
    Started {
        /// The child's pid, which is also its process group id.
        pid: i32,
        started_at: chrono::DateTime<Utc>,
        /// The cgroup holding the child and everything it starts, when it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup: Option<PathBuf>,
    },
    #[serde(rename_all = "camelCase")]
    Exited {
        exit_code: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        finished_at: chrono::DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

/// A state file, read back.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub supervisor: Option<i32>,
    pub supervisor_start: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<chrono::DateTime<Utc>>,
    pub child: Option<i32>,
    pub started_at: Option<chrono::DateTime<Utc>>,
    pub cgroup: Option<PathBuf>,
    pub exited: Option<Entry>,
}

impl State {
    /// Parses the complete lines of a state file; a line still being written is skipped.
    pub fn parse(text: &str) -> State {
        let mut state = State::default();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            match serde_json::from_str::<Entry>(line) {
                Ok(Entry::Claimed {
                    pid,
                    process_start,
                    labels,
                    created_at,
                }) => {
                    state.supervisor = Some(pid);
                    state.supervisor_start = process_start;
                    state.labels = labels;
                    state.created_at = Some(created_at);
                }
                Ok(Entry::Started {
                    pid,
                    started_at,
                    cgroup,
                }) => {
                    state.child = Some(pid);
                    state.started_at = Some(started_at);
                    state.cgroup = cgroup;
                }
                Ok(exited @ Entry::Exited { .. }) => state.exited = Some(exited),
                Err(_) => {}
            }
        }
        state
    }
}

pub struct SuperviseArgs {
    pub state_file: PathBuf,
    pub log_file: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
    /// The most output kept in the log file (head and tail).
    pub max_log_bytes: u64,
    /// The cgroup to run the command in, when the controller may make one.
    pub cgroup: Option<PathBuf>,
    /// An emptied state file to claim the state file with, by rename (see
    /// [`super::spare_states`]).
    pub spare_state: Option<PathBuf>,
    pub command: Vec<String>,
}

/// `skiff __supervise --state-file S --log-file L --labels JSON [--working-dir W] -- CMD...`,
/// read straight from argv (this starts once per container, so it skips the command-line
/// machinery); `None` when this is not a supervisor's command line.
pub fn args_from_argv() -> Option<SuperviseArgs> {
    let mut argv = std::env::args_os().skip(1);
    if argv.next()? != "__supervise" {
        return None;
    }
    parse_args(argv)
}

/// The arguments after `__supervise`, from argv or from a
/// [supervisor server](super::supervisor_server)'s request.
pub fn parse_args(mut argv: impl Iterator<Item = std::ffi::OsString>) -> Option<SuperviseArgs> {
    let (mut state_file, mut log_file, mut working_dir, mut labels) = (None, None, None, BTreeMap::new());
    let mut max_log_bytes = super::log_cap::DEFAULT_MAX_LOG_BYTES;
    let (mut cgroup, mut spare_state) = (None, None);
    while let Some(flag) = argv.next() {
        match flag.to_str()? {
            "--state-file" => state_file = argv.next().map(PathBuf::from),
            "--log-file" => log_file = argv.next().map(PathBuf::from),
            "--working-dir" => working_dir = argv.next().map(PathBuf::from),
            "--labels" => labels = serde_json::from_str(argv.next()?.to_str()?).ok()?,
            "--max-log-size" => max_log_bytes = argv.next()?.to_str()?.parse().ok()?,
            "--cgroup" => cgroup = argv.next().map(PathBuf::from),
            "--spare-state" => spare_state = argv.next().map(PathBuf::from),
            "--" => break,
            _ => return None,
        }
    }
    Some(SuperviseArgs {
        state_file: state_file?,
        log_file: log_file?,
        labels,
        working_dir,
        max_log_bytes,
        cgroup,
        spare_state,
        command: argv.map(|a| a.to_string_lossy().into_owned()).collect(),
    })
}

/// When process `pid` started (clock ticks since boot) and its state letter (`Z` for a
/// zombie), from `/proc/PID/stat`; `None` when there is no such process.
pub fn process_start(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses itself.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4 to 21 come between the state (3) and the start time (22).
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

fn append(file: &mut File, entry: &Entry) {
    // One write per entry, so that a reader sees the whole line or none of it.
    let mut line = serde_json::to_vec(entry).unwrap_or_default();
    line.push(b'\n');
    let _ = file.write_all(&line);
}

/// Runs the supervisor to completion; returns the supervisor's own exit code (the
/// child's goes into the state file).
pub fn supervise(args: SuperviseArgs) -> i32 {
    // Its own session: neither a terminal's Ctrl+C nor the controller's death reaches it.
    // Done here rather than between fork and exec so that the controller can spawn
    // supervisors with posix_spawn, without copying its own address space.
    let _ = nix::unistd::setsid();
    let mut ready = std::io::stdout();
    let mut state = match super::spare_states::claim(&args.state_file, args.spare_state.as_deref()) {
        Ok(Some(file)) => file,
        Ok(None) => {
            let _ = writeln!(ready, "{CLAIMED_LINE}");
            return 0;
        }
        Err(err) => {
            eprintln!("skiff supervisor: cannot claim {}: {err}", args.state_file.display());
            return 1;
        }
    };
    append(
        &mut state,
        &Entry::Claimed {
            pid: std::process::id() as i32,
            process_start: process_start(std::process::id() as i32).map(|(start, _)| start),
            labels: args.labels.clone(),
            created_at: Utc::now(),
        },
    );
    let exited = |code: i32, signal: Option<i32>, message: Option<String>| Entry::Exited {
        exit_code: code,
        signal,
        finished_at: Utc::now(),
        message,
    };
    // Not `append`: this claim makes a new container, and an earlier run of the same name
    // (a task re-run from attempt 1) must not lend it its output.
    let log = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&args.log_file);
    let log = match log {
        Ok(log) => log,
        Err(err) => {
            append(
                &mut state,
                &exited(1, None, Some(format!("cannot open the log file: {err}"))),
            );
            let _ = writeln!(ready, "{READY_LINE}");
            return 0;
        }
    };
    let Some((program, rest)) = args.command.split_first() else {
        append(&mut state, &exited(127, None, Some("no command given".into())));
        let _ = writeln!(ready, "{READY_LINE}");
        return 0;
    };
    // The output goes through a pipe to this supervisor, which keeps it within the cap.
    // (nix's pipe: std::io::pipe is newer than the minimum Rust version.)
    let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(std::io::Error::from)
        .and_then(|(reader, writer)| Ok((File::from(reader), File::from(writer.try_clone()?), File::from(writer))));
    let (pump, out, err) = match pipe {
        Ok((reader, out, err)) => (Some(reader), Some(out), Some(err)),
        Err(_) => (None, log.try_clone().ok(), log.try_clone().ok()),
    };
    let launch = Launch {
        program: program.as_ref(),
        args: rest,
        working_dir: args.working_dir.as_deref(),
        stdout: out,
        stderr: err,
    };
    // Without its cgroup the command still runs: only the cleanup of daemons it leaves
    // behind is weaker (see runtime::cgroup).
    let cgroup = args
        .cgroup
        .as_deref()
        .filter(|dir| std::fs::create_dir_all(dir).is_ok());
    // `launch` is consumed: our copies of the pipe's write end are gone once it returns,
    // or the pump would never see the output's end.
    let (child, cgroup) = launch.start(cgroup);
    let child = match child {
        Ok(pid) => pid,
        Err(err) => {
            // The shell's conventions: 127 not found, 126 found but not runnable.
            let code = if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let place = args
                .working_dir
                .as_ref()
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default();
            let message = format!("cannot start `{program}`{place}: {err}");
            let _ = writeln!(&log, "skiff: {message}");
            append(&mut state, &exited(code, None, Some(message)));
            let _ = writeln!(ready, "{READY_LINE}");
            return 0;
        }
    };
    append(
        &mut state,
        &Entry::Started {
            pid: child,
            started_at: Utc::now(),
            cgroup,
        },
    );
    let _ = writeln!(ready, "{READY_LINE}");
    let _ = ready.flush();
    // The controller may die at any time; nothing more is written to its pipe.
    if let Ok(devnull) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&devnull);
    }

    let waited = match pump {
        Some(reader) => match log.try_clone() {
            Ok(log) => pump_and_wait(child, reader, log, args.max_log_bytes),
            Err(_) => wait_for(child),
        },
        None => wait_for(child),
    };
    let entry = match waited {
        Ok(WaitStatus::Exited(_, code)) => exited(code, None, None),
        Ok(WaitStatus::Signaled(_, signal, _)) => {
            let signal = signal as i32;
            exited(128 + signal, Some(signal), Some(format!("killed by signal {signal}")))
        }
        Ok(_) => exited(1, None, None),
        Err(err) => exited(1, None, Some(format!("lost the child: {err}"))),
    };
    append(&mut state, &entry);
    0
}

/// How long the output may keep coming after the command exited (from processes it left).
const PUMP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Copies the command's output into its log (within the cap) until the output ends, and
/// waits for the command: both in this thread, a pidfd (Linux 5.3) saying when the
/// command exits, beside its output's pipe. The exit is recorded once the output is in
/// the file, so that the controller's `logTail` has the last lines; a daemon the command
/// left behind may hold the pipe open forever, so the output is waited for only
/// [`PUMP_GRACE`] past the exit. Without a pidfd, a thread pumps while this one waits.
///
/// Why not a thread always: a thread per container, with its stack, cost a tenth of
/// what a container of `scripts/bench throughput` cost the supervisor.
fn pump_and_wait(child: i32, reader: File, log: File, cap: u64) -> nix::Result<WaitStatus> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the
    // child is ours and not yet reaped, so its pid names it.
    let pidfd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, child, 0) };
    if pidfd < 0 {
        return pump_on_a_thread(child, reader, log, cap);
    }
    // SAFETY: a descriptor the kernel just returned, owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut log = super::log_cap::CappedLog::new(log, cap).ok();
    // A large buffer only once the output fills a small one: zeroing 64 KiB in a process
    // just forked costs a page fault per page, and most commands say little or nothing.
    let (mut small, mut large) = ([0u8; 1024], Vec::new());
    let (mut status, mut output_open) = (None, true);
    let mut until: Option<std::time::Instant> = None;
    while status.is_none() || output_open {
        let timeout = match until {
            None => PollTimeout::NONE,
            Some(until) => {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        };
        let (output, exited) = {
            let mut fds = Vec::with_capacity(2);
            if output_open {
                fds.push(PollFd::new(reader.as_fd(), PollFlags::POLLIN));
            }
            if status.is_none() {
                fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
                Ok(_) => {}
            }
            let ready = |fd: &PollFd| fd.any().unwrap_or(true);
            let output = output_open && ready(&fds[0]);
            let exited = status.is_none() && ready(&fds[fds.len() - 1]);
            (output, exited)
        };
        if output {
            use std::io::Read;
            let buf: &mut [u8] = if large.is_empty() { &mut small } else { &mut large };
            match (&reader).read(buf) {
                Ok(0) => output_open = false,
                Ok(n) => {
                    if let Some(log) = log.as_mut() {
                        let _ = log.append(&buf[..n]);
                    }
                    if n == buf.len() && large.is_empty() {
                        large = vec![0; 64 * 1024];
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => output_open = false,
            }
        }
        if exited {
            status = Some(wait_for(child));
            until = Some(std::time::Instant::now() + PUMP_GRACE);
        }
    }
    status.unwrap_or_else(|| wait_for(child))
}

/// [`pump_and_wait`] where the kernel has no pidfd: a thread pumps, this one waits.
fn pump_on_a_thread(child: i32, reader: File, log: File, cap: u64) -> nix::Result<WaitStatus> {
    let (pumped_tx, pumped) = std::sync::mpsc::channel::<()>();
    let pumping = std::thread::Builder::new()
        .name("log-pump".into())
        .spawn(move || {
            pump_output(reader, log, cap);
            let _ = pumped_tx.send(());
        })
        .is_ok();
    let status = wait_for(child);
    if pumping {
        let _ = pumped.recv_timeout(PUMP_GRACE);
    }
    status
}

/// Waits for the command's process to end (it is this process's child).
fn wait_for(pid: i32) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// How to start the command: its program and arguments, folder and output.
struct Launch<'a> {
    program: &'a std::ffi::OsStr,
    args: &'a [String],
    working_dir: Option<&'a std::path::Path>,
    stdout: Option<File>,
    stderr: Option<File>,
}

impl Launch<'_> {
    /// Starts the command in its own process group, in `cgroup` when given (born there
    /// when the kernel allows, else moved there before its exec). Gives its pid, or why it
    /// could not start, and the cgroup it runs in.
    fn start(self, cgroup: Option<&std::path::Path>) -> (std::io::Result<i32>, Option<PathBuf>) {
        if let (Some(dir), Ok(null)) = (cgroup, File::open("/dev/null")) {
            let stdio = super::clone_into_cgroup::Stdio {
                stdin: &null,
                stdout: self.stdout.as_ref().unwrap_or(&null),
                stderr: self.stderr.as_ref().unwrap_or(&null),
                working_dir: self.working_dir,
            };
            let args: Vec<std::ffi::OsString> = self.args.iter().map(Into::into).collect();
            match super::clone_into_cgroup::spawn(self.program, &args, &stdio, dir) {
                Spawned::Running(pid) => return (Ok(pid), Some(dir.to_path_buf())),
                Spawned::Failed(err) => return (Err(err), None),
                Spawned::Unsupported(_) => {}
            }
        }
        let mut command = Command::new(self.program);
        command.args(self.args).stdin(Stdio::null()).process_group(0);
        match (self.stdout, self.stderr) {
            (Some(out), Some(err)) => command.stdout(out).stderr(err),
            _ => command.stdout(Stdio::null()).stderr(Stdio::null()),
        };
        if let Some(dir) = self.working_dir {
            command.current_dir(dir);
        }
        let procs = cgroup.and_then(|dir| Some((dir, super::cgroup::procs(dir).ok()?)));
        if let Some((_, procs)) = &procs
            && let Ok(procs) = procs.try_clone()
        {
            // SAFETY: between fork and exec only write(2) runs, which is async-signal-safe;
            // "0" moves the writing process (the command, before it execs).
            unsafe {
                command.pre_exec(move || {
                    let _ = nix::unistd::write(&procs, b"0");
                    Ok(())
                });
            }
        }
        let spawned = command.spawn().map(|child| child.id() as i32);
        (spawned, procs.map(|(dir, _)| dir.to_path_buf()))
    }
}

fn pump_output(mut reader: File, log: File, cap: u64) {
    use std::io::Read;
    let Ok(mut log) = super::log_cap::CappedLog::new(log, cap) else {
        // Keep draining, or the command blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        return;
    };
    let mut buf = vec![0; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = log.append(&buf[..n]);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pumping_and_waiting_in_one_thread_keeps_all_output_and_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("c.log");
        let log = File::create(&log_path).unwrap();
        let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let writer = File::from(writer);
        // Reaped by `pump_and_wait`, as the supervisor reaps its command.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("sh")
            .args([
                "-c",
                "echo first; head -c 100000 /dev/zero | tr '\\0' x; echo; sleep 0.2; echo last >&2; exit 3",
            ])
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .spawn()
            .unwrap();
        let status = pump_and_wait(child.id() as i32, File::from(reader), log, 1 << 20).unwrap();
        assert!(matches!(status, WaitStatus::Exited(_, 3)), "{status:?}");
        let expected = format!("first\n{}\nlast\n", "x".repeat(100_000));
        assert!(
            std::fs::read_to_string(&log_path).unwrap() == expected,
            "the output is not whole"
        );
    }

    #[test]
    fn a_state_file_reads_back_and_ignores_a_torn_last_line() {
        let now = Utc::now();
        let mut text = String::new();
        for entry in [
            Entry::Claimed {
                pid: 10,
                process_start: Some(1234),
                labels: BTreeMap::from([("skiff.task".into(), "a".into())]),
                created_at: now,
            },
            Entry::Started {
                pid: 11,
                started_at: now,
                cgroup: None,
            },
        ] {
            text.push_str(&serde_json::to_string(&entry).unwrap());
            text.push('\n');
        }
        text.push_str("{\"exited\":{\"exitCode\":0");
        let state = State::parse(&text);
        assert_eq!(state.supervisor, Some(10));
        assert_eq!(state.supervisor_start, Some(1234));
        assert_eq!(state.child, Some(11));
        assert_eq!(state.labels["skiff.task"], "a");
        assert!(state.exited.is_none());
    }

    #[test]
    fn a_claim_written_before_start_times_were_recorded_still_reads() {
        let state = State::parse("{\"claimed\":{\"pid\":5,\"labels\":{},\"createdAt\":\"2026-01-01T00:00:00Z\"}}\n");
        assert_eq!(state.supervisor, Some(5));
        assert_eq!(state.supervisor_start, None);
    }

    #[test]
    fn this_process_has_a_start_time_and_is_not_a_zombie() {
        let (start, letter) = process_start(std::process::id() as i32).expect("our own stat");
        assert!(start > 0);
        assert_ne!(letter, 'Z');
        assert_eq!(process_start(i32::MAX), None);
    }

    #[test]
    fn where_the_cgroup_refuses_the_command_starts_the_old_way() {
        // A plain folder is no cgroup: clone3 refuses it, and neither has it a
        // cgroup.procs to write, so the command runs by fork and exec, in no cgroup.
        let dir = tempfile::tempdir().unwrap();
        let args = ["-c".to_string(), "exit 7".to_string()];
        let launch = Launch {
            program: std::ffi::OsStr::new("sh"),
            args: &args,
            working_dir: None,
            stdout: None,
            stderr: None,
        };
        let (pid, cgroup) = launch.start(Some(dir.path()));
        let pid = pid.expect("started the old way");
        assert_eq!(cgroup, None);
        assert!(matches!(wait_for(pid), Ok(WaitStatus::Exited(_, 7))));
        let launch = Launch {
            program: std::ffi::OsStr::new("no-such-program-skiff"),
            args: &[],
            working_dir: None,
            stdout: None,
            stderr: None,
        };
        let (pid, _) = launch.start(Some(dir.path()));
        assert_eq!(pid.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::NotFound));
    }
}
