//! Durable file operations shared by the stores, the runtime and its supervisor, and
//! the one way skiff reads a file that a user controls ([`read_regular`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` so that a reader sees the old file or the new one,
/// never a mix, and the new one survives a power cut once this returns: write a
/// temporary file, fsync it, rename it over, fsync the directory.
///
/// The temporary file is a dot-file in the same directory, which every watcher and
/// listing in skiff ignores.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// A fresh temporary name beside `path` (`.<name>.<pid>.<n>.tmp`) to write into and then
/// rename over it: a dot-file, which every watcher and listing in skiff ignores, unique to
/// this process and call, so that two writers of one file never share a temporary file.
pub fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a file, treating "already gone" as success, and makes the removal durable.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// True for names skiff must never treat as manifests: dot-files (our temporary files,
/// editors' swap files, `.skiff/`) and common editor backups.
/// `renameat2(from, to, RENAME_EXCHANGE)`: both names stay, each now names the other's
/// file, in one step no crash can split.
pub fn rename_exchange(from: &Path, to: &Path) -> io::Result<()> {
    renameat2(from, to, 1 << 1)
}

/// `renameat2(from, to, RENAME_NOREPLACE)`: a rename that fails with `AlreadyExists`
/// rather than replace `to`, so it can claim a name as an exclusive create does.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    renameat2(from, to, 1 << 0)
}

/// `renameat2(2)` by system call: the wrapper is glibc's only, and the static image
/// links musl.
fn renameat2(from: &Path, to: &Path, flags: nix::libc::c_uint) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: two NUL-terminated paths that outlive the call, and plain integers; the
    // kernel reads the paths and writes nothing back.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_renameat2,
            nix::libc::AT_FDCWD,
            from.as_ptr(),
            nix::libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~') || name.ends_with(".tmp") || name.ends_with(".swp")
}

/// Why a user's file was not read. Every variant but [`ReadError::Io`] is a problem a
/// person must fix; none of them is retried.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("is {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("is {len} bytes, more than the {limit} bytes skiff reads")]
    TooLarge { len: u64, limit: u64 },
    #[error("has a name longer than the file system allows")]
    NameTooLong,
    #[error("{0}")]
    Io(#[source] io::Error),
}

impl ReadError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(err) if err.kind() == io::ErrorKind::NotFound)
    }

    fn from_io(err: io::Error) -> Self {
        if err.raw_os_error() == Some(nix::libc::ENAMETOOLONG) {
            ReadError::NameTooLong
        } else {
            ReadError::Io(err)
        }
    }
}

fn kind_of(file_type: fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_fifo() {
        "a named pipe (FIFO)"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Reads a file a user controls (a manifest, a status), refusing anything that could
/// hang or exhaust the reader: only a regular file (a symlink to one is fine) of at most
/// `limit` bytes.
///
/// A FIFO would block `open` until a writer comes and `/dev/zero` never ends, so the
/// type is checked before opening (no device is opened at all), the open is
/// non-blocking, and the type is checked again on the open handle (the path may have
/// been swapped in between). `take` bounds a file that grows while it is read.
/// Blocking: call it off the async workers ([`read_regular_async`]).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    read_regular_with_metadata(path, limit).map(|(bytes, _)| bytes)
}

/// [`read_regular`], with the metadata of the handle it read (the file as read, not as
/// a later `stat` of its path might find it).
pub fn read_regular_with_metadata(path: &Path, limit: u64) -> Result<(Vec<u8>, fs::Metadata), ReadError> {
    let check = |meta: &fs::Metadata| -> Result<(), ReadError> {
        if !meta.is_file() {
            return Err(ReadError::NotRegular {
                kind: kind_of(meta.file_type()),
            });
        }
        if meta.len() > limit {
            return Err(ReadError::TooLarge { len: meta.len(), limit });
        }
        Ok(())
    };
    check(&fs::metadata(path).map_err(ReadError::from_io)?)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(ReadError::from_io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    check(&meta)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            len: bytes.len() as u64,
            limit,
        });
    }
    Ok((bytes, meta))
}

/// [`read_regular`] on the blocking pool, so that no file can stall the async workers.
pub async fn read_regular_async(path: PathBuf, limit: u64) -> Result<Vec<u8>, ReadError> {
    tokio::task::spawn_blocking(move || read_regular(&path, limit))
        .await
        .map_err(|err| ReadError::Io(io::Error::other(err.to_string())))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_regular_refuses_what_could_hang_or_exhaust_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Would block forever on open without the type check and O_NONBLOCK.
        assert!(matches!(
            read_regular(&fifo, 10),
            Err(ReadError::NotRegular {
                kind: "a named pipe (FIFO)"
            })
        ));
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            read_regular(&zero, 10),
            Err(ReadError::NotRegular { kind: "a device" })
        ));
        assert!(matches!(
            read_regular(dir.path(), 10),
            Err(ReadError::NotRegular { kind: "a folder" })
        ));
        let big = dir.path().join("big");
        fs::write(&big, [b'x'; 11]).unwrap();
        assert!(matches!(
            read_regular(&big, 10),
            Err(ReadError::TooLarge { len: 11, limit: 10 })
        ));
        assert_eq!(read_regular(&big, 11).unwrap().len(), 11);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&big, &link).unwrap();
        assert_eq!(read_regular(&link, 11).unwrap().len(), 11);
        assert!(read_regular(&dir.path().join("absent"), 10).unwrap_err().is_not_found());
        let long = dir.path().join("n".repeat(300));
        assert!(matches!(read_regular(&long, 10), Err(ReadError::NameTooLong)));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.status.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        remove_durably(&path).unwrap();
        remove_durably(&path).unwrap();
    }
}
