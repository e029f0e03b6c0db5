//! Fleet benchmark: how many token requests a fleet of real sidecar processes makes per token
//! lifetime, with and without the shared token cache. Not a test: it asserts nothing about the
//! figures, only that the run was sound (every request answered), and it is `#[ignore]`d.
//!
//! ```sh
//! cargo test --release --test fleet_bench -- --ignored --nocapture
//! ```
//!
//! It prints a Markdown table and writes it to `bench/results/fleet-<UTC timestamp>.md`.
//! Knobs (environment): `FLEET_BENCH_SIZES` (`1,5,20`), `FLEET_BENCH_LIFETIMES` (`5`).
//!
//! Each cell gets fresh processes: a Nuvy Nexus stand-in over TLS issuing [`LIFETIME`] tokens,
//! a real `redis-server` when the cache is shared, and N real replicas (the harness of
//! tests/fleet.rs). Two kinds of cell:
//!
//! - **steady**: `prefetch` on; once every replica is ready, [`REQUESTS_PER_SECOND`] GETs
//!   round-robin through the replicas for a fixed number of lifetimes, counting the token
//!   requests the stand-in receives in that window (the start-up ones are reported apart), and
//!   for the shared cache every command Redis ran (`INFO commandstats`, reset at the window's
//!   start).
//! - **cold start burst**: `prefetch` off, then [`BURST_PER_REPLICA`] concurrent GETs to every
//!   replica at once: the token requests a fleet's cold start costs.
//!
//! The shared cache runs with its defaults (`timeout = "500ms"`), as a deployment would: a
//! Redis too slow for them shows as `fallback` events, not as a test failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_sidecar::standin::{Api, StandIn};
use support::fleet::{trust, Fleet, Ground};
use support::redis::Redis;
use support::{credentials, upstream_toml, Http, PATIENCE};
use tokio::runtime::Runtime;
use tokio::time::MissedTickBehavior;

/// `expires_in` of every token the stand-in issues.
const LIFETIME: Duration = Duration::from_secs(6);
/// Of a 6 s token the sidecar retires the last 10% (0.6 s, under the 5 s cap), so it is usable
/// for 5.4 s, and starts refreshing `refresh_before` earlier: 20% of the lifetime (1.2 s) plus
/// 0–10% of that as jitter, on average 1.26 s (src/token/schedule.rs). One process alone thus
/// refreshes every 4.14 s on average: 1.45 token requests per lifetime.
const EXPECTED_PERIOD: Duration = Duration::from_millis(4140);
/// Lifetimes each steady cell runs, unless `FLEET_BENCH_LIFETIMES` says otherwise.
const DEFAULT_LIFETIMES: u32 = 5;
/// Fleet sizes, unless `FLEET_BENCH_SIZES` says otherwise.
const DEFAULT_SIZES: &[usize] = &[1, 5, 20];
/// The steady load of the whole fleet: light, so a 2-core machine running 20 replicas, Redis,
/// the stand-in and the load is far from saturated and the token figures are not skewed by it.
const REQUESTS_PER_SECOND: u32 = 20;
/// Concurrent requests per replica in a cold start burst.
const BURST_PER_REPLICA: usize = 10;

/// The sidecar's `shared_cache_events_total` labels, in the order the tables show them.
const EVENTS: [&str; 4] = ["miss", "hit", "lock_wait", "fallback"];

#[test]
#[ignore = "a benchmark of a few minutes: cargo test --release --test fleet_bench -- --ignored --nocapture"]
fn fleet_token_requests_per_lifetime() {
    let sizes = sizes();
    let lifetimes = lifetimes();
    let bench = Bench::new();
    let started = Instant::now();
    // Other work on the machine delays timers and Redis answers: the report says how busy it
    // was.
    let load_before = load_average();

    let mut steady = Vec::new();
    for &n in &sizes {
        for shared in [false, true] {
            let cell = bench.steady(n, shared, lifetimes);
            println!("{}", cell.row());
            steady.push(cell);
        }
    }
    let mut bursts = Vec::new();
    for &n in &sizes {
        for shared in [false, true] {
            let cell = bench.burst(n, shared);
            println!("{}", cell.row());
            bursts.push(cell);
        }
    }

    let load = format!("{load_before} at the start, {} at the end", load_average());
    let report = report(&steady, &bursts, lifetimes, started.elapsed(), &load);
    println!("\n{report}");
    let path = write_results(&report);
    println!("written to {}", path.display());

    // Sanity only: a request without an answer (a cut connection, a client error) means the
    // run itself went wrong, whatever the figures say. Non-200 answers are figures: reported.
    for cell in &steady {
        assert_eq!(cell.load.unanswered, 0, "{}", cell.row());
        assert!(cell.load.sent > 0, "{}", cell.row());
    }
    for cell in &bursts {
        assert_eq!(cell.load.unanswered, 0, "{}", cell.row());
    }
}

// --- The cells. -----------------------------------------------------------------------------

/// What every cell shares: the runtime the stand-ins live on, and the TLS they serve.
struct Bench {
    runtime: Runtime,
    tls: Arc<rustls::ServerConfig>,
    dir: PathBuf,
}

/// One cell's processes: they live until it is dropped.
struct World {
    standin: StandIn,
    redis: Option<Redis>,
    fleet: Fleet,
}

impl Bench {
    fn new() -> Bench {
        let Ground { runtime, dir, tls } = Ground::new("fleet-bench");
        Bench { runtime, tls, dir }
    }

    /// A fresh stand-in (and Redis, when `shared`), then `n` replicas on the same
    /// configuration, with `auth` lines added to `[upstream.auth]`.
    fn world(&self, n: usize, shared: bool, auth: &str) -> World {
        let standin = self
            .runtime
            .block_on(StandIn::start_tls(
                Api::NuvyNexus,
                credentials(Api::NuvyNexus),
                Arc::clone(&self.tls),
            ))
            .unwrap();
        standin.set_expires_in(Some(LIFETIME.as_secs()));
        let redis = shared.then(Redis::start);
        let trust = trust(&self.dir);
        // The defaults otherwise: `[shared_cache]` with only its url, the stand-in's
        // credentials as literals (they protect nothing).
        let cache = redis.as_ref().map_or(String::new(), |r| {
            format!("[shared_cache]\nurl = \"{}\"\n\n", r.url())
        });
        let config = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{cache}{}",
            upstream_toml("api", &standin, &trust, auth)
        );
        let fleet = Fleet::start(n, |_| config.clone());
        World {
            standin,
            redis,
            fleet,
        }
    }

    /// `prefetch` on and a steady load for `lifetimes` token lifetimes.
    fn steady(&self, n: usize, shared: bool, lifetimes: u32) -> Steady {
        let world = self.world(n, shared, "prefetch = true");
        let http = Http::default();
        self.wait_ready(&world, &http);

        // The window starts with every replica holding a token: what start-up cost is apart.
        let startup_token_requests = world.standin.token_requests();
        let events_before = self.events(&world, &http);
        if let Some(redis) = &world.redis {
            assert_eq!(redis.command(&["CONFIG", "RESETSTAT"]).text(), "OK");
        }
        let window = LIFETIME * lifetimes;
        let started = Instant::now();
        let load = self
            .runtime
            .block_on(steady_load(&world.fleet, &http, window));
        let elapsed = started.elapsed();
        let token_requests = world.standin.token_requests() - startup_token_requests;
        // After the counters, so that these reads are not counted.
        let redis_commands = world.redis.as_ref().map(commandstats);
        let events = self.events(&world, &http);
        let events = events
            .iter()
            .zip(&events_before)
            .map(|(after, before)| after - before)
            .collect();
        Steady {
            replicas: n,
            shared,
            elapsed,
            startup_token_requests,
            token_requests,
            load,
            redis_commands,
            events,
        }
    }

    /// `prefetch` off, then [`BURST_PER_REPLICA`] concurrent requests to every replica.
    fn burst(&self, n: usize, shared: bool) -> Burst {
        let world = self.world(n, shared, "prefetch = false");
        let http = Http::default();
        assert_eq!(world.standin.token_requests(), 0, "prefetch is off");
        if let Some(redis) = &world.redis {
            assert_eq!(redis.command(&["CONFIG", "RESETSTAT"]).text(), "OK");
        }
        let started = Instant::now();
        let load = self.runtime.block_on(burst_load(&world.fleet, &http));
        let elapsed = started.elapsed();
        let token_requests = world.standin.token_requests();
        let redis_commands = world.redis.as_ref().map(commandstats);
        let events = self.events(&world, &http);
        Burst {
            replicas: n,
            shared,
            elapsed,
            token_requests,
            load,
            redis_commands,
            events,
        }
    }

    /// Until every replica's `/readyz` is 200: each holds a token (its own, or the fleet's).
    fn wait_ready(&self, world: &World, http: &Http) {
        let deadline = Instant::now() + PATIENCE;
        for (i, replica) in world.fleet.replicas.iter().enumerate() {
            loop {
                let reply = self
                    .runtime
                    .block_on(http.get(&replica.admin_url("/readyz")));
                if reply.status == 200 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {i} not ready within {PATIENCE:?}: {}",
                    reply.text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The fleet's `shared_cache_events_total` for upstream "api", summed over the replicas,
    /// in the order of [`EVENTS`].
    fn events(&self, world: &World, http: &Http) -> Vec<u64> {
        let mut sums = vec![0; EVENTS.len()];
        for replica in &world.fleet.replicas {
            let text = self
                .runtime
                .block_on(http.get(&replica.admin_url("/metrics")))
                .text();
            for (sum, event) in sums.iter_mut().zip(EVENTS) {
                let series = format!(
                    "nexus_sidecar_shared_cache_events_total{{upstream=\"api\",event=\"{event}\"}} "
                );
                *sum += text
                    .lines()
                    .find_map(|l| l.strip_prefix(&series))
                    .map_or(0, |v| v.trim().parse::<u64>().unwrap());
            }
        }
        sums
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// --- The load. ------------------------------------------------------------------------------

/// What the application side sent and got.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    sent: usize,
    /// Answered 200.
    ok: usize,
    /// Answered, with another status.
    failed: usize,
    /// No answer at all: the connection failed or was cut.
    unanswered: usize,
}

impl Load {
    /// Tallies finished requests: a status, or `None` for a request that got no answer.
    fn tally(outcomes: impl IntoIterator<Item = Option<u16>>) -> Load {
        let mut load = Load::default();
        for outcome in outcomes {
            load.sent += 1;
            match outcome {
                Some(200) => load.ok += 1,
                Some(_) => load.failed += 1,
                None => load.unanswered += 1,
            }
        }
        load
    }
}

/// One GET, read to its end (so the connection goes back to the pool); `None` when there was
/// no answer (the client panics then, which its task turns into this).
fn get(set: &mut tokio::task::JoinSet<Option<u16>>, http: &Http, url: String) {
    let http = http.clone();
    set.spawn(async move {
        let task = tokio::spawn(async move { http.get(&url).await.status.as_u16() });
        task.await.ok()
    });
}

/// [`REQUESTS_PER_SECOND`] GETs, round-robin through the replicas, for `window`; each on a
/// task of its own, so a slow answer never slows the rate. Waits for the last answers.
async fn steady_load(fleet: &Fleet, http: &Http, window: Duration) -> Load {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / REQUESTS_PER_SECOND);
    // A late tick (a busy machine) is not made up for with a burst: the load stays steady.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut set = tokio::task::JoinSet::new();
    let end = tokio::time::Instant::now() + window;
    let mut i = 0usize;
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        let replica = &fleet.replicas[i % fleet.replicas.len()];
        get(
            &mut set,
            http,
            replica.app_url(&format!("/v1/accounts?i={i}")),
        );
        i += 1;
    }
    collect(set).await
}

/// [`BURST_PER_REPLICA`] GETs to every replica, all at once.
async fn burst_load(fleet: &Fleet, http: &Http) -> Load {
    let mut set = tokio::task::JoinSet::new();
    for (r, replica) in fleet.replicas.iter().enumerate() {
        for i in 0..BURST_PER_REPLICA {
            get(
                &mut set,
                http,
                replica.app_url(&format!("/v1/accounts?r={r}&i={i}")),
            );
        }
    }
    collect(set).await
}

/// Every outcome, within [`PATIENCE`]; a request still unanswered then counts as unanswered.
async fn collect(mut set: tokio::task::JoinSet<Option<u16>>) -> Load {
    let mut outcomes = Vec::new();
    let all = async {
        while let Some(outcome) = set.join_next().await {
            outcomes.push(outcome.ok().flatten());
        }
    };
    let _ = tokio::time::timeout(PATIENCE, all).await;
    let pending = set.len();
    let mut load = Load::tally(outcomes);
    load.sent += pending;
    load.unanswered += pending;
    load
}

/// Calls per command since the last `CONFIG RESETSTAT`, without the benchmark's own
/// (`CONFIG …`, `INFO`). Redis 7 names subcommands `script|load`: written `script load` here,
/// since a `|` would split a Markdown table's cell.
fn commandstats(redis: &Redis) -> BTreeMap<String, u64> {
    let info = redis.command(&["INFO", "commandstats"]).text();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let calls = rest.split(',').next()?.parse().ok()?;
            Some((name.replace('|', " "), calls))
        })
        .filter(|(name, _)| {
            let command = name.split(' ').next().unwrap_or_default();
            !matches!(command, "config" | "info")
        })
        .collect()
}

// --- Results. -------------------------------------------------------------------------------

struct Steady {
    replicas: usize,
    shared: bool,
    elapsed: Duration,
    startup_token_requests: usize,
    token_requests: usize,
    load: Load,
    redis_commands: Option<BTreeMap<String, u64>>,
    events: Vec<u64>,
}

struct Burst {
    replicas: usize,
    shared: bool,
    elapsed: Duration,
    token_requests: usize,
    load: Load,
    redis_commands: Option<BTreeMap<String, u64>>,
    events: Vec<u64>,
}

fn yes_no(shared: bool) -> &'static str {
    if shared {
        "yes"
    } else {
        "no"
    }
}

/// `miss 7 · hit 44 · …`, or `-` without the shared cache.
fn events_cell(shared: bool, events: &[u64]) -> String {
    if !shared {
        return "-".into();
    }
    let parts: Vec<String> = EVENTS
        .iter()
        .zip(events)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    parts.join(" · ")
}

/// The total and the commands by name, each divided by `per` (`-` without Redis).
fn redis_cells(commands: Option<&BTreeMap<String, u64>>, per: f64) -> (String, String) {
    let Some(commands) = commands else {
        return ("-".into(), "-".into());
    };
    let total: u64 = commands.values().sum();
    let mut by_calls: Vec<(&String, &u64)> = commands.iter().collect();
    by_calls.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let detail: Vec<String> = by_calls
        .iter()
        .map(|(name, n)| format!("{name} {:.1}", **n as f64 / per))
        .collect();
    (format!("{:.1}", total as f64 / per), detail.join(" · "))
}

impl Steady {
    fn lifetimes(&self) -> f64 {
        self.elapsed.as_secs_f64() / LIFETIME.as_secs_f64()
    }

    fn row(&self) -> String {
        let lifetimes = self.lifetimes();
        let per_lifetime = self.token_requests as f64 / lifetimes;
        let (redis, detail) = redis_cells(self.redis_commands.as_ref(), lifetimes);
        format!(
            "| {} | {} | {} | {:.1} | {} | **{:.2}** | {:.2} | {} | {} | {} | {} | {} |",
            self.replicas,
            yes_no(self.shared),
            self.startup_token_requests,
            lifetimes,
            self.token_requests,
            per_lifetime,
            per_lifetime / self.replicas as f64,
            self.load.sent,
            self.load.failed + self.load.unanswered,
            redis,
            detail,
            events_cell(self.shared, &self.events),
        )
    }
}

impl Burst {
    fn row(&self) -> String {
        let (redis, detail) = redis_cells(self.redis_commands.as_ref(), 1.0);
        format!(
            "| {} | {} | {} | **{}** | {} | {} | {} | {} | {} |",
            self.replicas,
            yes_no(self.shared),
            self.load.sent,
            self.token_requests,
            self.load.failed + self.load.unanswered,
            self.elapsed.as_millis(),
            redis,
            detail,
            events_cell(self.shared, &self.events),
        )
    }
}

fn report(
    steady: &[Steady],
    bursts: &[Burst],
    lifetimes: u32,
    took: Duration,
    load: &str,
) -> String {
    let mut out = String::new();
    let period = EXPECTED_PERIOD.as_secs_f64();
    let _ = writeln!(
        out,
        "# Fleet benchmark: token requests per token lifetime\n"
    );
    let _ = writeln!(
        out,
        "- commit `{}`; {} CPU(s), {}; ran {:.0} s; load average (1 min) {load}",
        command_output("git", &["describe", "--always", "--dirty"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        took.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "- token lifetime {} s (`expires_in`); one process alone refreshes every {period:.2} s on \
         average: {:.2} token requests per lifetime per replica without sharing",
        LIFETIME.as_secs(),
        LIFETIME.as_secs_f64() / period
    );
    let _ = writeln!(
        out,
        "- steady: `prefetch = true`, {REQUESTS_PER_SECOND} GET/s round-robin through the \
         replicas for {lifetimes} lifetimes, counted once every replica is ready; burst: \
         `prefetch = false`, {BURST_PER_REPLICA} concurrent GETs per replica"
    );
    let _ = writeln!(
        out,
        "- `[shared_cache]` with its defaults; Redis commands from `INFO commandstats` (without \
         the benchmark's own `CONFIG` and `INFO`); events: the replicas' \
         `shared_cache_events_total` summed\n"
    );
    let _ = writeln!(out, "## Steady load\n");
    let _ = writeln!(
        out,
        "| replicas | shared cache | start-up token requests | lifetimes | token requests | \
         per lifetime | per lifetime per replica | requests sent | failed | Redis cmds per \
         lifetime | by command, per lifetime | events |"
    );
    let _ = writeln!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for cell in steady {
        let _ = writeln!(out, "{}", cell.row());
    }
    let _ = writeln!(out, "\n## Cold start burst\n");
    let _ = writeln!(
        out,
        "| replicas | shared cache | concurrent requests | token requests | failed | burst (ms) \
         | Redis cmds | by command | events |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---|---|");
    for cell in bursts {
        let _ = writeln!(out, "{}", cell.row());
    }
    let _ = writeln!(
        out,
        "\n`failed`: answered with a status other than 200, or not answered at all."
    );
    out
}

/// Writes `report` to `bench/results/fleet-<UTC timestamp>.md`; the path.
fn write_results(report: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&dir).unwrap();
    let stamp = command_output("date", &["-u", "+%Y%m%dT%H%M%SZ"]);
    let path = dir.join(format!("fleet-{stamp}.md"));
    std::fs::write(&path, report).unwrap();
    path
}

/// A command's first line of output, or `unknown` (no git checkout, say).
fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines().next().map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average, from `/proc/loadavg`.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .next()
        .unwrap_or("unknown")
        .to_owned()
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(|| "CPU model unknown".into(), |(_, m)| m.trim().to_owned())
}

// --- Knobs. ---------------------------------------------------------------------------------

fn sizes() -> Vec<usize> {
    match std::env::var("FLEET_BENCH_SIZES") {
        Ok(text) => text
            .split(',')
            .map(|n| {
                let n = n
                    .trim()
                    .parse()
                    .expect("FLEET_BENCH_SIZES: numbers, as 1,5,20");
                assert!(n > 0, "FLEET_BENCH_SIZES: a fleet has at least one replica");
                n
            })
            .collect(),
        Err(_) => DEFAULT_SIZES.to_vec(),
    }
}

fn lifetimes() -> u32 {
    std::env::var("FLEET_BENCH_LIFETIMES").map_or(DEFAULT_LIFETIMES, |text| {
        let n = text
            .trim()
            .parse()
            .expect("FLEET_BENCH_LIFETIMES: a number");
        assert!(n > 0, "FLEET_BENCH_LIFETIMES: at least one");
        n
    })
}
