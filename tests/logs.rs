//! Logs (the README's "Logs"): one JSON line per request (upstream, method, path without query,
//! status, duration, whether replayed, request id), `x-request-id` carried both ways, and the token
//! events — read back from the log itself.
//!
//! Its own test binary: a process-wide JSON subscriber (installed once) writes into a buffer
//! that every test reads. Tests run in parallel, so each names its upstream differently and
//! looks only at its own lines; a line is in the buffer before the response that it describes
//! reaches the app, and waits for background events are woken by each write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod wire;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{Method, StatusCode};
use nexus_sidecar::logline::JsonLine;
use nexus_sidecar::standin::{Api, Credentials, StandIn};
use serde_json::Value;
use support::*;
use tokio::sync::watch;
use tracing::Level;

/// The in-memory log: bytes, and a counter bumped on each write so a test can wait for one.
#[derive(Clone)]
struct Capture {
    bytes: Arc<Mutex<Vec<u8>>>,
    writes: Arc<watch::Sender<u64>>,
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.lock().unwrap().extend_from_slice(buf);
        self.writes.send_modify(|n| *n += 1);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    /// Every complete line, parsed (each must be JSON).
    fn lines(&self) -> Vec<Value> {
        let text = self.text();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The lines of `upstream` whose message is `message`.
    fn events(&self, upstream: &str, message: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v["upstream"] == upstream && v["message"] == message)
            .collect()
    }

    /// Waits (bounded) until `upstream` has logged `message`; returns the first such line.
    async fn wait_for(&self, upstream: &str, message: &str) -> Value {
        let mut writes = self.writes.subscribe();
        within(&format!("{message:?} from {upstream}"), async {
            loop {
                if let Some(line) = self.events(upstream, message).into_iter().next() {
                    return line;
                }
                writes.changed().await.unwrap();
            }
        })
        .await
    }
}

/// The process-wide subscriber: INFO and above, JSON with fields flattened, as `main.rs` sets
/// up `format = "json"`.
fn capture() -> Capture {
    static GLOBAL: OnceLock<Capture> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let capture = Capture {
                bytes: Arc::default(),
                writes: Arc::new(watch::Sender::new(0)),
            };
            let writer = capture.clone();
            tracing_subscriber::fmt()
                .with_max_level(Level::INFO)
                .with_writer(move || writer.clone())
                .json()
                .event_format(JsonLine::default())
                .init();
            capture
        })
        .clone()
}

/// A Nuvy Nexus stand-in and a sidecar in front of it as upstream `name`.
/// Without `prefetch`: the token events these tests read are the ones requests set off.
async fn named_pair(name: &str, auth_extra: &str) -> (StandIn, Running) {
    let s = standin(Api::NuvyNexus).await;
    let auth_extra = format!("{auth_extra}\nprefetch = false");
    let r = sidecar(&upstream_toml(name, &s, "", &auth_extra)).await;
    (s, r)
}

fn request_id(reply: &Reply) -> &str {
    reply.headers["x-request-id"].to_str().unwrap()
}

/// The one `request` line of `upstream` with this request id.
fn request_line(log: &Capture, upstream: &str, id: &str) -> Value {
    let lines: Vec<Value> = log
        .events(upstream, "request")
        .into_iter()
        .filter(|v| v["request_id"] == id)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.into_iter().next().unwrap()
}

// --- One line per request. -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_line_with_its_path_but_not_its_query() {
    let log = capture();
    let (_s, r) = named_pair("one-line", "").await;
    let reply = Http::default()
        .get(&r.url("one-line", "/v1/things?secret_query=1"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let lines = log.events("one-line", "request");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/v1/things", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["duration_ms"].is_u64(), "{line}");
    assert_eq!(line["replayed"], false, "{line}");
    assert_eq!(line["request_id"], request_id(&reply), "{line}");
    assert!(
        !log.text().contains("secret_query"),
        "the query string is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_replayed_after_a_401_is_logged_as_replayed() {
    let log = capture();
    let (s, r) = named_pair("replayed", "min_refresh_interval = \"0s\"").await;
    let http = Http::default();
    let first = http.get(&r.url("replayed", "/v1/a")).await;
    assert_eq!(first.status, StatusCode::OK);
    s.revoke_all();
    let second = http.get(&r.url("replayed", "/v1/b")).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(s.token_requests(), 2);

    let line = request_line(&log, "replayed", request_id(&first));
    assert_eq!(line["replayed"], false, "{line}");
    let line = request_line(&log, "replayed", request_id(&second));
    assert_eq!(line["replayed"], true, "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["path"], "/v1/b", "{line}");
    assert_eq!(log.events("replayed", "request").len(), 2);
    let triggers: Vec<Value> = log
        .events("replayed", "token fetched")
        .into_iter()
        .map(|v| v["trigger"].clone())
        .collect();
    assert_eq!(triggers, ["no live token", "token rejected upstream"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_sidecar_fails_is_logged_as_failed_with_status_and_error() {
    let log = capture();
    // An upstream nothing listens on.
    let port = wire::closed_port().await;
    let r = sidecar(&format!(
        "[[upstream]]\nname = \"unreachable\"\nlisten = \"127.0.0.1:0\"\ntarget = \"http://127.0.0.1:{port}\"\n[upstream.auth]\nflow = \"static\"\ntoken = \"{SECRET_MARK}-static\"\n"
    ))
    .await;
    let reply = Http::default()
        .get(&r.url("unreachable", "/v1/x?q=1"))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    let lines = log.events("unreachable", "request failed");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(line["path"], "/v1/x", "{line}");
    assert_eq!(line["replayed"], false, "{line}");
    assert_eq!(line["request_id"], request_id(&reply), "{line}");
    assert!(
        line["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{line}"
    );
    assert!(log.events("unreachable", "request").is_empty());

    // CONNECT is refused by the sidecar itself.
    let (s, r) = named_pair("connect", "").await;
    let reply = wire::raw(
        r.addr("connect"),
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 405);
    let lines = log.events("connect", "request failed");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 405, "{}", lines[0]);
    assert_eq!(lines[0]["method"], "CONNECT", "{}", lines[0]);
    assert!(lines[0]["error"].is_string(), "{}", lines[0]);
    assert_eq!(s.api_requests() + s.token_requests(), 0);
    assert!(!log.text().contains(SECRET_MARK));
}

// --- x-request-id. ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_request_id_goes_upstream_and_back_unchanged() {
    let log = capture();
    let (s, r) = named_pair("app-id", "").await;
    let reply = Http::default()
        .send(
            Method::GET,
            &r.url("app-id", "/v1/with-id"),
            &[("x-request-id", "app-chosen-id-42")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.headers["x-request-id"], "app-chosen-id-42");
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    let upstream: Vec<_> = seen[0].headers.get_all("x-request-id").iter().collect();
    assert_eq!(upstream, ["app-chosen-id-42"]);
    request_line(&log, "app-id", "app-chosen-id-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_one_a_request_id_is_made_up_sent_upstream_returned_and_logged() {
    let log = capture();
    let (s, r) = named_pair("made-id", "").await;
    let http = Http::default();
    let reply = http.get(&r.url("made-id", "/v1/no-id")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let id = request_id(&reply).to_owned();
    assert_eq!(id.len(), 16, "{id}");
    assert!(
        id.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{id}"
    );
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-request-id"], id.as_str());
    let line = request_line(&log, "made-id", &id);
    assert_eq!(line["path"], "/v1/no-id");

    // Each request gets its own.
    let again = http.get(&r.url("made-id", "/v1/no-id")).await;
    assert_ne!(request_id(&again), id);
    assert_eq!(s.seen()[1].headers["x-request-id"], request_id(&again));
}

// --- Token events. ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_fetched_on_demand_is_logged_with_lifetime_and_trigger() {
    let log = capture();
    let (s, r) = named_pair("fetched", "").await;
    s.set_expires_in(Some(600));
    let reply = Http::default().get(&r.url("fetched", "/v1/x")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let lines = log.events("fetched", "token fetched");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["trigger"], "no live token", "{line}");
    let lifetime = line["lifetime"]
        .as_u64()
        .unwrap_or_else(|| panic!("{line}"));
    assert!((1..=600).contains(&lifetime), "{line}");
    assert_eq!(line["used_refresh_token"], false, "{line}");
    for token in s.issued_tokens() {
        assert!(!log.text().contains(&token), "a token in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_ahead_of_expiry_is_logged_as_token_refreshed() {
    let log = capture();
    // 4 s tokens and a `refresh_before` longer than that: the refresh is due at half the
    // usable life, with as long again before the token expires.
    let (s, r) = named_pair(
        "refreshed",
        "refresh_before = \"1h\"\nmin_refresh_interval = \"0s\"",
    )
    .await;
    s.set_expires_in(Some(4));
    let http = Http::default();
    let url = r.url("refreshed", "/v1/x");
    // The refresh starts on the first request once it is due; requests keep coming until the
    // log says it happened.
    let line = within("the refresh", async {
        loop {
            let reply = http.get(&url).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            if let Some(line) = log.events("refreshed", "token refreshed").pop() {
                return line;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(line["lifetime"].is_u64(), "{line}");
    assert_eq!(line["used_refresh_token"], false, "{line}");
    let fetched = log.events("refreshed", "token fetched");
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(fetched[0]["trigger"], "no live token");
    assert!(s.token_requests() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_request_is_logged_with_its_code_and_the_backoff() {
    let log = capture();
    let (s, r) = named_pair("refused", "").await;
    s.set_credentials(Credentials::new(
        "someone-else",
        format!("{SECRET_MARK}-other"),
    ));
    let reply = Http::default().get(&r.url("refused", "/v1/x")).await;
    assert!(!reply.status.is_success(), "{}", reply.text());

    let failed = log.wait_for("refused", "token request failed").await;
    assert_eq!(failed["level"], "WARN", "{failed}");
    assert_eq!(failed["token_error"], "invalid_client", "{failed}");
    assert_eq!(failed["trigger"], "no live token", "{failed}");
    assert!(failed["error"].is_string(), "{failed}");
    let backing_off = log.wait_for("refused", "backing off").await;
    let until = backing_off["until"]
        .as_str()
        .unwrap_or_else(|| panic!("{backing_off}"));
    humantime::parse_rfc3339(until).unwrap_or_else(|e| panic!("{e}: {backing_off}"));
    assert_eq!(backing_off["failures"], 1, "{backing_off}");
    assert!(log.events("refused", "token fetched").is_empty());
    assert!(!log.text().contains(SECRET_MARK), "a secret in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_token_endpoint_is_logged_with_its_whole_cause() {
    let log = capture();
    let s = standin(Api::NuvyNexus).await;
    let port = wire::closed_port().await;
    let toml = upstream_toml("unreachable-idp", &s, "", "prefetch = false").replace(
        &s.token_url(),
        &format!("http://127.0.0.1:{port}/oauth2/token"),
    );
    let r = sidecar(&toml).await;
    let reply = Http::default()
        .get(&r.url("unreachable-idp", "/v1/x"))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    let failed = log
        .wait_for("unreachable-idp", "token request failed")
        .await;
    let error = failed["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{failed}"));
    // Not just "client error (Connect)": the operating system's reason is there too.
    assert!(error.contains("Connect"), "{error}");
    assert!(error.to_lowercase().contains("refused"), "{error}");
}
