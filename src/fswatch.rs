//! Watching folders with inotify, for the changes skiff acts on and no others.
//!
//! The directory store watches every task folder, and the process runtime its state
//! folder. Both used `notify`, whose inotify backend always asks for `IN_OPEN` and
//! reports each close after reading: every read of a manifest, status or state file by
//! skiff itself came back as an event to be filtered out (200,000 of them for a
//! controller starting over 100,000 tasks, each a kernel event, a wake-up of the
//! watching thread and a trip through the filter). Here the mask is the caller's, and
//! reads raise nothing. Linux only, as the rest of skiff.

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use inotify::WatchMask as Mask;

/// What happened to one name in a watched folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: PathBuf,
    /// The name is (or was) a folder.
    pub is_dir: bool,
    pub mask: EventMask,
}

impl Change {
    /// Deleted, or renamed away or into place.
    pub fn is_rename_or_removal(&self) -> bool {
        self.mask
            .intersects(EventMask::DELETE | EventMask::MOVED_FROM | EventMask::MOVED_TO)
    }

    /// Created, written, renamed in or out, or its attributes changed.
    pub fn is_creation_or_change(&self) -> bool {
        !self.mask.contains(EventMask::DELETE)
    }
}

/// What the watching thread hands its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Change(Change),
    /// Events were lost (the kernel's queue overflowed, or reading failed): whatever
    /// the callback keeps must be rebuilt from a full listing.
    Lost,
}

/// A set of watched folders and the thread reading their events. Dropping it ends the
/// thread within a second.
pub struct FolderWatch {
    mask: WatchMask,
    watches: Mutex<Watches>,
    folders: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>,
    stop: Arc<AtomicBool>,
}

impl FolderWatch {
    /// Starts the thread that calls `on_event` for every event in a watched folder whose
    /// kind is in `mask`.
    pub fn start(mask: WatchMask, mut on_event: impl FnMut(Seen) + Send + 'static) -> io::Result<FolderWatch> {
        let mut inotify = Inotify::init()?;
        let watches = inotify.watches();
        let folders: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (known, stopped) = (folders.clone(), stop.clone());
        std::thread::Builder::new().name("skiff-watch".into()).spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            while !stopped.load(Ordering::Relaxed) {
                // Waits at most a second, so that a dropped watch ends its thread.
                let ready = {
                    let mut fds = [nix::poll::PollFd::new(inotify.as_fd(), nix::poll::PollFlags::POLLIN)];
                    nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16))
                };
                match ready {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                    Ok(_) => {}
                    Err(_) => {
                        on_event(Seen::Lost);
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        continue;
                    }
                }
                let events = match inotify.read_events(&mut buffer) {
                    Ok(events) => events,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => {
                        on_event(Seen::Lost);
                        continue;
                    }
                };
                for event in events {
                    if event.mask.contains(EventMask::Q_OVERFLOW) {
                        on_event(Seen::Lost);
                        continue;
                    }
                    if event.mask.contains(EventMask::IGNORED) {
                        // The folder is gone (or unwatched): its descriptor may be reused.
                        if let Ok(mut known) = known.lock() {
                            known.remove(&event.wd);
                        }
                        continue;
                    }
                    // Events about the watched folder itself carry no name.
                    let Some(name) = event.name else { continue };
                    let folder = known.lock().ok().and_then(|known| known.get(&event.wd).cloned());
                    let Some(folder) = folder else { continue };
                    on_event(Seen::Change(Change {
                        path: folder.join(name),
                        is_dir: event.mask.contains(EventMask::ISDIR),
                        mask: event.mask,
                    }));
                }
            }
        })?;
        Ok(FolderWatch {
            mask,
            watches: Mutex::new(watches),
            folders,
            stop,
        })
    }

    /// Watches one more folder (not its subfolders). Watching a folder again is harmless.
    pub fn watch(&self, folder: &Path) -> io::Result<()> {
        let mut watches = self
            .watches
            .lock()
            .map_err(|_| io::Error::other("the folder watch is poisoned"))?;
        let wd = watches.add(folder, self.mask)?;
        if let Ok(mut folders) = self.folders.lock() {
            folders.insert(wd, folder.to_path_buf());
        }
        Ok(())
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unwatched first, the instance closes at once: closing one that still holds
        // watches waits for a grace period of the kernel's (SRCU), about 10 ms each, which
        // every `--once` run paid at its exit. The IGNORED events also wake the thread.
        if let (Ok(mut watches), Ok(folders)) = (self.watches.lock(), self.folders.lock()) {
            for wd in folders.keys() {
                let _ = watches.remove(wd.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn next(rx: &mpsc::Receiver<Seen>) -> Option<Seen> {
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    #[test]
    fn reports_changes_in_watched_folders_and_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("old.yaml"), "x").unwrap();
        let (tx, rx) = mpsc::channel();
        let watch = FolderWatch::start(
            Mask::CREATE | Mask::DELETE | Mask::MODIFY | Mask::MOVED_FROM | Mask::MOVED_TO,
            move |seen| {
                let _ = tx.send(seen);
            },
        )
        .unwrap();
        watch.watch(&sub).unwrap();
        // Reads raise nothing: the next event seen is the creation below.
        for _ in 0..10 {
            std::fs::read(sub.join("old.yaml")).unwrap();
        }
        std::fs::write(sub.join("new.yaml"), "y").unwrap();
        let Some(Seen::Change(change)) = next(&rx) else {
            panic!("no event")
        };
        assert_eq!(change.path, sub.join("new.yaml"));
        assert!(change.mask.contains(EventMask::CREATE) && change.is_creation_or_change());
        assert!(!change.is_dir);
        // Then its write, its rename into place over another, and a folder made.
        let Some(Seen::Change(change)) = next(&rx) else {
            panic!("no event")
        };
        assert!(change.mask.contains(EventMask::MODIFY));
        std::fs::rename(sub.join("new.yaml"), sub.join("old.yaml")).unwrap();
        let Some(Seen::Change(from)) = next(&rx) else {
            panic!("no event")
        };
        let Some(Seen::Change(to)) = next(&rx) else {
            panic!("no event")
        };
        assert_eq!(
            (from.path, to.path.clone()),
            (sub.join("new.yaml"), sub.join("old.yaml"))
        );
        assert!(to.is_rename_or_removal());
        std::fs::create_dir(sub.join("more")).unwrap();
        let Some(Seen::Change(made)) = next(&rx) else {
            panic!("no event")
        };
        assert!(made.is_dir && made.path == sub.join("more"));
        // An unwatched folder is silent.
        std::fs::write(dir.path().join("elsewhere.yaml"), "z").unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_millis(200)).ok(), None);
        drop(watch);
    }
}
