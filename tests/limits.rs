//! `[limits]` end to end (the README's "Limits"), over raw loopback sockets: a silent connection is
//! closed, an idle keep-alive connection is closed at `idle_timeout` and a next head that stops at
//! `header_read_timeout`, a stalled body ends its request with a 408, connections beyond
//! `max_connections` wait (in a backlog deeper than 128) and are counted, and replay buffers stay
//! within `max_buffered`. Each test waits for the event itself (an EOF, an answer); none measures
//! time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use nexus_sidecar::standin::{Api, StandIn};
use nexus_sidecar::{Config, Sidecar};
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

/// A sidecar for a fresh stand-in with these `[limits]` lines, and its admin listener for
/// `limit_hits_total`.
struct Counted {
    _standin: StandIn,
    api: SocketAddr,
    admin: SocketAddr,
}

async fn counted(limits: &str) -> Counted {
    let s = standin(Api::NuvyNexus).await;
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[limits]\n{limits}\n\n{}",
        upstream_toml("api", &s, "", "prefetch = false")
    );
    let sidecar = Sidecar::bind(&Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    let (api, admin) = (
        sidecar.local_addr("api").unwrap(),
        sidecar.admin_addr().unwrap(),
    );
    tokio::spawn(sidecar.run(std::future::pending()));
    Counted {
        _standin: s,
        api,
        admin,
    }
}

impl Counted {
    /// `limit_hits_total{limit}`.
    async fn hits(&self, limit: &str) -> u64 {
        let text = Http::default()
            .get(&format!("http://{}/metrics", self.admin))
            .await
            .text();
        let series = format!("nexus_sidecar_limit_hits_total{{limit=\"{limit}\"}} ");
        let line = text.lines().find(|l| l.starts_with(&series));
        line.and_then(|l| l[series.len()..].parse().ok())
            .unwrap_or_else(|| panic!("no {series}in\n{text}"))
    }
}

/// Reads one whole response (with a `Content-Length`); returns it.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    within("a response", async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&all);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|n| n.trim().parse::<usize>().unwrap())
                    })
                    .expect("a Content-Length");
                if body.len() >= length {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed mid-response: {text}");
            all.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8(all).unwrap()
}

/// Opens a connection that sends nothing and waits for the sidecar to close it: at least
/// `header_read_timeout` passes, measured by the sidecar itself.
async fn wait_one_head_timeout(addr: SocketAddr) {
    let mut silent = TcpStream::connect(addr).await.unwrap();
    read_to_close(&mut silent).await;
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
async fn an_idle_keep_alive_connection_is_closed_at_idle_timeout_not_header_read_timeout() {
    let c = counted("header_read_timeout = \"250ms\"\nidle_timeout = \"750ms\"").await;
    let mut idle = TcpStream::connect(c.api).await.unwrap();
    idle.write_all(GET).await.unwrap();
    let got = read_to_close(&mut idle).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // Open past header_read_timeout with nothing received: closed as idle.
    assert_eq!(c.hits("idle_timeout").await, 1);
    assert_eq!(c.hits("header_read_timeout").await, 0);
}

#[tokio::test]
async fn a_head_begun_after_an_idle_wait_has_header_read_timeout_from_its_first_byte() {
    let c = counted("header_read_timeout = \"200ms\"\nidle_timeout = \"1h\"").await;
    let mut conn = TcpStream::connect(c.api).await.unwrap();
    conn.write_all(GET).await.unwrap();
    let reply = read_response(&mut conn).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Twice header_read_timeout with nothing received: still open.
    wait_one_head_timeout(c.api).await;
    wait_one_head_timeout(c.api).await;
    let mut buf = [0u8; 64];
    match conn.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the idle connection was closed or answered: {other:?}"),
    }
    // Half a head, then nothing: cut off by header_read_timeout, not idle_timeout (an hour).
    conn.write_all(b"GET /v1/x HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    let got = read_to_close(&mut conn).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(
        c.hits("header_read_timeout").await,
        3,
        "two silent ones and this"
    );
    assert_eq!(c.hits("idle_timeout").await, 0);
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
async fn each_connection_that_waited_for_a_slot_is_counted_once() {
    let c = counted("max_connections = 1").await;
    let mut holder = TcpStream::connect(c.api).await.unwrap();
    holder.write_all(GET).await.unwrap();
    read_response(&mut holder).await;
    // The only slot is taken, but nobody waits for it.
    assert_eq!(c.hits("max_connections").await, 0);
    let close = b"GET /v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let mut w = TcpStream::connect(c.api).await.unwrap();
        w.write_all(close).await.unwrap();
        waiting.push(w);
    }
    drop(holder);
    for w in &mut waiting {
        let got = read_to_close(w).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    assert_eq!(c.hits("max_connections").await, 3);
}

/// More than the 128 a default listen backlog holds, fewer than the kernel's usual
/// `somaxconn` (4096).
const QUEUED: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_connections_wait_in_the_backlog_for_one_slot() {
    // The kernel caps the backlog at somaxconn: below QUEUED this cannot be shown.
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    if somaxconn.is_none_or(|max| max <= QUEUED) {
        eprintln!("skipped: net.core.somaxconn is {somaxconn:?}, not above {QUEUED}");
        return;
    }
    // The holder keeps its slot for as long as the test needs.
    let c =
        counted("max_connections = 1\nheader_read_timeout = \"1h\"\nidle_timeout = \"1h\"").await;
    let mut holder = TcpStream::connect(c.api).await.unwrap();
    holder.write_all(GET).await.unwrap();
    read_response(&mut holder).await;
    // Each connect completes only once the kernel has queued the connection: with a backlog
    // of 128, the 130th would hang (its SYNs dropped) for as long as the slot is held.
    let close = b"GET /v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let waiting = within("every connection to be queued", async {
        let mut waiting = Vec::new();
        for _ in 0..QUEUED {
            let mut w = TcpStream::connect(c.api).await.unwrap();
            w.write_all(close).await.unwrap();
            waiting.push(w);
        }
        waiting
    })
    .await;
    drop(holder);
    for mut w in waiting {
        let got = read_to_close(&mut w).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    assert_eq!(c.hits("max_connections").await, QUEUED as u64);
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
