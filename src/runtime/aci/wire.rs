//! ARM's wire types for container groups (only the fields read, every one optional) and
//! how a group maps to what the controller sees: [`Provisioning`] for `ensure` to follow,
//! [`ContainerState`] for `inspect`, and a failed provisioning's reason from its events.

use crate::runtime::{ContainerState, parse_time};
use crate::status::Reason;
use serde::Deserialize;
use std::collections::BTreeMap;

// The group as ARM describes it: only the fields read here, every one optional (ARM
// leaves out what it has not yet, e.g. `instanceView` in listings).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Group {
    pub(super) name: Option<String>,
    pub(super) tags: Option<BTreeMap<String, String>>,
    properties: Option<GroupProperties>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GroupProperties {
    provisioning_state: Option<String>,
    containers: Option<Vec<GroupContainer>>,
    instance_view: Option<InstanceView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GroupContainer {
    name: Option<String>,
    properties: Option<ContainerProperties>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ContainerProperties {
    instance_view: Option<InstanceView>,
}

/// Both the group's and the container's `instanceView` (each has only some fields).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct InstanceView {
    current_state: Option<CurrentState>,
    events: Option<Vec<Event>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CurrentState {
    state: Option<String>,
    exit_code: Option<i64>,
    start_time: Option<String>,
    finish_time: Option<String>,
    detail_status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Event {
    name: Option<String>,
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GroupList {
    pub(super) value: Option<Vec<Group>>,
    pub(super) next_link: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Logs {
    pub(super) content: Option<String>,
}

/// Where a group's provisioning stands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Provisioning {
    /// Succeeded (or the container already ended): nothing left for `ensure` to follow.
    Done,
    InProgress,
    Deleting,
    Failed {
        reason: Reason,
        message: String,
    },
}

impl Group {
    pub(super) fn tag(&self, key: &str) -> Option<&str> {
        self.tags.as_ref()?.get(key).map(String::as_str)
    }

    pub(super) fn provisioning_state(&self) -> &str {
        self.properties
            .as_ref()
            .and_then(|p| p.provisioning_state.as_deref())
            .unwrap_or("")
    }

    /// The group's one container (by name; the first one if none has it).
    fn container(&self, name: &str) -> Option<&GroupContainer> {
        let containers = self.properties.as_ref()?.containers.as_ref()?;
        containers
            .iter()
            .find(|c| c.name.as_deref() == Some(name))
            .or_else(|| containers.first())
    }

    fn current_state(&self, name: &str) -> Option<&CurrentState> {
        self.container(name)?
            .properties
            .as_ref()?
            .instance_view
            .as_ref()?
            .current_state
            .as_ref()
    }

    /// What ACI says of a group still provisioning, for the task's status while it waits:
    /// `None` once it has started, ended or failed (then its state or failure says it all).
    pub(super) fn starting_progress(&self, name: &str) -> Option<String> {
        (self.provisioning(name) == Provisioning::InProgress).then(|| format!("aci: {}", self.progress(name)))
    }

    /// What ACI says of a group still starting: its last events (`Pulling: pulling image
    /// "..."`), for the status while it waits and for a start that timed out.
    pub(super) fn progress(&self, name: &str) -> String {
        let said: Vec<String> = self
            .events(name)
            .map(|e| {
                format!(
                    "{}: {}",
                    e.name.as_deref().unwrap_or("?"),
                    e.message.as_deref().unwrap_or("")
                )
            })
            .collect();
        let last: Vec<String> = said
            .into_iter()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if last.is_empty() {
            format!("provisioningState {}, no events", self.provisioning_state())
        } else {
            format!("provisioningState {}; {}", self.provisioning_state(), last.join("; "))
        }
    }

    /// The events of the container, then of the group.
    fn events(&self, name: &str) -> impl Iterator<Item = &Event> {
        let container = self
            .container(name)
            .and_then(|c| c.properties.as_ref()?.instance_view.as_ref()?.events.as_ref());
        let group = self
            .properties
            .as_ref()
            .and_then(|p| p.instance_view.as_ref()?.events.as_ref());
        container.into_iter().flatten().chain(group.into_iter().flatten())
    }

    pub(super) fn provisioning(&self, name: &str) -> Provisioning {
        let terminated = self.current_state(name).and_then(|s| s.state.as_deref()) == Some("Terminated");
        match self.provisioning_state() {
            _ if terminated => Provisioning::Done,
            "Succeeded" => Provisioning::Done,
            "Deleting" => Provisioning::Deleting,
            // Unhealthy and NotAccessible (2026-05-01's ContainerGroupProvisioningState) never
            // turn into a running group by themselves: failures, with ARM's words.
            state @ ("Failed" | "Canceled" | "Unhealthy" | "NotAccessible") => {
                let (reason, detail) = self.failure(name);
                Provisioning::Failed {
                    reason,
                    message: format!(
                        "aci: provisioning the container group {name} {}: {detail}",
                        state.to_lowercase()
                    ),
                }
            }
            // Pending, Creating, Accepted, Updating, Repairing, or not said yet.
            _ => Provisioning::InProgress,
        }
    }

    /// Why provisioning failed, from the events worth a person's eyes.
    fn failure(&self, name: &str) -> (Reason, String) {
        let mut details = Vec::new();
        let mut pull_failed = false;
        for event in self.events(name) {
            let event_name = event.name.as_deref().unwrap_or("");
            let message = event.message.as_deref().unwrap_or("");
            let bad = event.kind.as_deref() == Some("Warning")
                || ["Fail", "Error", "BackOff"].iter().any(|w| event_name.contains(w));
            if !bad {
                continue;
            }
            let lower = message.to_lowercase();
            if lower.contains("pull") || lower.contains("image") {
                pull_failed = true;
            }
            details.push(format!("{event_name}: {message}"));
        }
        if let Some(detail) = self.current_state(name).and_then(|s| s.detail_status.as_deref())
            && !detail.is_empty()
        {
            if detail.contains("ImagePull") {
                pull_failed = true;
            }
            details.push(detail.to_string());
        }
        let reason = if pull_failed {
            Reason::ImagePullFailed
        } else {
            Reason::CreateFailed
        };
        let detail = if details.is_empty() {
            "ARM gave no reason".to_string()
        } else {
            details.join("; ")
        };
        (reason, detail)
    }

    /// What the controller sees.
    pub(super) fn state(&self, name: &str) -> ContainerState {
        let current = self.current_state(name);
        let time = |t: Option<&String>| parse_time(t.map(String::as_str));
        if let Some(current) = current
            && current.state.as_deref() == Some("Terminated")
        {
            let started_at = time(current.start_time.as_ref());
            let finished_at = time(current.finish_time.as_ref());
            return ContainerState::Exited {
                exit_code: current.exit_code.and_then(|c| i32::try_from(c).ok()),
                started_at: match (started_at, finished_at) {
                    (Some(started), Some(finished)) if started > finished => Some(finished),
                    _ => started_at,
                },
                finished_at,
                message: current
                    .detail_status
                    .clone()
                    .filter(|d| !d.is_empty() && d != "Completed"),
            };
        }
        match self.provisioning(name) {
            Provisioning::Done => ContainerState::Running {
                started_at: current
                    .filter(|c| c.state.as_deref() == Some("Running"))
                    .and_then(|c| time(c.start_time.as_ref())),
            },
            Provisioning::Deleting => ContainerState::Exited {
                exit_code: None,
                started_at: None,
                finished_at: None,
                message: Some("the container group is being deleted".to_string()),
            },
            // Not running yet, or failed to: `ensure` follows it, and reports a failure.
            Provisioning::InProgress | Provisioning::Failed { .. } => ContainerState::Created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn group(json: Value) -> Group {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn states_follow_provisioning_then_the_container() {
        let g = group(json!({"properties": {"provisioningState": "Creating"}}));
        assert_eq!(g.state("c"), ContainerState::Created);
        for stuck in ["Unhealthy", "NotAccessible"] {
            let g = group(json!({"properties": {"provisioningState": stuck}}));
            match g.provisioning("c") {
                Provisioning::Failed { message, .. } => assert!(message.contains(&stuck.to_lowercase()), "{message}"),
                other => panic!("{stuck}: {other:?}"),
            }
        }
        let g = group(json!({"properties": {"provisioningState": "Succeeded", "containers": [
            {"name": "c", "properties": {"instanceView": {"currentState":
                {"state": "Running", "startTime": "2026-11-21T10:00:00Z"}}}}]}}));
        assert!(matches!(g.state("c"), ContainerState::Running { started_at: Some(_) }));
        let g = group(json!({"properties": {"provisioningState": "Succeeded", "containers": [
            {"name": "c", "properties": {"instanceView": {"currentState":
                {"state": "Terminated", "exitCode": 3, "detailStatus": "Error",
                 "startTime": "2026-11-21T10:00:00Z", "finishTime": "2026-11-21T10:00:05Z"}}}}]}}));
        match g.state("c") {
            ContainerState::Exited { exit_code, message, .. } => {
                assert_eq!(exit_code, Some(3));
                assert_eq!(message.as_deref(), Some("Error"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_group_still_starting_reports_acis_events_and_one_started_none() {
        let g = group(json!({"properties": {"provisioningState": "Creating", "containers": [
            {"name": "c", "properties": {"instanceView": {
                "currentState": {"state": "Waiting"},
                "events": [{"name": "Pulling", "type": "Normal", "message": "pulling image \"big:1\""}]}}}]}}));
        assert_eq!(
            g.starting_progress("c").as_deref(),
            Some("aci: provisioningState Creating; Pulling: pulling image \"big:1\"")
        );
        let g = group(json!({"properties": {"provisioningState": "Pending"}}));
        assert_eq!(
            g.starting_progress("c").as_deref(),
            Some("aci: provisioningState Pending, no events")
        );
        let g = group(json!({"properties": {"provisioningState": "Succeeded"}}));
        assert_eq!(g.starting_progress("c"), None);
        let g = group(json!({"properties": {"provisioningState": "Unhealthy"}}));
        assert_eq!(g.starting_progress("c"), None, "a failure says it itself");
    }

    #[test]
    fn a_failed_pull_is_a_permanent_image_pull_failure_with_arms_words() {
        let g = group(json!({"properties": {"provisioningState": "Failed", "containers": [
            {"name": "c", "properties": {"instanceView": {
                "currentState": {"state": "Waiting", "detailStatus": "ErrImagePull"},
                "events": [{"name": "Pulling", "type": "Normal", "message": "pulling image \"nope\""},
                           {"name": "Failed", "type": "Warning", "message": "Failed to pull image \"nope\": not found"}]}}}]}}));
        assert_eq!(g.state("c"), ContainerState::Created, "ensure reports it");
        match g.provisioning("c") {
            Provisioning::Failed { reason, message } => {
                assert_eq!(reason, Reason::ImagePullFailed);
                assert!(message.contains("Failed to pull image"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
