//! The state a stand-in shares between its knobs (called from tests) and its server task:
//! settings, counters and the watch channels that waiters observe. No HTTP here, and no lock
//! is ever held across an `.await`.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::quantoz::RateLimiter;
use super::tokens::{Lifetimes, Registry};
use super::{Api, Credentials, Failure, Seen};

/// Locks, shrugging off poisoning: a panicking test thread must not take the stand-in down.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `exp` claim of issued JWTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JwtLifetime {
    /// Follow `expires_in`, or one hour when the response carries none.
    FollowExpiresIn,
    /// Set by the knob: that many seconds, or no `exp` claim at all.
    Set(Option<u64>),
}

/// Everything the knobs change.
#[derive(Debug, Clone)]
pub(super) struct Knobs {
    pub credentials: Credentials,
    pub expires_in: Option<u64>,
    pub jwt_lifetime: JwtLifetime,
    pub scopes: Vec<String>,
    pub grant_disabled: bool,
    pub password_reset: bool,
    pub api_always_401: bool,
    /// A refresh spends the presented refresh token (Nexudus, NexusHub).
    pub rotate_refresh: bool,
}

/// The failures injected into token requests: a counted run
/// ([`StandIn::fail_token_requests`](super::StandIn::fail_token_requests)) and a seeded plan
/// ([`StandIn::plan_token_faults`](super::StandIn::plan_token_faults)).
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Remaining count (`usize::MAX`: until cleared) and the failure to inject.
    pub counted: Option<(usize, Failure)>,
    /// What the n-th token request since the plan was set gets; `None` answers normally.
    pub plan: Vec<Option<Failure>>,
    /// How many entries of `plan` token requests have spent (at most `plan.len()`).
    pub planned: usize,
}

impl Faults {
    /// What the next token request gets. Every token request spends the plan's next entry while
    /// the plan lasts, so `plan[n]` always belongs to the n-th one; a pending counted failure
    /// wins over that entry, which is then dropped.
    pub fn take(&mut self) -> Option<Failure> {
        let planned = self.plan.get(self.planned).cloned().flatten();
        self.planned = (self.planned + 1).min(self.plan.len());
        match self.counted.take() {
            Some((left, failure)) => {
                let left = if left == usize::MAX { left } else { left - 1 };
                if left > 0 {
                    self.counted = Some((left, failure.clone()));
                }
                Some(failure)
            }
            None => planned,
        }
    }
}

/// One hour: NexusHub's documented token life, and the default `exp` without `expires_in`.
const DEFAULT_JWT_LIFETIME_SECS: u64 = 3600;

/// How many requests the protected API remembers: enough for any test, and a bound for a
/// demo left running under load.
pub const SEEN_LIMIT: usize = 10_000;

#[derive(Debug)]
pub(super) struct Shared {
    pub api: Api,
    pub knobs: Mutex<Knobs>,
    pub faults: Mutex<Faults>,
    pub tokens: Mutex<Registry>,
    /// The most recent requests, at most [`SEEN_LIMIT`] of them.
    pub seen: Mutex<VecDeque<Seen>>,
    pub by_grant: Mutex<HashMap<String, usize>>,
    pub rate: Mutex<RateLimiter>,
    pub token_requests: watch::Sender<usize>,
    pub api_requests: watch::Sender<usize>,
    pub held: watch::Sender<usize>,
    pub hold: watch::Sender<bool>,
    pub shutdown: watch::Sender<bool>,
}

impl Shared {
    pub fn new(api: Api, credentials: Credentials) -> Self {
        Shared {
            api,
            knobs: Mutex::new(Knobs {
                credentials,
                expires_in: api.default_expires_in(),
                jwt_lifetime: JwtLifetime::FollowExpiresIn,
                scopes: vec!["read".into(), "write".into()],
                grant_disabled: false,
                password_reset: false,
                api_always_401: false,
                rotate_refresh: false,
            }),
            faults: Mutex::new(Faults::default()),
            tokens: Mutex::new(Registry::default()),
            seen: Mutex::new(VecDeque::new()),
            by_grant: Mutex::new(HashMap::new()),
            rate: Mutex::new(RateLimiter::default()),
            token_requests: watch::Sender::new(0),
            api_requests: watch::Sender::new(0),
            held: watch::Sender::new(0),
            hold: watch::Sender::new(false),
            shutdown: watch::Sender::new(false),
        }
    }

    pub fn knobs(&self) -> Knobs {
        lock(&self.knobs).clone()
    }

    /// The lifetimes a token issued now gets: what the response says and what its JWT says.
    pub fn lifetimes(&self) -> Lifetimes {
        let knobs = lock(&self.knobs);
        let expires_in = match self.api {
            Api::NexusHub => None,
            _ => knobs.expires_in,
        };
        let jwt = match knobs.jwt_lifetime {
            JwtLifetime::FollowExpiresIn => Some(expires_in.unwrap_or(DEFAULT_JWT_LIFETIME_SECS)),
            JwtLifetime::Set(secs) => secs,
        };
        Lifetimes { expires_in, jwt }
    }

    /// Issues an access token for `sub` with the current lifetimes; returns it with the
    /// `expires_in` to send (`None`: omit the field).
    pub fn issue(&self, sub: &str) -> (String, Option<u64>) {
        let life = self.lifetimes();
        (lock(&self.tokens).issue(sub, life), life.expires_in)
    }

    /// Issues an access token for `sub` and starts its RFC 6749 §5.1 response: `access_token`,
    /// `token_type` and, unless omitted, `expires_in`.
    pub fn issue_oauth2(&self, sub: &str, token_type: &str) -> serde_json::Value {
        let (token, expires_in) = self.issue(sub);
        let mut body = serde_json::json!({ "access_token": token, "token_type": token_type });
        if let Some(secs) = expires_in {
            body["expires_in"] = secs.into();
        }
        body
    }

    /// Counts one token request, overall and under its grant label.
    pub fn count_token_request(&self, grant: Option<&str>) {
        if let Some(grant) = grant {
            *lock(&self.by_grant).entry(grant.to_string()).or_default() += 1;
        }
        self.token_requests.send_modify(|n| *n += 1);
    }

    /// Consumes what the next token request gets from the injected failures, if anything.
    pub fn take_failure(&self) -> Option<Failure> {
        lock(&self.faults).take()
    }

    /// Resolves when the stand-in shuts down.
    pub async fn shut_down(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|down| *down).await;
    }
}
