//! `spec.heartbeatTimeout`: how long an attempt may stay silent before it fails with
//! `HeartbeatTimeout`. Heartbeats arrive on the HTTP API, so the field needs `--listen`.

use super::context::ValidationContext;
use super::values::parse_duration;
use crate::manifest::wire::Spec;
use std::time::Duration;

/// The shortest timeout accepted: a heartbeat crosses HTTP and a reconcile, and a
/// shorter one would fail healthy containers on a busy machine.
pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) fn timeout(spec: &Spec, ctx: &ValidationContext<'_>, fail: &mut impl FnMut(String)) -> Option<Duration> {
    let text = spec.heartbeat_timeout.as_ref()?;
    let timeout = match parse_duration(text) {
        Ok(d) if d < MIN_HEARTBEAT_TIMEOUT => {
            fail(format!(
                "spec.heartbeatTimeout: {text:?} is too short; use at least 1s (e.g. 30s), or remove it for no heartbeat check"
            ));
            return None;
        }
        Ok(d) => d,
        Err(()) => {
            fail(format!(
                "spec.heartbeatTimeout: {text:?} is not a duration; write e.g. 30s or 5m"
            ));
            return None;
        }
    };
    if !ctx.features.event_completion {
        fail(
            "spec.heartbeatTimeout: heartbeats reach the controller's HTTP API; start it with --listen 127.0.0.1:PORT (and --callback-url if containers reach it at another address), or remove heartbeatTimeout"
                .into(),
        );
        return None;
    }
    Some(timeout)
}

#[cfg(test)]
mod tests {
    use crate::manifest::{Features, RuntimeKind, ValidationContext, parse_manifest, validate};

    fn check(value: &str, api: bool) -> Result<Option<std::time::Duration>, String> {
        let text =
            format!("apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [x]\n  heartbeatTimeout: {value}\n");
        let task = parse_manifest("h.yaml", text.as_bytes()).map_err(|e| e.to_string())?;
        let ctx = ValidationContext {
            default_runtime: RuntimeKind::Process,
            allow_host_paths: &[],
            features: Features::enabled([RuntimeKind::Process], api),
            env_is_set: None,
        };
        validate("h.yaml", "h", &task, &ctx)
            .map(|spec| spec.heartbeat_timeout)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    }

    /// Each run of a scheduled task is watched on its own, overlapping ones (Allow) too.
    #[test]
    fn heartbeats_are_accepted_under_every_concurrency_policy() {
        let ctx = ValidationContext {
            default_runtime: RuntimeKind::Process,
            allow_host_paths: &[],
            features: Features::enabled([RuntimeKind::Process], true),
            env_is_set: None,
        };
        for policy in ["Allow", "Forbid", "Replace"] {
            let text = format!(
                "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [x]\n  heartbeatTimeout: 30s\n  schedule: {{cron: '@every 5s', concurrencyPolicy: {policy}}}\n"
            );
            let task = parse_manifest("h.yaml", text.as_bytes()).unwrap();
            let spec = validate("h.yaml", "h", &task, &ctx).unwrap_or_else(|errors| panic!("{policy}: {errors:?}"));
            assert_eq!(
                spec.heartbeat_timeout,
                Some(std::time::Duration::from_secs(30)),
                "{policy}"
            );
        }
    }

    #[test]
    fn a_heartbeat_timeout_is_a_duration_of_at_least_a_second_and_needs_the_api() {
        assert_eq!(check("30s", true).unwrap(), Some(std::time::Duration::from_secs(30)));
        assert_eq!(check("1s", true).unwrap(), Some(std::time::Duration::from_secs(1)));
        let short = check("500ms", true).unwrap_err();
        assert!(
            short.contains("h.yaml") && short.contains("spec.heartbeatTimeout") && short.contains("at least 1s"),
            "{short}"
        );
        let garbage = check("soon", true).unwrap_err();
        assert!(
            garbage.contains("spec.heartbeatTimeout") && garbage.contains("e.g. 30s"),
            "{garbage}"
        );
        let no_api = check("30s", false).unwrap_err();
        assert!(
            no_api.contains("spec.heartbeatTimeout") && no_api.contains("--listen"),
            "{no_api}"
        );
    }
}
