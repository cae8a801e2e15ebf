//! The controller's Prometheus metrics, named in the manner of controller-runtime.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    /// Reconciles by result: `success`, `error`, `requeue`.
    pub reconciles: Family<Labels, Counter>,
    pub reconcile_seconds: Histogram,
    pub queue_depth: Gauge,
    /// Live containers (tasks holding a slot) by runtime.
    pub live_containers: Family<Labels, Gauge>,
    /// Tasks by phase, as last written.
    pub tasks: Family<Labels, Gauge>,
    /// Completion callbacks by HTTP answer.
    pub callbacks: Family<Labels, Counter>,
    /// Heartbeats by HTTP answer.
    pub heartbeats: Family<Labels, Counter>,
    /// Event latency: callback accepted to status written, in seconds.
    pub event_to_status_seconds: Histogram,
    /// ARM's `x-ms-ratelimit-remaining-*` headers, by header.
    pub aci_ratelimit_remaining: Family<Labels, Gauge>,
    /// Creates the ACI create quota allows now, by window.
    pub aci_create_tokens: Family<Labels, Gauge>,
    /// Completion notifications answered 2xx.
    pub notifications_delivered: Counter,
    /// Completion notification POSTs that failed and will be retried.
    pub notifications_retried: Counter,
    /// Completion notifications in the outbox, not yet delivered.
    pub notifications_pending: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("skiff");
        let reconciles = Family::<Labels, Counter>::default();
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let queue_depth = Gauge::default();
        let live_containers = Family::<Labels, Gauge>::default();
        let tasks = Family::<Labels, Gauge>::default();
        let callbacks = Family::<Labels, Counter>::default();
        let heartbeats = Family::<Labels, Counter>::default();
        let event_to_status_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let aci_ratelimit_remaining = Family::<Labels, Gauge>::default();
        let aci_create_tokens = Family::<Labels, Gauge>::default();
        let notifications_delivered = Counter::default();
        let notifications_retried = Counter::default();
        let notifications_pending = Gauge::default();
        registry.register(
            "notifications_delivered",
            "Completion notifications delivered (answered 2xx)",
            notifications_delivered.clone(),
        );
        registry.register(
            "notifications_retried",
            "Completion notification POSTs that failed, to be retried",
            notifications_retried.clone(),
        );
        registry.register(
            "notifications_pending",
            "Completion notifications in the outbox, not yet delivered",
            notifications_pending.clone(),
        );
        registry.register(
            "aci_ratelimit_remaining",
            "ARM's x-ms-ratelimit-remaining-* headers, as last answered",
            aci_ratelimit_remaining.clone(),
        );
        registry.register(
            "aci_create_tokens",
            "Container group creates the ACI create quota allows now, by window",
            aci_create_tokens.clone(),
        );
        registry.register("reconcile", "Reconciles by result", reconciles.clone());
        registry.register(
            "reconcile_time_seconds",
            "Time a reconcile took",
            reconcile_seconds.clone(),
        );
        registry.register(
            "workqueue_depth",
            "Tasks waiting in the work queue",
            queue_depth.clone(),
        );
        registry.register(
            "live_containers",
            "Containers that may exist, by runtime",
            live_containers.clone(),
        );
        registry.register("tasks", "Tasks by phase", tasks.clone());
        registry.register("callbacks", "Completion callbacks by HTTP answer", callbacks.clone());
        registry.register("heartbeats", "Heartbeats by HTTP answer", heartbeats.clone());
        registry.register(
            "event_to_status_seconds",
            "From an accepted completion callback to the status that records it",
            event_to_status_seconds.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_seconds,
            queue_depth,
            live_containers,
            tasks,
            callbacks,
            heartbeats,
            event_to_status_seconds,
            aci_ratelimit_remaining,
            aci_create_tokens,
            notifications_delivered,
            notifications_retried,
            notifications_pending,
        }
    }

    pub fn label(name: &'static str, value: impl Into<String>) -> Labels {
        vec![(name, value.into())]
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }
}
