//! The seeded fault plan and the delayed (slow but successful) token endpoint.

use std::time::Duration;

use super::*;

/// The statuses of `n` good token requests, one after another.
async fn statuses(s: &StandIn, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(nuvy_token(s).await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn a_plan_gives_the_nth_request_its_entry_then_answers_normally() {
    let s = nuvy().await;
    // Requests before the plan do not count towards it.
    assert_eq!(statuses(&s, 1).await, [200]);
    s.plan_token_faults(vec![
        Some(Failure::Status(500)),
        None,
        Some(Failure::Status(503)),
        None,
    ]);
    assert_eq!(s.planned_token_requests(), 0);
    assert_eq!(statuses(&s, 2).await, [500, 200]);
    assert_eq!(s.planned_token_requests(), 2);
    assert_eq!(
        statuses(&s, 4).await,
        [503, 200, 200, 200],
        "past its end, normal"
    );
    assert_eq!(s.planned_token_requests(), 4, "capped at the plan's length");
    assert_eq!(s.token_requests(), 7);
    assert_eq!(s.issued_tokens().len(), 5, "planned failures issue nothing");

    // A new plan starts counting afresh; an empty one clears it.
    s.plan_token_faults(vec![Some(Failure::Status(502))]);
    assert_eq!(statuses(&s, 2).await, [502, 200]);
    s.plan_token_faults(vec![Some(Failure::Status(502))]);
    s.plan_token_faults(Vec::new());
    assert_eq!(statuses(&s, 1).await, [200]);
    assert_eq!(s.planned_token_requests(), 0);
}

#[tokio::test]
async fn a_counted_failure_wins_over_the_plan_and_spends_its_entry() {
    let s = nuvy().await;
    s.plan_token_faults(vec![None, Some(Failure::Status(500)), None, None]);
    s.fail_token_requests(1, Failure::Status(503));
    // plan[0] is spent by the request that got the counted 503, so plan[1] stays the 2nd's.
    assert_eq!(statuses(&s, 3).await, [503, 500, 200]);
    assert_eq!(s.planned_token_requests(), 3);
    s.fail_token_requests(usize::MAX, Failure::Status(502));
    assert_eq!(statuses(&s, 2).await, [502, 502]);
    s.fail_token_requests(0, Failure::Status(502));
    assert_eq!(statuses(&s, 1).await, [200]);
    assert_eq!(s.planned_token_requests(), 4);
}

#[tokio::test]
async fn a_delay_answers_as_usual_once_it_has_waited() {
    let s = nuvy().await;
    let wait = Duration::from_millis(50);
    s.plan_token_faults(vec![Some(Failure::Delay(wait)), None]);
    let started = std::time::Instant::now();
    let resp = nuvy_token(&s).await;
    assert_issued(&s, &resp);
    // A lower bound only: the stand-in slept at least this long before answering.
    assert!(started.elapsed() >= wait);
    s.fail_token_requests(1, Failure::Delay(wait));
    assert_issued(&s, &nuvy_token(&s).await);
    assert_eq!(
        s.issued_tokens().len(),
        2,
        "a delayed request issues its token"
    );
}

#[tokio::test]
async fn a_long_delay_ends_unanswered_at_shutdown() {
    let s = nuvy().await;
    s.plan_token_faults(vec![Some(Failure::Delay(Duration::from_secs(3600)))]);
    let req = post(
        &s.token_url(),
        Some(FORM),
        &[],
        "grant_type=client_credentials",
    );
    let pending = tokio::spawn(try_send(req));
    s.wait_token_requests(1).await;
    s.shutdown();
    assert!(
        pending.await.unwrap().is_err(),
        "a delayed request ends unanswered at shutdown"
    );
    assert!(s.issued_tokens().is_empty());
}
