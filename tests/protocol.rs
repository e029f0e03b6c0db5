//! The protocol edges of forwarding (the README's "Forwarding"), against upstreams that misbehave
//! on purpose or need more than plain HTTP/1.1: a response carrying both `Content-Length` and
//! `Transfer-Encoding`, an unsolicited `101 Switching Protocols`, trailers, and an h2 (gRPC-style)
//! upstream that refuses requests without `TE: trailers`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wire::*;

/// What a [`raw_upstream`] saw: the request heads, in order, and how many connections the
/// sidecar closed.
#[derive(Debug, Default)]
struct Log {
    heads: Vec<String>,
    closed: usize,
}

type RawLog = Arc<Mutex<Log>>;

/// An HTTP/1.1 upstream on 127.0.0.1:0 that writes whatever bytes `answer` returns for each
/// request head (requests are expected to have no body) and keeps the connection open for the
/// next request, so only the response's own framing can end a body.
async fn raw_upstream(answer: fn(&str) -> Vec<u8>) -> (SocketAddr, RawLog) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = RawLog::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve_raw(stream, answer, seen.clone()));
        }
    });
    (addr, heads)
}

/// Waits until the sidecar has closed `n` connections to a [`raw_upstream`].
async fn closed(log: &RawLog, n: usize) {
    within(&format!("{n} upstream connections to close"), async {
        while log.lock().unwrap().closed < n {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn serve_raw(mut stream: TcpStream, answer: fn(&str) -> Vec<u8>, heads: RawLog) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    heads.lock().unwrap().closed += 1;
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let response = answer(&head);
        heads.lock().unwrap().heads.push(head);
        if stream.write_all(&response).await.is_err() {
            return;
        }
    }
}

/// A sidecar in front of `target` with a static token.
async fn sidecar_for(target: &str, extra: &str) -> Running {
    sidecar(&format!(
        "[[upstream]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{target}\"\n{extra}\n[upstream.auth]\nflow = \"static\"\ntoken = \"static-token\"\n"
    ))
    .await
}

/// Decodes a chunked body read off the wire; the trailer section must be empty.
fn dechunk(mut wire: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = wire.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&wire[..line_end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        wire = &wire[line_end + 2..];
        if size == 0 {
            assert_eq!(wire, b"\r\n", "trailers or junk after the last chunk");
            return body;
        }
        body.extend_from_slice(&wire[..size]);
        assert_eq!(&wire[size..size + 2], b"\r\n");
        wire = &wire[size + 2..];
    }
}

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz";

/// 26 bytes in two chunks, under a `Content-Length` that contradicts them, before or after
/// `Transfer-Encoding` by path (`/short-first`, `/long-last`, ...).
fn both_lengths(head: &str) -> Vec<u8> {
    let length = if head.contains("/short") { 5 } else { 1000 };
    let (before, after) = match head.contains("-first") {
        true => (format!("Content-Length: {length}\r\n"), String::new()),
        false => (String::new(), format!("Content-Length: {length}\r\n")),
    };
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{before}Transfer-Encoding: chunked\r\n{after}\r\n\
         d\r\nabcdefghijklm\r\nd\r\nnopqrstuvwxyz\r\n0\r\n\r\n"
    )
    .into_bytes()
}

/// RFC 9112 §6.3: `Transfer-Encoding` overrides `Content-Length`, and an intermediary removes
/// the `Content-Length` before forwarding. hyper's client already reads such a body as chunked;
/// had the sidecar passed the length on, the app would have got 5 bytes presented as the whole
/// body (or waited for 1000 that never come).
#[tokio::test]
async fn a_response_with_both_lengths_reaches_the_app_whole_without_the_length() {
    let (upstream, heads) = raw_upstream(both_lengths).await;
    let r = sidecar_for(&format!("http://{upstream}"), "").await;
    let paths = ["/short-first", "/short-last", "/long-first", "/long-last"];

    // HTTP/1.1, several requests on one connection: each body must end where it really ends.
    let mut conn = one_connection::<Empty<Bytes>>(r.addr("api")).await;
    for path in paths {
        conn.ready().await.unwrap();
        let request = Request::get(path)
            .header("host", r.addr("api").to_string())
            .body(Empty::new())
            .unwrap();
        let reply = within(path, async {
            Reply::read(conn.send_request(request).await.unwrap()).await
        })
        .await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.text(), ALPHABET, "{path}");
        assert!(
            reply.headers.get("content-length").is_none(),
            "{path}: {:?}",
            reply.headers
        );
        assert_eq!(reply.headers["content-type"], "text/plain");
    }

    // What the app reads off the wire: chunked, and no length beside it.
    let raw_reply = within(
        "a raw reply",
        raw(
            r.addr("api"),
            b"GET /short-first HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(raw_reply.status, 200);
    assert!(
        !raw_reply.headers.contains_key("content-length"),
        "{:?}",
        raw_reply.headers
    );
    assert_eq!(raw_reply.headers["transfer-encoding"], "chunked");
    assert_eq!(dechunk(&raw_reply.body), ALPHABET.as_bytes());

    // h2c: the body ends with the stream; a stray content-length would make it malformed.
    let h2 = Http::h2c();
    for path in paths {
        let reply = within(path, h2.get(&r.url("api", path))).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.version, Version::HTTP_2);
        assert_eq!(reply.text(), ALPHABET, "{path}");
        assert!(reply.headers.get("content-length").is_none(), "{path}");
    }
    assert_eq!(heads.lock().unwrap().heads.len(), 2 * paths.len() + 1);
}

/// Answers `101 Switching Protocols` to `/switch`, `200` with a JSON body to anything else.
fn switches(head: &str) -> Vec<u8> {
    match head.starts_with("GET /switch ") {
        true => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec(),
        false => b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}".to_vec(),
    }
}

/// The sidecar never asks an upstream to switch protocols (`Upgrade` is hop-by-hop), so a `101`
/// is a protocol error: the app gets a 502 and the sidecar keeps serving.
#[tokio::test]
async fn an_unsolicited_101_is_a_502() {
    let (upstream, heads) = raw_upstream(switches).await;
    let r = sidecar_for(&format!("http://{upstream}"), "").await;
    let http = Http::default();

    let reply = within("the 101", http.get(&r.url("api", "/switch"))).await;
    let json = assert_error(&reply, 502, "upstream_protocol_error", "api", &[]);
    let description = json["error_description"].as_str().unwrap();
    assert!(description.contains("101"), "{description}");
    assert!(
        reply.headers.get("upgrade").is_none(),
        "{:?}",
        reply.headers
    );
    // The switched connection is not the pool's to reuse: the sidecar closes it.
    closed(&heads, 1).await;

    // Even when the app asked for an upgrade: the sidecar did not pass the request on.
    let asked = within(
        "the 101 to an upgrade request",
        raw(
            r.addr("api"),
            b"GET /switch HTTP/1.1\r\nHost: sidecar\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
    )
    .await;
    assert_raw_error(&asked, 502, "upstream_protocol_error", "api", &[]);

    // Over h2c, where a 101 cannot even be expressed.
    let h2 = within(
        "the 101 over h2c",
        Http::h2c().get(&r.url("api", "/switch")),
    )
    .await;
    assert_error(&h2, 502, "upstream_protocol_error", "api", &[]);

    // The sidecar (and its upstream pool) carry on.
    let ok = within("a normal request", http.get(&r.url("api", "/fine"))).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["ok"], true);

    closed(&heads, 3).await;
    let log = heads.lock().unwrap();
    assert_eq!(log.heads.len(), 4);
    for head in log.heads.iter() {
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("\r\nupgrade:"), "{head}");
        assert!(!lower.contains("\r\nconnection:"), "{head}");
    }
}

/// An HTTP/1.1 upstream that sends `grpc-status` as a chunked trailer.
fn with_trailer(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTrailer: grpc-status\r\nTransfer-Encoding: chunked\r\n\r\n\
      7\r\npayload\r\n0\r\ngrpc-status: 0\r\n\r\n"
        .to_vec()
}

/// A client that speaks h2c to the sidecar and keeps the response's trailers.
async fn h2c_with_trailers(
    url: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> (StatusCode, Bytes, Option<HeaderMap>) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut request = Request::post(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(Bytes::from_static(body))).unwrap();
    let response = within("an h2c reply", client.request(request))
        .await
        .unwrap();
    let status = response.status();
    let collected = within("an h2c body", response.into_body().collect())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned();
    (status, collected.to_bytes(), trailers)
}

/// An HTTP/1.1 app's request over one connection of its own: the response's status, body and
/// trailers.
async fn http1_with_trailers(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Frames,
) -> (StatusCode, Bytes, Option<HeaderMap>) {
    let mut conn = one_connection::<Frames>(addr).await;
    let mut request = Request::post(path).header("host", addr.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = within(
        "an HTTP/1.1 reply",
        conn.send_request(request.body(body).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    let status = response.status();
    let collected = within("an HTTP/1.1 body", response.into_body().collect())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned();
    (status, collected.to_bytes(), trailers)
}

/// Trailers from an HTTP/1.1 upstream reach an h2c app, and an HTTP/1.1 app that asked for
/// them with `TE: trailers` (hyper writes HTTP/1.1 trailers only then, and only those the
/// forwarded `Trailer` header names).
#[tokio::test]
async fn chunked_trailers_from_an_http1_upstream_reach_h2c_and_http1_apps() {
    let (upstream, _heads) = raw_upstream(with_trailer).await;
    let r = sidecar_for(&format!("http://{upstream}"), "").await;
    let (status, body, trailers) =
        h2c_with_trailers(&r.url("api", "/t"), &[("te", "trailers")], b"").await;
    assert_eq!(status, 200);
    assert_eq!(body, "payload");
    let trailers = trailers.expect("no trailers reached the h2c app");
    assert_eq!(trailers["grpc-status"], "0");

    let (status, body, trailers) =
        http1_with_trailers(r.addr("api"), "/t", &[("te", "trailers")], Frames::new([])).await;
    assert_eq!(status, 200);
    assert_eq!(body, "payload");
    let trailers = trailers.expect("no trailers reached the HTTP/1.1 app");
    assert_eq!(trailers["grpc-status"], "0");

    // An HTTP/1.1 app that did not ask for trailers gets the body alone.
    let (status, body, trailers) =
        http1_with_trailers(r.addr("api"), "/t", &[], Frames::new([])).await;
    assert_eq!(status, 200);
    assert_eq!(body, "payload");
    assert!(trailers.is_none(), "{trailers:?}");
}

/// What the gRPC-style upstream saw of each request: version, `te` values, authorization, the
/// body's trailers.
#[derive(Clone, Debug)]
struct Seen {
    version: Version,
    /// `:authority` and the `host` header, which RFC 9113 forbids to differ.
    authority: Option<String>,
    host: Option<String>,
    te: Vec<String>,
    authorization: Option<String>,
    trailers: Option<HeaderMap>,
}

/// An h2-only TLS upstream (ALPN `h2`) in the manner of a gRPC server: `400` to a request
/// without exactly `te: trailers`, otherwise `200` with a streamed body (no length) and
/// `grpc-status` trailers, declared in a `Trailer` header.
async fn grpc_like_upstream(pki: &Pki) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(&[b"h2"]));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move { Ok::<_, Infallible>(grpc_answer(req, &log).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

type GrpcBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn grpc_answer(req: Request<Incoming>, log: &Mutex<Vec<Seen>>) -> Response<GrpcBody> {
    let te: Vec<String> = req
        .headers()
        .get_all("te")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let version = req.version();
    let authority = req.uri().authority().map(|a| a.to_string());
    let host = req
        .headers()
        .get("host")
        .map(|v| v.to_str().unwrap().to_owned());
    let authorization = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    let (_, body) = req.into_parts();
    let collected = body.collect().await.unwrap();
    log.lock().unwrap().push(Seen {
        version,
        authority,
        host,
        te: te.clone(),
        authorization,
        trailers: collected.trailers().cloned(),
    });
    let request_body = collected.to_bytes();
    if te != ["trailers"] {
        let mut response =
            Response::new(Full::new(Bytes::from_static(b"te: trailers required")).boxed());
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("grpc-message", "ok".parse().unwrap());
    let mut echo = b"echo:".to_vec();
    echo.extend_from_slice(&request_body);
    let body = Frames::new([Frame::data(Bytes::from(echo)), Frame::trailers(trailers)]).boxed();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert("content-type", "application/grpc".parse().unwrap());
    headers.insert("trailer", "grpc-status, grpc-message".parse().unwrap());
    response
}

/// A sidecar in front of a [`grpc_like_upstream`], trusting its CA (written under the returned
/// directory).
async fn grpc_sidecar(pki: &Pki, upstream: SocketAddr) -> (Running, std::path::PathBuf) {
    let dir = temp_dir("protocol");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let r = sidecar_for(
        &format!("https://localhost:{}", upstream.port()),
        &format!("ca_file = \"{}\"", ca.display()),
    )
    .await;
    (r, dir)
}

/// gRPC over h2: the app (h2c) sends `te: trailers`, the sidecar forwards exactly that over
/// its h2 connection, and the upstream's trailers come back to the app. Any other `TE` is
/// dropped as hop-by-hop, which such an upstream refuses.
#[tokio::test]
async fn te_trailers_reaches_an_h2_upstream_and_trailers_come_back() {
    let pki = pki();
    let (upstream, seen) = grpc_like_upstream(&pki).await;
    let (r, dir) = grpc_sidecar(&pki, upstream).await;
    let url = r.url("api", "/pkg.Service/Method");
    let grpc = [("content-type", "application/grpc")];

    let (status, body, trailers) = h2c_with_trailers(
        &url,
        &[grpc[0], ("te", "trailers")],
        b"\x00\x00\x00\x00\x01x",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, &b"echo:\x00\x00\x00\x00\x01x"[..]);
    let trailers = trailers.expect("no trailers reached the app");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");

    // Any other value, alone or beside `trailers`, is not forwarded.
    for te in ["gzip", "trailers, deflate;q=0.5", "chunked"] {
        let (status, body, _) = h2c_with_trailers(&url, &[grpc[0], ("te", te)], b"").await;
        assert_eq!(status, 400, "te: {te}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _, _) = h2c_with_trailers(&url, &grpc, b"").await;
    assert_eq!(status, 400, "the upstream must refuse a request without te");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    assert!(
        seen.iter().all(|s| s.version == Version::HTTP_2),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer static-token")));
    let target = format!("localhost:{}", upstream.port());
    assert!(
        seen.iter().all(|s| s.authority.as_deref() == Some(&*target)
            && s.host.as_deref().is_none_or(|h| h == target)),
        "{seen:?}"
    );
    assert_eq!(seen[0].te, ["trailers"]);
    assert!(seen[1..].iter().all(|s| s.te.is_empty()), "{seen:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// gRPC-style trailers for an HTTP/1.1 app, both ways: the trailers of its chunked request
/// reach the h2 upstream, and, as it sent `TE: trailers`, the upstream's response trailers come
/// back to it as chunked trailers.
#[tokio::test]
async fn trailers_cross_between_an_http1_app_and_an_h2_upstream() {
    let pki = pki();
    let (upstream, seen) = grpc_like_upstream(&pki).await;
    let (r, dir) = grpc_sidecar(&pki, upstream).await;
    let mut checksum = HeaderMap::new();
    checksum.insert("x-checksum", "42".parse().unwrap());
    let request_body = Frames::new([
        Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x01x")),
        Frame::trailers(checksum),
    ]);
    let headers = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
    ];
    let (status, body, trailers) =
        http1_with_trailers(r.addr("api"), "/pkg.Service/Method", &headers, request_body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, &b"echo:\x00\x00\x00\x00\x01x"[..]);
    let trailers = trailers.expect("no trailers reached the HTTP/1.1 app");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].te, ["trailers"]);
    let sent = seen[0]
        .trailers
        .as_ref()
        .expect("no trailers reached the upstream");
    assert_eq!(sent["x-checksum"], "42");
    let _ = std::fs::remove_dir_all(dir);
}
