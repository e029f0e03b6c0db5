//! The watchdog's rules on tokio's paused clock: time only moves when everything waits.

use super::*;

const TIMERS: Timers = Timers {
    first_head: Duration::from_secs(10),
    idle: Duration::from_secs(60),
};

const H1: Version = Version::HTTP_11;

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_cut_at_the_first_head_timeout() {
    let accepted = Instant::now();
    let activity = Activity::new(accepted);
    let limit = watchdog(&activity, TIMERS).await;
    assert_eq!(limit, Limit::HeaderReadTimeout);
    assert_eq!(accepted.elapsed(), TIMERS.first_head);
}

#[tokio::test(start_paused = true)]
async fn a_next_head_has_the_head_timeout_from_its_first_byte() {
    // 55 s idle: the head timer runs past where the idle one would have ended. 15 s idle: it
    // ends before, and the armed idle timer is moved earlier.
    for idle in [55, 15] {
        let activity = Arc::new(Activity::new(Instant::now()));
        drop(activity.request(H1));
        let dog = watchdog(&activity, TIMERS);
        tokio::pin!(dog);
        assert!(tokio::time::timeout(Duration::from_secs(idle), &mut dog)
            .await
            .is_err());
        activity.received();
        let first_byte = Instant::now();
        assert_eq!(dog.await, Limit::HeaderReadTimeout);
        assert_eq!(
            first_byte.elapsed(),
            TIMERS.first_head,
            "after {idle} s idle"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn bytes_of_a_request_in_flight_do_not_begin_a_next_head() {
    let activity = Arc::new(Activity::new(Instant::now()));
    let in_flight = activity.request(H1);
    // Its body.
    activity.received();
    drop(in_flight);
    let idle = Instant::now();
    assert_eq!(watchdog(&activity, TIMERS).await, Limit::IdleTimeout);
    assert_eq!(idle.elapsed(), TIMERS.idle);
}

#[tokio::test(start_paused = true)]
async fn on_http2_bytes_between_requests_leave_the_connection_idle() {
    let activity = Arc::new(Activity::new(Instant::now()));
    drop(activity.request(Version::HTTP_2));
    let idle = Instant::now();
    // A ping, say.
    activity.received();
    assert_eq!(watchdog(&activity, TIMERS).await, Limit::IdleTimeout);
    assert_eq!(idle.elapsed(), TIMERS.idle);
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_is_never_idle_however_long_it_streams() {
    let activity = Arc::new(Activity::new(Instant::now()));
    let in_flight = activity.request(H1);
    let still_running =
        tokio::time::timeout(Duration::from_secs(24 * 3600), watchdog(&activity, TIMERS)).await;
    assert!(still_running.is_err(), "the watchdog fired mid-request");
    // Once the response is done, the idle timer runs from then.
    drop(in_flight);
    let done = Instant::now();
    assert_eq!(watchdog(&activity, TIMERS).await, Limit::IdleTimeout);
    assert_eq!(done.elapsed(), TIMERS.idle);
}

#[tokio::test(start_paused = true)]
async fn an_http2_request_ending_in_another_task_wakes_the_watchdog() {
    let activity = Arc::new(Activity::new(Instant::now()));
    let in_flight = activity.request(Version::HTTP_2);
    let watched = Arc::clone(&activity);
    // The watchdog in a task of its own, as the connection's; the request ends in this one,
    // as an h2 stream's task would end it.
    let dog = tokio::spawn(async move { watchdog(&watched, TIMERS).await });
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(in_flight);
    let done = Instant::now();
    let limit = tokio::time::timeout(TIMERS.idle * 2, dog).await;
    assert!(
        matches!(limit, Ok(Ok(Limit::IdleTimeout))),
        "the watchdog was not woken: {limit:?}"
    );
    assert_eq!(done.elapsed(), TIMERS.idle);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_ends_in_the_connections_own_poll_starts_the_idle_timer() {
    let activity = Arc::new(Activity::new(Instant::now()));
    let in_flight = activity.request(H1);
    // The connection: its request ends an hour in (long past the first-head deadline the
    // timer was armed with), inside its own poll, waking nobody; then it waits.
    let connection = async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(in_flight);
        std::future::pending::<()>().await;
    };
    let start = Instant::now();
    let limit = tokio::select! {
        biased;
        () = connection => unreachable!("the connection never ends"),
        limit = watchdog(&activity, TIMERS) => limit,
    };
    assert_eq!(limit, Limit::IdleTimeout);
    assert_eq!(start.elapsed(), Duration::from_secs(3600) + TIMERS.idle);
}

#[tokio::test(start_paused = true)]
async fn each_request_restarts_the_idle_timer() {
    let activity = Arc::new(Activity::new(Instant::now()));
    drop(activity.request(H1));
    let dog = watchdog(&activity, TIMERS);
    tokio::pin!(dog);
    for _ in 0..5 {
        // 50 s idle, then a request: never 60 s in a row.
        assert!(tokio::time::timeout(Duration::from_secs(50), &mut dog)
            .await
            .is_err());
        drop(activity.request(H1));
    }
    let last = Instant::now();
    assert_eq!(dog.await, Limit::IdleTimeout);
    assert_eq!(last.elapsed(), TIMERS.idle);
}

#[tokio::test]
async fn slots_wait_when_all_are_taken() {
    let slots = Slots::new(2, Arc::new(Metrics::default()));
    let (a, waited) = slots.acquire().await;
    assert!(!waited);
    let _b = slots.acquire().await;
    let mut third = Box::pin(slots.acquire());
    assert!(
        futures_poll_once(&mut third).await.is_none(),
        "a third connection waits"
    );
    drop(a);
    let (_c, waited) = third.await;
    assert!(waited, "the third is told it waited");
}

/// Polls `f` once: `Some` if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match Pin::new(&mut *f).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}
