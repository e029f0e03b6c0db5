//! One upstream's token: carries out what the [`Lifecycle`] decides (the rules of the README's
//! "Tokens" and "The 401 replay" sections).
//!
//! - Hot path ([`TokenSource::token`]): a cache lookup and a clock read; no lock, no await.
//!   A token inside its refresh window also asks the lifecycle whether to start a refresh.
//! - Every token request runs in a task of its own, one at a time per upstream (the lifecycle's
//!   `Fetching` phase is the single flight). Requests never send token requests themselves:
//!   they wait for the lifecycle to change, within their `token_wait`, so a request that goes
//!   away cancels nothing, and a waiting request holds nothing but its own future.
//! - With `prefetch`, a keeper task obtains the first token at start-up and keeps it fresh
//!   without traffic; it holds only a weak reference, and ends with the source.
//!
//! The store is the shared moka [`TokenCache`], keyed by upstream *and* credential fingerprint:
//! a rotated secret, token URL or scope makes a new key (and a new source), so a token never
//! outlives the credentials that obtained it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::cache::{credentials, fingerprint, TokenCache, TokenKey};
use super::flow::{self, Endpoint};
use super::lifecycle::{Fetch, Lifecycle, Phase, Rejection, Rules, Step, Trigger};
use super::response::{Grant, Lifetime};
use super::status::{self, LastFetch, TokenState, TokenStatus};
use super::{schedule, InvalidResponse, Token, TokenError};
use crate::client::HttpClient;
use crate::config::{AuthConfig, Flow};
use crate::headers::bearer;
use crate::metrics::{FetchOutcome, UpstreamMetrics};
use crate::secret::Secret;

mod fleet;

use fleet::{Fleet, Through};

/// A token whose `expires_in` is unusable (zero, negative, not a number) and carries no JWT
/// `exp` is used for at most this long: short enough that a token that really was dead is
/// soon replaced, long enough not to hammer the endpoint.
const UNUSABLE_EXPIRES_IN_LIFETIME: Duration = Duration::from_secs(60);

/// What to do after the upstream rejected a token.
#[derive(Debug)]
pub enum Reauth {
    /// Replay the request with this token.
    Replay(Arc<Token>),
    /// Pass the rejection to the application: the token is too young to be replaced within
    /// `token_wait` (`min_refresh_interval`), or the flow has no way to get another.
    PassThrough,
}

/// Settings of `[upstream.auth]` beyond the lifecycle's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Policy {
    rules: Rules,
    refresh_before: Option<Duration>,
    token_lifetime: Duration,
    prefetch: bool,
}

/// Where the token and the refresh token are kept. Written only under the state lock.
struct Store {
    cache: TokenCache,
    key: TokenKey,
    refresh_token: Mutex<RefreshToken>,
}

/// The refresh token, and whether other replicas may hold it too: it came from the shared
/// cache or went to it. A replica that sends a token request alone (Redis failed) never
/// presents such a one: with rotating refresh tokens, every replica would present the same
/// one, and all but the first a superseded one. It signs in instead.
#[derive(Clone, Default)]
struct RefreshToken {
    secret: Option<Secret>,
    shared: bool,
}

/// Everything behind the state lock: the lifecycle and what `/status` reports of it.
struct State {
    lifecycle: Lifecycle,
    /// The most recent token request: when it ended and, if it failed, why.
    last: Option<(SystemTime, Option<TokenError>)>,
    /// The keeper runs (or ran): [`TokenSource::start`] starts one at most.
    started: bool,
    /// A reload replaced this source: the keeper stops.
    retired: bool,
}

/// One upstream's token: where it comes from and what state it is in.
pub struct TokenSource {
    flow: Flow,
    /// The `static` flow's token, made once.
    fixed: Option<Arc<Token>>,
    policy: Policy,
    client: HttpClient,
    metrics: UpstreamMetrics,
    store: Store,
    /// `[shared_cache]` with `shared = true`: where this source meets the other replicas.
    fleet: Option<Fleet>,
    state: Mutex<State>,
    /// Bumped after every change of the state or the store; waiting requests and the keeper
    /// watch it.
    changes: watch::Sender<()>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("upstream", &self.store.key.upstream)
            .field("flow", &self.flow.kind())
            .finish()
    }
}

impl TokenSource {
    /// A source for upstream `name`. Fails only when a `static` token cannot be a header.
    /// Nothing runs until [`TokenSource::start`] (prefetch) or the first request.
    pub fn new(
        name: &str,
        auth: &AuthConfig,
        cache: TokenCache,
        client: HttpClient,
        metrics: UpstreamMetrics,
    ) -> Result<TokenSource, TokenError> {
        let policy = Policy::of(auth);
        let fleet = match (&cache.shared, Endpoint::of(&auth.flow)) {
            (Some(shared), Some(_)) if auth.shared => {
                Some(Fleet::new(shared, &credentials(&auth.flow)))
            }
            _ => None,
        };
        let key = TokenKey {
            upstream: name.into(),
            fingerprint: fingerprint(&auth.flow, &cache.hasher),
        };
        Ok(TokenSource {
            fixed: fixed_token(&auth.flow)?,
            flow: auth.flow.clone(),
            policy,
            client,
            metrics,
            store: Store {
                cache,
                key,
                refresh_token: Mutex::new(RefreshToken::default()),
            },
            fleet,
            state: Mutex::new(State {
                lifecycle: Lifecycle::new(policy.rules),
                last: None,
                started: false,
                retired: false,
            }),
            changes: watch::Sender::new(()),
        })
    }

    /// Starts the `prefetch` keeper, if this source has one: it obtains a token now and keeps
    /// one fresh without traffic. A shared source also starts listening for the tokens other
    /// replicas obtain.
    pub fn start(self: &Arc<Self>) {
        if std::mem::replace(&mut self.state().started, true) {
            return;
        }
        fleet::listen(self);
        if !self.policy.prefetch || Endpoint::of(&self.flow).is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        let mut changes = self.changes.subscribe();
        tokio::spawn(async move {
            loop {
                // Only a weak reference between turns: the keeper never keeps a source alive.
                let Some(this) = weak.upgrade() else { return };
                let next = {
                    let mut state = this.state();
                    if state.retired {
                        return;
                    }
                    let held = this.store.get();
                    state.lifecycle.keep(held.as_ref(), Instant::now())
                };
                let wake = match next {
                    Ok(fetch) => {
                        this.spawn_fetch(fetch);
                        continue;
                    }
                    Err(wake) => wake,
                };
                drop(this);
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep_until(wake) => {}
                }
            }
        });
    }

    /// Whether `auth` would obtain exactly the tokens this source obtains, under the same
    /// timing rules: a reload may then keep this source, its backoff and its refresh token.
    pub fn serves(&self, auth: &AuthConfig, cache: &TokenCache) -> bool {
        let same_fleet = match (&self.fleet, &cache.shared) {
            (Some(fleet), Some(shared)) => auth.shared && fleet.uses(shared),
            (None, shared) => !(auth.shared && shared.is_some()),
            (Some(_), None) => false,
        };
        same_fleet
            && self.policy == Policy::of(auth)
            && self.store.key.fingerprint == fingerprint(&auth.flow, &self.store.cache.hasher)
    }

    /// Takes over `previous`'s backoff, rate limit, last outcome and refresh token when both
    /// obtain the very same tokens (a reload changed a timing rule or the client): a reload
    /// must neither hurry a failing endpoint nor sign in again. Call before [`start`].
    ///
    /// [`start`]: TokenSource::start
    pub fn inherit(&self, previous: &TokenSource) {
        if previous.store.key != self.store.key {
            return;
        }
        let refresh = previous
            .store
            .refresh_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        *self
            .store
            .refresh_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = refresh;
        let theirs = previous.state();
        let mut ours = self.state();
        ours.lifecycle.inherit(&theirs.lifecycle);
        ours.last.clone_from(&theirs.last);
    }

    /// This source is being replaced (reload): stop its keeper, and drop its token from the
    /// cache unless `successor` would use the very same one (only a timing rule changed).
    pub fn retire(&self, successor: Option<&TokenSource>) {
        self.state().retired = true;
        self.changes.send_replace(());
        let key = &self.store.key;
        if successor.is_some_and(|s| s.store.key == *key) {
            return;
        }
        self.store.cache.cache.invalidate(key);
    }

    /// Whether a rejected token can be replaced (`static` cannot).
    pub fn renews(&self) -> bool {
        self.fixed.is_none()
    }

    /// Whether requests get a token at all (`flow = "none"` does not).
    pub fn authenticates(&self) -> bool {
        !matches!(self.flow, Flow::None)
    }

    /// The token to send now; `None` for `flow = "none"`. Waits only when no live token exists,
    /// and then no longer than `token_wait` allows.
    pub async fn token(self: &Arc<Self>) -> Result<Option<Arc<Token>>, TokenError> {
        if matches!(self.flow, Flow::None) {
            return Ok(None);
        }
        if let Some(fixed) = &self.fixed {
            return Ok(Some(Arc::clone(fixed)));
        }
        if let Some(token) = self.store.get() {
            let now = Instant::now();
            if token.is_live(now) {
                if now >= token.refresh_at {
                    self.refresh_ahead(now);
                }
                return Ok(Some(token));
            }
        }
        let arrived = Instant::now();
        loop {
            let mut changes = self.changes.subscribe();
            let step = {
                let mut state = self.state();
                let held = self.store.get();
                state
                    .lifecycle
                    .demand(held.as_ref(), Trigger::Demand, arrived, Instant::now())
            };
            if let Some(answer) = self.carry_out(step, &mut changes).await {
                return answer.map(Some);
            }
        }
    }

    /// The upstream rejected `used`: say what to replay with. The token is dropped only if the
    /// store still holds that very token, so 100 concurrent rejections make one token request;
    /// a token younger than `min_refresh_interval` is waited out within `token_wait`.
    pub async fn reauthorize(self: &Arc<Self>, used: &Arc<Token>) -> Result<Reauth, TokenError> {
        if self.fixed.is_some() {
            return Ok(Reauth::PassThrough);
        }
        let arrived = Instant::now();
        loop {
            let mut changes = self.changes.subscribe();
            let step = {
                let mut state = self.state();
                let held = self.store.get();
                let now = Instant::now();
                match state.lifecycle.rejected(used, held.as_ref(), arrived, now) {
                    Rejection::Replay(token) => return Ok(Reauth::Replay(token)),
                    Rejection::PassThrough => return Ok(Reauth::PassThrough),
                    Rejection::Wait(until) => Step::Wait(until),
                    Rejection::Renew => {
                        self.forget(used);
                        self.changes.send_replace(());
                        state
                            .lifecycle
                            .demand(None, Trigger::Rejected, arrived, now)
                    }
                }
            };
            if let Some(answer) = self.carry_out(step, &mut changes).await {
                return answer.map(Reauth::Replay);
            }
        }
    }

    /// The upstream rejected `used` and the request cannot be replayed: drop the token if it
    /// is still the current one and old enough to be replaced.
    pub fn reject(&self, used: &Arc<Token>) {
        if self.fixed.is_some() {
            return;
        }
        let state = self.state();
        let held = self.store.get();
        let now = Instant::now();
        if let Rejection::Renew = state.lifecycle.rejected(used, held.as_ref(), now, now) {
            self.forget(used);
            drop(state);
            self.changes.send_replace(());
        }
    }

    /// Drops a token the upstream rejected: here if it is still the held one, and, through the
    /// next token request, from the fleet's entry if it is still there.
    fn forget(&self, used: &Arc<Token>) {
        self.store.remove_if(used);
        if let Some(fleet) = &self.fleet {
            fleet.rejected(used);
        }
    }

    /// Carries out a step: the answer when it is one, else `None` once the token request is
    /// started or the wait is over.
    async fn carry_out(
        self: &Arc<Self>,
        step: Step,
        changes: &mut watch::Receiver<()>,
    ) -> Option<Result<Arc<Token>, TokenError>> {
        match step {
            Step::Use(token) => Some(Ok(token)),
            Step::Fail(error) => Some(Err(error)),
            Step::Start(fetch) => {
                self.spawn_fetch(fetch);
                None
            }
            Step::Wait(until) => {
                tokio::select! {
                    _ = changes.changed() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
                None
            }
        }
    }

    /// The live token is due for refresh: start one unless one is running or backing off.
    fn refresh_ahead(self: &Arc<Self>, now: Instant) {
        let fetch = {
            let mut state = self.state();
            // Read again under the lock: a refresh that just ended may have replaced it.
            let held = self.store.get();
            held.and_then(|token| state.lifecycle.refresh_due(&token, now))
        };
        if let Some(fetch) = fetch {
            self.spawn_fetch(fetch);
        }
    }

    fn spawn_fetch(self: &Arc<Self>, fetch: Fetch) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // Should the task end early (runtime shutdown, a panic), the lifecycle must not
            // stay `Fetching` for good.
            let mut guard = Abandoned(Some(&this));
            if this.fetch(fetch).await {
                guard.0 = None;
            }
        });
    }

    /// Sends one token request when the rate limit allows, and records what came of it.
    /// Returns whether it did (`static` and `none` have no endpoint and never start one).
    async fn fetch(&self, fetch: Fetch) -> bool {
        let Some(endpoint) = Endpoint::of(&self.flow) else {
            return false;
        };
        tokio::time::sleep_until(fetch.at).await;
        let claim = match &self.fleet {
            Some(fleet) => {
                let bound = self.state().lifecycle.request_bound();
                match self.through_fleet(fleet, bound).await {
                    Through::Settled => return true,
                    Through::Claimed(claim) => Some((fleet, claim)),
                    Through::Alone => None,
                }
            }
            None => None,
        };
        let started = Instant::now();
        self.state().lifecycle.sent(started);
        let alone = self.fleet.is_some() && claim.is_none();
        let refresh = self.store.refresh_token(alone);
        let result = flow::obtain(
            &self.client,
            endpoint,
            refresh.as_ref(),
            self.policy.rules.timeout,
        )
        .await
        .and_then(|grant| self.make_token(grant, started));
        self.metrics
            .token_fetch(outcome(&result), started.elapsed());
        let obtained = result.is_ok();
        self.record(fetch.trigger, started, refresh.is_some(), result);
        if let Some((fleet, claim)) = claim {
            self.publish(fleet, claim, obtained).await;
        }
        true
    }

    /// Records what a token request came to: the token in the store, the lifecycle's next
    /// phase, the event in the log; then wakes everyone waiting.
    fn record(
        &self,
        trigger: Trigger,
        started: Instant,
        used_refresh_token: bool,
        result: Result<(Arc<Token>, NextRefresh), TokenError>,
    ) {
        let upstream = &*self.store.key.upstream;
        let mut state = self.state();
        let now = Instant::now();
        match result {
            Ok((token, next)) => {
                self.store.put(Arc::clone(&token), next);
                state.lifecycle.finished(Ok(()), None, now, fastrand::f64());
                state.last = Some((SystemTime::now(), None));
                drop(state);
                let lifetime = token
                    .expires_at
                    .saturating_duration_since(started)
                    .as_secs();
                match trigger {
                    Trigger::RefreshAhead => {
                        tracing::info!(upstream, lifetime, used_refresh_token, "token refreshed")
                    }
                    Trigger::Demand | Trigger::Rejected | Trigger::Prefetch => {
                        tracing::info!(
                            upstream,
                            lifetime,
                            used_refresh_token,
                            trigger = trigger.name(),
                            "token fetched"
                        )
                    }
                }
            }
            Err(error) => {
                let held = self.store.get();
                state
                    .lifecycle
                    .finished(Err(&error), held.as_deref(), now, fastrand::f64());
                state.last = Some((SystemTime::now(), Some(error.clone())));
                let retry_in = match state.lifecycle.phase() {
                    Phase::BackingOff { retry_at, .. } | Phase::Failed { retry_at, .. } => {
                        retry_at.saturating_duration_since(now)
                    }
                    Phase::Idle | Phase::Fetching { .. } => Duration::ZERO,
                };
                let failures = state.lifecycle.failures();
                drop(state);
                let token_error = error.endpoint_code().map(|c| c.to_string());
                let live_token = held.is_some_and(|t| t.is_live(now));
                tracing::warn!(upstream, error = %crate::error::chain(&error), token_error, transient = error.is_transient(), trigger = trigger.name(), live_token, "token request failed");
                let retry_at = humantime::format_rfc3339_seconds(SystemTime::now() + retry_in);
                let retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX);
                tracing::info!(upstream, until = %retry_at, retry_in_ms, failures, "backing off");
            }
        }
        self.changes.send_replace(());
    }

    /// A snapshot for `/status` and `/readyz`.
    pub fn status(&self) -> TokenStatus {
        let kind = self.flow.kind();
        let endpoint = self.flow.token_endpoint().map(ToString::to_string);
        match &self.flow {
            Flow::None => return TokenStatus::new(kind, None, TokenState::NotUsed, false),
            Flow::Static(_) => return TokenStatus::new(kind, None, TokenState::Static, false),
            Flow::ClientCredentials(_) | Flow::Password(_) | Flow::NexusHub(_) => {}
        }
        let now = Instant::now();
        let state = self.state();
        let live = self.store.get().filter(|t| t.is_live(now));
        let failed_last = state.last.as_ref().is_some_and(|(_, e)| e.is_some());
        let token_state = match (state.lifecycle.phase(), &live) {
            (Phase::Failed { .. }, _) => TokenState::CredentialError,
            (_, Some(_)) => TokenState::Live,
            (Phase::BackingOff { .. }, None) => TokenState::Failing,
            (Phase::Fetching { .. }, None) if failed_last => TokenState::Failing,
            (Phase::Fetching { .. }, None) if state.last.is_some() => TokenState::Renewing,
            (Phase::Fetching { .. }, None) => TokenState::Fetching,
            (Phase::Idle, None) if state.last.is_some() => TokenState::Expired,
            (Phase::Idle, None) => TokenState::Idle,
        };
        let mut status = TokenStatus::new(kind, endpoint, token_state, self.policy.prefetch);
        status.shared = self.fleet.is_some();
        status.expires_in_seconds =
            live.map(|t| t.expires_at.saturating_duration_since(now).as_secs());
        status.last_fetch = state.last.as_ref().map(|(at, error)| LastFetch {
            at: status::unix(*at),
            outcome: outcome_name(error.as_ref()),
            error_code: error
                .as_ref()
                .and_then(|e| e.endpoint_code())
                .map(|c| c.to_string()),
            error: error.as_ref().map(ToString::to_string),
        });
        status.backing_off_seconds = match state.lifecycle.phase() {
            Phase::BackingOff { retry_at, .. } | Phase::Failed { retry_at, .. }
                if *retry_at > now =>
            {
                Some(retry_at.saturating_duration_since(now).as_secs().max(1))
            }
            _ => None,
        };
        status
    }

    fn make_token(
        &self,
        grant: Grant,
        obtained_at: Instant,
    ) -> Result<(Arc<Token>, NextRefresh), TokenError> {
        let header = bearer(grant.access_token.expose()).ok_or(InvalidResponse::NotHeaderSafe)?;
        let upstream = &*self.store.key.upstream;
        let lifetime = match grant.lifetime {
            Lifetime::Given(lifetime) => lifetime,
            Lifetime::Unstated => self.policy.token_lifetime,
            Lifetime::Unusable => {
                let lifetime = UNUSABLE_EXPIRES_IN_LIFETIME.min(self.policy.token_lifetime);
                tracing::warn!(
                    upstream,
                    lifetime = lifetime.as_secs(),
                    "the token response's expires_in is not a positive number and the token has no JWT exp; using it briefly"
                );
                lifetime
            }
        };
        let plan = schedule::plan(
            obtained_at,
            lifetime,
            self.policy.refresh_before,
            fastrand::f64(),
        );
        if plan.lead_capped && self.policy.refresh_before.is_some() {
            tracing::warn!(
                upstream,
                lifetime = lifetime.as_secs(),
                "refresh_before is not shorter than half the token lifetime; refreshing at half-life instead"
            );
        }
        if plan.expires_at <= Instant::now() {
            // Dead on arrival (a lifetime shorter than the trip, or its safety margin): taking
            // it would make every waiter start another token request at once, with no backoff.
            return Err(InvalidResponse::AlreadyExpired.into());
        }
        let token = Token {
            header,
            obtained_at,
            expires_at: plan.expires_at,
            refresh_at: plan.refresh_at,
        };
        let next = match (grant.refresh_token, grant.via_refresh) {
            (Some(r), _) => NextRefresh::Replace(r),
            (None, true) => NextRefresh::Keep,
            (None, false) => NextRefresh::Clear,
        };
        Ok((Arc::new(token), next))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every write under this lock leaves the state whole, so a panic elsewhere while it
        // was held is no reason to refuse all tokens.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Puts the lifecycle back to `Idle` if a token request task ends without finishing.
struct Abandoned<'a>(Option<&'a TokenSource>);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(source) = self.0 {
            let upstream = &*source.store.key.upstream;
            tracing::warn!(upstream, "token request abandoned: its task ended early");
            source.state().lifecycle.abandoned(Instant::now());
            source.changes.send_replace(());
        }
    }
}

/// What to do with the held refresh token after a successful token request.
enum NextRefresh {
    /// A new one came: use it next time.
    Replace(Secret),
    /// The refresh worked and brought no new one (NexusHub): the old one still serves.
    Keep,
    /// A sign-in brought none: any earlier one was refused or is stale, and must not cost a
    /// request at every later refresh.
    Clear,
}

impl Store {
    fn get(&self) -> Option<Arc<Token>> {
        self.cache.cache.get(&self.key)
    }

    /// Stores what this replica's own token request brought.
    fn put(&self, token: Arc<Token>, next: NextRefresh) {
        self.cache.cache.insert(self.key.clone(), token);
        let mut held = self.refresh();
        match next {
            NextRefresh::Replace(r) => {
                *held = RefreshToken {
                    secret: Some(r),
                    shared: false,
                }
            }
            NextRefresh::Keep => {}
            NextRefresh::Clear => *held = RefreshToken::default(),
        }
    }

    /// Stores what another replica's token request brought (through the shared cache).
    fn adopt(&self, token: Arc<Token>, refresh_token: Option<Secret>) {
        self.cache.cache.insert(self.key.clone(), token);
        self.set_refresh_token(refresh_token);
    }

    /// Removes `used` if it is still the stored token (compare-and-invalidate).
    fn remove_if(&self, used: &Arc<Token>) {
        self.cache
            .cache
            .entry(self.key.clone())
            .and_compute_with(|entry| match entry {
                Some(e) if Arc::ptr_eq(e.value(), used) => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
    }

    /// Takes the fleet's refresh token, if it has one: it may have rotated since this
    /// replica held one.
    fn set_refresh_token(&self, refresh_token: Option<Secret>) {
        if let Some(secret) = refresh_token {
            *self.refresh() = RefreshToken {
                secret: Some(secret),
                shared: true,
            };
        }
    }

    /// The refresh token was stored in the shared cache: other replicas may present it.
    fn refresh_token_published(&self) {
        self.refresh().shared = true;
    }

    /// The refresh token to present, `alone` or not (see [`RefreshToken`]).
    fn refresh_token(&self, alone: bool) -> Option<Secret> {
        let held = self.refresh();
        match alone && held.shared {
            true => None,
            false => held.secret.clone(),
        }
    }

    fn refresh(&self) -> MutexGuard<'_, RefreshToken> {
        self.refresh_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
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
        // Abandoned is never a finished request's outcome; no answer came, as with a timeout.
        TokenError::Timeout(_) | TokenError::NotInTime { .. } | TokenError::Abandoned => {
            FetchOutcome::Timeout
        }
        TokenError::BackingOff { last } => error_outcome(last),
        TokenError::Replica {
            transient: false, ..
        } => FetchOutcome::Rejected,
        TokenError::Replica { .. } => FetchOutcome::Unavailable,
    }
}

fn outcome_name(error: Option<&TokenError>) -> &'static str {
    error.map_or(FetchOutcome::Success, error_outcome).label()
}

impl Policy {
    fn of(auth: &AuthConfig) -> Policy {
        Policy {
            rules: Rules {
                min_refresh_interval: auth.min_refresh_interval,
                token_wait: auth.token_wait,
                timeout: auth.timeout,
            },
            refresh_before: auth.refresh_before,
            token_lifetime: auth.token_lifetime,
            prefetch: auth.prefetch,
        }
    }
}

/// The `static` flow's token, ready-made; `None` for the other flows.
fn fixed_token(flow: &Flow) -> Result<Option<Arc<Token>>, TokenError> {
    let Flow::Static(token) = flow else {
        return Ok(None);
    };
    let header = bearer(token.value.expose()).ok_or(InvalidResponse::NotHeaderSafe)?;
    let now = Instant::now();
    // Far enough never to matter, near enough not to overflow `Instant`.
    let never = now + Duration::from_secs(100 * 365 * 24 * 3600);
    Ok(Some(Arc::new(Token {
        header,
        obtained_at: now,
        expires_at: never,
        refresh_at: never,
    })))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store {
            cache: TokenCache::default(),
            key: TokenKey {
                upstream: "api".into(),
                fingerprint: 7,
            },
            refresh_token: Mutex::new(RefreshToken::default()),
        }
    }

    fn token() -> Arc<Token> {
        Arc::new(Token::for_test(
            Instant::now(),
            Duration::from_secs(60),
            Duration::from_secs(50),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_removes_only_the_very_token_it_saw() {
        let store = store();
        let (old, new) = (token(), token());
        store.put(Arc::clone(&new), NextRefresh::Keep);
        // A late rejection of an older token leaves the newer one alone...
        store.remove_if(&old);
        assert!(Arc::ptr_eq(&store.get().unwrap(), &new));
        // ...and the rejection of the held one removes it.
        store.remove_if(&new);
        assert!(store.get().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_refresh_token_follows_what_each_grant_says() {
        let store = store();
        store.put(token(), NextRefresh::Replace(Secret::new("r1")));
        store.put(token(), NextRefresh::Keep);
        assert_eq!(store.refresh_token(false).unwrap().expose(), "r1");
        store.put(token(), NextRefresh::Clear);
        assert!(store.refresh_token(false).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_token_other_replicas_may_hold_is_not_presented_alone() {
        let store = store();
        // Obtained by this replica alone: its own to present.
        store.put(token(), NextRefresh::Replace(Secret::new("mine")));
        assert_eq!(store.refresh_token(true).unwrap().expose(), "mine");
        // Once published, or when it came from the fleet, only through the fleet lock.
        store.refresh_token_published();
        assert!(store.refresh_token(true).is_none());
        assert_eq!(store.refresh_token(false).unwrap().expose(), "mine");
        store.put(token(), NextRefresh::Replace(Secret::new("mine again")));
        assert_eq!(store.refresh_token(true).unwrap().expose(), "mine again");
        store.adopt(token(), Some(Secret::new("fleet's")));
        assert!(store.refresh_token(true).is_none());
        assert_eq!(store.refresh_token(false).unwrap().expose(), "fleet's");
        // A refresh that brings none keeps the one presented, and what is known of it.
        store.put(token(), NextRefresh::Keep);
        assert!(store.refresh_token(true).is_none());
    }
}
