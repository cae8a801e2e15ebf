//! The process runtime, the embedded default: a "container" is a host process run
//! under a detached [supervisor](super::supervisor). Its files, in the state folder:
//!
//! ```text
//! <state>/containers/<name>.state   the supervisor's append-only record; the container
//!                                   exists exactly while this file does
//! <state>/logs/<name>.log           its output, kept after the container is deleted
//! <state>/spare-states/<boot id>/    emptied state files of deleted containers, which
//!                                   new ones claim by rename (see [`super::spare_states`])
//! ```
//!
//! The containers folder is flat and watched, so that an exit is reported at once
//! (`completedBy: engine`), whether the supervisor was started by this controller or
//! adopted after a restart.

use super::adopt::{self, Verdict};
use super::spare_states::SpareStates;
use super::supervisor::{self, Entry, State};
use super::supervisor_server::{Launcher, Request};
use super::{ContainerSpec, ContainerState, ContainerSummary, Inspection, LABEL_ATTEMPT_ID, Runtime, RuntimeError};
use crate::fsutil;
use crate::fswatch::{FolderWatch, Mask, Seen};
use crate::manifest::RuntimeKind;
use crate::status::LOG_TAIL_BYTES;
use async_trait::async_trait;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// How long a supervisor may take to start its command before `ensure` gives up
/// (and retries: the exclusive state file keeps a second start from running it twice).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `delete` waits for a killed child's supervisor to record the exit.
const STOP_GRACE: Duration = Duration::from_secs(2);
const STATE_SUFFIX: &str = ".state";
/// The owner mark of every container in this runtime's state folder: its own.
const OWN: &str = "this state folder";

pub struct ProcessRuntime {
    layout: Arc<Layout>,
    /// The state folder's id and this machine's name: replicas see each other's
    /// containers exactly when they share both.
    placement: super::Placement,
    /// The skiff binary, run as `skiff __supervise`.
    supervisor_exe: PathBuf,
    watcher: Mutex<Option<FolderWatch>>,
    /// `--max-log-size`, handed to each supervisor.
    max_log_bytes: u64,
    /// Where containers get a cgroup of their own, when this controller may make them.
    cgroups: Option<super::cgroup::CgroupRoot>,
    /// `None` when opened only to read (`skiff logs`), which deletes nothing.
    spares: Option<Arc<SpareStates>>,
    /// Forks supervisors instead of exec-ing them (`None`: opened only to read).
    launcher: Option<Launcher>,
}

/// The process runtime's options for `task`: on the host, a relative `workingDir` is the
/// manifest's folder's (`manifest_dir`), and without one the command runs in that folder.
pub(crate) fn options(task: &crate::manifest::TaskSpec, manifest_dir: Option<PathBuf>) -> super::RuntimeOptions {
    let working_dir = match (&task.working_dir, manifest_dir) {
        (Some(dir), Some(base)) => Some(base.join(dir)),
        (Some(dir), None) => Some(PathBuf::from(dir)),
        (None, base) => base,
    };
    super::RuntimeOptions::Process { working_dir }
}

/// Where the runtime's files are; shared with blocking tasks and the CLI.
pub struct Layout {
    containers: PathBuf,
    logs: PathBuf,
    spares: PathBuf,
}

impl ProcessRuntime {
    pub fn new(state_dir: &Path, supervisor_exe: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        // Supervisors get absolute paths: they do not share the controller's directory.
        let layout = Layout::new(&std::fs::canonicalize(state_dir)?);
        for dir in [&layout.containers, &layout.logs] {
            std::fs::create_dir_all(dir)?;
        }
        let placement = super::Placement::process(load_or_create_state_id(state_dir)?, host_name());
        let spares = SpareStates::open(layout.spares.clone())?;
        Ok(ProcessRuntime {
            layout: Arc::new(layout),
            placement,
            watcher: Mutex::new(None),
            max_log_bytes: super::log_cap::DEFAULT_MAX_LOG_BYTES,
            cgroups: None,
            spares: Some(Arc::new(spares)),
            launcher: Some(Launcher::new(&supervisor_exe)),
            supervisor_exe,
        })
    }

    /// The runtime over the state folder `state_dir` as it is, for reading what it keeps
    /// (`skiff logs`): creates nothing, neither folders nor a placement id (its placement
    /// names the id only if there is one), and does not watch. Its containers would be
    /// started by this very binary.
    pub fn open(state_dir: &Path) -> Self {
        let id_file = state_dir.join(STATE_ID_FILE);
        let state_id = std::fs::read_to_string(id_file).map(|id| id.trim().to_string());
        ProcessRuntime {
            layout: Arc::new(Layout::new(state_dir)),
            placement: super::Placement::process(state_id.unwrap_or_default(), host_name()),
            supervisor_exe: std::env::current_exe().unwrap_or_default(),
            watcher: Mutex::new(None),
            max_log_bytes: super::log_cap::DEFAULT_MAX_LOG_BYTES,
            cgroups: None,
            spares: None,
            launcher: None,
        }
    }

    /// Runs each container in a cgroup of its own (see [`super::cgroup`]), when this
    /// machine allows it; else says once why not and runs them as before.
    pub fn with_cgroups(mut self, state_dir: &Path) -> Self {
        match super::cgroup::CgroupRoot::make(&std::fs::canonicalize(state_dir).unwrap_or(state_dir.into())) {
            Ok(root) => {
                tracing::info!("process: each container runs in a cgroup of its own, under {root:?}");
                self.cgroups = Some(root);
            }
            Err(why) => tracing::warn!(
                "process: containers run without a cgroup of their own ({why}); a daemon a task starts with setsid outlives it"
            ),
        }
        self
    }

    /// The most output kept per container (default 10 MiB): its head and its tail.
    pub fn with_max_log_bytes(mut self, bytes: u64) -> Self {
        self.max_log_bytes = bytes;
        self
    }

    /// The machine's name, as recorded in this runtime's placement.
    pub fn placement_host(&self) -> String {
        self.placement.host.clone().unwrap_or_default()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    async fn start_supervisor(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        use std::ffi::OsString;
        let super::RuntimeOptions::Process { working_dir } = &spec.options else {
            return Err(spec.options.mismatch(RuntimeKind::Process, &spec.name));
        };
        let mut args: Vec<OsString> = vec![
            "--state-file".into(),
            self.layout.state_file(&spec.name).into(),
            "--log-file".into(),
            self.layout.log_path(&spec.name).into(),
            "--labels".into(),
            serde_json::to_string(&spec.labels).unwrap_or_default().into(),
            "--max-log-size".into(),
            self.max_log_bytes.to_string().into(),
        ];
        if let Some(working_dir) = working_dir {
            args.extend(["--working-dir".into(), working_dir.into()]);
        }
        if let Some(cgroups) = &self.cgroups {
            args.extend(["--cgroup".into(), cgroups.for_container(&spec.name).into()]);
        }
        if let Some(spare) = self.spares.as_ref().and_then(|spares| spares.take()) {
            args.extend(["--spare-state".into(), spare.into()]);
        }
        args.push("--".into());
        args.extend(spec.command.iter().chain(&spec.args).map(OsString::from));
        let mut env: Vec<(OsString, OsString)> = spec.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        // The host is the image here, and skiff is on it: `"$SKIFF_BIN" report`.
        env.push(("SKIFF_BIN".into(), self.supervisor_exe.clone().into()));
        let request = Request { args, env };
        let forked = self.launcher.as_ref().and_then(|launcher| launcher.launch(&request));
        let stdout: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match forked {
            Some(ready) => Box::new(
                tokio::net::unix::pipe::Receiver::from_owned_fd(ready)
                    .map_err(|err| RuntimeError::Transient(format!("the supervisor's pipe: {err}")))?,
            ),
            None => self.exec_supervisor(request)?,
        };
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        match tokio::time::timeout(START_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(_)) if line.trim() == supervisor::READY_LINE || line.trim() == supervisor::CLAIMED_LINE => Ok(()),
            Ok(_) => Err(RuntimeError::Transient(format!(
                "the supervisor of {} exited before starting the command",
                spec.name
            ))),
            Err(_) => Err(RuntimeError::Transient(format!(
                "the supervisor of {} did not start within {}s",
                spec.name,
                START_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Starts a supervisor by exec (`skiff __supervise ...`), as when there is no
    /// supervisor server to fork it; its stdout, where it says `started`.
    fn exec_supervisor(&self, request: Request) -> Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>, RuntimeError> {
        let mut command = tokio::process::Command::new(&self.supervisor_exe);
        command
            .arg("__supervise")
            .args(request.args)
            .envs(request.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|err| {
            let message = format!("cannot start the supervisor {}: {err}", self.supervisor_exe.display());
            // What the OS refuses in the task's own arguments or environment (a NUL, a
            // string past the kernel's limit) is refused on every retry: fail the attempt.
            let refused_input = err.kind() == std::io::ErrorKind::InvalidInput
                || err.raw_os_error() == Some(nix::libc::E2BIG);
            if refused_input {
                RuntimeError::Permanent {
                    reason: crate::status::Reason::CreateFailed,
                    message: format!(
                        "{message}; the command, its arguments or environment are more than the OS accepts: shorten them (pass large data in a file)"
                    ),
                }
            } else {
                RuntimeError::Transient(message)
            }
        })?;
        let stdout = child.stdout.take();
        // Reap the supervisor when it ends, while this controller lives.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        match stdout {
            Some(stdout) => Ok(Box::new(stdout)),
            None => Err(RuntimeError::Transient("the supervisor has no stdout".into())),
        }
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_if_empty();
        }
    }
}

/// The file, in the state folder, holding the folder's random id.
pub const STATE_ID_FILE: &str = "placement-id";

/// The state folder's random id, made by whichever replica sharing the folder starts
/// first. A random id rather than the path: two machines may well use the same path.
fn load_or_create_state_id(state_dir: &Path) -> std::io::Result<String> {
    let path = state_dir.join(STATE_ID_FILE);
    let read = |path: &Path| -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text.trim().to_string()).filter(|id| !id.is_empty())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    };
    if let Some(id) = read(&path)? {
        return Ok(id);
    }
    let id = format!("{:032x}", rand::random::<u128>());
    // Written whole under a temporary name, then linked into place: a link never
    // replaces an existing file, so replicas starting together agree on the first id.
    let temp = state_dir.join(format!(".{STATE_ID_FILE}.{id}"));
    fsutil::write_atomic(&temp, format!("{id}\n").as_bytes())?;
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(id),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => read(&path)?
            .ok_or_else(|| std::io::Error::other(format!("{} is empty; delete it to make a new id", path.display()))),
        Err(err) => Err(err),
    }
}

/// This machine's name, as the kernel knows it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|name| !name.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

impl Layout {
    /// The folders of a state directory, without touching the disk.
    pub fn new(state_dir: &Path) -> Self {
        Layout {
            containers: state_dir.join("containers"),
            logs: state_dir.join("logs"),
            spares: state_dir.join("spare-states"),
        }
    }

    fn state_file(&self, name: &str) -> PathBuf {
        self.containers.join(format!("{name}{STATE_SUFFIX}"))
    }

    /// The container's output, while it runs and after it was deleted.
    pub fn log_path(&self, name: &str) -> PathBuf {
        super::kept_logs::path(&self.logs, name)
    }

    /// `None` when the container does not exist.
    fn read_state(&self, name: &str) -> Option<State> {
        let text = std::fs::read_to_string(self.state_file(name)).ok()?;
        Some(State::parse(&text))
    }

    /// Whether the supervisor recorded in `state` still runs. Its command line is checked
    /// too, so that a recycled pid is not mistaken for it.
    fn supervisor_alive(&self, name: &str, state: &State) -> bool {
        let Some(pid) = state.supervisor else {
            return false;
        };
        // A forked supervisor has its server's command line: it is told by its start.
        if let Some(start) = state.supervisor_start {
            return supervisor::process_start(pid).is_some_and(|(now, letter)| now == start && letter != 'Z');
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let needle = name.as_bytes();
        cmdline.windows(needle.len()).any(|w| w == needle)
    }

    /// A container of this name exists but was made for another attempt.
    fn is_stale(&self, spec: &ContainerSpec) -> bool {
        let wanted = spec.labels.get(LABEL_ATTEMPT_ID).map(String::as_str);
        self.read_state(&spec.name).is_some_and(|state| {
            // The state folder is this controller's own: whatever it holds is ours, so the
            // verdict is adopt or replace, never foreign.
            let found = state.labels.get(LABEL_ATTEMPT_ID).map(String::as_str);
            state.supervisor.is_some() && adopt::verdict(Some(OWN), OWN, found, wanted) == Verdict::Replace
        })
    }

    fn inspect_sync(&self, name: &str) -> ContainerState {
        let Some(state) = self.read_state(name) else {
            return ContainerState::Absent;
        };
        let exited = |state: &State| match &state.exited {
            Some(Entry::Exited {
                exit_code,
                finished_at,
                message,
                ..
            }) => Some(ContainerState::Exited {
                exit_code: Some(*exit_code),
                started_at: state.started_at,
                finished_at: Some(*finished_at),
                message: message.clone(),
            }),
            _ => None,
        };
        if let Some(done) = exited(&state) {
            return done;
        }
        // An empty file is a supervisor between its create and its first write.
        if state.supervisor.is_none() || self.supervisor_alive(name, &state) {
            return ContainerState::Running {
                started_at: state.started_at,
            };
        }
        // The supervisor may have recorded the exit and ended since we read.
        if let Some(done) = self.read_state(name).as_ref().and_then(exited) {
            return done;
        }
        ContainerState::Exited {
            exit_code: None,
            started_at: state.started_at,
            finished_at: None,
            message: Some("its supervisor process died (was it killed?)".into()),
        }
    }

    fn delete_sync(&self, name: &str, spares: Option<&SpareStates>) -> std::io::Result<()> {
        let quiet = self.read_state(name).map(|state| self.stop(name, state));
        let file = self.state_file(name);
        // Only a file no supervisor will write again may be handed to the next container.
        match spares {
            Some(spares) if quiet == Some(true) => spares.retire(&file),
            _ => match std::fs::remove_file(file) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            },
        }
    }

    /// Kills the container's whole process group, then makes sure its supervisor is gone
    /// too, giving it a moment to record the exit. Says whether the state file is quiet
    /// now: its exit recorded (its supervisor's last write) or its supervisor known dead.
    fn stop(&self, name: &str, mut state: State) -> bool {
        let kill_group = |state: &State| {
            if let Some(child) = state.child {
                // ESRCH (the group is already empty) is the usual, fine answer.
                let _ = killpg(Pid::from_raw(child), Signal::SIGKILL);
            }
        };
        kill_group(&state);
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while state.exited.is_none() && self.supervisor_alive(name, &state) {
            if std::time::Instant::now() >= deadline {
                if let Some(pid) = state.supervisor {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(5));
            // It may have started the command since we read.
            if let Some(now) = self.read_state(name) {
                state = now;
                kill_group(&state);
            }
        }
        // What left the process group (a daemon started with setsid) is still in the cgroup.
        if let Some(cgroup) = &state.cgroup
            && let Err(err) = super::cgroup::kill(cgroup)
        {
            tracing::warn!("process: cannot empty the cgroup {} of {name}: {err}", cgroup.display());
        }
        // No pid: a supervisor between its claim and its first write, which may yet write.
        state.exited.is_some() || (state.supervisor.is_some() && !self.supervisor_alive(name, &state))
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    async fn placement(&self) -> Result<super::Placement, RuntimeError> {
        Ok(self.placement.clone())
    }

    async fn ensure(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        if self.layout.is_stale(spec) {
            // Same name, other attempt: a container an earlier run kept (`cleanup`), or one
            // left from before its status file was deleted. Never adopt it.
            let (layout, spares) = (self.layout.clone(), self.spares.clone());
            let name = spec.name.clone();
            super::blocking(move || layout.delete_sync(&name, spares.as_deref())).await?;
            let _ = std::fs::remove_file(self.layout.log_path(&spec.name));
        }
        if self.layout.state_file(&spec.name).exists() {
            return Ok(());
        }
        self.start_supervisor(spec).await
    }

    async fn inspect(&self, name: &str) -> Result<Inspection, RuntimeError> {
        let attempt_id = self
            .layout
            .read_state(name)
            .and_then(|state| state.labels.get(LABEL_ATTEMPT_ID).cloned());
        Ok(Inspection {
            state: self.layout.inspect_sync(name),
            attempt_id,
            progress: None,
        })
    }

    async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        let (layout, spares) = (self.layout.clone(), self.spares.clone());
        let name = name.to_string();
        super::blocking(move || layout.delete_sync(&name, spares.as_deref())).await
    }

    async fn log_tail(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        // A little more than the tail, so that it can start on a line boundary.
        let tail = super::kept_logs::read_tail_now(&self.layout.logs, name, LOG_TAIL_BYTES as u64 + 256)?;
        Ok(tail.map(|bytes| crate::status::log_tail(&bytes)))
    }

    /// The log file the supervisor writes as the container runs, and which outlives it.
    async fn output(&self, name: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        super::kept_logs::read(&self.layout.logs, name, None).await
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.layout.containers)? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(STATE_SUFFIX) else {
                continue;
            };
            let labels = self.layout.read_state(name).map(|s| s.labels).unwrap_or_default();
            found.push(ContainerSummary {
                name: name.to_string(),
                labels,
            });
        }
        Ok(found)
    }

    async fn forget(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        super::kept_logs::forget(&self.layout.logs, container_prefix).await
    }

    async fn forget_earlier_run(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        super::kept_logs::forget_earlier(&self.layout.logs, container_prefix).await
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let layout = self.layout.clone();
        // Supervisors append to state files; a write is news, an open or a read is not.
        let handler = move |seen: Seen| {
            let Seen::Change(change) = seen else { return };
            let Some(file) = change.path.file_name().and_then(|n| n.to_str()) else {
                return;
            };
            // Only an exit is news: `ensure` already waited for the start.
            if let Some(name) = file.strip_suffix(STATE_SUFFIX)
                && !fsutil::is_ignored_name(file)
                && layout.read_state(name).is_some_and(|state| state.exited.is_some())
            {
                let _ = tx.send(name.to_string());
            }
        };
        let watcher = FolderWatch::start(Mask::MODIFY | Mask::CLOSE_WRITE, handler).ok()?;
        watcher.watch(&self.layout.containers).ok()?;
        if let Ok(mut slot) = self.watcher.lock() {
            *slot = Some(watcher);
        }
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(dir: &Path) -> super::super::Placement {
        let runtime = ProcessRuntime::new(dir, PathBuf::from("/bin/true")).expect("a state folder");
        runtime.placement.clone()
    }

    #[tokio::test]
    async fn output_is_the_kept_log_read_from_a_folder_opened_as_it_is() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let reader = ProcessRuntime::open(&state);
        assert_eq!(reader.output("c-1").await.unwrap(), None, "no folder: no output");
        assert!(!state.exists(), "opening creates nothing");
        let made = ProcessRuntime::new(&state, PathBuf::from("/bin/true")).unwrap();
        std::fs::write(state.join("logs").join("c-1.log"), b"hello\n").unwrap();
        assert_eq!(reader.output("c-1").await.unwrap().as_deref(), Some(&b"hello\n"[..]));
        assert_eq!(made.output("c-1").await.unwrap().as_deref(), Some(&b"hello\n"[..]));
        assert_eq!(ProcessRuntime::open(&state).placement, made.placement);
        nix::unistd::mkfifo(&state.join("logs").join("c-2.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = reader.output("c-2").await.unwrap_err().to_string();
        assert!(err.contains("c-2.log") && err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_state_folder_keeps_its_id_and_two_folders_have_two() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        let first = placement(&a);
        assert_eq!(
            placement(&a),
            first,
            "the id is kept in the folder: replicas sharing it agree"
        );
        assert_ne!(placement(&b), first, "another folder is another placement");
        let id = std::fs::read_to_string(a.join(STATE_ID_FILE)).unwrap();
        assert_eq!(first.state_id.as_deref(), Some(id.trim()));
        assert!(first.host.as_deref().is_some_and(|h| !h.is_empty()));
    }

    #[test]
    fn replicas_starting_together_on_one_folder_agree_on_its_id() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("shared");
        std::fs::create_dir_all(&dir).unwrap();
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| load_or_create_state_id(&dir).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    }
}
