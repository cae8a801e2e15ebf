//! The HTTP under `azure_storage_blob`: this crate's reqwest 0.12 (rustls), so that the
//! build carries one reqwest, with timeouts that turn a hung endpoint into an error the
//! controller retries. It counts requests, so that a poll cycle can say what it cost.

use async_trait::async_trait;
use azure_core::error::{Error, ErrorKind};
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::{AsyncRawResponse, Body, Method, Request};
use std::collections::HashMap;
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
        let method = match request.method() {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
            Method::Patch => reqwest::Method::PATCH,
            Method::Head => reqwest::Method::HEAD,
            other => {
                return Err(Error::with_message(
                    ErrorKind::Other,
                    format!("the blob transport cannot send {other:?}"),
                ));
            }
        };
        let url = request.url();
        let counter = match method {
            reqwest::Method::GET if url.query_pairs().any(|(k, v)| k == "comp" && v == "list") => &self.counters.lists,
            reqwest::Method::GET => &self.counters.gets,
            _ => &self.counters.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut outgoing = self.client.request(method, url.as_str());
        for (name, value) in request.headers().iter() {
            outgoing = outgoing.header(name.as_str(), value.as_str());
        }
        outgoing = match request.body() {
            Body::Bytes(bytes) => outgoing.body(bytes.to_vec()),
            // Statuses, manifests and lease calls are small; nothing here streams.
            #[allow(unreachable_patterns)]
            _ => {
                return Err(Error::with_message(
                    ErrorKind::Other,
                    "the blob transport does not send streamed bodies",
                ));
            }
        };
        // reqwest's error text carries the URL, and so a SAS: keep only its kind.
        let describe = |err: &reqwest::Error| {
            if err.is_timeout() {
                "the request timed out"
            } else if err.is_connect() {
                "cannot connect"
            } else {
                "the request failed"
            }
        };
        let response = outgoing.send().await.map_err(|err| {
            let kind = if err.is_connect() {
                ErrorKind::Connection
            } else {
                ErrorKind::Io
            };
            Error::with_message(kind, describe(&err))
        })?;
        let status = response.status().as_u16();
        let headers: HashMap<HeaderName, HeaderValue> = response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                let value = value.to_str().ok()?;
                Some((
                    HeaderName::from(name.as_str().to_string()),
                    HeaderValue::from(value.to_string()),
                ))
            })
            .collect();
        let body = response
            .bytes()
            .await
            .map_err(|err| Error::with_message(ErrorKind::Io, format!("reading the response: {}", describe(&err))))?;
        let stream: azure_core::http::response::PinnedStream =
            Box::pin(futures_util::stream::once(async move { Ok(body) }));
        Ok(AsyncRawResponse::new(status.into(), Headers::from(headers), stream))
    }
}
