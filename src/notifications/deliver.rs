//! The delivery task: POSTs each target's pending events, oldest first, until a 2xx,
//! with backoff while a target fails. It runs beside the controller and never inside a
//! reconcile.

use super::event::{SIGNATURE_HEADER, signature};
use super::outbox::{Outbox, Target};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Delivery settings.
pub struct Delivery {
    pub outbox: Arc<Outbox>,
    /// `--notify-secret-file`: the HMAC key.
    pub secret: Option<Vec<u8>>,
    pub metrics: Arc<Metrics>,
    /// Rung when an event is kept.
    pub wake: Arc<Notify>,
    /// First wait after a failed POST, doubled at each failure in a row up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How long one POST may take.
    pub timeout: Duration,
}

/// A target's run of failures.
#[derive(Default, Clone, Copy)]
struct Failing {
    failures: u32,
    until: Option<Instant>,
}

impl Delivery {
    pub fn new(outbox: Arc<Outbox>, secret: Option<Vec<u8>>, metrics: Arc<Metrics>, wake: Arc<Notify>) -> Self {
        Delivery {
            outbox,
            secret,
            metrics,
            wake,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }

    /// Delivers until `stop`; then, for at most `linger`, goes on while events are
    /// pending (`--once` ends with its notifications sent, when the receivers answer).
    /// What is left is delivered by the next start.
    pub async fn run(self, stop: CancellationToken, linger: Duration) {
        let client = match reqwest::Client::builder().timeout(self.timeout).build() {
            Ok(client) => client,
            Err(err) => {
                tracing::error!("notifications: cannot make an HTTP client: {err}");
                return;
            }
        };
        let mut failing = vec![Failing::default(); self.outbox.targets().len()];
        let mut deadline: Option<Instant> = None;
        loop {
            let next = self.round(&client, &mut failing).await;
            let pending = self.outbox.pending_count();
            self.metrics.notifications_pending.set(pending as i64);
            if stop.is_cancelled() {
                let end = *deadline.get_or_insert_with(|| Instant::now() + linger);
                if pending == 0 || Instant::now() >= end {
                    if pending > 0 {
                        tracing::warn!("notifications: {pending} not delivered yet; the next start sends them");
                    }
                    return;
                }
                let wait = next.map_or(end, |n| n.min(end));
                tokio::time::sleep_until(wait).await;
                continue;
            }
            // Look again now and then anyway: an event kept by a replica that died
            // before it rang, or a file put back by hand.
            let wait = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(wait) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// One pass over every target not backing off. Returns when a target backing off
    /// may be tried again.
    async fn round(&self, client: &reqwest::Client, failing: &mut [Failing]) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for (target, failing) in self.outbox.targets().iter().zip(failing.iter_mut()) {
            if let Some(until) = failing.until
                && until > Instant::now()
            {
                next = Some(next.map_or(until, |n| n.min(until)));
                continue;
            }
            if let Err(why) = self.deliver_to(client, target).await {
                failing.failures += 1;
                let wait = self
                    .backoff
                    .saturating_mul(1 << failing.failures.min(16).saturating_sub(1))
                    .min(self.max_backoff);
                tracing::warn!(
                    url = %target.url,
                    "notification not delivered ({why}); retrying in {}",
                    humantime::format_duration(wait)
                );
                let until = Instant::now() + wait;
                failing.until = Some(until);
                next = Some(next.map_or(until, |n| n.min(until)));
            } else {
                *failing = Failing::default();
            }
        }
        next
    }

    /// Sends the target's pending events in order, stopping at the first refused.
    async fn deliver_to(&self, client: &reqwest::Client, target: &Target) -> Result<(), String> {
        let pending = self
            .outbox
            .pending(target)
            .map_err(|err| format!("cannot list {}: {err}", target.dir.display()))?;
        for path in pending {
            let body = match tokio::fs::read(&path).await {
                Ok(body) => body,
                // Delivered and removed meanwhile: nothing to do.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
            };
            let mut request = client.post(&target.url).header(
                reqwest::header::CONTENT_TYPE,
                "application/cloudevents+json; charset=utf-8",
            );
            if let Some(secret) = &self.secret {
                request = request.header(SIGNATURE_HEADER, signature(secret, &body));
            }
            let answer = request.body(body).send().await;
            match answer {
                Ok(answer) if answer.status().is_success() => {
                    self.metrics.notifications_delivered.inc();
                    tracing::debug!(url = %target.url, event = %path.display(), "notification delivered");
                    if let Err(err) = self.outbox.delivered(&path) {
                        tracing::warn!("cannot remove the delivered {}: {err}", path.display());
                    }
                }
                Ok(answer) => {
                    self.metrics.notifications_retried.inc();
                    return Err(format!("the receiver answered {}", answer.status()));
                }
                Err(err) => {
                    self.metrics.notifications_retried.inc();
                    return Err(format!("cannot reach the receiver: {err}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifications::event::Event;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// (signature, body) of each call a receiver got.
    type Seen = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

    /// A receiver that answers 500 to its first `fail` calls, then 200; its URL.
    async fn receiver(fail: usize, seen: Seen) -> String {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let calls = calls.clone();
                let seen = seen.clone();
                async move {
                    let signature = headers
                        .get(SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    seen.lock().unwrap().push((signature, body.to_vec()));
                    if calls.fetch_add(1, Ordering::SeqCst) < fail {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn failed_posts_are_retried_then_delivered_in_order_signed_and_counted() {
        let seen: Seen = Arc::default();
        let url = receiver(2, Arc::clone(&seen)).await;
        let state = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(state.path(), &[url]).unwrap());
        for id in ["first", "second"] {
            outbox
                .put(&Event {
                    id: id.into(),
                    body: id.as_bytes().to_vec(),
                })
                .unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        let metrics = Arc::new(Metrics::new());
        let mut delivery = Delivery::new(
            outbox.clone(),
            Some(b"key".to_vec()),
            metrics.clone(),
            Arc::new(Notify::new()),
        );
        delivery.backoff = Duration::from_millis(20);
        let stop = CancellationToken::new();
        stop.cancel();
        // Stopped at once, it lingers until the outbox is empty.
        delivery.run(stop, Duration::from_secs(10)).await;
        assert_eq!(outbox.pending_count(), 0);
        let seen = seen.lock().unwrap().clone();
        let bodies: Vec<&[u8]> = seen.iter().map(|(_, body)| body.as_slice()).collect();
        assert_eq!(
            bodies,
            [&b"first"[..], b"first", b"first", b"second"],
            "oldest first, retried"
        );
        assert!(seen.iter().all(|(sig, body)| *sig == signature(b"key", body)));
        assert_eq!(metrics.notifications_delivered.get(), 2);
        assert_eq!(metrics.notifications_retried.get(), 2);
        assert_eq!(metrics.notifications_pending.get(), 0);
        let text = metrics.render();
        assert!(text.contains("skiff_notifications_delivered_total 2"), "{text}");
    }
}
