//! Fan-in: where a task's `dependsOn` stand, read from the dependencies' statuses, and
//! the graph of who depends on whom, to find cycles and to wake a task's dependents
//! when it changes.
//!
//! The graph is built from the specs seen so far, so a cycle is found by whichever of
//! its tasks is reconciled last; that one turns Invalid, which wakes the others, and
//! each of them then finds the cycle too.

use super::Shared;
use super::reconcile::Dependencies;
use crate::manifest::TaskSpec;
use crate::status::{Phase, TaskStatus};
use crate::store::StoreError;
use crate::task::TaskKey;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// Each task's dependencies, as its last valid spec names them.
#[derive(Default)]
pub(super) struct Graph {
    edges: Mutex<HashMap<TaskKey, Vec<TaskKey>>>,
}

impl Graph {
    pub fn record(&self, key: &TaskKey, depends_on: &[TaskKey]) {
        if let Ok(mut edges) = self.edges.lock() {
            if depends_on.is_empty() {
                edges.remove(key);
            } else {
                edges.insert(key.clone(), depends_on.to_vec());
            }
        }
    }

    pub fn forget(&self, key: &TaskKey) {
        self.record(key, &[]);
    }

    /// The tasks that depend on `key`.
    pub fn dependents(&self, key: &TaskKey) -> Vec<TaskKey> {
        let Ok(edges) = self.edges.lock() else {
            return Vec::new();
        };
        let mut found: Vec<TaskKey> = edges
            .iter()
            .filter(|(_, deps)| deps.contains(key))
            .map(|(task, _)| task.clone())
            .collect();
        found.sort();
        found
    }

    /// The shortest path of dependencies from `key` back to itself, if there is one:
    /// `[a, b, a]` when a depends on b and b on a.
    pub fn cycle_through(&self, key: &TaskKey) -> Option<Vec<TaskKey>> {
        let edges = self.edges.lock().ok()?;
        let mut parent: HashMap<&TaskKey, &TaskKey> = HashMap::new();
        let mut seen: HashSet<&TaskKey> = HashSet::new();
        let mut queue = VecDeque::from([key]);
        while let Some(node) = queue.pop_front() {
            for next in edges.get(node).into_iter().flatten() {
                if next == key {
                    let mut chain = Vec::new();
                    let mut at = node;
                    while at != key {
                        chain.push(at.clone());
                        at = parent[at];
                    }
                    chain.reverse();
                    let mut path = vec![key.clone()];
                    path.extend(chain);
                    path.push(key.clone());
                    return Some(path);
                }
                if seen.insert(next) {
                    parent.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
        None
    }
}

/// Where `spec.dependsOn` stands: each dependency Succeeded (or, with `condition:
/// finished`, Failed) makes it met; one Failed (with the default condition) or Invalid
/// fails it. `SKIFF_DEPENDENCY_RESULTS` gives each dependency's `result`, and a
/// `finished` one's `phase` (and, if it Failed, `reason`). `Err` holds why the manifest cannot run at all (a
/// cycle, or a task that does not exist), naming the file and the fix.
///
/// A dependency that goes away once this task's run has begun (its manifest deleted to
/// tidy up, say) changes nothing: the run was based on it, and stands.
pub(super) async fn evaluate(
    shared: &Shared,
    key: &TaskKey,
    spec: &TaskSpec,
    file: &str,
    status: Option<&TaskStatus>,
) -> Result<Result<Dependencies, String>, StoreError> {
    let begun = status.is_some_and(|s| s.spec_hash == spec.spec_hash && !s.dependencies.is_empty());
    shared.graph.record(key, &spec.depends_on);
    if spec.depends_on.is_empty() {
        return Ok(Ok(Dependencies::None));
    }
    if let Some(cycle) = shared.graph.cycle_through(key) {
        let path: Vec<&str> = cycle.iter().map(TaskKey::as_str).collect();
        let message = if cycle.len() == 2 {
            format!("{file}: spec.dependsOn: {key} depends on itself; remove {key} from dependsOn")
        } else {
            format!(
                "{file}: spec.dependsOn: the dependencies make a cycle: {}; remove one of these dependencies",
                path.join(" -> ")
            )
        };
        return Ok(Err(message));
    }
    let mut hashes = BTreeMap::new();
    let mut results = serde_json::Map::new();
    let mut waiting = Vec::new();
    let mut failed = Vec::new();
    for (i, dep) in spec.depends_on.iter().enumerate() {
        let has_manifest = shared.store.list_one(dep).await?.is_some_and(|l| l.has_manifest);
        if !has_manifest && begun {
            continue;
        }
        if !has_manifest {
            return Ok(Err(format!(
                "{file}: spec.dependsOn: there is no task {dep} (no manifest {dep}.yaml, .yml or .json in {}); name a task by its path without the extension",
                shared.store.location()
            )));
        }
        let status = match shared.store.read_status(dep).await {
            Ok(status) => status,
            Err(err) if err.needs_person() => {
                failed.push(format!("dependency {dep} has an unreadable status"));
                continue;
            }
            Err(err) => return Err(err),
        };
        // Which run of a scheduled task would count is not defined: refused, for now.
        if !begun && (status.as_ref().is_some_and(|s| s.schedule.is_some()) || has_schedule(shared, dep)) {
            return Ok(Err(format!(
                "{file}: spec.dependsOn[{i}]: {dep} has a schedule (spec.schedule), and depending on a scheduled task is not supported; remove {dep} from dependsOn, or remove spec.schedule from {dep}"
            )));
        }
        let Some(status) = status else {
            waiting.push(format!("{dep} (not started)"));
            continue;
        };
        if !status.spec_hash.is_empty() {
            hashes.insert(dep.to_string(), status.spec_hash.clone());
        }
        let said = status.message.clone().unwrap_or_default();
        // `condition: finished`: a Failed dependency ended too, and this task runs after it.
        let finished_will_do = spec.finished_dependencies.contains(dep);
        match status.phase {
            // A plain dependency's entry stays `{"result": ...}`, byte for byte as before
            // conditions existed (scripts parse it); a `finished` one says how it ended.
            Phase::Succeeded if !finished_will_do => {
                let result = status.result.clone().unwrap_or(serde_json::Value::Null);
                results.insert(dep.to_string(), serde_json::json!({ "result": result }));
            }
            Phase::Succeeded => {
                let result = status.result.clone().unwrap_or(serde_json::Value::Null);
                results.insert(
                    dep.to_string(),
                    serde_json::json!({ "result": result, "phase": status.phase }),
                );
            }
            Phase::Failed if finished_will_do => {
                let result = status.result.clone().unwrap_or(serde_json::Value::Null);
                results.insert(
                    dep.to_string(),
                    serde_json::json!({ "result": result, "phase": status.phase, "reason": status.reason }),
                );
            }
            Phase::Failed => failed.push(format!("dependency {dep} failed: {said}")),
            Phase::Invalid => failed.push(format!("dependency {dep} is invalid: {said}")),
            phase => waiting.push(format!("{dep} ({phase})")),
        }
    }
    Ok(Ok(if !failed.is_empty() {
        Dependencies::Failed {
            hashes,
            message: failed.join("; "),
        }
    } else if !waiting.is_empty() {
        Dependencies::Waiting { hashes, waiting }
    } else {
        Dependencies::Met {
            hashes,
            results: serde_json::Value::Object(results).to_string(),
        }
    }))
}

/// The dependency's last valid manifest, as this controller read it, has a schedule.
fn has_schedule(shared: &Shared, dep: &TaskKey) -> bool {
    let memory = shared.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    memory
        .get(dep)
        .and_then(|m| m.validated.as_ref())
        .is_some_and(|(_, spec)| spec.schedule.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> Graph {
        let graph = Graph::default();
        for (task, deps) in edges {
            let deps: Vec<TaskKey> = deps.iter().map(|d| TaskKey::new(*d)).collect();
            graph.record(&TaskKey::new(*task), &deps);
        }
        graph
    }

    fn names(path: Option<Vec<TaskKey>>) -> Option<Vec<String>> {
        path.map(|p| p.into_iter().map(|k| k.to_string()).collect())
    }

    #[test]
    fn cycles_are_spelled_out_from_the_task_that_asks() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
        assert_eq!(
            names(g.cycle_through(&TaskKey::new("a"))).unwrap(),
            ["a", "b", "c", "a"]
        );
        assert_eq!(
            names(g.cycle_through(&TaskKey::new("c"))).unwrap(),
            ["c", "a", "b", "c"]
        );
        // d depends on the cycle but is not in it.
        assert_eq!(g.cycle_through(&TaskKey::new("d")), None);
        let selfish = graph(&[("s", &["s"])]);
        assert_eq!(names(selfish.cycle_through(&TaskKey::new("s"))).unwrap(), ["s", "s"]);
    }

    #[test]
    fn a_diamond_is_not_a_cycle_and_dependents_are_found() {
        let g = graph(&[("merge", &["l", "r"]), ("l", &["split"]), ("r", &["split"])]);
        assert_eq!(g.cycle_through(&TaskKey::new("merge")), None);
        let dependents: Vec<String> = g
            .dependents(&TaskKey::new("split"))
            .into_iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(dependents, ["l", "r"]);
        g.forget(&TaskKey::new("l"));
        assert_eq!(g.dependents(&TaskKey::new("split")).len(), 1);
    }
}
