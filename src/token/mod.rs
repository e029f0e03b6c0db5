//! Tokens: obtaining them, keeping them fresh, and telling the proxy which one to use.
//!
//! - `cache`: the process's moka [`TokenCache`], its keys and the credential fingerprint.
//! - `shared`: the shared cache (`[shared_cache]`): replicas with the same credentials share
//!   one token through Redis, sealed under a key derived from the credentials.
//! - `lifecycle`: the state machine of one upstream's token — every decision (use, wait,
//!   fetch, retry when, fail with what) as a pure function of its state and the clock.
//! - `source`: one [`TokenSource`] per upstream that carries those decisions out: the store
//!   (the cache), the token request tasks, waiting requests, the `prefetch` keeper.
//! - `flow`: the token requests of each flow (OAuth2 forms, NexusHub JSON).
//! - `response`: lenient, bounded parsing of what token endpoints answer.
//! - `schedule`: the pure arithmetic of expiry, refresh time and backoff.
//! - `status`: the snapshot `/status` and `/readyz` report.
//!
//! This module knows nothing about the request being proxied; it hands out [`Token`]s.

mod cache;
mod flow;
mod lifecycle;
mod response;
mod schedule;
mod shared;
mod source;
mod status;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

pub use cache::TokenCache;
pub use shared::{SharedCache, SharedCacheError, SharedState};
pub use source::{Reauth, TokenSource};
pub use status::{LastFetch, TokenState, TokenStatus};

/// The token-response parser and the JWT `exp` reader, for the property tests and fuzz
/// targets (`tests/properties.rs`, `fuzz/`). Not an API: the sidecar calls them itself.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::response::{jwt_exp, parse, Grant, Lifetime, MAX_TOKEN_RESPONSE};
}

/// An access token as the proxy uses it: the ready-made header and when it stops being good.
pub struct Token {
    /// `Bearer <token>`, marked sensitive; cloning it is a reference-count increment.
    header: HeaderValue,
    /// When the request that obtained it was sent (conservative: before the server saw it).
    pub obtained_at: Instant,
    /// Not used from this instant on (a safety margin before the real expiry).
    pub expires_at: Instant,
    /// A background refresh may start from this instant on.
    pub refresh_at: Instant,
}

impl Token {
    /// The `Authorization` value to send.
    pub fn header(&self) -> HeaderValue {
        self.header.clone()
    }

    /// Whether the token may still be sent at `now`.
    pub fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    /// The token string, for `nexus-sidecar token` (and tests). Every caller prints a secret.
    pub fn expose(&self) -> &str {
        let value = self.header.to_str().unwrap_or_default();
        value.strip_prefix("Bearer ").unwrap_or(value)
    }
}

#[cfg(test)]
impl Token {
    /// A token obtained at `obtained_at`, retired after `usable`, due for refresh after
    /// `refresh_after`. Each is another token (`Bearer test-N`), as each token request brings.
    pub(crate) fn for_test(
        obtained_at: Instant,
        usable: Duration,
        refresh_after: Duration,
    ) -> Token {
        static ISSUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = ISSUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Token {
            header: HeaderValue::try_from(format!("Bearer test-{n}"))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer test")),
            obtained_at,
            expires_at: obtained_at + usable,
            refresh_at: obtained_at + refresh_after,
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = Instant::now();
        f.debug_struct("Token")
            .field("token", &crate::secret::MASK)
            .field(
                "expires_in",
                &self.expires_at.saturating_duration_since(now),
            )
            .field(
                "refresh_in",
                &self.refresh_at.saturating_duration_since(now),
            )
            .finish()
    }
}

/// An `error` code from a token endpoint, reduced to characters that are safe to log and to
/// return: a hostile endpoint cannot smuggle text (or a secret) through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorCode(Arc<str>);

impl ErrorCode {
    /// `None` unless `code` looks like an OAuth2 error code (RFC 6749 §5.2: printable ASCII;
    /// we are stricter).
    pub fn parse(code: &str) -> Option<ErrorCode> {
        let ok = !code.is_empty()
            && code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        ok.then(|| ErrorCode(code.into()))
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why no token could be had. Cheap to clone: one failure answers every request waiting on it.
/// Never carries a secret, a token, or text the token endpoint chose (only its sanitised code).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// 4xx (and 501): the endpoint refused the credentials, grant or scope.
    #[error("the token endpoint refused the request (HTTP {status}{})", code_suffix(.code))]
    Rejected {
        status: u16,
        code: Option<ErrorCode>,
    },
    /// 5xx, 429, 408: the endpoint is failing for now.
    #[error("the token endpoint is failing (HTTP {status}{})", code_suffix(.code))]
    Unavailable {
        status: u16,
        code: Option<ErrorCode>,
        retry_after: Option<Duration>,
    },
    /// A success status with a body that is not a usable token.
    #[error("the token endpoint answered with no usable token: {0}")]
    Invalid(#[from] InvalidResponse),
    /// Connecting or talking to the endpoint failed.
    #[error("cannot reach the token endpoint: {0}")]
    Unreachable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The whole token request took longer than `auth.timeout`.
    #[error("the token endpoint did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// An earlier failure is being backed off from, past this request's `token_wait`.
    #[error("not retrying yet after: {last}")]
    BackingOff { last: Box<TokenError> },
    /// The next token request could not be sent within this request's `token_wait` (the
    /// rate limit, `min_refresh_interval`, defers it), or the one in flight never ended.
    #[error("no token could be had within token_wait ({}): a token request is pending", humantime::format_duration(*.token_wait))]
    NotInTime { token_wait: Duration },
    /// The token request stopped without an answer: its task ended early (a panic; the log
    /// says why). The next request starts another.
    #[error("the token request ended without an answer (the sidecar's token task stopped)")]
    Abandoned,
    /// Another replica's token request failed this way; the fleet backs off from it together
    /// (`[shared_cache]`). `message` is that error's text, read back from the sealed entry.
    #[error("{message} (another replica's token request)")]
    Replica {
        message: Arc<str>,
        transient: bool,
        code: Option<ErrorCode>,
    },
    /// The TOTP seed cannot produce codes.
    #[error(transparent)]
    Totp(#[from] crate::totp::InvalidTotpSecret),
}

fn code_suffix(code: &Option<ErrorCode>) -> String {
    code.as_ref().map(|c| format!(", {c}")).unwrap_or_default()
}

/// What was wrong with a 2xx token response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResponse {
    #[error("the body is not JSON (Content-Type {content_type:?})")]
    NotJson { content_type: String },
    #[error("the JSON has no `access_token` string")]
    NoAccessToken,
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("`token_type` is {0:?}, not Bearer")]
    NotBearer(String),
    #[error("the access token contains bytes that cannot go in a header")]
    NotHeaderSafe,
    #[error("the token had already expired when it arrived")]
    AlreadyExpired,
    #[error("the endpoint answered HTTP {0}, which is not a token response")]
    UnexpectedStatus(u16),
}

impl TokenError {
    /// Whether retrying later may help (transport, 5xx, 429), as opposed to a configuration or
    /// credential problem that will fail the same way until someone changes something.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Unavailable { .. }
            | TokenError::Unreachable(_)
            | TokenError::Timeout(_)
            | TokenError::NotInTime { .. }
            | TokenError::Abandoned => true,
            TokenError::Rejected { .. } | TokenError::Invalid(_) | TokenError::Totp(_) => false,
            TokenError::BackingOff { last } => last.is_transient(),
            TokenError::Replica { transient, .. } => *transient,
        }
    }

    /// The token endpoint's own error code, if it gave one.
    pub fn endpoint_code(&self) -> Option<&ErrorCode> {
        match self {
            TokenError::Rejected { code, .. } | TokenError::Unavailable { code, .. } => {
                code.as_ref()
            }
            TokenError::BackingOff { last } => last.endpoint_code(),
            TokenError::Replica { code, .. } => code.as_ref(),
            TokenError::Invalid(_)
            | TokenError::Unreachable(_)
            | TokenError::Timeout(_)
            | TokenError::NotInTime { .. }
            | TokenError::Abandoned
            | TokenError::Totp(_) => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_sanitised() {
        assert_eq!(
            ErrorCode::parse("invalid_client").unwrap().as_str(),
            "invalid_client"
        );
        assert!(ErrorCode::parse("reset token abc123 <b>").is_none());
        assert!(ErrorCode::parse("").is_none());
        assert!(ErrorCode::parse(&"x".repeat(65)).is_none());
    }

    #[test]
    fn classification() {
        let rejected = TokenError::Rejected {
            status: 401,
            code: ErrorCode::parse("invalid_client"),
        };
        assert!(!rejected.is_transient());
        assert_eq!(rejected.endpoint_code().unwrap().as_str(), "invalid_client");
        let backing = TokenError::BackingOff {
            last: Box::new(TokenError::Timeout(Duration::from_secs(1))),
        };
        assert!(backing.is_transient());
        assert!(rejected.to_string().contains("HTTP 401, invalid_client"));
    }

    #[test]
    fn token_debug_hides_the_value() {
        let now = Instant::now();
        let t = Token {
            header: crate::headers::bearer("sekrit-token").unwrap(),
            obtained_at: now,
            expires_at: now + Duration::from_secs(60),
            refresh_at: now,
        };
        assert!(!format!("{t:?}").contains("sekrit"));
        assert_eq!(t.expose(), "sekrit-token");
    }
}
