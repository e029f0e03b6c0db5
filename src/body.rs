//! Request bodies on their way upstream: buffered for replay when small, streamed when not.
//!
//! [`prepare`] decides, reading at most `max_replay_body` bytes ahead: a body that ends within
//! the limit is kept whole (trailers too) so a 401 can be answered by replaying it byte for
//! byte; a larger one (or one whose declared length is larger) streams through untouched, after
//! the prefix that was read. Response bodies are never buffered and do not pass through here.
//!
//! Two `[limits]` hold here: all replay buffers together stay within `max_buffered` (past it,
//! bodies stream without replay, as large ones do), and a body that stops arriving for
//! `body_read_timeout` ends its request, whether it was being buffered or streamed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::metrics::{Limit, Metrics};

/// Any body's error, boxed: request bodies come from hyper, or from a test.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Read(BoxError),
    #[error("the request body stopped arriving for {}", humantime::format_duration(*.0))]
    Stalled(Duration),
}

/// The process-wide rules for request bodies: one per sidecar, shared by every upstream.
#[derive(Debug)]
pub struct BodyLimits {
    /// Bytes that replay buffers may still take, of `max_buffered`.
    left: AtomicU64,
    read_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl BodyLimits {
    pub fn new(max_buffered: u64, read_timeout: Duration, metrics: Arc<Metrics>) -> BodyLimits {
        BodyLimits {
            left: AtomicU64::new(max_buffered),
            read_timeout,
            metrics,
        }
    }

    /// Takes `n` more bytes of the budget into `held`, or says there is no room.
    fn reserve(self: &Arc<Self>, held: &mut Held, n: u64) -> bool {
        let taken = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            });
        if taken.is_err() {
            self.metrics.limit_hit(Limit::MaxBuffered);
            return false;
        }
        held.bytes += n;
        true
    }

    fn stalled(&self) -> ReadError {
        self.metrics.limit_hit(Limit::BodyReadTimeout);
        ReadError::Stalled(self.read_timeout)
    }
}

/// Bytes of the `max_buffered` budget held by one replay buffer; given back when dropped.
#[derive(Debug)]
pub struct Held {
    limits: Arc<BodyLimits>,
    bytes: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.limits.left.fetch_add(self.bytes, Ordering::AcqRel);
    }
}

/// A request body read whole, trailers included: what a replay sends again.
#[derive(Debug, Clone, Default)]
pub struct Buffered {
    pub data: Bytes,
    /// The trailer section of a chunked (or h2) body; `None` when it had none.
    pub trailers: Option<HeaderMap>,
}

/// A request body as the upstream client sends it.
#[derive(Debug)]
pub enum ProxyBody {
    /// A complete body (possibly empty); sent as one data frame, then its trailers if any.
    /// The trailers are boxed: rare, and hyper's client queues each request in a slot as large
    /// as the largest `Request<ProxyBody>` (32 slots a block, a block or two per connection).
    Full(Option<Bytes>, Option<Box<HeaderMap>>),
    /// Bytes already read from the application, then the rest of its stream.
    Streaming {
        prefix: Option<Bytes>,
        rest: UnsyncBoxBody<Bytes, BoxError>,
        /// Ends the body with [`ReadError::Stalled`] when no frame comes for this long.
        stall: Stall,
    },
}

/// The `body_read_timeout` of a streamed body: reset by every frame.
#[derive(Debug)]
pub struct Stall {
    timer: Pin<Box<Sleep>>,
    limits: Arc<BodyLimits>,
}

impl Stall {
    fn new(limits: &Arc<BodyLimits>) -> Stall {
        Stall {
            timer: Box::pin(tokio::time::sleep(limits.read_timeout)),
            limits: Arc::clone(limits),
        }
    }
}

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        let bytes = bytes.into();
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes), None)
    }

    /// A body read whole from the application, with its trailers.
    pub fn buffered(body: Buffered) -> ProxyBody {
        let data = (!body.data.is_empty()).then_some(body.data);
        ProxyBody::Full(data, body.trailers.map(Box::new))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReadError>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes, trailers) => Poll::Ready(
                bytes
                    .take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(|t| Frame::trailers(*t)))
                    .map(Ok),
            ),
            ProxyBody::Streaming {
                prefix,
                rest,
                stall,
            } => {
                if let Some(b) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                match Pin::new(rest).poll_frame(cx) {
                    Poll::Ready(frame) => {
                        let next = Instant::now() + stall.limits.read_timeout;
                        stall.timer.as_mut().reset(next);
                        Poll::Ready(frame.map(|f| f.map_err(ReadError::Read)))
                    }
                    Poll::Pending => match stall.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(stall.limits.stalled()))),
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes, trailers) => bytes.is_none() && trailers.is_none(),
            ProxyBody::Streaming { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes, trailers) => {
                let len = bytes.as_ref().map_or(0, |b| b.len() as u64);
                match trailers {
                    None => SizeHint::with_exact(len),
                    // Not exact: an exact size becomes a `Content-Length` upstream, and only a
                    // chunked HTTP/1.1 body can carry trailers.
                    Some(_) => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(len);
                        hint
                    }
                }
            }
            ProxyBody::Streaming { prefix, rest, .. } => {
                let extra = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

/// A request body after [`prepare`].
#[derive(Debug)]
pub enum Prepared {
    /// The whole body, kept for a possible replay, with its share of `max_buffered`.
    Replayable(Buffered, Held),
    /// Too large to keep (or no room left to keep it): sent once, and a 401 cannot be replayed.
    Streaming(ProxyBody),
}

/// Reads up to `limit` bytes of `body` to decide whether it can be replayed, within what is
/// left of `max_buffered` and never waiting longer than `body_read_timeout` for a frame.
pub async fn prepare<B>(
    mut body: B,
    limit: u64,
    limits: &Arc<BodyLimits>,
) -> Result<Prepared, ReadError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut held = Held {
        limits: Arc::clone(limits),
        bytes: 0,
    };
    let hint = body.size_hint();
    if hint.exact() == Some(0) || body.is_end_stream() {
        return Ok(Prepared::Replayable(Buffered::default(), held));
    }
    // Only a body too large to keep is boxed: one allocation, on the rare path.
    let streaming = |prefix: Option<Bytes>, rest: B| {
        Ok(Prepared::Streaming(ProxyBody::Streaming {
            prefix,
            rest: rest.map_err(Into::into).boxed_unsync(),
            stall: Stall::new(limits),
        }))
    };
    // Content-Length says it will not fit, or there is no room for it: not a byte read ahead.
    if hint.lower() > limit || !limits.reserve(&mut held, hint.lower()) {
        return streaming(None, body);
    }
    let mut buf = BytesMut::new();
    let mut trailers = None;
    loop {
        let frame = match tokio::time::timeout(limits.read_timeout, body.frame()).await {
            Ok(Some(frame)) => frame.map_err(|e| ReadError::Read(e.into()))?,
            Ok(None) => break,
            Err(_) => return Err(limits.stalled()),
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            // Trailers end the body; kept with it, they are sent again on a replay.
            Err(frame) => {
                trailers = frame.into_trailers().ok().filter(|t| !t.is_empty());
                continue;
            }
        };
        let len = buf.len() as u64 + data.len() as u64;
        let more = len.saturating_sub(held.bytes);
        buf.extend_from_slice(&data);
        if len > limit || (more > 0 && !limits.reserve(&mut held, more)) {
            return streaming(Some(buf.freeze()), body);
        }
    }
    let data = buf.freeze();
    Ok(Prepared::Replayable(Buffered { data, trailers }, held))
}

/// A response body to the application: the upstream's, streamed, or one the sidecar made.
pub type ResponseBody = http_body_util::Either<Incoming, http_body_util::Full<Bytes>>;
