//! Each of the five token APIs end to end: the upstream sees `Bearer <a token it issued>`.

mod support;

use nexus_sidecar::standin::Api;
use support::*;

async fn end_to_end(api: Api) {
    let (s, r) = pair(api, "", "").await;
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
/// again with the primary grant. A `refresh_before` longer than the tokens' lifetime (24 h for
/// Nexudus, 1 h for NexusHub) makes every token due for refresh at once, so requests keep starting background refreshes (one at a time): the loops below are
/// driven by requests and end on the stand-in's counters, bounded in count.
async fn refreshes_then_falls_back(api: Api, refresh_grant: &str, primary_grant: &str) {
    let (s, r) = pair(
        api,
        "",
        "refresh_before = \"25h\"\nmin_refresh_interval = \"0s\"",
    )
    .await;
    let http = Http::default();
    let url = r.url("api", "/v1/me");
    let drive_until = |done: &dyn Fn() -> bool| {
        let (http, url) = (http.clone(), url.clone());
        let done = done();
        async move {
            if !done {
                assert_eq!(http.get(&url).await.status, 200);
            }
            done
        }
    };
    for _ in 0..1000 {
        if drive_until(&|| s.token_requests_by_grant(refresh_grant) >= 1).await {
            break;
        }
    }
    assert!(
        s.token_requests_by_grant(refresh_grant) >= 1,
        "never refreshed"
    );
    assert_eq!(
        s.token_requests_by_grant(primary_grant),
        1,
        "refresh ahead used the refresh token, not a new sign-in"
    );

    // Once refresh tokens stop working, the next refresh signs in again, exactly once: the
    // new sign-in brings a refresh token that works.
    s.invalidate_refresh_tokens();
    for _ in 0..1000 {
        if drive_until(&|| s.token_requests_by_grant(primary_grant) >= 2).await {
            break;
        }
    }
    assert_eq!(
        s.token_requests_by_grant(primary_grant),
        2,
        "fell back once"
    );
    for _ in 0..20 {
        assert_eq!(http.get(&url).await.status, 200);
    }
    assert_eq!(s.token_requests_by_grant(primary_grant), 2);
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
