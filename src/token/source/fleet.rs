//! A source's token requests when replicas share their tokens (`[shared_cache]`).
//!
//! A token request that is due here first reads the fleet's entry: a better token is adopted,
//! the fleet's backoff and rate limit are obeyed. Only when a token request is needed does the
//! replica take the fleet lock (owner value, expiry), send it, and publish the result for
//! everyone (compare-and-set, then the lock is released and the write announced). Replicas
//! that find the lock taken wait for the announcement, or for the lock to expire, never
//! polling. Whenever Redis fails, the request goes to the endpoint for this replica alone, as
//! without a shared cache: Redis is never the reason a token is missing.
//!
//! Which token the fleet holds, and whether a replica saw it rejected, is compared by token id
//! (an HMAC under a key derived from the credentials): compare-and-delete runs in Redis
//! without the token ever being there in the clear.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::TokenSource;
use crate::metrics::SharedEvent;
use crate::token::lifecycle::{better, LockWait, Verdict};
use crate::token::shared::{
    self, Acquired, Entry, Fields, Keys, Seal, SharedCache, SharedCacheError, ENTRY_TTL,
};
use crate::token::Token;

/// One source's place in the shared cache.
pub(super) struct Fleet {
    cache: Arc<SharedCache>,
    seal: Seal,
    keys: Keys,
    /// The token this replica last saw rejected: never adopted again, and dropped from the
    /// fleet's entry if it is still there.
    rejected: Mutex<Option<Arc<Token>>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("entry", &self.keys.name)
            .finish()
    }
}

/// How a due token request stands after consulting the fleet.
pub(super) enum Through {
    /// A token or the fleet's backoff was adopted: no token request.
    Settled,
    /// This replica holds the fleet lock: send the token request and publish its outcome.
    Claimed(Claim),
    /// Redis failed: send the token request for this replica alone.
    Alone,
}

/// The fleet lock, held.
pub(super) struct Claim {
    owner: String,
    /// The entry's version when the lock was taken: the publish compares against it.
    version: Option<String>,
    /// The entry's token when the lock was taken: a failed token request stores it back
    /// as it was, never the token this replica happens to hold (which may be one another
    /// replica saw rejected and dropped).
    token: Option<Arc<Token>>,
}

impl Fleet {
    /// A place for the credentials given as `credentials` bytes.
    pub(super) fn new(cache: &Arc<SharedCache>, credentials: &[u8]) -> Fleet {
        let seal = Seal::derive(credentials);
        Fleet {
            keys: cache.keys(&seal),
            cache: Arc::clone(cache),
            seal,
            rejected: Mutex::new(None),
        }
    }

    /// Whether this place is in `shared` (a reload may have replaced the shared cache).
    pub(super) fn uses(&self, shared: &Arc<SharedCache>) -> bool {
        Arc::ptr_eq(&self.cache, shared)
    }

    /// The upstream rejected `token`: the next token request drops it from the fleet's entry.
    pub(super) fn rejected(&self, token: &Arc<Token>) {
        *self.rejected.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(token));
    }

    fn rejected_token(&self) -> Option<Arc<Token>> {
        self.rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The fleet's entry as it stands.
    async fn read(&self) -> Result<Entry, SharedCacheError> {
        let keys = self.keys.clone();
        let fields = self
            .cache
            .run(|mut conn| async move { shared::read(&mut conn, &keys).await })
            .await?;
        Ok(self.open(fields))
    }

    fn open(&self, fields: Fields) -> Entry {
        Entry::open(fields, &self.seal).unwrap_or_else(|_| {
            self.cache.metrics().error("unopenable");
            Entry::default()
        })
    }
}

impl TokenSource {
    /// Consults the fleet before a token request: adopts what it has, or takes the lock.
    /// `bound` is the longest a token request takes: the lock lives that long, and as long
    /// again as the two Redis operations around the request (taking the lock, publishing),
    /// so that it cannot expire under a holder that is still at work.
    pub(super) async fn through_fleet(&self, fleet: &Fleet, bound: Duration) -> Through {
        let metrics = &self.metrics;
        let life = bound + fleet.cache.timeout() * 2;
        let mut waiting = LockWait::new(Instant::now(), life);
        // Subscribed before the first read, so no announcement falls between read and wait.
        let mut news = fleet.cache.watch(&fleet.keys.name);
        loop {
            // Requests waiting here count the token request's time from each step of the
            // protocol, so a slow or hung Redis (each step bounded by its `timeout`) delays
            // them but does not fail them before this replica falls back to its own request.
            self.state().lifecycle.awaiting_fleet(Instant::now(), None);
            let entry = match fleet.read().await {
                Ok(entry) => entry,
                Err(e) => return self.alone(&e),
            };
            match self.consult(fleet, &entry) {
                Verdict::Adopt(_) | Verdict::BackOff | Verdict::Moot => return Through::Settled,
                Verdict::Defer(at) => {
                    tokio::time::sleep_until(at).await;
                    continue;
                }
                Verdict::Fetch => {}
            }
            let owner = format!("{:032x}", fastrand::u128(..));
            let rejected = fleet
                .rejected_token()
                .map(|t| fleet.seal.token_id(t.expose()));
            let (keys, lock_owner) = (fleet.keys.clone(), owner.clone());
            let acquired = fleet
                .cache
                .run(|mut conn| async move {
                    shared::acquire(&mut conn, &keys, &lock_owner, life, rejected.as_deref()).await
                })
                .await;
            let (held, fields) = match acquired {
                Err(e) => return self.alone(&e),
                Ok(Acquired::Ours(fields)) => {
                    let version = fields.version.clone();
                    let entry = fleet.open(fields);
                    match self.consult(fleet, &entry) {
                        Verdict::Fetch => {
                            metrics.shared(SharedEvent::Miss);
                            let token = entry.token;
                            return Through::Claimed(Claim {
                                owner,
                                version,
                                token,
                            });
                        }
                        // Someone finished just before we took the lock.
                        verdict => {
                            self.release(fleet, &owner).await;
                            match verdict {
                                Verdict::Defer(at) => tokio::time::sleep_until(at).await,
                                _ => return Through::Settled,
                            }
                            continue;
                        }
                    }
                }
                Ok(Acquired::Theirs(held, fields)) => (held, fields),
            };
            if let Verdict::Adopt(_) | Verdict::BackOff | Verdict::Moot =
                self.consult(fleet, &fleet.open(fields))
            {
                return Through::Settled;
            }
            let now = Instant::now();
            // Their announcement, or their lock's expiry (a holder that died), whichever first.
            let Some(wake) = waiting.held(&held.owner, held.remaining, now) else {
                metrics.shared(SharedEvent::LockTimeout);
                return self.alone(&SharedCacheError::Timeout(life));
            };
            metrics.shared(SharedEvent::LockWait);
            // By the lock's expiry the holder has published, or this replica sends a token
            // request of its own: requests wait for that one's end at most.
            let expires = now + held.remaining;
            self.state().lifecycle.awaiting_fleet(now, Some(expires));
            tokio::select! {
                changed = news.changed() => if changed.is_err() { return Through::Alone },
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Stores this replica's outcome for the fleet (the token it `obtained`, or the entry's
    /// as it was; its refresh token and history), releases the lock and announces the write.
    pub(super) async fn publish(&self, fleet: &Fleet, claim: Claim, obtained: bool) {
        let sealed = {
            let state = self.state();
            let token = match obtained {
                true => self.store.get(),
                false => claim.token.clone(),
            };
            let refresh = self.store.refresh_token(false);
            Entry::seal(
                token.as_deref(),
                refresh.as_ref(),
                &state.lifecycle.history(),
                &fleet.seal,
            )
        };
        let (keys, channel) = (fleet.keys.clone(), fleet.cache.channel().to_owned());
        let written = fleet
            .cache
            .run(|mut conn| async move {
                let expected = claim.version.as_deref();
                shared::publish(
                    &mut conn,
                    &keys,
                    &claim.owner,
                    expected,
                    &sealed,
                    ENTRY_TTL,
                    &channel,
                )
                .await
            })
            .await;
        // Written, or perhaps written (sent, its answer lost; or not sent at all, as Redis
        // rests: erring towards a sign-in): other replicas may present it now.
        if !matches!(written, Ok(false)) {
            self.store.refresh_token_published();
        }
        if let Ok(false) = written {
            // Our lock expired and someone else wrote meanwhile: theirs stands.
            tracing::debug!(
                upstream = &*self.store.key.upstream,
                "shared token not stored: the entry changed meanwhile"
            );
        }
    }

    /// Adopts a token another replica announced, if it is better than the one held.
    pub(super) async fn pick_up(&self, fleet: &Fleet) {
        let Ok(entry) = fleet.read().await else {
            return;
        };
        let Some(token) = self.usable(fleet, &entry) else {
            return;
        };
        let mut state = self.state();
        let held = self.store.get();
        if !better(&token, held.as_deref(), Instant::now()) {
            return;
        }
        self.store.adopt(token, entry.refresh_token);
        state.lifecycle.adopted();
        drop(state);
        tracing::info!(
            upstream = &*self.store.key.upstream,
            "token taken from the shared cache (another replica obtained it)"
        );
        self.metrics.shared(SharedEvent::Hit);
        self.changes.send_replace(());
    }

    /// Reads the fleet's entry into the lifecycle's decision, and carries out an adoption.
    fn consult(&self, fleet: &Fleet, entry: &Entry) -> Verdict {
        let shared = self.usable(fleet, entry);
        let mut state = self.state();
        let held = self.store.get();
        let now = Instant::now();
        let verdict =
            state
                .lifecycle
                .consult(shared.as_ref(), &entry.history, held.as_deref(), now);
        match &verdict {
            Verdict::Adopt(token) => {
                self.store
                    .adopt(Arc::clone(token), entry.refresh_token.clone());
                state.last = Some((SystemTime::now(), None));
            }
            Verdict::BackOff => {
                let error = entry.history.backoff.as_ref().map(|b| b.error.clone());
                state.last = Some((SystemTime::now(), error));
            }
            // About to send for the fleet: with the fleet's refresh token, which may have
            // rotated since this replica last held one.
            Verdict::Fetch if entry.refresh_token.is_some() => {
                self.store.set_refresh_token(entry.refresh_token.clone());
            }
            Verdict::Fetch | Verdict::Defer(_) | Verdict::Moot => {}
        }
        drop(state);
        let upstream = &*self.store.key.upstream;
        match &verdict {
            Verdict::Adopt(_) => tracing::info!(
                upstream,
                "token taken from the shared cache instead of a token request"
            ),
            Verdict::BackOff => tracing::info!(
                upstream,
                "the fleet is backing off from a failed token request; so does this replica"
            ),
            Verdict::Fetch | Verdict::Defer(_) | Verdict::Moot => {}
        }
        if let Verdict::Adopt(_) | Verdict::BackOff = verdict {
            self.metrics.shared(SharedEvent::Hit);
            self.changes.send_replace(());
        }
        verdict
    }

    /// The entry's token, unless this replica saw it rejected, or it is no newer than one that
    /// was: a revocation takes every token issued before it, so an older token in the entry
    /// (one stored before an outage of Redis, say, while this replica used its own) is taken
    /// to be revoked too, and replaced rather than replayed with.
    fn usable(&self, fleet: &Fleet, entry: &Entry) -> Option<Arc<Token>> {
        let rejected = fleet.rejected_token();
        entry.token.clone().filter(|t| {
            rejected
                .as_ref()
                .is_none_or(|r| r.expose() != t.expose() && t.obtained_at > r.obtained_at)
        })
    }

    async fn release(&self, fleet: &Fleet, owner: &str) {
        let (keys, owner) = (fleet.keys.clone(), owner.to_owned());
        let _ = fleet
            .cache
            .run(|mut conn| async move { shared::release(&mut conn, &keys, &owner).await })
            .await;
    }

    fn alone(&self, error: &SharedCacheError) -> Through {
        self.metrics.shared(SharedEvent::Fallback);
        tracing::debug!(upstream = &*self.store.key.upstream, error = %error, "token request without the shared cache");
        Through::Alone
    }
}

/// With a shared source, wakes on every announcement of its entry and picks up the new token,
/// so that a replica that did not ask has it before a request needs it. Holds only a weak
/// reference between announcements.
pub(super) fn listen(source: &Arc<TokenSource>) {
    let Some(fleet) = &source.fleet else { return };
    let mut news = fleet.cache.watch(&fleet.keys.name);
    // Closed when the source is dropped: the listener must not outlive it waiting for news
    // that, for retired credentials, never comes.
    let mut gone = source.changes.subscribe();
    let weak: Weak<TokenSource> = Arc::downgrade(source);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = news.changed() => if changed.is_err() { return },
                changed = gone.changed() => if changed.is_err() { return } else { continue },
            }
            let Some(this) = weak.upgrade() else { return };
            if this.state().retired {
                return;
            }
            if let Some(fleet) = &this.fleet {
                this.pick_up(fleet).await;
            }
        }
    });
}
