//! Guards on application connections (`[limits]`, PRODUCT.md §3.2): how many may be open at
//! once, how long one may take to send its first request head, and how long it may sit idle.
//!
//! Not here: the wait for later heads on an HTTP/1.1 connection (hyper's `header_read_timeout`,
//! counted from the previous response), stalled request bodies and the replay memory bound
//! (`body`). Everything here is per connection and lock-free: an atomic count of requests in
//! flight and a `Notify` that wakes the connection's watchdog when that count changes.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
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

    /// A permit for one more connection, waiting while all are taken. Acceptors call this
    /// before `accept`, so connections beyond the limit wait in the kernel's backlog and those
    /// already open are unaffected.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return permit;
        }
        self.metrics.limit_hit(Limit::MaxConnections);
        match Arc::clone(&self.permits).acquire_owned().await {
            Ok(permit) => permit,
            // Never closed: `Slots` owns the semaphore and never calls `close`.
            Err(_) => unreachable!("the connection semaphore is never closed"),
        }
    }
}

/// What one connection is doing, as its watchdog needs to know.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    seen_request: AtomicBool,
    changed: Notify,
}

impl Activity {
    /// A request arrived; the returned guard ends it when dropped (with its response body).
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.seen_request.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }
}

/// One request in flight on a connection, until its response body is done.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// The timers a connection's watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// From accept to the first request head.
    pub first_head: Duration,
    /// With no request in flight.
    pub idle: Duration,
}

/// Resolves with the limit a connection broke: no first request within `first_head` of
/// `accepted` (a silent connection, or one that never finishes its head), or no request in
/// flight for `idle`. Never resolves while a request is in flight, however long it streams.
pub async fn watchdog(activity: &Activity, accepted: Instant, timers: Timers) -> Limit {
    loop {
        let changed = activity.changed.notified();
        tokio::pin!(changed);
        // Registered before the state is read, so a change in between is not missed.
        changed.as_mut().enable();
        let (deadline, limit) = if !activity.seen_request.load(Ordering::Relaxed) {
            (Some(accepted + timers.first_head), Limit::HeaderReadTimeout)
        } else if activity.in_flight.load(Ordering::Acquire) == 0 {
            (Some(Instant::now() + timers.idle), Limit::IdleTimeout)
        } else {
            (None, Limit::IdleTimeout)
        };
        match deadline {
            Some(deadline) => tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(deadline) => return limit,
            },
            None => changed.await,
        }
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
