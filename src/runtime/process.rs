//! The process runtime, the embedded default: a "container" is a host process run
//! under a detached [supervisor](super::supervisor), with its files in the state folder:
//!
//! ```text
//! <state>/containers/<name>/{meta.json,claim,started.json,output.log}
//! <state>/exits/<name>.json        exit record, watched for `completedBy: engine`
//! <state>/logs/<name>.log          output kept after the container is deleted
//! ```
//!
//! A container exists exactly while its folder exists, which is what `ensure` adopts
//! and `delete` removes.

use super::supervisor::{self, CLAIM_FILE, ExitRecord, LOG_FILE, STARTED_FILE, Started};
use super::{ContainerSpec, ContainerState, ContainerSummary, Runtime, RuntimeError};
use crate::fsutil;
use crate::manifest::RuntimeKind;
use crate::status::LOG_TAIL_BYTES;
use async_trait::async_trait;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// How long a supervisor may take to start its command before `ensure` gives up
/// (and retries: the claim file keeps a second start from running it twice).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `delete` waits for a killed child's supervisor to record the exit.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub struct ProcessRuntime {
    layout: Arc<Layout>,
    /// The skiff binary, run as `skiff __supervise`.
    supervisor_exe: PathBuf,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

/// Where the runtime's files are; shared with blocking tasks.
pub struct Layout {
    containers: PathBuf,
    exits: PathBuf,
    logs: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    labels: BTreeMap<String, String>,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl ProcessRuntime {
    pub fn new(state_dir: &Path, supervisor_exe: PathBuf) -> std::io::Result<Self> {
        let layout = Layout::new(state_dir);
        for dir in [&layout.containers, &layout.exits, &layout.logs] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(ProcessRuntime {
            layout: Arc::new(layout),
            supervisor_exe,
            watcher: Mutex::new(None),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    async fn start_supervisor(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let dir = self.layout.dir(&spec.name);
        let mut command = tokio::process::Command::new(&self.supervisor_exe);
        command
            .arg("__supervise")
            .arg("--container-dir")
            .arg(&dir)
            .arg("--exit-file")
            .arg(self.layout.exit_file(&spec.name));
        if let Some(working_dir) = &spec.working_dir {
            command.arg("--working-dir").arg(working_dir);
        }
        command
            .arg("--")
            .args(&spec.command)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(false);
        // SAFETY: setsid is async-signal-safe; it detaches the supervisor from the
        // controller's session so that neither a terminal's Ctrl+C nor the controller's
        // death reaches it.
        unsafe {
            command.as_std_mut().pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|err| {
            RuntimeError::Transient(format!(
                "cannot start the supervisor {}: {err}",
                self.supervisor_exe.display()
            ))
        })?;
        let stdout = child.stdout.take();
        // Reap the supervisor when it ends, while this controller lives.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let Some(stdout) = stdout else {
            return Err(RuntimeError::Transient("the supervisor has no stdout".into()));
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
}

impl Layout {
    /// The folders of a state directory, without touching the disk.
    pub fn new(state_dir: &Path) -> Self {
        Layout {
            containers: state_dir.join("containers"),
            exits: state_dir.join("exits"),
            logs: state_dir.join("logs"),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.containers.join(name)
    }

    fn exit_file(&self, name: &str) -> PathBuf {
        self.exits.join(format!("{name}.json"))
    }

    fn archived_log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// The log file of a container: live while it exists, archived after.
    pub fn log_path(&self, name: &str) -> PathBuf {
        let live = self.dir(name).join(LOG_FILE);
        if live.exists() { live } else { self.archived_log(name) }
    }

    fn read_exit(&self, name: &str) -> Option<ExitRecord> {
        let bytes = std::fs::read(self.exit_file(name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn read_started(&self, name: &str) -> Option<Started> {
        let bytes = std::fs::read(self.dir(name).join(STARTED_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The pid of the supervisor that claimed the container, if it still runs. The
    /// command line is checked too, so that a recycled pid is not mistaken for it.
    fn live_supervisor(&self, name: &str) -> Option<Pid> {
        let text = std::fs::read_to_string(self.dir(name).join(CLAIM_FILE)).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let needle = name.as_bytes();
        cmdline
            .windows(needle.len())
            .any(|w| w == needle)
            .then_some(Pid::from_raw(pid))
    }

    /// Creates the container's folder atomically: a half-made folder is never seen.
    fn create_dir(&self, spec: &ContainerSpec) -> std::io::Result<()> {
        let dir = self.dir(&spec.name);
        if dir.exists() {
            return Ok(());
        }
        let temp = self
            .containers
            .join(format!(".{}.{}.tmp", spec.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&temp);
        std::fs::create_dir(&temp)?;
        let meta = Meta {
            labels: spec.labels.clone(),
            created_at: chrono::Utc::now(),
        };
        fsutil::write_atomic(&temp.join("meta.json"), &serde_json::to_vec(&meta).unwrap_or_default())?;
        match std::fs::rename(&temp, &dir) {
            Ok(()) => fsutil::sync_dir(&self.containers),
            // Another ensure won the race: adopt its folder.
            Err(_) if dir.exists() => {
                let _ = std::fs::remove_dir_all(&temp);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn inspect_sync(&self, name: &str) -> ContainerState {
        let dir = self.dir(name);
        if !dir.exists() {
            return ContainerState::Absent;
        }
        let exited = |record: ExitRecord| ContainerState::Exited {
            exit_code: Some(record.exit_code),
            started_at: record.started_at,
            finished_at: Some(record.finished_at),
            message: record.message,
        };
        if let Some(record) = self.read_exit(name) {
            return exited(record);
        }
        let claimed = dir.join(CLAIM_FILE).exists();
        if !claimed {
            return ContainerState::Created;
        }
        let started = self.read_started(name);
        if self.live_supervisor(name).is_some() {
            return ContainerState::Running {
                started_at: started.map(|s| s.started_at),
            };
        }
        // The supervisor may have written the record and exited since we looked.
        if let Some(record) = self.read_exit(name) {
            return exited(record);
        }
        ContainerState::Exited {
            exit_code: None,
            started_at: started.map(|s| s.started_at),
            finished_at: None,
            message: Some("its supervisor process died (was it killed?)".into()),
        }
    }

    fn delete_sync(&self, name: &str) -> std::io::Result<()> {
        let dir = self.dir(name);
        if dir.exists() {
            self.stop(name);
            let live_log = dir.join(LOG_FILE);
            if live_log.exists() {
                std::fs::rename(&live_log, self.archived_log(name))?;
            }
            std::fs::remove_dir_all(&dir)?;
            fsutil::sync_dir(&self.containers)?;
        }
        fsutil::remove_durably(&self.exit_file(name))
    }

    /// Kills the container's whole process group, then makes sure its supervisor is
    /// gone too, giving it a moment to record the exit.
    fn stop(&self, name: &str) {
        let kill_group = |started: &Option<Started>| {
            if let Some(started) = started {
                // ESRCH (the group is already empty) is the usual, fine answer.
                let _ = killpg(Pid::from_raw(started.pid), Signal::SIGKILL);
            }
        };
        let started = self.read_started(name);
        kill_group(&started);
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while let Some(pid) = self.live_supervisor(name) {
            if std::time::Instant::now() >= deadline {
                let _ = kill(pid, Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(20));
                // It may have started the command just before it died.
                kill_group(&self.read_started(name));
                break;
            }
            if started.is_none() {
                kill_group(&self.read_started(name));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn tail_of(path: &Path) -> std::io::Result<Option<String>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    // Read a little more than the tail so that it can start on a line boundary.
    let start = len.saturating_sub(LOG_TAIL_BYTES as u64 + 256);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(crate::status::log_tail(&bytes)))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| RuntimeError::Transient(err.to_string()))?
        .map_err(RuntimeError::from)
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    async fn ensure(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        self.layout.create_dir(spec)?;
        let dir = self.layout.dir(&spec.name);
        if dir.join(CLAIM_FILE).exists() || self.layout.exit_file(&spec.name).exists() {
            return Ok(());
        }
        self.start_supervisor(spec).await
    }

    async fn inspect(&self, name: &str) -> Result<ContainerState, RuntimeError> {
        Ok(self.layout.inspect_sync(name))
    }

    async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        let layout = self.layout.clone();
        let name = name.to_string();
        blocking(move || layout.delete_sync(&name)).await
    }

    async fn log_tail(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        Ok(tail_of(&self.layout.log_path(name))?)
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.layout.containers)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if fsutil::is_ignored_name(&name) {
                continue;
            }
            let labels = std::fs::read(entry.path().join("meta.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Meta>(&bytes).ok())
                .map(|meta| meta.labels)
                .unwrap_or_default();
            found.push(ContainerSummary { name, labels });
        }
        Ok(found)
    }

    async fn forget(&self, container_prefix: &str) -> Result<(), RuntimeError> {
        for entry in std::fs::read_dir(&self.layout.logs)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(container_prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = move |result: notify::Result<notify::Event>| {
            let Ok(event) = result else { return };
            if !matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_)) {
                return;
            }
            for path in event.paths {
                let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if fsutil::is_ignored_name(file) {
                    continue;
                }
                if let Some(name) = file.strip_suffix(".json") {
                    let _ = tx.send(name.to_string());
                }
            }
        };
        let mut watcher = notify::recommended_watcher(handler).ok()?;
        watcher.watch(&self.layout.exits, RecursiveMode::NonRecursive).ok()?;
        if let Ok(mut slot) = self.watcher.lock() {
            *slot = Some(watcher);
        }
        Some(rx)
    }
}
