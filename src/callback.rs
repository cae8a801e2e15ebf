//! Completion by callback event (DESIGN.md §5): the per-attempt token, and the inbox
//! where accepted events are recorded durably before the container is answered.
//!
//! The token is an HMAC-SHA256, under a secret kept 0600 in the state folder, of the
//! task, attempt, index and the attempt's unique id (random, written with `Creating`,
//! the id the container is labelled with): a container can report only for itself, and a token
//! outlives its attempt in no re-run, since a re-run's attempt 1 has another id. The id
//! travels in the URL, so the token is checked before anything is read from disk.
//!
//! The inbox holds at most one event per attempt: the first one durably recorded wins
//! (a hard link, which never replaces), every later one is refused.

use crate::fsutil;
use crate::store::commit::Durability;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The largest callback body accepted (§5).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
const SECRET_FILE: &str = "secret";
const SECRET_BYTES: usize = 32;

/// The controller's signing key.
pub struct CallbackSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for CallbackSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackSecret(..)")
    }
}

impl CallbackSecret {
    /// Reads `<state>/secret`, creating it (mode 0600, random) on first use.
    pub fn load_or_create(state_dir: &Path) -> std::io::Result<Self> {
        let path = state_dir.join(SECRET_FILE);
        match std::fs::read(&path) {
            Ok(key) if key.len() >= SECRET_BYTES => return Ok(CallbackSecret { key }),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let key: [u8; SECRET_BYTES] = rand::random();
        let temp = state_dir.join(format!(".{SECRET_FILE}.{}.tmp", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&key)?;
        file.sync_all()?;
        // If another controller made one meanwhile, keep theirs: tokens already given out
        // must stay valid.
        match std::fs::hard_link(&temp, &path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                let _ = std::fs::remove_file(&temp);
                return Err(err);
            }
        }
        let _ = std::fs::remove_file(&temp);
        fsutil::sync_dir(state_dir)?;
        Ok(CallbackSecret {
            key: std::fs::read(&path)?,
        })
    }

    /// A secret kept elsewhere (the blob store's `.skiff/secret`, shared by replicas).
    pub fn from_key(key: Vec<u8>) -> Self {
        CallbackSecret { key }
    }

    fn mac(&self, task: &str, attempt: u32, index: u32, attempt_id: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        // Lengths first: a task key may hold a newline, and no two tuples may sign alike.
        mac.update(
            format!(
                "skiff-callback-v2\n{}:{task}\n{attempt}\n{index}\n{}:{attempt_id}",
                task.len(),
                attempt_id.len()
            )
            .as_bytes(),
        );
        mac
    }

    pub fn token(&self, task: &str, attempt: u32, index: u32, attempt_id: &str) -> String {
        let tag = self.mac(task, attempt, index, attempt_id).finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
    }

    /// Constant-time check of a token for the claimed attempt.
    pub fn verify(&self, token: &str, task: &str, attempt: u32, index: u32, attempt_id: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        self.mac(task, attempt, index, attempt_id).verify_slice(&tag).is_ok()
    }
}

/// The URL a container of this attempt POSTs to when it is done.
pub fn callback_url(base: &str, task: &str, attempt: u32, index: u32, attempt_id: &str, token: &str) -> String {
    format!(
        "{}/v1/tasks/{}/events?attempt={attempt}&index={index}&id={}&token={token}",
        base.trim_end_matches('/'),
        urlencoding::encode(task),
        urlencoding::encode(attempt_id)
    )
}

/// The unique id of an attempt, as its token signs it and its inbox file is named.
pub fn attempt_id(record: &crate::status::AttemptRecord) -> Option<String> {
    record.attempt_id()
}

/// What a container said when it called back. Every field is optional: an empty body
/// means success.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallbackEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// When the controller accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Accepted events, at most one durable file per attempt, until the status records it
/// or the attempt ends. Files are named by container *and* attempt id: a re-run's
/// container has the same name as the last run's, and must never see its event.
pub struct Inbox {
    dir: PathBuf,
    /// How an event's file is made durable before it is linked into place: on ext4 and
    /// XFS without a journal commit of its own, so that recording an event costs one
    /// sync round trip (the folder's fsync), not two.
    durability: Durability,
}

/// Whether [`Inbox::record_first`] kept the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// This event is the attempt's one.
    First,
    /// Another event was recorded for the attempt before.
    AlreadyHeld,
}

impl Inbox {
    pub fn new(state_dir: &Path) -> std::io::Result<Self> {
        let dir = state_dir.join("events");
        std::fs::create_dir_all(&dir)?;
        let durability = Durability::for_folder(&dir);
        Ok(Inbox { dir, durability })
    }

    fn path(&self, container: &str, attempt_id: &str) -> PathBuf {
        // The id is signed, so it is ours; still, nothing from a URL becomes a path as is.
        let id: String = attempt_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{container}@{id}.json"))
    }

    /// Records the event durably, unless the attempt already has one: only the first may
    /// be answered 202. The hard link makes "first" atomic across threads, processes and
    /// replicas sharing the state folder. The file's data is written out first, and the
    /// folder's fsync after the link makes both durable ([`Durability`]).
    pub fn record_first(&self, container: &str, attempt_id: &str, event: &CallbackEvent) -> std::io::Result<Recorded> {
        let bytes = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        let path = self.path(container, attempt_id);
        if path.exists() {
            return Ok(Recorded::AlreadyHeld);
        }
        let temp = self.dir.join(format!(
            ".{container}.{}.{}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        let linked = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&bytes)?;
            self.durability.write_out(&file)?;
            match std::fs::hard_link(&temp, &path) {
                Ok(()) => {
                    fsutil::sync_dir(&self.dir)?;
                    Ok(Recorded::First)
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(Recorded::AlreadyHeld),
                Err(err) => Err(err),
            }
        })();
        let _ = std::fs::remove_file(&temp);
        linked
    }

    pub fn read(&self, container: &str, attempt_id: &str) -> Option<CallbackEvent> {
        let bytes = std::fs::read(self.path(container, attempt_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove(&self, container: &str, attempt_id: &str) {
        let _ = std::fs::remove_file(self.path(container, attempt_id));
    }

    /// Forgets every event of a container name but the attempt's own: what an earlier
    /// run under the same name (a deleted status, a changed spec) left.
    pub fn forget_others(&self, container: &str, attempt_id: &str) {
        let keep = self.path(container, attempt_id);
        let prefix = format!("{container}@");
        self.remove_where(|path, name| name.starts_with(&prefix) && path != keep);
    }

    /// Forgets every event of a task's containers.
    pub fn forget(&self, container_prefix: &str) {
        self.remove_where(|_, name| name.starts_with(container_prefix));
    }

    fn remove_where(&self, doomed: impl Fn(&Path, &str) -> bool) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if doomed(&path, &entry.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_bind_task_attempt_index_and_attempt_id() {
        let dir = tempfile::tempdir().unwrap();
        let secret = CallbackSecret::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let id = "2026-01-01T00:00:00.001Z";
        let token = secret.token("jobs/a", 2, 0, id);
        assert!(secret.verify(&token, "jobs/a", 2, 0, id));
        assert!(!secret.verify(&token, "jobs/a", 1, 0, id));
        assert!(!secret.verify(&token, "jobs/b", 2, 0, id));
        assert!(!secret.verify(&token, "jobs/a", 2, 1, id));
        // The same task, attempt and index re-run later: another id, another token.
        assert!(!secret.verify(&token, "jobs/a", 2, 0, "2026-01-01T00:00:00.002Z"));
        assert!(!secret.verify("garbage!", "jobs/a", 2, 0, id));
        // The same secret after a restart: old tokens stay valid.
        let again = CallbackSecret::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&token, "jobs/a", 2, 0, id));
        let url = callback_url("http://127.0.0.1:8466/", "jobs/a b", 2, 0, id, &token);
        assert!(
            url.starts_with(
                "http://127.0.0.1:8466/v1/tasks/jobs%2Fa%20b/events?attempt=2&index=0&id=2026-01-01T00%3A00%3A00.001Z&token="
            ),
            "{url}"
        );
    }

    #[test]
    fn the_inbox_keeps_one_event_per_attempt_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::new(dir.path()).unwrap();
        let event = |n: i32| CallbackEvent {
            result: Some(serde_json::json!({"n": n})),
            ..Default::default()
        };
        assert_eq!(
            inbox.record_first("skiff-a-1", "t1", &event(1)).unwrap(),
            Recorded::First
        );
        assert_eq!(
            inbox.record_first("skiff-a-1", "t1", &event(2)).unwrap(),
            Recorded::AlreadyHeld
        );
        assert_eq!(inbox.read("skiff-a-1", "t1"), Some(event(1)));
        // A re-run under the same container name sees nothing of the last run's event.
        assert_eq!(inbox.read("skiff-a-1", "t2"), None);
        assert_eq!(
            inbox.record_first("skiff-a-1", "t2", &event(3)).unwrap(),
            Recorded::First
        );
        inbox.forget_others("skiff-a-1", "t2");
        assert_eq!(inbox.read("skiff-a-1", "t1"), None);
        assert_eq!(inbox.read("skiff-a-1", "t2"), Some(event(3)));
        inbox.forget("skiff-a-");
        assert_eq!(inbox.read("skiff-a-1", "t2"), None);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("events")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn of_many_concurrent_events_for_one_attempt_exactly_one_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = std::sync::Arc::new(Inbox::new(dir.path()).unwrap());
        let threads: Vec<_> = (0..64)
            .map(|n| {
                let inbox = inbox.clone();
                std::thread::spawn(move || {
                    let event = CallbackEvent {
                        exit_code: Some(n),
                        ..Default::default()
                    };
                    (n, inbox.record_first("skiff-a-1", "t1", &event).unwrap())
                })
            })
            .collect();
        let firsts: Vec<i32> = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|(_, recorded)| *recorded == Recorded::First)
            .map(|(n, _)| n)
            .collect();
        assert_eq!(firsts.len(), 1, "{firsts:?}");
        assert_eq!(inbox.read("skiff-a-1", "t1").unwrap().exit_code, Some(firsts[0]));
    }
}
