//! Nexudus and NexusHub: documented error codes, statuses and success shapes, refresh tokens,
//! two-factor authentication.

use std::time::{SystemTime, UNIX_EPOCH};

use super::*;

fn totp_now(secret: &str, offset_steps: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    crate::standin::nexudus::totp(secret)
        .unwrap()
        .generate((now + 30 * offset_steps) as u64)
}

const TOTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

#[tokio::test]
async fn nexudus_password_grant_refresh_and_errors() {
    let s = StandIn::start(
        Api::Nexudus,
        Credentials::new("jane@example.com", "S3cur3P@ss"),
    )
    .await
    .unwrap();
    let url = s.token_url();
    assert!(url.ends_with("/api/token"));
    let login = "grant_type=password&username=jane%40example.com&password=S3cur3P%40ss";
    let resp = form(&url, None, login).await;
    assert_issued(&s, &resp);
    let body = resp.json();
    assert_eq!(body["token_type"], "bearer", "lower case, as documented");
    assert_eq!(body["expires_in"], 86_400);
    let refresh = body["refresh_token"].as_str().unwrap().to_string();

    let json = post(
        &url,
        Some("application/json"),
        &[],
        r#"{"grant_type":"password","username":"jane@example.com","password":"S3cur3P@ss"}"#,
    );
    assert_error(
        &send(json).await,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    );
    let no_grant = form(
        &url,
        None,
        "username=jane%40example.com&password=S3cur3P%40ss",
    )
    .await;
    assert_error(&no_grant, StatusCode::BAD_REQUEST, "unsupported_grant_type");
    let wrong = form(
        &url,
        None,
        "grant_type=password&username=jane%40example.com&password=nope",
    )
    .await;
    assert_error(&wrong, StatusCode::BAD_REQUEST, "invalid_grant");

    let refreshed = form(
        &url,
        None,
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
    )
    .await;
    assert_issued(&s, &refreshed);
    let new_refresh = refreshed.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_refresh, refresh);
    assert_eq!(refreshed.json()["token_type"], "bearer");
    let again = form(
        &url,
        None,
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
    )
    .await;
    assert_issued(&s, &again);
    let unknown = form(
        &url,
        None,
        "grant_type=refresh_token&refresh_token=rt-unknown",
    )
    .await;
    assert_error(&unknown, StatusCode::BAD_REQUEST, "invalid_grant");
    s.invalidate_refresh_tokens();
    let dead = form(
        &url,
        None,
        &format!("grant_type=refresh_token&refresh_token={new_refresh}"),
    )
    .await;
    assert_error(&dead, StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(s.token_requests_by_grant("password"), 2);
    assert_eq!(s.token_requests_by_grant("refresh_token"), 4);

    s.require_password_reset(true);
    let reset = form(&url, None, login).await;
    assert_error(&reset, StatusCode::BAD_REQUEST, "must_reset_password");
    assert!(reset.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("reset-"));
    s.require_password_reset(false);
    assert_issued(&s, &form(&url, None, login).await);
}

#[tokio::test]
async fn nexudus_two_factor() {
    let creds = Credentials::new("jane@example.com", "pw").with_totp(TOTP_SECRET);
    let s = StandIn::start(Api::Nexudus, creds).await.unwrap();
    let login = "grant_type=password&username=jane%40example.com&password=pw";
    let missing = form(&s.token_url(), None, login).await;
    assert_error(&missing, StatusCode::BAD_REQUEST, "two_factor_auth_check");

    // A code valid at no step near now (the window is ±1 step; two steps more for safety).
    let near: Vec<String> = (-2..=2).map(|o| totp_now(TOTP_SECRET, o)).collect();
    let invalid = (0..10u32)
        .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
        .find(|c| !near.contains(c))
        .unwrap();
    let bad = form(&s.token_url(), None, &format!("{login}&totp={invalid}")).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "two_factor_auth_check");

    let good = form(
        &s.token_url(),
        None,
        &format!("{login}&totp={}", totp_now(TOTP_SECRET, 0)),
    )
    .await;
    assert_issued(&s, &good);
    let previous_step = form(
        &s.token_url(),
        None,
        &format!("{login}&totp={}", totp_now(TOTP_SECRET, -1)),
    )
    .await;
    assert_issued(&s, &previous_step);
}

#[tokio::test]
async fn nexushub_json_authenticate_and_refresh() {
    let s = StandIn::start(Api::NexusHub, Credentials::new("key", "secret"))
        .await
        .unwrap();
    let auth = format!("{}/authenticate", s.token_url());
    let refresh_url = format!("{}/refresh", s.token_url());
    let resp = json_post(&auth, r#"{"user_key":"key","user_secret":"secret"}"#).await;
    assert_issued(&s, &resp);
    let body = resp.json();
    assert!(
        body.get("expires_in").is_none(),
        "NexusHub sends no expires_in"
    );
    let c = claims(&resp.access_token());
    assert_eq!(
        c["exp"].as_u64().unwrap(),
        c["iat"].as_u64().unwrap() + 3600,
        "the JWT says 1 h"
    );
    let refresh = body["refresh_token"].as_str().unwrap().to_string();

    let refreshed = json_post(
        &refresh_url,
        &serde_json::json!({ "refresh_token": refresh }).to_string(),
    )
    .await;
    assert_issued(&s, &refreshed);
    assert_eq!(
        refreshed.json().as_object().unwrap().len(),
        1,
        "only access_token: {:?}",
        refreshed.body
    );

    let form_body = send(post(
        &auth,
        Some(FORM),
        &[],
        "user_key=key&user_secret=secret",
    ))
    .await;
    assert_error(&form_body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_error(
        &json_post(&auth, "{not json").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &json_post(&refresh_url, "{}").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let wrong = json_post(&auth, r#"{"user_key":"key","user_secret":"nope"}"#).await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    let unknown = json_post(&refresh_url, r#"{"refresh_token":"rt-unknown"}"#).await;
    assert_error(&unknown, StatusCode::UNAUTHORIZED, "unauthorized");
    s.invalidate_refresh_tokens();
    let dead = json_post(
        &refresh_url,
        &serde_json::json!({ "refresh_token": refresh }).to_string(),
    )
    .await;
    assert_error(&dead, StatusCode::UNAUTHORIZED, "unauthorized");

    s.set_expires_in(Some(60));
    let ignored = json_post(&auth, r#"{"user_key":"key","user_secret":"secret"}"#).await;
    assert!(ignored.json().get("expires_in").is_none());
    assert_eq!(s.token_requests_by_grant("authenticate"), 5);
    assert_eq!(s.token_requests_by_grant("refresh"), 4);
}

#[tokio::test]
async fn nexudus_rotating_refresh_tokens_refuse_and_count_a_superseded_one() {
    let s = StandIn::start(Api::Nexudus, Credentials::new("jane", "pw"))
        .await
        .unwrap();
    let url = s.token_url();
    let signed_in = form(&url, None, "grant_type=password&username=jane&password=pw").await;
    let first = signed_in.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let refresh = |rt: &str| format!("grant_type=refresh_token&refresh_token={rt}");

    s.rotate_refresh_tokens(true);
    let rotated = form(&url, None, &refresh(&first)).await;
    assert_issued(&s, &rotated);
    let second = rotated.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(second, first);
    // The first is spent: presenting it again is a replay, refused as the real API does.
    let replayed = form(&url, None, &refresh(&first)).await;
    assert_error(&replayed, StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(s.superseded_refresh_tokens(), 1);
    assert_issued(&s, &form(&url, None, &refresh(&second)).await);
    // Unknown and invalidated refresh tokens are refused too, but are no replay.
    let unknown = form(&url, None, &refresh("rt-unknown")).await;
    assert_error(&unknown, StatusCode::BAD_REQUEST, "invalid_grant");
    let signed_in = form(&url, None, "grant_type=password&username=jane&password=pw").await;
    let dropped = signed_in.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    s.invalidate_refresh_tokens();
    let invalidated = form(&url, None, &refresh(&dropped)).await;
    assert_error(&invalidated, StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(s.superseded_refresh_tokens(), 1);
}

#[tokio::test]
async fn nexushub_rotates_only_under_the_knob() {
    let s = StandIn::start(Api::NexusHub, Credentials::new("key", "secret"))
        .await
        .unwrap();
    let auth = format!("{}/authenticate", s.token_url());
    let refresh_url = format!("{}/refresh", s.token_url());
    let signed_in = json_post(&auth, r#"{"user_key":"key","user_secret":"secret"}"#).await;
    let first = signed_in.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let refresh = |rt: &str| serde_json::json!({ "refresh_token": rt }).to_string();

    // As documented: the refresh token is reused, and no successor comes.
    let kept = json_post(&refresh_url, &refresh(&first)).await;
    assert_issued(&s, &kept);
    assert!(kept.json().get("refresh_token").is_none());

    s.rotate_refresh_tokens(true);
    let rotated = json_post(&refresh_url, &refresh(&first)).await;
    assert_issued(&s, &rotated);
    let second = rotated.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(second, first);
    let replayed = json_post(&refresh_url, &refresh(&first)).await;
    assert_error(&replayed, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(s.superseded_refresh_tokens(), 1);
    assert_issued(&s, &json_post(&refresh_url, &refresh(&second)).await);
}
