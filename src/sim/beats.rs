//! Containers that heartbeat, in the simulator. Half the containers of a task with
//! `heartbeatTimeout` (chosen by their attempt id, so no seed's draws change) POST a beat
//! each second while they run, to every live replica's board, each taken as the API takes
//! it (`api::heartbeat`: live on the board, else in the stored status); the others never
//! beat. Checked at each status write: a beating container's attempt, of any run
//! (overlapping ones under `concurrencyPolicy: Allow` too), never fails `HeartbeatTimeout`
//! while it runs (its beats counted for another run's attempt, or another's for it,
//! would), and no attempt fails so before the shortest timeout generated.

use super::world::{Container, State, World};
use crate::heartbeat::HeartbeatBody;
use crate::runtime::{LABEL_ATTEMPT, LABEL_INDEX};
use crate::status::{AttemptRecord, Reason, TaskStatus};
use crate::task::TaskKey;
use std::sync::Arc;
use std::time::Duration;

/// How often a beating container beats: well within the shortest timeout generated
/// (twice a poll interval of at least 1 s).
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// The shortest `heartbeatTimeout` the generator gives.
const SHORTEST_TIMEOUT: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// Whether a container made with this environment and attempt id beats: only where
/// replicas' boards are registered (a schedule's; a scenario's containers never beat).
pub(super) fn beats(state: &State, env: &[(String, String)], attempt_id: &str) -> bool {
    !state.boards.is_empty()
        && env.iter().any(|(name, _)| name == "SKIFF_HEARTBEAT_URL")
        && attempt_id.bytes().last().is_some_and(|b| b % 2 == 0)
}

/// Beats for every beating container that runs, each second, for as long as the
/// schedule plays.
pub(super) async fn beat_forever(world: Arc<World>) {
    loop {
        tokio::time::sleep(BEAT_EVERY).await;
        let now = world.now();
        let state = world.lock();
        for container in state.containers.values() {
            if container.beats && !container.lost && now < container.ends {
                beat(&state, container, now);
            }
        }
    }
}

fn beat(state: &State, container: &Container, now: crate::status::Timestamp) {
    let Some(key) = &container.task else { return };
    let number = |label: &str| container.labels.get(label).and_then(|v| v.parse::<u32>().ok());
    let (Some(attempt), Some(index)) = (number(LABEL_ATTEMPT), number(LABEL_INDEX)) else {
        return;
    };
    let id = container.attempt_id.as_str();
    let stored = state
        .statuses
        .get(key)
        .is_some_and(|s| crate::api::live_attempt(&s.status, attempt, index, id).is_some());
    for board in state.boards.values() {
        if stored || board.is_live(key, index, attempt, id) {
            board.beat(key, index, attempt, id, now, HeartbeatBody::default());
        }
    }
}

impl State {
    /// See the module's doc.
    pub(super) fn check_silences(&mut self, key: &TaskKey, new: &TaskStatus, now: crate::status::Timestamp) {
        let silent = |a: &&AttemptRecord| a.reason == Some(Reason::HeartbeatTimeout);
        let mut problems = Vec::new();
        for attempt in new.all_attempts().filter(silent) {
            if let (Some(start), Some(end)) = (attempt.started_at, attempt.finished_at)
                && end - start < SHORTEST_TIMEOUT
            {
                problems.push(format!(
                    "{key}: attempt {} ({}) failed HeartbeatTimeout {} ms after its start, before any timeout",
                    attempt.number,
                    attempt.container,
                    (end - start).num_milliseconds()
                ));
            }
            let beating = self.containers.get(&attempt.container).is_some_and(|c| {
                c.beats && !c.lost && now < c.ends && attempt.attempt_id().as_deref() == Some(c.attempt_id.as_str())
            });
            if beating {
                problems.push(format!(
                    "{key}: attempt {} ({}) failed HeartbeatTimeout while its container beats each second: {:?}",
                    attempt.number, attempt.container, attempt.message
                ));
            }
        }
        for problem in problems {
            self.violation(problem);
        }
        let overlapping = new.schedule.iter().flat_map(|s| s.overlapping.iter());
        if overlapping.flat_map(|r| r.attempts.iter()).any(|a| silent(&a)) {
            self.stats.overlapping_heartbeat_timeouts += 1;
        }
    }
}
