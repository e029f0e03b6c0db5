//! What an upstream's token is doing, for `/readyz`, `/status` and the expiry gauge.
//!
//! A snapshot assembled on demand by [`TokenSource::status`](super::TokenSource::status); it
//! never holds a token or a secret, only states, times and sanitised error codes.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::FlowKind;

/// The state of one upstream's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// `flow = "none"`: no token is ever needed.
    NotUsed,
    /// `flow = "static"`: the configured token.
    Static,
    /// No request has needed a token yet.
    Idle,
    /// A live token is held.
    Live,
    /// The last token expired unused; the next request fetches one.
    Expired,
    /// The first token is being obtained.
    Fetching,
    /// A token request is replacing one that expired or was rejected (a token was held).
    Renewing,
    /// The last token request failed transiently and no live token is held.
    Failing,
    /// The token endpoint refused the current credentials (whether or not a live token remains).
    CredentialError,
}

impl TokenState {
    /// Ready means: a request now would get a token at once, or within a moment from a token
    /// endpoint that is answering. Without `prefetch`, an upstream that has not had a token yet
    /// is ready too: its first request fetches it. A revoked or expired token being replaced
    /// does not make a pod unready: that would pull it out of service on every revocation.
    pub fn is_ready(self, prefetch: bool) -> bool {
        match self {
            TokenState::NotUsed
            | TokenState::Static
            | TokenState::Live
            | TokenState::Expired
            | TokenState::Renewing => true,
            TokenState::Idle | TokenState::Fetching => !prefetch,
            TokenState::Failing | TokenState::CredentialError => false,
        }
    }
}

/// The most recent token request.
#[derive(Debug, Clone, Serialize)]
pub struct LastFetch {
    /// Unix seconds.
    pub at: u64,
    /// `success`, or the failure's kind (`rejected`, `unavailable`, `invalid`, `unreachable`,
    /// `timeout`).
    pub outcome: &'static str,
    /// The token endpoint's `error` code, when it gave one.
    pub error_code: Option<String>,
    /// What went wrong, in words (never endpoint-supplied text).
    pub error: Option<String>,
}

/// One upstream's token, as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenStatus {
    pub flow: &'static str,
    /// The token URL (or NexusHub's auth URL); none for `static` and `none`.
    pub token_endpoint: Option<String>,
    pub state: TokenState,
    /// Whether the token is obtained at start-up and kept fresh without traffic.
    pub prefetch: bool,
    /// Whether the token is shared with other replicas through `[shared_cache]`.
    pub shared: bool,
    /// What `/readyz` makes of `state`.
    pub ready: bool,
    /// Seconds until the live token stops being used.
    pub expires_in_seconds: Option<u64>,
    pub last_fetch: Option<LastFetch>,
    /// Seconds until the next token request is allowed, while backing off.
    pub backing_off_seconds: Option<u64>,
}

impl TokenStatus {
    pub(super) fn new(
        flow: FlowKind,
        token_endpoint: Option<String>,
        state: TokenState,
        prefetch: bool,
    ) -> Self {
        TokenStatus {
            flow: flow.name(),
            token_endpoint,
            state,
            prefetch,
            shared: false,
            ready: state.is_ready(prefetch),
            expires_in_seconds: None,
            last_fetch: None,
            backing_off_seconds: None,
        }
    }
}

/// Unix seconds of `at`.
pub(super) fn unix(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_by_state() {
        for prefetch in [true, false] {
            assert!(TokenState::Live.is_ready(prefetch));
            assert!(TokenState::Static.is_ready(prefetch));
            assert!(!TokenState::Failing.is_ready(prefetch));
            assert!(!TokenState::CredentialError.is_ready(prefetch));
        }
        // Without a token yet: ready only when the first request is to fetch it.
        for state in [TokenState::Idle, TokenState::Fetching] {
            assert!(state.is_ready(false), "{state:?}");
            assert!(!state.is_ready(true), "{state:?}");
        }
        // Between two tokens of an endpoint that answers: ready either way.
        for state in [TokenState::Expired, TokenState::Renewing] {
            assert!(state.is_ready(false) && state.is_ready(true), "{state:?}");
        }
    }
}
