//! Replicas sharing a store tell each other where their containers live.
//!
//! A replica that takes over a dead one's task adopts its container only if it can see
//! it: each runtime says where its containers live ([`Placement`]), and how two
//! placements differ ([`Placement::difference`]). Otherwise the survivor gives the
//! attempt up (`PlacementUnreachable`) and runs the next one: the attempt may then run
//! twice, once there and once here. Each replica therefore publishes its placement per
//! runtime ([`ReplicaRecord`]) with a heartbeat, and warns once, naming the other
//! replica, when a live one places a runtime's containers elsewhere: the operator learns
//! of it before a replica dies, not after.

use super::Shared;
use crate::status::Placement;
use crate::store::ownership::{Ownership, ReplicaRecord};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the presence record is refreshed and the others' are read.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A record refreshed less recently than this belongs to a replica that is gone.
const LIVE: Duration = Duration::from_secs(35);
/// A record this stale is removed by whichever replica sees it: it only clutters.
const FORGET: Duration = Duration::from_secs(24 * 3600);

/// Publishes this replica's presence until `shutdown`, then withdraws it.
pub(super) async fn announce(shared: Arc<Shared>, owner: Arc<dyn Ownership>, shutdown: CancellationToken) {
    let id = owner.replica_id();
    let name = shared.config.replica_name.clone();
    let started_at = shared.clock.now();
    // Other replicas (by id) and runtimes already warned about: once is enough.
    let mut warned: HashSet<(String, String)> = HashSet::new();
    loop {
        let placements = placements(&shared).await;
        let record = ReplicaRecord {
            id: id.clone(),
            name: name.clone(),
            placements,
            started_at,
            heartbeat_at: shared.clock.now(),
        };
        match owner.publish(&record).await {
            Ok(()) => {}
            Err(err) => tracing::debug!("cannot publish this replica's presence; will retry: {err}"),
        }
        match owner.replicas().await {
            Ok(others) => {
                for other in others.iter().filter(|o| o.id != id) {
                    let age = age(shared.clock.now(), other);
                    if age > FORGET {
                        owner.withdraw(&other.id).await;
                        continue;
                    }
                    if age > LIVE {
                        continue;
                    }
                    for (runtime, warning) in differences(&record, other) {
                        if warned.insert((other.id.clone(), runtime)) {
                            tracing::warn!("{warning}");
                        }
                    }
                }
            }
            Err(err) => tracing::debug!("cannot read the other replicas' presence; will retry: {err}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
    owner.withdraw(&id).await;
}

/// Each runtime's placement, for those that can say now (an engine that is down is
/// asked again at the next heartbeat).
async fn placements(shared: &Shared) -> BTreeMap<String, Placement> {
    let mut placements = BTreeMap::new();
    for (kind, runtime) in &shared.runtimes {
        if let Ok(placement) = runtime.placement().await {
            placements.insert(kind.as_str().to_string(), placement);
        }
    }
    placements
}

fn age(now: crate::status::Timestamp, record: &ReplicaRecord) -> Duration {
    (now - record.heartbeat_at).to_std().unwrap_or_default()
}

/// For each runtime both replicas use but place differently: the warning that says so,
/// keyed by runtime.
pub(super) fn differences(ours: &ReplicaRecord, other: &ReplicaRecord) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (runtime, mine) in &ours.placements {
        let Some(theirs) = other.placements.get(runtime) else {
            continue;
        };
        if theirs == mine {
            continue;
        }
        let difference = mine.difference(runtime, theirs);
        found.push((
            runtime.clone(),
            format!(
                "replica {} {} ({theirs}; this replica, {}: {mine}): a task it held when it died will be re-run, not adopted (reason PlacementUnreachable; its attempt may still be running there). To adopt instead, {}.",
                other.name, difference.what, ours.name, difference.remedy
            ),
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str, placements: &[(&str, Placement)]) -> ReplicaRecord {
        ReplicaRecord {
            id: id.into(),
            name: name.into(),
            placements: placements.iter().map(|(k, p)| (k.to_string(), p.clone())).collect(),
            started_at: chrono::Utc::now(),
            heartbeat_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_replica_placing_a_shared_runtime_elsewhere_is_named_once_per_runtime() {
        let engine = Placement::docker("ENGINE-1", "/var/lib/skiff");
        let a = record(
            "a",
            "alpha",
            &[("process", Placement::process("s1", "h")), ("docker", engine.clone())],
        );
        let b = record(
            "b",
            "beta",
            &[("process", Placement::process("s2", "h")), ("docker", engine)],
        );
        let found = differences(&a, &b);
        assert_eq!(found.len(), 1, "{found:?}");
        let (runtime, warning) = &found[0];
        assert_eq!(runtime, "process");
        assert!(
            warning.starts_with("replica beta runs processes under another state folder"),
            "{warning}"
        );
        assert!(
            warning.ends_with("To adopt instead, give the replicas one --state-dir."),
            "{warning}"
        );
        assert!(
            warning.contains("state folder s2") && warning.contains("re-run, not adopted"),
            "{warning}"
        );
        let far = record("c", "gamma", &[("process", Placement::process("s3", "elsewhere"))]);
        let (_, warning) = &differences(&a, &far)[0];
        assert!(
            warning.starts_with("replica gamma runs processes on another machine"),
            "{warning}"
        );
    }

    #[test]
    fn replicas_placing_alike_or_on_runtimes_not_shared_are_not_warned_of() {
        let a = record("a", "alpha", &[("process", Placement::process("s1", "h"))]);
        let same = record("b", "beta", &[("process", Placement::process("s1", "h"))]);
        let other_runtime = record("c", "gamma", &[("aci", Placement::aci("S", "G", "o"))]);
        assert!(differences(&a, &same).is_empty());
        assert!(differences(&a, &other_runtime).is_empty());
    }
}
