//! The directory store: manifests in a folder tree, statuses beside them
//! (DESIGN.md §7). Changes arrive by `notify`; the controller's periodic relist heals
//! whatever the notifications missed.

use super::commit::{self, Durability, GroupCommit};
use super::{Fingerprint, Listed, MAX_STATUS_BYTES, ManifestRead, Store, StoreError, StoreEvent};
use crate::fsutil::{self, ReadError, is_ignored_name};
use crate::fswatch::{FolderWatch, Mask, Seen};
use crate::status::{STATUS_SUFFIX, TaskStatus};
use crate::store::parsed_key;
use crate::task::TaskKey;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;
use tokio::sync::mpsc;

pub const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

pub struct DirStore {
    root: PathBuf,
    /// Status writes and removals, made durable in groups (`commit.rs`).
    commit: GroupCommit,
    /// Kept alive for as long as the store: dropping it stops the notifications.
    watcher: Mutex<Option<Watching>>,
}

/// Each visible folder is watched on its own, rather than the root recursively, so
/// that the churn of dot-folders (the state folder `.skiff/` above all) costs nothing.
struct Watching {
    watcher: FolderWatch,
    folders: HashSet<PathBuf>,
    /// Files may land in a new folder between the listing that found it and its watch:
    /// one more listing, asked for here, picks them up.
    rescan: mpsc::UnboundedSender<StoreEvent>,
    listed_once: bool,
}

/// What a path in the tree means to skiff.
#[derive(Debug, PartialEq, Eq)]
enum PathRole {
    Manifest(TaskKey),
    Status(TaskKey),
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let meta = std::fs::metadata(&root).map_err(|source| StoreError::Io {
            path: root.display().to_string(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(StoreError::Io {
                path: root.display().to_string(),
                source: std::io::Error::other("not a directory"),
            });
        }
        Self::with_commit(root, None)
    }

    /// With a hook into the group commit of status writes, for crash tests.
    pub fn with_commit_hook(root: impl Into<PathBuf>, hook: commit::Hook) -> Result<Self, StoreError> {
        Self::with_commit(root.into(), Some(hook))
    }

    fn with_commit(root: PathBuf, hook: Option<commit::Hook>) -> Result<Self, StoreError> {
        // Absolute, so that the paths in notifications and in listings agree.
        let root = std::fs::canonicalize(&root).map_err(|source| StoreError::Io {
            path: root.display().to_string(),
            source,
        })?;
        let commit = GroupCommit::with_hook(Durability::for_folder(&root), hook)
            .map(|commit| commit.with_spares(root.join(".skiff").join("spare-statuses")))
            .map_err(|source| Self::io_error(&root, source))?;
        Ok(DirStore {
            root,
            commit,
            watcher: Mutex::new(None),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn status_path(&self, key: &TaskKey) -> PathBuf {
        self.root.join(format!("{}{STATUS_SUFFIX}", key.as_str()))
    }

    fn manifest_candidates(&self, key: &TaskKey) -> impl Iterator<Item = (String, PathBuf)> + '_ {
        let key = key.as_str().to_string();
        MANIFEST_EXTENSIONS.iter().map(move |ext| {
            let rel = format!("{key}.{ext}");
            let path = self.root.join(&rel);
            (rel, path)
        })
    }

    /// Starts watching folders that appeared since the last listing.
    fn watch_folders(&self, folders: Vec<PathBuf>) {
        let Ok(mut slot) = self.watcher.lock() else { return };
        let Some(watching) = slot.as_mut() else { return };
        let present: HashSet<PathBuf> = folders.into_iter().collect();
        // A folder that was removed and made again needs a new watch.
        watching.folders.retain(|f| present.contains(f));
        let mut added = false;
        for folder in present {
            if !watching.folders.contains(&folder) && watching.watcher.watch(&folder).is_ok() {
                watching.folders.insert(folder);
                added = true;
            }
        }
        if added && watching.listed_once {
            let _ = watching.rescan.send(StoreEvent::Rescan);
        }
        watching.listed_once = true;
    }

    fn io_error(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Maps a path under `root` to the task it belongs to, ignoring dot-files and
/// dot-folders (the state folder `.skiff/`, temporary files) and other files.
fn classify(root: &Path, path: &Path) -> Option<PathRole> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for component in rel.components() {
        let part = component.as_os_str().to_str()?;
        if is_ignored_name(part) {
            return None;
        }
        parts.push(part);
    }
    let rel = parts.join("/");
    if let Some(stem) = rel.strip_suffix(STATUS_SUFFIX) {
        return parsed_key(stem).map(PathRole::Status);
    }
    let (stem, ext) = rel.rsplit_once('.')?;
    if !MANIFEST_EXTENSIONS.contains(&ext) {
        return None;
    }
    parsed_key(stem).map(PathRole::Manifest)
}

/// Runs file-system calls on the blocking pool: a slow or odd file must never stall
/// the async workers that every other task, the API and shutdown depend on.
async fn blocking<T: Send + 'static>(
    root: &Path,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|err| StoreError::Io {
        path: root.display().to_string(),
        source: std::io::Error::other(err.to_string()),
    })?
}

/// One task's listing entry from its manifest candidates and status file: blocking.
fn list_task(key: TaskKey, candidates: &[PathBuf], status_path: &Path) -> Option<Listed> {
    let mut stamps = Vec::new();
    let mut has_manifest = false;
    let mut has_status = false;
    for path in candidates {
        if is_manifest_file(path) {
            has_manifest = true;
            stamps.push(std::fs::metadata(path).map(|m| stamp(&m)).unwrap_or((0, 0)));
        }
    }
    if let Ok(meta) = std::fs::metadata(status_path) {
        stamps.push(stamp(&meta));
        has_status = true;
    }
    (!stamps.is_empty()).then(|| Listed {
        key,
        fingerprint: Fingerprint::new(stamps),
        has_manifest,
        has_status,
    })
}

/// Whether a candidate path (`a.yaml`, ...) is a manifest. A dangling or looping link
/// still is, and is reported when read; a folder named `x.yaml` (or a link to one) is a
/// folder of tasks, not a manifest.
fn is_manifest_file(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => !path.is_dir(),
        Ok(meta) => !meta.is_dir(),
        Err(_) => false,
    }
}

/// Reads the one manifest among a task's candidate files (`a.yaml`, `a.yml`,
/// `a.json`). Blocking.
fn read_manifest_file(candidates: Vec<(String, PathBuf)>) -> ManifestRead {
    let mut found = Vec::new();
    for (rel, path) in candidates {
        if is_manifest_file(&path) {
            found.push((rel, path));
        }
    }
    let (rel, path) = match found.len() {
        0 => return ManifestRead::Missing,
        1 => found.remove(0),
        _ => {
            return ManifestRead::Conflict {
                files: found.into_iter().map(|(rel, _)| rel).collect(),
            };
        }
    };
    let limit = crate::manifest::MAX_MANIFEST_BYTES as u64;
    let message = match fsutil::read_regular_with_metadata(&path, limit) {
        Ok((bytes, meta)) => {
            return ManifestRead::Found {
                local_dir: path.parent().map(Path::to_path_buf),
                file: rel,
                modified: meta.modified().ok(),
                bytes,
            };
        }
        Err(err @ ReadError::NotRegular { .. }) => {
            format!("the file {err}; a manifest must be a regular file (or a symlink to one)")
        }
        Err(ReadError::TooLarge { len, limit }) => {
            format!("the file is {len} bytes; a manifest may be at most {limit} bytes (1 MiB). Is this the right file?")
        }
        Err(err) => format!("cannot read the file: {err}"),
    };
    ManifestRead::Unreadable { file: rel, message }
}

/// Reads and parses a task's status file; `None` when there is none. Blocking.
fn read_status_file(path: &Path, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError> {
    let bytes = match fsutil::read_regular(path, MAX_STATUS_BYTES) {
        Ok(bytes) => bytes,
        Err(err) if err.is_not_found() => return Ok(None),
        Err(err) => return Err(status_read_error(path, key, err)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(StoreError::CorruptStatus {
            path: path.display().to_string(),
            message: "it is empty".into(),
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| StoreError::CorruptStatus {
            path: path.display().to_string(),
            message: err.to_string(),
        })
}

/// Says what is wrong with a status file that cannot be read, and what to do.
fn status_read_error(path: &Path, key: &TaskKey, err: ReadError) -> StoreError {
    let shown = path.display().to_string();
    let message = match err {
        ReadError::NotRegular { kind } => format!(
            "the status file is {kind}, not a regular file; skiff will not replace it: remove it and the task runs again"
        ),
        ReadError::TooLarge { len, limit } => format!(
            "the status file is {len} bytes, more than the {limit} bytes a status may be; it is not skiff's: delete it to run the task again"
        ),
        ReadError::NameTooLong => {
            let stem = key.as_str().rsplit('/').next().unwrap_or(key.as_str());
            // 255 bytes a name on every file system Linux commonly mounts.
            let most = 255usize.saturating_sub(STATUS_SUFFIX.len());
            if stem.len() <= most {
                return StoreError::BadStatus {
                    path: shown,
                    message: "the status file's path is too long for the file system; move the manifest to a shallower folder".into(),
                };
            }
            format!(
                "the status file's name is too long for the file system: a task's status is its manifest's name \
                 without the extension plus `{STATUS_SUFFIX}`, and `{stem}` is {} bytes; rename the manifest to at \
                 most {most} bytes before the extension",
                stem.len()
            )
        }
        // Refusals that stay until a person acts: retrying would never end `--once`.
        ReadError::Io(source)
            if source.kind() == std::io::ErrorKind::PermissionDenied
                || source.raw_os_error() == Some(nix::libc::ELOOP) =>
        {
            format!("cannot read the status file: {source}; fix its permissions or the symlink, or remove it")
        }
        ReadError::Io(source) => return StoreError::Io { path: shown, source },
    };
    StoreError::BadStatus { path: shown, message }
}

fn stamp(meta: &std::fs::Metadata) -> (u64, u128) {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (meta.len(), modified)
}

#[async_trait]
impl Store for DirStore {
    async fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let root = self.root.clone();
        let (listed, folders) = tokio::task::spawn_blocking(move || {
            let mut tasks: BTreeMap<TaskKey, (Vec<(u64, u128)>, bool, bool)> = BTreeMap::new();
            let mut folders = vec![root.clone()];
            let walker = walkdir::WalkDir::new(&root)
                .min_depth(1)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| !is_ignored_name(&e.file_name().to_string_lossy()));
            for entry in walker {
                // An unreadable subfolder must not hide every other task.
                let Ok(entry) = entry else { continue };
                if entry.file_type().is_dir() {
                    folders.push(entry.path().to_path_buf());
                    continue;
                }
                let Some(role) = classify(&root, entry.path()) else {
                    continue;
                };
                // A broken or looping symlink still counts: reading it says what is wrong.
                let stamp = std::fs::metadata(entry.path()).map(|m| stamp(&m)).unwrap_or((0, 0));
                match role {
                    PathRole::Manifest(key) => {
                        let slot = tasks.entry(key).or_default();
                        slot.0.push(stamp);
                        slot.1 = true;
                    }
                    PathRole::Status(key) => {
                        let slot = tasks.entry(key).or_default();
                        slot.0.push(stamp);
                        slot.2 = true;
                    }
                }
            }
            let listed: Vec<Listed> = tasks
                .into_iter()
                .map(|(key, (stamps, has_manifest, has_status))| Listed {
                    key,
                    fingerprint: Fingerprint::new(stamps),
                    has_manifest,
                    has_status,
                })
                .collect();
            (listed, folders)
        })
        .await
        .map_err(|err| StoreError::Io {
            path: self.root.display().to_string(),
            source: std::io::Error::other(err.to_string()),
        })?;
        self.watch_folders(folders);
        Ok(listed)
    }

    async fn list_one(&self, key: &TaskKey) -> Result<Option<Listed>, StoreError> {
        let candidates: Vec<PathBuf> = self.manifest_candidates(key).map(|(_, path)| path).collect();
        let status_path = self.status_path(key);
        let key = key.clone();
        blocking(&self.root, move || Ok(list_task(key, &candidates, &status_path))).await
    }

    async fn read_task(&self, key: &TaskKey) -> Result<(Option<Listed>, ManifestRead, Option<TaskStatus>), StoreError> {
        let candidates: Vec<(String, PathBuf)> = self.manifest_candidates(key).collect();
        let path = self.status_path(key);
        let key = key.clone();
        blocking(&self.root, move || {
            let paths: Vec<PathBuf> = candidates.iter().map(|(_, path)| path.clone()).collect();
            let listed = list_task(key.clone(), &paths, &path);
            let manifest = read_manifest_file(candidates);
            Ok((listed, manifest, read_status_file(&path, &key)?))
        })
        .await
    }

    async fn read_manifest(&self, key: &TaskKey) -> Result<ManifestRead, StoreError> {
        let candidates: Vec<(String, PathBuf)> = self.manifest_candidates(key).collect();
        blocking(&self.root, move || Ok(read_manifest_file(candidates))).await
    }

    async fn read_status(&self, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError> {
        let path = self.status_path(key);
        let key = key.clone();
        blocking(&self.root, move || read_status_file(&path, &key)).await
    }

    async fn write_status(&self, key: &TaskKey, status: &TaskStatus) -> Result<(), StoreError> {
        let path = self.status_path(key);
        let bytes = status.to_json();
        self.commit
            .write(path.clone(), bytes)
            .await
            .map_err(|err| Self::io_error(&path, err))
    }

    async fn delete_status(&self, key: &TaskKey) -> Result<(), StoreError> {
        let path = self.status_path(key);
        self.commit
            .remove(path.clone())
            .await
            .map_err(|err| Self::io_error(&path, err))
    }

    fn watch(&self) -> Result<mpsc::UnboundedReceiver<StoreEvent>, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let rescan = tx.clone();
        let root = self.root.clone();
        let handler = move |seen: Seen| {
            let change = match seen {
                Seen::Change(change) => change,
                Seen::Lost => {
                    let _ = tx.send(StoreEvent::Rescan);
                    return;
                }
            };
            let path = &change.path;
            match classify(&root, path) {
                Some(PathRole::Manifest(key)) => {
                    let _ = tx.send(StoreEvent::Changed(key));
                }
                // Our own status writes are exchanges in place; only a person deleting a
                // status file (to re-run the task) matters here.
                Some(PathRole::Status(key)) if change.is_rename_or_removal() && !path.exists() => {
                    let _ = tx.send(StoreEvent::Changed(key));
                }
                Some(PathRole::Status(_)) => {}
                None => {
                    // A folder moved or created in: its files raise no events of their own.
                    let is_visible_dir = change.is_dir
                        && path.is_dir()
                        && path
                            .strip_prefix(&root)
                            .map(|rel| {
                                rel.components()
                                    .all(|c| !is_ignored_name(&c.as_os_str().to_string_lossy()))
                            })
                            .unwrap_or(false);
                    if is_visible_dir && change.is_creation_or_change() {
                        let _ = tx.send(StoreEvent::Rescan);
                    }
                }
            }
        };
        let watch_error = |err: std::io::Error| StoreError::Watch {
            path: self.root.display().to_string(),
            message: err.to_string(),
        };
        // What a person does to manifests and statuses; not opens or reads.
        let mask = Mask::CREATE | Mask::DELETE | Mask::MODIFY | Mask::ATTRIB | Mask::MOVED_FROM | Mask::MOVED_TO;
        let watcher = FolderWatch::start(mask, handler).map_err(watch_error)?;
        watcher.watch(&self.root).map_err(watch_error)?;
        if let Ok(mut slot) = self.watcher.lock() {
            *slot = Some(Watching {
                watcher,
                folders: HashSet::from([self.root.clone()]),
                rescan,
                listed_once: false,
            });
        }
        // Subfolders are watched by each listing, which the caller makes next.
        Ok(rx)
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRASH_CHILD: &str = "SKIFF_TEST_COMMIT_CRASH_CHILD";
    const CRASH_KEYS: usize = 16;

    fn wave_status(key: &str, wave: usize) -> TaskStatus {
        let mut status = TaskStatus::new(key, key, "sha256:x", chrono::Utc::now());
        status.message = Some(format!("wave {wave}"));
        status
    }

    fn wave_of(status: &TaskStatus) -> usize {
        status
            .message
            .as_deref()
            .and_then(|m| m.strip_prefix("wave "))
            .and_then(|w| w.parse().ok())
            .expect("a status this test wrote")
    }

    /// The child of the crash test below: writes waves of statuses to 16 tasks, each
    /// task's next only once its last was acknowledged, printing each acknowledgement,
    /// and is SIGKILLed by the commit hook in its fifth round, after that round's
    /// renames and before its folder fsync. Does nothing when run as a test itself.
    #[test]
    fn commit_crash_child() {
        use std::io::Write as _;
        let Some(root) = std::env::var_os(CRASH_CHILD) else {
            return;
        };
        let rounds = std::sync::atomic::AtomicUsize::new(0);
        let hook: commit::Hook = std::sync::Arc::new(move |_stage, paths: &[PathBuf]| {
            if rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 4 {
                let mut out = std::io::stdout().lock();
                for path in paths {
                    let _ = writeln!(out, "round {}", path.display());
                }
                let _ = out.flush();
                let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
            }
        });
        let store = std::sync::Arc::new(DirStore::with_commit_hook(PathBuf::from(root), hook).unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let writers: Vec<_> = (0..CRASH_KEYS)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let key = TaskKey::new(format!("t{i:02}"));
                        for wave in 1..1000 {
                            store
                                .write_status(&key, &wave_status(key.as_str(), wave))
                                .await
                                .unwrap();
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "ack {} {wave}", key.as_str());
                            let _ = out.flush();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.await.unwrap();
            }
        });
        panic!("the commit hook did not kill this process");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_between_the_renames_and_the_folder_fsync_loses_nothing_acknowledged() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path()).unwrap();
        for i in 0..CRASH_KEYS {
            let key = TaskKey::new(format!("t{i:02}"));
            store.write_status(&key, &wave_status(key.as_str(), 0)).await.unwrap();
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "store::dir::tests::commit_crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD, dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.signal(),
            Some(9),
            "the child was not killed at the hook: {stdout}"
        );
        let mut acked: BTreeMap<String, usize> = BTreeMap::new();
        let mut in_round = Vec::new();
        // The test harness's own "test ... " may start the first line.
        for line in stdout.lines() {
            if let Some((_, ack)) = line.split_once("ack t") {
                let (key, wave) = ack.split_once(' ').unwrap();
                acked.insert(format!("t{key}"), wave.parse().unwrap());
            } else if let Some((_, path)) = line.split_once("round /") {
                in_round.push(PathBuf::from(format!("/{path}")));
            }
        }
        assert!(!in_round.is_empty(), "{stdout}");
        // What a fresh controller reads: every acknowledged write is there; a write of
        // the killed round, which nobody was told about, may be there or not, whole.
        let fresh = DirStore::new(dir.path()).unwrap();
        for i in 0..CRASH_KEYS {
            let key = TaskKey::new(format!("t{i:02}"));
            let on_disk = wave_of(&fresh.read_status(&key).await.unwrap().unwrap());
            let last = acked.get(key.as_str()).copied().unwrap_or(0);
            assert!(
                on_disk == last || on_disk == last + 1,
                "{key}: read {on_disk}, acknowledged {last}"
            );
        }
        // The writers of the killed round were never answered: each of its statuses
        // is one wave past the last acknowledged (renamed, as SIGKILL keeps the page
        // cache; a power cut may have taken the rename back, leaving the acknowledged one).
        for path in &in_round {
            let Some(PathRole::Status(key)) = classify(fresh.root(), path) else {
                panic!("{path:?}")
            };
            let written = wave_of(&fresh.read_status(&key).await.unwrap().unwrap());
            assert_eq!(written, acked.get(key.as_str()).copied().unwrap_or(0) + 1, "{key}");
        }
        let listed = fresh.list().await.unwrap();
        assert_eq!(listed.len(), CRASH_KEYS, "{listed:?}");
    }

    #[test]
    fn classify_maps_paths_to_tasks_and_ignores_the_rest() {
        let root = Path::new("/r");
        let key = |s: &str| TaskKey::new(s);
        assert_eq!(
            classify(root, Path::new("/r/jobs/thumb.yaml")),
            Some(PathRole::Manifest(key("jobs/thumb")))
        );
        assert_eq!(
            classify(root, Path::new("/r/a.json")),
            Some(PathRole::Manifest(key("a")))
        );
        assert_eq!(
            classify(root, Path::new("/r/a.status.json")),
            Some(PathRole::Status(key("a")))
        );
        for ignored in [
            "/r/.skiff/x.yaml",
            "/r/.a.yaml",
            "/r/a/.tmp/b.yaml",
            "/r/a.yaml~",
            "/r/a.txt",
            "/r/.a.status.json.1.2.tmp",
            "/r/.yaml",
        ] {
            assert_eq!(classify(root, Path::new(ignored)), None, "{ignored}");
        }
    }

    #[tokio::test]
    async fn lists_reads_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs/.hidden")).unwrap();
        std::fs::write(dir.path().join("jobs/a.yaml"), "x").unwrap();
        std::fs::write(dir.path().join("jobs/.hidden/b.yaml"), "x").unwrap();
        std::fs::write(dir.path().join("c.yaml"), "x").unwrap();
        std::fs::write(dir.path().join("c.json"), "x").unwrap();
        std::fs::write(dir.path().join("gone.status.json"), "{}").unwrap();
        let store = DirStore::new(dir.path()).unwrap();
        let keys: Vec<_> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.key.to_string(), l.has_manifest))
            .collect();
        assert_eq!(
            keys,
            vec![("c".into(), true), ("gone".into(), false), ("jobs/a".into(), true)]
        );
        assert!(
            matches!(store.read_manifest(&TaskKey::new("c")).await.unwrap(), ManifestRead::Conflict { files } if files.len() == 2)
        );
        assert!(
            matches!(store.read_manifest(&TaskKey::new("jobs/a")).await.unwrap(), ManifestRead::Found { file, .. } if file == "jobs/a.yaml")
        );
        assert!(store.read_status(&TaskKey::new("gone")).await.is_err());
        let status = TaskStatus::new("jobs/a", "a", "h", chrono::Utc::now());
        store.write_status(&TaskKey::new("jobs/a"), &status).await.unwrap();
        assert_eq!(store.read_status(&TaskKey::new("jobs/a")).await.unwrap(), Some(status));
        store.delete_status(&TaskKey::new("jobs/a")).await.unwrap();
        assert_eq!(store.read_status(&TaskKey::new("jobs/a")).await.unwrap(), None);
    }

    // Multi-threaded, and each read spawned: a read that blocks a worker (as the FIFO
    // once did) then fails the test by its timeout instead of hanging it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unusable_files_are_reported_for_their_task_alone_and_never_block() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let fifo = nix::sys::stat::Mode::from_bits_truncate(0o600);
        nix::unistd::mkfifo(&root.join("pipe.status.json"), fifo).unwrap();
        nix::unistd::mkfifo(&root.join("pipeman.yaml"), fifo).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero.status.json")).unwrap();
        std::fs::create_dir(root.join("folder.status.json")).unwrap();
        std::fs::write(root.join("garbage.status.json"), "garbage").unwrap();
        std::os::unix::fs::symlink("loop.status.json", root.join("loop.status.json")).unwrap();
        std::fs::write(root.join("empty.status.json"), "").unwrap();
        std::fs::write(root.join("big.status.json"), vec![b' '; MAX_STATUS_BYTES as usize + 1]).unwrap();
        let store = std::sync::Arc::new(DirStore::new(root).unwrap());
        let read = |name: &'static str| {
            let store = store.clone();
            async move {
                let read = tokio::spawn(async move { store.read_status(&TaskKey::new(name)).await });
                tokio::time::timeout(std::time::Duration::from_secs(5), read)
                    .await
                    .expect("a read never hangs")
                    .unwrap()
            }
        };
        for (name, words) in [
            ("pipe", "named pipe"),
            ("zero", "a device"),
            ("folder", "a folder"),
            ("garbage", "not valid JSON"),
            ("loop", "fix its permissions or the symlink"),
            ("empty", "it is empty"),
            ("big", "more than the 4194304 bytes"),
        ] {
            let err = read(name).await.unwrap_err();
            assert!(err.needs_person(), "{name}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("{name}.status.json")) && text.contains(words),
                "{text}"
            );
        }
        let long = "l".repeat(245);
        std::fs::write(root.join(format!("{long}.yaml")), "x").unwrap();
        let err = store.read_status(&TaskKey::new(long)).await.unwrap_err();
        assert!(
            err.needs_person() && err.to_string().contains("rename the manifest to at most 243 bytes"),
            "{err}"
        );
        let reading = store.clone();
        let manifest = tokio::spawn(async move { reading.read_manifest(&TaskKey::new("pipeman")).await });
        let manifest = tokio::time::timeout(std::time::Duration::from_secs(5), manifest)
            .await
            .expect("opening a FIFO manifest never hangs")
            .unwrap()
            .unwrap();
        assert!(
            matches!(&manifest, ManifestRead::Unreadable { file, message } if file == "pipeman.yaml" && message.contains("named pipe")),
            "{manifest:?}"
        );
    }
}
