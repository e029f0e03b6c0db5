//! Request bodies on their way upstream: buffered for replay when small, streamed when not.
//!
//! [`prepare`] decides, reading at most `max_replay_body` bytes ahead: a body that ends within
//! the limit is kept whole so a 401 can be answered by replaying it byte for byte; a larger one
//! (or one whose declared length is larger) streams through untouched, after the prefix that
//! was read. Response bodies are never buffered and do not pass through here.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// A request body as the upstream client sends it.
#[derive(Debug)]
pub enum ProxyBody {
    /// A complete body (possibly empty); sent as one frame.
    Full(Option<Bytes>),
    /// Bytes already read from the application, then the rest of its stream.
    Streaming {
        prefix: Option<Bytes>,
        rest: Incoming,
    },
}

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        let bytes = bytes.into();
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Streaming { prefix, rest } => match prefix.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Streaming { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Streaming { prefix, rest } => {
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
    /// The whole body, kept for a possible replay.
    Replayable(Bytes),
    /// Too large to keep: sent once, and a 401 cannot be replayed.
    Streaming(ProxyBody),
}

/// Reads up to `limit` bytes of `body` to decide whether it can be replayed.
pub async fn prepare(mut body: Incoming, limit: u64) -> Result<Prepared, hyper::Error> {
    let hint = body.size_hint();
    if hint.exact() == Some(0) || body.is_end_stream() {
        return Ok(Prepared::Replayable(Bytes::new()));
    }
    if hint.lower() > limit {
        // Content-Length says it will not fit: do not read a byte ahead.
        return Ok(Prepared::Streaming(ProxyBody::Streaming {
            prefix: None,
            rest: body,
        }));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        // Trailers on a request are vanishingly rare; a replayed body goes without them.
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() as u64 > limit {
                return Ok(Prepared::Streaming(ProxyBody::Streaming {
                    prefix: Some(buf.freeze()),
                    rest: body,
                }));
            }
        }
    }
    Ok(Prepared::Replayable(buf.freeze()))
}

/// A response body to the application: the upstream's, streamed, or one the sidecar made.
pub type ResponseBody = http_body_util::Either<Incoming, http_body_util::Full<Bytes>>;
