use super::*;
use http::HeaderValue;

const NOW: u64 = 1_700_000_000;

fn ok(body: &str) -> Result<Grant, TokenError> {
    parse(StatusCode::OK, &json_headers(), body.as_bytes(), NOW)
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h
}

fn jwt(claims: &str) -> String {
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

#[test]
fn lenient_success_shapes() {
    let g = ok(r#"{"access_token":"a","token_type":"bearer","expires_in":"3600"}"#).unwrap();
    assert_eq!(g.access_token.expose(), "a");
    assert_eq!(g.lifetime, Lifetime::Given(Duration::from_secs(3600)));
    let g =
        ok(r#"{"access_token":"a","token_type":"BEARER","expires_in":86400,"refresh_token":"r"}"#)
            .unwrap();
    assert_eq!(g.lifetime, Lifetime::Given(Duration::from_secs(86400)));
    assert_eq!(g.refresh_token.unwrap().expose(), "r");
    let g = ok(r#"{"access_token":"a"}"#).unwrap();
    assert_eq!(g.lifetime, Lifetime::Unstated);
}

#[test]
fn expiry_falls_back_to_the_jwt_exp_claim() {
    let token = jwt(&format!(r#"{{"sub":"x","exp":{}}}"#, NOW + 1800));
    let g = ok(&format!(r#"{{"access_token":"{token}"}}"#)).unwrap();
    assert_eq!(g.lifetime, Lifetime::Given(Duration::from_secs(1800)));
    let expired = jwt(&format!(r#"{{"exp":{}}}"#, NOW - 1));
    let err = ok(&format!(r#"{{"access_token":"{expired}"}}"#)).unwrap_err();
    assert!(matches!(
        err,
        TokenError::Invalid(InvalidResponse::AlreadyExpired)
    ));
    // expires_in wins over exp.
    let g = ok(&format!(r#"{{"access_token":"{token}","expires_in":60}}"#)).unwrap();
    assert_eq!(g.lifetime, Lifetime::Given(Duration::from_secs(60)));
}

#[test]
fn an_unusable_expires_in_is_not_taken_as_the_default_lifetime() {
    for bad in ["0", "-5", "\"soon\"", "\"\"", "true", "[]"] {
        let g = ok(&format!(r#"{{"access_token":"a","expires_in":{bad}}}"#)).unwrap();
        assert_eq!(g.lifetime, Lifetime::Unusable, "expires_in {bad}");
    }
    // The JWT's own `exp` rescues it.
    let token = jwt(&format!(r#"{{"exp":{}}}"#, NOW + 600));
    let g = ok(&format!(r#"{{"access_token":"{token}","expires_in":0}}"#)).unwrap();
    assert_eq!(g.lifetime, Lifetime::Given(Duration::from_secs(600)));
    // `null` is as good as absent.
    let g = ok(r#"{"access_token":"a","expires_in":null}"#).unwrap();
    assert_eq!(g.lifetime, Lifetime::Unstated);
}

#[test]
fn nonsense_successes_are_errors() {
    let err = parse(
        StatusCode::OK,
        &HeaderMap::new(),
        b"<html>login</html>",
        NOW,
    )
    .unwrap_err();
    assert!(
        matches!(err, TokenError::Invalid(InvalidResponse::NotJson { .. })),
        "{err}"
    );
    let err = ok(r#"{"token_type":"Bearer","expires_in":3600}"#).unwrap_err();
    assert!(matches!(
        err,
        TokenError::Invalid(InvalidResponse::NoAccessToken)
    ));
    let err = ok(r#"{"access_token":""}"#).unwrap_err();
    assert!(matches!(
        err,
        TokenError::Invalid(InvalidResponse::NoAccessToken)
    ));
    let err = ok(r#"{"access_token":"a","token_type":"mac"}"#).unwrap_err();
    assert!(matches!(
        err,
        TokenError::Invalid(InvalidResponse::NotBearer(_))
    ));
    let err = ok(r#"["access_token"]"#).unwrap_err();
    assert!(matches!(
        err,
        TokenError::Invalid(InvalidResponse::NotJson { .. })
    ));
}

#[test]
fn error_statuses_are_classified() {
    let rejected = parse(
        StatusCode::UNAUTHORIZED,
        &json_headers(),
        br#"{"error":"invalid_client"}"#,
        NOW,
    )
    .unwrap_err();
    assert!(!rejected.is_transient());
    assert_eq!(rejected.endpoint_code().unwrap().as_str(), "invalid_client");

    let not_impl = parse(
        StatusCode::NOT_IMPLEMENTED,
        &json_headers(),
        br#"{"error":"unsupported_grant_type"}"#,
        NOW,
    )
    .unwrap_err();
    assert!(matches!(not_impl, TokenError::Rejected { status: 501, .. }));

    let mut h = json_headers();
    h.insert("retry-after", HeaderValue::from_static("17"));
    let limited = parse(StatusCode::TOO_MANY_REQUESTS, &h, b"", NOW).unwrap_err();
    assert!(limited.is_transient());
    assert!(
        matches!(limited, TokenError::Unavailable { retry_after: Some(d), .. } if d == Duration::from_secs(17))
    );

    let server = parse(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"<html>", NOW).unwrap_err();
    assert!(matches!(
        server,
        TokenError::Unavailable {
            status: 502,
            code: None,
            ..
        }
    ));

    let later = parse(
        StatusCode::BAD_REQUEST,
        &json_headers(),
        br#"{"error":"temporarily_unavailable"}"#,
        NOW,
    )
    .unwrap_err();
    assert!(later.is_transient());
}

#[test]
fn the_endpoints_description_never_survives() {
    let err = parse(
        StatusCode::BAD_REQUEST,
        &json_headers(),
        br#"{"error":"must_reset_password","error_description":"reset-token-XYZ"}"#,
        NOW,
    )
    .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("must_reset_password"));
    assert!(!shown.contains("reset-token-XYZ"));
    let hostile = parse(
        StatusCode::BAD_REQUEST,
        &json_headers(),
        br#"{"error":"pw=hunter2 <script>"}"#,
        NOW,
    )
    .unwrap_err();
    assert!(!format!("{hostile:?}").contains("hunter2"));
}
