//! Starting a container's command inside its cgroup from its first instruction, with
//! `clone3(CLONE_INTO_CGROUP)` (Linux 5.7).
//!
//! Why not fork, then write `0` to `cgroup.procs` before exec: moving a process between
//! cgroups takes the kernel's cgroup threadgroup lock for writing, which waits for an RCU
//! grace period. Measured here, that write took up to 12 ms per container, with 32
//! containers starting at once queueing behind each other: the process runtime's
//! throughput fell by a quarter (`scripts/bench throughput`, 500 tasks, 1.69 s with the
//! write against 1.24 s with no cgroup at all). A process born in its cgroup is never
//! moved, and the fork path takes that lock only for reading.
//!
//! Where `clone3` or the flag is refused (an older kernel, a seccomp filter, a cgroup on
//! another hierarchy), [`spawn`] says [`Spawned::Unsupported`] and the supervisor starts
//! the command the old way. No crate wraps this call in a maintained form (nix has no
//! `clone3`); the raw call is small, and the child does nothing but system calls between
//! the clone and the exec.

use nix::libc;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `CLONE_INTO_CGROUP` from `<linux/sched.h>` (libc does not export it yet).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (version 2, with `cgroup`): every field is 64 bits on
/// every architecture, so it is spelled out here rather than taken per target from libc.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What the command's standard streams and working folder are.
pub struct Stdio<'a> {
    pub stdin: &'a File,
    pub stdout: &'a File,
    pub stderr: &'a File,
    pub working_dir: Option<&'a Path>,
}

/// How a [`spawn`] ended.
#[derive(Debug)]
pub enum Spawned {
    /// The command runs, in the cgroup, as process `pid` (its own process group).
    Running(i32),
    /// The command could not start (as `exec` said: not found, not runnable, or the
    /// working folder is missing). The child has been reaped.
    Failed(io::Error),
    /// This kernel or cgroup refuses `CLONE_INTO_CGROUP`: start it another way.
    Unsupported(io::Error),
}

/// Starts `program` (looked up in `PATH` as `execvp` does) with `args`, with this process's
/// environment, in the cgroup whose folder is `cgroup`, in a process group of its own,
/// with default signal handling.
///
/// Call it only while this process has a single thread: the child runs code between
/// clone and exec that a fork of a threaded process may not.
pub fn spawn(program: &OsStr, args: &[std::ffi::OsString], stdio: &Stdio, cgroup: &Path) -> Spawned {
    let cstring = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let prepared = (|| -> io::Result<_> {
        let program = cstring(program)?;
        let mut argv = vec![program.clone()];
        for arg in args {
            argv.push(cstring(arg)?);
        }
        let dir = stdio.working_dir.map(|d| cstring(d.as_os_str())).transpose()?;
        Ok((program, argv, dir))
    })();
    let (program, argv, dir) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return Spawned::Failed(err),
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let group = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(cgroup)
    {
        Ok(group) => group,
        Err(err) => return Spawned::Unsupported(err),
    };
    // The child reports a failed exec (its errno) here; a successful exec closes it.
    let (report_read, report_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(err) => return Spawned::Unsupported(err.into()),
    };
    let fds = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
    ];
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: group.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: without CLONE_VM the child gets a copy of this (single-threaded) process,
    // as with fork; it runs only `child`, which makes raw system calls and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: see above; the pointers are to this process's (copied) memory.
        unsafe { child(fds, dir.as_ref(), &program, &argv_ptrs, report_write.as_raw_fd()) }
    }
    drop(report_write);
    if pid < 0 {
        return Spawned::Unsupported(io::Error::last_os_error());
    }
    let pid = pid as i32;
    match read_report(report_read) {
        None => Spawned::Running(pid),
        Some(errno) => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            Spawned::Failed(io::Error::from_raw_os_error(errno))
        }
    }
}

/// The child, between clone and exec: only system calls, and `_exit` on any failure.
unsafe fn child(
    fds: [RawFd; 3],
    dir: Option<&CString>,
    program: &CString,
    argv: &[*const libc::c_char],
    report: RawFd,
) -> ! {
    let fail = |report: RawFd| -> ! {
        // SAFETY: errno, write and _exit are async-signal-safe.
        unsafe {
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(report, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    };
    // SAFETY: each call is a plain system call on this process's own descriptors and memory.
    unsafe {
        for (target, fd) in fds.into_iter().enumerate() {
            if libc::dup2(fd, target as RawFd) < 0 {
                fail(report);
            }
        }
        if let Some(dir) = dir
            && libc::chdir(dir.as_ptr()) < 0
        {
            fail(report);
        }
        if libc::setpgid(0, 0) < 0 {
            fail(report);
        }
        // Rust ignores SIGPIPE; a shell pipeline in the command expects the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execvp(program.as_ptr(), argv.as_ptr());
        fail(report)
    }
}

/// The errno a child reported, or `None` once the pipe closed empty (the exec worked).
fn read_report(report: OwnedFd) -> Option<i32> {
    let mut file = File::from(report);
    let mut bytes = [0u8; 4];
    let mut got = 0;
    while got < bytes.len() {
        match io::Read::read(&mut file, &mut bytes[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (got == bytes.len()).then(|| i32::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A fresh cgroup under this process's own, or `None` where cgroup v2 is not writable
    /// (never under `SKIFF_REQUIRE_SERVICES=1`, as CI runs: its machines have one).
    fn scratch_cgroup(name: &str) -> Option<std::path::PathBuf> {
        let made = crate::runtime::cgroup::CgroupRoot::make(&std::env::temp_dir().join(name)).and_then(|root| {
            let dir = root.for_container(name);
            std::fs::create_dir_all(&dir).map_err(|err| err.to_string())?;
            Ok(dir)
        });
        match made {
            Ok(dir) => Some(dir),
            Err(why) if std::env::var_os("SKIFF_REQUIRE_SERVICES").is_some() => {
                panic!("no writable cgroup v2 here, which CI's machines have: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED: no writable cgroup v2: {why}");
                None
            }
        }
    }

    /// Removes a scratch cgroup and the folder above it, once their processes are gone.
    fn remove(cgroup: &Path) {
        let _ = std::fs::remove_dir(cgroup);
        let _ = cgroup.parent().map(std::fs::remove_dir);
    }

    fn run(program: &str, args: &[&str], cgroup: &Path, dir: Option<&Path>) -> (Spawned, String) {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (out, err) = (File::from(write), File::open("/dev/null").unwrap());
        let stdin = File::open("/dev/null").unwrap();
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let stdio = Stdio {
            stdin: &stdin,
            stdout: &out,
            stderr: &err,
            working_dir: dir,
        };
        let spawned = spawn(OsStr::new(program), &args, &stdio, cgroup);
        drop(out);
        let mut text = String::new();
        File::from(read).read_to_string(&mut text).unwrap();
        if let Spawned::Running(pid) = spawned {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
        (spawned, text)
    }

    #[test]
    fn the_command_is_born_in_its_cgroup_in_its_own_process_group_and_folder() {
        let Some(cgroup) = scratch_cgroup("skiff-clone-into-test") else {
            return;
        };
        let (spawned, text) = run(
            "sh",
            &["-c", "cat /proc/self/cgroup; cut -d' ' -f5 /proc/$$/stat; echo $$; pwd"],
            &cgroup,
            Some(Path::new("/tmp")),
        );
        let Spawned::Running(pid) = spawned else {
            panic!("{spawned:?}")
        };
        let name = cgroup.file_name().unwrap().to_string_lossy().into_owned();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.iter().any(|l| l.starts_with("0::") && l.ends_with(&name)),
            "{text}"
        );
        let n = lines.len();
        assert_eq!(lines[n - 3].trim(), pid.to_string(), "its own process group: {text}");
        assert_eq!(lines[n - 2].trim(), pid.to_string());
        assert_eq!(lines[n - 1], "/tmp");
        remove(&cgroup);
    }

    #[test]
    fn a_missing_program_or_folder_fails_as_exec_says() {
        let Some(cgroup) = scratch_cgroup("skiff-clone-into-fail") else {
            return;
        };
        let (spawned, _) = run("no-such-program-skiff", &[], &cgroup, None);
        assert!(
            matches!(&spawned, Spawned::Failed(err) if err.kind() == io::ErrorKind::NotFound),
            "{spawned:?}"
        );
        let (spawned, _) = run("true", &[], &cgroup, Some(Path::new("/no/such/folder")));
        assert!(
            matches!(&spawned, Spawned::Failed(err) if err.kind() == io::ErrorKind::NotFound),
            "{spawned:?}"
        );
        remove(&cgroup);
    }

    #[test]
    fn a_folder_that_is_no_cgroup_is_unsupported_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (spawned, _) = run("true", &[], dir.path(), None);
        assert!(matches!(spawned, Spawned::Unsupported(_)), "{spawned:?}");
    }
}
