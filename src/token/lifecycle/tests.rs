//! Each rule of the lifecycle on tokio's paused clock: the clock only moves when a test
//! advances it, so instants are exact and nothing sleeps.

use super::*;
use crate::token::ErrorCode;

const MS: fn(u64) -> Duration = Duration::from_millis;
const S: fn(u64) -> Duration = Duration::from_secs;

fn rules() -> Rules {
    Rules {
        min_refresh_interval: S(1),
        token_wait: S(5),
        timeout: S(10),
    }
}

fn unavailable(retry_after: Option<Duration>) -> TokenError {
    TokenError::Unavailable {
        status: 503,
        code: None,
        retry_after,
    }
}

fn rejected_credentials() -> TokenError {
    TokenError::Rejected {
        status: 401,
        code: ErrorCode::parse("invalid_client"),
    }
}

/// A token obtained now: retired after `usable`, refresh due after `refresh_after`.
fn token(usable: Duration, refresh_after: Duration) -> Arc<Token> {
    Arc::new(Token::for_test(Instant::now(), usable, refresh_after))
}

fn now() -> Instant {
    Instant::now()
}

/// The lifecycle after one successful token request sent now.
fn fetched_once(rules: Rules) -> Lifecycle {
    let mut lc = Lifecycle::new(rules);
    let step = lc.demand(None, Trigger::Demand, now(), now());
    assert!(matches!(step, Step::Start(_)), "{step:?}");
    lc.sent(now());
    lc.finished(Ok(()), None, now(), 0.0);
    lc
}

/// Fails the token request in flight (sent now) with `error`; `held` is the store's token.
fn fail(lc: &mut Lifecycle, error: &TokenError, held: Option<&Token>) -> Instant {
    lc.sent(now());
    lc.finished(Err(error), held, now(), 0.0);
    match lc.phase() {
        Phase::BackingOff { retry_at, .. } | Phase::Failed { retry_at, .. } => *retry_at,
        phase => panic!("not backing off: {phase:?}"),
    }
}

fn wait_until(step: Step) -> Instant {
    match step {
        Step::Wait(until) => until,
        step => panic!("expected a wait, got {step:?}"),
    }
}

fn failure(step: Step) -> TokenError {
    match step {
        Step::Fail(e) => e,
        step => panic!("expected a failure, got {step:?}"),
    }
}

// --- single flight and use ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_live_token_is_used_without_a_token_request() {
    let mut lc = fetched_once(rules());
    let held = token(S(60), S(50));
    let step = lc.demand(Some(&held), Trigger::Demand, now(), now());
    assert!(matches!(step, Step::Use(t) if Arc::ptr_eq(&t, &held)));
    assert!(matches!(lc.phase(), Phase::Idle));
}

#[tokio::test(start_paused = true)]
async fn single_flight_one_start_and_everyone_else_waits() {
    let mut lc = Lifecycle::new(rules());
    let arrived = now();
    let first = lc.demand(None, Trigger::Demand, arrived, now());
    assert!(matches!(
        first,
        Step::Start(Fetch {
            trigger: Trigger::Demand,
            ..
        })
    ));
    for _ in 0..100 {
        // In flight: waited for up to its own timeout, even past token_wait.
        let until = wait_until(lc.demand(None, Trigger::Demand, arrived, now()));
        assert_eq!(
            until,
            now() + S(20) + IN_FLIGHT_GRACE,
            "two exchanges of 10 s"
        );
    }
    lc.sent(now());
    tokio::time::advance(MS(300)).await;
    lc.finished(Ok(()), None, now(), 0.0);
    let held = token(S(60), S(50));
    assert!(matches!(
        lc.demand(Some(&held), Trigger::Demand, arrived, now()),
        Step::Use(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn with_no_token_wait_a_request_still_waits_for_the_request_it_starts() {
    let mut lc = Lifecycle::new(Rules {
        token_wait: Duration::ZERO,
        ..rules()
    });
    let arrived = now();
    tokio::time::advance(MS(1)).await;
    assert!(matches!(
        lc.demand(None, Trigger::Demand, arrived, now()),
        Step::Start(_)
    ));
    tokio::time::advance(MS(1)).await;
    assert!(matches!(
        lc.demand(None, Trigger::Demand, arrived, now()),
        Step::Wait(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_not_used() {
    let mut lc = fetched_once(rules());
    let held = token(S(2), S(1));
    tokio::time::advance(S(2)).await;
    let step = lc.demand(Some(&held), Trigger::Demand, now(), now());
    assert!(matches!(step, Step::Start(_)), "{step:?}");
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_that_never_ends_is_given_up() {
    let mut lc = Lifecycle::new(rules());
    let arrived = now();
    let _ = lc.demand(None, Trigger::Demand, arrived, now());
    tokio::time::advance(S(21) + IN_FLIGHT_GRACE).await;
    let error = failure(lc.demand(None, Trigger::Demand, arrived, now()));
    assert!(matches!(error, TokenError::NotInTime { token_wait } if token_wait == S(5)));
    // A task that died (runtime shutdown, panic) lets the next decision start another.
    lc.abandoned(now());
    tokio::time::advance(MS(1)).await;
    let step = lc.demand(None, Trigger::Demand, now(), now());
    assert!(matches!(step, Step::Start(_)), "{step:?}");
}

#[tokio::test(start_paused = true)]
async fn waiters_of_an_abandoned_request_fail_and_the_next_request_starts_another() {
    let mut lc = Lifecycle::new(rules());
    let arrived = now();
    assert!(matches!(
        lc.demand(None, Trigger::Demand, arrived, now()),
        Step::Start(_)
    ));
    lc.sent(now());
    wait_until(lc.demand(None, Trigger::Demand, arrived, now()));
    // The task panics: its waiter does not start another (which may panic the same way, and
    // so on until token_wait runs out) but fails at once, with an error that says so.
    tokio::time::advance(MS(10)).await;
    lc.abandoned(now());
    let error = failure(lc.demand(None, Trigger::Demand, arrived, now()));
    assert!(matches!(error, TokenError::Abandoned), "{error:?}");
    assert!(error.is_transient());
    // A request that comes later starts a new token request (the rate limit still spaces it).
    tokio::time::advance(MS(10)).await;
    match lc.demand(None, Trigger::Demand, now(), now()) {
        Step::Start(fetch) => assert_eq!(fetch.at, arrived + S(1)),
        step => panic!("{step:?}"),
    }
}

// --- rate limit ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn token_requests_are_spaced_by_the_interval() {
    let mut lc = fetched_once(rules());
    let sent = now();
    tokio::time::advance(MS(300)).await;
    let fetch = match lc.demand(None, Trigger::Demand, now(), now()) {
        Step::Start(fetch) => fetch,
        step => panic!("{step:?}"),
    };
    assert_eq!(fetch.at, sent + S(1), "deferred to the end of the interval");
}

#[tokio::test(start_paused = true)]
async fn a_deferred_request_past_token_wait_fails_at_once() {
    let rules = Rules {
        min_refresh_interval: S(60),
        ..rules()
    };
    let mut lc = fetched_once(rules);
    tokio::time::advance(S(1)).await;
    let arrived = now();
    let deadline = arrived + S(5);
    let step = lc.demand(None, Trigger::Demand, arrived, now());
    assert!(matches!(step, Step::Start(f) if f.at > deadline));
    let error = failure(lc.demand(None, Trigger::Demand, arrived, now()));
    assert!(matches!(error, TokenError::NotInTime { .. }), "{error}");
    assert!(error.is_transient(), "a 503, not a 502");
}

#[tokio::test(start_paused = true)]
async fn a_backoff_that_ends_in_time_is_not_waited_for_when_the_rate_limit_ends_later() {
    let rules = Rules {
        min_refresh_interval: S(30),
        ..rules()
    };
    let mut lc = Lifecycle::new(rules);
    let _ = lc.demand(None, Trigger::Demand, now(), now());
    let retry_at = fail(&mut lc, &unavailable(None), None);
    assert!(retry_at - now() <= S(1));
    tokio::time::advance(MS(10)).await;
    // The backoff ends in 1 s, but the next request may only go 30 s after the last.
    failure(lc.demand(None, Trigger::Demand, now(), now()));
}

// --- backoff ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_transient_failure_backs_off_exponentially() {
    let mut lc = Lifecycle::new(rules());
    let mut steps = Vec::new();
    for _ in 0..4 {
        let _ = lc.demand(None, Trigger::Demand, now(), now());
        let retry_at = fail(&mut lc, &unavailable(None), None);
        steps.push(retry_at - now());
        tokio::time::advance(retry_at - now()).await;
    }
    assert_eq!(steps, [S(1), S(2), S(4), S(8)]);
    // A success resets the step.
    let _ = lc.demand(None, Trigger::Demand, now(), now());
    lc.sent(now());
    lc.finished(Ok(()), None, now(), 0.0);
    tokio::time::advance(S(2)).await;
    let _ = lc.demand(None, Trigger::Demand, now(), now());
    assert_eq!(fail(&mut lc, &unavailable(None), None) - now(), S(1));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_is_served_when_the_backoff_ends_in_time() {
    let mut lc = Lifecycle::new(rules());
    let arrived = now();
    let _ = lc.demand(None, Trigger::Demand, arrived, now());
    let retry_at = fail(&mut lc, &unavailable(None), None);
    // The backoff (1 s) ends before the request's token_wait (5 s): it waits for it...
    assert_eq!(
        wait_until(lc.demand(None, Trigger::Demand, arrived, now())),
        retry_at
    );
    tokio::time::advance(retry_at - now()).await;
    // ...then the next token request starts, and it waits for that.
    let step = lc.demand(None, Trigger::Demand, arrived, now());
    assert!(matches!(step, Step::Start(f) if f.at == now()), "{step:?}");
    assert!(matches!(
        lc.demand(None, Trigger::Demand, arrived, now()),
        Step::Wait(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_fails_at_once_when_the_backoff_ends_too_late() {
    let mut lc = Lifecycle::new(rules());
    let arrived = now();
    let _ = lc.demand(None, Trigger::Demand, arrived, now());
    let retry_at = fail(&mut lc, &unavailable(Some(S(30))), None);
    assert_eq!(retry_at - now(), S(30), "Retry-After honoured");
    // The request that waited for the failed token request gets its error as it is...
    let error = failure(lc.demand(None, Trigger::Demand, arrived, now()));
    assert!(
        matches!(error, TokenError::Unavailable { status: 503, .. }),
        "{error}"
    );
    // ...later ones learn that it is being backed off from.
    tokio::time::advance(MS(10)).await;
    let error = failure(lc.demand(None, Trigger::Demand, now(), now()));
    let TokenError::BackingOff { last } = &error else {
        panic!("{error}");
    };
    assert!(matches!(
        **last,
        TokenError::Unavailable { status: 503, .. }
    ));
    assert!(error.is_transient(), "a 503");
    // token_wait = 0: never waits for a backoff, however short.
    let mut lc = Lifecycle::new(Rules {
        token_wait: Duration::ZERO,
        ..rules()
    });
    let _ = lc.demand(None, Trigger::Demand, now(), now());
    fail(&mut lc, &unavailable(None), None);
    tokio::time::advance(MS(10)).await;
    failure(lc.demand(None, Trigger::Demand, now(), now()));
}

#[tokio::test(start_paused = true)]
async fn credential_errors_fail_fast_and_are_retried_once_per_step() {
    let mut lc = Lifecycle::new(rules());
    let _ = lc.demand(None, Trigger::Demand, now(), now());
    let retry_at = fail(&mut lc, &rejected_credentials(), None);
    assert!(matches!(lc.phase(), Phase::Failed { .. }));
    // Even though the step (1 s) ends within token_wait, nobody waits for a refusal.
    let error = failure(lc.demand(None, Trigger::Demand, now(), now()));
    assert!(!error.is_transient(), "a 502");
    assert_eq!(error.endpoint_code().unwrap().as_str(), "invalid_client");
    tokio::time::advance(retry_at - now()).await;
    let step = lc.demand(None, Trigger::Demand, now(), now());
    assert!(matches!(step, Step::Start(_)), "{step:?}");
    // The next refusal doubles the step.
    assert_eq!(fail(&mut lc, &rejected_credentials(), None) - now(), S(2));
}

// --- refresh ahead ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn refresh_ahead_starts_once_in_the_window() {
    let mut lc = fetched_once(rules());
    let held = token(S(60), S(50));
    assert_eq!(lc.refresh_due(&held, now()), None, "not due yet");
    tokio::time::advance(S(50)).await;
    let fetch = lc.refresh_due(&held, now()).unwrap();
    assert_eq!(fetch.trigger, Trigger::RefreshAhead);
    assert_eq!(lc.refresh_due(&held, now()), None, "one at a time");
    // Requests meanwhile keep the live token.
    assert!(matches!(
        lc.demand(Some(&held), Trigger::Demand, now(), now()),
        Step::Use(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_is_retried_before_the_token_retires() {
    let mut lc = fetched_once(rules());
    let held = token(S(3), MS(2100));
    tokio::time::advance(MS(2100)).await;
    // Three earlier failures would make the ordinary step 8 s, far past the token's end.
    for _ in 0..3 {
        lc.sent(now());
        lc.finished(Err(&unavailable(None)), None, now(), 0.0);
    }
    // The fourth failure, of the refresh, while the token still has 900 ms to live.
    let retry_at = fail(&mut lc, &unavailable(Some(S(30))), Some(&held));
    // 900 ms of life left: the retry comes after a quarter of it, capped by the interval (1 s)
    // from below... which here is past the end, so the floor is the interval itself.
    assert_eq!(retry_at - now(), S(1));
    // With a longer life left the retry is a quarter of it, well before retirement.
    let mut lc = fetched_once(rules());
    let held = token(S(60), S(40));
    tokio::time::advance(S(40)).await;
    lc.refresh_due(&held, now()).unwrap();
    let retry_at = fail(&mut lc, &unavailable(Some(S(3600))), Some(&held));
    assert_eq!(retry_at - now(), S(5), "a quarter of the 20 s left");
    assert!(retry_at < held.expires_at);
    assert_eq!(lc.refresh_due(&held, now()), None, "not before retry_at");
    tokio::time::advance(S(5)).await;
    assert!(
        lc.refresh_due(&held, now()).is_some(),
        "retried at retry_at"
    );
}

#[tokio::test(start_paused = true)]
async fn the_retry_cap_never_goes_below_its_floor() {
    let rules = Rules {
        min_refresh_interval: Duration::ZERO,
        ..rules()
    };
    let mut lc = fetched_once(rules);
    let held = token(MS(200), MS(100));
    tokio::time::advance(MS(100)).await;
    lc.refresh_due(&held, now()).unwrap();
    let retry_at = fail(&mut lc, &unavailable(None), Some(&held));
    assert_eq!(retry_at - now(), RETRY_FLOOR);
}

#[tokio::test(start_paused = true)]
async fn a_credential_error_on_refresh_is_not_hurried() {
    let mut lc = fetched_once(rules());
    let held = token(S(60), S(40));
    tokio::time::advance(S(40)).await;
    lc.refresh_due(&held, now()).unwrap();
    let _ = fail(&mut lc, &rejected_credentials(), Some(&held));
    lc.refresh_due(&held, now() + S(1)).unwrap();
    let retry_at = fail(&mut lc, &rejected_credentials(), Some(&held));
    assert_eq!(
        retry_at - now(),
        S(2),
        "the ordinary step, not a share of the life left"
    );
}

// --- rejection (401) ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_rejection_replays_with_a_newer_token_without_a_request() {
    let lc = fetched_once(rules());
    let used = token(S(60), S(50));
    let newer = token(S(60), S(50));
    let verdict = lc.rejected(&used, Some(&newer), now(), now());
    assert!(matches!(verdict, Rejection::Replay(t) if Arc::ptr_eq(&t, &newer)));
}

#[tokio::test(start_paused = true)]
async fn a_rejection_of_a_young_token_waits_for_the_interval() {
    let lc = fetched_once(rules());
    let used = token(S(60), S(50));
    tokio::time::advance(MS(200)).await;
    match lc.rejected(&used, Some(&used), now(), now()) {
        Rejection::Wait(until) => assert_eq!(until, used.obtained_at + S(1)),
        verdict => panic!("{verdict:?}"),
    }
    tokio::time::advance(MS(800)).await;
    assert!(matches!(
        lc.rejected(&used, Some(&used), now(), now()),
        Rejection::Renew
    ));
}

#[tokio::test(start_paused = true)]
async fn a_rejection_of_a_young_token_passes_through_when_the_wait_is_too_long() {
    let rules = Rules {
        min_refresh_interval: S(3600),
        ..rules()
    };
    let lc = fetched_once(rules);
    let used = token(S(7200), S(6000));
    tokio::time::advance(S(10)).await;
    assert!(matches!(
        lc.rejected(&used, Some(&used), now(), now()),
        Rejection::PassThrough
    ));
}

#[tokio::test(start_paused = true)]
async fn renewing_after_a_rejection_joins_a_refresh_in_flight() {
    let mut lc = fetched_once(rules());
    let used = token(S(60), S(50));
    tokio::time::advance(S(50)).await;
    lc.refresh_due(&used, now()).unwrap();
    assert!(matches!(
        lc.rejected(&used, Some(&used), now(), now()),
        Rejection::Renew
    ));
    // The refresh ahead already in flight is the token request the replay waits for.
    let step = lc.demand(None, Trigger::Rejected, now(), now());
    assert!(matches!(step, Step::Wait(_)), "{step:?}");
}

// --- reload -------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_successor_inherits_the_backoff_and_the_rate_limit() {
    let mut old = Lifecycle::new(rules());
    let _ = old.demand(None, Trigger::Demand, now(), now());
    let retry_at = fail(&mut old, &unavailable(Some(S(30))), None);
    let mut new = Lifecycle::new(Rules {
        token_wait: S(60),
        ..rules()
    });
    new.inherit(&old);
    // Still backing off; under the new token_wait the request now waits for it.
    assert_eq!(
        wait_until(new.demand(None, Trigger::Demand, now(), now())),
        retry_at
    );
    // A request in flight in the old source is not the new one's: it may start its own, but
    // only once the rate limit allows.
    let mut old = fetched_once(rules());
    let sent = now();
    let _ = old.demand(None, Trigger::Demand, now(), now());
    let mut new = Lifecycle::new(rules());
    new.inherit(&old);
    match new.demand(None, Trigger::Demand, now(), now()) {
        Step::Start(fetch) => assert_eq!(fetch.at, sent + S(1)),
        step => panic!("{step:?}"),
    }
}

// --- prefetch (the keeper) ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_keeper_fetches_at_start_and_refreshes_without_traffic() {
    let mut lc = Lifecycle::new(rules());
    let fetch = lc.keep(None, now()).unwrap();
    assert_eq!(fetch.trigger, Trigger::Prefetch);
    let backstop = lc.keep(None, now()).unwrap_err();
    assert!(backstop > now(), "waits for the request in flight");
    lc.sent(now());
    lc.finished(Ok(()), None, now(), 0.0);
    let held = token(S(60), S(50));
    assert_eq!(lc.keep(Some(&held), now()).unwrap_err(), held.refresh_at);
    tokio::time::advance(S(50)).await;
    assert_eq!(
        lc.keep(Some(&held), now()).unwrap().trigger,
        Trigger::RefreshAhead
    );
}

#[tokio::test(start_paused = true)]
async fn the_keeper_retries_after_the_backoff_and_never_spins() {
    let mut lc = Lifecycle::new(rules());
    lc.keep(None, now()).unwrap();
    let retry_at = fail(&mut lc, &rejected_credentials(), None);
    assert_eq!(lc.keep(None, now()).unwrap_err(), retry_at);
    tokio::time::advance(retry_at - now()).await;
    assert!(lc.keep(None, now()).is_ok());
    // A live token in backoff: wakes at the retry, never later than the token's end.
    let mut lc = fetched_once(rules());
    let held = token(S(60), S(40));
    tokio::time::advance(S(40)).await;
    lc.refresh_due(&held, now()).unwrap();
    let retry_at = fail(&mut lc, &unavailable(None), Some(&held));
    let wake = lc.keep(Some(&held), now()).unwrap_err();
    assert_eq!(wake, retry_at);
    assert!(wake > now() && wake < held.expires_at);
}
