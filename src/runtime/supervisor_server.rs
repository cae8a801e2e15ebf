//! The supervisor server: one small process per controller that forks the process
//! runtime's supervisors, so that starting a container does not exec the skiff binary.
//!
//! Why: a supervisor started by exec paid for the kernel's exec of a 15 MB program, the
//! dynamic loader, glibc's CPU detection (a trapped `cpuid` per cache level in a VM) and
//! about 150 page faults: some 1.3 ms of CPU per container, a third of what the
//! controller spent on a `sleep 0.05` task. A fork of this small, single-threaded
//! process costs a tenth of that. The supervisor is still the skiff binary's own code
//! (DESIGN.md §6), in its own session, outliving the controller and this server alike.
//!
//! The controller starts the server (`skiff __supervisor-server`, its stdin one end of a
//! `SOCK_SEQPACKET` pair) at its first container. Each request is one message: the
//! supervisor's arguments and the container's environment, with the write end of a pipe
//! passed alongside (`SCM_RIGHTS`), which becomes the supervisor's stdout, where it says
//! `started` or `claimed`, exactly as a supervisor started by exec does. The server
//! forks, and the child runs [`super::supervisor::supervise`]; the server reaps the
//! supervisors that end while it lives. It exits when the controller's end closes.
//!
//! Anything that goes wrong on this path (no server, a full socket, a message too big)
//! makes the controller start that supervisor by exec instead, as before.

use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::Mutex;

/// The argument that makes the skiff binary a supervisor server.
pub const SERVER_ARG: &str = "__supervisor-server";

/// The largest request: beyond it, the supervisor is started by exec, whose refusal of
/// arguments or an environment past the kernel's limit (E2BIG) fails the attempt with the
/// reason said; far below that limit, so a request never meets it.
const MOST_REQUEST_BYTES: usize = 64 * 1024;

/// One supervisor to start: its `__supervise` arguments (without the program and the
/// `__supervise` word) and the environment variables to set on top of the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

impl Request {
    /// Length-prefixed fields: the count of arguments, each argument, the count of
    /// variables, each name and value. Arguments may hold any byte but NUL, so no
    /// separator would do.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let put = |bytes: &[u8], out: &mut Vec<u8>| {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        out.extend_from_slice(&(self.args.len() as u32).to_le_bytes());
        for arg in &self.args {
            put(arg.as_bytes(), &mut out);
        }
        out.extend_from_slice(&(self.env.len() as u32).to_le_bytes());
        for (name, value) in &self.env {
            put(name.as_bytes(), &mut out);
            put(value.as_bytes(), &mut out);
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Option<Request> {
        fn number(bytes: &mut &[u8]) -> Option<usize> {
            let (head, rest) = bytes.split_first_chunk::<4>()?;
            *bytes = rest;
            Some(u32::from_le_bytes(*head) as usize)
        }
        fn field(bytes: &mut &[u8]) -> Option<OsString> {
            let len = number(bytes)?;
            if bytes.len() < len {
                return None;
            }
            let (head, rest) = bytes.split_at(len);
            *bytes = rest;
            Some(OsString::from_vec(head.to_vec()))
        }
        let args = (0..number(&mut bytes)?)
            .map(|_| field(&mut bytes))
            .collect::<Option<Vec<_>>>()?;
        let env = (0..number(&mut bytes)?)
            .map(|_| Some((field(&mut bytes)?, field(&mut bytes)?)))
            .collect::<Option<Vec<_>>>()?;
        bytes.is_empty().then_some(Request { args, env })
    }
}

/// Serves requests on stdin until the controller's end closes; the server's exit code.
pub fn serve() -> i32 {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use nix::sys::wait::{WaitPidFlag, waitpid};
    // SAFETY: fd 0 is the socket the controller gave this process as its stdin, and
    // nothing else in this process uses it.
    let socket = unsafe { OwnedFd::from_raw_fd(0) };
    // Wake up now and then to reap supervisors that ended while no request came.
    let tick = nix::sys::time::TimeVal::new(1, 0);
    let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &tick);
    let mut buffer = vec![0u8; MOST_REQUEST_BYTES];
    loop {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
        let (len, ready) = match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => {
                let mut fds: Vec<OwnedFd> = Vec::new();
                if let Ok(cmsgs) = message.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(received) = cmsg {
                            // SAFETY: the kernel just made these descriptors for this
                            // process; each is owned once, here.
                            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                }
                (message.bytes, fds.into_iter().next())
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        };
        if len == 0 && ready.is_none() {
            return 0;
        }
        let (Some(ready), Some(request)) = (ready, Request::decode(&buffer[..len])) else {
            continue;
        };
        // SAFETY: this process has one thread (it never starts another), so the child
        // may run anything: no lock can be held by a thread that fork left behind.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // Fd 0, the socket, is replaced by /dev/null in `run_supervisor`.
                std::mem::forget(socket);
                // `_exit`: nothing is buffered (the state file is written whole, line by
                // line), and the exit handlers would only fault in the pages they touch.
                let code = run_supervisor(ready, request);
                // SAFETY: _exit ends this process at once; nothing after it runs.
                unsafe { nix::libc::_exit(code) }
            }
            // The pipe's end closes here: the controller reads EOF, and retries.
            Ok(nix::unistd::ForkResult::Parent { .. }) | Err(_) => drop(ready),
        }
    }
}

/// In the forked child: the request's supervisor, its stdout the controller's pipe,
/// its stdin `/dev/null` (where the server's socket was), as a supervisor started by
/// exec has them.
fn run_supervisor(ready: OwnedFd, request: Request) -> i32 {
    let Ok(null) = std::fs::File::open("/dev/null") else {
        return 1;
    };
    if nix::unistd::dup2_stdin(&null).is_err() || nix::unistd::dup2_stdout(&ready).is_err() {
        return 1;
    }
    drop((null, ready));
    for (name, value) in &request.env {
        // SAFETY: this process has a single thread (the server never starts one).
        unsafe { std::env::set_var(name, value) };
    }
    match super::supervisor::parse_args(request.args.into_iter()) {
        Some(args) => super::supervisor::supervise(args),
        None => 2,
    }
}

/// The controller's side: a server started at the first request, and started again
/// when it is found gone.
pub struct Launcher {
    exe: std::path::PathBuf,
    server: Mutex<Option<Server>>,
}

struct Server {
    socket: OwnedFd,
    child: std::process::Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing the socket ends the server; reap it so that it leaves no zombie.
        let _ = nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = self.child.wait();
    }
}

impl Launcher {
    pub fn new(exe: &Path) -> Self {
        Launcher {
            exe: exe.to_path_buf(),
            server: Mutex::new(None),
        }
    }

    /// Asks the server to start a supervisor; the read end of its stdout, or `None`
    /// when this path cannot (the caller then starts it by exec).
    pub fn launch(&self, request: &Request) -> Option<OwnedFd> {
        // What exec refuses (a NUL, a name with `=`) it refuses with the reason said;
        // the forked child could only fail (`set_var` panics on it).
        let plain = |s: &OsString| !s.as_bytes().contains(&0);
        let name = |s: &OsString| plain(s) && !s.is_empty() && !s.as_bytes().contains(&b'=');
        if !request.args.iter().all(plain) || !request.env.iter().all(|(k, v)| name(k) && plain(v)) {
            return None;
        }
        let message = request.encode();
        if message.len() > MOST_REQUEST_BYTES {
            return None;
        }
        let mut server = self.server.lock().ok()?;
        for _ in 0..2 {
            if server.is_none() {
                *server = Some(self.start().ok()?);
            }
            let socket = server.as_ref()?.socket.as_raw_fd();
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
            match send(socket, &message, write.as_fd().as_raw_fd()) {
                Ok(()) => return Some(read),
                // Gone (killed, or it failed): start another and try once more.
                Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET | nix::errno::Errno::ENOTCONN) => {
                    *server = None;
                }
                Err(_) => return None,
            }
        }
        None
    }

    fn start(&self) -> std::io::Result<Server> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        let child = std::process::Command::new(&self.exe)
            .arg(SERVER_ARG)
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(Server { socket: ours, child })
    }
}

fn send(socket: RawFd, message: &[u8], ready: RawFd) -> Result<(), nix::errno::Errno> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [ready];
    let iov = [IoSlice::new(message)];
    // Never wait on a server that stopped reading: exec instead.
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    sendmsg::<()>(socket, &iov, &[ControlMessage::ScmRights(&fds)], flags, None).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_exec_would_refuse_is_left_to_exec() {
        // The executable is never started: each request is turned down before.
        let launcher = Launcher::new(Path::new("/nonexistent/skiff"));
        let with = |args: &[&str], env: &[(&str, &str)]| Request {
            args: args.iter().map(OsString::from).collect(),
            env: env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
        };
        for request in [
            with(&["--", "echo", "a\0b"], &[]),
            with(&["--", "true"], &[("A", "x\0y")]),
            with(&["--", "true"], &[("A=B", "x")]),
            with(&["--", "true"], &[("", "x")]),
            with(&["--", &"x".repeat(MOST_REQUEST_BYTES)], &[]),
        ] {
            assert!(launcher.launch(&request).is_none(), "{request:?}");
        }
        assert!(
            launcher.server.lock().unwrap().is_none(),
            "no server was started for them"
        );
    }

    #[test]
    fn a_request_reads_back_as_it_was_written_and_a_torn_one_not_at_all() {
        let request = Request {
            args: vec![
                "--state-file".into(),
                OsString::from_vec(b"/tmp/\xffodd".to_vec()),
                "".into(),
            ],
            env: vec![("A".into(), "1".into()), ("EMPTY".into(), "".into())],
        };
        let bytes = request.encode();
        assert_eq!(Request::decode(&bytes), Some(request.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(Request::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Request::decode(&longer), None, "trailing bytes are refused");
    }
}
