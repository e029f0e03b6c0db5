//! Re-authentication on 401 (the README's "The 401 replay") end to end, over loopback TCP: one
//! token request for a burst of rejections, one replay with the identical body, the second 401 to
//! the app, `insufficient_scope`, bodies too large (or too long-winded) to replay, and `retry_on`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nexus_sidecar::standin::{Api, Seen, StandIn};
use support::*;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Lets a token be replaced as soon as it is rejected.
const NO_RATE_LIMIT: &str = "min_refresh_interval = \"0s\"";
/// Tags each application request so its upstream attempts can be told apart.
const REQ_ID: &str = "x-req-id";

/// A primed pair: one request went through, so the sidecar holds token #0.
async fn primed(upstream_extra: &str, auth_extra: &str) -> (StandIn, Running, Http) {
    let (s, r) = pair_on_demand(Api::NuvyNexus, upstream_extra, auth_extra).await;
    let http = Http::default();
    let reply = http.get(&r.url("api", "/prime")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(s.token_requests(), 1);
    (s, r, http)
}

/// The upstream attempts of each tagged request, in arrival order.
fn attempts(s: &StandIn) -> BTreeMap<String, Vec<Seen>> {
    let mut by_id = BTreeMap::<String, Vec<Seen>>::new();
    for seen in s.seen() {
        if let Some(id) = seen.headers.get(REQ_ID) {
            let id = id.to_str().unwrap().to_string();
            by_id.entry(id).or_default().push(seen);
        }
    }
    by_id
}

fn attempts_at(s: &StandIn, path: &str) -> Vec<Seen> {
    s.seen()
        .into_iter()
        .filter(|x| x.path_and_query == path)
        .collect()
}

fn body_of(i: usize) -> Bytes {
    // Distinct per request, a couple of KiB, not valid UTF-8 everywhere.
    let mut body = format!("request {i}: ").into_bytes();
    body.extend((0..2048 + i).map(|k| ((k * 7 + i) % 256) as u8));
    Bytes::from(body)
}

/// A request body of unknown length: its chunks, without a size hint, so hyper sends it
/// `Transfer-Encoding: chunked`.
struct Chunked(VecDeque<Bytes>);

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// A request body fed from a channel, declaring `len` bytes up front, so the test decides when
/// it ends.
struct Fed {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    len: u64,
}

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// POSTs `chunks` as a chunked body; the status and the concatenated chunks sent.
async fn post_chunked(url: &str, chunks: Vec<Bytes>) -> (StatusCode, Bytes) {
    let whole: Bytes = chunks.concat().into();
    let client = Client::builder(TokioExecutor::new()).build_http::<Chunked>();
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .body(Chunked(chunks.into()))
        .unwrap();
    assert!(request.headers().get("content-length").is_none());
    let response = timeout(PATIENCE, client.request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    (status, whole)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_401s_costs_one_token_request_and_replays_each_body_once() {
    let (s, r, http) = primed("", NO_RATE_LIMIT).await;
    let revoked = s.issued_tokens()[0].clone();
    s.revoke_all();

    // The re-authentication is held at the token endpoint, so the rest of the burst piles up
    // behind it: with a revoked token in hand or with none.
    s.hold_token_requests(true);
    let url = r.url("api", "/v1/orders");
    let mut set = JoinSet::new();
    for i in 0..50 {
        let (http, url) = (http.clone(), url.clone());
        set.spawn(async move {
            let id = i.to_string();
            let reply = http
                .send(Method::POST, &url, &[(REQ_ID, &id)], body_of(i))
                .await;
            (i, reply)
        });
    }
    timeout(PATIENCE, s.wait_held(1)).await.unwrap();
    s.hold_token_requests(false);
    timeout(PATIENCE, async {
        while let Some(done) = set.join_next().await {
            let (i, reply) = done.unwrap();
            assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
            assert_eq!(reply.json()["body_len"], body_of(i).len());
        }
    })
    .await
    .unwrap();

    assert_eq!(
        s.token_requests(),
        2,
        "one token request for the whole burst"
    );
    let fresh = s.issued_tokens()[1].clone();
    let by_id = attempts(&s);
    assert_eq!(by_id.len(), 50);
    let mut replayed = 0;
    for (id, tries) in &by_id {
        let expected = body_of(id.parse().unwrap());
        assert!(tries.len() <= 2, "request {id}: {} attempts", tries.len());
        for t in tries {
            assert_eq!(t.body, expected, "request {id}: body changed");
        }
        let (last, earlier) = tries.split_last().unwrap();
        assert!(last.authorized);
        assert_eq!(last.token.as_deref(), Some(fresh.as_str()));
        for t in earlier {
            assert!(!t.authorized);
            assert_eq!(t.token.as_deref(), Some(revoked.as_str()));
        }
        replayed += earlier.len();
    }
    // The sidecar held the revoked token, so at least the first request met a 401.
    assert!(replayed >= 1);
}

#[tokio::test]
async fn a_second_401_reaches_the_app() {
    let (s, r, http) = primed("", NO_RATE_LIMIT).await;
    s.set_api_always_401(true);
    let reply = http
        .send(
            Method::GET,
            &r.url("api", "/v1/x"),
            &[(REQ_ID, "1")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 401);
    // The upstream's own answer, not one the sidecar made up.
    assert!(reply.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    let json = reply.json();
    assert_eq!(json["error"], "invalid_token");
    assert!(json.get("upstream").is_none(), "{json}");

    let tries = &attempts(&s)["1"];
    assert_eq!(tries.len(), 2, "one replay, no more");
    assert_eq!(s.token_requests(), 2);
    let issued = s.issued_tokens();
    assert_eq!(tries[0].token.as_deref(), Some(issued[0].as_str()));
    assert_eq!(tries[1].token.as_deref(), Some(issued[1].as_str()));
}

#[tokio::test]
async fn a_401_on_a_token_younger_than_the_interval_is_passed_through_when_the_wait_is_too_long() {
    // The interval (1 h) is far past token_wait (5 s): waiting it out is not an option.
    let (s, r, http) = primed("", "min_refresh_interval = \"1h\"").await;
    s.revoke_all();
    let reply = http
        .send(
            Method::GET,
            &r.url("api", "/v1/x"),
            &[(REQ_ID, "1")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(attempts(&s)["1"].len(), 1);
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn insufficient_scope_is_passed_through_and_keeps_the_token() {
    let (s, r, http) = primed("", NO_RATE_LIMIT).await;
    let token = s.issued_tokens()[0].clone();
    let reply = http.get(&r.url("api", "/scope-denied")).await;
    assert_eq!(reply.status, 401);
    assert!(reply.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(reply.json()["error"], "insufficient_scope");
    assert_eq!(attempts_at(&s, "/scope-denied").len(), 1);
    assert_eq!(s.token_requests(), 1);

    let next = http.get(&r.url("api", "/after")).await;
    assert_eq!(next.status, 200);
    let after = attempts_at(&s, "/after");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].token.as_deref(), Some(token.as_str()));
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn a_body_over_max_replay_body_streams_and_its_401_passes_through() {
    let (s, r, http) = primed("max_replay_body = \"1KiB\"", NO_RATE_LIMIT).await;
    s.revoke_all();
    let big = body_of(64 * 1024);
    assert!(big.len() > 64 * 1024);
    let reply = http
        .send(
            Method::POST,
            &r.url("api", "/upload"),
            &[(REQ_ID, "big")],
            big.clone(),
        )
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"], "invalid_token");
    let tries = &attempts(&s)["big"];
    assert_eq!(tries.len(), 1, "a streamed body cannot be replayed");
    assert_eq!(tries[0].body, big);
    assert_eq!(
        s.token_requests(),
        1,
        "no token request for a 401 not replayed"
    );

    // The rejected token was dropped all the same: the next request fetches a new one first.
    let reply = http
        .send(
            Method::GET,
            &r.url("api", "/small"),
            &[(REQ_ID, "small")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(s.token_requests(), 2);
    let tries = &attempts(&s)["small"];
    assert_eq!(tries.len(), 1);
    assert_eq!(
        tries[0].token.as_deref(),
        Some(s.issued_tokens()[1].as_str())
    );
}

#[tokio::test]
async fn a_chunked_body_within_the_limit_is_replayed_byte_for_byte() {
    let (s, r, _) = primed("max_replay_body = \"64KiB\"", NO_RATE_LIMIT).await;
    s.revoke_all();
    let chunks: Vec<Bytes> = (0..5).map(|i| body_of(100 + i)).collect();
    let (status, whole) = post_chunked(&r.url("api", "/chunked"), chunks).await;
    assert_eq!(status, 200);
    let tries = attempts_at(&s, "/chunked");
    assert_eq!(tries.len(), 2);
    assert!(!tries[0].authorized && tries[1].authorized);
    for t in &tries {
        assert_eq!(t.body, whole);
    }
    assert_eq!(s.token_requests(), 2);
}

#[tokio::test]
async fn a_chunked_body_beyond_the_limit_streams_and_its_401_passes_through() {
    let (s, r, http) = primed("max_replay_body = \"1KiB\"", NO_RATE_LIMIT).await;
    s.revoke_all();
    let chunks: Vec<Bytes> = (0..8).map(|i| body_of(i).slice(..512)).collect();
    let (status, whole) = post_chunked(&r.url("api", "/chunked"), chunks).await;
    assert_eq!(status, 401);
    let tries = attempts_at(&s, "/chunked");
    assert_eq!(tries.len(), 1);
    assert_eq!(
        tries[0].body, whole,
        "the prefix read ahead and the rest, in order"
    );
    assert_eq!(s.token_requests(), 1);
    assert_eq!(http.get(&r.url("api", "/next")).await.status, 200);
    assert_eq!(s.token_requests(), 2);
}

#[tokio::test]
async fn retry_on_403_replays_once_and_passes_the_second_403() {
    let (s, r, http) = primed("retry_on = [401, 403]", NO_RATE_LIMIT).await;
    let reply = http.get(&r.url("api", "/status/403")).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["status"], 403);
    let tries = attempts_at(&s, "/status/403");
    assert_eq!(tries.len(), 2);
    assert_eq!(s.token_requests(), 2);
    let issued = s.issued_tokens();
    assert_eq!(tries[0].token.as_deref(), Some(issued[0].as_str()));
    assert_eq!(tries[1].token.as_deref(), Some(issued[1].as_str()));
}

#[tokio::test]
async fn a_403_is_not_retried_by_default() {
    let (s, r, http) = primed("", NO_RATE_LIMIT).await;
    let reply = http.get(&r.url("api", "/status/403")).await;
    assert_eq!(reply.status, 403);
    assert_eq!(attempts_at(&s, "/status/403").len(), 1);
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_401_for_an_old_token_does_not_drop_the_newer_one() {
    // Y streams a body too large to replay and carries token A; meanwhile A is revoked and X
    // replaces it with B. When Y's 401 finally arrives, the cache holds B, which must stay.
    let (s, r) = pair_on_demand(Api::NuvyNexus, "max_replay_body = \"1KiB\"", NO_RATE_LIMIT).await;
    let http = Http::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let half = Bytes::from(vec![b'y'; 2048]);
    let request = Request::builder()
        .method(Method::POST)
        .uri(r.url("api", "/late"))
        .body(Fed { rx, len: 4096 })
        .unwrap();
    tx.send(half.clone()).await.unwrap();
    s.hold_token_requests(true);
    let y = tokio::spawn(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Fed>();
        let response = client.request(request).await.unwrap();
        let status = response.status();
        response.into_body().collect().await.unwrap();
        status
    });
    // Y's cold start is the one token request: whatever it brings, Y sends.
    timeout(PATIENCE, s.wait_held(1)).await.unwrap();
    s.hold_token_requests(false);
    let x = http.get(&r.url("api", "/x")).await;
    assert_eq!(x.status, 200, "{}", x.text());
    s.revoke_all();
    let x = http.get(&r.url("api", "/x")).await;
    assert_eq!(x.status, 200, "{}", x.text());
    assert_eq!(s.token_requests(), 2);
    let issued = s.issued_tokens();
    let (a, b) = (issued[0].clone(), issued[1].clone());

    tx.send(half).await.unwrap();
    drop(tx);
    let status = timeout(PATIENCE, y).await.unwrap().unwrap();
    assert_eq!(status, 401, "Y carried the revoked token A");
    let late = attempts_at(&s, "/late");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].token.as_deref(), Some(a.as_str()));
    assert_eq!(late[0].body.len(), 4096);

    let z = http.get(&r.url("api", "/z")).await;
    assert_eq!(z.status, 200, "{}", z.text());
    let z = attempts_at(&s, "/z");
    assert_eq!(z.len(), 1);
    assert_eq!(z[0].token.as_deref(), Some(b.as_str()), "B was kept");
    assert_eq!(s.token_requests(), 2);
}
