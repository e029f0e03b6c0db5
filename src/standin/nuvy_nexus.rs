//! Nuvy Nexus `POST /nexus/oauth2/token` (<https://developers.nuvy.ai/nexus-auth>):
//! client_credentials with App Client credentials by HTTP Basic (preferred) or in the form body
//! (fallback), an optional `scope`. Counting, holding and injected failures happen before, in
//! `gate`.

use http::header::WWW_AUTHENTICATE;
use http::{Response, StatusCode};

use super::knobs::Shared;
use super::wire::{self, Basic, Body, Form, TokenRequest};

/// Checks, in order: Content-Type, presence of credentials, credentials, grant type, whether
/// the grant is enabled for the App Client, scope.
pub(super) fn token(shared: &Shared, req: &TokenRequest) -> Response<Body> {
    if let Some(refusal) = wire::require_form(&req.headers) {
        return refusal;
    }
    let form = Form::parse(&req.body);
    let knobs = shared.knobs();
    let authenticated = match wire::basic(&req.headers) {
        Basic::Given { id, secret } => wire::credentials_match(&knobs.credentials, &id, &secret),
        Basic::Malformed => false,
        Basic::Absent => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => {
                id == knobs.credentials.id && secret == knobs.credentials.secret
            }
            _ => {
                return wire::oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client credentials missing: use HTTP Basic or client_id and client_secret",
                )
            }
        },
    };
    if !authenticated {
        return invalid_client();
    }
    if form.get("grant_type") != Some("client_credentials") {
        return wire::oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    if knobs.grant_disabled {
        return wire::oauth_error(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_grant_type",
            "grant type not supported for this App Client",
        );
    }
    let scope = form.get("scope");
    if let Some(scope) = scope {
        if !scope
            .split_whitespace()
            .all(|s| knobs.scopes.iter().any(|allowed| allowed == s))
        {
            return wire::oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "requested scope not granted to the client",
            );
        }
    }
    let mut body = shared.issue_oauth2(&knobs.credentials.id, "Bearer");
    if let Some(scope) = scope {
        body["scope"] = scope.into();
    }
    wire::token_ok(&body)
}

/// 401 `invalid_client` with the `WWW-Authenticate: Basic` challenge of RFC 6749 §5.2.
pub(super) fn invalid_client() -> Response<Body> {
    let mut resp = wire::oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "invalid client credentials or revoked App Client",
    );
    wire::set_header(&mut resp, WWW_AUTHENTICATE, "Basic");
    resp
}
