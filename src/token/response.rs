//! Reading token endpoint answers, leniently but within bounds.
//!
//! Lenient where real servers differ harmlessly (`token_type` in any case, `expires_in` as a
//! number or a numeric string, JSON under any Content-Type), strict where a mistake would send
//! garbage upstream (no `access_token`, an HTML page, a non-Bearer type). The endpoint's own
//! `error_description` is never kept: Nexudus puts a password-reset token in it.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::{ErrorCode, InvalidResponse, TokenError};
use crate::secret::Secret;

/// Token responses larger than this are refused unread: a real one is a few KiB.
pub const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// The longest lifetime taken from a response (about 31 years), whether from `expires_in` or a
/// JWT `exp`: a token "good for ever" is refreshed now and then, and instants stay in range.
const MAX_LIFETIME_SECS: u64 = 1_000_000_000;

/// RFC 6749 §5.2 codes (and `slow_down`) that mean "later", even on a 400.
const TRANSIENT_CODES: [&str; 3] = ["temporarily_unavailable", "server_error", "slow_down"];

/// What a successful token request yields.
#[derive(Debug)]
pub struct Grant {
    pub access_token: Secret,
    /// How long the token is good for, as far as the response says.
    pub lifetime: Lifetime,
    pub refresh_token: Option<Secret>,
    /// Obtained with a refresh token (which then stays usable unless a new one came).
    pub via_refresh: bool,
}

/// What a token response says about the token's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// From `expires_in`, else from the JWT `exp` claim.
    Given(Duration),
    /// Neither is there: the configured `token_lifetime` applies.
    Unstated,
    /// `expires_in` is there but zero, negative or not a number, and no JWT `exp` says
    /// better. Not taken as "an hour": the token is used briefly and replaced soon.
    Unusable,
}

/// Interprets a complete token endpoint response.
pub fn parse(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: u64,
) -> Result<Grant, TokenError> {
    if status.is_success() {
        return parse_success(headers, body, now_unix);
    }
    let code = json_object(body).and_then(|o| {
        o.get("error")
            .and_then(Value::as_str)
            .and_then(ErrorCode::parse)
    });
    let transient_code = code
        .as_ref()
        .is_some_and(|c| TRANSIENT_CODES.contains(&c.as_str()));
    let transient_status = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED);
    if transient_status || transient_code {
        return Err(TokenError::Unavailable {
            status: status.as_u16(),
            code,
            retry_after: retry_after(headers),
        });
    }
    if status.is_client_error() || status == StatusCode::NOT_IMPLEMENTED {
        return Err(TokenError::Rejected {
            status: status.as_u16(),
            code,
        });
    }
    Err(InvalidResponse::UnexpectedStatus(status.as_u16()).into())
}

fn parse_success(headers: &HeaderMap, body: &[u8], now_unix: u64) -> Result<Grant, TokenError> {
    let Some(object) = json_object(body) else {
        // Only a well-formed media type is repeated: the header is the endpoint's text.
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && t.len() <= 64
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-/".contains(&b))
            })
            .unwrap_or("none or unprintable")
            .to_owned();
        return Err(InvalidResponse::NotJson { content_type }.into());
    };
    let access_token = match object.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => Secret::new(t.as_str()),
        _ => return Err(InvalidResponse::NoAccessToken.into()),
    };
    if let Some(kind) = object.get("token_type").and_then(Value::as_str) {
        if !kind.eq_ignore_ascii_case("bearer") {
            let shown =
                ErrorCode::parse(kind).map_or_else(|| "(unprintable)".into(), |c| c.to_string());
            return Err(InvalidResponse::NotBearer(shown).into());
        }
    }
    let expires_in = object.get("expires_in");
    let lifetime = match expires_in.and_then(seconds) {
        Some(secs) => Lifetime::Given(secs),
        None => match jwt_exp(access_token.expose()) {
            Some(exp) if exp <= now_unix => return Err(InvalidResponse::AlreadyExpired.into()),
            Some(exp) => {
                Lifetime::Given(Duration::from_secs((exp - now_unix).min(MAX_LIFETIME_SECS)))
            }
            None if expires_in.is_some_and(|v| !v.is_null()) => Lifetime::Unusable,
            None => Lifetime::Unstated,
        },
    };
    let refresh_token = match object.get("refresh_token") {
        Some(Value::String(t)) if !t.is_empty() => Some(Secret::new(t.as_str())),
        _ => None,
    };
    Ok(Grant {
        access_token,
        lifetime,
        refresh_token,
        via_refresh: false,
    })
}

fn json_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// `expires_in` as a positive number of seconds, given as a number or a numeric string.
fn seconds(value: &Value) -> Option<Duration> {
    let secs = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0)
        .then(|| Duration::from_secs_f64(secs.min(MAX_LIFETIME_SECS as f64)))
}

/// The `exp` claim of a JWT, read without verifying the signature: it only tells us when to
/// stop using a token the endpoint just handed us over TLS.
pub fn jwt_exp(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp.is_finite() && exp > 0.0).then_some(exp as u64)
}

/// `Retry-After` as delta-seconds (the HTTP-date form is rare from token endpoints and is left
/// to the ordinary backoff).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
