//! Serving the API's connections: how many, and for how long (issue 10, item 7).
//!
//! `axum::serve` gives hyper no timer, so a client that sends half its headers (or
//! nothing) holds a connection, and a file descriptor, forever. Here each connection is
//! served by hyper's HTTP/1 with:
//! - a header-read timeout, which hyper also runs while a kept-alive connection waits for
//!   its next request, so an idle connection is closed after it too;
//! - a stall timeout: a connection on which nothing was read or written for that long is
//!   closed (a peer that stops reading its answer);
//! - a cap on connections. At the cap, the oldest connection with no request in flight is
//!   closed to make room for the new one, so a flood of idle connections delays a real
//!   client (`/healthz`, a callback) by nothing; only when every connection is busy is the
//!   newcomer closed.
//!
//! The cap is what reserves file descriptors for the controller's own work: the soft
//! `RLIMIT_NOFILE` is raised to the hard limit at start, and the API may use at most a
//! quarter of it ([`ServeLimits::for_fd_limit`]); the rest stays for reconciles, stores,
//! runtimes and their supervisors, whatever clients do.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How the API's connections are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    pub max_connections: usize,
    /// For a request's headers to arrive, from the connection's start or the end of the
    /// last answer.
    pub header_read_timeout: Duration,
    /// With nothing read or written; longer than a request may take (`REQUEST_TIMEOUT`).
    pub stall_timeout: Duration,
}

pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The most connections the API holds, however many descriptors there are.
pub const MAX_CONNECTIONS: usize = 4096;
const MIN_CONNECTIONS: usize = 16;

impl ServeLimits {
    /// A quarter of the descriptors, between 16 and [`MAX_CONNECTIONS`]: under
    /// `ulimit -n 1024`, 256 connections, and 768 descriptors left for the controller.
    pub fn for_fd_limit(nofile: u64) -> Self {
        let quarter = usize::try_from(nofile / 4).unwrap_or(MAX_CONNECTIONS);
        ServeLimits {
            max_connections: quarter.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS),
            header_read_timeout: HEADER_READ_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
        }
    }
}

/// Raises the soft limit on open files to the hard limit, and returns the soft limit in
/// force afterwards (the old one if raising failed).
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(err) => tracing::debug!("cannot raise the open-files limit from {soft} to {hard}: {err}"),
        }
    }
    soft
}

/// One served connection, as the cap sees it.
struct Slot {
    in_flight: AtomicUsize,
    evict: CancellationToken,
}

/// The connections being served, oldest first (ids grow).
#[derive(Default)]
struct Registry {
    slots: Mutex<BTreeMap<u64, Arc<Slot>>>,
    next: AtomicU64,
}

impl Registry {
    /// A slot for a new connection, closing the oldest idle one at the cap; `None` when
    /// every connection has a request in flight.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Slot>)> {
        let mut slots = self.slots.lock().ok()?;
        if slots.len() >= max {
            let idle = slots
                .iter()
                .find(|(_, slot)| slot.in_flight.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(slot) = slots.remove(&idle) {
                slot.evict.cancel();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            in_flight: AtomicUsize::new(0),
            evict: CancellationToken::new(),
        });
        slots.insert(id, slot.clone());
        Some((id, slot))
    }

    fn leave(&self, id: u64) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(&id);
        }
    }

    fn len(&self) -> usize {
        self.slots.lock().map_or(0, |s| s.len())
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight(Arc<Slot>);

impl InFlight {
    fn enter(slot: Arc<Slot>) -> Self {
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(slot)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that notes when bytes last moved, for the stall timeout.
struct Watched<S> {
    inner: S,
    epoch: Instant,
    /// Milliseconds since `epoch`.
    last: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` until `shutdown`, within `limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) {
    let registry = Arc::new(Registry::default());
    let mut refused_logged = Instant::now() - Duration::from_secs(60);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors (EMFILE/ENFILE) or an aborted handshake: pause
                // rather than spin; the limits make the first rare.
                tracing::warn!("the API cannot accept a connection: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((id, slot)) = registry.admit(limits.max_connections) else {
            if refused_logged.elapsed() > Duration::from_secs(10) {
                tracing::warn!(
                    "the API holds {} connections, all busy: closing new ones",
                    registry.len()
                );
                refused_logged = Instant::now();
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_one(stream, router, slot, limits, shutdown).await;
            registry.leave(id);
        });
    }
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    router: Router,
    slot: Arc<Slot>,
    limits: ServeLimits,
    shutdown: CancellationToken,
) {
    let last = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let io = TokioIo::new(Watched {
        inner: stream,
        epoch,
        last: last.clone(),
    });
    let counted = slot.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        let guard = InFlight::enter(counted.clone());
        async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            drop(guard);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            () = slot.evict.cancelled() => return,
            () = shutdown.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let idle_ms = u64::try_from(epoch.elapsed().as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_sub(last.load(Ordering::Relaxed));
                if Duration::from_millis(idle_ms) > limits.stall_timeout {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_gets_a_quarter_of_the_descriptors_within_bounds() {
        assert_eq!(ServeLimits::for_fd_limit(1024).max_connections, 256);
        assert_eq!(ServeLimits::for_fd_limit(20_000).max_connections, 4096);
        assert_eq!(ServeLimits::for_fd_limit(32).max_connections, 16);
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room_and_busy_ones_stay() {
        let registry = Registry::default();
        let (first, a) = registry.admit(2).unwrap();
        let (_, b) = registry.admit(2).unwrap();
        let busy = InFlight::enter(a.clone());
        // a is busy, so b (idle) goes.
        let (_, c) = registry.admit(2).unwrap();
        assert!(!a.evict.is_cancelled());
        assert!(b.evict.is_cancelled());
        assert_eq!(registry.len(), 2);
        let _also_busy = InFlight::enter(c.clone());
        assert!(registry.admit(2).is_none(), "all busy: the newcomer is refused");
        drop(busy);
        assert!(registry.admit(2).is_some());
        assert!(a.evict.is_cancelled());
        registry.leave(first);
    }
}
