//! Heartbeats and progress (`spec.heartbeatTimeout`, DESIGN.md §12): the URL a container
//! POSTs to, what it may say, and the controller's in-memory board of the latest beat of
//! each live attempt, which the API writes and each reconcile reads as an observation.
//!
//! Heartbeats are kept in memory only, never fsynced one by one: a beat changes nothing
//! durable by itself. Its progress reaches the status file with the next status write
//! (a coalesced reconcile asked for at most once per task per [`MIN_PROGRESS_DELAY`],
//! stretched so that heartbeats never cost more than about [`PROGRESS_WRITES_PER_SECOND`]
//! writes a second). A crash loses the beats since that write, and the silence counts from
//! when the restarted controller first looks at the attempt (never from before), so a
//! restart cannot fail a healthy attempt whose beats were lost with it.
//!
//! The URL carries the callback's token (task, attempt, index and the attempt's unique id,
//! signed): a container can beat only for itself, and a URL given to an earlier attempt or
//! run is refused (409) as its completion event would be.

use crate::status::Timestamp;
use crate::task::TaskKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The largest heartbeat body: a progress and a short message.
pub const MAX_HEARTBEAT_BYTES: usize = 4 * 1024;
/// The longest progress message kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// A task's changed progress is written into its status at most this often.
pub const MIN_PROGRESS_DELAY: Duration = Duration::from_secs(1);
/// Status writes a second that heartbeats' progress may cause, across all tasks: with
/// more tasks reporting than this, each one's progress is written less often.
pub const PROGRESS_WRITES_PER_SECOND: usize = 100;

/// The URL a container of this attempt POSTs its heartbeats to (`SKIFF_HEARTBEAT_URL`).
pub fn heartbeat_url(base: &str, task: &str, attempt: u32, index: u32, attempt_id: &str, token: &str) -> String {
    format!(
        "{}/v1/tasks/{}/heartbeat?attempt={attempt}&index={index}&id={}&token={token}",
        base.trim_end_matches('/'),
        urlencoding::encode(task),
        urlencoding::encode(attempt_id)
    )
}

/// What a heartbeat may say; an empty body says only "alive".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatBody {
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Reads a heartbeat's body: nothing, or a JSON object with an optional `progress` in
/// 0..1 and an optional `message`. `Err` is the 400's message, saying what to send.
pub fn parse_body(body: &[u8]) -> Result<HeartbeatBody, String> {
    const SHAPE: &str = r#"send nothing, or {"progress": 0.42, "message": "frame 420/1000"} (both optional)"#;
    if body.len() > MAX_HEARTBEAT_BYTES {
        return Err(format!(
            "the body is {} bytes, more than a heartbeat's {MAX_HEARTBEAT_BYTES}; {SHAPE}",
            body.len()
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(HeartbeatBody::default());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|err| format!("the body is not JSON ({err}); {SHAPE}"))?;
    if !value.is_object() {
        return Err(format!("the body must be a JSON object; {SHAPE}"));
    }
    let parsed: HeartbeatBody =
        serde_json::from_value(value).map_err(|err| format!("the body is not a heartbeat ({err}); {SHAPE}"))?;
    if let Some(progress) = parsed.progress
        && !(0.0..=1.0).contains(&progress)
    {
        return Err(format!(
            "progress {progress} is outside 0..1; send the fraction done (0.42 for 42%)"
        ));
    }
    if let Some(message) = &parsed.message
        && message.len() > MAX_MESSAGE_BYTES
    {
        return Err(format!(
            "the message is {} bytes, more than {MAX_MESSAGE_BYTES}; send a short line such as \"frame 420/1000\"",
            message.len()
        ));
    }
    Ok(parsed)
}

/// What a reconcile sees of an attempt's heartbeats: the observation `decide` judges.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Heartbeat {
    /// The attempt's silence counts from here: its latest heartbeat, or when this
    /// controller began to listen for it, whichever is later. `None`: neither (the
    /// silence counts from the attempt's start).
    pub since: Option<Timestamp>,
    /// When the latest heartbeat arrived, if one did since this controller started.
    pub last_beat: Option<Timestamp>,
    /// The latest progress and message the attempt reported, if any.
    pub progress: Option<f64>,
    pub message: Option<String>,
}

/// One live attempt's beats.
#[derive(Debug, Clone)]
struct Entry {
    index: u32,
    attempt: u32,
    /// When a reconcile of this controller first looked at the attempt.
    watching_since: Option<Timestamp>,
    last_beat: Option<Timestamp>,
    progress: Option<f64>,
    message: Option<String>,
    /// A reconcile was asked for to write changed progress, and has not run yet.
    nudged: bool,
}

/// The latest heartbeat of every live attempt, by task and attempt id. Written by the
/// API, read by reconciles, trimmed by them to the attempts their status still runs.
///
/// Keyed by the attempt's id (the one its token signs), not by its index or number:
/// under `concurrencyPolicy: Allow` several runs of a task are live at once, and their
/// attempt numbers and indexes restart in each run, so only the id tells them apart.
#[derive(Debug, Default)]
pub struct Heartbeats {
    tasks: Mutex<HashMap<TaskKey, HashMap<String, Entry>>>,
}

impl Heartbeats {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, HashMap<String, Entry>>> {
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a reconcile knows this attempt as a live one (of whichever run): the API's
    /// fast path, with no status read. `false` means "read the status to know".
    pub fn is_live(&self, key: &TaskKey, index: u32, attempt: u32, attempt_id: &str) -> bool {
        self.lock()
            .get(key)
            .and_then(|attempts| attempts.get(attempt_id))
            .is_some_and(|entry| entry.is(index, attempt))
    }

    /// Records a heartbeat of a live attempt (the caller checked that it is). Returns the
    /// delay after which its task should be reconciled to write changed progress into its
    /// status, when this beat changed it and no such reconcile is pending already.
    pub fn beat(
        &self,
        key: &TaskKey,
        index: u32,
        attempt: u32,
        attempt_id: &str,
        at: Timestamp,
        body: HeartbeatBody,
    ) -> Option<Duration> {
        let mut tasks = self.lock();
        let entry = entry(&mut tasks, key, index, attempt, attempt_id);
        entry.last_beat = Some(entry.last_beat.map_or(at, |last| last.max(at)));
        let changed = (body.progress.is_some() && body.progress != entry.progress)
            || (body.message.is_some() && body.message != entry.message);
        if body.progress.is_some() {
            entry.progress = body.progress;
        }
        if body.message.is_some() {
            entry.message = body.message;
        }
        if !changed || entry.nudged {
            return None;
        }
        entry.nudged = true;
        let reporting: usize = tasks.values().map(HashMap::len).sum();
        Some(progress_delay(reporting))
    }

    /// What a reconcile sees of the attempt's heartbeats; the first look starts the
    /// controller's own count of the attempt's silence (see [`Heartbeat::since`]).
    pub fn observe(&self, key: &TaskKey, index: u32, attempt: u32, attempt_id: &str, now: Timestamp) -> Heartbeat {
        let mut tasks = self.lock();
        let entry = entry(&mut tasks, key, index, attempt, attempt_id);
        let watching_since = *entry.watching_since.get_or_insert(now);
        entry.nudged = false;
        Heartbeat {
            since: Some(entry.last_beat.map_or(watching_since, |last| last.max(watching_since))),
            last_beat: entry.last_beat,
            progress: entry.progress,
            message: entry.message.clone(),
        }
    }

    /// Keeps only the task's attempts that its status, as just written, still runs
    /// (index, attempt number, attempt id), in any of its runs: beats of ended attempts
    /// are forgotten. An attempt this very pass began has no id in the decision yet (the
    /// act gives it): `None` keeps whatever its container already sent under its number.
    pub fn settle(&self, key: &TaskKey, live: &[(u32, u32, Option<String>)]) {
        let mut tasks = self.lock();
        let Some(attempts) = tasks.get_mut(key) else { return };
        attempts.retain(|attempt_id, entry| {
            live.iter()
                .any(|(i, n, id)| entry.is(*i, *n) && id.as_ref().is_none_or(|id| id == attempt_id))
        });
        if attempts.is_empty() {
            tasks.remove(key);
        }
    }

    /// Attempts with an entry, for metrics and tests.
    pub fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The attempt's entry, made on its first beat or look. An id is given to one attempt
/// only, so an entry under it for another index or number is not this attempt's (a
/// forged pair cannot pass the token): it starts afresh.
fn entry<'a>(
    tasks: &'a mut HashMap<TaskKey, HashMap<String, Entry>>,
    key: &TaskKey,
    index: u32,
    attempt: u32,
    attempt_id: &str,
) -> &'a mut Entry {
    let entry = tasks
        .entry(key.clone())
        .or_default()
        .entry(attempt_id.to_string())
        .or_insert_with(|| Entry::new(index, attempt));
    if !entry.is(index, attempt) {
        *entry = Entry::new(index, attempt);
    }
    entry
}

impl Entry {
    fn new(index: u32, attempt: u32) -> Self {
        Entry {
            index,
            attempt,
            watching_since: None,
            last_beat: None,
            progress: None,
            message: None,
            nudged: false,
        }
    }

    fn is(&self, index: u32, attempt: u32) -> bool {
        self.index == index && self.attempt == attempt
    }
}

/// How long a task's changed progress waits for its status write, with `reporting`
/// attempts heartbeating: [`MIN_PROGRESS_DELAY`], stretched so that all of them together
/// cause about [`PROGRESS_WRITES_PER_SECOND`] writes a second at most.
pub fn progress_delay(reporting: usize) -> Duration {
    let spread = Duration::from_secs_f64(reporting as f64 / PROGRESS_WRITES_PER_SECOND as f64);
    spread.max(MIN_PROGRESS_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_heartbeat_body_is_nothing_or_progress_and_message() {
        assert_eq!(parse_body(b"").unwrap(), HeartbeatBody::default());
        assert_eq!(parse_body(b" \n").unwrap(), HeartbeatBody::default());
        let full = parse_body(br#"{"progress": 0.42, "message": "frame 420/1000"}"#).unwrap();
        assert_eq!(full.progress, Some(0.42));
        assert_eq!(full.message.as_deref(), Some("frame 420/1000"));
        assert_eq!(parse_body(br#"{"progress": 1}"#).unwrap().progress, Some(1.0));
        for (bad, says) in [
            (&br#"{"progress": 1.5}"#[..], "outside 0..1"),
            (br#"{"progress": -0.1}"#, "outside 0..1"),
            (br#"{"progress": "half"}"#, "not a heartbeat"),
            (br#"{"percent": 4}"#, "not a heartbeat"),
            (b"[0.5]", "JSON object"),
            (b"0.5x", "not JSON"),
            (b"progress=0.5", "not JSON"),
        ] {
            let err = parse_body(bad).unwrap_err();
            assert!(err.contains(says), "{}: {err}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"message": "{}"}}"#, "x".repeat(MAX_MESSAGE_BYTES + 1));
        assert!(parse_body(long.as_bytes()).unwrap_err().contains("more than 1024"));
        let huge = vec![b' '; MAX_HEARTBEAT_BYTES + 1];
        assert!(parse_body(&huge).unwrap_err().contains("more than a heartbeat's"));
    }

    #[test]
    fn the_board_keeps_the_latest_beat_of_the_live_attempt_only() {
        let board = Heartbeats::new();
        let key = TaskKey::new("a");
        assert!(!board.is_live(&key, 0, 1, "id1"));
        // The first look starts the count; no beat yet.
        let seen = board.observe(&key, 0, 1, "id1", at(10));
        assert_eq!((seen.since, seen.last_beat, seen.progress), (Some(at(10)), None, None));
        assert!(board.is_live(&key, 0, 1, "id1"));
        let nudge = board.beat(
            &key,
            0,
            1,
            "id1",
            at(12),
            HeartbeatBody {
                progress: Some(0.25),
                message: None,
            },
        );
        assert_eq!(nudge, Some(MIN_PROGRESS_DELAY), "changed progress asks for a write");
        // A beat saying nothing new, or while a write is pending, asks for nothing.
        assert_eq!(board.beat(&key, 0, 1, "id1", at(13), HeartbeatBody::default()), None);
        let more = HeartbeatBody {
            progress: Some(0.5),
            message: Some("half".into()),
        };
        assert_eq!(board.beat(&key, 0, 1, "id1", at(14), more), None, "coalesced");
        let seen = board.observe(&key, 0, 1, "id1", at(15));
        assert_eq!(seen.since, Some(at(14)));
        assert_eq!(seen.progress, Some(0.5));
        assert_eq!(seen.message.as_deref(), Some("half"));
        // A beat that arrives out of order never moves the last one back.
        board.beat(&key, 0, 1, "id1", at(11), HeartbeatBody::default());
        assert_eq!(board.observe(&key, 0, 1, "id1", at(16)).since, Some(at(14)));
        // The next attempt starts with nothing of the last one's, which its settle forgets.
        let next = board.observe(&key, 0, 2, "id2", at(20));
        assert_eq!((next.since, next.progress), (Some(at(20)), None));
        board.settle(&key, &[(0, 2, Some("id2".into()))]);
        assert!(!board.is_live(&key, 0, 1, "id1"));
        assert!(!board.is_live(&key, 1, 2, "id2"), "the id of another index");
        // Settled: only what the status still runs is kept.
        board.observe(&key, 1, 1, "lane1", at(20));
        board.settle(&key, &[(1, 1, Some("lane1".into()))]);
        assert!(!board.is_live(&key, 0, 2, "id2") && board.is_live(&key, 1, 1, "lane1"));
        assert!(!board.is_live(&key, 1, 2, "lane1"), "the id of another attempt number");
        // A beat that came before the pass that began its attempt settled (a fast
        // container): kept, though the decision does not know the attempt's id yet.
        board.beat(&key, 2, 1, "fresh", at(21), HeartbeatBody::default());
        board.settle(&key, &[(1, 1, Some("lane1".into())), (2, 1, None)]);
        assert!(board.is_live(&key, 2, 1, "fresh"));
        assert_eq!(board.observe(&key, 2, 1, "fresh", at(22)).last_beat, Some(at(21)));
        board.settle(&key, &[]);
        assert!(board.is_empty());
    }

    /// Under `concurrencyPolicy: Allow` two runs of a task are live at once, each with its
    /// attempt 1 of index 0: told apart by their ids, each keeps its own beats.
    #[test]
    fn the_board_keeps_each_overlapping_runs_attempt_apart() {
        let board = Heartbeats::new();
        let key = TaskKey::new("tick");
        board.observe(&key, 0, 1, "run1", at(0));
        board.observe(&key, 0, 1, "run2", at(10));
        let half = HeartbeatBody {
            progress: Some(0.5),
            message: Some("run 1 half".into()),
        };
        board.beat(&key, 0, 1, "run1", at(12), half);
        let run1 = board.observe(&key, 0, 1, "run1", at(13));
        let run2 = board.observe(&key, 0, 1, "run2", at(13));
        assert_eq!(
            (run1.since, run1.last_beat, run1.progress),
            (Some(at(12)), Some(at(12)), Some(0.5))
        );
        assert_eq!(
            (run2.since, run2.last_beat, run2.progress),
            (Some(at(10)), None, None),
            "run 1's beat is not run 2's"
        );
        board.settle(&key, &[(0, 1, Some("run1".into())), (0, 1, Some("run2".into()))]);
        assert!(board.is_live(&key, 0, 1, "run1") && board.is_live(&key, 0, 1, "run2"));
        // Run 1 ends: its beats go, run 2's stay.
        board.settle(&key, &[(0, 1, Some("run2".into()))]);
        assert!(!board.is_live(&key, 0, 1, "run1") && board.is_live(&key, 0, 1, "run2"));
        assert_eq!(board.observe(&key, 0, 1, "run2", at(14)).since, Some(at(10)));
        assert_eq!(board.len(), 1);
    }

    #[test]
    fn progress_writes_stretch_with_the_number_of_reporters() {
        assert_eq!(progress_delay(0), MIN_PROGRESS_DELAY);
        assert_eq!(progress_delay(50), MIN_PROGRESS_DELAY);
        assert_eq!(progress_delay(1000), Duration::from_secs(10));
    }

    #[test]
    fn the_url_names_the_task_attempt_index_and_id() {
        let url = heartbeat_url("http://127.0.0.1:8466/", "jobs/a b", 2, 1, "x:y", "tok");
        assert_eq!(
            url,
            "http://127.0.0.1:8466/v1/tasks/jobs%2Fa%20b/heartbeat?attempt=2&index=1&id=x%3Ay&token=tok"
        );
    }
}
