//! Completion by callback event (DESIGN.md §5): the per-attempt token, and the inbox
//! where accepted events are recorded durably before the container is answered.
//!
//! The token is an HMAC-SHA256, under a secret kept 0600 in the state folder, of the
//! task, attempt, index and spec hash: a container can report only for itself, and a
//! token outlives neither its attempt nor its spec.

use crate::fsutil;
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

    fn mac(&self, task: &str, attempt: u32, index: u32, spec_hash: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(format!("skiff-callback\n{task}\n{attempt}\n{index}\n{spec_hash}").as_bytes());
        mac
    }

    pub fn token(&self, task: &str, attempt: u32, index: u32, spec_hash: &str) -> String {
        let tag = self.mac(task, attempt, index, spec_hash).finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
    }

    /// Constant-time check of a token for the claimed attempt.
    pub fn verify(&self, token: &str, task: &str, attempt: u32, index: u32, spec_hash: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        self.mac(task, attempt, index, spec_hash).verify_slice(&tag).is_ok()
    }
}

/// The URL a container of this attempt POSTs to when it is done.
pub fn callback_url(base: &str, task: &str, attempt: u32, index: u32, token: &str) -> String {
    format!(
        "{}/v1/tasks/{}/events?attempt={attempt}&index={index}&token={token}",
        base.trim_end_matches('/'),
        urlencoding::encode(task)
    )
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

/// Accepted events, one durable file per container, until the status records them.
pub struct Inbox {
    dir: PathBuf,
}

impl Inbox {
    pub fn new(state_dir: &Path) -> std::io::Result<Self> {
        let dir = state_dir.join("events");
        std::fs::create_dir_all(&dir)?;
        Ok(Inbox { dir })
    }

    fn path(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.json"))
    }

    /// Records the event durably (fsync); only then may the container be answered 202.
    pub fn record(&self, container: &str, event: &CallbackEvent) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        fsutil::write_atomic(&self.path(container), &bytes)
    }

    pub fn read(&self, container: &str) -> Option<CallbackEvent> {
        let bytes = std::fs::read(self.path(container)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove(&self, container: &str) {
        let _ = std::fs::remove_file(self.path(container));
    }

    /// Forgets every event of a task's containers.
    pub fn forget(&self, container_prefix: &str) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(container_prefix) {
                    let _ = std::fs::remove_file(entry.path());
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
    fn tokens_bind_task_attempt_index_and_spec() {
        let dir = tempfile::tempdir().unwrap();
        let secret = CallbackSecret::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = secret.token("jobs/a", 2, 0, "sha256:x");
        assert!(secret.verify(&token, "jobs/a", 2, 0, "sha256:x"));
        assert!(!secret.verify(&token, "jobs/a", 1, 0, "sha256:x"));
        assert!(!secret.verify(&token, "jobs/b", 2, 0, "sha256:x"));
        assert!(!secret.verify(&token, "jobs/a", 2, 1, "sha256:x"));
        assert!(!secret.verify(&token, "jobs/a", 2, 0, "sha256:y"));
        assert!(!secret.verify("garbage!", "jobs/a", 2, 0, "sha256:x"));
        // The same secret after a restart: old tokens stay valid.
        let again = CallbackSecret::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&token, "jobs/a", 2, 0, "sha256:x"));
        let url = callback_url("http://127.0.0.1:8466/", "jobs/a b", 2, 0, &token);
        assert!(url.starts_with("http://127.0.0.1:8466/v1/tasks/jobs%2Fa%20b/events?attempt=2&index=0&token="));
    }

    #[test]
    fn the_inbox_keeps_events_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::new(dir.path()).unwrap();
        let event = CallbackEvent {
            result: Some(serde_json::json!({"frames": 1})),
            ..Default::default()
        };
        inbox.record("skiff-a-1", &event).unwrap();
        assert_eq!(inbox.read("skiff-a-1"), Some(event));
        inbox.forget("skiff-a-");
        assert_eq!(inbox.read("skiff-a-1"), None);
    }
}
