//! The watchdog's rules on tokio's paused clock: time only moves when everything waits.

use super::*;

const TIMERS: Timers = Timers {
    first_head: Duration::from_secs(10),
    idle: Duration::from_secs(60),
};

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_cut_at_the_first_head_timeout() {
    let activity = Activity::default();
    let accepted = Instant::now();
    let limit = watchdog(&activity, accepted, TIMERS).await;
    assert_eq!(limit, Limit::HeaderReadTimeout);
    assert_eq!(accepted.elapsed(), TIMERS.first_head);
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_is_never_idle_however_long_it_streams() {
    let activity = Arc::new(Activity::default());
    let accepted = Instant::now();
    let in_flight = activity.request();
    let still_running = tokio::time::timeout(
        Duration::from_secs(24 * 3600),
        watchdog(&activity, accepted, TIMERS),
    )
    .await;
    assert!(still_running.is_err(), "the watchdog fired mid-request");
    // Once the response is done, the idle timer runs from then.
    drop(in_flight);
    let done = Instant::now();
    assert_eq!(
        watchdog(&activity, accepted, TIMERS).await,
        Limit::IdleTimeout
    );
    assert_eq!(done.elapsed(), TIMERS.idle);
}

#[tokio::test(start_paused = true)]
async fn each_request_restarts_the_idle_timer() {
    let activity = Arc::new(Activity::default());
    let accepted = Instant::now();
    drop(activity.request());
    let dog = watchdog(&activity, accepted, TIMERS);
    tokio::pin!(dog);
    for _ in 0..5 {
        // 50 s idle, then a request: never 60 s in a row.
        assert!(tokio::time::timeout(Duration::from_secs(50), &mut dog)
            .await
            .is_err());
        drop(activity.request());
    }
    let last = Instant::now();
    assert_eq!(dog.await, Limit::IdleTimeout);
    assert_eq!(last.elapsed(), TIMERS.idle);
}

#[tokio::test]
async fn slots_wait_when_all_are_taken() {
    let slots = Slots::new(2, Arc::new(Metrics::default()));
    let a = slots.acquire().await;
    let _b = slots.acquire().await;
    let mut third = Box::pin(slots.acquire());
    assert!(
        futures_poll_once(&mut third).await.is_none(),
        "a third connection waits"
    );
    drop(a);
    let _c = third.await;
}

/// Polls `f` once: `Some` if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match Pin::new(&mut *f).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}
