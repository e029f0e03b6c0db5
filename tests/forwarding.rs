//! Forwarding (the README's "Forwarding") end to end: what the upstream receives and what the
//! application gets back. Headers (Authorization, hop-by-hop, Host, static headers), paths and
//! queries byte for byte, large bodies both ways, h2c and keep-alive from the application, every
//! method.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod wire;

use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Empty, Full};
use nexus_sidecar::standin::{download_byte, Api};
use support::*;
use wire::*;

/// A body whose bytes depend on their position, so a reordering or a lost chunk shows.
fn upload_pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 13)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn the_apps_authorization_is_replaced_by_the_sidecars_token() {
    let (s, r) = pair(Api::NuvyNexus, "", "").await;
    let reply = Http::default()
        .send(
            Method::GET,
            &r.url("api", "/v1/me"),
            &[("authorization", "Bearer app-token")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    let values: Vec<_> = seen[0].headers.get_all(AUTHORIZATION).iter().collect();
    assert_eq!(values.len(), 1, "{values:?}");
    assert_eq!(values[0], &format!("Bearer {}", s.issued_tokens()[0]));
    assert!(seen[0].authorized);
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_dropped_and_host_is_the_targets() {
    let (s, r) = pair(Api::NuvyNexus, "", "").await;
    let reply = Http::default()
        .send(
            Method::GET,
            &r.url("api", "/v1/things"),
            &[
                // Connection options are case-insensitive tokens (RFC 9110 §7.6.1).
                ("connection", "X-Private, Keep-Alive"),
                ("x-private", "for the sidecar only"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic cHJveHk6cHc="),
                // Only a bare `trailers` crosses (see below); a list with a coding does not.
                ("te", "trailers, deflate;q=0.5"),
                ("upgrade", "websocket"),
                ("proxy-connection", "keep-alive"),
                ("trailer", "x-checksum"),
                ("x-request-id", "abc-123"),
                ("accept", "application/json"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = s.seen();
    let h = &seen[0].headers;
    for gone in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h:?}");
    }
    // `Trailer` describes the message, not the connection (RFC 9110 §6.6.2): it crosses.
    assert_eq!(
        h.get("trailer").map(|v| v.to_str().unwrap()),
        Some("x-checksum"),
        "{h:?}"
    );
    assert_eq!(h["x-request-id"], "abc-123");
    assert_eq!(h["accept"], "application/json");
    assert_eq!(h.get_all("host").iter().count(), 1);
    assert_eq!(h["host"], s.addr().to_string().as_str());
    assert_ne!(h["host"], r.addr("api").to_string().as_str());
}

/// `TE: trailers` is the one `TE` forwarded (h2 and gRPC need it), as exactly that value;
/// any other value, or a list that names another coding, is dropped as hop-by-hop.
#[tokio::test]
async fn te_trailers_is_forwarded_and_no_other_te() {
    let (s, r) = pair(Api::NuvyNexus, "", "").await;
    let http = Http::default();
    /// The app's headers, and the `te` the upstream should see.
    type Case = (
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
    );
    let cases: [Case; 6] = [
        (&[("te", "trailers")], Some("trailers")),
        (
            &[("te", "Trailers"), ("connection", "TE")],
            Some("trailers"),
        ),
        (&[("te", "trailers"), ("te", "trailers")], Some("trailers")),
        (&[("te", "gzip")], None),
        (&[("te", "trailers, gzip;q=0.5")], None),
        (&[("te", "trailers"), ("te", "deflate")], None),
    ];
    for (i, (headers, _)) in cases.iter().enumerate() {
        let reply = http
            .send(
                Method::GET,
                &r.url("api", &format!("/v1/te/{i}")),
                headers,
                Bytes::new(),
            )
            .await;
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.text());
    }
    let seen = s.seen();
    assert_eq!(seen.len(), cases.len());
    for (x, (headers, want)) in seen.iter().zip(cases) {
        let te: Vec<_> = x.headers.get_all("te").iter().collect();
        match want {
            Some(want) => assert_eq!(te, [want], "{headers:?}"),
            None => assert!(te.is_empty(), "{headers:?} sent te {te:?}"),
        }
        assert!(x.headers.get("connection").is_none(), "{headers:?}");
    }
}

/// A request with both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.3, the shape of a
/// request-smuggling attempt): hyper's server reads the body by its chunks and drops the length
/// before the sidecar sees the request, and closes the connection after answering. The upstream
/// gets the whole body under a framing of the sidecar's own, buffered or streamed.
#[tokio::test]
async fn a_request_with_both_lengths_is_forwarded_whole_by_its_chunks() {
    for max_replay_body in ["1MiB", "4B"] {
        let (s, r) = pair(
            Api::NuvyNexus,
            &format!("max_replay_body = \"{max_replay_body}\""),
            "",
        )
        .await;
        let chunks = "d\r\nabcdefghijklm\r\nd\r\nnopqrstuvwxyz\r\n0\r\n\r\n";
        let heads = [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 1000\r\n",
        ];
        for (i, framing) in heads.iter().enumerate() {
            let request = format!(
                "POST /v1/both/{i} HTTP/1.1\r\nHost: {}\r\n{framing}\r\n{chunks}",
                r.addr("api")
            );
            let reply = within("the reply", raw(r.addr("api"), request.as_bytes())).await;
            assert_eq!(
                reply.status,
                200,
                "{max_replay_body} {framing:?}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(
                reply.headers.get("connection").map(String::as_str),
                Some("close")
            );
            assert_eq!(
                reply.json()["body_len"],
                26,
                "{max_replay_body} {framing:?}"
            );
        }
        let seen = s.seen();
        assert_eq!(seen.len(), heads.len());
        for x in &seen {
            let what = format!("{max_replay_body} {}: {:?}", x.path_and_query, x.headers);
            assert_eq!(x.body, "abcdefghijklmnopqrstuvwxyz", "{what}");
            let length = x.headers.get("content-length");
            let coding = x.headers.get("transfer-encoding");
            match max_replay_body {
                // Buffered for replay: sent with its exact length.
                "1MiB" => assert!(
                    length.is_some_and(|l| l == "26") && coding.is_none(),
                    "{what}"
                ),
                // Streamed: chunked again, with no length.
                _ => assert!(
                    length.is_none() && coding.is_some_and(|c| c == "chunked"),
                    "{what}"
                ),
            }
        }

        // A transfer coding that does not end in `chunked` leaves the body unframed: hyper's
        // server answers 400 itself and nothing goes upstream.
        let request = format!(
            "POST /v1/gzip HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
            r.addr("api")
        );
        let reply = within("the 400", raw(r.addr("api"), request.as_bytes())).await;
        assert_eq!(reply.status, 400);
        assert_eq!(s.seen().len(), heads.len());
    }
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_app() {
    let (s, r) = pair(Api::NuvyNexus, "", "").await;
    let http = Http::default();
    let reply = http.get(&r.url("api", "/v1/things")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["x-standin-api"], "nuvy-nexus");
    assert!(
        reply.headers.get("x-hop-response").is_none(),
        "{:?}",
        reply.headers
    );
    assert!(
        reply.headers.get("keep-alive").is_none(),
        "{:?}",
        reply.headers
    );
    if let Some(c) = reply.headers.get("connection") {
        assert!(!c.to_str().unwrap().contains("x-hop-response"));
    }

    // Control: the stand-in really sends them, so the test above is not vacuous.
    let direct = http
        .send(
            Method::GET,
            &format!("{}/v1/things", s.base_url()),
            &[("authorization", &format!("Bearer {}", s.issued_tokens()[0]))],
            Bytes::new(),
        )
        .await;
    assert_eq!(direct.status, 200);
    assert_eq!(direct.headers["x-hop-response"], "1");
    assert_eq!(direct.headers["keep-alive"], "timeout=5");
}

#[tokio::test]
async fn path_and_query_arrive_verbatim_under_the_base_path_with_static_headers() {
    let s = standin(Api::NuvyNexus).await;
    let toml = upstream_toml("api", &s, "headers = { request_iso8601 = \"true\" }", "").replace(
        &format!("target = \"{}\"", s.base_url()),
        &format!("target = \"{}/base\"", s.base_url()),
    );
    assert!(toml.contains("/base\""), "{toml}");
    let r = sidecar(&toml).await;
    let reply = Http::default()
        .send(
            Method::GET,
            &r.url("api", "/a%2Fb/c%20d?x=1&y=%2B&z"),
            &[("request_iso8601", "false")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = s.seen();
    assert_eq!(seen[0].path_and_query, "/base/a%2Fb/c%20d?x=1&y=%2B&z");
    let values: Vec<_> = seen[0].headers.get_all("request_iso8601").iter().collect();
    assert_eq!(values, ["true"]);
}

async fn upload(max_replay_body: &str) {
    let (s, r) = pair(
        Api::NuvyNexus,
        &format!("max_replay_body = \"{max_replay_body}\""),
        "",
    )
    .await;
    let body = upload_pattern(10 * 1024 * 1024);
    let reply = Http::default()
        .post(&r.url("api", "/upload"), body.clone())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["body_len"], body.len());
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), body.len());
    assert!(seen[0].body == body, "the upstream got different bytes");
}

#[tokio::test]
async fn ten_mib_upload_buffered_for_replay() {
    upload("16MiB").await;
}

#[tokio::test]
async fn ten_mib_upload_streamed() {
    upload("1KiB").await;
}

#[tokio::test]
async fn ten_mib_download() {
    let (_s, r) = pair(Api::NuvyNexus, "", "").await;
    let len: u64 = 10 * 1024 * 1024;
    let reply = Http::default()
        .get(&r.url("api", &format!("/download?bytes={len}")))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len() as u64, len);
    let mismatch = reply
        .body
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != download_byte(i as u64));
    assert_eq!(mismatch, None, "first differing byte");
}

/// A body beyond `max_replay_body` of unknown length goes upstream as it arrives: the second
/// half is only produced after the upstream has received the first, so a sidecar that buffered
/// the body would never get there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_is_streamed_not_buffered() {
    let (upstream, watched) = watching_upstream(64 * 1024).await;
    let r = sidecar(&format!(
        "[[upstream]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\ntarget = \"http://{upstream}\"\nmax_replay_body = \"1KiB\"\n[upstream.auth]\nflow = \"static\"\ntoken = \"static-token\"\n"
    ))
    .await;
    let body = upload_pattern(128 * 1024);
    let (tx, channel) = channel_body();
    let mut conn = one_connection(r.addr("api")).await;
    let request = Request::post(format!("http://{}/stream", r.addr("api")))
        .body(channel)
        .unwrap();
    let response = tokio::spawn(conn.send_request(request));

    tx.send(body.slice(..64 * 1024)).await.unwrap();
    // Only a guard against hanging forever: if the sidecar buffered, progress never comes.
    tokio::time::timeout(Duration::from_secs(30), watched.progress)
        .await
        .expect("the upstream never saw the first half: the body was buffered")
        .unwrap();
    tx.send(body.slice(64 * 1024..)).await.unwrap();
    drop(tx);

    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let (parts, got) = watched.request.await.unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the upstream got different bytes");
    assert_eq!(parts.headers[AUTHORIZATION], "Bearer static-token");
}

#[tokio::test]
async fn h2c_from_the_app_end_to_end() {
    let (s, r) = pair(Api::NuvyNexus, "", "").await;
    let http = Http::h2c();
    let reply = http.get(&r.url("api", "/v1/h2?q=1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.headers["x-standin-api"], "nuvy-nexus");
    let posted = http.post(&r.url("api", "/v1/h2"), "over h2c").await;
    assert_eq!(posted.status, 200);
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path_and_query, "/v1/h2?q=1");
    assert!(seen.iter().all(|x| x.authorized));
    assert_eq!(seen[1].body, "over h2c");
    // The application's h2 `:authority` is the sidecar's; upstream gets the target's.
    assert_eq!(seen[0].headers["host"], s.addr().to_string().as_str());
}

#[tokio::test]
async fn http1_keep_alive_serves_several_requests_on_one_connection() {
    let (s, r) = pair(Api::NuvyNexus, "", "").await;
    let mut conn = one_connection::<Full<Bytes>>(r.addr("api")).await;
    for i in 0..5 {
        conn.ready()
            .await
            .expect("the sidecar closed the connection");
        let request = Request::post(format!("/v1/n/{i}"))
            .header("host", r.addr("api").to_string())
            .body(Full::new(Bytes::from(format!("body {i}"))))
            .unwrap();
        let reply = Reply::read(conn.send_request(request).await.unwrap()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.headers.get("connection").is_none_or(|c| c != "close"));
    }
    let seen = s.seen();
    assert_eq!(seen.len(), 5);
    for (i, x) in seen.iter().enumerate() {
        assert_eq!(x.path_and_query, format!("/v1/n/{i}"));
        assert_eq!(x.body, format!("body {i}"));
    }
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn methods_are_forwarded_intact() {
    let (s, r) = pair(Api::NuvyNexus, "", "").await;
    let http = Http::default();
    let methods = [
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ];
    for m in &methods {
        let body = match *m {
            Method::PUT | Method::PATCH => Bytes::from(format!("{m} body")),
            _ => Bytes::new(),
        };
        let reply = http
            .send(m.clone(), &r.url("api", "/v1/item/7"), &[], body)
            .await;
        assert_eq!(reply.status, 200, "{m}: {}", reply.text());
        if *m == Method::HEAD {
            assert!(reply.body.is_empty());
        } else {
            assert_eq!(reply.json()["method"], m.as_str());
        }
    }
    // HEAD keeps the length a GET would have had, without the body.
    let head = http
        .send(
            Method::HEAD,
            &r.url("api", "/download?bytes=1234"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], "1234");
    assert!(head.body.is_empty());

    let seen: Vec<_> = s
        .seen()
        .into_iter()
        .filter(|x| x.path_and_query == "/v1/item/7")
        .collect();
    let got: Vec<_> = seen.iter().map(|x| x.method.clone()).collect();
    assert_eq!(got, methods);
    assert_eq!(seen[0].body, "PUT body");
    assert_eq!(seen[1].body, "PATCH body");
}

/// An empty body stays empty (no stray `Transfer-Encoding: chunked` upstream).
#[tokio::test]
async fn an_empty_get_is_sent_without_a_body() {
    let (s, r) = pair(Api::NuvyNexus, "", "").await;
    let mut conn = one_connection::<Empty<Bytes>>(r.addr("api")).await;
    let request = Request::get("/v1/empty")
        .header("host", r.addr("api").to_string())
        .body(Empty::new())
        .unwrap();
    let reply = Reply::read(conn.send_request(request).await.unwrap()).await;
    assert_eq!(reply.status, 200);
    let seen = s.seen();
    assert!(seen[0].body.is_empty());
    assert!(seen[0].headers.get("transfer-encoding").is_none());
}

/// Statuses without a body (204, 304) and error statuses come back as the upstream sent them.
#[tokio::test]
async fn upstream_statuses_pass_through() {
    let (_s, r) = pair(Api::NuvyNexus, "", "").await;
    let http = Http::default();
    for code in [201u16, 204, 304, 404, 418, 500, 503] {
        let reply = http.get(&r.url("api", &format!("/status/{code}"))).await;
        assert_eq!(reply.status.as_u16(), code);
        if code == 204 || code == 304 {
            assert!(reply.body.is_empty());
        } else {
            assert_eq!(
                reply.json()["status"],
                code,
                "the upstream's body, not the sidecar's"
            );
        }
    }
}

/// Response bodies go to the application as they arrive: the upstream sends its second half
/// only after the application has received the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_is_streamed_not_buffered() {
    let (upstream, body_tx) = dribbling_upstream().await;
    let r = sidecar(&format!(
        "[[upstream]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\ntarget = \"http://{upstream}\"\n[upstream.auth]\nflow = \"static\"\ntoken = \"static-token\"\n"
    ))
    .await;
    let mut conn = one_connection::<Empty<Bytes>>(r.addr("api")).await;
    let request = Request::get("/big")
        .header("host", r.addr("api").to_string())
        .body(Empty::new())
        .unwrap();
    let response = tokio::spawn(conn.send_request(request));
    let body_tx = body_tx.await.unwrap();
    let half = 256 * 1024;
    let body = upload_pattern(2 * half);
    body_tx.send(body.slice(..half)).await.unwrap();

    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut incoming = response.into_body();
    let mut got = Vec::new();
    // Only a guard against hanging forever: a buffering sidecar never sends the first half.
    tokio::time::timeout(Duration::from_secs(30), async {
        while got.len() < half {
            let frame = incoming.frame().await.unwrap().unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
        }
    })
    .await
    .expect("the app never got the first half: the response was buffered");
    body_tx.send(body.slice(half..)).await.unwrap();
    drop(body_tx);
    got.extend_from_slice(&incoming.collect().await.unwrap().to_bytes());
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the app got different bytes");
}
