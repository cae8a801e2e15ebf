//! `GET /v1/watch`: every status change as a Server-Sent Event, for the dashboard and
//! for scripts.
//!
//! The controller is not touched: [`WatchedStore`] wraps the store it writes through and
//! publishes on a broadcast channel after every successful `write_status` and
//! `delete_status`. Whoever writes through the wrapped store (the controller, the API's
//! rerun) is seen; a person editing a status file by hand is not, which is what the
//! periodic `resync` event of a lagging reader and a page reload are for.
//!
//! Events (`text/event-stream`):
//! - `ready` once on connect, data `{"seq": N}`: the stream is live; fetch `/v1/tasks`
//!   now and apply the events that follow.
//! - `status`, id `N`, data: the full status object just written (as `GET /v1/tasks/{task}`).
//! - `deleted`, id `N`, data `{"task": "..."}`: the status was removed (rerun, cancel).
//! - `resync`, data `{"missed": N}`: this reader fell behind and events were dropped;
//!   fetch `/v1/tasks` again.

use crate::status::TaskStatus;
use crate::store::{Listed, ManifestRead, Store, StoreError, StoreEvent, ownership::Ownership};
use crate::task::TaskKey;
use async_trait::async_trait;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Events held for slow readers before they lag; a page that falls this far behind is
/// told to refetch instead.
const CAPACITY: usize = 1024;

/// One change, serialized once for every reader.
#[derive(Debug, Clone)]
pub struct Change {
    /// Increases by one per change, from 1, for this controller process.
    pub seq: u64,
    /// `status` or `deleted`.
    pub kind: &'static str,
    pub data: Arc<str>,
}

/// The broadcast side: what [`WatchedStore`] publishes to and `/v1/watch` reads from.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Change>,
    seq: Arc<AtomicU64>,
    closed: CancellationToken,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Hub {
            tx,
            seq: Arc::new(AtomicU64::new(0)),
            closed: CancellationToken::new(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// The last sequence number handed out.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Cancelled at shutdown: other streams of the API end with it.
    pub fn closed_token(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Ends every stream (at shutdown), so that no reader waits on a controller that is gone.
    pub fn close(&self) {
        self.closed.cancel();
    }

    fn publish(&self, kind: &'static str, data: impl FnOnce() -> String) {
        // Nobody listening: nothing to serialize (the common case, without a dashboard).
        if self.tx.receiver_count() == 0 {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.tx.send(Change {
            seq,
            kind,
            data: Arc::from(data()),
        });
    }

    fn status_written(&self, status: &TaskStatus) {
        self.publish("status", || serde_json::to_string(status).unwrap_or_default());
    }

    fn status_deleted(&self, key: &TaskKey) {
        self.publish("deleted", || serde_json::json!({"task": key.as_str()}).to_string());
    }

    /// The SSE response for one reader.
    pub fn sse(&self) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
        let rx = self.subscribe();
        let ready = Event::default()
            .event("ready")
            .data(serde_json::json!({"seq": self.seq()}).to_string());
        let closed = self.closed.clone();
        let stream = futures_util::stream::unfold((Some(ready), rx, closed), |(first, mut rx, closed)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (None, rx, closed)));
            }
            let received = tokio::select! {
                _ = closed.cancelled() => return None,
                received = rx.recv() => received,
            };
            let event = match received {
                Ok(change) => Event::default()
                    .event(change.kind)
                    .id(change.seq.to_string())
                    .data(&*change.data),
                // Dropped events cannot be replayed: the reader refetches the list.
                Err(broadcast::error::RecvError::Lagged(missed)) => Event::default()
                    .event("resync")
                    .data(serde_json::json!({"missed": missed}).to_string()),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(event), (None, rx, closed)))
        });
        // A comment every 15 s keeps proxies from closing an idle stream, and lets a
        // reader notice a dead connection.
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    }
}

/// A [`Store`] that publishes each successful status write and delete on a [`Hub`].
/// Everything else passes straight through, `ownership` and the conditional reads
/// included: the wrapped store behaves exactly as before.
pub struct WatchedStore {
    inner: Arc<dyn Store>,
    hub: Hub,
}

impl WatchedStore {
    pub fn new(inner: Arc<dyn Store>, hub: Hub) -> Self {
        WatchedStore { inner, hub }
    }
}

#[async_trait]
impl Store for WatchedStore {
    async fn list(&self) -> Result<Vec<Listed>, StoreError> {
        self.inner.list().await
    }
    async fn list_one(&self, key: &TaskKey) -> Result<Option<Listed>, StoreError> {
        self.inner.list_one(key).await
    }
    async fn read_manifest(&self, key: &TaskKey) -> Result<ManifestRead, StoreError> {
        self.inner.read_manifest(key).await
    }
    async fn read_status(&self, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError> {
        self.inner.read_status(key).await
    }
    async fn read_status_for_update(&self, key: &TaskKey) -> Result<Option<TaskStatus>, StoreError> {
        self.inner.read_status_for_update(key).await
    }
    async fn read_task(&self, key: &TaskKey) -> Result<(Option<Listed>, ManifestRead, Option<TaskStatus>), StoreError> {
        self.inner.read_task(key).await
    }
    async fn write_status(&self, key: &TaskKey, status: &TaskStatus) -> Result<(), StoreError> {
        self.inner.write_status(key, status).await?;
        self.hub.status_written(status);
        Ok(())
    }
    async fn delete_status(&self, key: &TaskKey) -> Result<(), StoreError> {
        self.inner.delete_status(key).await?;
        self.hub.status_deleted(key);
        Ok(())
    }
    fn watch(&self) -> Result<mpsc::UnboundedReceiver<StoreEvent>, StoreError> {
        self.inner.watch()
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn refresh(&self, key: &TaskKey) -> Result<(), StoreError> {
        self.inner.refresh(key).await
    }
    fn ownership(&self) -> Option<Arc<dyn Ownership>> {
        self.inner.ownership()
    }
    fn semaphores(&self) -> Option<Arc<dyn crate::store::ownership::SharedSemaphores>> {
        self.inner.semaphores()
    }
    async fn save_log(&self, container: &str, text: &str) -> Result<(), StoreError> {
        self.inner.save_log(container, text).await
    }
    async fn read_log(&self, container: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read_log(container).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Phase;

    /// A store that keeps statuses in memory and can be told to fail writes.
    #[derive(Default)]
    struct Memory {
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Store for Memory {
        async fn list(&self) -> Result<Vec<Listed>, StoreError> {
            Ok(Vec::new())
        }
        async fn list_one(&self, _key: &TaskKey) -> Result<Option<Listed>, StoreError> {
            Ok(None)
        }
        async fn read_manifest(&self, _key: &TaskKey) -> Result<ManifestRead, StoreError> {
            Ok(ManifestRead::Missing)
        }
        async fn read_status(&self, _key: &TaskKey) -> Result<Option<TaskStatus>, StoreError> {
            Ok(None)
        }
        async fn write_status(&self, key: &TaskKey, _status: &TaskStatus) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Conflict { path: key.to_string() });
            }
            Ok(())
        }
        async fn delete_status(&self, _key: &TaskKey) -> Result<(), StoreError> {
            Ok(())
        }
        fn watch(&self) -> Result<mpsc::UnboundedReceiver<StoreEvent>, StoreError> {
            Ok(mpsc::unbounded_channel().1)
        }
        fn location(&self) -> String {
            "memory".into()
        }
    }

    fn status(task: &str, phase: Phase) -> TaskStatus {
        let mut status = TaskStatus::new(task, task, "sha256:x", chrono::Utc::now());
        status.phase = phase;
        status
    }

    #[tokio::test]
    async fn api_watch_publishes_each_successful_write_and_delete_and_nothing_else() {
        let memory = Arc::new(Memory::default());
        let hub = Hub::new();
        let store = WatchedStore::new(memory.clone(), hub.clone());
        let mut rx = hub.subscribe();
        let key = TaskKey::new("a/b");
        store.write_status(&key, &status("a/b", Phase::Running)).await.unwrap();
        memory.fail.store(true, Ordering::SeqCst);
        assert!(store.write_status(&key, &status("a/b", Phase::Failed)).await.is_err());
        store.delete_status(&key).await.unwrap();

        let first = rx.recv().await.unwrap();
        assert_eq!((first.seq, first.kind), (1, "status"));
        let parsed: TaskStatus = serde_json::from_str(&first.data).unwrap();
        assert_eq!(parsed.phase, Phase::Running);
        // The failed write published nothing: the next event is the delete.
        let second = rx.recv().await.unwrap();
        assert_eq!((second.seq, second.kind), (2, "deleted"));
        assert_eq!(&*second.data, r#"{"task":"a/b"}"#);
        assert!(rx.try_recv().is_err());
    }

    /// The SSE body of a reader that did not read while 1,030 changes were published.
    #[tokio::test]
    async fn api_watch_the_stream_says_ready_then_resync_when_its_reader_lagged() {
        use axum::response::IntoResponse;
        use futures_util::StreamExt;
        let hub = Hub::new();
        let store = WatchedStore::new(Arc::new(Memory::default()), hub.clone());
        let mut body = hub.sse().into_response().into_body().into_data_stream();
        for _ in 0..CAPACITY + 6 {
            store
                .write_status(&TaskKey::new("t"), &status("t", Phase::Pending))
                .await
                .unwrap();
        }
        let mut text = String::new();
        while !text.contains("event: status") {
            let chunk = body.next().await.expect("more of the stream").expect("a chunk");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        let ready = text.find("event: ready").expect("ready first");
        let resync = text.find("event: resync\ndata: {\"missed\":6}").expect(&text);
        let status = text.find("event: status").expect("then the changes it still holds");
        assert!(ready < resync && resync < status, "{text}");
        // The first change still held is the 7th: ids tell a reader what it missed.
        assert!(text.contains("id: 7\n"), "{text}");
        hub.close();
    }

    #[tokio::test]
    async fn api_watch_a_lagging_reader_is_told_to_resync() {
        let hub = Hub::new();
        let store = WatchedStore::new(Arc::new(Memory::default()), hub.clone());
        let mut rx = hub.subscribe();
        for _ in 0..CAPACITY + 5 {
            store
                .write_status(&TaskKey::new("t"), &status("t", Phase::Pending))
                .await
                .unwrap();
        }
        assert!(matches!(rx.recv().await, Err(broadcast::error::RecvError::Lagged(5))));
    }
}
