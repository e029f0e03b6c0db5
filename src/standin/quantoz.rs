//! Quantoz Nexus identity `POST /connect/token`
//! (<https://docs.quantoz.com/articles/start-developing/sd_authentication.html>):
//! client_credentials with `client_id`, `client_secret` and `scope=api1` in the form body, behind a
//! rate limiter of 60 requests per rolling minute per client IP. Errors are 400, as IdentityServer
//! answers them. Counting, holding and injected failures happen before, in `gate`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use http::{Response, StatusCode};
use tokio::time::Instant;

use super::gate::too_many_requests;
use super::knobs::{lock, Shared};
use super::wire::{self, Body, Form, TokenRequest};

/// Token requests allowed per client IP within [`RATE_WINDOW`].
pub(super) const RATE_LIMIT: usize = 60;
const RATE_WINDOW: Duration = Duration::from_secs(60);
const SCOPE: &str = "api1";

/// Checks, in order: rate limit, Content-Type, credentials, grant type, scope.
pub(super) fn token(shared: &Shared, req: &TokenRequest) -> Response<Body> {
    if let Err(retry_after) = lock(&shared.rate).admit(req.peer.ip(), Instant::now()) {
        return too_many_requests(retry_after);
    }
    if let Some(refusal) = wire::require_form(&req.headers) {
        return refusal;
    }
    let form = Form::parse(&req.body);
    let knobs = shared.knobs();
    let authenticated = form.get("client_id") == Some(knobs.credentials.id.as_str())
        && form.get("client_secret") == Some(knobs.credentials.secret.as_str());
    if !authenticated {
        return wire::oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "missing or invalid client_id or client_secret",
        );
    }
    if form.get("grant_type") != Some("client_credentials") {
        return wire::oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    if form.get("scope") != Some(SCOPE) {
        return wire::oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope must be api1",
        );
    }
    let mut body = shared.issue_oauth2(&knobs.credentials.id, "Bearer");
    body["scope"] = SCOPE.into();
    wire::token_ok(&body)
}

/// A rolling-window limiter; only admitted requests take a slot.
#[derive(Debug, Default)]
pub(super) struct RateLimiter {
    admitted: HashMap<IpAddr, VecDeque<Instant>>,
}

impl RateLimiter {
    /// Admits a request from `ip` at `now`, or says in how many whole seconds (at least 1) a
    /// slot frees up.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let times = self.admitted.entry(ip).or_default();
        while times
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= RATE_WINDOW)
        {
            times.pop_front();
        }
        if let (true, Some(&oldest)) = (times.len() >= RATE_LIMIT, times.front()) {
            let wait = (oldest + RATE_WINDOW).saturating_duration_since(now);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sixty_per_rolling_minute_per_ip() {
        let mut limiter = RateLimiter::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let t0 = Instant::now();
        for i in 0..RATE_LIMIT {
            let at = t0 + Duration::from_millis(500 * i as u64);
            assert_eq!(limiter.admit(a, at), Ok(()), "request {i}");
        }
        let at = t0 + Duration::from_millis(30_000);
        // The first slot frees at t0 + 60 s: 30 s later.
        assert_eq!(limiter.admit(a, at), Err(30));
        assert_eq!(limiter.admit(b, at), Ok(()), "limits are per IP");
        assert_eq!(limiter.admit(a, t0 + RATE_WINDOW), Ok(()), "rolling window");
        let just_after = t0 + RATE_WINDOW + Duration::from_millis(1);
        assert_eq!(
            limiter.admit(a, just_after),
            Err(1),
            "rounded up, at least 1"
        );
    }
}
