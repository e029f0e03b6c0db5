//! The shared token cache end to end: a real `redis-server` and several real sidecar
//! processes in front of one in-process token endpoint, counting what the fleet asks of it.
//!
//! The harness is synchronous (tests/support/fleet.rs); the stand-in runs on a runtime each
//! test owns, and HTTP calls are `block_on`ed. Redis operations get a generous `timeout`, so a
//! busy machine never turns a slow answer into a fallback (and a second token request).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use nexus_sidecar::standin::{Api, Failure};
use support::fleet::{trust, Fleet, Replica, World};
use support::redis::Redis;
use support::{credentials, upstream_toml, Reply, PATIENCE, SECRET_MARK};

impl World {
    fn new() -> World {
        World::with(Api::NuvyNexus)
    }

    fn with(api: Api) -> World {
        World::start("fleet", api, credentials(api), Redis::start())
    }

    /// How many times Redis ran `command` (from `INFO commandstats`).
    fn redis_calls(&self, command: &str) -> u64 {
        let info = self.redis.command(&["INFO", "commandstats"]).text();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    }
}

fn all_ok(replies: &[Reply]) {
    for reply in replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

/// The entry names in Redis (keys other than locks).
fn entries(redis: &Redis) -> BTreeSet<String> {
    redis
        .all_values()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .filter(|k| !k.ends_with(":lock"))
        .collect()
}

#[test]
fn five_replicas_cold_under_a_burst_make_one_token_request_and_store_nothing_in_the_clear() {
    let world = World::new();
    let fleet = world.fleet(5, "prefetch = false");
    assert_eq!(world.standin.token_requests(), 0, "prefetch is off");

    all_ok(&world.burst(&fleet, 8));
    assert_eq!(
        world.standin.token_requests(),
        1,
        "one token request for the fleet"
    );
    let seen = world.standin.seen();
    assert_eq!(seen.len(), 40);
    assert!(seen.iter().all(|s| s.authorized), "{seen:?}");
    let misses: u64 = fleet.replicas.iter().map(|r| world.events(r, "miss")).sum();
    assert_eq!(misses, 1, "exactly one replica fetched for the fleet");

    // What Redis holds opens only with the credentials: no token, secret or client id in any
    // key or value, and the key names say nothing about the API either.
    let stored = world.redis.all_values();
    assert_eq!(entries(&world.redis).len(), 1, "{stored:?}");
    let c = credentials(Api::NuvyNexus);
    let mut needles: Vec<String> = world.standin.issued_tokens();
    needles.extend([
        c.secret.clone(),
        c.id.clone(),
        SECRET_MARK.into(),
        "nuvy".into(),
    ]);
    for (key, values) in &stored {
        for needle in &needles {
            let n = needle.as_bytes();
            let found = key.windows(n.len()).any(|w| w == n)
                || values.iter().any(|v| v.windows(n.len()).any(|w| w == n));
            assert!(
                !found,
                "`{needle}` stored in the clear under {}",
                String::from_utf8_lossy(key)
            );
        }
    }
    for replica in &fleet.replicas {
        let log = replica.lines().join("\n");
        assert!(!log.contains(SECRET_MARK), "a secret in a log:\n{log}");
        let status = world.get_admin(replica, "/status").json();
        assert_eq!(status["upstreams"][0]["shared"], true, "{status}");
        assert_eq!(status["shared_cache"]["state"], "up", "{status}");
    }
}

#[test]
fn a_revocation_seen_by_every_replica_costs_one_token_request() {
    let world = World::new();
    let fleet = world.fleet(5, "prefetch = false\nmin_refresh_interval = \"100ms\"");
    all_ok(&world.burst(&fleet, 1));
    assert_eq!(world.standin.token_requests(), 1);

    world.standin.revoke_all();
    all_ok(&world.burst(&fleet, 4));
    assert_eq!(
        world.standin.token_requests(),
        2,
        "every replica saw the 401; one replaced the token for all"
    );
    let rejected = world
        .standin
        .seen()
        .iter()
        .filter(|s| !s.authorized)
        .count();
    assert!(rejected >= 1, "the revocation was seen");
}

#[test]
fn a_failing_endpoint_is_asked_no_more_often_by_the_fleet_than_by_one_process() {
    let world = World::new();
    // Two failures, then a token: one process makes three token requests, backing off in
    // between; so must five.
    world.standin.fail_token_requests(2, Failure::Status(503));
    let fleet = world.fleet(
        5,
        "prefetch = false\ntoken_wait = \"30s\"\nmin_refresh_interval = \"100ms\"",
    );
    all_ok(&world.burst(&fleet, 3));
    assert_eq!(world.standin.token_requests(), 3);
}

#[test]
fn redis_down_costs_no_request_and_the_fleet_shares_again_when_it_returns() {
    let mut world = World::new();
    let fleet = world.fleet(3, "prefetch = false\nmin_refresh_interval = \"100ms\"");
    all_ok(&world.burst(&fleet, 2));
    assert_eq!(world.standin.token_requests(), 1);

    // Redis dies, and every replica needs a new token: each gets its own, nothing fails.
    world.redis.kill();
    world.standin.revoke_all();
    all_ok(&world.burst(&fleet, 4));
    let alone = world.standin.token_requests() - 1;
    assert!(
        (1..=3).contains(&alone),
        "{alone} token requests while Redis was down"
    );
    for replica in &fleet.replicas {
        replica.wait_for_line(|l| l.contains("shared cache unavailable"), PATIENCE);
        let outage = replica
            .lines()
            .iter()
            .filter(|l| l.contains("shared cache unavailable"))
            .count();
        assert_eq!(outage, 1, "the outage is logged once, not per request");
        let status = world.get_admin(replica, "/status").json();
        assert_eq!(status["shared_cache"]["state"], "down", "{status}");
        // Degraded, not unready.
        assert_eq!(world.get_admin(replica, "/readyz").status, 200);
    }

    // Redis returns (empty): every replica finds it again, and shares again.
    world.redis.restart();
    for replica in &fleet.replicas {
        replica.wait_for_line(|l| l.contains("shared cache is back"), PATIENCE);
    }
    let before = world.standin.token_requests();
    world.standin.revoke_all();
    all_ok(&world.burst(&fleet, 4));
    assert_eq!(world.standin.token_requests(), before + 1, "shared again");
}

#[test]
fn when_the_lock_holder_dies_another_replica_takes_over_after_the_lock_expires() {
    let world = World::new();
    // The lock lives as long as a token request can (2 × timeout + 1 s = 3 s here) and as
    // long again as two Redis operations (2 × 1 s): 5 s.
    // `token_wait` is the default (5 s): the request waits past it for a token request in
    // flight, even another replica's.
    let config = world.config("timeout = \"1s\"", "prefetch = false\ntimeout = \"1s\"");
    let mut holder = Replica::start(&world.write("holder.toml", &config));
    let waiter = Replica::start(&world.write("waiter.toml", &config));

    // The holder takes the lock and sends its token request, which the endpoint holds; then
    // it dies with the lock held.
    world.standin.hold_token_requests(true);
    let url = holder.app_url("/v1/x");
    let http = world.http.clone();
    let doomed = world.runtime.spawn(async move { http.try_get(&url).await });
    world.runtime.block_on(world.standin.wait_held(1));
    holder.kill();
    world.standin.hold_token_requests(false);
    let _ = world.runtime.block_on(doomed);

    let evals_before = world.redis_calls("evalsha") + world.redis_calls("eval");
    let reply = world.get(&waiter, "/v1/y");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(world.standin.token_requests(), 2);
    assert!(world.events(&waiter, "lock_wait") >= 1);
    // It waited for the lock's expiry, not by asking Redis over and over: a look is a read
    // and an acquire (two scripts); one look finds the lock, one more may come a moment
    // before Redis expires it, one takes it; then the publish.
    let evals = world.redis_calls("evalsha") + world.redis_calls("eval") - evals_before;
    assert!(evals <= 7, "{evals} scripts run while waiting for the lock");
}

#[test]
fn when_the_lock_holder_dies_the_waiters_wait_for_the_one_that_takes_over_not_each_alone() {
    let world = World::new();
    // The fleet lock lives 2 × 6 s + 1 s + 2 × 1 s = 15 s here.
    let config = world.config(
        "timeout = \"1s\"",
        "prefetch = false\ntimeout = \"6s\"\ntoken_wait = \"60s\"",
    );
    // Well within the token request's timeout: the takeover's request is still held (not
    // failed, which would put the fleet in backoff) all through it, and released in time.
    let window = Duration::from_secs(2);
    let mut holder = Replica::start(&world.write("holder.toml", &config));
    let waiters: Vec<Replica> = (0..3)
        .map(|i| Replica::start(&world.write(&format!("waiter{i}.toml"), &config)))
        .collect();

    // The holder takes the lock, its token request is held, and the waiters queue behind it.
    world.standin.hold_token_requests(true);
    let http = world.http.clone();
    let url = holder.app_url("/v1/x");
    let doomed = world.runtime.spawn(async move { http.try_get(&url).await });
    world.runtime.block_on(world.standin.wait_held(1));
    let waiting: Vec<_> = waiters
        .iter()
        .map(|w| {
            let (http, url) = (world.http.clone(), w.app_url("/v1/y"));
            world.runtime.spawn(async move { http.get(&url).await })
        })
        .collect();
    holder.kill();
    let _ = world.runtime.block_on(doomed);

    // Once the dead holder's lock expires, one waiter takes it over and sends a token request
    // (held too). The others wait for it: none goes alone because its own wait began earlier.
    world.runtime.block_on(world.standin.wait_token_requests(2));
    let third = world.runtime.block_on(async {
        tokio::time::timeout(window, world.standin.wait_token_requests(3)).await
    });
    assert!(
        third.is_err(),
        "a waiter sent its own token request while another replica held the lock"
    );
    world.standin.hold_token_requests(false);
    for reply in world.runtime.block_on(futures_join(waiting)) {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(
        world.standin.token_requests(),
        2,
        "the dead holder's, and one more"
    );
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Reply>>) -> Vec<Reply> {
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

#[test]
fn different_credentials_never_share_an_entry() {
    let world = World::new();
    // Same endpoint, same client id, another secret: a second entry, and each upstream keeps
    // getting the token of its own credentials.
    let trust = trust(&world.dir);
    let first = upstream_toml("api", &world.standin, &trust, "prefetch = false");
    let second = upstream_toml("wrong", &world.standin, &trust, "prefetch = false")
        .replace(&credentials(Api::NuvyNexus).secret, "another-secret");
    let config = format!(
        "[shared_cache]\nurl = \"{}\"\ntimeout = \"5s\"\n\n{first}\n{second}",
        world.redis.url()
    );
    let fleet = Fleet::start(2, |_| config.clone());
    for replica in &fleet.replicas {
        assert_eq!(world.get(replica, "/v1/x").status, 200);
        let wrong = world.runtime.block_on(
            world
                .http
                .get(&format!("http://{}/v1/x", replica.app_addr_of("wrong"))),
        );
        assert_eq!(
            wrong.status,
            502,
            "another secret gets no token: {}",
            wrong.text()
        );
    }
    // One for the right secret, one refused for the wrong one: the refusal is the fleet's
    // too, so the second replica does not ask again.
    assert_eq!(
        world.standin.token_requests_by_grant("client_credentials"),
        2
    );
    assert_eq!(entries(&world.redis).len(), 2);
}
