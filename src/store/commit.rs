//! Group commit for the directory store's status files: writes that become due
//! together are made durable together (ARCHITECTURE.md, "Group commit").
//!
//! Each write:
//! 1. writes its new status to a temporary dot-file beside its target, on the blocking
//!    pool, concurrently with every other write;
//! 2. makes that file's data durable without a journal commit of its own
//!    ([`Durability`]);
//! 3. renames it over its target (a removal unlinks the target);
//! 4. queues its folder for the next round of folder fsyncs, led by a writer's own
//!    thread (no committer thread: [`Rounds`]); a round takes every folder queued since
//!    the last one and fsyncs each once (one after another: with a journal, the first
//!    commits every rename of the round);
//! 5. returns only once that fsync is done.
//!
//! The invariant of a single write is kept: a writer is answered only once its status
//! (or its removal) is durable, so no action ever follows a status that a power cut
//! could take back. A crash anywhere before step 5 loses only writes nobody was told
//! about: a reader then finds the old file or the new one, whole.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::fsutil;

/// How a new file's data is made durable before it is renamed into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// XFS, and ext4 with a journal: `sync_file_range` writes the file's data out and waits for it
    /// (allocating its blocks, which puts that metadata into the running journal
    /// transaction); the fsync of its folder after the rename commits that transaction,
    /// with a cache flush ahead of its commit record, so data, size and rename reach
    /// the disk together: one journal commit for every write of a round, where an fsync
    /// of each file costs a commit of its own. Measured here with 32 files (write,
    /// make durable, rename, one fsync per folder): 1.3 ms, against 11 ms with an fsync
    /// of each file, 9 ms with those fsyncs on 8 threads, and `syncfs` at 1.5 ms idle
    /// but 5 to 38 ms beside another writer, whose dirty pages it flushes too.
    WriteOutThenJournal,
    /// Any other file system, ext4 without a journal included: an fsync of each file (writes run concurrently, so the
    /// file system may merge them), then the rename and the folder's fsync.
    FsyncEach,
}

impl Durability {
    /// The cheapest method that is durable on the file system holding `dir`.
    pub fn for_folder(dir: &Path) -> Durability {
        // The magic numbers of statfs(2), spelled out: musl's libc (the static image's)
        // does not export XFS's.
        const EXT4_SUPER_MAGIC: i64 = 0xEF53;
        const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
        match nix::sys::statfs::statfs(dir) {
            #[allow(clippy::unnecessary_cast)] // i64 already on glibc, c_ulong on musl
            Ok(fs) => match fs.filesystem_type().0 as i64 {
                // XFS always has its log.
                XFS_SUPER_MAGIC => Durability::WriteOutThenJournal,
                // EXT4_SUPER_MAGIC is ext2's and ext3's too, and ext4 can be made without a
                // journal (`mkfs.ext4 -O ^has_journal`, as some cloud images are): with no
                // journal, a folder's fsync does not write a new file's inode, so a power cut
                // could leave the renamed status empty. Only a journal seen makes the
                // cheaper method safe.
                EXT4_SUPER_MAGIC => Durability::for_ext4(ext4_journal_task(dir).as_deref()),
                _ => Durability::FsyncEach,
            },
            Err(_) => Durability::FsyncEach,
        }
    }

    /// For an ext4 (or ext2/ext3) file system, from what its `journal_task` in sysfs
    /// says: the journal thread's pid when it has a journal, `<none>` when it has none,
    /// and nothing to read when sysfs is not there to ask (then it is not assumed).
    fn for_ext4(journal_task: Option<&str>) -> Durability {
        match journal_task.map(str::trim) {
            Some(task) if !task.is_empty() && task != "<none>" => Durability::WriteOutThenJournal,
            _ => Durability::FsyncEach,
        }
    }

    /// Makes a file's data durable, as far as this method does before the rename.
    pub fn write_out(self, file: &File) -> io::Result<()> {
        match self {
            Durability::WriteOutThenJournal => sync_file_range(
                file.as_raw_fd(),
                nix::libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | nix::libc::SYNC_FILE_RANGE_WRITE
                    | nix::libc::SYNC_FILE_RANGE_WAIT_AFTER,
            ),
            // fdatasync: the data and what reading it back needs (its size, its blocks),
            // not the timestamps; the rename is made durable by its folder's fsync.
            Durability::FsyncEach => file.sync_data(),
        }
    }
}

/// Where a write is, for the hook tests use to crash the process at each point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A round's renames and unlinks are all done, no folder is fsynced yet: none of
    /// them is durable, and none of their writers has been answered. The paths of the
    /// round are given.
    Renamed,
}

pub type Hook = Arc<dyn Fn(Stage, &[PathBuf]) + Send + Sync>;

/// The handle writers use.
pub struct GroupCommit {
    durability: Durability,
    rounds: Arc<Rounds>,
    spares: Option<Arc<Spares>>,
}

impl GroupCommit {
    pub fn new(durability: Durability) -> io::Result<Self> {
        Self::with_hook(durability, None)
    }

    /// With a hook called at each [`Stage`] of every round (for crash tests).
    pub fn with_hook(durability: Durability, hook: Option<Hook>) -> io::Result<Self> {
        Ok(GroupCommit {
            durability,
            rounds: Arc::new(Rounds {
                state: Mutex::default(),
                turn: Condvar::new(),
                hook,
            }),
            spares: None,
        })
    }

    /// Writes through a pool of spare files kept under `folders` (on one file system with
    /// the statuses), exchanged with their targets ([`Spares`]).
    pub fn with_spares(mut self, folders: PathBuf) -> Self {
        self.spares = Some(Arc::new(Spares::new(folders)));
        self
    }

    /// Replaces `path` with `bytes`, atomically and durably; returns once durable. One
    /// trip to the blocking pool, for the write and its folder's fsync both.
    pub async fn write(&self, path: PathBuf, bytes: Vec<u8>) -> io::Result<()> {
        let durability = self.durability;
        let spares = self.spares.clone();
        let rounds = self.rounds.clone();
        spawn_blocking(move || {
            match spares.as_deref() {
                Some(spares) => spares.write_and_exchange(durability, &path, &bytes)?,
                None => write_and_rename(durability, &path, &bytes)?,
            }
            rounds.synced(path)
        })
        .await
    }

    /// Removes `path` ("already gone" is success); returns once the removal is durable.
    pub async fn remove(&self, path: PathBuf) -> io::Result<()> {
        let rounds = self.rounds.clone();
        spawn_blocking(move || match fs::remove_file(&path) {
            Ok(()) => rounds.synced(path),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        })
        .await
    }
}

/// Rounds of folder fsyncs, each led by the thread of a writer waiting for one: the
/// first to arrive while none leads takes every folder queued so far, fsyncs each once,
/// and answers their writers; the others wait for their answer, or for the lead to fall
/// to them. A lone write thus pays no hand-off to a committer thread and back (most of
/// a write's wait under load: a median 0.8 ms of 1.4 ms in `scripts/bench throughput`),
/// and writes due together still share their folders' fsyncs.
struct Rounds {
    state: Mutex<RoundState>,
    turn: Condvar,
    hook: Option<Hook>,
}

#[derive(Default)]
struct RoundState {
    /// Folders to fsync, by the ticket of the write waiting for each.
    queued: Vec<(u64, PathBuf)>,
    answers: HashMap<u64, io::Result<()>>,
    leading: bool,
    next_ticket: u64,
}

impl Rounds {
    /// Returns once `path`'s folder has been fsynced since this call began.
    fn synced(&self, path: PathBuf) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queued.push((ticket, path));
        loop {
            if let Some(answer) = state.answers.remove(&ticket) {
                return answer;
            }
            if !state.leading {
                state.leading = true;
                let round = std::mem::take(&mut state.queued);
                drop(state);
                let answers = sync_round(round, self.hook.as_ref());
                state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.answers.extend(answers);
                state.leading = false;
                self.turn.notify_all();
                continue;
            }
            state = self.turn.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

async fn spawn_blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|err| Err(io::Error::other(err.to_string())))
}

/// Steps 1 to 3 of a write: the temporary file, its data durable, the rename.
fn write_and_rename(durability: Durability, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = fsutil::temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        file.write_all(bytes)?;
        durability.write_out(&file)?;
        drop(file);
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// A pool of spare files that status writes exchange with their targets, so that a
/// write neither makes nor frees an inode.
///
/// Each write puts its new status into a spare, makes it durable, and swaps it with the
/// target in one `renameat2(RENAME_EXCHANGE)`: the target's name now holds the new
/// status, and the spare's name the old one, which goes back to the pool to be written
/// over next time. Atomic like a rename, and a reader sees the old status or the new one.
///
/// Why: on ext4 without a journal, each new inode is placed by scanning past every inode
/// freed in the last minute, or six while its inode block is dirty (the kernel's
/// `recently_deleted`), so the usual
/// temporary-file-and-rename, which frees one inode per write, made status writes cost
/// more the more of them there were: 16 % of all CPU in `scripts/bench throughput` here.
/// Fewer inodes made and freed is cheaper on any file system.
///
/// A spare's content is never read. Each process keeps its own pool, in a folder of
/// its own under `folders` that it holds an exclusive `flock` on while it lives (other
/// processes may open the same store: the command line, a second controller by
/// mistake); a pool whose lock can be taken belongs to a dead process and is removed,
/// never reused: after a power cut on a file system without a journal, a spare's name
/// may still point at the inode its exchange gave to a status (the pool's folder is not
/// fsynced), and writing into it would write into that status.
pub struct Spares {
    folders: PathBuf,
    pool: std::sync::OnceLock<io::Result<Pool>>,
    free: std::sync::Mutex<Vec<PathBuf>>,
    next: std::sync::atomic::AtomicU64,
    /// Cleared when the file system refuses the exchange (no `RENAME_EXCHANGE`, or the
    /// target on another mount): from then on, writes rename a temporary file as before.
    exchange_works: std::sync::atomic::AtomicBool,
}

/// This process's pool folder, and the lock that says it is alive.
struct Pool {
    folder: PathBuf,
    _alive: nix::fcntl::Flock<File>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        remove_pool(&self.folder);
    }
}

/// Removes a pool's files, then its folder: never recursively, so that whatever a pool
/// should not hold (a folder someone made where a status was, swapped in by an exchange
/// racing its making) is left alone rather than deleted with its contents.
fn remove_pool(folder: &Path) {
    if let Ok(entries) = fs::read_dir(folder) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| !t.is_dir()) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let _ = fs::remove_dir(folder);
}

impl Pool {
    /// Removes the pools of dead processes, then makes this one's. Its folder gets its
    /// final name only once locked, so that no one takes a pool being made for dead.
    fn make(folders: &Path) -> io::Result<Pool> {
        fs::create_dir_all(folders)?;
        for entry in fs::read_dir(folders)?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let dead = if name.starts_with(".new-") {
                // Made by a process that died before locking it, or is locking it now.
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|at| at.elapsed().map(|age| age.as_secs() > 60).unwrap_or(false))
                    .unwrap_or(false)
            } else {
                match File::open(path.join("lock")) {
                    Ok(lock) => nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok(),
                    Err(err) => err.kind() == io::ErrorKind::NotFound,
                }
            };
            if dead {
                remove_pool(&path);
            }
        }
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let making = folders.join(format!(".new-{unique}"));
        fs::create_dir(&making)?;
        let lock = File::create(making.join("lock"))?;
        let alive = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        let folder = folders.join(unique);
        fs::rename(&making, &folder)?;
        Ok(Pool { folder, _alive: alive })
    }
}

impl Spares {
    /// Pools live under `folders`; this process's is made at its first write.
    pub fn new(folders: PathBuf) -> Spares {
        Spares {
            folders,
            pool: std::sync::OnceLock::new(),
            free: std::sync::Mutex::new(Vec::new()),
            next: std::sync::atomic::AtomicU64::new(0),
            exchange_works: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// A spare to write into, or why there is none (no pool could be made).
    fn take(&self) -> io::Result<PathBuf> {
        let pool = match self.pool.get_or_init(|| Pool::make(&self.folders)) {
            Ok(pool) => pool,
            Err(err) => return Err(io::Error::new(err.kind(), err.to_string())),
        };
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        Ok(reused.unwrap_or_else(|| {
            let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            pool.folder.join(n.to_string())
        }))
    }

    fn give_back(&self, spare: PathBuf) {
        if let Ok(mut free) = self.free.lock() {
            free.push(spare);
        }
    }

    fn write_and_exchange(&self, durability: Durability, path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        if !self.exchange_works.load(Ordering::Relaxed) {
            return write_and_rename(durability, path, bytes);
        }
        let Ok(spare) = self.take() else {
            // No pool (a read-only state folder, say): the write itself may still work.
            self.exchange_works.store(false, Ordering::Relaxed);
            return write_and_rename(durability, path, bytes);
        };
        let filled = (|| {
            use std::os::unix::fs::MetadataExt;
            // O_CREAT only for a new spare: an open that may create takes the pool
            // folder's lock for writing, which every other writer then waits on while
            // the file system looks for a free inode.
            let open = || match OpenOptions::new().write(true).open(&spare) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    OpenOptions::new().write(true).create(true).truncate(false).open(&spare)
                }
                other => other,
            };
            let mut file = open()?;
            if file.metadata()?.nlink() > 1 {
                // Someone linked the status this spare once was (to keep a copy, say):
                // writing into it would change theirs. Let it go and start a new one.
                fs::remove_file(&spare)?;
                file = open()?;
            }
            file.write_all(bytes)?;
            // Not truncated first: overwriting in place keeps the spare's blocks.
            file.set_len(bytes.len() as u64)?;
            durability.write_out(&file)
        })();
        if let Err(err) = filled {
            // Whatever it holds now is still only a spare's.
            self.give_back(spare);
            return Err(err);
        }
        // An exchange swaps whatever is there, a folder too, where a rename over a folder
        // fails: a folder where a status belongs is a person's, never taken.
        if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            self.give_back(spare);
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a folder, not a status file", path.display()),
            ));
        }
        match crate::fsutil::rename_exchange(&spare, path) {
            Ok(()) => {
                self.give_back(spare);
                Ok(())
            }
            // No status yet: the spare becomes it.
            Err(err) if err.kind() == io::ErrorKind::NotFound && spare.exists() => {
                let renamed = fs::rename(&spare, path);
                if renamed.is_err() {
                    // The target's folder is missing too: the spare stays a spare.
                    self.give_back(spare);
                }
                renamed
            }
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(nix::libc::EINVAL | nix::libc::ENOSYS | nix::libc::EOPNOTSUPP | nix::libc::EXDEV)
                ) =>
            {
                if err.raw_os_error() != Some(nix::libc::EXDEV) {
                    self.exchange_works.store(false, Ordering::Relaxed);
                }
                self.give_back(spare);
                write_and_rename(durability, path, bytes)
            }
            Err(err) => {
                self.give_back(spare);
                Err(err)
            }
        }
    }
}

fn folder_of(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new(".")).to_path_buf()
}

/// Step 4 for a round: each folder fsynced once; the answer for each writer's ticket.
fn sync_round(round: Vec<(u64, PathBuf)>, hook: Option<&Hook>) -> Vec<(u64, io::Result<()>)> {
    let started = std::time::Instant::now();
    if let Some(hook) = hook {
        let paths: Vec<PathBuf> = round.iter().map(|(_, path)| path.clone()).collect();
        hook(Stage::Renamed, &paths);
    }
    let mut by_folder: BTreeMap<PathBuf, Vec<u64>> = BTreeMap::new();
    for (ticket, path) in round {
        by_folder.entry(folder_of(&path)).or_default().push(ticket);
    }
    let folders: Vec<&PathBuf> = by_folder.keys().collect();
    let results = sync_folders(&folders);
    let (writes, count) = (by_folder.values().map(Vec::len).sum::<usize>(), by_folder.len());
    let mut answers = Vec::with_capacity(writes);
    for ((_, tickets), result) in by_folder.into_iter().zip(results) {
        for ticket in tickets {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
            };
            answers.push((ticket, answer));
        }
    }
    tracing::trace!(
        writes,
        folders = count,
        micros = started.elapsed().as_micros() as u64,
        "status writes committed"
    );
    answers
}

/// Fsyncs each folder, one after another; the results in order. Not on threads of
/// their own: with a journal, the first fsync commits the transaction holding every
/// rename of the round and the others find theirs committed; without one, each writes
/// a folder block (0.1 ms here). A thread per folder per round cost more than either:
/// 1,300 threads spawned and ended for the 500 tasks of `scripts/bench throughput`.
fn sync_folders(folders: &[&PathBuf]) -> Vec<io::Result<()>> {
    folders.iter().map(|f| fsutil::sync_dir(f)).collect()
}

/// `/sys/fs/ext4/<device>/journal_task` for the file system holding `dir`, found
/// through its device number (`/sys/dev/block/<major>:<minor>` names the device).
fn ext4_journal_task(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(dir).ok()?.dev();
    let device = fs::read_link(format!(
        "/sys/dev/block/{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    ))
    .ok()?;
    let name = device.file_name()?.to_str()?.to_owned();
    fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")).ok()
}

fn sync_file_range(fd: std::os::fd::RawFd, flags: std::ffi::c_uint) -> io::Result<()> {
    // SAFETY: a plain system call on a file descriptor the caller holds open, with no
    // pointers; a bad descriptor only makes it fail with EBADF.
    let rc = unsafe { nix::libc::sync_file_range(fd, 0, 0, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_uses_the_journal_only_when_sysfs_shows_one() {
        // What `journal_task` reads: the jbd2 thread's pid, `<none>` for an ext4 made
        // without a journal (this project's CI machine has one), or nothing at all.
        assert_eq!(Durability::for_ext4(Some("412\n")), Durability::WriteOutThenJournal);
        assert_eq!(Durability::for_ext4(Some("<none>\n")), Durability::FsyncEach);
        assert_eq!(Durability::for_ext4(Some("")), Durability::FsyncEach);
        assert_eq!(Durability::for_ext4(None), Durability::FsyncEach);
    }

    #[test]
    fn the_journal_is_found_through_the_folders_own_device() {
        // The lookup itself (device number to sysfs name) must work wherever sysfs shows
        // ext4, or every ext4 would silently fall back to the dearer method.
        let dir = tempfile::tempdir().unwrap();
        let magic = nix::sys::statfs::statfs(dir.path()).unwrap().filesystem_type().0 as i64;
        if magic == 0xEF53 && Path::new("/sys/fs/ext4").is_dir() {
            let task = ext4_journal_task(dir.path());
            assert!(task.is_some(), "no journal_task found for {}", dir.path().display());
            assert_eq!(
                Durability::for_folder(dir.path()),
                Durability::for_ext4(task.as_deref())
            );
        }
        if Path::new("/dev/shm").is_dir() {
            assert_eq!(Durability::for_folder(Path::new("/dev/shm")), Durability::FsyncEach);
        }
    }

    async fn roundtrip(durability: Durability, spares: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut commit = GroupCommit::new(durability).unwrap();
        if spares {
            commit = commit.with_spares(dir.path().join(".spares"));
        }
        let commit = Arc::new(commit);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut writers = Vec::new();
        for i in 0..64 {
            let commit = commit.clone();
            let path = dir
                .path()
                .join(if i % 2 == 0 { "sub" } else { "." })
                .join(format!("t{i}.json"));
            writers.push(tokio::spawn(async move {
                commit.write(path.clone(), format!("{i}").into_bytes()).await.unwrap();
                // Durable and in place once answered.
                assert_eq!(std::fs::read(&path).unwrap(), format!("{i}").into_bytes());
                commit.write(path.clone(), b"again".to_vec()).await.unwrap();
                path
            }));
        }
        for w in writers {
            let path = w.await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"again");
            commit.remove(path.clone()).await.unwrap();
            commit.remove(path.clone()).await.unwrap();
            assert!(!path.exists());
        }
        // A write into a folder that is not there fails alone.
        let err = commit.write(dir.path().join("absent/x.json"), b"x".to_vec()).await;
        assert!(err.is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert!(left.is_empty(), "no temporary file is left: {left:?}");
        drop(commit);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_committed_in_groups_with_either_method() {
        for spares in [false, true] {
            roundtrip(Durability::WriteOutThenJournal, spares).await;
            roundtrip(Durability::FsyncEach, spares).await;
        }
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[tokio::test]
    async fn rewrites_through_spares_reuse_two_inodes_and_leave_one_pool() {
        let dir = tempfile::tempdir().unwrap();
        let pools = dir.path().join(".spares");
        let commit = GroupCommit::new(Durability::FsyncEach)
            .unwrap()
            .with_spares(pools.clone());
        let status = dir.path().join("t.status.json");
        let mut inodes = Vec::new();
        for i in 0..6 {
            commit
                .write(status.clone(), format!("write {i}").into_bytes())
                .await
                .unwrap();
            assert_eq!(std::fs::read_to_string(&status).unwrap(), format!("write {i}"));
            inodes.push(inode(&status));
        }
        // The first write's file becomes the status; from the second on, the status and
        // one spare trade places: no inode is made or freed after the second write.
        assert_eq!(inodes[0], inodes[2]);
        assert_eq!(inodes[1], inodes[3]);
        assert_ne!(inodes[0], inodes[1]);
        assert_eq!(inodes[2..], inodes[..4]);
        let pool_folders: Vec<_> = std::fs::read_dir(&pools).unwrap().flatten().collect();
        assert_eq!(pool_folders.len(), 1, "one pool for this process");
        let spares = std::fs::read_dir(pool_folders[0].path()).unwrap().count();
        assert_eq!(spares, 2, "the lock and one spare");
        drop(commit);
        assert_eq!(
            std::fs::read_dir(&pools).unwrap().count(),
            0,
            "the pool goes with its store"
        );
    }

    #[tokio::test]
    async fn a_status_someone_linked_elsewhere_is_never_written_into() {
        let dir = tempfile::tempdir().unwrap();
        let commit = GroupCommit::new(Durability::FsyncEach)
            .unwrap()
            .with_spares(dir.path().join(".spares"));
        let status = dir.path().join("t.status.json");
        let kept = dir.path().join("kept-copy.json");
        commit.write(status.clone(), b"first".to_vec()).await.unwrap();
        std::fs::hard_link(&status, &kept).unwrap();
        // The linked inode becomes a spare at the next write, and the one after would
        // have written into it.
        for i in 0..4 {
            commit
                .write(status.clone(), format!("write {i}").into_bytes())
                .await
                .unwrap();
        }
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "first");
        assert_eq!(std::fs::read_to_string(&status).unwrap(), "write 3");
    }

    #[tokio::test]
    async fn a_folder_where_a_status_belongs_is_never_taken_nor_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pools = dir.path().join(".spares");
        let commit = GroupCommit::new(Durability::FsyncEach)
            .unwrap()
            .with_spares(pools.clone());
        let status = dir.path().join("t.status.json");
        std::fs::create_dir(&status).unwrap();
        std::fs::write(status.join("keep.yaml"), "mine").unwrap();
        assert!(commit.write(status.clone(), b"x".to_vec()).await.is_err());
        assert_eq!(std::fs::read_to_string(status.join("keep.yaml")).unwrap(), "mine");
        // A folder in a pool (an exchange that raced a person) outlives the pool's removal.
        let stray = std::fs::read_dir(&pools)
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
            .join("9");
        std::fs::create_dir(&stray).unwrap();
        std::fs::write(stray.join("keep.yaml"), "mine too").unwrap();
        drop(commit);
        assert_eq!(std::fs::read_to_string(stray.join("keep.yaml")).unwrap(), "mine too");
    }

    #[tokio::test]
    async fn a_dead_process_pool_is_removed_and_a_live_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let pools = dir.path().join(".spares");
        let dead = pools.join("1-1");
        let live = pools.join("2-2");
        for pool in [&dead, &live] {
            std::fs::create_dir_all(pool).unwrap();
            std::fs::write(pool.join("lock"), "").unwrap();
            std::fs::write(pool.join("0"), "an old status").unwrap();
        }
        // Held as a living process holds its own.
        let _held = nix::fcntl::Flock::lock(
            File::open(live.join("lock")).unwrap(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        let commit = GroupCommit::new(Durability::FsyncEach)
            .unwrap()
            .with_spares(pools.clone());
        commit
            .write(dir.path().join("t.status.json"), b"new".to_vec())
            .await
            .unwrap();
        assert!(!dead.exists(), "the pool of a dead process is removed, never reused");
        assert_eq!(std::fs::read_to_string(live.join("0")).unwrap(), "an old status");
        assert_eq!(std::fs::read_dir(&pools).unwrap().count(), 2, "the live pool and ours");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_writer_is_answered_before_its_folder_is_synced() {
        // The hook runs between the renames and the folders' fsyncs; every writer of
        // the batch must still be waiting then.
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook: Hook = {
            let answered = answered.clone();
            let seen = seen.clone();
            Arc::new(move |stage, paths| {
                if stage == Stage::Renamed {
                    seen.lock()
                        .unwrap()
                        .push((paths.len(), answered.load(std::sync::atomic::Ordering::SeqCst)));
                }
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let commit = Arc::new(GroupCommit::with_hook(Durability::for_folder(dir.path()), Some(hook)).unwrap());
        let mut writers = Vec::new();
        for i in 0..32 {
            let commit = commit.clone();
            let answered = answered.clone();
            let path = dir.path().join(format!("t{i}.json"));
            writers.push(tokio::spawn(async move {
                commit.write(path, b"x".to_vec()).await.unwrap();
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let seen = seen.lock().unwrap();
        let mut before = 0;
        for (n, answered_then) in seen.iter() {
            assert!(
                *answered_then <= before,
                "a writer was answered before its batch was durable"
            );
            before += n;
        }
        assert_eq!(before, 32);
    }
}
