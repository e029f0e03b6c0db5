//! Nuvy Nexus, Nuvy legacy and Quantoz: documented error codes, statuses and success shapes.

use super::*;

#[tokio::test]
async fn nuvy_nexus_success_shapes() {
    let s = nuvy().await;
    let resp = nuvy_token(&s).await;
    assert_issued(&s, &resp);
    let body = resp.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(
        body.get("scope").is_none(),
        "no scope requested, none echoed"
    );
    let c = claims(&resp.access_token());
    assert_eq!(c["sub"], "app");
    assert_eq!(
        c["exp"].as_u64().unwrap(),
        c["iat"].as_u64().unwrap() + 3600
    );

    let body = "grant_type=client_credentials&client_id=app&client_secret=s3cret&scope=read+write";
    let resp = form(&s.token_url(), None, body).await;
    assert_issued(&s, &resp);
    assert_eq!(
        resp.json()["scope"],
        "read write",
        "form credentials, scope echoed"
    );

    let ct = "application/x-www-form-urlencoded; charset=utf-8";
    let auth = basic("app", "s3cret");
    let req = post(
        &s.token_url(),
        Some(ct),
        &[("authorization", &auth)],
        "grant_type=client_credentials",
    );
    assert_issued(&s, &send(req).await);
}

#[tokio::test]
async fn nuvy_nexus_basic_accepts_the_form_encoded_credentials_of_rfc6749() {
    let s = StandIn::start(Api::NuvyNexus, Credentials::new("my app", "p:ss&w"))
        .await
        .unwrap();
    let raw = form(
        &s.token_url(),
        Some(("my app", "p:ss&w")),
        "grant_type=client_credentials",
    )
    .await;
    assert_issued(&s, &raw);
    let encoded = form(
        &s.token_url(),
        Some(("my+app", "p%3Ass%26w")),
        "grant_type=client_credentials",
    )
    .await;
    assert_issued(&s, &encoded);
}

#[tokio::test]
async fn nuvy_nexus_errors() {
    let s = nuvy().await;
    let url = s.token_url();
    let good = Some(("app", "s3cret"));
    let auth = basic("app", "s3cret");
    let json = post(
        &url,
        Some("application/json"),
        &[("authorization", &auth)],
        "{}",
    );
    assert_error(
        &send(json).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let no_creds = form(&url, None, "grant_type=client_credentials").await;
    assert_error(&no_creds, StatusCode::BAD_REQUEST, "invalid_request");
    let half = form(&url, None, "grant_type=client_credentials&client_id=app").await;
    assert_error(&half, StatusCode::BAD_REQUEST, "invalid_request");

    let wrong = form(&url, Some(("app", "nope")), "grant_type=client_credentials").await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "invalid_client");
    assert_eq!(wrong.header("www-authenticate"), Some("Basic"));
    let wrong_body = form(
        &url,
        None,
        "grant_type=client_credentials&client_id=app&client_secret=x",
    )
    .await;
    assert_error(&wrong_body, StatusCode::UNAUTHORIZED, "invalid_client");
    let garbled = ("authorization", "Basic not-base64!");
    let garbled = send(post(
        &url,
        Some(FORM),
        &[garbled],
        "grant_type=client_credentials",
    ))
    .await;
    assert_error(&garbled, StatusCode::UNAUTHORIZED, "invalid_client");

    assert_error(
        &form(&url, good, "").await,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    );
    let password = form(&url, good, "grant_type=password").await;
    assert_error(&password, StatusCode::BAD_REQUEST, "unsupported_grant_type");

    let admin = form(&url, good, "grant_type=client_credentials&scope=read+admin").await;
    assert_error(&admin, StatusCode::BAD_REQUEST, "invalid_scope");
    s.set_scopes(&["admin", "read"]);
    assert_issued(
        &s,
        &form(&url, good, "grant_type=client_credentials&scope=read+admin").await,
    );

    s.disable_grant(true);
    assert_error(
        &nuvy_token(&s).await,
        StatusCode::NOT_IMPLEMENTED,
        "unsupported_grant_type",
    );
    s.disable_grant(false);
    assert_issued(&s, &nuvy_token(&s).await);
    assert_eq!(s.issued_tokens().len(), 2, "errors issue nothing");
}

#[tokio::test]
async fn rotated_credentials_and_lifetime_knobs() {
    let s = nuvy().await;
    s.set_credentials(Credentials::new("app", "rotated"));
    assert_error(
        &nuvy_token(&s).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    let rotated = Some(("app", "rotated"));
    let body = "grant_type=client_credentials";

    s.set_expires_in(Some(5));
    let resp = form(&s.token_url(), rotated, body).await;
    assert_eq!(resp.json()["expires_in"], 5);
    let c = claims(&resp.access_token());
    assert_eq!(
        c["exp"].as_u64().unwrap(),
        c["iat"].as_u64().unwrap() + 5,
        "exp follows expires_in"
    );

    s.set_expires_in(None);
    let resp = form(&s.token_url(), rotated, body).await;
    assert!(resp.json().get("expires_in").is_none());
    let c = claims(&resp.access_token());
    assert_eq!(
        c["exp"].as_u64().unwrap(),
        c["iat"].as_u64().unwrap() + 3600
    );

    s.set_jwt_lifetime(Some(42));
    let c = claims(&form(&s.token_url(), rotated, body).await.access_token());
    assert_eq!(c["exp"].as_u64().unwrap(), c["iat"].as_u64().unwrap() + 42);
    s.set_jwt_lifetime(None);
    let c = claims(&form(&s.token_url(), rotated, body).await.access_token());
    assert!(c.get("exp").is_none());
}

#[tokio::test]
async fn nuvy_legacy_is_basic_only() {
    let s = StandIn::start(Api::NuvyLegacy, Credentials::new("app", "s3cret"))
        .await
        .unwrap();
    let url = s.token_url();
    assert!(url.ends_with("/oauth2/token") && !url.contains("nexus"));
    let resp = form(
        &url,
        Some(("app", "s3cret")),
        "grant_type=client_credentials",
    )
    .await;
    assert_issued(&s, &resp);
    let body = resp.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body.get("scope").is_none());

    let body_only = form(
        &url,
        None,
        "grant_type=client_credentials&client_id=app&client_secret=s3cret",
    )
    .await;
    assert_error(&body_only, StatusCode::UNAUTHORIZED, "invalid_client");
    let wrong = form(&url, Some(("app", "x")), "grant_type=client_credentials").await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "invalid_client");
    for bad_grant in ["", "grant_type=password"] {
        let resp = form(&url, Some(("app", "s3cret")), bad_grant).await;
        assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let auth = basic("app", "s3cret");
    let json = post(
        &url,
        Some("application/json"),
        &[("authorization", &auth)],
        "{}",
    );
    assert_error(
        &send(json).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
}

const QUANTOZ_OK: &str = "grant_type=client_credentials&client_id=q&client_secret=qs&scope=api1";

#[tokio::test]
async fn quantoz_form_credentials_and_scope() {
    let s = StandIn::start(Api::Quantoz, Credentials::new("q", "qs"))
        .await
        .unwrap();
    let url = s.token_url();
    assert!(url.ends_with("/connect/token"));
    let resp = form(&url, None, QUANTOZ_OK).await;
    assert_issued(&s, &resp);
    let body = resp.json();
    assert_eq!(
        (&body["token_type"], &body["expires_in"], &body["scope"]),
        (&"Bearer".into(), &3600.into(), &"api1".into())
    );

    let cases = [
        ("grant_type=client_credentials&scope=api1", "invalid_client"),
        (
            "grant_type=client_credentials&client_id=q&client_secret=x&scope=api1",
            "invalid_client",
        ),
        (
            "grant_type=client_credentials&client_id=q&client_secret=qs",
            "invalid_scope",
        ),
        (
            "grant_type=client_credentials&client_id=q&client_secret=qs&scope=api2",
            "invalid_scope",
        ),
        (
            "grant_type=password&client_id=q&client_secret=qs&scope=api1",
            "unsupported_grant_type",
        ),
        (
            "client_id=q&client_secret=qs&scope=api1",
            "unsupported_grant_type",
        ),
    ];
    for (body, code) in cases {
        assert_error(&form(&url, None, body).await, StatusCode::BAD_REQUEST, code);
    }
    let basic_only = form(
        &url,
        Some(("q", "qs")),
        "grant_type=client_credentials&scope=api1",
    )
    .await;
    assert_error(&basic_only, StatusCode::BAD_REQUEST, "invalid_client");
}

#[tokio::test]
async fn quantoz_61st_request_in_a_minute_is_rate_limited() {
    let s = StandIn::start(Api::Quantoz, Credentials::new("q", "qs"))
        .await
        .unwrap();
    for i in 0..60 {
        let body = if i % 2 == 0 {
            QUANTOZ_OK
        } else {
            "grant_type=client_credentials"
        };
        assert_ne!(
            form(&s.token_url(), None, body).await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "request {i}"
        );
    }
    let resp = form(&s.token_url(), None, QUANTOZ_OK).await;
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.error(), "too_many_requests");
    let retry_after: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(s.token_requests(), 61);
    assert_eq!(s.issued_tokens().len(), 30);
}
