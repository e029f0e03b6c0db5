//! The admin listener: `/healthz`, `/readyz`, `/status`, `/metrics`.
//!
//! Reads token state and metrics; changes nothing. Its answers carry states, times, URLs and
//! sanitised error codes — never a token or a secret, which it has no access to anyway
//! (`TokenSource::status` hands out snapshots without them).

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE, VARY};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::metrics::{Format, Metrics};
use crate::proxy::Upstream;
use crate::token::{SharedCache, SharedState};

const JSON: &str = "application/json";

/// What the admin endpoints look at.
#[derive(Debug)]
pub struct Admin {
    metrics: Arc<Metrics>,
    /// Replaced whole on reload.
    upstreams: ArcSwap<Vec<Arc<Upstream>>>,
    /// `[shared_cache]`, if configured; replaced on reload.
    shared: ArcSwapOption<SharedCache>,
}

impl Admin {
    /// Admin endpoints over `metrics`; upstreams arrive with [`Admin::set_upstreams`].
    pub fn new(metrics: Arc<Metrics>) -> Admin {
        Admin {
            metrics,
            upstreams: ArcSwap::from_pointee(Vec::new()),
            shared: ArcSwapOption::empty(),
        }
    }

    /// The shared cache now configured, if any (called at start and after each reload).
    pub fn set_shared_cache(&self, shared: Option<Arc<SharedCache>>) {
        self.shared.store(shared);
    }

    /// The upstreams now configured (called at start and after each reload).
    pub fn set_upstreams(&self, upstreams: Vec<Arc<Upstream>>) {
        self.upstreams.store(Arc::new(upstreams));
    }

    fn upstreams(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.upstreams.load_full()
    }
}

/// Serves one admin request. Never fails.
pub async fn handle(
    admin: Arc<Admin>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            JSON,
            json!({"error": "method_not_allowed"}).to_string(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    Ok(match request.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => readyz(&admin),
        "/status" => status(&admin),
        "/metrics" => metrics(&admin, request.headers()),
        _ => reply(
            StatusCode::NOT_FOUND,
            JSON,
            json!({"error": "not_found", "endpoints": ["/healthz", "/readyz", "/status", "/metrics"]}).to_string(),
        ),
    })
}

/// 200 when every upstream can serve (holds a live token, or has not needed one, and has no
/// credential error); 503 otherwise. The body names each upstream's state either way.
fn readyz(admin: &Admin) -> Response<Full<Bytes>> {
    let mut ready = true;
    let mut upstreams = serde_json::Map::new();
    for u in admin.upstreams().iter() {
        let status = u.tokens.status();
        ready &= status.ready;
        let mut entry = json!({ "state": status.state, "ready": status.ready });
        if let Some(code) = status
            .last_fetch
            .as_ref()
            .and_then(|l| l.error_code.clone())
        {
            entry["token_error"] = code.into();
        }
        upstreams.insert(u.name.to_string(), entry);
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply(
        code,
        JSON,
        json!({ "ready": ready, "upstreams": upstreams }).to_string(),
    )
}

fn status(admin: &Admin) -> Response<Full<Bytes>> {
    let upstreams: Vec<_> = admin
        .upstreams()
        .iter()
        .map(|u| {
            let mut entry = serde_json::to_value(u.tokens.status()).unwrap_or_default();
            entry["name"] = u.name.to_string().into();
            entry["listen"] = u.listen.to_string().into();
            entry["target"] = u.target_url().into();
            entry
        })
        .collect();
    // Redis down is reported here, never in `/readyz`: each replica then serves with tokens
    // of its own, so a pod that cannot reach Redis is degraded, not unready.
    let shared_cache = admin.shared.load_full().map(|cache| match cache.state() {
        SharedState::Down { for_seconds } => {
            json!({ "state": "down", "down_for_seconds": for_seconds })
        }
        state => json!({ "state": state.name() }),
    });
    reply(
        StatusCode::OK,
        JSON,
        json!({ "upstreams": upstreams, "shared_cache": shared_cache }).to_string(),
    )
}

/// Prometheus text format 0.0.4, or OpenMetrics when the scraper's `Accept` prefers it.
fn metrics(admin: &Admin, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let format = Format::negotiate(
        headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    // The expiry gauge is a reading of now, so it is taken at scrape time.
    for u in admin.upstreams().iter() {
        let seconds = u.tokens.status().expires_in_seconds.unwrap_or(0);
        u.metrics.set_token_expiry(seconds as f64);
    }
    match admin.metrics.encode(format) {
        Ok(text) => {
            let mut r = reply(StatusCode::OK, format.content_type(), text);
            r.headers_mut()
                .insert(VARY, HeaderValue::from_static("accept"));
            r
        }
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            JSON,
            json!({"error": "metrics_encoding_failed"}).to_string(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
