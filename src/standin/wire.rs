//! Small HTTP helpers the stand-ins share: response bodies, JSON and OAuth2 error responses,
//! Content-Type checks, form and HTTP Basic parsing. Pure functions; no state, no I/O.

use std::convert::Infallible;
use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderName, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use super::Credentials;

/// Every response body a stand-in sends.
pub(super) type Body = BoxBody<Bytes, Infallible>;

/// A token request, its body already read.
#[derive(Debug)]
pub(super) struct TokenRequest {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// Sets a header, skipping a value that is not a valid header value (never the case for ours).
pub(super) fn set_header(resp: &mut Response<Body>, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, value);
    }
}

pub(super) fn with_body(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    set_header(&mut resp, CONTENT_TYPE, content_type);
    resp
}

pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    with_body(status, "application/json", value.to_string())
}

/// `{"error", "error_description"}`, RFC 6749 §5.2.
pub(super) fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "error": code, "error_description": description }),
    )
}

/// A successful token response, uncacheable as RFC 6749 §5.1 requires.
pub(super) fn token_ok(value: &serde_json::Value) -> Response<Body> {
    let mut resp = json(StatusCode::OK, value);
    set_header(&mut resp, CACHE_CONTROL, "no-store");
    set_header(&mut resp, PRAGMA, "no-cache");
    resp
}

/// The media type of `Content-Type`, lower-cased, without parameters such as `charset`.
pub(super) fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

pub(super) fn is_form(headers: &HeaderMap) -> bool {
    media_type(headers).as_deref() == Some("application/x-www-form-urlencoded")
}

/// The OAuth2 answer to a token request that is not a form (RFC 6749 §3.2 requires one):
/// `None` when it is.
pub(super) fn require_form(headers: &HeaderMap) -> Option<Response<Body>> {
    (!is_form(headers)).then(|| {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        )
    })
}

pub(super) fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).as_deref() == Some("application/json")
}

/// A decoded `application/x-www-form-urlencoded` body.
#[derive(Debug, Default)]
pub(super) struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`; an empty value counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// What the `Authorization` header says about HTTP Basic client authentication.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Basic {
    /// No `Authorization` header, or one with another scheme.
    Absent,
    /// `Basic` with something that is not base64 of `id:secret`.
    Malformed,
    Given {
        id: String,
        secret: String,
    },
}

pub(super) fn basic(headers: &HeaderMap) -> Basic {
    let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Basic::Absent;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Basic::Absent;
    }
    let decoded = STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok());
    match decoded.as_deref().and_then(|s| s.split_once(':')) {
        Some((id, secret)) => Basic::Given {
            id: id.to_string(),
            secret: secret.to_string(),
        },
        None => Basic::Malformed,
    }
}

/// Whether `id`/`secret` are the expected credentials, as sent or in the form-urlencoded shape
/// RFC 6749 §2.3.1 asks clients to apply before Base64.
pub(super) fn credentials_match(expected: &Credentials, id: &str, secret: &str) -> bool {
    let exact = id == expected.id && secret == expected.secret;
    let decoded = form_decode(id).as_deref() == Some(expected.id.as_str())
        && form_decode(secret).as_deref() == Some(expected.secret.as_str());
    exact || decoded
}

/// `application/x-www-form-urlencoded` decoding of a single value; `None` when the value holds
/// `&` or `=`, which an encoded value cannot.
fn form_decode(value: &str) -> Option<String> {
    if value.contains(['&', '=']) {
        return None;
    }
    form_urlencoded::parse(value.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn headers(name: HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn media_type_ignores_parameters_and_case() {
        let h = headers(
            CONTENT_TYPE,
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        );
        assert!(is_form(&h));
        assert!(!is_json(&h));
        assert!(!is_form(&HeaderMap::new()));
    }

    #[test]
    fn basic_parsing() {
        let auth = http::header::AUTHORIZATION;
        let h = headers(auth.clone(), &format!("basic {}", STANDARD.encode("a:b:c")));
        let want = Basic::Given {
            id: "a".into(),
            secret: "b:c".into(),
        };
        assert_eq!(basic(&h), want);
        assert_eq!(basic(&headers(auth.clone(), "Bearer x")), Basic::Absent);
        assert_eq!(basic(&headers(auth, "Basic !!!")), Basic::Malformed);
        assert_eq!(basic(&HeaderMap::new()), Basic::Absent);
    }

    #[test]
    fn credentials_match_raw_and_form_encoded() {
        let c = Credentials::new("my id", "p&ss:w=rd");
        assert!(credentials_match(&c, "my id", "p&ss:w=rd"));
        assert!(credentials_match(&c, "my+id", "p%26ss%3Aw%3Drd"));
        assert!(!credentials_match(&c, "my id", "wrong"));
    }
}
