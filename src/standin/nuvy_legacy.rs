//! Nuvy API (legacy) `POST /oauth2/token` (<https://developers.nuvy.ai/oauth>): client_credentials
//! with HTTP Basic only; credentials in the body are not looked at. Counting, holding and injected
//! failures happen before, in `gate`.

use http::{Response, StatusCode};

use super::knobs::Shared;
use super::nuvy_nexus::invalid_client;
use super::wire::{self, Basic, Body, Form, TokenRequest};

/// Checks, in order: Content-Type, Basic credentials, grant type.
pub(super) fn token(shared: &Shared, req: &TokenRequest) -> Response<Body> {
    if let Some(refusal) = wire::require_form(&req.headers) {
        return refusal;
    }
    let knobs = shared.knobs();
    let authenticated = match wire::basic(&req.headers) {
        Basic::Given { id, secret } => wire::credentials_match(&knobs.credentials, &id, &secret),
        Basic::Absent | Basic::Malformed => false,
    };
    if !authenticated {
        return invalid_client();
    }
    if Form::parse(&req.body).get("grant_type") != Some("client_credentials") {
        return wire::oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing or invalid grant_type: must be client_credentials",
        );
    }
    let body = shared.issue_oauth2(&knobs.credentials.id, "Bearer");
    wire::token_ok(&body)
}
