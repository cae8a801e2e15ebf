//! Named semaphores shared by replicas on a blob store (Azurite): two controllers with
//! `--semaphore gpu=2` never run more than two tasks naming gpu between them, even when
//! one is killed mid-run, and every task finishes.

#[path = "support/azurite.rs"]
mod azurite;
mod support;

use azurite::{Container, azurite_or_skip, blob_controller, unique_container, wait_for};
use std::time::Duration;
use support::Workspace;

#[test]
fn twelve_tasks_naming_gpu_on_two_replicas_never_run_more_than_2_between_them() {
    let Some(endpoint) = azurite_or_skip("shared semaphores") else {
        return;
    };
    let ws = Workspace::new();
    let box_ = Container::create(&endpoint, &unique_container("semaphores"));
    let state = ws.root().join("state");
    let logs: Vec<_> = (0..2).map(|i| ws.root().join(format!("replica{i}.log"))).collect();
    let tasks: Vec<String> = (0..12).map(|i| format!("g{i:02}")).collect();
    for task in &tasks {
        box_.task(
            &format!("{task}.yaml"),
            &ws.overlap_script(1.0),
            "  semaphores: [gpu]\n",
        );
    }
    let mut replicas: Vec<Option<support::Controller>> = logs
        .iter()
        .map(|log| Some(blob_controller(&box_, &state, log, &["--semaphore", "gpu=2"])))
        .collect();
    wait_for(Duration::from_secs(120), "3 tasks to finish", &logs[0], || {
        ws.ledger_lines().iter().filter(|l| *l == "end").count() >= 3
    });
    // One replica dies holding slots: the other never runs past the limit meanwhile.
    replicas[1].take().unwrap().kill9();
    let mut said = std::collections::BTreeSet::new();
    wait_for(Duration::from_secs(180), "every task to succeed", &logs[0], || {
        // Sampled: what the waiting tasks say holds them.
        for task in &tasks {
            if let Some((bytes, _)) = box_.get(&format!("{task}.status.json"))
                && let Ok(status) = serde_json::from_slice::<serde_json::Value>(&bytes)
                && let Some(message) = status["message"].as_str()
                && message.contains("semaphore gpu")
            {
                said.insert(message.to_string());
            }
        }
        let phases = box_.phases();
        tasks
            .iter()
            .all(|t| phases.get(t).map(String::as_str) == Some("Succeeded"))
    });
    assert_eq!(ws.most_at_once(), 2, "{:?}", ws.ledger_lines());
    let slots: Vec<String> = box_
        .list()
        .into_iter()
        .filter(|b| b.starts_with(".skiff/semaphores/gpu/"))
        .collect();
    assert!(!slots.is_empty() && slots.len() <= 2, "{slots:?}");
    assert!(
        said.iter().any(|m| m.contains("semaphore gpu 2/2")),
        "a waiting task said which semaphore held it: {said:?}"
    );
    eprintln!("waiting tasks said: {said:?}");
    for replica in replicas.into_iter().flatten() {
        assert_eq!(replica.terminate(), Some(0));
    }
}
