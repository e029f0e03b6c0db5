//! `[limits]` end to end (PRODUCT.md §3.2), over raw loopback sockets: a silent connection is
//! closed, an idle keep-alive connection is closed, a stalled body ends its request with a
//! 408, connections beyond `max_connections` wait, and replay buffers stay within
//! `max_buffered`. Each test waits for the event itself (an EOF, an answer); none measures time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use nexus_sidecar::standin::Api;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A sidecar for a fresh stand-in with these `[limits]` lines (tokens on demand).
async fn limited(limits: &str) -> (nexus_sidecar::standin::StandIn, Running) {
    let s = standin(Api::NuvyNexus).await;
    let toml = format!(
        "[limits]\n{limits}\n\n{}",
        upstream_toml("api", &s, "", "prefetch = false")
    );
    (s, sidecar(&toml).await)
}

/// Reads until the peer closes; returns what came.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    within("the sidecar to close the connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    all
}

const GET: &[u8] = b"GET /v1/x HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed() {
    let (_s, r) = limited("header_read_timeout = \"200ms\"").await;
    let mut silent = TcpStream::connect(r.addr("api")).await.unwrap();
    let got = read_to_close(&mut silent).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn a_head_that_never_ends_is_cut_off() {
    let (_s, r) = limited("header_read_timeout = \"200ms\"").await;
    let mut slow = TcpStream::connect(r.addr("api")).await.unwrap();
    slow.write_all(b"GET /v1/x HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    read_to_close(&mut slow).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (_s, r) = limited("idle_timeout = \"200ms\"\nheader_read_timeout = \"1h\"").await;
    let mut idle = TcpStream::connect(r.addr("api")).await.unwrap();
    idle.write_all(GET).await.unwrap();
    // The response comes, then, with nothing more asked, the close.
    let got = read_to_close(&mut idle).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn a_stalled_buffered_body_is_answered_408() {
    let (s, r) = limited("body_read_timeout = \"200ms\"").await;
    let mut stalled = TcpStream::connect(r.addr("api")).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly ten.",
        )
        .await
        .unwrap();
    let got = read_to_close(&mut stalled).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert_eq!(s.api_requests(), 0, "nothing went upstream");
}

#[tokio::test]
async fn a_stalled_streamed_body_is_answered_408() {
    // Larger than max_replay_body, so it streams upstream as it comes, then stops.
    let (_s, r) = limited("body_read_timeout = \"200ms\"").await;
    let mut stalled = TcpStream::connect(r.addr("api")).await.unwrap();
    let head = "POST /v1/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4194304\r\n\r\n";
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
    let got = read_to_close(&mut stalled).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_wait_for_a_free_one() {
    let (_s, r) = limited("max_connections = 2").await;
    let addr = r.addr("api");
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    for c in [&mut a, &mut b] {
        c.write_all(GET).await.unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
    // A third connects (the kernel's backlog takes it) but is not served while both are open.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(GET).await.unwrap();
    let mut buf = [0u8; 12];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections");
    drop(a);
    within("the third to be served", third.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
}

#[tokio::test]
async fn past_max_buffered_a_body_streams_without_replay() {
    // Room for 64 bytes of replay buffers in all: a 100-byte body cannot be kept, so its 401
    // passes through (as a body over max_replay_body would), instead of being replayed.
    let (s, r) = limited("max_buffered = \"64B\"").await;
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    assert_eq!(http.get(&url).await.status, 200);
    s.revoke_all();
    let reply = http
        .send(Method::POST, &url, &[], Bytes::from(vec![b'b'; 100]))
        .await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    // A small body still fits and is replayed.
    s.revoke_all();
    let reply = http
        .send(Method::POST, &url, &[], Bytes::from_static(b"small"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}
