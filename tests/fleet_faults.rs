//! The shared token cache under faults, end to end: a real `redis-server` that hangs
//! (SIGSTOP) instead of dying, one that wants a password, and a reload that moves the fleet to
//! another key prefix. Real sidecar processes in front of one in-process token endpoint, as in
//! tests/fleet.rs (whose small setup is repeated here).
//!
//! Every wait is on an event (a log line, a held token request, a command seen by Redis's
//! `MONITOR`), bounded; nothing sleeps to let something happen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use nexus_sidecar::standin::Api;
use support::fleet::{Fleet, Replica, World};
use support::redis::{read_value, Redis, RespValue};
use support::{credentials, replace, Reply, PATIENCE};

/// How long a replica may take to find Redis again: its probe is spaced 1 s, then doubling up
/// to 30 s, and one probe may meet a connection that has to be made again first.
const RECOVERY: Duration = Duration::from_secs(75);

/// A Redis password that must never appear in a log or in `check`'s output.
const PASSWORD: &str = "rEd1s-pw-4f9c2e";
/// Another, wrong for the server.
const WRONG_PASSWORD: &str = "wr0ng-pw-81d7aa";

impl World {
    fn new(redis: Redis) -> World {
        World::start(
            "fleet-faults",
            Api::NuvyNexus,
            credentials(Api::NuvyNexus),
            redis,
        )
    }

    /// The replica's `/status` `shared_cache.state`.
    fn shared_state(&self, replica: &Replica) -> String {
        let status = self.get_admin(replica, "/status").json();
        status["shared_cache"]["state"]
            .as_str()
            .unwrap_or_else(|| panic!("no shared_cache state: {status}"))
            .to_owned()
    }

    /// How many clients are subscribed to `channel`.
    fn subscribers(&self, channel: &str) -> i64 {
        let reply = self.redis.command(&["PUBSUB", "NUMSUB", channel]);
        match reply.array() {
            [_, count] => count.int(),
            other => panic!("PUBSUB NUMSUB answered {other:?}"),
        }
    }
}

fn all_ok(replies: &[Reply]) {
    for reply in replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

/// [`all_ok`], showing every replica's log if a reply is not.
#[track_caller]
fn all_ok_in(fleet: &Fleet, replies: &[Reply]) {
    if let Some(reply) = replies.iter().find(|r| r.status != 200) {
        let logs: Vec<String> = fleet
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("replica {i}:\n{}", r.lines().join("\n")))
            .collect();
        panic!("{} {}\n{}", reply.status, reply.text(), logs.join("\n"));
    }
}

/// What a replica logs when its listener takes a token another replica announced.
const PICKED_UP: &str = "token taken from the shared cache (another replica obtained it)";

/// One token for the fleet, without a race: `first` obtains it (one request), and every other
/// replica takes it from the announcement (its `n`-th [`PICKED_UP`] line) before a request of
/// its own needs one. (A burst over replicas that need a token at once may cost the fleet a
/// second token request, depending on scheduling: a replica whose listener took the token
/// while its own token request waited for the lock sends that request all the same; see the
/// review. These tests are about other things, and do not race.)
fn share_one_token(world: &World, fleet: &Fleet, first: usize, n: usize) {
    let reply = world.get(&fleet.replicas[first], "/v1/first");
    assert_eq!(reply.status, 200, "{}", reply.text());
    for (i, replica) in fleet.replicas.iter().enumerate() {
        if i != first {
            replica.wait_for_lines(|l| l.contains(PICKED_UP), n, PATIENCE);
        }
    }
}

/// How many lines of the replica's log contain `text`.
fn count_lines(replica: &Replica, text: &str) -> usize {
    replica.lines().iter().filter(|l| l.contains(text)).count()
}

/// Every key in Redis (not their values), as text.
fn keys(redis: &Redis) -> Vec<String> {
    redis
        .all_values()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect()
}

// --- A Redis that hangs. --------------------------------------------------------------------

/// The pid of `redis`'s server: the child of this test process whose command line names the
/// port (`redis-server 127.0.0.1:PORT` once it runs, `--port PORT` before). The harness keeps
/// the process to itself, so it is found in /proc.
fn redis_pid(redis: &Redis) -> u32 {
    let (me, port) = (std::process::id(), redis.port());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid …`; the command name may hold spaces, not the last `)`.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent != Some(me) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let words: Vec<&str> = cmdline.split_whitespace().collect();
        let listens = words.contains(&format!("127.0.0.1:{port}").as_str())
            || words.windows(2).any(|w| w == ["--port", &port.to_string()]);
        if words.first().is_some_and(|w| w.ends_with("redis-server")) && listens {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "redis-server on port {port}: {found:?}");
    found[0]
}

fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Redis stopped with SIGSTOP: connections stay open and nothing is answered, as with a Redis
/// stuck on a slow command or behind a partition. Continued when dropped, so a failing test
/// leaves nothing stopped.
struct Hung(u32);

impl Hung {
    fn start(redis: &Redis) -> Hung {
        let pid = redis_pid(redis);
        kill("STOP", pid);
        Hung(pid)
    }

    /// SIGCONT: Redis answers again, everything queued meanwhile first.
    fn end(self) {}
}

impl Drop for Hung {
    fn drop(&mut self) {
        kill("CONT", self.0);
    }
}

/// A `MONITOR` connection: every command Redis runs, those of Lua scripts included
/// (`[0 lua] "SET" …`), one line each, as it runs them.
struct Monitor(BufReader<TcpStream>);

impl Monitor {
    fn start(redis: &Redis) -> Monitor {
        let mut stream = TcpStream::connect(redis.addr()).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.write_all(b"*1\r\n$7\r\nMONITOR\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        match read_value(&mut reader).unwrap() {
            RespValue::Simple(ok) if ok == "OK" => Monitor(reader),
            other => panic!("MONITOR answered {other:?}"),
        }
    }

    /// Reads on until a command line satisfies `pred`; that line. A read that waits longer
    /// than [`PATIENCE`] fails the test.
    #[track_caller]
    fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            match read_value(&mut self.0) {
                Ok(RespValue::Simple(line)) if pred(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("MONITOR: {e}"),
            }
        }
    }
}

/// Three replicas share a token; Redis hangs and the token is revoked: every request is still
/// answered with a token of each replica's own, the outage is logged once per replica and
/// `/status` shows it; Redis continues and every replica finds it back, still subscribed to
/// the fleet's announcements. Returns the token requests made so far.
fn hang_and_recover(world: &World, fleet: &Fleet) -> usize {
    share_one_token(world, fleet, 0, 1);
    all_ok(&world.burst(fleet, 2));
    assert_eq!(world.standin.token_requests(), 1, "shared before the hang");

    let hung = Hung::start(&world.redis);
    world.standin.revoke_all();
    all_ok(&world.burst(fleet, 4));
    assert_eq!(
        world.standin.token_requests(),
        1 + fleet.replicas.len(),
        "each replica obtained its own token, once"
    );
    for replica in &fleet.replicas {
        replica.wait_for_line(|l| l.contains("shared cache unavailable"), PATIENCE);
        assert_eq!(
            count_lines(replica, "shared cache unavailable"),
            1,
            "the outage is logged once, not per operation:\n{}",
            replica.lines().join("\n")
        );
        assert_eq!(world.shared_state(replica), "down");
        assert_eq!(world.get_admin(replica, "/readyz").status, 200);
    }
    // While it hangs, requests with a live token never wait for it.
    all_ok(&world.burst(fleet, 2));

    hung.end();
    for replica in &fleet.replicas {
        replica.wait_for_line(|l| l.contains("shared cache is back"), RECOVERY);
        assert_eq!(world.shared_state(replica), "up");
    }
    assert_eq!(
        world.subscribers("nexus-sidecar:changed"),
        i64::try_from(fleet.replicas.len()).unwrap(),
        "every replica still hears the fleet's announcements"
    );
    world.standin.token_requests()
}

#[test]
fn a_hung_redis_fails_no_request_and_the_outage_is_logged_once_per_replica() {
    let world = World::new(Redis::start());
    let fleet = {
        let config = world.config(
            "timeout = \"300ms\"",
            "prefetch = false\nmin_refresh_interval = \"100ms\"",
        );
        Fleet::start(3, |_| config.clone())
    };
    hang_and_recover(&world, &fleet);
}

#[test]
fn after_redis_restarts_every_replica_hears_the_fleets_announcements_again() {
    let mut world = World::new(Redis::start());
    let config = world.config(
        "timeout = \"300ms\"",
        "prefetch = false\nmin_refresh_interval = \"100ms\"",
    );
    let fleet = Fleet::start(3, |_| config.clone());
    all_ok(&world.burst(&fleet, 1));
    assert_eq!(world.subscribers("nexus-sidecar:changed"), 3);

    // Redis dies; every replica meets the outage on its next token request.
    world.redis.kill();
    world.standin.revoke_all();
    all_ok(&world.burst(&fleet, 2));
    for replica in &fleet.replicas {
        replica.wait_for_line(|l| l.contains("shared cache unavailable"), PATIENCE);
    }

    // It returns empty. A replica finds it back on a new connection, and the subscription
    // it made once is made again on that connection before anything runs on it.
    world.redis.restart();
    for replica in &fleet.replicas {
        replica.wait_for_line(|l| l.contains("shared cache is back"), RECOVERY);
    }
    assert_eq!(
        world.subscribers("nexus-sidecar:changed"),
        3,
        "every replica subscribed again after reconnecting"
    );
}

#[test]
fn after_a_hang_the_fleet_shares_again_and_a_revocation_costs_one_token_request() {
    let world = World::new(Redis::start());
    let fleet = {
        let config = world.config(
            "timeout = \"300ms\"",
            "prefetch = false\nmin_refresh_interval = \"100ms\"",
        );
        Fleet::start(3, |_| config.clone())
    };
    let before = hang_and_recover(&world, &fleet);

    world.standin.revoke_all();
    all_ok_in(&fleet, &world.burst(&fleet, 4));
    assert_eq!(
        world.standin.token_requests(),
        before + 1,
        "shared again: one token request for the fleet"
    );
}

#[test]
fn a_redis_that_hangs_while_a_replica_waits_for_anothers_token_request_fails_no_request() {
    let world = World::new(Redis::start());
    // The lock lives as long as a token request can: 2 × 1 s + 1 s. A Redis operation may
    // take 1 s.
    let config = world.config(
        "timeout = \"1s\"",
        "prefetch = false\ntimeout = \"1s\"\nmin_refresh_interval = \"100ms\"",
    );
    let holder = Replica::start(&world.write("holder.toml", &config));
    let waiter = Replica::start(&world.write("waiter.toml", &config));
    let mut monitor = Monitor::start(&world.redis);

    // The holder takes the fleet lock; its token request is held at the endpoint.
    world.standin.hold_token_requests(true);
    let (http, url) = (world.http.clone(), holder.app_url("/v1/held"));
    let held = world.runtime.spawn(async move { http.get(&url).await });
    world.runtime.block_on(world.standin.wait_held(1));

    // The waiter finds the lock taken (its acquire script reads the lock's PTTL, which only
    // a replica that did not get the lock does) and waits for the announcement.
    let (http, url) = (world.http.clone(), waiter.app_url("/v1/waiting"));
    let waiting = world.runtime.spawn(async move { http.get(&url).await });
    monitor.wait_for(|l| l.contains(" lua] \"PTTL\""));

    // Redis hangs; the holder's token arrives, and its write to Redis cannot happen.
    let hung = Hung::start(&world.redis);
    world.standin.hold_token_requests(false);
    let reply = world.runtime.block_on(held).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());

    // The waiter never hears of it: whatever it does next, Redis must not fail its request.
    let reply = world.runtime.block_on(waiting).unwrap();
    hung.end();
    assert_eq!(
        reply.status,
        200,
        "{}\nwaiter:\n{}",
        reply.text(),
        waiter.lines().join("\n")
    );
}

// --- A Redis with a password. ---------------------------------------------------------------

/// `nexus-sidecar check --fetch --config PATH`: its exit status and its stdout and stderr.
fn check_fetch(config: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nexus-sidecar"))
        .args(["check", "--fetch", "--config", config.to_str().unwrap()])
        .env_remove("NEXUS_SIDECAR_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_not_in_logs(fleet: &Fleet, secret: &str) {
    for replica in &fleet.replicas {
        let log = replica.lines().join("\n");
        assert!(!log.contains(secret), "the Redis password in a log:\n{log}");
    }
}

#[test]
fn with_the_redis_password_in_the_url_the_fleet_shares_and_never_shows_it() {
    let world = World::new(Redis::start_with_password(PASSWORD));
    assert!(world.redis.url().contains(PASSWORD));
    let config = world.config("timeout = \"5s\"", "prefetch = false");
    let fleet = Fleet::start(3, |_| config.clone());

    share_one_token(&world, &fleet, 0, 1);
    all_ok(&world.burst(&fleet, 4));
    assert_eq!(
        world.standin.token_requests(),
        1,
        "one token request for the fleet"
    );
    for replica in &fleet.replicas {
        assert_eq!(world.shared_state(replica), "up");
    }
    assert_eq!(keys(&world.redis).len(), 1, "one entry, no lock left");
    assert_not_in_logs(&fleet, PASSWORD);

    let (ok, stdout, stderr) = check_fetch(&world.write("check.toml", &config));
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("\nshared_cache: ok (Redis answered)\n"),
        "{stdout}"
    );
    let both = format!("{stdout}{stderr}");
    assert!(!both.contains(PASSWORD), "the password in check:\n{both}");
}

#[test]
fn a_wrong_redis_password_fails_no_request_and_shows_only_as_down() {
    let world = World::new(Redis::start_with_password(PASSWORD));
    let url = format!("redis://:{WRONG_PASSWORD}@127.0.0.1:{}", world.redis.port());
    let config = world.config_on(&url, "timeout = \"5s\"", "prefetch = false");
    let fleet = Fleet::start(2, |_| config.clone());

    all_ok(&world.burst(&fleet, 3));
    assert_eq!(
        world.standin.token_requests(),
        fleet.replicas.len(),
        "each replica on its own, once"
    );
    for replica in &fleet.replicas {
        let line = replica.wait_for_line(|l| l.contains("shared cache unavailable"), PATIENCE);
        assert_eq!(
            count_lines(replica, "shared cache unavailable"),
            1,
            "{line}"
        );
        assert_eq!(world.shared_state(replica), "down");
        assert_eq!(world.get_admin(replica, "/readyz").status, 200);
    }
    assert_not_in_logs(&fleet, WRONG_PASSWORD);
    assert!(keys(&world.redis).is_empty(), "nothing written");

    let (ok, stdout, stderr) = check_fetch(&world.write("check.toml", &config));
    assert!(!ok, "check must fail:\n{stdout}\n{stderr}");
    assert!(stdout.contains("\nshared_cache: FAILED: "), "{stdout}");
    assert!(stdout.contains("\napi: ok (token valid for "), "{stdout}");
    let both = format!("{stdout}{stderr}");
    assert!(
        !both.contains(WRONG_PASSWORD),
        "the password in check:\n{both}"
    );
}

#[test]
fn replicas_find_redis_back_once_it_accepts_their_password() {
    let world = World::new(Redis::start_with_password(PASSWORD));
    // The replicas already have the rotated password; Redis not yet.
    let url = format!("redis://:{WRONG_PASSWORD}@127.0.0.1:{}", world.redis.port());
    let config = world.config_on(
        &url,
        "timeout = \"5s\"",
        "prefetch = false\nmin_refresh_interval = \"100ms\"",
    );
    let fleet = Fleet::start(2, |_| config.clone());
    all_ok(&world.burst(&fleet, 1));
    for replica in &fleet.replicas {
        replica.wait_for_line(|l| l.contains("shared cache unavailable"), PATIENCE);
        let metrics = world.get_admin(replica, "/metrics").text();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("nexus_sidecar_shared_cache_errors_total{kind=\"auth\"}")),
            "a refused password is counted as kind=\"auth\":\n{metrics}"
        );
    }

    // Redis takes the new password (on a connection authenticated with the old one).
    let reply = world
        .redis
        .command(&["CONFIG", "SET", "requirepass", WRONG_PASSWORD]);
    assert_eq!(reply, RespValue::Simple("OK".into()));
    for replica in &fleet.replicas {
        replica.wait_for_line(|l| l.contains("shared cache is back"), RECOVERY);
    }
    let before = world.standin.token_requests();
    world.standin.revoke_all();
    all_ok(&world.burst(&fleet, 3));
    assert_eq!(world.standin.token_requests(), before + 1, "shared again");
}

// --- A reload that moves the fleet. ---------------------------------------------------------

#[test]
fn a_reload_to_another_key_prefix_keeps_serving_and_shares_under_the_new_prefix() {
    let world = World::new(Redis::start());
    let auth = "prefetch = false\nmin_refresh_interval = \"100ms\"";
    let old = world.config("timeout = \"5s\"\nkey_prefix = \"fleet-a\"", auth);
    let fleet = Fleet::start(2, |_| old.clone());
    share_one_token(&world, &fleet, 0, 1);
    assert_eq!(world.standin.token_requests(), 1);
    let before = keys(&world.redis);
    assert_eq!(before.len(), 1, "{before:?}");
    let name = before[0]
        .strip_prefix("fleet-a:")
        .unwrap_or_else(|| panic!("not under the old prefix: {before:?}"))
        .to_owned();
    let version = |key: &str| world.redis.command(&["HGET", key, "v"]);
    let old_version = version(&before[0]);

    let new = world.config("timeout = \"5s\"\nkey_prefix = \"fleet-b\"", auth);
    assert_ne!(old, new);
    for replica in &fleet.replicas {
        replace(replica.config_path(), &new);
        replica.signal("HUP");
        let line = replica.wait_for_line(
            |l| l.contains("configuration reloaded") || l.contains("reload refused"),
            PATIENCE,
        );
        assert!(line.contains("configuration reloaded"), "{line}");
    }

    // The token survives the move: no token request, and every request answered.
    all_ok(&world.burst(&fleet, 2));
    assert_eq!(world.standin.token_requests(), 1, "the held token was kept");

    // The next token request is the fleet's, under the new prefix (same entry name: the
    // credentials did not change), and announced on the new prefix's channel: the other
    // replica takes that token, and needs no token request of its own.
    world.standin.revoke_all();
    share_one_token(&world, &fleet, 0, 2);
    assert_eq!(world.standin.token_requests(), 2);
    all_ok(&world.burst(&fleet, 3));
    assert_eq!(
        world.standin.token_requests(),
        2,
        "one token request for the fleet, under the new prefix"
    );
    let mut after = keys(&world.redis);
    after.sort();
    assert_eq!(
        after,
        [format!("fleet-a:{name}"), format!("fleet-b:{name}")],
        "the new entry, and no lock left"
    );
    assert_eq!(
        version(&before[0]),
        old_version,
        "nothing wrote the old entry"
    );
}
