//! What stands in front of every token endpoint: read the body, count the request, hold it
//! while the hold knob is on, answer an injected failure (or delay the request), refuse methods
//! other than POST, then hand over to the API's own module. The APIs' rules live in their
//! modules, not here.

use http::header::{ALLOW, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;

use super::knobs::Shared;
use super::server::Abort;
use super::wire::{self, Body, Form, TokenRequest};
use super::{nexudus, nexushub, nuvy_legacy, nuvy_nexus, quantoz, Api, Failure};

/// What [`Failure::Html200`] answers: a portal's sign-in page.
const LOGIN_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\
<body><form method=\"post\" action=\"/login\"><input name=\"username\">\
<input name=\"password\" type=\"password\"><button>Sign in</button></form></body></html>\n";

pub(super) async fn token_endpoint(
    shared: &Shared,
    peer: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Abort> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(Abort::Body)?.to_bytes();
    let path = parts.uri.path().to_string();
    shared.count_token_request(grant_label(shared.api, &path, &body).as_deref());
    hold(shared).await?;
    if let Some(failure) = shared.take_failure() {
        if let Some(resp) = inject(shared, failure).await? {
            return Ok(resp);
        }
    }
    if parts.method != Method::POST {
        let mut resp = wire::oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "the token endpoint only accepts POST",
        );
        wire::set_header(&mut resp, ALLOW, "POST");
        return Ok(resp);
    }
    let req = TokenRequest {
        path,
        headers: parts.headers,
        body,
        peer,
    };
    Ok(match shared.api {
        Api::NuvyNexus => nuvy_nexus::token(shared, &req),
        Api::NuvyLegacy => nuvy_legacy::token(shared, &req),
        Api::Quantoz => quantoz::token(shared, &req),
        Api::Nexudus => nexudus::token(shared, &req),
        Api::NexusHub => nexushub::token(shared, &req),
    })
}

/// The label a request is counted under: the `grant_type` form field as sent (whatever the
/// Content-Type), or for NexusHub the endpoint (`authenticate`, `refresh`).
fn grant_label(api: Api, path: &str, body: &[u8]) -> Option<String> {
    match api {
        Api::NexusHub => Some(path.trim_start_matches('/').to_string()),
        _ => Form::parse(body).get("grant_type").map(str::to_string),
    }
}

/// Waits while the hold knob is on, visible in the `held` count meanwhile.
async fn hold(shared: &Shared) -> Result<(), Abort> {
    let mut hold = shared.hold.subscribe();
    if !*hold.borrow_and_update() {
        return Ok(());
    }
    let _held = Held::enter(&shared.held);
    tokio::select! {
        _ = hold.wait_for(|on| !*on) => Ok(()),
        _ = shared.shut_down() => Err(Abort::ShutDown),
    }
}

/// Counts a held request for as long as it lives, even if its connection goes away.
struct Held<'a>(&'a watch::Sender<usize>);

impl<'a> Held<'a> {
    fn enter(count: &'a watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Held(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Answers `failure`; `None` when the request is to be answered as usual after all (a
/// [`Failure::Delay`] once it has waited).
async fn inject(shared: &Shared, failure: Failure) -> Result<Option<Response<Body>>, Abort> {
    Ok(Some(match failure {
        Failure::Status(code) => {
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|s| s.as_u16() >= 200)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            wire::json(status, &serde_json::json!({ "error": "server_error" }))
        }
        Failure::TooManyRequests { retry_after_secs } => too_many_requests(retry_after_secs),
        Failure::Html200 => wire::with_body(StatusCode::OK, "text/html; charset=utf-8", LOGIN_PAGE),
        Failure::MissingAccessToken => {
            wire::token_ok(&serde_json::json!({ "token_type": "Bearer", "expires_in": 3600 }))
        }
        Failure::Hang => {
            shared.shut_down().await;
            return Err(Abort::ShutDown);
        }
        Failure::Delay(wait) => {
            tokio::select! {
                _ = tokio::time::sleep(wait) => return Ok(None),
                _ = shared.shut_down() => return Err(Abort::ShutDown),
            }
        }
        Failure::Close => return Err(Abort::Close),
    }))
}

/// 429 `too_many_requests` with `Retry-After` in seconds.
pub(super) fn too_many_requests(retry_after_secs: u64) -> Response<Body> {
    let mut resp = wire::json(
        StatusCode::TOO_MANY_REQUESTS,
        &serde_json::json!({ "error": "too_many_requests" }),
    );
    wire::set_header(&mut resp, RETRY_AFTER, &retry_after_secs.to_string());
    resp
}
