//! One upstream's token over the shared cache: the lifecycle of PRODUCT.md §3.1 and §3.3.
//!
//! - Hot path ([`TokenSource::token`]): a moka lookup and a clock read; no lock, no await,
//!   no allocation. A token inside its refresh window also starts (at most) one background
//!   refresh; the request carries on with the live token.
//! - Every token request, whatever triggers it (cold miss, refresh ahead, 401), runs under one
//!   per-upstream async mutex: that is the single flight, and the one place where the rate
//!   limit (`min_refresh_interval`) and the backoff are enforced.
//! - A 401 drops the token only if the cache still holds that very token
//!   (compare-and-invalidate through moka's entry API), so a burst of 401s costs one request.
//! - Failures back off exponentially; while backing off, a request with no live token fails
//!   fast instead of queueing.
//!
//! Tokens are keyed by upstream *and* credential fingerprint: a rotated secret, token URL or
//! scope makes a new key, so a token never outlives the credentials that obtained it.

use std::hash::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use moka::ops::compute::Op;
use tokio::time::Instant;

use super::cache::{fingerprint, TokenCache, TokenKey};
use super::flow::{self, Endpoint};
use super::response::Grant;
use super::status::{self, LastFetch, TokenState, TokenStatus};
use super::{schedule, InvalidResponse, Token, TokenError};
use crate::client::HttpClient;
use crate::config::{AuthConfig, Flow};
use crate::headers::bearer;
use crate::metrics::{FetchOutcome, UpstreamMetrics};
use crate::secret::Secret;

/// What to do after the upstream rejected a token.
#[derive(Debug)]
pub enum Reauth {
    /// Replay the request with this token.
    Replay(Arc<Token>),
    /// Pass the rejection to the application: the token is too young to be replaced
    /// (`min_refresh_interval`) or the flow has no way to get another.
    PassThrough,
}

/// The credentials in force; swapped whole when they change.
struct Credentials {
    flow: Flow,
    key: TokenKey,
    /// The `static` flow's token, made once.
    fixed: Option<Arc<Token>>,
}

/// Serialised by the fetch mutex.
#[derive(Default)]
struct FetchState {
    last_request: Option<Instant>,
    /// With the fingerprint of the credentials that earned it.
    refresh_token: Option<(u64, Secret)>,
}

#[derive(Default)]
struct Health {
    failures: u32,
    backoff: Option<Backoff>,
    last: Option<Last>,
}

/// The most recent token request, kept for `/status` and readiness.
struct Last {
    at: SystemTime,
    fingerprint: u64,
    /// `None` on success.
    error: Option<TokenError>,
}

/// What to do with the held refresh token after a successful token request.
enum NextRefresh {
    /// A new one came: use it next time.
    Replace(Secret),
    /// The refresh worked and brought no new one (NexusHub): the old one still serves.
    Keep,
    /// A sign-in brought none: drop whatever is held.
    Clear,
}

/// What made a token request happen; named in the token event logs.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// A request found no live token.
    Demand,
    /// The live token entered its refresh window.
    RefreshAhead,
    /// The upstream rejected the token.
    Rejected,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Demand => "no live token",
            Trigger::RefreshAhead => "refresh ahead of expiry",
            Trigger::Rejected => "token rejected upstream",
        }
    }
}

struct Backoff {
    until: Instant,
    error: TokenError,
    fingerprint: u64,
}

/// Timing rules from `[upstream.auth]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Policy {
    refresh_before: Option<Duration>,
    min_refresh_interval: Duration,
    token_lifetime: Duration,
    timeout: Duration,
}

/// One upstream's token: where it comes from and what state it is in.
pub struct TokenSource {
    cache: TokenCache,
    client: HttpClient,
    metrics: UpstreamMetrics,
    policy: Policy,
    /// Fixed for the life of this source: a reload that changes them builds a new source.
    credentials: Credentials,
    fetch: tokio::sync::Mutex<FetchState>,
    health: Mutex<Health>,
    refreshing: AtomicBool,
    /// Background refreshes are not started before this many ms after `epoch` (backoff and
    /// rate limit, read without taking a lock).
    next_refresh_ms: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("upstream", &self.credentials.key.upstream)
            .field("flow", &self.credentials.flow.kind())
            .finish()
    }
}

impl TokenSource {
    /// A source for upstream `name`. Fails only when a `static` token cannot be a header.
    pub fn new(
        name: &str,
        auth: &AuthConfig,
        cache: TokenCache,
        client: HttpClient,
        metrics: UpstreamMetrics,
    ) -> Result<TokenSource, TokenError> {
        let credentials = Credentials::new(name, &auth.flow, &cache.hasher)?;
        Ok(TokenSource {
            cache,
            client,
            metrics,
            policy: Policy::of(auth),
            credentials,
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            health: Mutex::new(Health::default()),
            refreshing: AtomicBool::new(false),
            next_refresh_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Whether `auth` would obtain exactly the tokens this source obtains, under the same
    /// timing rules: a reload may then keep this source, its backoff and its refresh token.
    pub fn serves(&self, auth: &AuthConfig) -> bool {
        let current = &self.credentials;
        self.policy == Policy::of(auth)
            && current.key.fingerprint == fingerprint(&auth.flow, &self.cache.hasher)
    }

    /// This source is being replaced (reload): drop its token from the cache unless
    /// `successor` would use the very same one (only a timing rule changed).
    pub fn retire(&self, successor: Option<&TokenSource>) {
        let key = &self.credentials.key;
        if successor.is_some_and(|s| s.credentials.key == *key) {
            return;
        }
        self.cache.cache.invalidate(key);
    }

    /// Whether a rejected token can be replaced (`static` cannot).
    pub fn renews(&self) -> bool {
        self.credentials.fixed.is_none()
    }

    /// Whether requests get a token at all (`flow = "none"` does not).
    pub fn authenticates(&self) -> bool {
        !matches!(self.credentials.flow, Flow::None)
    }

    /// The token to send now; `None` for `flow = "none"`. Waits for the token endpoint only
    /// when no live token exists.
    pub async fn token(self: &Arc<Self>) -> Result<Option<Arc<Token>>, TokenError> {
        let credentials = &self.credentials;
        if matches!(credentials.flow, Flow::None) {
            return Ok(None);
        }
        if let Some(fixed) = &credentials.fixed {
            return Ok(Some(Arc::clone(fixed)));
        }
        if let Some(token) = self.cache.cache.get(&credentials.key) {
            let now = Instant::now();
            if token.is_live(now) {
                if now >= token.refresh_at {
                    self.refresh_in_background(&token, now);
                }
                return Ok(Some(token));
            }
        }
        self.fetch(None).await.map(Some)
    }

    /// The upstream rejected `used`: drop it if it is still the cached token and say what to
    /// replay with. 100 concurrent rejections of one token make one token request.
    pub async fn reauthorize(self: &Arc<Self>, used: &Arc<Token>) -> Result<Reauth, TokenError> {
        if !self.reject(used) {
            // Too young to replace: replay only if someone already has a newer token.
            let credentials = &self.credentials;
            return Ok(match self.cache.cache.get(&credentials.key) {
                Some(t) if !Arc::ptr_eq(&t, used) && t.is_live(Instant::now()) => Reauth::Replay(t),
                _ => Reauth::PassThrough,
            });
        }
        self.fetch(Some(used)).await.map(Reauth::Replay)
    }

    /// Drops `used` from the cache if it is still the current token and old enough to be
    /// replaced (`min_refresh_interval`). Returns whether a new token may be requested.
    pub fn reject(&self, used: &Arc<Token>) -> bool {
        let credentials = &self.credentials;
        if credentials.fixed.is_some() {
            return false;
        }
        if used.obtained_at.elapsed() < self.policy.min_refresh_interval {
            return false;
        }
        self.cache
            .cache
            .entry(credentials.key.clone())
            .and_compute_with(|entry| match entry {
                Some(e) if Arc::ptr_eq(e.value(), used) => Op::Remove,
                _ => Op::Nop,
            });
        true
    }

    /// The slow path: one token request at a time, after re-checking what the previous one
    /// brought. `rejected` is a token the upstream refused, which must not be handed out again.
    async fn fetch(&self, rejected: Option<&Arc<Token>>) -> Result<Arc<Token>, TokenError> {
        // A newer live token serves even while backing off (a replay after a failed refresh).
        if let Some(token) = self.live_except(rejected) {
            return Ok(token);
        }
        self.fail_fast(self.credentials.key.fingerprint)?;
        let mut state = self.fetch.lock().await;
        let credentials = &self.credentials;
        if let Some(token) = self.live_except(rejected) {
            return Ok(token);
        }
        // The request we queued behind may have failed: do not repeat it at once.
        self.fail_fast(credentials.key.fingerprint)?;
        if let Some(last) = state.last_request {
            tokio::time::sleep_until(last + self.policy.min_refresh_interval).await;
        }
        let trigger = match rejected {
            Some(_) => Trigger::Rejected,
            None => Trigger::Demand,
        };
        self.request(credentials, &mut state, trigger).await
    }

    /// The cached live token, unless it is `rejected`.
    fn live_except(&self, rejected: Option<&Arc<Token>>) -> Option<Arc<Token>> {
        let token = self.cache.cache.get(&self.credentials.key)?;
        let refused = rejected.is_some_and(|r| Arc::ptr_eq(r, &token));
        (token.is_live(Instant::now()) && !refused).then_some(token)
    }

    fn refresh_in_background(self: &Arc<Self>, seen: &Arc<Token>, now: Instant) {
        if self.millis(now) < self.next_refresh_ms.load(Ordering::Relaxed) {
            return;
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        let seen = Arc::clone(seen);
        tokio::spawn(async move {
            // Cleared however the task ends (even cancelled at runtime shutdown), or
            // refresh ahead would stay off for good.
            let _clear = ClearOnDrop(&this.refreshing);
            this.refresh_ahead(&seen).await;
        });
    }

    async fn refresh_ahead(&self, seen: &Arc<Token>) {
        let mut state = self.fetch.lock().await;
        let credentials = &self.credentials;
        let now = Instant::now();
        if let Some(token) = self.cache.cache.get(&credentials.key) {
            if !Arc::ptr_eq(&token, seen) && token.is_live(now) && token.refresh_at > now {
                return; // someone refreshed while we waited for the lock
            }
        }
        if let Some(until) = self.backoff_until(credentials.key.fingerprint) {
            self.defer_refresh(until);
            return;
        }
        if let Some(last) = state.last_request {
            let allowed = last + self.policy.min_refresh_interval;
            if allowed > now {
                self.defer_refresh(allowed);
                return;
            }
        }
        // The outcome is recorded (and logged) by `request`; requests keep the live token.
        let _ = self
            .request(credentials, &mut state, Trigger::RefreshAhead)
            .await;
    }

    /// Sends one token request and records what came of it.
    async fn request(
        &self,
        credentials: &Credentials,
        state: &mut FetchState,
        trigger: Trigger,
    ) -> Result<Arc<Token>, TokenError> {
        let Some(endpoint) = Endpoint::of(&credentials.flow) else {
            // Unreachable: `static` answers from `fixed` and `none` never asks.
            return Err(InvalidResponse::UnexpectedStatus(0).into());
        };
        let fingerprint = credentials.key.fingerprint;
        let started = Instant::now();
        state.last_request = Some(started);
        let refresh = state
            .refresh_token
            .as_ref()
            .filter(|(fp, _)| *fp == fingerprint)
            .map(|(_, secret)| secret.clone());
        let result = flow::obtain(
            &self.client,
            endpoint,
            refresh.as_ref(),
            self.policy.timeout,
        )
        .await
        .and_then(|grant| self.make_token(grant, started));
        let upstream = &*credentials.key.upstream;
        self.metrics
            .token_fetch(outcome(&result), started.elapsed());
        match result {
            Ok((token, next)) => {
                match next {
                    NextRefresh::Replace(r) => state.refresh_token = Some((fingerprint, r)),
                    NextRefresh::Keep => {}
                    // A sign-in without a refresh token: any earlier one was refused or is
                    // stale, and must not cost a request at every later refresh.
                    NextRefresh::Clear => state.refresh_token = None,
                }
                self.cache
                    .cache
                    .insert(credentials.key.clone(), Arc::clone(&token));
                {
                    let mut health = self.health();
                    health.failures = 0;
                    health.backoff = None;
                    health.last = Some(Last {
                        at: SystemTime::now(),
                        fingerprint,
                        error: None,
                    });
                }
                self.defer_refresh(token.refresh_at);
                let lifetime = seconds(token.expires_at.saturating_duration_since(started));
                let used_refresh_token = refresh.is_some();
                match trigger {
                    Trigger::RefreshAhead => {
                        tracing::info!(upstream, lifetime, used_refresh_token, "token refreshed")
                    }
                    Trigger::Demand | Trigger::Rejected => tracing::info!(
                        upstream,
                        lifetime,
                        used_refresh_token,
                        trigger = trigger.name(),
                        "token fetched"
                    ),
                }
                Ok(token)
            }
            Err(error) => {
                let mut health = self.health();
                health.failures = health.failures.saturating_add(1);
                let retry_after = match &error {
                    TokenError::Unavailable { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let delay = schedule::backoff(health.failures, retry_after, fastrand::f64());
                let until = Instant::now() + delay;
                health.backoff = Some(Backoff {
                    until,
                    error: error.clone(),
                    fingerprint,
                });
                health.last = Some(Last {
                    at: SystemTime::now(),
                    fingerprint,
                    error: Some(error.clone()),
                });
                let failures = health.failures;
                drop(health);
                self.defer_refresh(until);
                let token_error = error.endpoint_code().map(|c| c.to_string());
                tracing::warn!(upstream, %error, token_error, transient = error.is_transient(), trigger = trigger.name(), "token request failed");
                let retry_at = humantime::format_rfc3339_seconds(SystemTime::now() + delay);
                tracing::info!(upstream, until = %retry_at, retry_in_ms = millis(delay), failures, "backing off");
                Err(error)
            }
        }
    }

    /// A snapshot for `/status` and `/readyz`.
    pub fn status(&self) -> TokenStatus {
        let credentials = &self.credentials;
        let flow = credentials.flow.kind();
        let endpoint = credentials.flow.token_endpoint().map(ToString::to_string);
        match &credentials.flow {
            Flow::None => return TokenStatus::new(flow, None, TokenState::NotUsed),
            Flow::Static(_) => return TokenStatus::new(flow, None, TokenState::Static),
            Flow::ClientCredentials(_) | Flow::Password(_) | Flow::NexusHub(_) => {}
        }
        let now = Instant::now();
        let live = self
            .cache
            .cache
            .get(&credentials.key)
            .filter(|t| t.is_live(now));
        let health = self.health();
        let fingerprint = credentials.key.fingerprint;
        let last = health
            .last
            .as_ref()
            .filter(|l| l.fingerprint == fingerprint);
        let state = match (last.and_then(|l| l.error.as_ref()), &live) {
            (Some(e), _) if !e.is_transient() => TokenState::CredentialError,
            (_, Some(_)) => TokenState::Live,
            (Some(_), None) => TokenState::Failing,
            (None, None) if last.is_some() => TokenState::Expired,
            (None, None) => TokenState::Idle,
        };
        let mut status = TokenStatus::new(flow, endpoint, state);
        status.expires_in_seconds =
            live.map(|t| t.expires_at.saturating_duration_since(now).as_secs());
        status.last_fetch = last.map(|l| LastFetch {
            at: status::unix(l.at),
            outcome: outcome_name(l.error.as_ref()),
            error_code: l
                .error
                .as_ref()
                .and_then(|e| e.endpoint_code())
                .map(|c| c.to_string()),
            error: l.error.as_ref().map(ToString::to_string),
        });
        status.backing_off_seconds = health
            .backoff
            .as_ref()
            .filter(|b| b.fingerprint == fingerprint && b.until > now)
            .map(|b| b.until.saturating_duration_since(now).as_secs().max(1));
        status
    }

    fn make_token(
        &self,
        grant: Grant,
        obtained_at: Instant,
    ) -> Result<(Arc<Token>, NextRefresh), TokenError> {
        let header = bearer(grant.access_token.expose()).ok_or(InvalidResponse::NotHeaderSafe)?;
        let lifetime = grant.lifetime.unwrap_or(self.policy.token_lifetime);
        let plan = schedule::plan(
            obtained_at,
            lifetime,
            self.policy.refresh_before,
            fastrand::f64(),
        );
        if plan.lead_capped && self.policy.refresh_before.is_some() {
            let upstream = &*self.credentials.key.upstream;
            tracing::warn!(
                upstream,
                lifetime = seconds(lifetime),
                "refresh_before is not shorter than half the token lifetime; refreshing at half-life instead"
            );
        }
        let (expires_at, refresh_at) = (plan.expires_at, plan.refresh_at);
        let token = Token {
            header,
            obtained_at,
            expires_at,
            refresh_at,
        };
        let next = match (grant.refresh_token, grant.via_refresh) {
            (Some(r), _) => NextRefresh::Replace(r),
            (None, true) => NextRefresh::Keep,
            (None, false) => NextRefresh::Clear,
        };
        Ok((Arc::new(token), next))
    }

    fn fail_fast(&self, fingerprint: u64) -> Result<(), TokenError> {
        let health = self.health();
        match &health.backoff {
            Some(b) if b.fingerprint == fingerprint && Instant::now() < b.until => {
                Err(TokenError::BackingOff {
                    last: Box::new(b.error.clone()),
                })
            }
            _ => Ok(()),
        }
    }

    fn backoff_until(&self, fingerprint: u64) -> Option<Instant> {
        let health = self.health();
        let b = health.backoff.as_ref()?;
        (b.fingerprint == fingerprint && Instant::now() < b.until).then_some(b.until)
    }

    fn defer_refresh(&self, until: Instant) {
        self.next_refresh_ms
            .store(self.millis(until), Ordering::Relaxed);
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        // A panic while holding this lock cannot leave Health inconsistent in a way that
        // matters more than refusing all tokens would.
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Whole seconds, for log fields.
fn seconds(d: Duration) -> u64 {
    d.as_secs()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn outcome(result: &Result<(Arc<Token>, NextRefresh), TokenError>) -> FetchOutcome {
    match result {
        Ok(_) => FetchOutcome::Success,
        Err(e) => error_outcome(e),
    }
}

fn error_outcome(e: &TokenError) -> FetchOutcome {
    match e {
        TokenError::Rejected { .. } => FetchOutcome::Rejected,
        TokenError::Unavailable { .. } => FetchOutcome::Unavailable,
        TokenError::Invalid(_) | TokenError::Totp(_) => FetchOutcome::Invalid,
        TokenError::Unreachable(_) => FetchOutcome::Unreachable,
        TokenError::Timeout(_) => FetchOutcome::Timeout,
        TokenError::BackingOff { last } => error_outcome(last),
    }
}

fn outcome_name(error: Option<&TokenError>) -> &'static str {
    error.map_or(FetchOutcome::Success, error_outcome).label()
}

impl Policy {
    fn of(auth: &AuthConfig) -> Policy {
        Policy {
            refresh_before: auth.refresh_before,
            min_refresh_interval: auth.min_refresh_interval,
            token_lifetime: auth.token_lifetime,
            timeout: auth.timeout,
        }
    }
}

impl Credentials {
    fn new(name: &str, flow: &Flow, hasher: &RandomState) -> Result<Credentials, TokenError> {
        let fixed = match flow {
            Flow::Static(token) => {
                let header = bearer(token.value.expose()).ok_or(InvalidResponse::NotHeaderSafe)?;
                let now = Instant::now();
                // Far enough never to matter, near enough not to overflow `Instant`.
                let never = now + Duration::from_secs(100 * 365 * 24 * 3600);
                Some(Arc::new(Token {
                    header,
                    obtained_at: now,
                    expires_at: never,
                    refresh_at: never,
                }))
            }
            _ => None,
        };
        Ok(Credentials {
            key: TokenKey {
                upstream: name.into(),
                fingerprint: fingerprint(flow, hasher),
            },
            flow: flow.clone(),
            fixed,
        })
    }
}
