//! The resilience rules of the token lifecycle (the README's "When the token endpoint fails") end
//! to end, over loopback TCP: a failed refresh is retried before the token retires, a request
//! without a token waits for a backoff that ends within its `token_wait` (and fails at once
//! otherwise), a 401 on a young token is held and replayed, `prefetch` obtains tokens before ready
//! and keeps them fresh without traffic, and an unusable `expires_in` is not taken as an hour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use nexus_sidecar::standin::{Api, Failure, StandIn};
use nexus_sidecar::{Config, Sidecar};
use support::*;
use tokio::sync::oneshot;

const REQ_ID: &str = "x-request-id";

/// A sidecar for `s` with an admin listener; returns (app base URL, admin base URL, stop).
async fn with_admin(s: &StandIn, auth_extra: &str) -> (String, String, oneshot::Sender<()>) {
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        upstream_toml("api", s, "", auth_extra)
    );
    let config = Config::from_toml(&toml).unwrap();
    let sidecar = Sidecar::bind(&config).await.unwrap();
    let app = format!("http://{}", sidecar.local_addr("api").unwrap());
    let admin = format!("http://{}", sidecar.admin_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(sidecar.run(async {
        let _ = stopped.await;
    }));
    (app, admin, stop)
}

/// Polls `/readyz` until its status is `want`; returns the last body.
async fn readyz_becomes(http: &Http, admin: &str, want: StatusCode) -> serde_json::Value {
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    within("/readyz to change", async {
        loop {
            pace.tick().await;
            let reply = http.get(&format!("{admin}/readyz")).await;
            if reply.status == want {
                return reply.json();
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_is_retried_before_the_token_retires() {
    // 6 s tokens, refresh due 3 s before their end (2.4 s in), retired 5.4 s in. Three failures
    // in a row would back off 1 + 2 + 4 s under the ordinary steps, long past retirement; each
    // retry comes after a quarter of the life left instead. With token_wait = 0 a request that
    // met a gap would fail at once, so every 200 below proves there was none.
    let (s, r) = pair(
        Api::NuvyNexus,
        "",
        "refresh_before = \"3s\"\nmin_refresh_interval = \"100ms\"\ntoken_wait = \"0s\"\nprefetch = false",
    )
    .await;
    s.set_expires_in(Some(6));
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    assert_eq!(http.get(&url).await.status, 200);
    let first = s.issued_tokens()[0].clone();
    s.fail_token_requests(3, Failure::Status(503));
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut served = 0;
    within("a refresh after three failures", async {
        while s.issued_tokens().len() < 2 {
            pace.tick().await;
            let reply = http.get(&url).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            served += 1;
        }
    })
    .await;
    assert_eq!(
        s.token_requests(),
        5,
        "one, three failed refreshes, one good"
    );
    // Up to the new token, every request carried the first one: it never retired.
    let seen = s.seen();
    assert!(seen.iter().all(|x| x.authorized));
    let second = &s.issued_tokens()[1];
    let switch = seen
        .iter()
        .position(|x| x.token.as_ref() == Some(second))
        .unwrap_or(seen.len());
    assert!(switch > 1, "requests were made on the first token");
    assert!(seen[..switch]
        .iter()
        .all(|x| x.token.as_deref() == Some(first.as_str())));
    assert!(served > 0);
}

#[tokio::test]
async fn a_request_waits_for_a_backoff_that_ends_within_token_wait() {
    let (s, r) = pair(Api::NuvyNexus, "", "prefetch = false\ntoken_wait = \"10s\"").await;
    s.fail_token_requests(2, Failure::Status(500));
    let reply = Http::default().get(&r.url("api", "/v1/x")).await;
    // Two failures (backoff about 1 s, then 2 s) end within token_wait: served.
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(s.token_requests(), 3);
    assert_eq!(s.api_requests(), 1);
}

#[tokio::test]
async fn a_request_fails_at_once_when_the_backoff_ends_after_token_wait() {
    let (s, r) = pair(Api::NuvyNexus, "", "prefetch = false").await;
    s.fail_token_requests(
        1,
        Failure::TooManyRequests {
            retry_after_secs: 30,
        },
    );
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    let reply = http.get(&url).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    // The next one does not wait 30 s either, nor ask the endpoint.
    let reply = http.get(&url).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["error"], "token_unavailable");
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn a_401_on_a_young_token_is_held_and_replayed_with_a_fresh_one() {
    // An interval long enough that the 401 surely meets a young token, within token_wait.
    let (s, r) = pair(
        Api::NuvyNexus,
        "",
        "prefetch = false\nmin_refresh_interval = \"3s\"\ntoken_wait = \"10s\"",
    )
    .await;
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    assert_eq!(http.get(&url).await.status, 200);
    s.revoke_all();
    let reply = http
        .send(
            Method::POST,
            &url,
            &[(REQ_ID, "young")],
            Bytes::from("body"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(s.token_requests(), 2);
    let tries: Vec<_> = s
        .seen()
        .into_iter()
        .filter(|x| x.request_id() == Some("young"))
        .collect();
    assert_eq!(tries.len(), 2, "one replay");
    assert!(!tries[0].authorized && tries[1].authorized);
}

#[tokio::test]
async fn prefetch_obtains_the_token_before_ready_so_the_first_request_never_waits() {
    let s = standin(Api::NuvyNexus).await;
    let (app, admin, _stop) = with_admin(&s, "").await;
    let http = Http::default();
    let ready = readyz_becomes(&http, &admin, StatusCode::OK).await;
    assert_eq!(ready["upstreams"]["api"]["state"], "live", "{ready}");
    assert_eq!(s.token_requests(), 1);
    assert_eq!(s.api_requests(), 0, "no traffic was needed");
    // The first request is served with what the keeper holds, without a token request.
    let reply = http.get(&format!("{app}/v1/x")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(s.token_requests(), 1);
    let used = s.seen().last().unwrap().token.clone().unwrap();
    assert_eq!(used, s.issued_tokens()[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_keeps_the_token_fresh_without_traffic() {
    let s = standin(Api::NuvyNexus).await;
    s.set_expires_in(Some(2));
    let (_app, _admin, _stop) = with_admin(&s, "min_refresh_interval = \"0s\"").await;
    // 2 s tokens, replaced again and again with no request at all.
    within("refreshes without traffic", s.wait_token_requests(3)).await;
    assert_eq!(s.api_requests(), 0);
    // The third may still be on its way; the first two were answered.
    assert!(s.issued_tokens().len() >= 2);
}

#[tokio::test]
async fn prefetch_with_wrong_credentials_is_never_ready() {
    let s = standin(Api::NuvyNexus).await;
    s.set_credentials(nexus_sidecar::standin::Credentials::new("other", "other"));
    let (_app, admin, _stop) = with_admin(&s, "").await;
    let http = Http::default();
    let ready = readyz_becomes(&http, &admin, StatusCode::SERVICE_UNAVAILABLE).await;
    // Before any token request has answered, the state is `fetching`; wait for the verdict.
    let ready = if ready["upstreams"]["api"]["state"] == "credential_error" {
        ready
    } else {
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        within("the credential error", async {
            loop {
                pace.tick().await;
                let body = http.get(&format!("{admin}/readyz")).await.json();
                if body["upstreams"]["api"]["state"] == "credential_error" {
                    return body;
                }
            }
        })
        .await
    };
    assert_eq!(ready["ready"], false, "{ready}");
    assert_eq!(ready["upstreams"]["api"]["token_error"], "invalid_client");
    assert_eq!(s.api_requests(), 0, "without any traffic");
}

#[tokio::test]
async fn without_prefetch_nothing_is_fetched_until_the_first_request() {
    let s = standin(Api::NuvyNexus).await;
    let (app, admin, _stop) = with_admin(&s, "prefetch = false").await;
    let http = Http::default();
    let ready = http.get(&format!("{admin}/readyz")).await;
    assert_eq!(ready.status, 200, "ready before its first token");
    assert_eq!(ready.json()["upstreams"]["api"]["state"], "idle");
    assert_eq!(s.token_requests(), 0);
    assert_eq!(http.get(&format!("{app}/v1/x")).await.status, 200);
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn an_unusable_expires_in_is_used_briefly_not_for_an_hour() {
    let s = standin(Api::NuvyNexus).await;
    s.set_expires_in(Some(0));
    s.set_jwt_lifetime(None);
    let (app, admin, _stop) = with_admin(&s, "prefetch = false").await;
    let http = Http::default();
    // The stand-in means it (its token is dead at once, so the app sees a 401); what matters
    // here is how long the sidecar would have kept it.
    http.get(&format!("{app}/v1/x")).await;
    let status = http.get(&format!("{admin}/status")).await.json();
    assert_eq!(
        status["upstreams"][0]["last_fetch"]["outcome"], "success",
        "{status}"
    );
    let expires_in = status["upstreams"][0]["expires_in_seconds"]
        .as_u64()
        .unwrap();
    assert!(expires_in <= 60, "{status}");
}
