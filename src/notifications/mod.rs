//! Completion notifications (`--notify URL`): a CloudEvents 1.0 event for every
//! terminal transition of a task, delivered at least once.
//!
//! - [`event`] builds the event: its stable id, its body, its signature;
//! - [`outbox`] keeps each event for each target as a file in the state folder, written
//!   before the status that records the transition (the controller calls
//!   [`Notifier::terminal`] through its `TransitionSink`);
//! - [`deliver`] POSTs what the outbox holds, oldest first, and deletes each event on a
//!   2xx; a target that fails is retried with backoff. Nothing of it runs inside a
//!   reconcile: a receiver that is down or slow never holds the controller up.
//!
//! A crash after an event is written and before its POST is answered delivers it
//! again after the restart, with the same id: receivers dedupe on `id`.

pub mod deliver;
pub mod event;
pub mod outbox;

use crate::controller::transitions::TransitionSink;
use crate::status::TaskStatus;
use crate::task::TaskKey;
use outbox::Outbox;
use std::sync::Arc;
use tokio::sync::Notify;

pub use deliver::Delivery;

/// The controller's side: turns a transition into an event in the outbox and wakes the
/// delivery.
pub struct Notifier {
    outbox: Arc<Outbox>,
    /// The CloudEvents `source`: the controller's store.
    source: String,
    wake: Arc<Notify>,
}

impl Notifier {
    pub fn new(outbox: Arc<Outbox>, source: String, wake: Arc<Notify>) -> Self {
        Notifier { outbox, source, wake }
    }
}

#[async_trait::async_trait]
impl TransitionSink for Notifier {
    async fn terminal(&self, key: &TaskKey, before: Option<&TaskStatus>, status: &TaskStatus) -> std::io::Result<()> {
        let events: Vec<event::Event> = if status.schedule.is_some() && status.phase != crate::status::Phase::Invalid {
            crate::controller::transitions::ended_runs(before, status)
                .into_iter()
                .filter_map(|run| event::Event::of_run(&self.source, key, status, run))
                .collect()
        } else {
            event::Event::of(&self.source, key, status).into_iter().collect()
        };
        if events.is_empty() {
            return Ok(());
        }
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || events.iter().try_for_each(|event| outbox.put(event)))
            .await
            .map_err(std::io::Error::other)??;
        self.wake.notify_one();
        Ok(())
    }
}
