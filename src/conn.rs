//! Guards on application connections (`[limits]`; the README's "Limits"): how many may be open at
//! once, how long a request head may take, and how long a connection may sit idle.
//!
//! A connection's watchdog tells the two timeouts apart as nginx does (`client_header_timeout`
//! against `keepalive_timeout`): the first head has `header_read_timeout` from accept; after a
//! response, an HTTP/1.1 connection that has received nothing is idle (`idle_timeout`) until the
//! first byte of its next head, which then has `header_read_timeout` from that byte. hyper's own
//! header timer is off: it would run from the previous response and close idle keep-alive
//! connections at `header_read_timeout`.
//!
//! Not here: stalled request bodies and the replay memory bound (`body`). Everything here is per
//! connection and lock-free: atomics, which the watchdog reads each time it is polled, right
//! after the connection. A read costs one relaxed store ([`Watched`]), a request's start and
//! end one atomic add each; only HTTP/2 requests, which end in tasks of their own, wake the
//! watchdog (a `Notify`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Version;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::{Limit, Metrics};

/// Permits for application connections, shared by every upstream listener.
#[derive(Debug, Clone)]
pub struct Slots {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Slots {
    /// Room for `max` connections at once.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Slots {
        Slots {
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            metrics,
        }
    }

    /// A permit for one more connection, waiting while all are taken; `true` with it if it had
    /// to wait. Acceptors call this before `accept`, so connections beyond the limit wait in the
    /// kernel's backlog and those already open are unaffected.
    pub async fn acquire(&self) -> (OwnedSemaphorePermit, bool) {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return (permit, false);
        }
        match Arc::clone(&self.permits).acquire_owned().await {
            Ok(permit) => (permit, true),
            // Never closed: `Slots` owns the semaphore and never calls `close`.
            Err(_) => unreachable!("the connection semaphore is never closed"),
        }
    }

    /// Counts a connection that waited in the backlog for a free slot
    /// (`limit_hits_total{limit="max_connections"}`).
    pub fn waited(&self) {
        self.metrics.limit_hit(Limit::MaxConnections);
    }
}

/// What one connection is doing, as its watchdog needs to know.
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    in_flight: AtomicUsize,
    seen_request: AtomicBool,
    /// HTTP/2: pings and window updates arrive on an idle connection too, so bytes say nothing
    /// about a next request; only `idle_timeout` applies between requests.
    multiplexed: AtomicBool,
    /// Bytes arrived since the last request in flight ended: on HTTP/1.1, a next head has
    /// begun. Set by every read ([`Watched`]), cleared when the last request ends. Bytes of a
    /// head pipelined behind a request still in flight are cleared with it: such a head counts
    /// as idle (bounded by `idle_timeout`) until more of it arrives.
    received: AtomicBool,
    /// Counts requests' starts and ends: a request that came and went between two looks of
    /// the watchdog still restarts the idle timer.
    epoch: AtomicU64,
    /// Wakes the watchdog of an HTTP/2 connection, whose requests end in other tasks.
    changed: Notify,
}

impl Activity {
    /// A connection accepted at `accepted`.
    pub fn new(accepted: Instant) -> Activity {
        Activity {
            accepted,
            in_flight: AtomicUsize::new(0),
            seen_request: AtomicBool::new(false),
            multiplexed: AtomicBool::new(false),
            received: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    /// A request arrived; the returned guard ends it when dropped (with its response body).
    pub fn request(self: &Arc<Self>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        self.seen_request.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed();
        InFlight(Arc::clone(self))
    }

    fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        if self.multiplexed.load(Ordering::Relaxed) {
            self.changed.notify_one();
        }
    }

    /// Bytes arrived from the client.
    pub fn received(&self) {
        self.received.store(true, Ordering::Relaxed);
    }

    /// Whether the next head of an HTTP/1.1 connection has begun to arrive.
    fn next_head_begun(&self) -> bool {
        self.received.load(Ordering::Relaxed) && !self.multiplexed.load(Ordering::Relaxed)
    }
}

/// One request in flight on a connection, until its response body is done.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // What was read so far was this request's: the next head has not begun.
            self.0.received.store(false, Ordering::Relaxed);
        }
        self.0.changed();
    }
}

/// The timers a connection's watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// From accept to the first request head, and from the first byte of a later head to its
    /// end.
    pub first_head: Duration,
    /// With no request in flight and nothing of a next one received.
    pub idle: Duration,
}

/// Resolves with the limit a connection broke: no complete first head within `first_head` of
/// accept (a silent connection, or one that never finishes its head); a later head begun but
/// not complete within `first_head` of its first byte; or no request in flight and nothing
/// received for `idle`. Never resolves while a request is in flight, however long it streams.
///
/// It must be polled right after the connection it watches, in the same task (`select!` with
/// `biased`, the connection first): an HTTP/1.1 request starts and ends, and a next head
/// begins, inside a poll of the connection, and the watchdog learns of it by looking, not by
/// being woken, since a wake-up per request would cost a lock. Its timer is re-armed lazily:
/// an idle deadline only moves later, so the timer set for an earlier one fires, the
/// watchdog looks again and sets it for the current one (once per timeout, not per request).
pub async fn watchdog(activity: &Activity, timers: Timers) -> Limit {
    let mut look = Look {
        kind: Kind::FirstHead,
        since: activity.accepted,
        epoch: activity.epoch.load(Ordering::Relaxed),
    };
    let first = activity.accepted + timers.first_head;
    let timer = tokio::time::sleep_until(first);
    let woken = activity.changed.notified();
    tokio::pin!(timer, woken);
    let mut armed = Some(first);
    std::future::poll_fn(|cx| loop {
        // HTTP/2 requests end in their own tasks, which wake this one.
        if activity.multiplexed.load(Ordering::Relaxed) && woken.as_mut().poll(cx).is_ready() {
            woken.set(activity.changed.notified());
            continue;
        }
        let Some((deadline, limit)) = look.deadline(activity, timers) else {
            // A request is in flight: nothing to time. A timer still armed may fire; the
            // watchdog then looks again, in vain.
            return Poll::Pending;
        };
        if armed.is_none_or(|at| at > deadline) {
            timer.as_mut().reset(deadline);
            armed = Some(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(()) if Instant::now() >= deadline => return Poll::Ready(limit),
            // An earlier deadline's timer: set it for this one.
            Poll::Ready(()) => armed = None,
        }
    })
    .await
}

/// What the watchdog last saw of its connection, and since when.
struct Look {
    kind: Kind,
    since: Instant,
    /// [`Activity::epoch`] then.
    epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    FirstHead,
    InFlight,
    NextHead,
    Idle,
}

impl Look {
    /// The deadline the connection is under now, and the limit it breaks, or `None` while a
    /// request is in flight. A change since the last look starts the clock anew: it happened
    /// during the poll that came just before this look.
    fn deadline(&mut self, activity: &Activity, timers: Timers) -> Option<(Instant, Limit)> {
        let kind = if !activity.seen_request.load(Ordering::Relaxed) {
            Kind::FirstHead
        } else if activity.in_flight.load(Ordering::Acquire) > 0 {
            Kind::InFlight
        } else if activity.next_head_begun() {
            Kind::NextHead
        } else {
            Kind::Idle
        };
        let epoch = activity.epoch.load(Ordering::Relaxed);
        if kind != self.kind || epoch != self.epoch {
            *self = Look {
                kind,
                since: Instant::now(),
                epoch,
            };
        }
        match kind {
            Kind::FirstHead => Some((
                activity.accepted + timers.first_head,
                Limit::HeaderReadTimeout,
            )),
            Kind::InFlight => None,
            Kind::NextHead => Some((self.since + timers.first_head, Limit::HeaderReadTimeout)),
            Kind::Idle => Some((self.since + timers.idle, Limit::IdleTimeout)),
        }
    }
}

/// A connection's socket that tells its [`Activity`] when bytes arrive.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Watched<T> {
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.received();
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until the body is done or dropped, so a
/// long poll or an event stream is never taken for an idle connection.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Tracked<B> {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
