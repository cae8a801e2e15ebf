//! Test support: a real skiff controller process over a real temporary folder.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// A folder of manifests, with a ledger file that task commands append to.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::Builder::new()
                .prefix("skiff-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn ledger(&self) -> PathBuf {
        self.root().join("ledger.txt")
    }

    /// Writes a manifest atomically (temp file, rename), as an editor or sync tool would.
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.root().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let temp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &path).unwrap();
    }

    /// Copies `examples/<name>` in (its subfolders too), with `image` for the examples'
    /// `image: busybox` (the test engine has no registry). Other files are copied as they are.
    pub fn copy_example(&self, name: &str, image: &str) {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
        self.copy_tree(&from, Path::new(""), image);
    }

    fn copy_tree(&self, from: &Path, rel: &Path, image: &str) {
        for entry in std::fs::read_dir(from).expect("the example exists").flatten() {
            let rel = rel.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                self.copy_tree(&entry.path(), &rel, image);
                continue;
            }
            let bytes = std::fs::read(entry.path()).unwrap();
            let path = self.root().join(&rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            match String::from_utf8(bytes) {
                Ok(text) if rel.extension().is_some_and(|e| e == "yaml" || e == "yml") => {
                    let text = text.replace("image: busybox", &format!("image: {image}"));
                    self.write(&rel.to_string_lossy(), &text);
                }
                Ok(text) => std::fs::write(&path, text).unwrap(),
                Err(err) => std::fs::write(&path, err.into_bytes()).unwrap(),
            }
        }
    }

    /// Containers of the process runtime that exist now: one state file each.
    /// The process containers whose command still runs: those that exist, but for any
    /// whose supervisor has recorded its exit (a slot goes to the next container once an
    /// exit is seen, before the exited one is deleted).
    pub fn running_process_containers(&self) -> usize {
        std::fs::read_dir(self.root().join(".skiff/containers"))
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .filter(|e| {
                        std::fs::read_to_string(e.path())
                            .map(|text| !text.lines().any(|l| l.starts_with("{\"exited\"")))
                            .unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn live_process_containers(&self) -> usize {
        std::fs::read_dir(self.root().join(".skiff/containers"))
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    }

    /// A manifest that runs `script` with sh, on the process runtime.
    pub fn task(&self, rel: &str, script: &str, extra: &str) {
        let script = script.replace('\'', "''");
        self.write(
            rel,
            &format!("apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [sh, -c, '{script}']\n{extra}"),
        );
    }

    /// The shell snippet that appends "<task> <attempt>" to the ledger.
    pub fn ledger_line(&self) -> String {
        format!("echo \"$SKIFF_TASK $SKIFF_ATTEMPT\" >> {}", self.ledger().display())
    }

    /// A script that marks its start and end in the ledger, around `sleep secs`.
    pub fn overlap_script(&self, secs: f64) -> String {
        let ledger = self.ledger().display().to_string();
        format!("echo start >> {ledger}; sleep {secs}; echo end >> {ledger}")
    }

    /// The most tasks of [`Workspace::overlap_script`] that ran at once.
    pub fn most_at_once(&self) -> i32 {
        let (mut now, mut most) = (0i32, 0i32);
        for line in self.ledger_lines() {
            now += if line == "start" { 1 } else { -1 };
            most = most.max(now);
        }
        most
    }

    pub fn ledger_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.ledger())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn status_path(&self, task: &str) -> PathBuf {
        self.root().join(format!("{task}.status.json"))
    }

    pub fn status(&self, task: &str) -> Option<Value> {
        let bytes = std::fs::read(self.status_path(task)).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("{task}: status does not parse: {err}")))
    }

    pub fn phase(&self, task: &str) -> Option<String> {
        self.status(task).and_then(|s| s["phase"].as_str().map(str::to_string))
    }

    /// Starts `skiff controller --dir <root>` with extra flags.
    pub fn controller(&self, flags: &[&str]) -> Controller {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join(".controller.log"))
            .unwrap();
        let child = Command::new(SKIFF)
            .arg("controller")
            .arg("--dir")
            .arg(self.root())
            .args(flags)
            .env("SKIFF_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start skiff controller");
        Controller { child }
    }

    pub fn controller_log(&self) -> String {
        std::fs::read_to_string(self.root().join(".controller.log")).unwrap_or_default()
    }

    /// Runs `skiff <args>` to completion.
    pub fn skiff(&self, args: &[&str]) -> std::process::Output {
        Command::new(SKIFF).args(args).output().expect("run skiff")
    }

    /// Waits until `check` holds, or panics after `timeout` with `what` and the log.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.controller_log();
        let tail: String = log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        let statuses = self.status_summary();
        panic!("timed out after {timeout:?} waiting for {what}\nstatuses:\n{statuses}\ncontroller log tail:\n{tail}");
    }

    /// One line per status file in the workspace's top folder: what a timed-out wait
    /// needs to show, since the log tail rarely reaches back to the task that stalled.
    pub fn status_summary(&self) -> String {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(self.root()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(task) = name.strip_suffix(".status.json") else {
                continue;
            };
            let line = match std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                Some(s) => format!(
                    "{task}: phase={} reason={} attempt={} message={}",
                    s["phase"], s["reason"], s["attempt"], s["message"]
                ),
                None => format!("{task}: unreadable"),
            };
            lines.push(line);
        }
        lines.sort();
        lines.join("\n")
    }

    pub fn wait_phase(&self, task: &str, phase: &str, timeout: Duration) {
        self.wait_until(timeout, &format!("{task} to be {phase}"), || {
            self.phase(task).as_deref() == Some(phase)
        });
    }
}

pub struct Controller {
    pub child: Child,
}

impl Controller {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// Waits for a `--once` controller to exit.
    pub fn wait(mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("controller did not exit within {timeout:?}");
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose command line mentions `needle` (supervisors and their children
/// carry the workspace path), read from /proc.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) && pid != std::process::id() as i32 {
            found.push((pid, text));
        }
    }
    found
}

/// A free loopback port for a controller's `--listen`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub const DOCKER_IMAGE: &str = "skiff-busybox:test";

/// Whether a Docker Engine answers. Without one, a docker test fails when
/// `SKIFF_REQUIRE_SERVICES=1` (CI sets it), and otherwise says loudly that it did not run.
pub fn docker_or_skip(test: &str) -> bool {
    let answers = Command::new("docker")
        .args(["image", "inspect", DOCKER_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if answers {
        remove_containers_of_vanished_workspaces();
        return true;
    }
    let why = format!(
        "no Docker Engine with the image {DOCKER_IMAGE}; run `source scripts/services.sh && ensure_docker && build_test_image`"
    );
    if std::env::var("SKIFF_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// Containers (any state) that carry skiff's labels for this workspace's state folder.
pub fn skiff_containers(state_dir: &Path) -> Vec<String> {
    let canonical = std::fs::canonicalize(state_dir).unwrap_or(state_dir.to_path_buf());
    let output = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=skiff.state-dir={}", canonical.display()))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Containers left by earlier test runs that died before cleaning up: their workspace
/// is gone, and their names would otherwise stay taken.
fn remove_containers_of_vanished_workspaces() {
    let Ok(output) = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=skiff.state-dir",
            "--format",
            "{{.Names}} {{.Label \"skiff.state-dir\"}}",
        ])
        .output()
    else {
        return;
    };
    let temp = std::env::temp_dir().join("skiff-test-");
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some((name, state)) = line.split_once(' ') else {
            continue;
        };
        if state.starts_with(&*temp.to_string_lossy()) && !Path::new(state).exists() {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
    }
}
