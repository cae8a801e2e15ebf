//! The heartbeat check (`spec.heartbeatTimeout`), pure: an attempt silent for longer than
//! its timeout fails with `HeartbeatTimeout` (and is retried as any failure); the latest
//! progress it reported goes into the status. The beats themselves reach the decision as
//! an observation ([`Heartbeat`], from the controller's in-memory board); the timer is the
//! requeue this check asks for, at the moment the silence would become too long.

use super::{Action, Decision, SOON};
use crate::heartbeat::Heartbeat;
use crate::status::{CompletedBy, IndexStatus, Phase, Reason, TaskStatus, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// Whether a running attempt has been heard from recently enough.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// Alive; look again within `check_in` (`None`: no heartbeat check applies).
    Alive { check_in: Option<Duration> },
    /// Silent for longer than the timeout: the attempt fails, for this reason.
    Silent { message: String },
}

/// Judges a running attempt that `started` at that time. Its silence counts from the
/// latest of its start, its last heartbeat, and when this controller began listening
/// for it (so that a restart, which loses heartbeats, never fails a healthy attempt).
pub(super) fn judge(
    timeout: Option<Duration>,
    started: Timestamp,
    heartbeat: Option<&Heartbeat>,
    now: Timestamp,
) -> Verdict {
    let Some(timeout) = timeout else {
        return Verdict::Alive { check_in: None };
    };
    let since = heartbeat
        .and_then(|h| h.since)
        .map_or(started, |since| since.max(started));
    let Some(deadline) = chrono::Duration::from_std(timeout)
        .ok()
        .and_then(|timeout| since.checked_add_signed(timeout))
    else {
        return Verdict::Alive { check_in: None };
    };
    if now < deadline {
        return Verdict::Alive {
            check_in: Some((deadline - now).to_std().unwrap_or(SOON)),
        };
    }
    let silent = humantime::format_duration(Duration::from_secs((now - since).num_seconds().max(0) as u64));
    let timeout = humantime::format_duration(timeout);
    let message = match heartbeat.and_then(|h| h.last_beat) {
        Some(last) if last >= started => format!(
            "no heartbeat for {silent} (heartbeatTimeout {timeout}); the last arrived at {}",
            crate::status::format_time(&last)
        ),
        _ if since > started => {
            format!("no heartbeat for {silent} (heartbeatTimeout {timeout}) since the controller started watching")
        }
        _ => format!("no heartbeat in the {silent} since the attempt started (heartbeatTimeout {timeout})"),
    };
    Verdict::Silent { message }
}

/// Fails the current attempt for its silence and deletes its container (a silent
/// container is stopped whatever `cleanup` says, as a deadline does).
pub(super) fn fail_silent(mut status: TaskStatus, container: String, message: String, now: Timestamp) -> Decision {
    if let Some(record) = status.current_mut() {
        record.finished_at = Some(now);
        record.completed_by = Some(CompletedBy::Deadline);
        record.reason = Some(Reason::HeartbeatTimeout);
        record.message = Some(message.clone());
    }
    status.phase = Phase::Deleting;
    status.reason = Some(Reason::HeartbeatTimeout);
    status.message = Some(message);
    Decision::act(status, Action::DeleteContainer { container }, SOON)
}

/// The current attempt's latest progress and message, when its heartbeats are watched.
/// An attempt that reported nothing yet shows nothing: an earlier attempt's progress
/// is not this one's.
pub(super) fn record_progress(status: &mut TaskStatus, heartbeat: Option<&Heartbeat>) {
    if let Some(heartbeat) = heartbeat {
        status.progress = heartbeat.progress;
        status.progress_message = heartbeat.message.clone();
    }
}

/// A fan-out's progress: succeeded indexes count whole, running ones as far as they
/// reported, the rest nothing; the message is the lowest reporting index's. Changed only
/// while some index's heartbeats are watched, so the last figures stay once all end.
pub(super) fn record_fan_out_progress(
    status: &mut TaskStatus,
    beats: &BTreeMap<u32, Option<Heartbeat>>,
    completions: u32,
) {
    if completions == 0 || !beats.values().any(Option::is_some) {
        return;
    }
    let reported = |lane: &IndexStatus| {
        beats
            .get(&lane.index)
            .and_then(Option::as_ref)
            .filter(|_| lane.phase.has_container())
    };
    let done: f64 = status
        .indexes
        .iter()
        .map(|lane| match lane.phase {
            Phase::Succeeded => 1.0,
            _ => reported(lane).and_then(|h| h.progress).unwrap_or(0.0),
        })
        .sum();
    status.progress = Some((done / f64::from(completions)).clamp(0.0, 1.0));
    status.progress_message = status.indexes.iter().find_map(|lane| {
        let message = reported(lane)?.message.as_ref()?;
        Some(format!("index {}: {message}", lane.index))
    });
}

/// The attempt is configured for heartbeats and running: whether the Running branch of
/// `active` must look again sooner than its poll interval.
pub(super) fn sooner(poll: Duration, check_in: Option<Duration>) -> Duration {
    check_in.map_or(poll, |c| c.min(poll))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::reconcile::{Dependencies, Desired, Input, Observed, Slot};
    use crate::manifest::RuntimeKind;
    use crate::runtime::ContainerState;
    use crate::status::{AttemptRecord, Placement};
    use crate::task::TaskKey;
    use chrono::{TimeZone, Utc};

    fn at(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn beat(since: i64, last: Option<i64>) -> Heartbeat {
        Heartbeat {
            since: Some(at(since)),
            last_beat: last.map(at),
            progress: None,
            message: None,
        }
    }

    const T: Option<Duration> = Some(Duration::from_secs(30));

    #[test]
    fn the_silence_counts_from_the_latest_of_start_beat_and_watching() {
        let alive = |s: u64| Verdict::Alive {
            check_in: Some(Duration::from_secs(s)),
        };
        // (timeout, started, heartbeat, now) and the verdict, or what a silent one says.
        type Case = (
            Option<Duration>,
            i64,
            Option<Heartbeat>,
            i64,
            Result<Verdict, &'static str>,
        );
        let cases: Vec<Case> = vec![
            // No heartbeatTimeout: never judged.
            (None, 0, None, 10_000, Ok(Verdict::Alive { check_in: None })),
            // Never heard from: counted from the start.
            (T, 0, None, 10, Ok(alive(20))),
            (T, 0, None, 30, Err("since the attempt started")),
            (T, 0, Some(beat(0, None)), 31, Err("since the attempt started")),
            // Heard from at 25: alive until 55.
            (T, 0, Some(beat(25, Some(25))), 40, Ok(alive(15))),
            (T, 0, Some(beat(25, Some(25))), 54, Ok(alive(1))),
            (T, 0, Some(beat(25, Some(25))), 55, Err("the last arrived at")),
            // A restarted controller began watching at 100, long after the start and
            // with the beats before it lost: the attempt gets a whole timeout from there.
            (T, 0, Some(beat(100, None)), 110, Ok(alive(20))),
            (
                T,
                0,
                Some(beat(100, None)),
                130,
                Err("since the controller started watching"),
            ),
            // Watching began before the container started (it was Creating): the start counts.
            (T, 50, Some(beat(40, None)), 70, Ok(alive(10))),
            // A beat of before the start (a clock step) counts as the start.
            (T, 50, Some(beat(45, Some(45))), 80, Err("since the attempt started")),
            // A timeout too long for a date is no timeout.
            (Some(Duration::MAX), 0, None, 10, Ok(Verdict::Alive { check_in: None })),
        ];
        for (i, (timeout, started, heartbeat, now, expected)) in cases.into_iter().enumerate() {
            let verdict = judge(timeout, at(started), heartbeat.as_ref(), at(now));
            match (expected, verdict) {
                (Ok(want), got) => assert_eq!(got, want, "case {i}"),
                (Err(says), Verdict::Silent { message }) => {
                    assert!(
                        message.contains(says) && message.contains("heartbeatTimeout 30s"),
                        "case {i}: {message}"
                    )
                }
                (Err(says), got) => panic!("case {i}: expected silent ({says}), got {got:?}"),
            }
        }
    }

    /// A decision on a task with `heartbeatTimeout: 30s` whose attempt 1 has run since 0.
    fn decide_running(retries: u32, phase: Phase, observed: Observed, beat: Option<Heartbeat>, now: i64) -> Decision {
        let text = format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [x]\n  heartbeatTimeout: 30s\n  retries: {retries}\n  backoff: 1s\n"
        );
        let task = crate::manifest::parse_manifest("h.yaml", text.as_bytes()).unwrap();
        let ctx = crate::manifest::ValidationContext {
            default_runtime: RuntimeKind::Process,
            allow_host_paths: &[],
            features: crate::manifest::Features::CURRENT,
            env_is_set: None,
        };
        let spec = crate::manifest::validate("h.yaml", "h", &task, &ctx).unwrap();
        let key = TaskKey::new("h");
        let mut status = TaskStatus::new("h", "h", &spec.spec_hash, at(0));
        status.phase = phase;
        status.attempt = 1;
        status.attempts.push(AttemptRecord {
            number: 1,
            id: Some("id1".into()),
            runtime: RuntimeKind::Process,
            container: key.container_name(1, None),
            index: None,
            created_at: Some(at(0)),
            started_at: Some(at(0)),
            finished_at: None,
            exit_code: None,
            completed_by: None,
            reason: None,
            message: None,
            exit_rule: None,
            placement: Some(Placement::process("0000aaaa", "alpha")),
            semaphores: Vec::new(),
        });
        if phase == Phase::Deleting {
            let record = status.current_mut().unwrap();
            record.finished_at = Some(at(31));
            record.completed_by = Some(CompletedBy::Deadline);
            record.reason = Some(Reason::HeartbeatTimeout);
            record.message = Some("no heartbeat".into());
        }
        let desired = Desired::Valid(Box::new(spec));
        super::super::decide(Input {
            key: &key,
            desired: &desired,
            status: Some(&status),
            observed,
            seen_by_engine: false,
            log_tail: None,
            slot: Slot::Granted,
            now: at(now),
            jitter: 0.5,
            event: None,
            heartbeat: beat,
            terminate: false,
            index: None,
            lanes: BTreeMap::new(),
            dependencies: Dependencies::None,
            placement: Some(Placement::process("0000aaaa", "alpha")),
            scheduling: Default::default(),
        })
    }

    #[test]
    fn a_silent_attempt_fails_with_heartbeat_timeout_and_is_retried_as_any_failure() {
        let running = || {
            Observed::Container(ContainerState::Running {
                started_at: Some(at(0)),
            })
        };
        let half = Heartbeat {
            progress: Some(0.5),
            message: Some("frame 500/1000".into()),
            ..beat(10, Some(10))
        };
        // Heard from at 10: alive at 20, its progress recorded, looked at again by 40.
        let alive = decide_running(1, Phase::Running, running(), Some(half.clone()), 20);
        let status = alive.status.as_ref().unwrap();
        assert_eq!(status.phase, Phase::Running);
        assert_eq!(status.progress, Some(0.5));
        assert_eq!(status.progress_message.as_deref(), Some("frame 500/1000"));
        assert!(alive.actions.is_empty());
        assert!(
            alive.requeue_after.unwrap() <= Duration::from_secs(20),
            "{:?}",
            alive.requeue_after
        );
        // Silent since 10: at 40 the attempt fails, its container is deleted.
        let silent = decide_running(1, Phase::Running, running(), Some(half), 40);
        let status = silent.status.as_ref().unwrap();
        assert_eq!(
            (status.phase, status.reason),
            (Phase::Deleting, Some(Reason::HeartbeatTimeout))
        );
        let record = status.current().unwrap();
        assert_eq!(record.reason, Some(Reason::HeartbeatTimeout));
        assert_eq!(record.completed_by, Some(CompletedBy::Deadline));
        assert!(matches!(&silent.actions[..], [Action::DeleteContainer { .. }]));
        assert_eq!(status.progress, Some(0.5), "the last progress stays visible");
        // Its container gone: retried as any failure, and with no retries left, Failed.
        let gone = Observed::Container(ContainerState::Absent);
        let retried = decide_running(1, Phase::Deleting, gone.clone(), None, 41);
        let status = retried.status.unwrap();
        assert_eq!(
            (status.phase, status.reason),
            (Phase::Pending, Some(Reason::BackoffAfterFailure))
        );
        let failed = decide_running(0, Phase::Deleting, gone, None, 41);
        let status = failed.status.unwrap();
        assert_eq!(
            (status.phase, status.reason),
            (Phase::Failed, Some(Reason::HeartbeatTimeout))
        );
    }

    #[test]
    fn a_fan_outs_progress_counts_succeeded_indexes_whole() {
        let mut status = TaskStatus::new("f", "f", "h", at(0));
        status.indexes = (0..4).map(IndexStatus::pending).collect();
        status.indexes[0].phase = Phase::Succeeded;
        status.indexes[1].phase = Phase::Running;
        status.indexes[2].phase = Phase::Running;
        let mut beats = BTreeMap::new();
        beats.insert(
            1,
            Some(Heartbeat {
                progress: Some(0.5),
                message: Some("half".into()),
                ..beat(1, Some(1))
            }),
        );
        beats.insert(2, Some(beat(1, None)));
        record_fan_out_progress(&mut status, &beats, 4);
        assert_eq!(status.progress, Some(0.375));
        assert_eq!(status.progress_message.as_deref(), Some("index 1: half"));
        // Nothing watched: the figures stay as they were.
        record_fan_out_progress(&mut status, &BTreeMap::new(), 4);
        assert_eq!(status.progress, Some(0.375));
    }
}
