//! The protected API: who gets in, what is recorded, and the special paths.

use super::*;

/// A stand-in and a live token from it.
async fn with_token() -> (StandIn, String) {
    let s = nuvy().await;
    let token = nuvy_token(&s).await.access_token();
    (s, token)
}

#[tokio::test]
async fn only_live_issued_tokens_get_in() {
    let (s, token) = with_token().await;
    let url = format!("{}/things", s.base_url());
    for resp in [
        get(&url, None).await,
        get(&url, Some("forged.jwt.token")).await,
    ] {
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.header("www-authenticate"),
            Some(r#"Bearer error="invalid_token""#)
        );
        assert_eq!(resp.error(), "invalid_token");
    }
    assert_eq!(get(&url, Some(&token)).await.status, StatusCode::OK);
    let lower = Request::get(&url)
        .header(AUTHORIZATION, format!("bearer {token}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(lower).await.status,
        StatusCode::OK,
        "scheme is case-insensitive"
    );

    s.set_api_always_401(true);
    assert_eq!(
        get(&url, Some(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );
    s.set_api_always_401(false);
    assert_eq!(get(&url, Some(&token)).await.status, StatusCode::OK);

    s.revoke_all();
    assert_eq!(
        get(&url, Some(&token)).await.status,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );
    let fresh = nuvy_token(&s).await.access_token();
    assert_eq!(
        get(&url, Some(&fresh)).await.status,
        StatusCode::OK,
        "tokens issued later work"
    );

    s.set_expires_in(Some(0));
    let expired = nuvy_token(&s).await.access_token();
    assert_eq!(
        get(&url, Some(&expired)).await.status,
        StatusCode::UNAUTHORIZED,
        "expired"
    );

    let seen = s.seen();
    assert_eq!(seen.len(), 9);
    assert_eq!(s.api_requests(), 9);
    assert_eq!(
        (seen[0].token.as_deref(), seen[0].authorized),
        (None, false)
    );
    assert_eq!(
        (seen[2].token.as_deref(), seen[2].authorized),
        (Some(token.as_str()), true)
    );
    assert!(!seen[4].authorized, "always-401 is recorded as refused");
}

#[tokio::test]
async fn echo_and_seen_keep_the_request_as_sent() {
    let (s, token) = with_token().await;
    let raw = "/a%2Fb/c%20d?x=%41&y=1+2";
    let auth = format!("Bearer {token}");
    let req = post(
        &format!("{}{raw}", s.base_url()),
        Some("text/plain"),
        &[("authorization", &auth), ("x-app", "1")],
        "hello",
    );
    let resp = send(req).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-standin-api"), Some("nuvy-nexus"));
    assert_eq!(resp.header("x-hop-response"), Some("1"));
    assert_eq!(resp.header("connection"), Some("x-hop-response"));
    assert_eq!(resp.header("keep-alive"), Some("timeout=5"));
    let body = resp.json();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path_and_query"], raw);
    assert_eq!(body["body_len"], 5);
    assert_eq!(body["authorization_seen"], true);

    let seen = s.seen().pop().unwrap();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path_and_query, raw, "percent-encoding preserved");
    assert_eq!(seen.body, Bytes::from_static(b"hello"));
    assert_eq!(seen.headers.get("x-app").unwrap(), "1");
    assert_eq!(seen.token, Some(token));
    assert!(seen.authorized);
    assert_eq!(seen.version, http::Version::HTTP_11);
}

#[tokio::test]
async fn h2c_is_served_on_the_plain_listener() {
    let (s, token) = with_token().await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let req = Request::get(format!("{}/h2", s.base_url()))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert!(
        resp.headers().get("connection").is_none()
            && resp.headers().get("x-hop-response").is_none()
    );
    assert_eq!(s.seen().pop().unwrap().version, http::Version::HTTP_2);
}

#[tokio::test]
async fn scope_denied_status_and_download() {
    let (s, token) = with_token().await;
    let base = s.base_url();
    let denied = get(&format!("{base}/scope-denied"), Some(&token)).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        denied.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope", scope="admin""#)
    );
    assert_eq!(
        get(&format!("{base}/scope-denied"), None)
            .await
            .header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );

    assert_eq!(
        get(&format!("{base}/status/418"), Some(&token))
            .await
            .status,
        StatusCode::IM_A_TEAPOT
    );
    let no_content = get(&format!("{base}/status/204"), Some(&token)).await;
    assert_eq!(
        (no_content.status, no_content.body.len()),
        (StatusCode::NO_CONTENT, 0)
    );
    assert_eq!(
        get(&format!("{base}/status/99"), Some(&token)).await.status,
        StatusCode::BAD_REQUEST
    );

    let n = 3 * 65_536 + 17;
    let download = get(&format!("{base}/download?bytes={n}"), Some(&token)).await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(
        download.header("content-length"),
        Some(n.to_string().as_str())
    );
    assert_eq!(download.body.len(), n);
    assert!(download
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == super::super::download_byte(i as u64)));
    assert_eq!(download.body[251], 0);
    assert_eq!(download.body[250], 250);
    assert_eq!(
        get(&format!("{base}/download"), Some(&token)).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn slow_never_answers_until_shutdown() {
    let (s, token) = with_token().await;
    let req = Request::get(format!("{}/slow", s.base_url()))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    let pending = tokio::spawn(try_send(req));
    s.wait_api_requests(1).await;
    assert!(s.seen()[0].authorized);
    s.shutdown();
    assert!(pending.await.unwrap().is_err());
}

#[tokio::test]
async fn seen_records_revocation_epochs_expiry_and_the_request_id() {
    let (s, first) = with_token().await;
    let url = format!("{}/things", s.base_url());
    let with_id = |token: &str, id: &str| {
        Request::get(&url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header("x-request-id", id)
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(s.revocations(), 0);
    assert_eq!(send(with_id(&first, "a")).await.status, StatusCode::OK);
    s.revoke_all();
    assert_eq!(s.revocations(), 1);
    assert_eq!(
        send(with_id(&first, "b")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let second = nuvy_token(&s).await.access_token();
    assert_eq!(get(&url, Some(&second)).await.status, StatusCode::OK);
    // The demo's remote control revokes too, and counts as a revocation.
    let revoke = post(
        &format!("{}{}", s.base_url(), super::super::REVOKE_PATH),
        None,
        &[],
        "",
    );
    assert_eq!(send(revoke).await.status, StatusCode::OK);
    assert_eq!(s.revocations(), 2);
    assert_eq!(
        get(&url, Some(&second)).await.status,
        StatusCode::UNAUTHORIZED
    );
    s.set_expires_in(Some(0));
    let expired = nuvy_token(&s).await.access_token();
    assert_eq!(
        get(&url, Some(&expired)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(&url, None).await.status, StatusCode::UNAUTHORIZED);

    let seen = s.seen();
    let facts: Vec<_> = seen
        .iter()
        .map(|x| {
            (
                x.request_id(),
                x.authorized,
                x.token_epoch,
                x.revoked,
                x.expired,
            )
        })
        .collect();
    assert_eq!(
        facts,
        [
            (Some("a"), true, Some(0), false, false),
            (Some("b"), false, Some(0), true, false),
            (None, true, Some(1), false, false),
            (None, false, Some(1), true, false),
            (None, false, Some(2), false, true),
            (None, false, None, false, false),
        ]
    );
}
