//! What one entry of the shared cache holds, and its sealed wire form.
//!
//! An entry is a Redis hash with three fields:
//! - `v`: a version, incremented by every write (compare-and-set against lost lock races);
//! - `id`: the token id of the token it holds (see [`Seal::token_id`]), or empty once a
//!   replica saw that token rejected (compare-and-delete clears it);
//! - `seal`: the sealed JSON of [`Entry`]: the token, the refresh token and the fleet's
//!   history of token requests (failures, last sent, backoff).
//!
//! Replicas share no clock but Redis's. Instants travel as milliseconds relative to the moment
//! the entry was sealed, and the write stamps the entry with Redis's `TIME` (field `t`); a
//! read gets Redis's `TIME` too, so the reader knows the entry's age by one clock and places
//! every instant on its own monotonic clock. Replicas whose wall clocks disagree, by seconds or
//! by hours, agree on when a token expires and when the fleet may ask again.

use std::sync::Arc;
use std::time::Duration;

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
    /// How long ago the entry was written, by Redis's clock; `None` for an entry without a
    /// stamp (none, or of another format).
    pub age: Option<Duration>,
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
        let clock = Clock::written(fields.age.ok_or(Unopenable)?);
        // The token counts only while the plain `id` still names it: compare-and-delete
        // clears the id, and cannot touch the sealed part.
        entry.token = wire
            .token
            .filter(|t| fields.id.as_deref() == Some(seal.token_id(&t.access_token).as_str()))
            .and_then(|t| t.into_token(&clock));
        entry.refresh_token = wire.refresh_token.map(Secret::new);
        entry.history = History {
            failures: wire.failures,
            last_sent: wire.last_sent.map(|ms| clock.instant(ms)),
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
        let clock = Clock::written(Duration::ZERO);
        let wire = Wire {
            token: token.map(|t| WireToken {
                access_token: t.expose().to_owned(),
                obtained_at: clock.offset(t.obtained_at),
                expires_at: clock.offset(t.expires_at),
                refresh_at: clock.offset(t.refresh_at),
            }),
            refresh_token: refresh_token.map(|r| r.expose().to_owned()),
            failures: history.failures,
            last_sent: history.last_sent.map(|i| clock.offset(i)),
            backoff: history.backoff.as_ref().map(|b| WireBackoff {
                since: clock.offset(b.since),
                retry_at: clock.offset(b.retry_at),
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
    last_sent: Option<i64>,
    backoff: Option<WireBackoff>,
}

#[derive(Serialize, Deserialize)]
struct WireToken {
    access_token: String,
    obtained_at: i64,
    expires_at: i64,
    refresh_at: i64,
}

#[derive(Serialize, Deserialize)]
struct WireBackoff {
    since: i64,
    retry_at: i64,
    transient: bool,
    code: Option<String>,
    message: String,
}

impl WireToken {
    fn into_token(self, clock: &Clock) -> Option<Arc<Token>> {
        Some(Arc::new(Token {
            header: bearer(&self.access_token)?,
            obtained_at: clock.instant(self.obtained_at),
            expires_at: clock.instant(self.expires_at),
            refresh_at: clock.instant(self.refresh_at),
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
        Backoff {
            since: clock.instant(self.since),
            retry_at: clock.instant(self.retry_at),
            error: TokenError::Replica {
                message: message.into(),
                transient: self.transient,
                code: self.code.as_deref().and_then(ErrorCode::parse),
            },
        }
    }
}

/// The moment an entry was sealed, on this process's monotonic clock: what its instants are
/// relative to.
struct Clock {
    sealed: Instant,
}

/// Far-off instants are clamped so `Instant` cannot overflow.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Clock {
    /// For an entry sealed `age` ago.
    fn written(age: Duration) -> Clock {
        let now = Instant::now();
        Clock {
            sealed: now.checked_sub(age).unwrap_or(now),
        }
    }

    /// `at` as milliseconds after the seal (negative: before it).
    fn offset(&self, at: Instant) -> i64 {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        match at.checked_duration_since(self.sealed) {
            Some(after) => ms(after),
            None => -ms(self.sealed - at),
        }
    }

    /// An instant before this process's monotonic clock began reads as the seal: only token
    /// ages are that old, and a younger age errs on the side of not replacing a token too
    /// soon.
    fn instant(&self, offset_ms: i64) -> Instant {
        let span = Duration::from_millis(offset_ms.unsigned_abs()).min(FAR);
        match offset_ms >= 0 {
            true => self.sealed + span,
            false => self.sealed.checked_sub(span).unwrap_or(self.sealed),
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
            age: Some(Duration::ZERO),
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
                age: Some(Duration::ZERO),
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
    fn an_entry_is_read_by_its_age_on_redis_clock_not_by_any_replicas_wall_clock() {
        let seal = Seal::derive(b"creds");
        let now = Instant::now();
        let history = History {
            failures: 1,
            last_sent: Some(now),
            backoff: Some(Backoff {
                since: now,
                retry_at: now + Duration::from_secs(4),
                error: TokenError::Unavailable {
                    status: 503,
                    code: None,
                    retry_after: None,
                },
            }),
        };
        let sealed = Entry::seal(Some(&token("tok-1")), None, &history, &seal);
        let read = |age: Duration| {
            let mut f = fields(
                Sealed {
                    id: sealed.id.clone(),
                    seal: sealed.seal.clone(),
                },
                Some(sealed.id.clone()),
            );
            f.age = Some(age);
            Entry::open(f, &seal).unwrap()
        };
        let near = |a: Instant, b: Instant| a.max(b) - a.min(b) <= Duration::from_millis(50);

        // Read at once: as written.
        let fresh = read(Duration::ZERO);
        assert!(near(
            fresh.token.unwrap().expires_at,
            now + Duration::from_secs(300)
        ));
        // Read when Redis says it was written 60 s ago: everything 60 s earlier, whatever
        // the writer's or the reader's wall clock said.
        let aged = read(Duration::from_secs(60));
        let token = aged.token.unwrap();
        let earlier =
            |d: u64| now.checked_sub(Duration::from_secs(60)).unwrap() + Duration::from_secs(d);
        assert!(near(token.obtained_at, earlier(0)));
        assert!(near(token.expires_at, earlier(300)), "240 s left of 300");
        assert!(near(token.refresh_at, earlier(240)));
        assert!(near(aged.history.last_sent.unwrap(), earlier(0)));
        let backoff = aged.history.backoff.unwrap();
        assert!(near(backoff.retry_at, earlier(4)), "the backoff is over");
        // Without Redis's stamp the entry cannot be placed in time: refused.
        let mut unstamped = fields(sealed, None);
        unstamped.age = None;
        assert!(matches!(Entry::open(unstamped, &seal), Err(Unopenable)));
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
