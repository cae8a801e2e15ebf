//! The CloudEvents 1.0 structured-mode JSON event of one terminal transition, and its
//! signature.

use crate::status::{Phase, RunRecord, TaskStatus};
use crate::task::TaskKey;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The header that carries the signature of a body, with `--notify-secret-file`.
pub const SIGNATURE_HEADER: &str = "X-Skiff-Signature";

/// An event, ready to be kept and sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Stable per transition: the same transition reported twice has the same id.
    pub id: String,
    /// The exact bytes POSTed (and signed).
    pub body: Vec<u8>,
}

impl Event {
    /// The event of `status`, a final phase; `None` for any other.
    pub fn of(source: &str, key: &TaskKey, status: &TaskStatus) -> Option<Event> {
        let kind = match status.phase {
            Phase::Succeeded => "skiff.task.succeeded",
            Phase::Failed => "skiff.task.failed",
            Phase::Invalid => "skiff.task.invalid",
            _ => return None,
        };
        let id = id(key, status);
        let current = status.current();
        let data = json!({
            "task": key.as_str(),
            "name": status.name,
            "specHash": status.spec_hash,
            "phase": status.phase,
            "reason": status.reason,
            "message": status.message,
            "attempts": status.attempts.len(),
            "exitCode": current.and_then(|a| a.exit_code),
            "result": status.result,
        });
        let event = json!({
            "specversion": "1.0",
            "id": id,
            "type": kind,
            "source": source,
            "subject": key.as_str(),
            "time": status.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "datacontenttype": "application/json",
            "data": data,
        });
        let body = serde_json::to_vec(&event).ok()?;
        Some(Event { id, body })
    }
}

impl Event {
    /// The event of one ended run of a scheduled task: its phase and summary, and which
    /// run it was (`run`, `scheduledAt`).
    pub fn of_run(source: &str, key: &TaskKey, status: &TaskStatus, run: &RunRecord) -> Option<Event> {
        let phase = run.phase?;
        let kind = match phase {
            Phase::Succeeded => "skiff.task.succeeded",
            Phase::Failed => "skiff.task.failed",
            _ => return None,
        };
        let scheduled_at = run.scheduled_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let spec_hash = run.spec_hash.clone().unwrap_or_else(|| status.spec_hash.clone());
        let mut hash = Sha256::new();
        for part in [
            key.as_str(),
            &spec_hash,
            "run",
            &run.run.unwrap_or_default().to_string(),
            &scheduled_at,
            phase.as_str(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let id = hex::encode(&hash.finalize()[..16]);
        let time = run.finished_at.unwrap_or(status.updated_at);
        let event = json!({
            "specversion": "1.0",
            "id": id,
            "type": kind,
            "source": source,
            "subject": key.as_str(),
            "time": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "datacontenttype": "application/json",
            "data": {
                "task": key.as_str(),
                "name": status.name,
                "specHash": spec_hash,
                "run": run.run,
                "scheduledAt": scheduled_at,
                "phase": phase,
                "reason": run.reason,
                "message": run.message,
                "attempts": run.attempts,
                "exitCode": run.exit_code,
                "result": run.result,
            },
        });
        let body = serde_json::to_vec(&event).ok()?;
        Some(Event { id, body })
    }
}

/// `sha256` over what makes the transition this one: the task, its spec, the phase it
/// reached and its last attempt (an Invalid task, which has none, by its message).
pub fn id(key: &TaskKey, status: &TaskStatus) -> String {
    let mut hash = Sha256::new();
    let current = status.current();
    let attempt_id = current.and_then(|a| a.attempt_id()).unwrap_or_default();
    let container = current.map(|a| a.container.as_str()).unwrap_or_default();
    for part in [
        key.as_str(),
        &status.spec_hash,
        status.phase.as_str(),
        &status.attempts.len().to_string(),
        container,
        &attempt_id,
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    if status.phase == Phase::Invalid {
        hash.update(status.message.as_deref().unwrap_or_default().as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

/// `sha256=<hex HMAC-SHA256 of body>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes a key of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Reason;

    fn done(phase: Phase) -> TaskStatus {
        let mut status = TaskStatus::new("jobs/a", "a", "sha256:x", std::time::SystemTime::UNIX_EPOCH.into());
        status.phase = phase;
        status.reason = Some(Reason::ExitCode);
        status
    }

    #[test]
    fn an_event_is_cloudevents_structured_json_with_the_status_summary() {
        let key = TaskKey::new("jobs/a");
        let event = Event::of("file:///tasks", &key, &done(Phase::Failed)).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "skiff.task.failed");
        assert_eq!(json["source"], "file:///tasks");
        assert_eq!(json["subject"], "jobs/a");
        assert_eq!(json["id"], event.id.as_str());
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["data"]["phase"], "Failed");
        assert_eq!(json["data"]["reason"], "ExitCode");
        assert!(Event::of("s", &key, &done(Phase::Running)).is_none());
    }

    #[test]
    fn the_id_is_stable_per_transition_and_differs_between_them() {
        let key = TaskKey::new("jobs/a");
        let failed = done(Phase::Failed);
        assert_eq!(id(&key, &failed), id(&key, &failed.clone()));
        assert_ne!(id(&key, &failed), id(&key, &done(Phase::Succeeded)));
        let mut other_spec = failed.clone();
        other_spec.spec_hash = "sha256:y".into();
        assert_ne!(id(&key, &failed), id(&key, &other_spec));
        assert_ne!(id(&key, &failed), id(&TaskKey::new("jobs/b"), &failed));
        // The time it was written is not part of it: a transition written twice is one.
        let mut later = failed.clone();
        later.updated_at = chrono::Utc::now();
        assert_eq!(id(&key, &failed), id(&key, &later));
    }

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
