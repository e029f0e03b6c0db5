//! NexusHub `auth.nexushub.co` (<https://nexushub.co/developers/api/authentication>): JSON `POST
//! /authenticate` with `user_key`/`user_secret` and JSON `POST /refresh` with `refresh_token`.
//! Responses carry no `expires_in`; the JWT `exp` says when a token dies. The refresh token is
//! reused: `/refresh` answers only an access token (unless the rotation knob is on). Counting,
//! holding and injected failures happen before, in `gate`.

use http::{Response, StatusCode};
use serde::Deserialize;

use super::knobs::{lock, Shared};
use super::wire::{self, Body, TokenRequest};

#[derive(Deserialize)]
struct Authenticate {
    user_key: String,
    user_secret: String,
}

#[derive(Deserialize)]
struct Refresh {
    refresh_token: String,
}

pub(super) fn token(shared: &Shared, req: &TokenRequest) -> Response<Body> {
    if !wire::is_json(&req.headers) {
        return invalid_request("Content-Type must be application/json");
    }
    if req.path == "/authenticate" {
        let Ok(login) = serde_json::from_slice::<Authenticate>(&req.body) else {
            return invalid_request("expected {\"user_key\", \"user_secret\"}");
        };
        let expected = shared.knobs().credentials;
        if login.user_key != expected.id || login.user_secret != expected.secret {
            return unauthorized("invalid user_key or user_secret");
        }
        let (token, _) = shared.issue(&login.user_key);
        let refresh_token = lock(&shared.tokens).issue_refresh(&login.user_key);
        wire::token_ok(
            &serde_json::json!({ "access_token": token, "refresh_token": refresh_token }),
        )
    } else {
        let Ok(refresh) = serde_json::from_slice::<Refresh>(&req.body) else {
            return invalid_request("expected {\"refresh_token\"}");
        };
        let rotate = shared.knobs().rotate_refresh;
        let subject = lock(&shared.tokens).redeem_refresh(&refresh.refresh_token, rotate);
        let Some(subject) = subject else {
            return unauthorized("unknown or invalidated refresh_token");
        };
        let (token, _) = shared.issue(&subject);
        let mut body = serde_json::json!({ "access_token": token });
        // NexusHub documents no rotation: only the knob makes `/refresh` hand out a successor.
        if rotate {
            body["refresh_token"] = lock(&shared.tokens).issue_refresh(&subject).into();
        }
        wire::token_ok(&body)
    }
}

fn invalid_request(description: &str) -> Response<Body> {
    wire::oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
}

fn unauthorized(description: &str) -> Response<Body> {
    wire::oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", description)
}
