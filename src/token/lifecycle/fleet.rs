//! The lifecycle's decisions when replicas share their tokens: what a token request that is
//! due in this replica does with what the fleet already has.
//!
//! The fleet's entry carries a token and a [`History`] (failures, last sent, backoff). A due
//! token request first consults it: a better token is adopted, the fleet's backoff and rate
//! limit are obeyed as if this replica had failed or sent the last request itself, and only
//! then does the replica fetch, under the fleet lock, for everyone. Like the rest of the
//! lifecycle: pure, no I/O; the caller reads and writes Redis.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Lifecycle, Phase};
use crate::token::{Token, TokenError};

/// What the fleet's token requests have come to: stored beside the shared token, so that the
/// rate limit and the backoff hold for the fleet, not per replica.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Consecutive failed token requests.
    pub failures: u32,
    /// When the last token request was sent, by any replica.
    pub last_sent: Option<Instant>,
    /// The last token request failed: no replica asks again before `retry_at`.
    pub backoff: Option<Backoff>,
}

/// A failure the fleet is backing off from.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub since: Instant,
    pub retry_at: Instant,
    pub error: TokenError,
}

/// What a due token request does after consulting the fleet.
#[derive(Debug)]
pub enum Verdict {
    /// The fleet holds a better token: use it, no token request (the phase is `Idle`).
    Adopt(Arc<Token>),
    /// The fleet is backing off: so does this replica, until the fleet's `retry_at`.
    BackOff,
    /// The fleet's rate limit defers the token request to this instant; consult again then.
    Defer(Instant),
    /// A token request is needed now: the caller takes the fleet lock, or, holding it, sends.
    Fetch,
    /// The token request is moot: the held token is live and not due (another replica's
    /// token was picked up meanwhile). The phase is `Idle`.
    Moot,
}

/// A waiter looks again this long after the holder's lock should have expired: Redis expires
/// it by its own clock, a little after the remaining life it reported.
const LOCK_GRACE: Duration = Duration::from_millis(250);
/// Nor sooner than this after it last looked, whatever the lock's remaining life.
const MIN_LOOK: Duration = Duration::from_millis(10);

/// A replica waiting for another's token request: each holder of the fleet lock is given the
/// lock's whole remaining life, counted from when this replica first saw it hold the lock.
/// A holder that dies costs the fleet its lock's life; the replica that takes over is given
/// its own, so the waiters do not all give up together and each send a token request. In all,
/// a replica waits no longer than two lock lives: the holder it found, and one successor.
#[derive(Debug)]
pub struct LockWait {
    /// The holder last seen, and until when it is waited for.
    holder: Option<(String, Instant)>,
    /// When the replica gives up waiting, whoever holds the lock.
    cap: Instant,
}

impl LockWait {
    /// Waiting begins `now`, for locks that live `life`.
    pub fn new(now: Instant, life: Duration) -> LockWait {
        LockWait {
            holder: None,
            cap: now + life * 2,
        }
    }

    /// The lock is held by `owner` for `remaining` more: when to look again (the holder's
    /// announcement may wake the waiter sooner), or `None` when this replica has waited long
    /// enough (this holder has had all its lock's life and still holds it, or the cap passed):
    /// something is wrong, and the replica goes alone.
    pub fn held(&mut self, owner: &str, remaining: Duration, now: Instant) -> Option<Instant> {
        let give_up = match &self.holder {
            Some((seen, give_up)) if seen == owner => *give_up,
            _ => {
                let give_up = (now + remaining + LOCK_GRACE).min(self.cap);
                self.holder = Some((owner.to_owned(), give_up));
                give_up
            }
        };
        (now < give_up).then(|| (now + remaining.max(MIN_LOOK)).min(give_up))
    }
}

impl Lifecycle {
    /// A token request of this replica is due (the phase is `Fetching`). `shared` is the
    /// fleet's token (minus one this replica saw rejected), `history` the fleet's, `held` this
    /// replica's token.
    pub fn consult(
        &mut self,
        shared: Option<&Arc<Token>>,
        history: &History,
        held: Option<&Token>,
        now: Instant,
    ) -> Verdict {
        self.last_sent = self.last_sent.max(history.last_sent);
        // Checked first, and again after every deferral: without it, a replica that picked
        // up the fleet's new token while waiting would go on to refresh it (one extra token
        // request per lifetime per such replica, seen in the fleet benchmark).
        if held.is_some_and(|h| h.is_live(now) && now < h.refresh_at) {
            self.phase = Phase::Idle;
            return Verdict::Moot;
        }
        if let Some(token) = shared.filter(|t| better(t, held, now)) {
            self.failures = 0;
            self.phase = Phase::Idle;
            return Verdict::Adopt(Arc::clone(token));
        }
        // The fleet's count, not ours: a failure here is the fleet's next one.
        self.failures = history.failures;
        if let Some(backoff) = history.backoff.as_ref().filter(|b| now < b.retry_at) {
            let (since, retry_at, error) = (backoff.since, backoff.retry_at, backoff.error.clone());
            self.phase = match error.is_transient() {
                true => Phase::BackingOff {
                    since,
                    retry_at,
                    error,
                },
                false => Phase::Failed {
                    since,
                    retry_at,
                    error,
                },
            };
            return Verdict::BackOff;
        }
        let at = self.earliest_send(now);
        if at > now {
            if let Phase::Fetching { at: pending, .. } = &mut self.phase {
                *pending = at;
            }
            return Verdict::Defer(at);
        }
        Verdict::Fetch
    }

    /// This replica waits for a step of the fleet's protocol (bounded by Redis's timeout), or,
    /// with `lock`, for another replica's token request, whose fleet lock expires then.
    /// Requests waiting here count a token request's time from now, as if our own were just
    /// sent, or from the lock's expiry, when ours would be. The rate limit is untouched:
    /// nothing was sent from here.
    pub fn awaiting_fleet(&mut self, now: Instant, lock: Option<Instant>) {
        if let Phase::Fetching { at, lock: held } = &mut self.phase {
            *at = (*at).max(now);
            *held = lock;
        }
    }

    /// Another replica's token arrived (announced by the fleet) and is better than the held
    /// one: a failure this replica was backing off from is over.
    pub fn adopted(&mut self) {
        if let Phase::BackingOff { .. } | Phase::Failed { .. } = self.phase {
            self.phase = Phase::Idle;
            self.failures = 0;
        }
    }

    /// What to store for the fleet after this replica's token request ended.
    pub fn history(&self) -> History {
        let backoff = match &self.phase {
            Phase::BackingOff {
                since,
                retry_at,
                error,
            }
            | Phase::Failed {
                since,
                retry_at,
                error,
            } => Some(Backoff {
                since: *since,
                retry_at: *retry_at,
                error: error.clone(),
            }),
            Phase::Idle | Phase::Fetching { .. } => None,
        };
        History {
            failures: self.failures,
            last_sent: self.last_sent,
            backoff,
        }
    }
}

/// Whether `shared` should replace `held`: it is live, it is another token, and `held` is gone
/// or retires sooner. The same token is never better than itself: each read of the entry turns
/// its wall-clock instants into monotonic ones anew, so a token read again can come back a few
/// nanoseconds longer-lived than the copy held.
pub fn better(shared: &Token, held: Option<&Token>, now: Instant) -> bool {
    shared.is_live(now)
        && held.is_none_or(|h| {
            h.expose() != shared.expose() && (!h.is_live(now) || shared.expires_at > h.expires_at)
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use super::super::{Fetch, Rules, Step, Trigger};
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn rules() -> Rules {
        Rules {
            min_refresh_interval: S(1),
            token_wait: S(5),
            timeout: S(2),
        }
    }

    fn token(obtained: Instant, lifetime: u64) -> Arc<Token> {
        Arc::new(Token::for_test(obtained, S(lifetime), S(lifetime * 4 / 5)))
    }

    /// A lifecycle whose token request is due now.
    fn fetching(now: Instant) -> Lifecycle {
        let mut lifecycle = Lifecycle::new(rules());
        let step = lifecycle.demand(None, Trigger::Demand, now, now);
        assert!(matches!(step, Step::Start(Fetch { .. })));
        lifecycle
    }

    fn unavailable() -> TokenError {
        TokenError::Unavailable {
            status: 503,
            code: None,
            retry_after: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_looks_again_when_the_lock_expires_and_gives_up_only_on_a_holder_past_it() {
        let now = Instant::now();
        let mut wait = LockWait::new(now, S(3));
        assert_eq!(wait.held("a", S(3), now), Some(now + S(3)));
        // Woken early by an unrelated announcement: the same holder, less remaining.
        tokio::time::advance(S(1)).await;
        let now = Instant::now();
        assert_eq!(wait.held("a", S(2), now), Some(now + S(2)));
        // A lock past its reported life, still held by the same owner: give up.
        tokio::time::advance(S(2) + LOCK_GRACE).await;
        assert_eq!(wait.held("a", S(2), Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_holder_of_the_lock_is_given_its_whole_life() {
        let start = Instant::now();
        let mut wait = LockWait::new(start, S(3));
        assert!(wait.held("dead", S(3), start).is_some());
        // The dead holder's lock expired; another waiter took it over just now. Waiting for
        // it counts from now, not from when this replica began to wait: otherwise every
        // waiter would give up together and send a token request of its own.
        tokio::time::advance(S(3)).await;
        let now = Instant::now();
        assert_eq!(wait.held("next", S(3), now), Some(now + S(3)));
        tokio::time::advance(S(2)).await;
        let now = Instant::now();
        assert_eq!(wait.held("next", S(1), now), Some(now + S(1)));
        // A lock about to expire is looked at again soon, not in a tight loop.
        assert_eq!(wait.held("next", Duration::ZERO, now), Some(now + MIN_LOOK));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_waits_two_lock_lives_at_most_whoever_holds_the_lock() {
        let start = Instant::now();
        let mut wait = LockWait::new(start, S(3));
        assert_eq!(wait.held("first", S(3), start), Some(start + S(3)));
        // Holders that keep dying (a crash loop): the second one is waited for only up to
        // two lock lives from the start...
        tokio::time::advance(S(4)).await;
        assert_eq!(
            wait.held("second", S(3), Instant::now()),
            Some(start + S(6))
        );
        // ...and no one after that.
        tokio::time::advance(S(2)).await;
        assert_eq!(wait.held("third", S(3), Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_shared_token_is_adopted_instead_of_a_token_request() {
        let now = Instant::now();
        let mut lifecycle = fetching(now);
        let shared = token(now, 60);
        let verdict = lifecycle.consult(Some(&shared), &History::default(), None, now);
        assert!(matches!(verdict, Verdict::Adopt(t) if Arc::ptr_eq(&t, &shared)));
        assert!(matches!(lifecycle.phase(), Phase::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_due_token_the_replica_already_holds_is_refreshed_not_adopted() {
        let start = Instant::now();
        let held = token(start, 60);
        tokio::time::advance(S(50)).await;
        let now = Instant::now();
        let mut lifecycle = Lifecycle::new(rules());
        let fetch = lifecycle.refresh_due(&held, now).unwrap();
        assert_eq!(fetch.trigger, Trigger::RefreshAhead);
        let verdict = lifecycle.consult(Some(&held), &History::default(), Some(&held), now);
        assert!(matches!(verdict, Verdict::Fetch));
        // ...but a newer one that another replica already stored is taken.
        let newer = token(now, 60);
        let verdict = lifecycle.consult(Some(&newer), &History::default(), Some(&held), now);
        assert!(matches!(verdict, Verdict::Adopt(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_made_moot_by_a_token_picked_up_meanwhile_is_not_sent() {
        let start = Instant::now();
        let old = token(start, 60);
        tokio::time::advance(S(50)).await;
        let now = Instant::now();
        let mut lifecycle = Lifecycle::new(rules());
        let fetch = lifecycle.refresh_due(&old, now).unwrap();
        assert_eq!(fetch.trigger, Trigger::RefreshAhead);
        // Another replica refreshed; this one's listener took the new token, which the entry
        // holds too. The rate limit defers nothing here: the request is simply not needed.
        let new = token(now, 60);
        let history = History {
            failures: 0,
            last_sent: Some(now),
            backoff: None,
        };
        let verdict = lifecycle.consult(Some(&new), &history, Some(&new), now);
        assert!(matches!(verdict, Verdict::Moot), "{verdict:?}");
        assert!(matches!(lifecycle.phase(), Phase::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn the_fleets_backoff_holds_here_and_its_failures_count_on() {
        let now = Instant::now();
        let mut lifecycle = fetching(now);
        let history = History {
            failures: 3,
            last_sent: Some(now),
            backoff: Some(Backoff {
                since: now,
                retry_at: now + S(8),
                error: unavailable(),
            }),
        };
        assert!(matches!(
            lifecycle.consult(None, &history, None, now),
            Verdict::BackOff
        ));
        assert!(
            matches!(lifecycle.phase(), Phase::BackingOff { retry_at, .. } if *retry_at == now + S(8))
        );
        // A request arriving now waits for the fleet's retry (within token_wait it would;
        // 8 s is past the 5 s token_wait, so it fails at once).
        assert!(matches!(
            lifecycle.demand(None, Trigger::Demand, now, now),
            Step::Fail(_)
        ));
        // Once the fleet's backoff is over, this replica's failure is the fleet's fourth.
        tokio::time::advance(S(8)).await;
        let now = Instant::now();
        assert!(matches!(
            lifecycle.demand(None, Trigger::Demand, now, now),
            Step::Start(_)
        ));
        let over = History {
            backoff: None,
            ..history
        };
        assert!(matches!(
            lifecycle.consult(None, &over, None, now),
            Verdict::Fetch
        ));
        lifecycle.sent(now);
        lifecycle.finished(Err(&unavailable()), None, now, 0.5);
        assert_eq!(lifecycle.history().failures, 4);
        assert!(lifecycle.history().backoff.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_credential_failure_of_the_fleet_fails_requests_at_once() {
        let now = Instant::now();
        let mut lifecycle = fetching(now);
        let history = History {
            failures: 1,
            last_sent: Some(now),
            backoff: Some(Backoff {
                since: now,
                retry_at: now + S(1),
                error: TokenError::Rejected {
                    status: 401,
                    code: None,
                },
            }),
        };
        lifecycle.consult(None, &history, None, now);
        assert!(matches!(lifecycle.phase(), Phase::Failed { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn the_fleets_rate_limit_defers_the_request() {
        let now = Instant::now();
        let mut lifecycle = fetching(now);
        let history = History {
            failures: 0,
            last_sent: Some(now),
            backoff: None,
        };
        let verdict = lifecycle.consult(None, &history, None, now);
        assert!(matches!(verdict, Verdict::Defer(at) if at == now + S(1)));
        assert!(matches!(lifecycle.phase(), Phase::Fetching { at, .. } if *at == now + S(1)));
        tokio::time::advance(S(1)).await;
        let verdict = lifecycle.consult(None, &history, None, Instant::now());
        assert!(matches!(verdict, Verdict::Fetch));
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_announced_by_the_fleet_ends_a_local_backoff() {
        let now = Instant::now();
        let mut lifecycle = fetching(now);
        lifecycle.sent(now);
        lifecycle.finished(Err(&unavailable()), None, now, 0.5);
        assert!(matches!(lifecycle.phase(), Phase::BackingOff { .. }));
        lifecycle.adopted();
        assert!(matches!(lifecycle.phase(), Phase::Idle));
        assert_eq!(lifecycle.history().failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_wait_past_a_holders_lock_for_the_token_request_sent_when_it_expires() {
        let start = Instant::now();
        let mut lifecycle = fetching(start);
        let bound = lifecycle.request_bound();
        // Another replica holds the fleet lock for longer than a token request takes (it
        // lives as long again as the Redis steps around one).
        let expires = start + bound + S(2);
        lifecycle.awaiting_fleet(start, Some(expires));
        tokio::time::advance(bound + S(1)).await;
        let now = Instant::now();
        // Past the bound counted from now: waiting on, for our own request sent at expiry.
        assert!(matches!(
            lifecycle.demand(None, Trigger::Demand, start, now),
            Step::Wait(until) if until == expires + bound
        ));
        // A later step of the protocol without a lock held counts from that step alone.
        lifecycle.awaiting_fleet(now, None);
        assert!(matches!(
            lifecycle.demand(None, Trigger::Demand, start, now),
            Step::Wait(until) if until == now + bound
        ));
        // So does our own token request, once sent, whatever lock was waited for before.
        lifecycle.awaiting_fleet(now, Some(now + bound * 3));
        lifecycle.sent(now);
        assert!(matches!(
            lifecycle.demand(None, Trigger::Demand, start, now),
            Step::Wait(until) if until == now + bound
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_another_replica_extends_the_wait_but_not_the_rate_limit() {
        let start = Instant::now();
        let mut lifecycle = fetching(start);
        // Just before a request would give up on the in-flight request...
        tokio::time::advance(lifecycle.request_bound() - S(1)).await;
        let now = Instant::now();
        lifecycle.awaiting_fleet(now, None);
        tokio::time::advance(S(2)).await;
        // ...it waits on, counting from when the wait for the fleet began.
        let later = Instant::now();
        assert!(matches!(
            lifecycle.demand(None, Trigger::Demand, start, later),
            Step::Wait(until) if until == now + lifecycle.request_bound()
        ));
        // And a token request of its own goes at once: none was sent from here.
        assert!(matches!(
            lifecycle.consult(None, &History::default(), None, later),
            Verdict::Fetch
        ));
    }

    #[test]
    fn better_means_live_and_longer_lived() {
        let now = Instant::now();
        let (short, long) = (token(now, 10), token(now, 60));
        assert!(better(&long, Some(&short), now));
        assert!(!better(&short, Some(&long), now));
        assert!(better(&short, None, now));
        let dead = Token::for_test(now, Duration::ZERO, Duration::ZERO);
        assert!(!better(&dead, None, now));
    }

    #[test]
    fn the_same_token_read_again_is_not_better() {
        let now = Instant::now();
        let held = token(now, 60);
        let again = Token {
            header: held.header.clone(),
            obtained_at: held.obtained_at,
            expires_at: held.expires_at + Duration::from_nanos(1),
            refresh_at: held.refresh_at,
        };
        assert!(!better(&again, Some(&held), now));
    }
}
