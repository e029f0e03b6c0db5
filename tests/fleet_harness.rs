//! The multi-process harness itself (tests/support/redis.rs, tests/support/fleet.rs): a real
//! redis-server and a fleet of real sidecar processes, each shown to do what the
//! shared-token-cache tests will rely on, so a broken harness fails here first.
//!
//! The harness is synchronous; the stand-in runs on a tokio runtime the test owns, and the
//! test `block_on`s the async HTTP calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::ErrorKind;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use nexus_sidecar::standin::Api;
use support::fleet::{Fleet, Ground, Replica};
use support::redis::{read_value, Redis, Resp, RespValue};
use support::{credentials, temp_dir, upstream_toml, Http, PATIENCE, SECRET_MARK};

fn simple(s: &str) -> RespValue {
    RespValue::Simple(s.to_owned())
}

/// The message of a caught panic.
fn message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().unwrap().to_string(),
    }
}

#[test]
fn redis_starts_stores_shows_everything_and_comes_back_after_a_kill() {
    let mut redis = Redis::start();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.command(&["PING"]), simple("PONG"));

    let plain = format!("{SECRET_MARK}-plain");
    let in_hash = format!("{SECRET_MARK}-in-a-hash");
    assert_eq!(redis.command(&["SET", "k:string", &plain]), simple("OK"));
    assert_eq!(redis.command(&["GET", "k:string"]).text(), plain);
    assert_eq!(redis.command(&["GET", "k:absent"]), RespValue::Nil);
    let set = redis.command(&["HSET", "k:hash", "state", "fresh", "token", &in_hash]);
    assert_eq!(set.int(), 2);
    let wrong = redis.command(&["GET", "k:hash"]);
    assert!(
        matches!(&wrong, RespValue::Error(e) if e.starts_with("WRONGTYPE")),
        "{wrong:?}"
    );
    assert_eq!(redis.command(&["KEYS", "k:*"]).array().len(), 2);

    let all = redis.all_values();
    let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, [&b"k:hash"[..], b"k:string"], "{all:?}");
    assert_eq!(
        all[0].1,
        [&b"state"[..], b"fresh", b"token", in_hash.as_bytes()]
    );
    assert_eq!(all[1].1, [plain.as_bytes()]);

    let port = redis.port();
    redis.kill();
    let refused = redis.try_command(&["PING"]).expect_err("PING after a kill");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");

    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.command(&["PING"]), simple("PONG"));
    // No persistence: the restarted server is empty.
    assert_eq!(redis.command(&["DBSIZE"]).int(), 0);
    assert!(redis.all_values().is_empty());
}

#[test]
fn redis_with_a_password_answers_only_after_auth() {
    let redis = Redis::start_with_password("harness-pw");
    assert_eq!(
        redis.url(),
        format!("redis://:harness-pw@127.0.0.1:{}", redis.port())
    );
    assert_eq!(redis.command(&["PING"]), simple("PONG"));
    let anonymous = Resp::connect(redis.addr())
        .unwrap()
        .call(&["PING"])
        .unwrap();
    assert!(
        matches!(&anonymous, RespValue::Error(e) if e.starts_with("NOAUTH")),
        "{anonymous:?}"
    );
}

#[test]
fn the_resp_reader_decodes_every_reply_kind_and_refuses_a_cut_one() {
    let wire = b"*6\r\n+OK\r\n-ERR no\r\n:-42\r\n$-1\r\n*-1\r\n*2\r\n$4\r\na\r\nb\r\n$0\r\n\r\n";
    let value = read_value(&mut &wire[..]).unwrap();
    assert_eq!(
        value,
        RespValue::Array(vec![
            simple("OK"),
            RespValue::Error("ERR no".into()),
            RespValue::Integer(-42),
            RespValue::Nil,
            RespValue::Nil,
            RespValue::Array(vec![
                RespValue::Bulk(b"a\r\nb".to_vec()),
                RespValue::Bulk(Vec::new())
            ]),
        ])
    );
    let cut = read_value(&mut &b"*2\r\n:1\r\n"[..]).unwrap_err();
    assert_eq!(cut.kind(), ErrorKind::UnexpectedEof, "{cut}");
    let bad = read_value(&mut &b"$3\r\nabcd\r\n"[..]).unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidData, "{bad}");
}

/// The baseline the shared token cache changes: without it, every replica signs in on its
/// own, so five replicas make five token requests (with the cache: one).
#[test]
fn without_a_shared_cache_five_replicas_make_five_token_requests_one_each() {
    let ground = Ground::new("fleet-ca");
    let standin = ground.standin(Api::NuvyNexus, credentials(Api::NuvyNexus));
    let trust = ground.trust();

    let mut fleet = Fleet::start(5, |_| {
        let upstream = upstream_toml("api", &standin, &trust, "prefetch = false");
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{upstream}")
    });
    assert_eq!(standin.token_requests(), 0, "prefetch is off");

    let http = Http::default();
    for (i, replica) in fleet.replicas.iter().enumerate() {
        let reply = ground
            .runtime
            .block_on(http.get(&replica.app_url(&format!("/v1/accounts?r={i}"))));
        assert_eq!(reply.status, 200, "replica {i}: {}", reply.text());
        let ready = ground
            .runtime
            .block_on(http.get(&replica.admin_url("/readyz")));
        assert_eq!(ready.status, 200, "replica {i}: {}", ready.text());
    }
    assert_eq!(standin.token_requests(), 5);
    assert_eq!(standin.token_requests_by_grant("client_credentials"), 5);
    let mut tokens = standin.issued_tokens();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 5, "one token per replica");
    let seen = standin.seen();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|s| s.authorized), "{seen:?}");

    // A replica stopped by SIGTERM drains and exits 0; its log says so.
    let status = fleet.replicas[0].terminate();
    assert_eq!(status.code(), Some(0), "{:?}", fleet.replicas[0].lines());
    fleet.replicas[0].wait_for_line(|l| l.contains("all connections finished; bye"), PATIENCE);
    for replica in &fleet.replicas {
        let log = replica.lines().join("\n");
        assert!(!log.contains(SECRET_MARK), "a secret in a log:\n{log}");
    }
    drop(fleet);
    let _ = std::fs::remove_dir_all(&ground.dir);
}

#[test]
fn a_wait_fails_with_the_log_at_its_bound_or_when_the_process_is_gone() {
    let dir = temp_dir("replica");
    let config = dir.join("config.toml");
    let toml = "[log]\nformat = \"json\"\n\n[[upstream]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\ntarget = \"http://127.0.0.1:9\"\n  [upstream.auth]\n  flow = \"none\"\n";
    std::fs::write(&config, toml).unwrap();
    let mut replica = Replica::start(&config);
    assert_eq!(replica.app_addr(), replica.app_addr_of("api"));
    assert_ne!(replica.app_addr().port(), 0);

    let never = |l: &str| l.contains("a line nobody writes");
    let bound = Duration::from_millis(200);
    let late = catch_unwind(AssertUnwindSafe(|| replica.wait_for_line(never, bound)));
    let late = message(late.expect_err("a line nobody writes was found"));
    assert!(late.contains("within 200ms"), "{late}");
    assert!(
        late.contains("\"listening\""),
        "the log is in the message: {late}"
    );

    replica.kill();
    let gone = catch_unwind(AssertUnwindSafe(|| replica.wait_for_line(never, PATIENCE)));
    let gone = message(gone.expect_err("a line nobody writes was found"));
    assert!(gone.contains("exited (signal: 9"), "{gone}");
    let _ = std::fs::remove_dir_all(&dir);
}
