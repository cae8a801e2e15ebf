//! The engine's event stream: the names of this controller's containers that started,
//! died, ran out of memory or were removed, so that an exit is seen at once
//! (`completedBy: engine`). It reconnects with backoff when the engine goes away, and
//! names every container again then, so that nothing missed meanwhile stays unseen.

use super::Inner;
use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Backoff between reconnections to the event stream.
const EVENTS_BACKOFF_MIN: Duration = Duration::from_millis(200);
const EVENTS_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// An event stream that lasted this long was a working connection: the backoff starts
/// again from its minimum.
const EVENTS_HEALTHY: Duration = Duration::from_secs(10);

impl Inner {
    /// Follows the engine's event stream for as long as `tx` has a receiver, sending the
    /// names of containers that started, died, ran out of memory or were removed. The
    /// stream is reopened whenever it ends (the engine restarted, the socket broke).
    pub(super) async fn watch_events(self: Arc<Self>, tx: mpsc::UnboundedSender<String>) {
        let mut backoff = EVENTS_BACKOFF_MIN;
        // Whether the current outage was reported: one warning per outage, not per try.
        let mut reported = false;
        // Until the engine was reached once, its absence is no news: a controller that
        // runs only process tasks need not have one, and one that runs docker tasks hears
        // of it loudly from their creates.
        let mut connected = false;
        loop {
            match self.follow_events(&tx, reported).await {
                Followed::ReceiverGone => return,
                Followed::Failed(err) => {
                    if !reported {
                        if connected {
                            tracing::warn!("docker events: {err}; retrying");
                        } else {
                            tracing::debug!("docker events: {err}; retrying");
                        }
                        reported = true;
                    }
                }
                Followed::Ended { reason, healthy } => {
                    connected = true;
                    tracing::warn!("docker events: {reason}; reconnecting");
                    reported = true;
                    if healthy {
                        backoff = EVENTS_BACKOFF_MIN;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(EVENTS_BACKOFF_MAX);
        }
    }

    /// One connection to the event stream, from the listing that opens it to its end.
    async fn follow_events(&self, tx: &mpsc::UnboundedSender<String>, reconnecting: bool) -> Followed {
        let docker = match self.client().await {
            Ok(docker) => docker,
            Err(err) => return Followed::Failed(err.to_string()),
        };
        // Ask for events from a little before the listing below, so that nothing that
        // happens between the listing and the stream's start is missed (the engine replays
        // its recent events; the margin covers the rounding to seconds).
        let since = chrono::Utc::now().timestamp() - 2;
        // Everything that may have changed while no stream was open (before the start, or
        // while the engine restarted) is looked at again.
        match self.list(docker).await {
            Ok(containers) => {
                for container in containers {
                    if tx.send(container.name).is_err() {
                        return Followed::ReceiverGone;
                    }
                }
            }
            Err(err) => return Followed::Failed(err.to_string()),
        }
        if reconnecting {
            tracing::info!("docker events: following the engine's events");
        }
        let mut filters = self.label_filters();
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert(
            "event".into(),
            ["start", "die", "oom", "destroy"].map(String::from).to_vec(),
        );
        let options = EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        };
        let opened = Instant::now();
        let mut stream = docker.events(Some(options));
        let reason = loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    let name = event.actor.and_then(|actor| actor.attributes?.remove("name"));
                    if let Some(name) = name
                        && tx.send(name).is_err()
                    {
                        return Followed::ReceiverGone;
                    }
                }
                Some(Err(err)) => break err.to_string(),
                None => break "the engine closed the stream".to_string(),
            }
        };
        Followed::Ended {
            reason,
            // A stream that worked for a while was a good connection: the backoff starts
            // again from its minimum, while one that fails at once keeps backing off. (Not
            // "delivered an event": the replay of recent events delivers some at once.)
            healthy: opened.elapsed() >= EVENTS_HEALTHY,
        }
    }
}

/// How one connection to the event stream ended.
enum Followed {
    /// Nobody listens any more: stop for good.
    ReceiverGone,
    /// It could not be opened.
    Failed(String),
    Ended {
        reason: String,
        healthy: bool,
    },
}
