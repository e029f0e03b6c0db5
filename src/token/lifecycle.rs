//! One upstream's token lifecycle as a state machine (the README's "Tokens" and "The 401 replay"
//! sections describe its rules): which phase it is in, and what a request, a due refresh, a
//! rejected token or a finished token request does to it.
//!
//! Every decision is a pure function of the [`Lifecycle`], the token the store holds and the
//! clock: no I/O, no awaiting, no lock. `source` holds one lock around each call and carries out
//! the [`Step`] it returns (start a token request, wait, use a token, fail). Where the token
//! lives (the moka cache, later a shared one) is not this module's business either: the token
//! comes in as an argument.
//!
//! The phases:
//!
//! ```text
//!            start                 success
//!   Idle ───────────► Fetching ───────────────► Idle
//!    ▲                 │    ▲
//!    │                 │    │ retry_at passed (a request, a due refresh, the keeper)
//!    │   transient     ▼    │
//!    │   failure    BackingOff  (requests without a token wait for retry_at within token_wait)
//!    │                 or
//!    │   credential  Failed     (requests without a token fail at once)
//!    └──── success ────┘
//! ```
//!
//! Whether a token is held is the store's fact, not a phase: `Idle` with a live token is the
//! steady state, `Fetching` with one is a refresh ahead.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{schedule, Token, TokenError};

/// While a live token is held, a failed refresh is retried after at most this share of the
/// token's remaining life, so one failure never retires the token before the next attempt.
const RETRY_SHARE_OF_REMAINING: f64 = 0.25;
/// ...but never sooner than this after the failure, whatever `min_refresh_interval` says: the
/// remaining life shrinks with each attempt, and the attempts must not.
const RETRY_FLOOR: Duration = Duration::from_millis(100);
/// A waiter gives up on a token request in flight this long after that request's own
/// `timeout`s should have ended it: a margin for the token task being scheduled late.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(1);
/// One token request may make this many exchanges, each bounded by `timeout`: the password and
/// NexusHub flows try their refresh token first and sign in again when it is refused.
const EXCHANGES_PER_REQUEST: u32 = 2;

/// What made a token request happen; named in the token event logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A request found no live token.
    Demand,
    /// The live token entered its refresh window.
    RefreshAhead,
    /// The upstream rejected the token.
    Rejected,
    /// `prefetch`: no request has needed it yet.
    Prefetch,
}

impl Trigger {
    /// For logs.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Demand => "no live token",
            Trigger::RefreshAhead => "refresh ahead of expiry",
            Trigger::Rejected => "token rejected upstream",
            Trigger::Prefetch => "prefetch",
        }
    }
}

/// The timing rules of `[upstream.auth]` that decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// At most one token request per this interval (the rate limit); a 401 on a token younger
    /// than this waits for it.
    pub min_refresh_interval: Duration,
    /// How long a request without a live token may wait for a backoff or the rate limit to end.
    pub token_wait: Duration,
    /// One token request's own bound, connect to last byte.
    pub timeout: Duration,
}

/// Where one upstream's token requests stand.
#[derive(Debug, Clone)]
pub enum Phase {
    /// No token request pending and none failing: the held token serves, or none was needed.
    Idle,
    /// The one token request is sent at `at` (the rate limit may defer it) or is in flight.
    /// With a shared cache, another replica may hold the fleet lock until `lock`: its token
    /// request ends by then, or ours is sent when the lock expires.
    Fetching { at: Instant, lock: Option<Instant> },
    /// The last token request failed transiently at `since`; the next goes no sooner than
    /// `retry_at`.
    BackingOff {
        since: Instant,
        retry_at: Instant,
        error: TokenError,
    },
    /// The endpoint refused the credentials at `since`; asked again no sooner than
    /// `retry_at`, and requests without a token fail at once meanwhile.
    Failed {
        since: Instant,
        retry_at: Instant,
        error: TokenError,
    },
}

/// A token request to start: send it at `at`, then report with [`Lifecycle::sent`] and
/// [`Lifecycle::finished`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub at: Instant,
    pub trigger: Trigger,
}

/// What a request that needs a token does next.
#[derive(Debug)]
pub enum Step {
    /// Send this token.
    Use(Arc<Token>),
    /// Start this token request (the phase is now `Fetching`), then decide again.
    Start(Fetch),
    /// Wait until the lifecycle changes or this instant, then decide again.
    Wait(Instant),
    /// Give up with this error.
    Fail(TokenError),
}

/// What a request whose token the upstream rejected does next.
#[derive(Debug)]
pub enum Rejection {
    /// Someone already holds a newer token: replay with it.
    Replay(Arc<Token>),
    /// Pass the rejection to the application (the token is too young to replace in time).
    PassThrough,
    /// The token is too young to replace: wait until this instant, then decide again.
    Wait(Instant),
    /// Drop the rejected token from the store if it is still there, then carry on as a
    /// request without a token ([`Lifecycle::demand`]).
    Renew,
}

/// One upstream's lifecycle state: its phase and the counters the rules need.
#[derive(Debug)]
pub struct Lifecycle {
    rules: Rules,
    phase: Phase,
    /// Consecutive failed token requests: the backoff step.
    failures: u32,
    /// When the last token request was sent; the rate limit counts from here.
    last_sent: Option<Instant>,
    /// When a token request task last ended without finishing (a panic, runtime shutdown).
    abandoned_at: Option<Instant>,
}

impl Lifecycle {
    pub fn new(rules: Rules) -> Lifecycle {
        Lifecycle {
            rules,
            phase: Phase::Idle,
            failures: 0,
            last_sent: None,
            abandoned_at: None,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Takes over `previous`'s history (a reload replaced its source, the credentials stayed):
    /// its backoff, failures and rate limit carry over under this lifecycle's rules. A token
    /// request it has in flight is not ours to wait for; the rate limit spaces our next one.
    pub fn inherit(&mut self, previous: &Lifecycle) {
        self.phase = match &previous.phase {
            Phase::Fetching { .. } => Phase::Idle,
            phase => phase.clone(),
        };
        self.failures = previous.failures;
        self.last_sent = previous.last_sent;
    }

    /// Consecutive failed token requests.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A request that arrived at `arrived` needs a token; `held` is what the store holds, and
    /// `trigger` names a token request it starts. It may wait until `arrived + token_wait`.
    pub fn demand(
        &mut self,
        held: Option<&Arc<Token>>,
        trigger: Trigger,
        arrived: Instant,
        now: Instant,
    ) -> Step {
        if let Some(token) = held.filter(|t| t.is_live(now)) {
            return Step::Use(Arc::clone(token));
        }
        let deadline = arrived + self.rules.token_wait;
        match &self.phase {
            // It waited for a token request whose task died: that task's fate (a panic) may be
            // every retry's, so the request fails now rather than loop through retries until
            // its wait runs out. Requests that come later start a new one.
            Phase::Idle if self.abandoned_at.is_some_and(|at| arrived < at) => {
                Step::Fail(TokenError::Abandoned)
            }
            Phase::Idle => Step::Start(self.start(now, trigger)),
            // Deferred by the rate limit past this request's `token_wait`: no use waiting.
            Phase::Fetching { at, .. } if *at > deadline.max(now) => Step::Fail(self.not_in_time()),
            // Sent (or about to be): awaited to its own end even past `token_wait`, since its
            // waiters are bounded by its `timeout` and its answer is the best one to give.
            Phase::Fetching { at, lock } => {
                let ends_by = self.ends_by((*at).max(lock.unwrap_or(*at)));
                match now < ends_by {
                    true => Step::Wait(ends_by),
                    false => Step::Fail(self.not_in_time()),
                }
            }
            Phase::BackingOff { retry_at, .. } | Phase::Failed { retry_at, .. }
                if now >= *retry_at =>
            {
                Step::Start(self.start(now, trigger))
            }
            // The next request goes at the end of the backoff, or of the rate limit if later.
            Phase::BackingOff { retry_at, .. } if self.earliest_send(*retry_at) <= deadline => {
                Step::Wait(*retry_at)
            }
            // A request that saw the failure happen gets it as it is; later ones learn that
            // it is being backed off from.
            Phase::BackingOff { since, error, .. } | Phase::Failed { since, error, .. }
                if *since >= arrived =>
            {
                Step::Fail(error.clone())
            }
            Phase::BackingOff { error, .. } | Phase::Failed { error, .. } => {
                Step::Fail(TokenError::BackingOff {
                    last: Box::new(error.clone()),
                })
            }
        }
    }

    /// A request found `held` live but inside its refresh window: start a background refresh,
    /// unless one is running or the last one's backoff has not ended.
    pub fn refresh_due(&mut self, held: &Token, now: Instant) -> Option<Fetch> {
        if now < held.refresh_at || !held.is_live(now) {
            return None;
        }
        match &self.phase {
            Phase::Idle => Some(self.start(now, Trigger::RefreshAhead)),
            Phase::BackingOff { retry_at, .. } | Phase::Failed { retry_at, .. }
                if now >= *retry_at =>
            {
                Some(self.start(now, Trigger::RefreshAhead))
            }
            Phase::Fetching { .. } | Phase::BackingOff { .. } | Phase::Failed { .. } => None,
        }
    }

    /// The upstream rejected `used`; `held` is what the store holds now. The request arrived
    /// (at the sidecar, or at this rejection) at `arrived`.
    pub fn rejected(
        &self,
        used: &Arc<Token>,
        held: Option<&Arc<Token>>,
        arrived: Instant,
        now: Instant,
    ) -> Rejection {
        if let Some(newer) = held.filter(|t| !Arc::ptr_eq(t, used) && t.is_live(now)) {
            return Rejection::Replay(Arc::clone(newer));
        }
        // However many requests see the rejection, the token is replaced at most once per
        // interval: an upstream that rejects every token costs one token request per interval.
        let replaceable_at = used.obtained_at + self.rules.min_refresh_interval;
        if now >= replaceable_at {
            Rejection::Renew
        } else if replaceable_at <= arrived + self.rules.token_wait {
            Rejection::Wait(replaceable_at)
        } else {
            Rejection::PassThrough
        }
    }

    /// What the keeper (`prefetch`) does: start a token request when one is needed now, or
    /// sleep until the next instant something may be due (or the lifecycle changes).
    pub fn keep(&mut self, held: Option<&Arc<Token>>, now: Instant) -> Result<Fetch, Instant> {
        if let Phase::Fetching { at, lock } = &self.phase {
            // Its end changes the phase, which wakes the keeper; the instant is only a backstop.
            let ends_by = self.ends_by((*at).max(lock.unwrap_or(*at)));
            return Err(ends_by.max(now + RETRY_FLOOR));
        }
        if let Some(token) = held.filter(|t| t.is_live(now)) {
            return match self.refresh_due(token, now) {
                Some(fetch) => Ok(fetch),
                None => Err(match &self.phase {
                    Phase::BackingOff { retry_at, .. } | Phase::Failed { retry_at, .. } => {
                        (*retry_at).max(token.refresh_at).min(token.expires_at)
                    }
                    Phase::Idle | Phase::Fetching { .. } => token.refresh_at,
                }),
            };
        }
        match &self.phase {
            Phase::BackingOff { retry_at, .. } | Phase::Failed { retry_at, .. }
                if now < *retry_at =>
            {
                Err(*retry_at)
            }
            Phase::Idle
            | Phase::Fetching { .. }
            | Phase::BackingOff { .. }
            | Phase::Failed { .. } => Ok(self.start(now, Trigger::Prefetch)),
        }
    }

    /// The token request started by a [`Fetch`] is being sent now.
    pub fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        if let Phase::Fetching { at, lock } = &mut self.phase {
            // Ours is in flight: no other replica's lock bounds the wait any more.
            *at = now;
            *lock = None;
        }
    }

    /// The token request ended. On failure `held` is the token still in the store: while it
    /// is live, the next attempt comes before it retires. `jitter` is uniform in `[0, 1)`.
    pub fn finished(
        &mut self,
        result: Result<(), &TokenError>,
        held: Option<&Token>,
        now: Instant,
        jitter: f64,
    ) {
        let error = match result {
            Ok(()) => {
                self.failures = 0;
                self.phase = Phase::Idle;
                return;
            }
            Err(error) => error,
        };
        self.failures = self.failures.saturating_add(1);
        let retry_after = match error {
            TokenError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        };
        let mut delay = schedule::backoff(self.failures, retry_after, jitter);
        let live = held.filter(|t| t.is_live(now));
        if let (Some(token), true) = (live, error.is_transient()) {
            let remaining = token.expires_at.saturating_duration_since(now);
            let cap = remaining
                .mul_f64(RETRY_SHARE_OF_REMAINING)
                .max(self.rules.min_refresh_interval)
                .max(RETRY_FLOOR);
            delay = delay.min(cap);
        }
        let retry_at = now + delay;
        let error = error.clone();
        self.phase = match error.is_transient() {
            true => Phase::BackingOff {
                since: now,
                retry_at,
                error,
            },
            false => Phase::Failed {
                since: now,
                retry_at,
                error,
            },
        };
    }

    /// The token request task ended without finishing at `now` (runtime shutdown, a panic):
    /// requests that were waiting for it fail, and the next request may start another.
    pub fn abandoned(&mut self, now: Instant) {
        if let Phase::Fetching { .. } = self.phase {
            self.phase = Phase::Idle;
            self.abandoned_at = Some(now);
        }
    }

    /// Moves to `Fetching`, sent as soon as the rate limit allows.
    fn start(&mut self, now: Instant, trigger: Trigger) -> Fetch {
        let fetch = Fetch {
            at: self.earliest_send(now),
            trigger,
        };
        self.phase = Phase::Fetching {
            at: fetch.at,
            lock: None,
        };
        fetch
    }

    /// By when a token request sent at `at` has ended, whatever it met.
    fn ends_by(&self, at: Instant) -> Instant {
        at + self.request_bound()
    }

    /// The longest one token request takes, whatever it meets: the fleet lock its sender
    /// holds (`[shared_cache]`) lives this long and the Redis operations around it.
    pub fn request_bound(&self) -> Duration {
        self.rules.timeout * EXCHANGES_PER_REQUEST + IN_FLIGHT_GRACE
    }

    /// When a token request could be sent at the earliest, `not_before` and the rate limit
    /// allowing.
    fn earliest_send(&self, not_before: Instant) -> Instant {
        self.last_sent.map_or(not_before, |last| {
            not_before.max(last + self.rules.min_refresh_interval)
        })
    }

    fn not_in_time(&self) -> TokenError {
        TokenError::NotInTime {
            token_wait: self.rules.token_wait,
        }
    }
}

mod fleet;

pub use fleet::{better, Backoff, History, LockWait, Verdict};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests;
