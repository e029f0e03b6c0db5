//! Secret values never appear in logs or responses (the README's "Secrets"). A whole scenario runs
//! through all five APIs — success, a 401 replay, credential errors, a Nexudus password reset whose
//! error text carries a reset token, TOTP sign-ins — with every log event at DEBUG captured, and
//! the capture is searched for each secret and each issued token.
//!
//! Its own test binary because the text test installs a process-wide subscriber (once). The
//! JSON test uses a subscriber scoped to its own thread instead (a current-thread runtime
//! keeps every task of that test on it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use nexus_sidecar::logline::{JsonLine, PlainLine};
use nexus_sidecar::standin::{Api, Credentials, StandIn};
use support::*;
use tracing::Level;

/// An in-memory log sink shared by every writer the subscriber makes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The process-wide text subscriber: everything at DEBUG and above, every target.
fn global_capture() -> Capture {
    static GLOBAL: OnceLock<Capture> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let capture = Capture::default();
            let writer = capture.clone();
            // As `main.rs` logs `format = "text"` to anything but a terminal.
            tracing_subscriber::fmt()
                .with_max_level(Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .event_format(PlainLine)
                .init();
            capture
        })
        .clone()
}

/// What must never show up, gathered as the scenario runs.
#[derive(Default)]
struct Forbidden(Vec<String>);

impl Forbidden {
    fn credentials(&mut self, c: &Credentials) {
        self.0.push(c.id.clone());
        self.0.push(c.secret.clone());
    }

    fn tokens(&mut self, s: &StandIn) {
        self.0.extend(s.issued_tokens());
    }

    fn assert_absent_from(&self, what: &str, text: &str) {
        assert!(
            !text.contains(SECRET_MARK),
            "{what} contains a secret:\n{text}"
        );
        assert!(!text.contains(TOTP_SEED), "{what} contains the TOTP seed");
        assert!(!text.contains("reset-"), "{what} contains a reset token");
        assert!(
            !text.contains("Basic "),
            "{what} contains Basic credentials"
        );
        for value in &self.0 {
            assert!(
                !text.contains(value.as_str()),
                "{what} contains {value:?}:\n{text}"
            );
        }
    }
}

/// Success, then a 401 (every token revoked) answered by a replay with a fresh token, then
/// rotated credentials at the API: the next re-authentication fails with a credential error.
async fn success_replay_and_credential_error(api: Api, forbidden: &mut Forbidden) {
    forbidden.credentials(&credentials(api));
    let (s, r) = pair_on_demand(api, "", "min_refresh_interval = \"0s\"").await;
    let http = Http::default();

    let ok = http.get(&r.url("api", "/v1/a")).await;
    assert_eq!(ok.status, 200, "{api:?}: {}", ok.text());

    s.revoke_all();
    let replayed = http.get(&r.url("api", "/v1/b")).await;
    assert_eq!(replayed.status, 200, "{api:?}: {}", replayed.text());
    assert_eq!(s.token_requests(), 2, "{api:?}");

    let rotated = Credentials::new(
        format!("id-{}-rotated", api.name()),
        format!("{SECRET_MARK}-{}-rotated", api.name()),
    );
    let rotated = match api {
        Api::Nexudus => rotated.with_totp(TOTP_SEED),
        _ => rotated,
    };
    forbidden.credentials(&rotated);
    s.set_credentials(rotated);
    s.invalidate_refresh_tokens();
    s.revoke_all();
    let failed = http.get(&r.url("api", "/v1/c")).await;
    assert_ne!(failed.status, 200, "{api:?}");
    forbidden.tokens(&s);
    forbidden.assert_absent_from(&format!("{api:?} response"), &failed.text());
    assert!(!s.issued_tokens().is_empty());
}

/// Nexudus demands a password reset; its error text holds a reset token.
async fn nexudus_password_reset(forbidden: &mut Forbidden) {
    let (s, r) = pair_on_demand(Api::Nexudus, "", "").await;
    s.require_password_reset(true);
    let reply = Http::default().get(&r.url("api", "/v1/reset")).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["token_error"], "must_reset_password");
    forbidden.assert_absent_from("password-reset response", &reply.text());
    assert_eq!(s.token_requests(), 1);
}

/// Every API's scenario with `capture` receiving the logs; then the capture is checked.
async fn scenario(capture: &Capture) {
    let mut forbidden = Forbidden::default();
    for api in [
        Api::NuvyNexus,
        Api::NuvyLegacy,
        Api::Quantoz,
        Api::Nexudus,
        Api::NexusHub,
    ] {
        success_replay_and_credential_error(api, &mut forbidden).await;
    }
    nexudus_password_reset(&mut forbidden).await;

    let log = capture.text();
    assert!(!log.is_empty());
    assert!(log.contains("token fetched"), "{log}");
    assert!(log.contains("token request failed"), "{log}");
    assert!(log.contains("must_reset_password"), "{log}");
    assert!(forbidden.0.len() > 20, "the scan has something to look for");
    forbidden.assert_absent_from("the log", &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_in_text_logs() {
    let capture = global_capture();
    scenario(&capture).await;
}

/// The `format = "json"` shape of `main.rs`, on this thread only.
#[tokio::test(flavor = "current_thread")]
async fn no_secret_or_token_in_json_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(Level::DEBUG)
        .with_writer(move || writer.clone())
        .json()
        .event_format(JsonLine::default())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    scenario(&capture).await;
    for line in capture.text().lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
}
