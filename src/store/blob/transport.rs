//! The HTTP under `azure_storage_blob`: this crate's reqwest 0.12 (rustls), so that the
//! build carries one reqwest, with timeouts that turn a hung endpoint into an error the
//! controller retries. It counts requests, so that a poll cycle can say what it cost.

use async_trait::async_trait;
use azure_core::http::{AsyncRawResponse, Method, Request};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Requests sent, by kind: what a poll cycle or a benchmark reports.
#[derive(Debug, Default)]
pub struct Counters {
    pub lists: AtomicU64,
    pub gets: AtomicU64,
    pub other: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.lists.load(Ordering::Relaxed),
            self.gets.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
pub struct Transport {
    client: reqwest::Client,
    pub counters: Arc<Counters>,
}

impl Transport {
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            // Servers close idle connections (Azurite, on Node, after 5 s): a pooled one
            // kept longer can fail its next request, which would be reported as an outage.
            .pool_idle_timeout(Duration::from_secs(4))
            .build()?;
        Ok(Transport {
            client,
            counters: Arc::default(),
        })
    }
}

#[async_trait]
impl azure_core::http::HttpClient for Transport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let url = request.url();
        let counter = match request.method() {
            Method::Get if url.query_pairs().any(|(k, v)| k == "comp" && v == "list") => &self.counters.lists,
            Method::Get => &self.counters.gets,
            _ => &self.counters.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::azure::http::send(&self.client, request, "blob").await
    }
}
