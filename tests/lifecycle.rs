//! The token lifecycle (the README's "Tokens") end to end, over loopback TCP: single flight,
//! refresh ahead, real expiries, the rate limit, and what the application sees when the token
//! endpoint fails. Every test runs its own stand-in and sidecar.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::StatusCode;
use nexus_sidecar::standin::{Api, Credentials, Failure, StandIn};
use support::*;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

/// `n` concurrent GETs of `url`; the replies in completion order.
async fn burst(http: &Http, url: &str, n: usize) -> Vec<Reply> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (http, url) = (http.clone(), url.to_string());
        set.spawn(async move { http.get(&url).await });
    }
    let mut replies = Vec::with_capacity(n);
    while let Some(reply) = set.join_next().await {
        replies.push(reply.unwrap());
    }
    replies
}

fn assert_all(replies: &[Reply], status: StatusCode) {
    for reply in replies {
        assert_eq!(reply.status, status, "{}", reply.text());
    }
}

/// The bearer token of the last request the protected API saw.
fn last_token(s: &StandIn) -> String {
    s.seen().last().unwrap().token.clone().unwrap()
}

/// Asserts the sidecar's own token error (`token_unavailable`) and returns its JSON.
fn token_error(reply: &Reply, status: StatusCode) -> serde_json::Value {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "application/json");
    assert!(!reply.text().contains(SECRET_MARK), "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["error"], "token_unavailable", "{json}");
    assert_eq!(json["upstream"], "api", "{json}");
    json
}

// --- single flight -------------------------------------------------------------------------

#[tokio::test]
async fn sequential_requests_share_one_token() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    let http = Http::default();
    for i in 0..100 {
        let reply = http.get(&r.url("api", &format!("/v1/items/{i}"))).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    assert_eq!(s.token_requests(), 1);
    let issued = s.issued_tokens();
    assert_eq!(issued.len(), 1);
    let seen = s.seen();
    assert_eq!(seen.len(), 100, "no request was replayed");
    assert!(seen
        .iter()
        .all(|x| x.authorized && x.token.as_deref() == Some(issued[0].as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_burst_makes_one_token_request() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    let replies = timeout(
        PATIENCE,
        burst(&Http::default(), &r.url("api", "/v1/x"), 200),
    )
    .await
    .unwrap();
    assert_eq!(replies.len(), 200);
    assert_all(&replies, StatusCode::OK);
    assert_eq!(s.token_requests(), 1);
    assert_eq!(s.seen().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_burst_waits_for_a_held_token_request() {
    // The token endpoint holds the first request, so the whole burst piles up behind it.
    let (s, r) = pair_on_demand(Api::Quantoz, "", "").await;
    s.hold_token_requests(true);
    let (http, url) = (Http::default(), r.url("api", "/v1/x"));
    let task = tokio::spawn(async move { burst(&http, &url, 100).await });
    timeout(PATIENCE, s.wait_held(1)).await.unwrap();
    assert_eq!(s.api_requests(), 0, "nothing goes upstream without a token");
    s.hold_token_requests(false);
    let replies = timeout(PATIENCE, task).await.unwrap().unwrap();
    assert_all(&replies, StatusCode::OK);
    assert_eq!(s.token_requests(), 1);
}

// --- refresh ahead ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_runs_in_the_background_while_the_live_token_serves() {
    // 10 s tokens with a `refresh_before` longer than that: capped, the refresh is due at
    // half-life (4.5 s), which leaves 4.5 s of live token while the refresh is held.
    let (s, r) = pair_on_demand(
        Api::NuvyNexus,
        "",
        "refresh_before = \"1h\"\nmin_refresh_interval = \"0s\"",
    )
    .await;
    s.set_expires_in(Some(10));
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    assert_eq!(http.get(&url).await.status, 200);
    let first = s.issued_tokens()[0].clone();

    s.hold_token_requests(true);
    // Requests keep coming; once the token is due one of them starts the background refresh,
    // which the stand-in holds. A request that waited for it would not come back.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    timeout(PATIENCE, async {
        while s.held_token_requests() == 0 {
            pace.tick().await;
            let reply = http.get(&url).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
        s.wait_held(1).await;
    })
    .await
    .expect("requests waited for the refresh, or none started one");
    let seen_before = s.seen().len();

    // No request waits for the held refresh, and none starts a second one.
    let replies = timeout(PATIENCE, burst(&http, &url, 20)).await.unwrap();
    assert_all(&replies, StatusCode::OK);
    for _ in 0..20 {
        assert_eq!(http.get(&url).await.status, 200);
    }
    assert_eq!(s.held_token_requests(), 1);
    assert_eq!(s.token_requests(), 2);
    let during = &s.seen()[seen_before..];
    assert_eq!(during.len(), 40);
    assert!(during
        .iter()
        .all(|x| x.authorized && x.token.as_deref() == Some(first.as_str())));

    // Released: later requests move on to the refreshed token.
    s.hold_token_requests(false);
    let mut moved = false;
    for _ in 0..1000 {
        let reply = timeout(PATIENCE, http.get(&url)).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        if last_token(&s) != first {
            moved = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        moved,
        "requests kept using the first token after the refresh"
    );
    let issued = s.issued_tokens();
    assert!(issued.len() >= 2);
    assert!(issued[1..].contains(&last_token(&s)));
    assert!(s.seen().iter().all(|x| x.authorized));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roll_over_across_real_expiries() {
    let s = standin(Api::NuvyNexus).await;
    s.set_expires_in(Some(2));
    let r = sidecar(&upstream_toml("api", &s, "", "prefetch = false")).await;
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    // A steady client: one request every 20 ms until the fourth token has been issued.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut requests = 0;
    timeout(PATIENCE, async {
        while s.issued_tokens().len() < 4 && requests < 1500 {
            pace.tick().await;
            let reply = http.get(&url).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            requests += 1;
        }
    })
    .await
    .unwrap();
    let issued = s.issued_tokens();
    assert!(
        issued.len() >= 4,
        "{} tokens after {requests} requests",
        issued.len()
    );
    let seen = s.seen();
    assert_eq!(seen.len(), requests, "no request needed a replay");
    for x in &seen {
        assert!(x.authorized, "an expired token was sent");
        assert!(issued.contains(x.token.as_ref().unwrap()));
    }
    // Every token that was issued got used: refreshes were not wasted.
    let used: std::collections::HashSet<_> = seen.iter().filter_map(|x| x.token.clone()).collect();
    assert!(used.len() >= 3, "{} distinct tokens used", used.len());
}

// --- token endpoint failures -------------------------------------------------------------------

async fn wrong_credentials(api: Api, code: &str) {
    let s = standin(api).await;
    let good = credentials(api).secret;
    let on_demand = "prefetch = false";
    let toml =
        upstream_toml("api", &s, "", on_demand).replace(&good, &format!("{SECRET_MARK}-wrong"));
    assert_ne!(toml, upstream_toml("api", &s, "", on_demand));
    let r = sidecar(&toml).await;
    let http = Http::default();
    let url = r.url("api", "/v1/x");

    let first = http.get(&url).await;
    let json = token_error(&first, StatusCode::BAD_GATEWAY);
    assert_eq!(json["token_error"], code, "{json}");
    assert_eq!(s.token_requests(), 1);

    // Backing off: the same answer at once, without asking the endpoint again.
    let second = http.get(&url).await;
    let json = token_error(&second, StatusCode::BAD_GATEWAY);
    assert_eq!(json["token_error"], code, "{json}");
    assert_eq!(s.token_requests(), 1);
    assert_eq!(s.api_requests(), 0);
}

#[tokio::test]
async fn wrong_credentials_fail_fast_with_the_endpoint_code_nuvy_nexus() {
    wrong_credentials(Api::NuvyNexus, "invalid_client").await;
}

#[tokio::test]
async fn wrong_credentials_fail_fast_with_the_endpoint_code_quantoz() {
    wrong_credentials(Api::Quantoz, "invalid_client").await;
}

#[tokio::test]
async fn rotated_credentials_at_the_endpoint_are_reported_not_retried() {
    let (s, r) = pair_on_demand(Api::NuvyLegacy, "", "").await;
    s.set_credentials(Credentials::new("someone-else", "other"));
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    for _ in 0..5 {
        let json = token_error(&http.get(&url).await, StatusCode::BAD_GATEWAY);
        assert_eq!(json["token_error"], "invalid_client", "{json}");
    }
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn a_5xx_from_the_token_endpoint_is_503_and_backs_off() {
    // token_wait = 0: the request does not wait for the backoff to end (the old rule).
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "token_wait = \"0s\"").await;
    s.fail_token_requests(usize::MAX, Failure::Status(503));
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    let json = token_error(&http.get(&url).await, StatusCode::SERVICE_UNAVAILABLE);
    assert!(json.get("token_error").is_none_or(|c| c == "server_error"));
    assert_eq!(s.token_requests(), 1);

    let json = token_error(&http.get(&url).await, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        json["error_description"].as_str().unwrap().contains("503"),
        "{json}"
    );
    // The first backoff step is at least 750 ms; a machine stalled longer than that may make a
    // second attempt, never more. (The 429 test's 30 s Retry-After pins "none" exactly.)
    assert!(
        s.token_requests() <= 2,
        "backing off, not looping: {}",
        s.token_requests()
    );
    assert_eq!(s.api_requests(), 0);
}

#[tokio::test]
async fn a_429_from_the_token_endpoint_honours_retry_after() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    s.fail_token_requests(
        1,
        Failure::TooManyRequests {
            retry_after_secs: 30,
        },
    );
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    let json = token_error(&http.get(&url).await, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        json["error_description"].as_str().unwrap().contains("429"),
        "{json}"
    );
    // The endpoint would answer now, but Retry-After asked for 30 s.
    for _ in 0..5 {
        token_error(&http.get(&url).await, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn a_501_grant_not_enabled_is_a_credential_error() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    s.disable_grant(true);
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    for _ in 0..3 {
        let json = token_error(&http.get(&url).await, StatusCode::BAD_GATEWAY);
        assert_eq!(json["token_error"], "unsupported_grant_type", "{json}");
    }
    assert_eq!(s.token_requests(), 1);
}

async fn unreachable_endpoint(failure: Failure, expect: &str) {
    let (s, r) = pair_on_demand(
        Api::NuvyNexus,
        "",
        "timeout = \"500ms\"\ntoken_wait = \"0s\"",
    )
    .await;
    s.fail_token_requests(usize::MAX, failure);
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    let first = timeout(PATIENCE, http.get(&url)).await.unwrap();
    let json = token_error(&first, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        json["error_description"].as_str().unwrap().contains(expect),
        "{json}"
    );
    let second = timeout(PATIENCE, http.get(&url)).await.unwrap();
    token_error(&second, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn a_hanging_token_endpoint_times_out_into_a_503() {
    unreachable_endpoint(Failure::Hang, "did not answer within").await;
}

#[tokio::test]
async fn a_token_endpoint_that_closes_the_connection_is_a_503() {
    unreachable_endpoint(Failure::Close, "cannot reach the token endpoint").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_behind_a_failed_token_request_fail_fast() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    s.fail_token_requests(
        usize::MAX,
        Failure::TooManyRequests {
            retry_after_secs: 30,
        },
    );
    s.hold_token_requests(true);
    let (http, url) = (Http::default(), r.url("api", "/v1/x"));
    let task = tokio::spawn(async move { burst(&http, &url, 50).await });
    timeout(PATIENCE, s.wait_held(1)).await.unwrap();
    s.hold_token_requests(false);
    let replies = timeout(PATIENCE, task).await.unwrap().unwrap();
    for reply in &replies {
        token_error(reply, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        s.token_requests(),
        1,
        "the failed request is not repeated by its waiters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_request_whose_task_panics_fails_its_waiter_at_once() {
    // A response that states no lifetime (no `expires_in`, no JWT `exp`) gets `token_lifetime`,
    // and one past what an `Instant` can hold overflows: the token task panics mid-request. Should
    // the configuration ever bound `token_lifetime`, this test needs another way to panic it.
    let (s, r) = pair_on_demand(
        Api::NuvyNexus,
        "",
        "token_lifetime = \"500000000000y\"\nmin_refresh_interval = \"0s\"\ntoken_wait = \"5m\"",
    )
    .await;
    s.set_expires_in(None);
    s.set_jwt_lifetime(None);
    s.hold_token_requests(true);
    let (http, url) = (Http::default(), r.url("api", "/v1/x"));
    let waiter = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).await }
    });
    timeout(PATIENCE, s.wait_held(1)).await.unwrap();
    s.hold_token_requests(false);
    // Were the waiter to retry, each retry would panic the same way, for all of its token_wait.
    let reply = timeout(PATIENCE, waiter)
        .await
        .expect("the waiter of the panicked token request was not answered")
        .unwrap();
    let json = token_error(&reply, StatusCode::SERVICE_UNAVAILABLE);
    let description = json["error_description"].as_str().unwrap();
    assert!(description.contains("ended without an answer"), "{json}");
    assert_eq!(s.token_requests(), 1, "the waiter started no other");

    // The next request starts a new token request; this time the response states a lifetime.
    s.set_expires_in(Some(3600));
    let reply = timeout(PATIENCE, http.get(&url)).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(s.token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresh_ahead_keeps_the_live_token_in_use() {
    // 10 s tokens: the (capped) refresh is due at half-life, 4.5 s in.
    let (s, r) = pair_on_demand(
        Api::NuvyNexus,
        "",
        "refresh_before = \"1h\"\nmin_refresh_interval = \"0s\"",
    )
    .await;
    s.set_expires_in(Some(10));
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    assert_eq!(http.get(&url).await.status, 200);
    let first = s.issued_tokens()[0].clone();

    s.fail_token_requests(usize::MAX, Failure::Status(503));
    // Requests keep coming until one starts the background refresh, which fails.
    let mut due = tokio::time::interval(Duration::from_millis(20));
    timeout(PATIENCE, async {
        while s.token_requests() < 2 {
            due.tick().await;
            assert_eq!(http.get(&url).await.status, 200);
        }
    })
    .await
    .expect("no refresh ahead started");
    let replies = timeout(PATIENCE, burst(&http, &url, 30)).await.unwrap();
    assert_all(&replies, StatusCode::OK);
    assert_eq!(s.issued_tokens(), std::slice::from_ref(&first));
    assert!(s.seen().iter().all(|x| x.authorized));

    // The endpoint recovers; once the backoff has passed, a refresh goes through.
    s.fail_token_requests(0, Failure::Status(503));
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    timeout(PATIENCE, async {
        while s.issued_tokens().len() < 2 {
            pace.tick().await;
            let reply = http.get(&url).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
    })
    .await
    .expect("the refresh resumes after the backoff");
}

async fn nonsense_200(failure: Failure, expect: &str) {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    s.fail_token_requests(1, failure);
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    let json = token_error(&http.get(&url).await, StatusCode::BAD_GATEWAY);
    let description = json["error_description"].as_str().unwrap();
    assert!(description.contains("no usable token"), "{json}");
    assert!(description.contains(expect), "{json}");
    assert!(json.get("token_error").is_none(), "{json}");
    // Still serving (no panic), and backing off rather than asking again.
    token_error(&http.get(&url).await, StatusCode::BAD_GATEWAY);
    assert_eq!(s.token_requests(), 1);
    assert_eq!(s.api_requests(), 0);
}

#[tokio::test]
async fn an_html_200_is_a_502_with_a_clear_description() {
    nonsense_200(Failure::Html200, "not JSON").await;
}

#[tokio::test]
async fn a_200_without_access_token_is_a_502_with_a_clear_description() {
    nonsense_200(Failure::MissingAccessToken, "access_token").await;
}

// --- rate limit --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_401_upstream_costs_one_token_request_per_interval_1h() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "min_refresh_interval = \"1h\"").await;
    s.set_api_always_401(true);
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    for _ in 0..50 {
        let reply = http.get(&url).await;
        assert_eq!(reply.status, 401);
        assert!(reply.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
    }
    let replies = timeout(PATIENCE, burst(&http, &url, 100)).await.unwrap();
    assert_all(&replies, StatusCode::UNAUTHORIZED);
    assert_eq!(s.token_requests(), 1);
    assert_eq!(
        s.seen().len(),
        150,
        "a 401 on a young token is not replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_401_upstream_costs_one_token_request_per_interval_300ms() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "min_refresh_interval = \"300ms\"").await;
    s.set_api_always_401(true);
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    let start = Instant::now();
    let mut requests = 0;
    timeout(PATIENCE, async {
        // Long enough for the first token to age past the interval; capped in iterations.
        for _ in 0..2000 {
            if start.elapsed() >= Duration::from_millis(1200) {
                break;
            }
            let replies = burst(&http, &url, 10).await;
            assert_all(&replies, StatusCode::UNAUTHORIZED);
            requests += replies.len();
        }
    })
    .await
    .unwrap();
    let elapsed = start.elapsed();
    let allowed = 2 + (elapsed.as_millis() / 300) as usize;
    let made = s.token_requests();
    assert!(made <= allowed, "{made} token requests in {elapsed:?}");
    assert!(
        made >= 2,
        "a 401 on a token older than the interval re-authenticates"
    );
    assert!(
        s.seen().len() <= 2 * requests,
        "at most two attempts per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_sidecar_stays_under_the_quantoz_rate_limit() {
    // Every token is revoked before each burst of 30: the sidecar would re-authenticate on
    // every burst if the default `min_refresh_interval` (1 s) did not hold it back. The run
    // lasts past the first interval so re-authentication does happen.
    let (s, r) = pair_on_demand(Api::Quantoz, "", "").await;
    let http = Http::default();
    let url = r.url("api", "/v1/x");
    let start = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    timeout(PATIENCE, async {
        for batch in 0..400 {
            if batch >= 10 && start.elapsed() >= Duration::from_millis(2500) {
                break;
            }
            pace.tick().await;
            s.revoke_all();
            for reply in burst(&http, &url, 30).await {
                *statuses.entry(reply.status.as_u16()).or_default() += 1;
                if reply.status != 200 && reply.status != 401 {
                    panic!("{}: {}", reply.status, reply.text());
                }
            }
        }
    })
    .await
    .unwrap();
    let elapsed = start.elapsed();
    assert!(statuses.values().sum::<usize>() >= 300);
    assert!(!statuses.contains_key(&429), "{statuses:?}");
    let made = s.token_requests();
    // Default min_refresh_interval: one token request per second at most.
    let allowed = 2 + elapsed.as_secs() as usize;
    assert!(
        made <= allowed,
        "{made} token requests in {elapsed:?} ({statuses:?})"
    );
    assert!(made < 60);
    assert!(
        made >= 2,
        "a 401 on a token older than 1 s re-authenticates"
    );
}
