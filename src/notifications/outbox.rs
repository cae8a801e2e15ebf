//! The durable outbox: `<state>/notifications/<target>/<event id>.json`, one file per
//! event and target, each the exact body to POST. An event is written (fsynced) before
//! the status that records its transition, and removed only once its target answered
//! 2xx: whatever crashes in between, it is delivered again, never lost.

use super::event::Event;
use crate::fsutil;
use sha2::{Digest, Sha256};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// A receiver, and the folder of the events it has yet to take.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub dir: PathBuf,
}

#[derive(Debug)]
pub struct Outbox {
    targets: Vec<Target>,
}

impl Outbox {
    /// Opens (creating) the outbox of each URL under `state`. A URL's folder is named
    /// by a hash of it: the same URL finds its pending events after a restart.
    pub fn open(state: &Path, urls: &[String]) -> io::Result<Outbox> {
        let root = state.join("notifications");
        let mut targets = Vec::new();
        for url in urls {
            let name = hex::encode(&Sha256::digest(url.as_bytes())[..8]);
            let dir = root.join(name);
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
            let about = dir.join(".url");
            if std::fs::read_to_string(&about).ok().as_deref() != Some(url.as_str()) {
                fsutil::write_atomic(&about, url.as_bytes())?;
            }
            targets.push(Target { url: url.clone(), dir });
        }
        Ok(Outbox { targets })
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Keeps `event` for every target, durably. The same event kept twice is one file.
    pub fn put(&self, event: &Event) -> io::Result<()> {
        for target in &self.targets {
            fsutil::write_atomic(&target.dir.join(format!("{}.json", event.id)), &event.body)?;
        }
        Ok(())
    }

    /// The events `target` has yet to take, oldest first.
    pub fn pending(&self, target: &Target) -> io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&target.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            found.push((modified, entry.path()));
        }
        found.sort();
        Ok(found.into_iter().map(|(_, path)| path).collect())
    }

    /// Events not yet delivered, over every target.
    pub fn pending_count(&self) -> usize {
        self.targets
            .iter()
            .map(|target| self.pending(target).map(|p| p.len()).unwrap_or(0))
            .sum()
    }

    /// The event was delivered: it goes, durably (or it would be sent again, which is
    /// allowed, but needless).
    pub fn delivered(&self, path: &Path) -> io::Result<()> {
        fsutil::remove_durably(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_kept_for_each_target_once_and_survives_a_reopen() {
        let state = tempfile::tempdir().unwrap();
        let urls = ["http://127.0.0.1:1/a".to_string(), "https://example.com/b".to_string()];
        let outbox = Outbox::open(state.path(), &urls).unwrap();
        let event = Event {
            id: "abc".into(),
            body: b"{}".to_vec(),
        };
        outbox.put(&event).unwrap();
        outbox.put(&event).unwrap();
        assert_eq!(outbox.pending_count(), 2);
        let reopened = Outbox::open(state.path(), &urls[..1]).unwrap();
        let pending = reopened.pending(&reopened.targets()[0]).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(std::fs::read(&pending[0]).unwrap(), b"{}");
        reopened.delivered(&pending[0]).unwrap();
        assert_eq!(reopened.pending_count(), 0);
        assert_eq!(outbox.pending_count(), 1, "the other target still waits");
    }
}
