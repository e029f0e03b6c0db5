//! Refresh across the shared token cache, end to end: real sidecar processes and a real Redis
//! in front of one in-process token endpoint whose tokens live a few seconds, so that a test
//! sees several refreshes.
//!
//! The fleet refreshes on its own (`prefetch`, the default): the tests only drive a light load
//! through every replica and watch what the token endpoint and the protected API see. To end a
//! run, the endpoint starts issuing hour-long tokens; once every replica presents one, nothing
//! is due for an hour, so the counts read afterwards are final, not a snapshot of a refresh in
//! flight.
//!
//! The harness is synchronous (tests/support/fleet.rs); the stand-in runs on a runtime each
//! test owns, and HTTP calls are `block_on`ed. Redis operations get a generous `timeout`, so a
//! busy machine never turns a slow answer into a fallback (and a token request of its own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nexus_sidecar::standin::{Api, StandIn};
use support::fleet::{Fleet, World};
use support::redis::Redis;
use support::{credentials, within, Http, TOTP_SEED};

/// The short tokens' lifetime (s). Retired at 90% (3.6 s) and refreshed 20-22% before that
/// (from about 2.8 s): a refresh every 2.8 s, with 0.8 s for it to reach every replica before
/// the old token retires.
const SHORT: u64 = 4;
/// The lifetime of the token that ends a run: its refresh is an hour away.
const LONG: u64 = 3600;
/// The least time between two token requests when each [`SHORT`] token is refreshed once, ahead
/// of its expiry: its refresh is due 20-22% of its usable 3.6 s before that ends
/// (src/token/schedule.rs), at least 2.72 s after its own request was sent, and no replica
/// sends the next one sooner. Less 20 ms: the shared entry rounds instants to milliseconds.
const REFRESH_GAP: Duration = Duration::from_millis(2700);
/// The same for NexusHub, whose lifetime is its JWT's `exp` in whole seconds: a [`SHORT`]
/// token issued late in a second is seen to live 3 s, refreshed from 2.04 s on.
const NEXUSHUB_REFRESH_GAP: Duration = Duration::from_millis(2000);
/// A round of requests (one through each replica) goes this often: a light load, yet dozens of
/// rounds per short token, so every replica's every token is seen.
const PACE: Duration = Duration::from_millis(50);

/// What one request through one replica came back with.
#[derive(Debug, Clone, Copy)]
struct Served {
    status: u16,
    /// Which issued token the protected API saw (1 for the first), from its echo.
    token: Option<usize>,
}

/// One request through each replica, sent together; in replica order.
type Round = Vec<Served>;

impl World {
    fn new(api: Api) -> World {
        let mut c = credentials(api);
        if api == Api::Nexudus {
            // Signing in needs a TOTP code: only the password grant can show it was repeated.
            c = c.with_totp(TOTP_SEED);
        }
        World::start("fleet-refresh", api, c, Redis::start())
    }

    /// The counter summed over the fleet.
    fn fleet_events(&self, fleet: &Fleet, event: &str) -> u64 {
        fleet.replicas.iter().map(|r| self.events(r, event)).sum()
    }

    /// One round, now.
    fn round(&self, fleet: &Fleet) -> Round {
        let urls = urls(fleet);
        self.runtime.block_on(round(&self.http, &urls, 0))
    }

    /// Rounds every [`PACE`] until the fleet's token has been refreshed `refreshes` times;
    /// then `long_lived` makes the endpoint issue hour-long tokens, and the rounds go on until
    /// every replica presents one of them. Every round, in order.
    fn drive(
        &self,
        fleet: &Fleet,
        refreshes: usize,
        long_lived: impl FnOnce(&StandIn),
    ) -> Vec<Round> {
        let (standin, http, urls) = (&self.standin, &self.http, urls(fleet));
        // The pace only spreads the load; the run ends on what the endpoint issued and what the
        // replicas presented, never after a fixed time.
        self.runtime
            .block_on(within("the fleet's refreshes", async {
                let mut pace = tokio::time::interval(PACE);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut rounds = Vec::new();
                while standin.issued_tokens().len() <= refreshes {
                    pace.tick().await;
                    rounds.push(round(http, &urls, rounds.len()).await);
                }
                long_lived(standin);
                loop {
                    pace.tick().await;
                    let served = round(http, &urls, rounds.len()).await;
                    // Any long-lived token ends the run: the assertions say whether the fleet
                    // shares one.
                    let long = long_lived_tokens(standin);
                    let done = served
                        .iter()
                        .all(|s| s.token.is_some_and(|t| long.contains(&t)));
                    rounds.push(served);
                    if done {
                        return rounds;
                    }
                }
            }))
    }
}

fn urls(fleet: &Fleet) -> Vec<String> {
    fleet.replicas.iter().map(|r| r.app_url("/v1/x")).collect()
}

async fn round(http: &Http, urls: &[String], n: usize) -> Round {
    let requests = urls.iter().enumerate().map(|(r, url)| {
        let (http, url) = (http.clone(), format!("{url}?round={n}&replica={r}"));
        async move {
            let reply = http.get(&url).await;
            let token = match reply.status.as_u16() {
                200 => reply.json()["token_number"].as_u64().map(|n| n as usize),
                _ => None,
            };
            Served {
                status: reply.status.as_u16(),
                token,
            }
        }
    });
    // Spawned together, awaited in order: the round keeps the replicas' order.
    let tasks: Vec<_> = requests.map(tokio::spawn).collect();
    let mut round = Vec::with_capacity(tasks.len());
    for task in tasks {
        round.push(task.await.unwrap());
    }
    round
}

/// The numbers (1-based) of the issued tokens that live [`LONG`], by their JWT claims.
fn long_lived_tokens(standin: &StandIn) -> BTreeSet<usize> {
    let issued = standin.issued_tokens();
    (1..=issued.len())
        .filter(|&n| lifetime(&issued[n - 1]) >= LONG)
        .collect()
}

/// The first of them: the one the fleet should share when the run ends.
fn first_long_lived(standin: &StandIn) -> Option<usize> {
    long_lived_tokens(standin).first().copied()
}

/// `exp - iat` of a stand-in token.
fn lifetime(token: &str) -> u64 {
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap()
}

/// At most one token request per short lifetime: from the first (sent after `begun`) to the
/// last (sent before now), each came at least `gap` after the one before. Counted
/// against the time the run took, a bound that only loosens when the machine is slow; a fleet
/// that asked again without a refresh being due (every `min_refresh_interval`, or once per
/// replica) exceeds it.
fn assert_one_request_per_lifetime(requests: usize, begun: Instant, gap: Duration) {
    let elapsed = begun.elapsed();
    let lifetimes = (elapsed.as_secs_f64() / gap.as_secs_f64()).floor() as usize;
    assert!(
        requests <= lifetimes + 1,
        "{requests} token requests in {elapsed:?}, one per {gap:?} at most: {}",
        lifetimes + 1
    );
}

/// What every run must show, whatever the flow: every request was answered 200; each replica
/// moved to every new token in turn (never back to an older one, never skipping one) and ended
/// on the last; in any one round the replicas were at most one refresh apart. Returns the
/// tokens the protected API saw.
fn switched_in_step(rounds: &[Round], last: usize) -> BTreeSet<usize> {
    let replicas = rounds[0].len();
    for (n, round) in rounds.iter().enumerate() {
        assert!(
            round.iter().all(|s| s.status == 200 && s.token.is_some()),
            "round {n}: {round:?}"
        );
        let tokens: Vec<usize> = round.iter().filter_map(|s| s.token).collect();
        let (low, high) = (tokens.iter().min().unwrap(), tokens.iter().max().unwrap());
        assert!(
            high - low <= 1,
            "round {n}: replicas apart by more than one refresh: {round:?}"
        );
    }
    for r in 0..replicas {
        let mut used: Vec<usize> = rounds.iter().filter_map(|round| round[r].token).collect();
        used.dedup();
        // A short token serves ~2.8 s, over 50 rounds: every replica has it for some of them,
        // unless it kept the one before (and then another replica moved two ahead of it).
        assert!(
            used.windows(2).all(|w| w[1] == w[0] + 1),
            "replica {r} went through tokens {used:?}"
        );
        assert_eq!(used.last(), Some(&last), "replica {r}");
    }
    rounds.iter().flatten().filter_map(|s| s.token).collect()
}

#[test]
fn a_rotating_refresh_token_is_used_by_one_replica_at_a_time_and_never_replayed() {
    let world = World::new(Api::Nexudus);
    let s = &world.standin;
    s.rotate_refresh_tokens(true);
    s.set_expires_in(Some(SHORT));
    let begun = Instant::now();
    let fleet = world.fleet(4, "");

    let rounds = world.drive(&fleet, 3, |s| s.set_expires_in(Some(LONG)));
    let last = first_long_lived(s).unwrap();
    assert_eq!(
        s.superseded_refresh_tokens(),
        0,
        "a refresh token was presented after a refresh had replaced it"
    );
    assert_eq!(
        s.token_requests_by_grant("password"),
        1,
        "one sign-in for the whole fleet; then only refreshes"
    );
    assert_eq!(s.token_requests_by_grant("refresh_token"), last - 1);
    assert_eq!(s.token_requests(), last, "every token request got a token");
    assert_one_request_per_lifetime(s.token_requests(), begun, REFRESH_GAP);
    let seen = switched_in_step(&rounds, last);
    assert!(seen.len() >= 4, "the API saw tokens {seen:?}");
}

#[test]
fn nexushub_fleet_authenticates_once_and_refreshes_with_the_shared_refresh_token() {
    let world = World::new(Api::NexusHub);
    let s = &world.standin;
    // NexusHub sends no expires_in: the JWT's exp is the lifetime. Its refresh token is reused
    // (no rotation), and a replica without it would have to authenticate again.
    s.set_jwt_lifetime(Some(SHORT));
    let begun = Instant::now();
    let fleet = world.fleet(4, "");

    let rounds = world.drive(&fleet, 3, |s| s.set_jwt_lifetime(Some(LONG)));
    let last = first_long_lived(s).unwrap();
    assert_eq!(
        s.token_requests_by_grant("authenticate"),
        1,
        "one sign-in for the whole fleet; then only refreshes"
    );
    assert_eq!(s.token_requests_by_grant("refresh"), last - 1);
    assert_eq!(s.token_requests(), last, "every token request got a token");
    assert_one_request_per_lifetime(s.token_requests(), begun, NEXUSHUB_REFRESH_GAP);
    let seen = switched_in_step(&rounds, last);
    assert!(seen.len() >= 4, "the API saw tokens {seen:?}");
}

#[test]
fn under_steady_load_the_fleet_makes_one_token_request_per_lifetime() {
    let world = World::new(Api::NuvyNexus);
    let s = &world.standin;
    s.set_expires_in(Some(SHORT));
    let begun = Instant::now();
    let fleet = world.fleet(5, "");

    let rounds = world.drive(&fleet, 3, |s| s.set_expires_in(Some(LONG)));
    let last = first_long_lived(s).unwrap();
    let seen = switched_in_step(&rounds, last);
    // Each lifetime is one token the API saw; the first may have been replaced before the
    // load began.
    let lifetimes = seen.len();
    assert!(lifetimes >= 4, "the API saw tokens {seen:?}");
    let requests = s.token_requests();
    assert!(
        requests <= lifetimes + 1,
        "{requests} token requests for {lifetimes} lifetimes"
    );
    assert_eq!(
        requests,
        s.issued_tokens().len(),
        "every token request got a token"
    );
    assert_eq!(requests, last, "no token request for a token nobody used");
    assert_one_request_per_lifetime(requests, begun, REFRESH_GAP);
    assert_eq!(
        world.fleet_events(&fleet, "miss"),
        requests as u64,
        "every token request was one replica's, for the fleet"
    );
}

#[test]
fn one_replica_refreshes_ahead_while_the_rest_serve_and_then_take_its_token() {
    let world = World::new(Api::NuvyNexus);
    let s = &world.standin;
    // Retired at 5.4 s and refreshed from 3.2-3.4 s: 2 s in which the old token still serves.
    s.set_expires_in(Some(6));
    let fleet = world.fleet(5, "refresh_before = \"2s\"");
    // A token is in use (so the cold start's token request is not the one held); from now on
    // the endpoint holds every token request.
    let first = world.round(&fleet);
    assert!(first.iter().all(|s| s.status == 200), "{first:?}");
    s.hold_token_requests(true);

    // The refresh ahead: one replica's, held at the endpoint. (Should the fleet have been slow
    // to start, an earlier refresh went unheld: `old` is whatever token it is replacing.)
    world
        .runtime
        .block_on(within("the refresh ahead", s.wait_held(1)));
    let old = s.issued_tokens().len();
    // Meanwhile every replica serves with the old token: no request waits for the new one
    // (one that did could not be answered while the refresh is held).
    let meanwhile = world.round(&fleet);
    assert!(
        meanwhile
            .iter()
            .all(|s| s.status == 200 && s.token == Some(old)),
        "{meanwhile:?}"
    );
    assert_eq!(
        s.token_requests(),
        old + 1,
        "one replica refreshes for the fleet"
    );
    assert_eq!(s.held_token_requests(), 1);
    assert_eq!(world.fleet_events(&fleet, "miss"), old as u64 + 1);

    // Released, the refresh brings a long-lived token, and every replica takes it: no other
    // token request, and never the old token again once a replica has the new one.
    s.set_expires_in(Some(LONG));
    s.hold_token_requests(false);
    let rounds = world.drive(&fleet, 0, |_| {});
    assert_eq!(first_long_lived(s), Some(old + 1));
    switched_in_step(&rounds, old + 1);
    assert_eq!(s.token_requests(), old + 1);
    assert_eq!(s.issued_tokens().len(), old + 1);
}

#[test]
fn while_redis_is_down_no_replica_replays_a_superseded_refresh_token() {
    let mut world = World::new(Api::Nexudus);
    world.standin.rotate_refresh_tokens(true);
    world.standin.set_expires_in(Some(SHORT));
    let fleet = world.fleet(3, "");
    // The fleet shares the first token and its refresh token; then Redis goes away, and the
    // refresh of that token comes due in every replica at once.
    let first = world.round(&fleet);
    assert!(
        first.iter().all(|s| s.status == 200 && s.token == Some(1)),
        "{first:?}"
    );
    world.redis.kill();

    let rounds = world.drive(&fleet, 1, |s| s.set_expires_in(Some(LONG)));
    assert!(
        rounds.iter().flatten().all(|s| s.status == 200),
        "{rounds:?}"
    );
    let s = &world.standin;
    assert_eq!(
        s.superseded_refresh_tokens(),
        0,
        "a refresh token was presented after a refresh had replaced it ({} sign-ins)",
        s.token_requests_by_grant("password")
    );
    // The refresh came due during the outage, and was a sign-in: the fleet's refresh token
    // was not presented by a replica alone.
    assert!(
        s.token_requests_by_grant("password") >= 2,
        "{} sign-ins, {} refreshes",
        s.token_requests_by_grant("password"),
        s.token_requests_by_grant("refresh_token")
    );
}
