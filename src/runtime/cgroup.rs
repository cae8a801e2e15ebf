//! A cgroup (v2) of its own for each process container, when the controller may make
//! one: a task that starts a daemon with `setsid` leaves its process group, but never its
//! cgroup, so deleting the container (after its exit, its timeout or a terminate) can
//! still kill everything it started.
//!
//! The cgroups live under the controller's own cgroup, in `skiff-<8 hex of the state
//! folder>/<container>`. No controller (cpu, memory) is enabled in them: they are used
//! only to find and kill processes, which cgroup v2 allows without delegating any.
//! Where there is no cgroup v2, or no right to write it, processes run as before and the
//! limit is the documented one: a daemon that leaves the process group outlives the task.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `kill` waits for the killed processes to be gone before removing the group.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Where this controller's containers get their cgroups.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    dir: PathBuf,
}

impl CgroupRoot {
    /// Finds the cgroup v2 hierarchy and this process's place in it, and makes the
    /// folder for the state folder's containers. `Err` says why not, for one log line.
    pub fn make(state_dir: &Path) -> Result<CgroupRoot, String> {
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|err| format!("/proc/self/mountinfo: {err}"))?;
        let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|err| format!("/proc/self/cgroup: {err}"))?;
        let own = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .ok_or("this process is in no cgroup v2")?;
        // Controllers of different state folders never share (and never kill) a group.
        let digest = <sha2::Sha256 as sha2::Digest>::digest(state_dir.as_os_str().as_encoded_bytes());
        let tag = hex::encode(&digest[..4]);
        let parent = mount.join(own.trim_start_matches('/'));
        sweep_empty_roots(&parent);
        let dir = parent.join(format!("skiff-{tag}"));
        std::fs::create_dir_all(&dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        Ok(CgroupRoot { dir })
    }

    /// Removes the folder if no container's cgroup is left in it (else keeps it).
    pub fn remove_if_empty(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// The cgroup of one container (not made yet: its supervisor makes it).
    pub fn for_container(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Removes what controllers killed with SIGKILL left: container cgroups with no process
/// left (made over a minute ago, so that one whose command is about to join it stays),
/// then `skiff-*` folders left empty. rmdir fails on a cgroup that still has processes
/// or children: exactly what must stay. A live controller's swept folder is made again
/// by its next container (`prepare`).
fn sweep_empty_roots(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("skiff-") {
            continue;
        }
        if let Ok(containers) = std::fs::read_dir(entry.path()) {
            for container in containers.flatten() {
                let old = container
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > SWEEP_AFTER);
                if old && container.path().is_dir() {
                    let _ = std::fs::remove_dir(container.path());
                }
            }
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

/// How old an empty container cgroup must be before a starting controller removes it.
const SWEEP_AFTER: Duration = Duration::from_secs(60);

/// The mount point of the cgroup2 file system, from `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Opens the file that moves a process into the cgroup `dir` (made by the supervisor
/// with create_dir_all: the controller's folder may have been swept while it had no
/// container). Only where the command cannot be born in its cgroup
/// ([`super::clone_into_cgroup`]) does the supervisor write `0` there between fork and
/// exec, so that the command and all it starts are inside from their first instruction.
pub fn procs(dir: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))
}

/// Kills every process left in the cgroup and removes it. A missing cgroup is fine.
pub fn kill(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14) kills the whole group at once, new forks included.
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in pids(dir) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            // EBUSY while the killed processes are being reaped.
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_mounts() {
        let mountinfo = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        assert_eq!(cgroup2_mount(mountinfo), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("32 30 0:28 / /x rw - cgroup cgroup rw,memory"), None);
    }
}
