//! The protected API behind every stand-in: every path that is not a token endpoint. It records
//! each request as a [`Seen`], accepts only live bearer tokens this stand-in issued, and offers
//! a few paths that misbehave on purpose. It issues nothing.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::knobs::{lock, Shared, SEEN_LIMIT};
use super::server::Abort;
use super::wire::{self, Body};
use super::{Api, Seen};

/// `/download` sends its bytes in chunks of this size.
const CHUNK: u64 = 64 * 1024;

/// `POST` here (no token needed) revokes every token issued so far.
pub const REVOKE_PATH: &str = "/_standin/revoke";

/// Byte `i` of a `/download` body.
pub fn download_byte(i: u64) -> u8 {
    (i % 251) as u8
}

pub(super) async fn serve(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<Body>, Abort> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(Abort::Body)?.to_bytes();
    if parts.uri.path() == REVOKE_PATH && parts.method == Method::POST {
        // The demo's remote control, so a person with only curl can watch a 401 replay.
        lock(&shared.tokens).revoke_all();
        return Ok(wire::json(
            StatusCode::OK,
            &serde_json::json!({ "revoked": "all tokens issued so far" }),
        ));
    }
    let token = bearer(&parts.headers);
    let presented = token
        .as_deref()
        .and_then(|t| lock(&shared.tokens).presented(t));
    let always_401 = lock(&shared.knobs).api_always_401;
    let authorized = !always_401 && presented.is_some_and(|p| p.is_valid());
    let path_and_query = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let body_len = body.len();
    {
        let mut seen = lock(&shared.seen);
        if seen.len() >= SEEN_LIMIT {
            seen.pop_front();
        }
        seen.push_back(Seen {
            method: parts.method.clone(),
            path_and_query: path_and_query.clone(),
            headers: parts.headers.clone(),
            token,
            authorized,
            token_epoch: presented.map(|p| p.epoch),
            revoked: presented.is_some_and(|p| p.revoked),
            expired: presented.is_some_and(|p| p.expired),
            body,
            version: parts.version,
        });
    }
    shared.api_requests.send_modify(|n| *n += 1);
    if !authorized {
        return Ok(challenge(
            r#"Bearer error="invalid_token""#,
            "invalid_token",
            "the access token is missing, unknown, expired or revoked",
        ));
    }
    let path = parts.uri.path();
    Ok(match path {
        "/scope-denied" => challenge(
            r#"Bearer error="insufficient_scope", scope="admin""#,
            "insufficient_scope",
            "the token lacks the admin scope",
        ),
        "/download" => download(parts.uri.query()),
        "/slow" => {
            shared.shut_down().await;
            return Err(Abort::ShutDown);
        }
        _ => match path.strip_prefix("/status/") {
            Some(code) => status(code),
            // Which issued token the request presented (1 for the first): lets a person see
            // the token change after a replay without printing the token.
            None => echo(
                shared.api,
                &parts,
                &path_and_query,
                body_len,
                presented.map(|p| p.number),
            ),
        },
    })
}

/// The token of `Authorization: Bearer <t>`, scheme matched case-insensitively.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// 401 with an RFC 6750 challenge.
fn challenge(www_authenticate: &str, code: &str, description: &str) -> Response<Body> {
    let mut resp = wire::oauth_error(StatusCode::UNAUTHORIZED, code, description);
    wire::set_header(&mut resp, WWW_AUTHENTICATE, www_authenticate);
    resp
}

fn bad_request(description: &str) -> Response<Body> {
    wire::oauth_error(StatusCode::BAD_REQUEST, "bad_request", description)
}

/// `/download?bytes=N`: N pattern bytes, streamed in 64 KiB chunks.
fn download(query: Option<&str>) -> Response<Body> {
    let bytes = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "bytes")
        .and_then(|(_, v)| v.parse::<u64>().ok());
    let Some(len) = bytes else {
        return bad_request("expected /download?bytes=N");
    };
    let mut resp = Response::new(BodyExt::boxed(Pattern { sent: 0, len }));
    wire::set_header(&mut resp, CONTENT_LENGTH, &len.to_string());
    wire::set_header(
        &mut resp,
        http::header::CONTENT_TYPE,
        "application/octet-stream",
    );
    resp
}

/// `/status/NNN`: that status with a small JSON body (none for 204 and 304).
fn status(code: &str) -> Response<Body> {
    let Some(status) = code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| (200..=599).contains(&s.as_u16()))
    else {
        return bad_request("expected /status/NNN with 200 <= NNN <= 599");
    };
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut resp = Response::new(wire::full(Bytes::new()));
        *resp.status_mut() = status;
        return resp;
    }
    wire::json(status, &serde_json::json!({ "status": status.as_u16() }))
}

/// 200 JSON describing the request, with `x-standin-api`. Over HTTP/1.x it also carries
/// response hop-by-hop headers (`Connection: x-hop-response`, `x-hop-response`, `Keep-Alive`)
/// for the sidecar to strip; HTTP/2 forbids them, and hyper would drop them anyway.
fn echo(
    api: Api,
    parts: &Parts,
    path_and_query: &str,
    body_len: usize,
    token_number: Option<usize>,
) -> Response<Body> {
    let mut resp = wire::json(
        StatusCode::OK,
        &serde_json::json!({
            "method": parts.method.as_str(),
            "path_and_query": path_and_query,
            "body_len": body_len,
            "authorization_seen": true,
            "token_number": token_number,
        }),
    );
    wire::set_header(
        &mut resp,
        HeaderName::from_static("x-standin-api"),
        api.name(),
    );
    if parts.version < Version::HTTP_2 {
        wire::set_header(&mut resp, CONNECTION, "x-hop-response");
        wire::set_header(&mut resp, HeaderName::from_static("x-hop-response"), "1");
        wire::set_header(
            &mut resp,
            HeaderName::from_static("keep-alive"),
            "timeout=5",
        );
    }
    resp
}

/// A body of `len` bytes following [`download_byte`], produced a chunk at a time.
struct Pattern {
    sent: u64,
    len: u64,
}

impl http_body::Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let n = CHUNK.min(self.len - self.sent);
        if n == 0 {
            return Poll::Ready(None);
        }
        let chunk: Vec<u8> = (self.sent..self.sent + n).map(download_byte).collect();
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}
