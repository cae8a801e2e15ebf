//! What the engine's answer about a container means to the controller: its
//! [`ContainerState`], with the engine's quirks smoothed (the zero time for "never", a
//! start stamped after a quick finish).

use crate::runtime::{ContainerState, parse_time};
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};

pub(super) fn state_of(found: &ContainerInspectResponse) -> ContainerState {
    let Some(state) = &found.state else {
        // An answer without a state: the container exists but says nothing; look again.
        return ContainerState::Running { started_at: None };
    };
    let started_at = parse_time(state.started_at.as_deref());
    let finished_at = parse_time(state.finished_at.as_deref());
    let exited = || ContainerState::Exited {
        exit_code: state.exit_code.and_then(|code| i32::try_from(code).ok()),
        // The engine stamps the start after the process began, so a process that ends at
        // once can seem to finish before it started; a status must not say so.
        started_at: match (started_at, finished_at) {
            (Some(started), Some(finished)) if started > finished => Some(finished),
            _ => started_at,
        },
        finished_at,
        message: match &state.error {
            Some(error) if !error.is_empty() => Some(error.clone()),
            _ if state.oom_killed == Some(true) => Some("OOMKilled".to_string()),
            _ => None,
        },
    };
    match state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(
            ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING | ContainerStateStatusEnum::PAUSED,
        ) => ContainerState::Running { started_at },
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => exited(),
        // Removing, stopping, or a status this version does not know: go by the flag.
        _ if state.running == Some(true) => ContainerState::Running { started_at },
        _ => exited(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zero_time_is_no_time() {
        assert_eq!(parse_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(parse_time(None), None);
        assert_eq!(parse_time(Some("garbage")), None);
        let t = parse_time(Some("2026-11-21T10:00:00.123456789Z")).map(|t| t.timestamp_millis());
        assert_eq!(t, Some(1_795_255_200_123));
    }
}
