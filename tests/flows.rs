//! Each of the five token APIs end to end: the upstream sees `Bearer <a token it issued>`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use nexus_sidecar::standin::Api;
use support::*;

async fn end_to_end(api: Api) {
    let (s, r) = pair_on_demand(api, "", "").await;
    let http = Http::default();
    let reply = http.get(&r.url("api", "/v1/things?x=1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["x-standin-api"], api.name());
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].authorized);
    let issued = s.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(seen[0].token.as_deref(), Some(issued[0].as_str()));
    assert_eq!(seen[0].path_and_query, "/v1/things?x=1");
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn nuvy_nexus() {
    end_to_end(Api::NuvyNexus).await;
}

#[tokio::test]
async fn nuvy_legacy() {
    end_to_end(Api::NuvyLegacy).await;
}

#[tokio::test]
async fn quantoz() {
    end_to_end(Api::Quantoz).await;
}

#[tokio::test]
async fn nexudus_with_totp() {
    end_to_end(Api::Nexudus).await;
}

#[tokio::test]
async fn nexushub() {
    end_to_end(Api::NexusHub).await;
}

/// Refresh ahead uses the refresh token; when the endpoint refuses it, the sidecar signs in
/// again with the primary grant. Tokens live 6 s here, so refreshes come every few seconds
/// (at half-life: `refresh_before` longer than the lifetime is capped); the loops below are
/// driven by paced requests and end on the stand-in's counters, bounded in time.
async fn refreshes_then_falls_back(api: Api, refresh_grant: &str, primary_grant: &str) {
    let (s, r) = pair_on_demand(
        api,
        "",
        "refresh_before = \"25h\"\nmin_refresh_interval = \"0s\"",
    )
    .await;
    s.set_expires_in(Some(6));
    s.set_jwt_lifetime(Some(6));
    let http = Http::default();
    let url = r.url("api", "/v1/me");
    // One paced request: the refreshes are driven by traffic, as in production.
    let step = || async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(http.get(&url).await.status, 200);
    };
    let patience = Duration::from_secs(30);
    tokio::time::timeout(patience, async {
        while s.token_requests_by_grant(refresh_grant) == 0 {
            step().await;
        }
    })
    .await
    .expect("never refreshed");
    assert_eq!(
        s.token_requests_by_grant(primary_grant),
        1,
        "refresh ahead used the refresh token, not a new sign-in"
    );

    // Once refresh tokens stop working, the next refresh signs in again, exactly once: the
    // new sign-in brings a refresh token that works.
    s.invalidate_refresh_tokens();
    tokio::time::timeout(patience, async {
        while s.token_requests_by_grant(primary_grant) < 2 {
            step().await;
        }
    })
    .await
    .expect("no fallback to the sign-in grant");
    for _ in 0..20 {
        assert_eq!(http.get(&url).await.status, 200);
    }
    assert_eq!(
        s.token_requests_by_grant(primary_grant),
        2,
        "fell back once"
    );
    assert!(s.seen().iter().all(|seen| seen.authorized));
}

#[tokio::test]
async fn nexudus_refresh_token_grant_and_password_fallback() {
    refreshes_then_falls_back(Api::Nexudus, "refresh_token", "password").await;
}

#[tokio::test]
async fn nexushub_refresh_and_authenticate_fallback() {
    refreshes_then_falls_back(Api::NexusHub, "refresh", "authenticate").await;
}
