//! The shipped example configuration loads, and the binary refuses bad configurations with
//! exit code 64 before binding anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use nexus_sidecar::config::{Flow, FlowKind};
use nexus_sidecar::Config;
use support::temp_dir;

const EXAMPLE: &str = include_str!("../config.example.toml");

/// Every variable `config.example.toml` reads.
const ENV: [&str; 11] = [
    "NUVY_CLIENT_ID",
    "NUVY_LEGACY_CLIENT_ID",
    "NUVY_LEGACY_CLIENT_SECRET",
    "QUANTOZ_CLIENT_ID",
    "QUANTOZ_CLIENT_SECRET",
    "NEXUDUS_USERNAME",
    "NEXUDUS_PASSWORD",
    "NEXUDUS_TOTP_SECRET",
    "NEXUSHUB_USER_KEY",
    "NEXUSHUB_USER_SECRET",
    "INTERNAL_API_TOKEN",
];

#[test]
fn the_example_configuration_loads() {
    for var in ENV {
        // A valid base32 value serves every variable, the TOTP seed included.
        std::env::set_var(var, "JBSWY3DPEHPK3PXP");
    }
    // The one file secret lives under /run/secrets in production; here under a temp dir.
    let dir = temp_dir("example");
    std::fs::create_dir_all(dir.join("nuvy")).unwrap();
    std::fs::write(dir.join("nuvy/client_secret"), "from-a-file\n").unwrap();
    let text = EXAMPLE.replace("/run/secrets/", &format!("{}/", dir.display()));
    assert_eq!(text.matches(&*dir.display().to_string()).count(), 1);

    let config = Config::from_toml(&text).unwrap();
    let names: Vec<_> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "nuvy",
            "nuvy-legacy",
            "quantoz",
            "nexudus",
            "nexushub",
            "internal",
            "public"
        ]
    );
    let kinds: Vec<_> = config
        .upstreams
        .iter()
        .map(|u| u.auth.flow.kind())
        .collect();
    use FlowKind::*;
    assert_eq!(
        kinds,
        [
            ClientCredentials,
            ClientCredentials,
            ClientCredentials,
            Password,
            Nexushub,
            Static,
            None
        ]
    );
    let Flow::ClientCredentials(nuvy) = &config.upstreams[0].auth.flow else {
        unreachable!()
    };
    assert_eq!(nuvy.client.secret.value.expose(), "from-a-file");
    assert!(
        config.warnings.is_empty(),
        "no literal secrets: {:?}",
        config.warnings
    );
    // Every key of the README's configuration reference appears in the example, set or commented.
    for key in [
        "shutdown_grace",
        "[admin]",
        "listen",
        "[log]",
        "level",
        "format",
        "[limits]",
        "max_connections",
        "header_read_timeout",
        "idle_timeout",
        "body_read_timeout",
        "max_buffered",
        "name",
        "preset",
        "environment",
        "allow_remote",
        "target",
        "headers",
        "retry_on",
        "max_replay_body",
        "connect_timeout",
        "request_timeout",
        "ca_file",
        "flow",
        "token_url",
        "client_id",
        "client_secret",
        "client_auth",
        "scope",
        "extra_params",
        "refresh_before",
        "min_refresh_interval",
        "prefetch",
        "token_wait",
        "token_lifetime",
        "timeout",
        "username",
        "password",
        "totp_secret",
        "auth_url",
        "user_key",
        "user_secret",
        "token",
    ] {
        assert!(
            EXAMPLE.contains(&format!("{key} ")) || EXAMPLE.contains(key),
            "{key}"
        );
    }
    assert_eq!(config.limits, nexus_sidecar::config::Limits::default());
    assert!(config.upstreams.iter().all(|u| !u.allow_remote));
}

fn sidecar(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nexus-sidecar"))
        .args(args)
        .env_remove("NEXUS_SIDECAR_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn a_bad_configuration_exits_64_naming_the_key_and_line() {
    let dir = temp_dir("bad");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[upstream]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\ntarget = \"https://x\"\nretry = [401]\n",
    )
    .unwrap();
    let out = sidecar(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 5") && stderr.contains("unknown field `retry`"),
        "{stderr}"
    );
    assert!(stderr.contains("retry_on"), "says what is valid: {stderr}");
}

#[test]
fn every_problem_in_a_file_is_reported_at_once() {
    let dir = temp_dir("many");
    let path = dir.join("many.toml");
    std::fs::write(
        &path,
        "[limits]\nidle_timeout = \"0s\"\n\n[[upstream]]\nname = \"q\"\npreset = \"quantos\"\nlisten = \"0.0.0.0:8081\"\n[upstream.auth]\nclient_secert = { env = \"X\" }\n\n[[upstream]]\nname = \"n\"\npreset = \"nuvy\"\nenvironment = \"prod\"\nlisten = \"8082\"\n[upstream.auth]\nclient_id = { env = \"PATH\" }\nclient_secret = { env = \"PATH\" }\n",
    )
    .unwrap();
    let out = sidecar(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "line 2: `limits.idle_timeout`: must be greater than zero",
        "line 6: `upstream.q.preset`: unknown preset \"quantos\"; did you mean `quantoz`?",
        "line 7: `upstream.q.listen`: 0.0.0.0:8081 is not a loopback address",
        "line 9: `upstream.q.auth.client_secert`: unknown field `client_secert`; did you mean `client_secret`?",
        "line 14: `upstream.n.environment`: unknown environment \"prod\" for preset `nuvy`; did you mean `production`?",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
    assert_eq!(
        stderr.matches("\n  line ").count(),
        5,
        "nothing else: {stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn an_unset_secret_exits_64_before_binding() {
    let dir = temp_dir("unset");
    let path = dir.join("unset.toml");
    std::fs::write(
        &path,
        "[[upstream]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"static\"\ntoken = { env = \"NEXUS_CLI_TEST_UNSET_VAR\" }\n",
    )
    .unwrap();
    let out = sidecar(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NEXUS_CLI_TEST_UNSET_VAR"));
}

#[test]
fn no_configuration_exits_64_with_a_hint() {
    let out = sidecar(&[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}
