#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::Limits;

/// Every flow, a preset, each kind of secret, non-default timings and odd header names.
fn sample() -> String {
    // A directory per call: tests run in parallel, and one must not read a file another is
    // rewriting.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("nexus-show-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, "from-file\n").unwrap();
    let totp = dir.join("totp");
    std::fs::write(&totp, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\n").unwrap();
    let redis = dir.join("redis");
    std::fs::write(
        &redis,
        "rediss://:REDIS-PASSWORD@redis-host.internal:6380/2\n",
    )
    .unwrap();
    format!(
        r#"shutdown_grace = "90s"
[admin]
listen = "9901"
[log]
level = "nexus_sidecar=debug,hyper=info"
format = "json"
[limits]
max_connections = 100
idle_timeout = "90s"
max_buffered = "16MiB"
[shared_cache]
url = {{ file = "{redis}" }}
key_prefix = "team-a:prod"
timeout = "250ms"

[[upstream]]
name = "nuvy"
preset = "nuvy-nexus"
environment = "qa"
listen = "8081"
headers = {{ request_iso8601 = "true", "x.odd!" = "a \"quoted\" value", x-api-key = "HEADER-VALUE-1" }}
retry_on = [401, 403]
max_replay_body = "64KiB"
  [upstream.auth]
  client_id = {{ env = "PATH" }}
  client_secret = "LITERAL-VALUE-1"
  extra_params = {{ audience = "https://api.example" }}
  refresh_before = "90s"

[[upstream]]
name = "quantoz"
preset = "quantoz"
environment = "test"
listen = "[::1]:8083"
max_replay_body = "1000B"
  [upstream.auth]
  client_id = {{ file = "{file}" }}
  client_secret = {{ file = "{file}" }}
  timeout = "1500ms"
  prefetch = false
  shared = false
  token_wait = "250ms"

[[upstream]]
name = "nexudus"
preset = "nexudus"
target = "http://127.0.0.1:9/base/"
listen = "8084"
  [upstream.auth]
  username = {{ env = "PATH" }}
  password = "LITERAL-VALUE-2"
  totp_secret = {{ file = "{totp}" }}
  token_lifetime = "1h 30m"

[[upstream]]
name = "hub"
preset = "nexushub"
target = "https://api.nexushub.co"
listen = "8085"
  [upstream.auth]
  user_key = {{ env = "PATH" }}
  user_secret = {{ env = "PATH" }}

[[upstream]]
name = "static"
listen = "8086"
target = "https://internal.example/v2"
  [upstream.auth]
  flow = "static"
  token = "LITERAL-VALUE-3"

[[upstream]]
name = "public"
listen = "0.0.0.0:8087"
allow_remote = true
target = "https://public.example"
  [upstream.auth]
  flow = "none"
"#,
        file = file.display(),
        totp = totp.display(),
        redis = redis.display(),
    )
}

#[test]
fn the_effective_configuration_loads_again_into_the_same_upstreams() {
    let first = Config::from_toml(&sample()).unwrap();
    let printed = first.to_toml();
    let second = Config::from_toml(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    // Debug prints every setting, with secrets as their sources (literals masked).
    assert_eq!(
        format!("{:?}", first.upstreams),
        format!("{:?}", second.upstreams)
    );
    assert_eq!(format!("{:?}", first.log), format!("{:?}", second.log));
    assert_eq!(first.shutdown_grace, second.shutdown_grace);
    assert_eq!(first.limits, second.limits);
    assert_eq!(
        format!("{:?}", first.shared_cache),
        format!("{:?}", second.shared_cache)
    );
    assert_eq!(
        first.warnings, second.warnings,
        "allow_remote = true warns both times"
    );
    assert_eq!(
        first.admin.as_ref().map(|a| a.listen),
        second.admin.as_ref().map(|a| a.listen)
    );
    // Printing is stable: the second round prints the same text.
    assert_eq!(printed, second.to_toml());
}

#[test]
fn presets_are_expanded_defaults_filled_and_secrets_shown_by_source() {
    let printed = Config::from_toml(&sample()).unwrap().to_toml();
    for expected in [
        "target = \"https://qa.api.nuvy.ai\"",
        "token_url = \"https://qa.api.nuvy.ai/nexus/oauth2/token\"",
        "token_url = \"https://testidentity.quantoz.com/connect/token\"",
        "token_url = \"http://127.0.0.1:9/base/api/token\"",
        "auth_url = \"https://auth.nexushub.co/\"",
        "client_auth = \"body\"",
        "scope = \"api1\"",
        "client_id = { env = \"PATH\" }",
        "client_secret = \"***\"",
        "connect_timeout = \"5s\"",
        "request_timeout = \"1m\"",
        "max_replay_body = \"1MiB\"",
        "max_replay_body = \"64KiB\"",
        "max_replay_body = \"1000B\"",
        "token_lifetime = \"1h 30m\"",
        "timeout = \"1s 500ms\"",
        "retry_on = [401, 403]",
        "listen = \"[::1]:8083\"",
        "# refresh_before: ",
        "prefetch = true",
        "prefetch = false",
        "shared = true",
        "  prefetch = false\n  shared = false\n",
        "\n[shared_cache]\nurl = { file = \"",
        "\nkey_prefix = \"team-a:prod\"\ntimeout = \"250ms\"\n",
        "token_wait = \"5s\"",
        "token_wait = \"250ms\"",
        "\n[limits]\nmax_connections = 100\nheader_read_timeout = \"10s\"\nidle_timeout = \"1m 30s\"\nbody_read_timeout = \"30s\"\nmax_buffered = \"16MiB\"\n",
        "listen = \"0.0.0.0:8087\"\nallow_remote = true\n",
        "listen = \"127.0.0.1:8081\"\nallow_remote = false\n",
    ] {
        assert!(printed.contains(expected), "{expected}\n---\n{printed}");
    }
    assert!(printed.contains("client_id = { file = \""), "{printed}");
    for value in [
        "LITERAL-VALUE",
        "from-file",
        "GEZDGNBVGY3TQOJQ",
        "REDIS-PASSWORD",
        "redis-host",
    ] {
        assert!(!printed.contains(value), "{value} leaked:\n{printed}");
    }
}

#[test]
fn every_static_header_value_prints_masked() {
    let printed = Config::from_toml(&sample()).unwrap().to_toml();
    assert!(
        printed.contains(
            "headers = { request_iso8601 = \"***\", x-api-key = \"***\", \"x.odd!\" = \"***\" }"
        ),
        "{printed}"
    );
    for value in ["HEADER-VALUE", "quoted", "\"true\""] {
        assert!(!printed.contains(value), "{value} leaked:\n{printed}");
    }
}

#[test]
fn defaults_of_limits_print_too() {
    let c = Config::from_toml(
        "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"none\"\n",
    )
    .unwrap();
    let printed = c.to_toml();
    assert!(
        printed.contains("\n[limits]\nmax_connections = 4096\nheader_read_timeout = \"10s\"\nidle_timeout = \"1m\"\nbody_read_timeout = \"30s\"\nmax_buffered = \"64MiB\"\n"),
        "{printed}"
    );
    assert_eq!(
        Config::from_toml(&printed).unwrap().limits,
        Limits::default()
    );
}

#[test]
fn a_literal_redis_url_prints_as_its_scheme_and_the_mask_and_loads_again() {
    for (url, shown) in [
        (
            "redis://:hunter2@cache.internal:6379/1",
            "url = \"redis://***\"\n",
        ),
        (
            "REDISS://user:hunter2@cache.internal",
            "url = \"rediss://***\"\n",
        ),
    ] {
        let text = format!(
            "[shared_cache]\nurl = {url:?}\n[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"none\"\n"
        );
        let printed = Config::from_toml(&text).unwrap().to_toml();
        assert!(
            printed.contains(&format!(
                "\n[shared_cache]\n{shown}key_prefix = \"nexus-sidecar\"\ntimeout = \"500ms\"\n"
            )),
            "{printed}"
        );
        for part in ["hunter2", "cache.internal", "user"] {
            assert!(!printed.contains(part), "{part} leaked:\n{printed}");
        }
        let again = Config::from_toml(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again.to_toml(), printed);
    }
}

#[test]
fn without_a_shared_cache_check_says_so() {
    let c = Config::from_toml(
        "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"none\"\n",
    )
    .unwrap();
    let printed = c.to_toml();
    assert!(
        printed.contains("\n# [shared_cache]: not configured; each process keeps its own tokens\n"),
        "{printed}"
    );
    assert!(!printed.contains("\n[shared_cache]"), "{printed}");
}
