//! Nexudus members portal `POST /api/token`
//! (<https://learn.nexudus.com/api/endpoints/auth/get-token>): password grant with optional RFC
//! 6238 `totp`, refresh_token grant, form bodies only, lower-case `bearer`. Counting, holding and
//! injected failures happen before, in `gate`.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{Response, StatusCode};
use totp_rs::{Algorithm, Secret, TOTP};

use super::knobs::{lock, Shared};
use super::tokens::random_alphanumeric;
use super::wire::{self, Body, Form, TokenRequest};

pub(super) fn token(shared: &Shared, req: &TokenRequest) -> Response<Body> {
    // The page: "Sending a JSON body will result in an unsupported_grant_type error."
    if !wire::is_form(&req.headers) {
        return error(
            "unsupported_grant_type",
            "the body must be encoded as application/x-www-form-urlencoded",
        );
    }
    let form = Form::parse(&req.body);
    match form.get("grant_type") {
        Some("password") => password(shared, &form),
        Some("refresh_token") => refresh(shared, &form),
        _ => error(
            "unsupported_grant_type",
            "grant_type must be password or refresh_token",
        ),
    }
}

/// Checks, in order: username and password, the password-reset flag, the TOTP code.
fn password(shared: &Shared, form: &Form) -> Response<Body> {
    let knobs = shared.knobs();
    let expected = &knobs.credentials;
    if form.get("username") != Some(expected.id.as_str())
        || form.get("password") != Some(expected.secret.as_str())
    {
        return error("invalid_grant", "The user name or password is incorrect.");
    }
    if knobs.password_reset {
        let reset_token = format!("reset-{}", random_alphanumeric(16));
        return error("must_reset_password", &reset_token);
    }
    if let Some(secret) = &expected.totp_secret {
        if !form
            .get("totp")
            .is_some_and(|code| totp_valid(secret, code))
        {
            return error(
                "two_factor_auth_check",
                "A valid two-factor authentication code is required.",
            );
        }
    }
    issue(shared, &expected.id)
}

/// A new access token and a new refresh token. The presented refresh token stays valid,
/// unless refresh tokens rotate ([`StandIn::rotate_refresh_tokens`]): then it is spent, and
/// presenting it again is `invalid_grant`, as for a revoked one.
///
/// [`StandIn::rotate_refresh_tokens`]: super::StandIn::rotate_refresh_tokens
fn refresh(shared: &Shared, form: &Form) -> Response<Body> {
    let rotate = shared.knobs().rotate_refresh;
    let subject = form
        .get("refresh_token")
        .and_then(|rt| lock(&shared.tokens).redeem_refresh(rt, rotate));
    match subject {
        Some(subject) => issue(shared, &subject),
        None => error(
            "invalid_grant",
            "The refresh token is invalid or has been revoked.",
        ),
    }
}

fn issue(shared: &Shared, subject: &str) -> Response<Body> {
    let mut body = shared.issue_oauth2(subject, "bearer");
    body["refresh_token"] = lock(&shared.tokens).issue_refresh(subject).into();
    wire::token_ok(&body)
}

/// Every Nexudus error is a 400 with an OAuth2 error body.
fn error(code: &str, description: &str) -> Response<Body> {
    wire::oauth_error(StatusCode::BAD_REQUEST, code, description)
}

/// RFC 6238 with SHA1, 6 digits, 30 s steps, accepting one step either side of now.
fn totp_valid(base32_secret: &str, code: &str) -> bool {
    let Some(totp) = totp(base32_secret) else {
        tracing::warn!("stand-in TOTP secret is not valid base32");
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    totp.check(code.trim(), now)
}

/// The TOTP generator for a base32 secret (case, spaces and padding forgiven).
pub(super) fn totp(base32_secret: &str) -> Option<TOTP> {
    let normalized: String = base32_secret
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let bytes = Secret::Encoded(normalized).to_bytes().ok()?;
    // Unchecked: a stand-in should not refuse secrets shorter than RFC 4226's 128 bits.
    Some(TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes))
}
