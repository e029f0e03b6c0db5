//! A fault soak of the token lifecycle end to end, modelled on a deployment where 21–25% of
//! requests failed: short-lived tokens, a token endpoint that fails and stalls on a seeded plan,
//! the protected API revoking every token at seeded moments, and eight clients sending GETs and
//! POSTs with bodies through one sidecar. Every figure is a count read from the stand-in's records,
//! joined per application request by `x-request-id`; nothing here asserts a timing.
//!
//! `cargo test --test soak -- --nocapture` prints the figures of the 15 s run;
//! `cargo test --test soak -- --ignored --nocapture` runs the 60 s one, that deployment's length.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nexus_sidecar::standin::{Api, Failure, Seen};
use support::*;
use tokio::time::{Instant, MissedTickBehavior};

/// The seed of everything the test decides: the fault plan, the revocation moments, each
/// client's methods, paths and bodies. The sidecar's own jitter is not seeded.
const SEED: u64 = 0x5eed_50a4;
const CLIENTS: usize = 8;
/// Application requests per run, whatever its length: the stand-in remembers the last 10 000
/// upstream attempts, and at most two per request must fit; it also keeps the run light on a
/// 2-core CI machine.
const MAX_REQUESTS: usize = 3000;
/// `expires_in` of every token.
const TOKEN_LIFETIME_SECS: u64 = 3;
/// The shortest time a token serves before the next refresh ahead: of a 3 s token the sidecar
/// retires the last 10% (0.3 s) and starts refreshing `refresh_before` (20% of the usable
/// 2.7 s, plus up to 10% of that as jitter: at most 0.66 s) before that, so no sooner than
/// 2.04 s after it was obtained (README, `refresh_before`).
const MIN_REFRESH_CYCLE: Duration = Duration::from_secs(2);
/// How many token requests the fault plan covers; the rest are answered normally.
const PLAN_LEN: usize = 400;
/// Share of planned token requests answered 500, and of those delayed by [`DELAY`].
const SHARE_500: f64 = 0.2;
const SHARE_DELAY: f64 = 0.1;
/// A slow but successful token endpoint, under the token request `timeout` below.
const DELAY: Duration = Duration::from_secs(2);
/// At most this many 500s in a row. The sidecar backs off 1 s, then 2 s (README, "Failures
/// back off"), so the worst case the plan allows, 500, 500, then a 2 s delayed success, takes
/// about 1 + 2 + 2 = 5 s plus round trips: inside `token_wait` (10 s), so no client request
/// can be failed by the plan alone. A third 500 would add a 4 s step and overrun it.
const MAX_500_RUN: usize = 2;
/// How many times every token is revoked during a run, at seeded moments.
const REVOCATIONS: RangeInclusive<usize> = 6..=9;
/// Token requests allowed beyond the accounting of [`token_request_bound`]; see there.
const SLACK: usize = 2;
/// The `[upstream.auth]` settings of that deployment: clients wait up to 10 s, a 401 on a token
/// younger than 200 ms waits for the interval, and one token request may take longer than the 2 s
/// delay.
const AUTH: &str = "min_refresh_interval = \"200ms\"\n\
                    token_wait = \"10s\"\n\
                    prefetch = true\n\
                    timeout = \"5s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_soak() {
    soak(Duration::from_secs(15)).await;
}

/// That deployment's own length, for a closer look: `-- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs 60 s"]
async fn fault_soak_long() {
    soak(Duration::from_secs(60)).await;
}

/// One application request and what came of it.
struct Sent {
    id: String,
    method: Method,
    path: String,
    body: Bytes,
    /// The reply, or why there was none.
    outcome: Result<Reply, String>,
}

/// The seeded fault plan: about 20% 500s and 10% 2 s delays, never more than
/// [`MAX_500_RUN`] 500s in a row (a 500 that would make one more is answered normally).
fn fault_plan(rng: &mut fastrand::Rng) -> Vec<Option<Failure>> {
    let mut plan = Vec::with_capacity(PLAN_LEN);
    let mut run = 0;
    for _ in 0..PLAN_LEN {
        let roll = rng.f64();
        let entry = if roll < SHARE_500 {
            (run < MAX_500_RUN).then_some(Failure::Status(500))
        } else if roll < SHARE_500 + SHARE_DELAY {
            Some(Failure::Delay(DELAY))
        } else {
            None
        };
        run = if entry == Some(Failure::Status(500)) {
            run + 1
        } else {
            0
        };
        plan.push(entry);
    }
    plan
}

/// Seeded moments, from the start, at which every token is revoked: spread over the middle 90%
/// of the run, in order.
fn revocation_moments(rng: &mut fastrand::Rng, duration: Duration) -> Vec<Duration> {
    let n = rng.usize(REVOCATIONS);
    let mut moments: Vec<Duration> = (0..n)
        .map(|_| duration.mul_f64(0.05 + 0.9 * rng.f64()))
        .collect();
    moments.sort();
    moments
}

/// A body unique to request `id`: its id, then `len` seeded bytes of every value.
fn body_of(id: &str, len: usize, rng: &mut fastrand::Rng) -> Bytes {
    let mut body = format!("{id}:").into_bytes();
    body.extend(std::iter::repeat_with(|| rng.u8(..)).take(len));
    Bytes::from(body)
}

/// One client: a request every `pace` until `duration` has passed or it has sent its share, each
/// waited for before the next (a slow one delays the client, as it did there).
async fn client(
    c: usize,
    base: String,
    started: Instant,
    duration: Duration,
    pace: Duration,
) -> Vec<Sent> {
    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut rng = fastrand::Rng::with_seed(SEED ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9));
    let mut tick = tokio::time::interval(pace);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sent = Vec::new();
    for i in 0..MAX_REQUESTS / CLIENTS {
        tick.tick().await;
        if started.elapsed() >= duration {
            break;
        }
        let id = format!("soak-{c}-{i}");
        let path = format!("/v1/soak/{c}/{i}?q={}", rng.u32(..));
        let (method, body) = if rng.bool() {
            let len = rng.usize(1..=4096);
            (Method::POST, body_of(&id, len, &mut rng))
        } else {
            (Method::GET, Bytes::new())
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("{base}{path}"))
            .header("x-request-id", &id)
            .body(Full::new(body.clone()))
            .unwrap();
        let outcome = match tokio::time::timeout(PATIENCE, http.request(request)).await {
            Ok(Ok(response)) => Ok(Reply::read(response).await),
            Ok(Err(error)) => Err(format!("no response: {error}")),
            Err(_) => Err(format!("no response within {PATIENCE:?}")),
        };
        sent.push(Sent {
            id,
            method,
            path,
            body,
            outcome,
        });
    }
    sent
}

/// The unavoidable race, proven from the stand-in's records: the request was replayed after a
/// 401, with a different token than its first attempt, and that replay token was revoked
/// between its issue and its use (issued here, revoked, not expired). Any other 401 that
/// reaches the application is the sidecar's fault.
fn excused(tries: &[&Seen]) -> bool {
    let [first, replay] = tries else {
        return false;
    };
    !first.authorized
        && !replay.authorized
        && replay.token.is_some()
        && replay.token != first.token
        && replay.token_epoch.is_some()
        && replay.revoked
        && !replay.expired
}

/// A few words on why a request that was not excused got `reply`: the sidecar's own error, or
/// the upstream's answer with what the stand-in knew of the last attempt's token.
fn reason(reply: &Reply, attempts: &[&Seen]) -> String {
    let status = reply.status.as_u16();
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&reply.body) {
        if json.get("upstream").is_some() {
            let what = json["error_description"].as_str().unwrap_or_default();
            // Up to the first colon: the kind of failure, not its details.
            let what = what.split(':').next().unwrap_or_default();
            return format!(
                "{status} {} ({what})",
                json["error"].as_str().unwrap_or_default()
            );
        }
    }
    let last = attempts.last().map_or("no attempt".to_string(), |a| {
        format!("revoked {}, expired {}", a.revoked, a.expired)
    });
    format!(
        "{status} from upstream after {} attempt(s), last {last}",
        attempts.len()
    )
}

/// What an attempt the stand-in saw differs in from what the application sent, if anything.
fn corruption(sent: &Sent, seen: &Seen) -> Option<String> {
    if seen.method != sent.method {
        return Some(format!("method {} became {}", sent.method, seen.method));
    }
    if seen.path_and_query != sent.path {
        return Some(format!("path {} became {}", sent.path, seen.path_and_query));
    }
    if seen.body != sent.body {
        return Some(format!(
            "body of {} bytes arrived as {} bytes, not byte for byte",
            sent.body.len(),
            seen.body.len()
        ));
    }
    None
}

/// What the echo of a 200 says differs from what was sent, if anything.
fn echo_mismatch(sent: &Sent, reply: &Reply) -> Option<String> {
    let echo: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
    let expected = serde_json::json!({
        "method": sent.method.as_str(),
        "path_and_query": sent.path,
        "body_len": sent.body.len(),
    });
    ["method", "path_and_query", "body_len"]
        .iter()
        .find(|k| echo[**k] != expected[**k])
        .map(|k| format!("echo {k}: {} (sent {})", echo[*k], expected[*k]))
}

/// The most token requests a correct sidecar makes in `elapsed`:
///
/// - one at start-up (`prefetch`), then at most one per [`MIN_REFRESH_CYCLE`] for refresh ahead
///   (a token replaced early for any reason below restarts that cycle, it never shortens it);
/// - one per revocation: the first 401 re-authenticates, every other one joins it or replays
///   on the token it brought (single flight, compare-and-invalidate);
/// - one per 500 the plan injected: each failed token request is retried once more. A delayed
///   request succeeds, and its token is issued after the delay, so it costs nothing extra.
///
/// [`SLACK`] covers refresh ahead overlapping a revocation: a refresh that was due for the
/// token being revoked and a re-authentication for that revocation's 401 both decided within
/// a token request's round trip; handled with perfect single flight they are one request,
/// but a refresh answered a moment before the revocation brings a token that is dead on
/// arrival and then needs its own re-authentication. That takes a revocation landing inside
/// a round trip of a due refresh, a few milliseconds of each 2 s cycle; 2 allows for it twice
/// in a run, while a sidecar that re-authenticated per 401, or retried without the plan
/// forcing it, would be over the bound by far more.
fn token_request_bound(elapsed: Duration, revocations: usize, failed: usize) -> usize {
    let cycles = (elapsed.as_millis() / MIN_REFRESH_CYCLE.as_millis()) as usize;
    cycles + 1 + revocations + failed + SLACK
}

/// What the records say of a run, request by request.
#[derive(Default)]
struct Tally {
    gets: usize,
    posts: usize,
    by_status: BTreeMap<String, usize>,
    /// Requests with two upstream attempts.
    replayed: usize,
    most_attempts: usize,
    excused_401: usize,
    /// Requests that did not get what they should have: one line each.
    failed: Vec<String>,
    /// Why, in a few words, with how many requests for each reason.
    reasons: BTreeMap<String, usize>,
    corrupted: Vec<String>,
    too_many_attempts: Vec<String>,
}

/// Joins each application request with its upstream attempts (by `x-request-id`) and judges it.
fn tally(sent: &[Sent], tries: &HashMap<&str, Vec<&Seen>>) -> Tally {
    let mut t = Tally::default();
    for x in sent {
        if x.method == Method::POST {
            t.posts += 1;
        } else {
            t.gets += 1;
        }
        let attempts: &[&Seen] = tries.get(x.id.as_str()).map_or(&[], Vec::as_slice);
        t.most_attempts = t.most_attempts.max(attempts.len());
        if attempts.len() == 2 {
            t.replayed += 1;
        }
        if attempts.len() > 2 {
            t.too_many_attempts
                .push(format!("{}: {} upstream attempts", x.id, attempts.len()));
        }
        t.corrupted.extend(
            attempts
                .iter()
                .filter_map(|a| corruption(x, a))
                .map(|what| format!("{} upstream: {what}", x.id)),
        );
        let reply = match &x.outcome {
            Ok(reply) => reply,
            Err(why) => {
                *t.by_status.entry("none".into()).or_default() += 1;
                *t.reasons.entry("no response".into()).or_default() += 1;
                t.failed.push(format!("{} {}: {why}", x.id, x.method));
                continue;
            }
        };
        *t.by_status.entry(reply.status.as_str().into()).or_default() += 1;
        match reply.status {
            StatusCode::OK => {
                if let Some(what) = echo_mismatch(x, reply) {
                    t.corrupted.push(format!("{}: {what}", x.id));
                }
                if !attempts.last().is_some_and(|a| a.authorized) {
                    *t.reasons.entry("200 unauthorized".into()).or_default() += 1;
                    t.failed
                        .push(format!("{}: 200 without an authorized attempt", x.id));
                }
            }
            StatusCode::UNAUTHORIZED if excused(attempts) => t.excused_401 += 1,
            status => {
                *t.reasons.entry(reason(reply, attempts)).or_default() += 1;
                let facts: Vec<String> = attempts
                    .iter()
                    .map(|a| {
                        format!(
                            "[authorized {} epoch {:?} revoked {} expired {}]",
                            a.authorized, a.token_epoch, a.revoked, a.expired
                        )
                    })
                    .collect();
                t.failed.push(format!(
                    "{} {}: {status} {} attempts {}",
                    x.id,
                    x.method,
                    reply.text().chars().take(200).collect::<String>(),
                    facts.join(" ")
                ));
            }
        }
    }
    t
}

/// The plan entries used, one character each: `.` normal, `5` a 500, `D` a delay.
fn plan_string(used: &[Option<Failure>]) -> String {
    used.iter()
        .map(|f| match f {
            None => '.',
            Some(Failure::Delay(_)) => 'D',
            Some(_) => '5',
        })
        .collect()
}

async fn soak(duration: Duration) {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let plan = fault_plan(&mut rng);
    let moments = revocation_moments(&mut rng, duration);
    let pace = duration / (MAX_REQUESTS / CLIENTS) as u32;

    // The load: a revoker on its seeded schedule and the paced clients, until they are done.
    let s = Arc::new(standin(Api::NuvyNexus).await);
    s.set_expires_in(Some(TOKEN_LIFETIME_SECS));
    s.plan_token_faults(plan.clone());
    let toml = upstream_toml("api", &s, "", AUTH);
    let started = Instant::now();
    let r = sidecar(&toml).await;
    let revoker = tokio::spawn({
        let s = s.clone();
        async move {
            for at in moments {
                tokio::time::sleep_until(started + at).await;
                s.revoke_all();
            }
        }
    });
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let base = r.url("api", "");
        clients.spawn(client(c, base, started, duration, pace));
    }
    let sent: Vec<Sent> = tokio::time::timeout(duration + 2 * PATIENCE, async {
        let mut all = Vec::new();
        while let Some(done) = clients.join_next().await {
            all.extend(done.unwrap());
        }
        all
    })
    .await
    .expect("the clients did not finish");
    revoker.abort();
    // Stopped, the sidecar makes no more token requests: `elapsed` covers every one counted.
    within("the sidecar to stop", r.stop()).await;
    let token_requests = s.token_requests();
    let elapsed = started.elapsed();

    // The figures.
    let revocations = s.revocations() as usize;
    let used = &plan[..s.planned_token_requests()];
    let injected_500 = used
        .iter()
        .filter(|f| matches!(f, Some(Failure::Status(_))))
        .count();
    let injected_delay = used
        .iter()
        .filter(|f| matches!(f, Some(Failure::Delay(_))))
        .count();
    let seen = s.seen();
    assert_eq!(
        seen.len(),
        s.api_requests(),
        "the stand-in forgot attempts; lower MAX_REQUESTS"
    );
    let mut tries = HashMap::<&str, Vec<&Seen>>::new();
    let mut untagged = 0;
    for x in &seen {
        match x.request_id() {
            Some(id) => tries.entry(id).or_default().push(x),
            None => untagged += 1,
        }
    }
    let expired_sent = seen.iter().filter(|x| x.expired).count();
    let t = tally(&sent, &tries);
    let bound = token_request_bound(elapsed, revocations, injected_500);

    println!(
        "fault soak, seed {SEED:#x}, {duration:?} planned, {elapsed:.1?} elapsed\n\
         requests: {} ({} GET, {} POST) from {CLIENTS} clients, by status {:?}\n\
         failed: {} ({:.1}%), excused 401s: {}, corrupted: {}, replayed: {}, \
         most upstream attempts for one request: {}\n\
         upstream attempts: {} ({untagged} without a request id, \
         {expired_sent} with an expired token)\n\
         token requests: {token_requests} (bound {bound}), plan entries used: {} ({}), \
         500s injected: {injected_500}, 2 s delays injected: {injected_delay}, \
         revocations: {revocations}",
        sent.len(),
        t.gets,
        t.posts,
        t.by_status,
        t.failed.len(),
        100.0 * t.failed.len() as f64 / sent.len().max(1) as f64,
        t.excused_401,
        t.corrupted.len(),
        t.replayed,
        t.most_attempts,
        seen.len(),
        used.len(),
        plan_string(used),
    );
    for (why, n) in &t.reasons {
        println!("  {n:>5} × {why}");
    }

    assert!(
        sent.len() >= CLIENTS * 10,
        "the clients hardly ran: {}",
        sent.len()
    );
    assert!(
        revocations >= *REVOCATIONS.start(),
        "{revocations} revocations"
    );
    // (1) Every request got 200, but for 401s that are the excusable race.
    assert!(
        t.failed.is_empty(),
        "{} of {} requests failed ({:?}), e.g.:\n{}",
        t.failed.len(),
        sent.len(),
        t.reasons,
        t.failed[..t.failed.len().min(3)].join("\n")
    );
    // (2) Every body and every echo as sent, byte for byte.
    assert!(t.corrupted.is_empty(), "{}", t.corrupted.join("\n"));
    // (3) Token requests within what lifetimes, revocations and injected failures account for.
    assert!(
        token_requests <= bound,
        "{token_requests} token requests, at most {bound} accounted for \
         ({elapsed:?}, {revocations} revocations, {injected_500} 500s injected)"
    );
    // (4) Never more than two upstream attempts for one application request.
    assert!(
        t.too_many_attempts.is_empty(),
        "{}",
        t.too_many_attempts.join("\n")
    );
    assert_eq!(
        untagged, 0,
        "every attempt carries the application's request id"
    );
}
