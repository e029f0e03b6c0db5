//! What one entry of the shared cache holds, and its sealed wire form.
//!
//! An entry is a Redis hash with three fields:
//! - `v`: a version, incremented by every write (compare-and-set against lost lock races);
//! - `id`: the token id of the token it holds (see [`Seal::token_id`]), or empty once a
//!   replica saw that token rejected (compare-and-delete clears it);
//! - `seal`: the sealed JSON of [`Entry`]: the token, the refresh token and the fleet's
//!   history of token requests (failures, last sent, backoff).
//!
//! Instants travel as Unix milliseconds: replicas share the wall clock, not a monotonic one.
//! A skew between their clocks shifts when they think a token is due, never whether a token
//! is the one the endpoint issued. Nothing read is allowed to have happened in the reader's
//! future: a writer whose clock runs ahead would otherwise make the fleet hold a token past
//! its expiry, or wait out a rate limit or backoff for as long as its clock is ahead. What
//! was written ahead is moved back to now, keeping the spans the writer meant (a token's
//! lifetime, a backoff's delay). A writer whose clock runs behind makes tokens look older
//! than they are: they are refreshed early, the safe way to be wrong.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::seal::{Seal, Unopenable};
use crate::headers::bearer;
use crate::secret::Secret;
use crate::token::lifecycle::{Backoff, History};
use crate::token::{ErrorCode, Token, TokenError};

/// A stored error message longer than this is cut: it is only ever shown.
const MAX_MESSAGE: usize = 512;

/// An entry as read, opened and checked.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// The token, unless none was stored or it was dropped after a rejection.
    pub token: Option<Arc<Token>>,
    pub refresh_token: Option<Secret>,
    pub history: History,
}

/// The raw fields of an entry, as Redis returns them.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub version: Option<String>,
    pub id: Option<String>,
    pub seal: Option<Vec<u8>>,
}

/// What a write stores: the token id (empty without a token) and the sealed entry.
#[derive(Debug)]
pub(crate) struct Sealed {
    pub id: String,
    pub seal: Vec<u8>,
}

impl Entry {
    /// Opens `fields`: empty if there is no entry. One that does not open (tampered with,
    /// another format) is refused; the caller treats it as empty, and its next write (which
    /// compares versions, not contents) replaces it.
    pub(crate) fn open(fields: Fields, seal: &Seal) -> Result<Entry, Unopenable> {
        let mut entry = Entry::default();
        let Some(sealed) = fields.seal else {
            return Ok(entry);
        };
        let plain = seal.open(&sealed)?;
        let wire = serde_json::from_slice::<Wire>(&plain).map_err(|_| Unopenable)?;
        let clock = Clock::now();
        // The token counts only while the plain `id` still names it: compare-and-delete
        // clears the id, and cannot touch the sealed part.
        entry.token = wire
            .token
            .filter(|t| fields.id.as_deref() == Some(seal.token_id(&t.access_token).as_str()))
            .and_then(|t| t.into_token(&clock));
        entry.refresh_token = wire.refresh_token.map(Secret::new);
        entry.history = History {
            failures: wire.failures,
            last_sent: wire
                .last_sent
                .map(|ms| clock.instant(ms).min(clock.instant)),
            backoff: wire.backoff.map(|b| b.into_backoff(&clock)),
        };
        Ok(entry)
    }

    /// Seals what a write stores.
    pub(crate) fn seal(
        token: Option<&Token>,
        refresh_token: Option<&Secret>,
        history: &History,
        seal: &Seal,
    ) -> Sealed {
        let clock = Clock::now();
        let wire = Wire {
            token: token.map(|t| WireToken {
                access_token: t.expose().to_owned(),
                obtained_at: clock.unix(t.obtained_at),
                expires_at: clock.unix(t.expires_at),
                refresh_at: clock.unix(t.refresh_at),
            }),
            refresh_token: refresh_token.map(|r| r.expose().to_owned()),
            failures: history.failures,
            last_sent: history.last_sent.map(|i| clock.unix(i)),
            backoff: history.backoff.as_ref().map(|b| WireBackoff {
                since: clock.unix(b.since),
                retry_at: clock.unix(b.retry_at),
                transient: b.error.is_transient(),
                code: b.error.endpoint_code().map(|c| c.as_str().to_owned()),
                message: b.error.to_string(),
            }),
        };
        // Serialising plain strings and numbers cannot fail.
        let plain = serde_json::to_vec(&wire).unwrap_or_default();
        Sealed {
            id: token.map(|t| seal.token_id(t.expose())).unwrap_or_default(),
            seal: seal.seal(&plain),
        }
    }
}

/// The sealed JSON. No `Debug`: it holds secrets in the clear.
#[derive(Serialize, Deserialize)]
struct Wire {
    token: Option<WireToken>,
    refresh_token: Option<String>,
    failures: u32,
    last_sent: Option<u64>,
    backoff: Option<WireBackoff>,
}

#[derive(Serialize, Deserialize)]
struct WireToken {
    access_token: String,
    obtained_at: u64,
    expires_at: u64,
    refresh_at: u64,
}

#[derive(Serialize, Deserialize)]
struct WireBackoff {
    since: u64,
    retry_at: u64,
    transient: bool,
    code: Option<String>,
    message: String,
}

impl WireToken {
    fn into_token(self, clock: &Clock) -> Option<Arc<Token>> {
        let ahead = clock.ahead(self.obtained_at);
        Some(Arc::new(Token {
            header: bearer(&self.access_token)?,
            obtained_at: clock.instant(self.obtained_at) - ahead,
            expires_at: clock.instant(self.expires_at) - ahead,
            refresh_at: clock.instant(self.refresh_at) - ahead,
        }))
    }
}

impl WireBackoff {
    fn into_backoff(self, clock: &Clock) -> Backoff {
        let mut message = self.message;
        if message.len() > MAX_MESSAGE {
            let cut = (0..=MAX_MESSAGE)
                .rev()
                .find(|&i| message.is_char_boundary(i))
                .unwrap_or(0);
            message.truncate(cut);
        }
        let ahead = clock.ahead(self.since);
        Backoff {
            since: clock.instant(self.since) - ahead,
            retry_at: clock.instant(self.retry_at) - ahead,
            error: TokenError::Replica {
                message: message.into(),
                transient: self.transient,
                code: self.code.as_deref().and_then(ErrorCode::parse),
            },
        }
    }
}

/// One reading of both clocks, to convert between them.
struct Clock {
    instant: Instant,
    unix: Duration,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    fn unix(&self, at: Instant) -> u64 {
        let ms = if at >= self.instant {
            self.unix + (at - self.instant)
        } else {
            self.unix.saturating_sub(self.instant - at)
        };
        u64::try_from(ms.as_millis()).unwrap_or(u64::MAX)
    }

    /// How far `unix_ms` lies in the future of this clock: how far ahead its writer's clock
    /// ran, at least.
    fn ahead(&self, unix_ms: u64) -> Duration {
        self.instant(unix_ms) - self.instant
    }

    /// An instant before this process's monotonic clock began reads as now: only token ages
    /// are that old, and a younger age errs on the side of not replacing a token too soon.
    fn instant(&self, unix_ms: u64) -> Instant {
        let at = Duration::from_millis(unix_ms);
        if at >= self.unix {
            // Far-future values are clamped so `Instant` cannot overflow.
            let ahead = (at - self.unix).min(Duration::from_secs(100 * 365 * 24 * 3600));
            self.instant + ahead
        } else {
            self.instant
                .checked_sub(self.unix - at)
                .unwrap_or(self.instant)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::token::lifecycle::better;

    fn token(access: &str) -> Token {
        let now = Instant::now();
        Token {
            header: bearer(access).unwrap(),
            obtained_at: now,
            expires_at: now + Duration::from_secs(300),
            refresh_at: now + Duration::from_secs(240),
        }
    }

    fn fields(sealed: Sealed, id: Option<String>) -> Fields {
        Fields {
            version: Some("3".into()),
            id,
            seal: Some(sealed.seal),
        }
    }

    #[test]
    fn an_entry_round_trips_through_its_seal() {
        let seal = Seal::derive(b"creds");
        let failure = TokenError::Unavailable {
            status: 503,
            code: ErrorCode::parse("temporarily_unavailable"),
            retry_after: None,
        };
        let now = Instant::now();
        let history = History {
            failures: 2,
            last_sent: Some(now),
            backoff: Some(Backoff {
                since: now,
                retry_at: now + Duration::from_secs(4),
                error: failure,
            }),
        };
        let written = token("tok-1");
        let sealed = Entry::seal(Some(&written), Some(&Secret::new("r-1")), &history, &seal);
        let id = sealed.id.clone();
        let entry = Entry::open(fields(sealed, Some(id)), &seal).unwrap();
        let read = entry.token.unwrap();
        assert_eq!(read.expose(), "tok-1");
        // Milliseconds on the wire: within one of what was written.
        let close = |a: Instant, b: Instant| a.max(b) - a.min(b) <= Duration::from_millis(2);
        assert!(close(read.expires_at, written.expires_at));
        assert!(close(read.refresh_at, written.refresh_at));
        assert_eq!(entry.refresh_token.unwrap().expose(), "r-1");
        assert_eq!(entry.history.failures, 2);
        let backoff = entry.history.backoff.unwrap();
        assert!(backoff.error.is_transient());
        assert_eq!(
            backoff.error.endpoint_code().unwrap().as_str(),
            "temporarily_unavailable"
        );
        assert!(close(backoff.retry_at, now + Duration::from_secs(4)));
    }

    #[test]
    fn a_cleared_id_drops_the_token_but_keeps_the_rest() {
        let seal = Seal::derive(b"creds");
        let sealed = Entry::seal(
            Some(&token("tok-1")),
            Some(&Secret::new("r-1")),
            &History::default(),
            &seal,
        );
        let entry = Entry::open(fields(sealed, Some(String::new())), &seal).unwrap();
        assert!(entry.token.is_none());
        assert_eq!(entry.refresh_token.unwrap().expose(), "r-1");
    }

    #[test]
    fn what_is_stored_holds_no_secret_in_the_clear() {
        let seal = Seal::derive(b"creds");
        let sealed = Entry::seal(
            Some(&token("tok-secret")),
            Some(&Secret::new("refresh-secret")),
            &History::default(),
            &seal,
        );
        for needle in [&b"tok-secret"[..], b"refresh-secret"] {
            assert!(!sealed.seal.windows(needle.len()).any(|w| w == needle));
            assert!(!sealed
                .id
                .as_bytes()
                .windows(needle.len())
                .any(|w| w == needle));
        }
    }

    #[test]
    fn a_token_read_again_is_not_better_than_the_copy_held() {
        let seal = Seal::derive(b"creds");
        let sealed = Entry::seal(Some(&token("tok-1")), None, &History::default(), &seal);
        let read = || {
            let f = Fields {
                version: Some("1".into()),
                id: Some(sealed.id.clone()),
                seal: Some(sealed.seal.clone()),
            };
            Entry::open(f, &seal).unwrap().token.unwrap()
        };
        // Each read converts the instants anew, nanoseconds apart: about every other read came
        // back "longer-lived" than the copy held of the very same token, and was adopted.
        let held = read();
        for _ in 0..100 {
            assert!(!better(&read(), Some(&held), Instant::now()));
        }
    }

    #[test]
    fn what_a_replica_with_a_fast_clock_wrote_is_moved_back_to_now() {
        const AHEAD: Duration = Duration::from_secs(600);
        let seal = Seal::derive(b"creds");
        let now = Instant::now();
        // A writer whose clock runs ten minutes ahead: every instant it wrote is ten minutes
        // later than it meant.
        let written = Token {
            header: bearer("tok-1").unwrap(),
            obtained_at: now + AHEAD,
            expires_at: now + AHEAD + Duration::from_secs(300),
            refresh_at: now + AHEAD + Duration::from_secs(240),
        };
        let history = History {
            failures: 1,
            last_sent: Some(now + AHEAD),
            backoff: Some(Backoff {
                since: now + AHEAD,
                retry_at: now + AHEAD + Duration::from_secs(4),
                error: TokenError::Unavailable {
                    status: 503,
                    code: None,
                    retry_after: None,
                },
            }),
        };
        let sealed = Entry::seal(Some(&written), None, &history, &seal);
        let id = sealed.id.clone();
        let entry = Entry::open(fields(sealed, Some(id)), &seal).unwrap();
        let read_at = Instant::now();
        let near = |a: Instant, b: Instant| a.max(b) - a.min(b) <= Duration::from_millis(50);

        let token = entry.token.unwrap();
        assert!(token.obtained_at <= read_at, "not obtained in the future");
        assert!(near(token.obtained_at, now));
        assert!(
            near(token.expires_at, now + Duration::from_secs(300)),
            "its lifetime kept"
        );
        assert!(near(token.refresh_at, now + Duration::from_secs(240)));
        let last_sent = entry.history.last_sent.unwrap();
        assert!(
            last_sent <= read_at && near(last_sent, now),
            "not sent in the future"
        );
        let backoff = entry.history.backoff.unwrap();
        assert!(near(backoff.since, now));
        assert!(
            near(backoff.retry_at, now + Duration::from_secs(4)),
            "its delay kept"
        );
    }

    #[test]
    fn an_entry_under_other_credentials_does_not_open() {
        let sealed = Entry::seal(
            Some(&token("tok-1")),
            None,
            &History::default(),
            &Seal::derive(b"a"),
        );
        let id = sealed.id.clone();
        let opened = Entry::open(fields(sealed, Some(id)), &Seal::derive(b"b"));
        assert!(matches!(opened, Err(Unopenable)));
    }
}
