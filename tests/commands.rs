//! `nexus-sidecar check` and `nexus-sidecar token` against stand-ins: in-process through
//! `nexus_sidecar::cli`, and as the real binary with the stand-in answering from this process.
//! Neither command may print a secret, and `token` prints nothing but the token on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use nexus_sidecar::cli::{self, CheckOutcome, CliError};
use nexus_sidecar::standin::{Api, StandIn};
use nexus_sidecar::Config;
use support::{credentials, standin, upstream_toml, SECRET_MARK};

/// A good Nuvy Nexus upstream, a Quantoz one with a wrong client secret, a static token and a
/// `flow = "none"` upstream.
fn mixed_toml(nuvy: &StandIn, quantoz: &StandIn) -> String {
    let wrong = upstream_toml("quantoz", quantoz, "", "").replace(
        &credentials(Api::Quantoz).secret,
        &format!("{SECRET_MARK}-wrong"),
    );
    format!(
        "{}\n{wrong}\n{}",
        upstream_toml("nuvy", nuvy, "", ""),
        r#"
[[upstream]]
name = "internal"
listen = "127.0.0.1:0"
target = "http://127.0.0.1:9"
  [upstream.auth]
  flow = "static"
  token = "S3CRET-static-token"

[[upstream]]
name = "public"
listen = "127.0.0.1:0"
target = "http://127.0.0.1:9"
  [upstream.auth]
  flow = "none"
"#
    )
}

fn assert_no_secrets(text: &str, tokens: &[String]) {
    assert!(!text.contains(SECRET_MARK), "a secret leaked:\n{text}");
    for t in tokens {
        assert!(!text.contains(t.as_str()), "a token leaked:\n{text}");
    }
}

#[tokio::test]
async fn check_fetch_reports_each_upstream_and_fails_when_one_fails() {
    let (nuvy, quantoz) = (standin(Api::NuvyNexus).await, standin(Api::Quantoz).await);
    let config = Config::from_toml(&mixed_toml(&nuvy, &quantoz)).unwrap();
    let mut out = Vec::new();
    let outcome = cli::check(&config, true, &mut out).await.unwrap();
    let report = String::from_utf8(out).unwrap();

    assert_eq!(
        outcome,
        CheckOutcome::FetchFailed {
            upstreams: vec!["quantoz".into()]
        }
    );
    assert_eq!(outcome.exit_code(), 1);
    assert!(report.contains("\nnuvy: ok (token valid for "), "{report}");
    assert!(report.contains("\nquantoz: FAILED: the token endpoint refused the request (HTTP 400, invalid_client) [token_error=invalid_client]\n"), "{report}");
    assert!(
        report.contains("\ninternal: ok (static token)\n"),
        "{report}"
    );
    assert!(
        report.contains("\npublic: no token (flow = \"none\")\n"),
        "{report}"
    );
    assert_eq!(nuvy.token_requests(), 1);
    assert_eq!(quantoz.token_requests(), 1);
    assert_no_secrets(&report, &nuvy.issued_tokens());
    assert!(!report.contains("static-token"), "{report}");
}

#[tokio::test]
async fn check_fetch_gives_up_after_the_token_timeout() {
    let nuvy = standin(Api::NuvyNexus).await;
    nuvy.hold_token_requests(true);
    let toml = upstream_toml("nuvy", &nuvy, "", "timeout = \"200ms\"");
    let config = Config::from_toml(&toml).unwrap();
    let mut out = Vec::new();
    // Held forever by the stand-in: only the 200ms timeout can end this (the outer bound
    // only turns a hang into a failure).
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        cli::check(&config, true, &mut out),
    )
    .await
    .expect("check --fetch did not give up")
    .unwrap();
    let report = String::from_utf8(out).unwrap();
    assert_eq!(outcome.exit_code(), 1);
    assert!(
        report.contains("\nnuvy: FAILED: the token endpoint did not answer within 200ms\n"),
        "{report}"
    );
}

#[tokio::test]
async fn check_without_fetch_requests_no_token_and_warns_about_literal_secrets() {
    let (nuvy, quantoz) = (standin(Api::NuvyNexus).await, standin(Api::Quantoz).await);
    let config = Config::from_toml(&mixed_toml(&nuvy, &quantoz)).unwrap();
    let mut out = Vec::new();
    let outcome = cli::check(&config, false, &mut out).await.unwrap();
    let report = String::from_utf8(out).unwrap();
    assert_eq!(outcome, CheckOutcome::Valid);
    assert_eq!(nuvy.token_requests() + quantoz.token_requests(), 0);
    assert!(
        report.contains("# warning: `upstream.nuvy.auth.client_secret` is written"),
        "{report}"
    );
    assert_no_secrets(&report, &[]);
    // The whole report is TOML: warnings are comments, and the configuration loads again.
    let again = Config::from_toml(&report).unwrap();
    assert_eq!(again.upstreams.len(), 4);
}

#[tokio::test]
async fn check_masks_every_static_header_value() {
    let nuvy = standin(Api::NuvyNexus).await;
    let values = [
        format!("{SECRET_MARK}-api-key-value"),
        "plain-looking-value".to_owned(),
        "true".to_owned(),
    ];
    let headers = format!(
        "headers = {{ x-api-key = \"{}\", x-tenant = \"{}\", request_iso8601 = \"{}\" }}",
        values[0], values[1], values[2]
    );
    let config = Config::from_toml(&upstream_toml("nuvy", &nuvy, &headers, "")).unwrap();
    let mut out = Vec::new();
    cli::check(&config, false, &mut out).await.unwrap();
    let report = String::from_utf8(out).unwrap();
    assert!(
        report.contains(
            "headers = { request_iso8601 = \"***\", x-api-key = \"***\", x-tenant = \"***\" }"
        ),
        "{report}"
    );
    for value in &values {
        assert!(
            !report.contains(&format!("\"{value}\"")),
            "{value} leaked:\n{report}"
        );
    }
    assert_no_secrets(&report, &[]);
    // Masked, the report still loads, with the same header names.
    let again = Config::from_toml(&report).unwrap();
    assert_eq!(again.upstreams[0].headers.len(), 3);
    assert_eq!(again.upstreams[0].headers["x-api-key"], "***");
}

#[tokio::test]
async fn token_returns_a_fresh_token_or_says_why_not() {
    let (nuvy, quantoz) = (standin(Api::NuvyNexus).await, standin(Api::Quantoz).await);
    let config = Config::from_toml(&mixed_toml(&nuvy, &quantoz)).unwrap();

    let token = cli::token(&config, "nuvy").await.unwrap();
    assert_eq!(nuvy.issued_tokens(), [token.expose()]);
    assert_eq!(
        cli::token(&config, "internal").await.unwrap().expose(),
        "S3CRET-static-token"
    );

    let e = cli::token(&config, "nope").await.unwrap_err();
    assert!(matches!(e, CliError::UnknownUpstream { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 64);
    assert!(
        e.to_string().contains("nuvy, quantoz, internal, public"),
        "{e}"
    );

    let e = cli::token(&config, "public").await.unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert!(e.to_string().contains("does not use tokens"), "{e}");

    let e = cli::token(&config, "quantoz").await.unwrap_err();
    assert_eq!(e.exit_code(), 1);
    let text = e.to_string();
    assert!(
        text.contains("upstream `quantoz`") && text.contains("[token_error=invalid_client]"),
        "{text}"
    );
    assert_no_secrets(&text, &[]);
}

// --- The real binary. The stand-ins run on this test's runtime, so the child's token
// requests are answered while the test waits for it on a blocking thread.

fn write_config(tag: &str, text: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("nexus-commands-{tag}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary with `args` (and `NEXUS_SIDECAR_CONFIG` if given) off the runtime's threads.
async fn run(args: &[&str], config_env: Option<&PathBuf>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexus-sidecar"));
    command
        .args(args)
        .env_remove("NEXUS_SIDECAR_CONFIG")
        .env_remove("RUST_LOG");
    if let Some(path) = config_env {
        command.env("NEXUS_SIDECAR_CONFIG", path);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_prints_the_effective_configuration_and_exits_0() {
    let nuvy = standin(Api::NuvyNexus).await;
    let path = write_config("check", &upstream_toml("nuvy", &nuvy, "", ""));
    // The configuration comes from NEXUS_SIDECAR_CONFIG here.
    let out = run(&["check"], Some(&path)).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let again = Config::from_toml(&stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    assert_eq!(again.upstreams[0].name, "nuvy");
    for expected in [
        format!("token_url = \"{}\"", nuvy.token_url()),
        "client_secret = \"***\"".into(),
        "retry_on = [401]".into(),
        "max_replay_body = \"1MiB\"".into(),
        "min_refresh_interval = \"1s\"".into(),
        "allow_remote = false".into(),
        "\n[limits]\nmax_connections = 4096\n".into(),
        "max_buffered = \"64MiB\"".into(),
    ] {
        assert!(stdout.contains(&expected), "{expected}\n{stdout}");
    }
    assert_no_secrets(&format!("{stdout}{stderr}"), &[]);
    assert_eq!(nuvy.token_requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_fetch_exits_1_when_a_token_cannot_be_had() {
    let (nuvy, quantoz) = (standin(Api::NuvyNexus).await, standin(Api::Quantoz).await);
    let path = write_config("fetch", &mixed_toml(&nuvy, &quantoz));
    let out = run(
        &["check", "--fetch", "--config", path.to_str().unwrap()],
        None,
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("\nnuvy: ok (token valid for "), "{stdout}");
    assert!(
        stdout.contains("\nquantoz: FAILED: ") && stdout.contains("[token_error=invalid_client]"),
        "{stdout}"
    );
    assert_no_secrets(&format!("{stdout}{stderr}"), &nuvy.issued_tokens());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_on_a_bad_file_exits_64_naming_the_key_and_line() {
    let path = write_config(
        "bad",
        "[[upstream]]\nname = \"a\"\nlisten = \"8081\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"client_credentials\"\ntoken_url = \"https://x/token\"\nclient_id = \"id\"\n",
    );
    let out = run(&["check", "--config", path.to_str().unwrap()], None).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("line 5") && stderr.contains("upstream.a.auth.client_secret"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn token_prints_exactly_one_issued_token_on_stdout() {
    let nuvy = standin(Api::NuvyNexus).await;
    let path = write_config("token", &upstream_toml("nuvy", &nuvy, "", ""));
    let out = run(&["token", "nuvy", "--config", path.to_str().unwrap()], None).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let issued = nuvy.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(stdout, format!("{}\n", issued[0]));
    // Warnings (literal secrets) go to stderr, without the secrets or the token.
    assert!(stderr.contains("warning:"), "{stderr}");
    assert_no_secrets(&format!("{stdout}{stderr}"), &[]);
    assert_no_secrets(&stderr, &issued);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_for_an_unknown_name_exits_64_listing_the_known_names() {
    let nuvy = standin(Api::NuvyNexus).await;
    let path = write_config("unknown", &upstream_toml("nuvy", &nuvy, "", ""));
    let out = run(
        &["token", "nuvvy", "--config", path.to_str().unwrap()],
        None,
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("nuvvy") && stderr.contains("has: nuvy"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(nuvy.token_requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn help_teaches_every_command_and_version_prints_the_crate_version() {
    let out = run(&["--help"], None).await;
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in [
        "check",
        "--fetch",
        "token",
        "demo",
        "--config",
        "NEXUS_SIDECAR_CONFIG",
        "Examples:",
        "curl -H",
    ] {
        assert!(help.contains(needle), "{needle}\n{help}");
    }
    let out = run(&["--version"], None).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("nexus-sidecar {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&["chekc"], None).await;
    assert_eq!(out.status.code(), Some(64), "a usage error is EX_USAGE");
}
