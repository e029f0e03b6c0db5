//! The request path: route → prepare headers → authorize → send → on 401 re-authorize and
//! resend once → respond.
//!
//! [`handle`] never fails: it logs once and turns a [`ProxyError`] into its JSON answer. `forward`
//! is the path itself, plain async code using `?`. Token policy lives in `token`, header rules in
//! `headers`, body buffering in `body`; this module only decides the order of things.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{self, BodyLimits, BoxError, Prepared, ProxyBody, ReadError, ResponseBody};
use crate::client::HttpClient;
use crate::config::{Target, UpstreamConfig};
use crate::error::ProxyError;
use crate::headers;
use crate::metrics::{ReplayOutcome, UpstreamMetrics};
use crate::token::{Reauth, Token, TokenSource};

/// Everything the request path needs for one upstream, built once and shared.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    /// The bound listen address (port 0 resolved).
    pub listen: SocketAddr,
    target: Target,
    /// The upstream request's `Host`, from `target`; `None` leaves it to the client.
    host: Option<HeaderValue>,
    headers: HeaderMap,
    retry_on: Vec<StatusCode>,
    max_replay_body: u64,
    request_timeout: Duration,
    /// Authorities an absolute-form request may name: this listener and the target.
    own_authorities: Vec<Authority>,
    pub tokens: Arc<TokenSource>,
    /// `max_buffered` and `body_read_timeout`, shared by every upstream.
    body_limits: Arc<BodyLimits>,
    client: HttpClient,
    pub metrics: UpstreamMetrics,
    /// Set when a reload removes this upstream; connections still open get a 503 and close.
    removed: AtomicBool,
}

impl Upstream {
    /// Assembles an upstream listening on `local` (the bound address, port 0 resolved).
    pub fn new(
        config: &UpstreamConfig,
        local: SocketAddr,
        tokens: Arc<TokenSource>,
        body_limits: Arc<BodyLimits>,
        client: HttpClient,
        metrics: UpstreamMetrics,
    ) -> Upstream {
        let own_authorities = [local.to_string(), format!("localhost:{}", local.port())]
            .iter()
            .filter_map(|a| a.parse().ok())
            .chain([config.target.authority.clone()])
            .collect();
        Upstream {
            listen: local,
            name: config.name.as_str().into(),
            target: config.target.clone(),
            host: host_header(&config.target),
            headers: config.headers.clone(),
            retry_on: config.retry_on.clone(),
            max_replay_body: config.max_replay_body,
            request_timeout: config.request_timeout,
            own_authorities,
            tokens,
            body_limits,
            client,
            metrics,
            removed: AtomicBool::new(false),
        }
    }

    /// `scheme://authority[/base-path]`, for `/status`.
    pub fn target_url(&self) -> String {
        format!("{:?}", self.target)
    }

    /// A reload removed this upstream.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }
}

/// What became of one request, for the log line.
struct Outcome {
    response: Response<ResponseBody>,
    replayed: bool,
}

/// Serves one application request. Never fails: logs one line and records its metrics.
/// Generic over the request body, so a test can call it without a socket.
pub async fn handle<B>(
    upstream: Arc<Upstream>,
    mut request: Request<B>,
) -> Result<Response<ResponseBody>, Infallible>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let request_id = request_id(request.headers_mut());
    let method = request.method().clone();
    let path = tracing::enabled!(tracing::Level::INFO).then(|| request.uri().path().to_owned());
    let (mut response, replayed, error) = match forward(&upstream, request).await {
        Ok(o) => (o.response, o.replayed, None),
        Err(e) => (e.to_response(&upstream.name), false, Some(e)),
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    upstream.metrics.request(status, error.is_some(), elapsed);
    let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let path = path.as_deref().unwrap_or("");
    let id = request_id.to_str().unwrap_or("");
    match &error {
        Some(error) => {
            tracing::warn!(upstream = &*upstream.name, %method, path, status, duration_ms, replayed, request_id = id, %error, "request failed")
        }
        None => {
            tracing::info!(upstream = &*upstream.name, %method, path, status, duration_ms, replayed, request_id = id, "request")
        }
    }
    response
        .headers_mut()
        .entry(X_REQUEST_ID)
        .or_insert(request_id);
    Ok(response)
}

/// The request id header: kept from the app when it sent one, made up otherwise; forwarded
/// upstream and returned to the app so both sides' logs can be joined.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The app's `x-request-id`, or a new random one inserted into `headers`.
fn request_id(headers: &mut HeaderMap) -> http::HeaderValue {
    if let Some(id) = headers
        .get(X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
    {
        return id.clone();
    }
    // Sixteen hex digits written by hand: `format!` cost more than the rest of this function.
    let n = fastrand::u64(..);
    let hex: [u8; 16] =
        std::array::from_fn(|i| b"0123456789abcdef"[(n >> (60 - 4 * i)) as usize & 0xf]);
    let id =
        http::HeaderValue::from_bytes(&hex).unwrap_or_else(|_| http::HeaderValue::from_static("0"));
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// The request path proper.
async fn forward<B>(up: &Upstream, request: Request<B>) -> Result<Outcome, ProxyError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if up.removed.load(Ordering::Relaxed) {
        return Err(ProxyError::Removed);
    }
    let (mut parts, body) = request.into_parts();
    route(up, &parts)?;
    let uri = upstream_uri(&up.target, &parts.uri)?;
    headers::prepare_request(
        &mut parts.headers,
        up.host.as_ref(),
        &up.headers,
        up.tokens.authenticates(),
    );
    let body = body::prepare(body, up.max_replay_body, &up.body_limits).await?;
    let token = up.tokens.token().await?;

    // `_held` keeps the buffer's share of `max_buffered` until the request is done.
    let (first_body, replay, _held) = match body {
        Prepared::Replayable(buffered, held) => (
            ProxyBody::buffered(buffered.clone()),
            Some(buffered),
            Some(held),
        ),
        Prepared::Streaming(stream) => (stream, None, None),
    };
    let head = Head {
        method: parts.method,
        uri,
        headers: parts.headers,
    };
    // The request head is copied only when a replay could need it again.
    let could_replay =
        replay.is_some() && token.is_some() && up.tokens.renews() && !up.retry_on.is_empty();
    let (first_head, kept) = match could_replay {
        true => (head.clone(), Some(head)),
        false => (head, None),
    };
    let first = send(up, first_head, first_body, token.as_deref()).await?;
    let Some(used) = token.filter(|_| needs_reauth(up, &first)) else {
        return respond(first, false);
    };
    if !up.tokens.renews() {
        // A static token has no successor: the rejection is the app's to see.
        up.metrics.replay(ReplayOutcome::NotRenewable);
        return respond(first, false);
    }
    let (Some(replay), Some(head)) = (replay, kept) else {
        // Streamed bodies are gone: the 401 goes to the app, the token goes from the cache.
        up.tokens.reject(&used);
        up.metrics.replay(ReplayOutcome::NotReplayable);
        return respond(first, false);
    };
    let fresh = match up.tokens.reauthorize(&used).await {
        Ok(Reauth::Replay(fresh)) => fresh,
        Ok(Reauth::PassThrough) => {
            up.metrics.replay(ReplayOutcome::TooSoon);
            return respond(first, false);
        }
        Err(e) => {
            up.metrics.replay(ReplayOutcome::TokenUnavailable);
            return Err(e.into());
        }
    };
    drop(first);
    let second = send(up, head, ProxyBody::buffered(replay), Some(&*fresh)).await?;
    up.metrics.replay(match needs_reauth(up, &second) {
        true => ReplayOutcome::RejectedAgain,
        false => ReplayOutcome::Recovered,
    });
    respond(second, true)
}

/// What an upstream request is made of, apart from its body and credentials.
#[derive(Clone)]
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// Refuses what a reverse proxy for one API must not do.
fn route(up: &Upstream, parts: &Parts) -> Result<(), ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    // HTTP/1 absolute-form means the client takes us for a forward proxy; h2 always carries
    // `:authority`, which is no such sign.
    if parts.version < Version::HTTP_2 {
        if let Some(authority) = parts.uri.authority() {
            if !up.own_authorities.contains(authority) {
                return Err(ProxyError::ForeignHost(authority.clone()));
            }
        }
    }
    Ok(())
}

/// The target's scheme and authority, its base path, then the request's path and query
/// exactly as received (percent-encoding untouched).
fn upstream_uri(target: &Target, uri: &Uri) -> Result<Uri, ProxyError> {
    let pq = uri.path_and_query().ok_or(ProxyError::BadTarget)?;
    if !pq.as_str().starts_with('/') {
        return Err(ProxyError::BadTarget);
    }
    let path_and_query = if target.base_path.is_empty() {
        pq.clone()
    } else {
        PathAndQuery::try_from(format!("{}{}", target.base_path, pq.as_str()))
            .map_err(|_| ProxyError::BadTarget)?
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|_| ProxyError::BadTarget)
}

/// The target's `Host`, written once per upstream rather than formatted by the client for
/// every request. An h2 request carries it beside `:authority` (the authority as written), and
/// the two must not differ; for HTTP/1.1 it must be what the client would write (the host, and
/// the port as a number unless it is the scheme's default). So it is `Some` only when the two
/// agree, which is the common case; otherwise (a default port written out, a port such as
/// `08080`) the client writes `Host` itself, for HTTP/1.1 only, as it did before.
fn host_header(target: &Target) -> Option<HeaderValue> {
    let default_port = match target.scheme == Scheme::HTTPS {
        true => 443,
        false => 80,
    };
    let authority = &target.authority;
    let written = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    match written == authority.as_str() {
        true => HeaderValue::from_str(&written).ok(),
        false => None,
    }
}

/// One attempt upstream, bounded by `request_timeout` until the response headers arrive.
async fn send(
    up: &Upstream,
    head: Head,
    body: ProxyBody,
    token: Option<&Token>,
) -> Result<Response<Incoming>, ProxyError> {
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    // The client upgrades to h2 when ALPN agrees; the app's own version is its business.
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = head.headers;
    if let Some(token) = token {
        headers::set_authorization(request.headers_mut(), token.header());
    }
    match tokio::time::timeout(up.request_timeout, up.client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) if stalled(&e) => Err(ProxyError::BodyStalled),
        Ok(Err(e)) => Err(ProxyError::UpstreamUnreachable(e)),
        Err(_) => Err(ProxyError::UpstreamTimeout(up.request_timeout)),
    }
}

/// Whether an upstream exchange failed because the application's body stopped arriving.
fn stalled(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(ReadError::Stalled(_)) = e.downcast_ref::<ReadError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether the upstream's answer means "this token is no good" (and not "not allowed").
fn needs_reauth(up: &Upstream, response: &Response<Incoming>) -> bool {
    up.retry_on.contains(&response.status()) && !headers::is_insufficient_scope(response.headers())
}

/// The upstream's response as the application gets it.
///
/// A `101 Switching Protocols` is refused: the sidecar never asks for an upgrade (`Upgrade` is
/// hop-by-hop and never forwarded), so the upstream switched on its own, and its bytes from
/// here on are no HTTP the app could read. Dropping the response closes that connection.
fn respond(response: Response<Incoming>, replayed: bool) -> Result<Outcome, ProxyError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::UnsolicitedUpgrade);
    }
    let (mut parts, body) = response.into_parts();
    headers::prepare_response(&mut parts.headers);
    Ok(Outcome {
        response: Response::from_parts(parts, Either::Left(body)),
        replayed,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn target(base: &str) -> Target {
        Target {
            scheme: Scheme::HTTPS,
            authority: Authority::from_static("api.example"),
            base_path: base.into(),
        }
    }

    #[test]
    fn a_made_up_request_id_is_sixteen_hex_digits_and_an_apps_own_is_kept() {
        let mut headers = HeaderMap::new();
        let made = request_id(&mut headers);
        let text = made.to_str().unwrap();
        assert_eq!(text.len(), 16);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(headers[X_REQUEST_ID], made);
        assert_ne!(request_id(&mut HeaderMap::new()), made);
        let mut own = HeaderMap::new();
        own.insert(X_REQUEST_ID, http::HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&mut own), "abc-123");
    }

    #[test]
    fn host_is_the_authority_as_written_unless_it_names_the_default_port() {
        let host = |scheme: Scheme, authority: &'static str| {
            let target = Target {
                scheme,
                authority: Authority::from_static(authority),
                base_path: String::new(),
            };
            host_header(&target)
        };
        assert_eq!(host(Scheme::HTTPS, "api.example").unwrap(), "api.example");
        assert_eq!(
            host(Scheme::HTTPS, "api.example:80").unwrap(),
            "api.example:80"
        );
        assert_eq!(
            host(Scheme::HTTP, "127.0.0.1:9000").unwrap(),
            "127.0.0.1:9000"
        );
        assert_eq!(host(Scheme::HTTP, "[::1]:9000").unwrap(), "[::1]:9000");
        assert_eq!(host(Scheme::HTTP, "API.Example").unwrap(), "API.Example");
        // Left to the client: HTTP/1.1 drops the port, h2's `:authority` keeps it.
        assert_eq!(host(Scheme::HTTPS, "api.example:443"), None);
        assert_eq!(host(Scheme::HTTPS, "api.example:0443"), None);
        assert_eq!(host(Scheme::HTTP, "127.0.0.1:80"), None);
        assert_eq!(host(Scheme::HTTPS, "[::1]:443"), None);
        // Ports the client would write otherwise than `:authority` says.
        for odd in [
            "api.example:08080",
            "[::1]:09000",
            "api.example:",
            "api.example:99999",
        ] {
            assert_eq!(host(Scheme::HTTPS, odd), None, "{odd}");
        }
    }

    #[test]
    fn uri_keeps_path_and_query_verbatim_and_prefixes_the_base() {
        let uri: Uri = "/a%2Fb/c%20d?x=1&y=%2B".parse().unwrap();
        assert_eq!(
            upstream_uri(&target(""), &uri).unwrap(),
            "https://api.example/a%2Fb/c%20d?x=1&y=%2B"
        );
        assert_eq!(
            upstream_uri(&target("/v2"), &uri).unwrap(),
            "https://api.example/v2/a%2Fb/c%20d?x=1&y=%2B"
        );
        let absolute: Uri = "http://127.0.0.1:8081/p?q".parse().unwrap();
        assert_eq!(
            upstream_uri(&target("/v2"), &absolute).unwrap(),
            "https://api.example/v2/p?q"
        );
        let star: Uri = "*".parse().unwrap();
        assert!(upstream_uri(&target(""), &star).is_err());
    }
}
