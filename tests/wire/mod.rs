//! Low-level helpers for the forwarding, error and TLS tests: raw HTTP/1.1 over a `TcpStream`,
//! one-connection clients, a request body fed through a channel, a throwaway upstream that watches
//! a body arrive, and the checks every error body of the sidecar's own must pass.
//!
//! `support` is the shared harness; this module only adds what those tests need on top.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::support::{Reply, SECRET_MARK};

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A response read off a raw connection: status line, headers (names lowercased), body.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Writes `request` on `stream` and reads one response (Content-Length framed, or up to EOF
/// when there is none).
pub async fn raw_exchange(stream: &mut TcpStream, request: &[u8]) -> RawReply {
    stream.write_all(request).await.unwrap();
    read_response(stream).await
}

/// Opens a connection to `addr`, sends `request` and reads one response.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    raw_exchange(&mut stream, request).await
}

async fn read_response(stream: &mut TcpStream) -> RawReply {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: HashMap<String, String> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut body = buf[head_end..].to_vec();
    match headers.get("content-length") {
        Some(len) => {
            let len: usize = len.parse().unwrap();
            while body.len() < len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed inside the body");
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            stream.read_to_end(&mut body).await.unwrap();
        }
    }
    RawReply {
        status,
        headers,
        body,
    }
}

/// One HTTP/1.1 connection to `addr`, driven in the background: every request sent through
/// the returned handle goes over that same connection (or fails if it was closed).
pub async fn one_connection<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// A request body of unknown length whose chunks the test hands over one at a time; it ends
/// when the sender is dropped.
#[derive(Debug)]
pub struct ChannelBody(mpsc::Receiver<Bytes>);

/// A [`ChannelBody`] and the sender that feeds it.
pub fn channel_body() -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody(rx))
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// A body of the given frames (data, then trailers) whose length is not known up front: over
/// HTTP/1.1 it is sent chunked, the only framing that can carry trailers.
#[derive(Debug)]
pub struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl Frames {
    pub fn new(frames: impl IntoIterator<Item = Frame<Bytes>>) -> Frames {
        Frames(frames.into_iter().collect())
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// What [`watching_upstream`] reports.
#[derive(Debug)]
pub struct Watched {
    /// Fires once `threshold` body bytes of the first request have arrived.
    pub progress: oneshot::Receiver<()>,
    /// The first request's head and its whole body, once it has ended.
    pub request: oneshot::Receiver<(http::request::Parts, Bytes)>,
}

/// A plain HTTP/1.1 upstream on 127.0.0.1:0 that answers `200 ok` to every request and
/// reports, for the first request, when `threshold` body bytes have arrived and then the
/// whole request. It checks no token (use `flow = "static"`).
pub async fn watching_upstream(threshold: usize) -> (SocketAddr, Watched) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (progress_tx, progress) = oneshot::channel();
    let (request_tx, request) = oneshot::channel();
    let senders = Arc::new(Mutex::new((Some(progress_tx), Some(request_tx))));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let senders = senders.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let senders = senders.clone();
                async move {
                    let (parts, mut body) = req.into_parts();
                    let mut got = BytesMut::new();
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame.unwrap().into_data() {
                            got.extend_from_slice(&data);
                            if got.len() >= threshold {
                                if let Some(tx) = senders.lock().unwrap().0.take() {
                                    let _ = tx.send(());
                                }
                            }
                        }
                    }
                    if let Some(tx) = senders.lock().unwrap().1.take() {
                        let _ = tx.send((parts, got.freeze()));
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, Watched { progress, request })
}

/// Checks an error body of the sidecar's own: status, `Content-Type: application/json`, the three
/// fields (`upstream` = `upstream`), and that it carries no secret and none of `tokens`. Returns
/// the JSON for further checks.
pub fn assert_error(
    reply: &Reply,
    status: u16,
    code: &str,
    upstream: &str,
    tokens: &[String],
) -> serde_json::Value {
    assert_eq!(
        reply.status,
        StatusCode::from_u16(status).unwrap(),
        "{}",
        reply.text()
    );
    assert_eq!(reply.headers["content-type"], "application/json");
    check_error_json(&reply.json(), &reply.text(), code, upstream, tokens)
}

/// [`assert_error`] for a response read off a raw connection.
pub fn assert_raw_error(
    reply: &RawReply,
    status: u16,
    code: &str,
    upstream: &str,
    tokens: &[String],
) -> serde_json::Value {
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, status, "{text}");
    assert_eq!(reply.headers["content-type"], "application/json");
    check_error_json(&reply.json(), &text, code, upstream, tokens)
}

fn check_error_json(
    json: &serde_json::Value,
    text: &str,
    code: &str,
    upstream: &str,
    tokens: &[String],
) -> serde_json::Value {
    assert_eq!(json["error"], code, "{text}");
    assert_eq!(json["upstream"], upstream, "{text}");
    let description = json["error_description"].as_str().unwrap_or_default();
    assert!(!description.is_empty(), "no error_description: {text}");
    assert!(!text.contains(SECRET_MARK), "a secret in {text}");
    for token in tokens {
        assert!(!text.contains(token.as_str()), "a token in {text}");
    }
    json.clone()
}

/// A plain HTTP/1.1 upstream on 127.0.0.1:0 whose response body the test writes: the first
/// request that arrives is answered `200` with a [`ChannelBody`] of unknown length, and its
/// sender is handed over on the returned channel. It checks no token.
pub async fn dribbling_upstream() -> (SocketAddr, oneshot::Receiver<mpsc::Sender<Bytes>>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let service = service_fn(move |_req: Request<Incoming>| {
                let (body_tx, body) = channel_body();
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(body_tx);
                }
                async move { Ok::<_, Infallible>(Response::new(body)) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, rx)
}
