//! Operations end to end, in process: admin probes and their transitions, metrics that move,
//! reloads (requested, and on a rotated secret file) that fail no request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nexus_sidecar::standin::{Api, Credentials, StandIn};
use nexus_sidecar::{Config, Sidecar};
use support::*;
use tokio::sync::{mpsc, oneshot, watch};

/// Requests that keep flowing while a test changes things under them, a new connection every
/// five requests (so both new and kept-alive connections see the change).
struct Load {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<u16>>,
}

impl Load {
    fn start(url: String) -> Load {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !*stopped.borrow_and_update() {
                let http = Http::default();
                for _ in 0..5 {
                    statuses.push(http.get(&url).await.status.as_u16());
                }
            }
            statuses
        });
        Load { stop, task }
    }

    /// Stops the load; the status of every request it made.
    async fn finish(self) -> Vec<u16> {
        self.stop.send(true).unwrap();
        self.task.await.unwrap()
    }
}

/// A NuvyNexus upstream whose credentials are read from `dir/client_id` and
/// `dir/client_secret`, with the admin listener on a free port. Tokens are fetched on demand and
/// no request waits out a backoff, so the counts below follow request by request.
fn file_config(s: &StandIn, dir: &Path, extra: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[upstream]]
name = "api"
listen = "127.0.0.1:0"
target = "{target}"
{extra}
[upstream.auth]
flow = "client_credentials"
token_url = "{token_url}"
client_id = {{ file = "{dir}/client_id" }}
client_secret = {{ file = "{dir}/client_secret" }}
min_refresh_interval = "0s"
prefetch = false
token_wait = "0s"
"#,
        target = s.base_url(),
        token_url = s.token_url(),
        dir = dir.display(),
    )
}

fn write_credentials(dir: &Path, c: &Credentials) {
    replace(&dir.join("client_id"), &format!("{}\n", c.id));
    replace(&dir.join("client_secret"), &format!("{}\n", c.secret));
}

struct Ops {
    app: String,
    admin: String,
    reloads: watch::Receiver<nexus_sidecar::server::ReloadCount>,
    reload: mpsc::Sender<()>,
    _stop: oneshot::Sender<()>,
}

async fn start(config: &Config, path: Option<PathBuf>) -> Ops {
    let mut sidecar = Sidecar::bind(config).await.unwrap();
    if let Some(path) = path {
        sidecar = sidecar.reload_from(path);
    }
    let app = format!("http://{}", sidecar.local_addr("api").unwrap());
    let admin = format!("http://{}", sidecar.admin_addr().unwrap());
    let reloads = sidecar.reloads();
    let (reload, reload_rx) = mpsc::channel(4);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(sidecar.run_with_reloads(
        async {
            let _ = stopped.await;
        },
        reload_rx,
    ));
    Ops {
        app,
        admin,
        reloads,
        reload,
        _stop: stop,
    }
}

/// Waits (bounded) until `n` reloads have been applied.
async fn applied(ops: &mut Ops, n: u64) {
    tokio::time::timeout(
        Duration::from_secs(20),
        ops.reloads.wait_for(|c| c.applied >= n),
    )
    .await
    .expect("the reload did not happen")
    .unwrap();
}

fn no_secrets(text: &str, s: &StandIn) {
    assert!(!text.contains(SECRET_MARK), "{text}");
    for token in s.issued_tokens() {
        assert!(!text.contains(&token), "a token leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_a_credential_error_and_a_fixed_secret_file() {
    let s = standin(Api::NuvyNexus).await;
    let dir = temp_dir("probes");
    write_credentials(&dir, &credentials(Api::NuvyNexus));
    let config = Config::from_toml(&file_config(&s, &dir, "")).unwrap();
    let mut ops = start(&config, None).await;
    let http = Http::default();

    let health = http.get(&format!("{}/healthz", ops.admin)).await;
    assert_eq!(
        (health.status.as_u16(), health.text().as_str()),
        (200, "ok\n")
    );
    let ready = http.get(&format!("{}/readyz", ops.admin)).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["upstreams"]["api"]["state"], "idle");

    assert_eq!(http.get(&format!("{}/v1/x", ops.app)).await.status, 200);
    let ready = http.get(&format!("{}/readyz", ops.admin)).await;
    assert_eq!(
        (
            ready.status.as_u16(),
            ready.json()["upstreams"]["api"]["state"].clone()
        ),
        (200, "live".into())
    );
    let status = http.get(&format!("{}/status", ops.admin)).await;
    let api = &status.json()["upstreams"][0];
    assert_eq!(api["name"], "api");
    assert_eq!(api["flow"], "client_credentials");
    assert_eq!(api["token_endpoint"], s.token_url());
    assert_eq!(api["last_fetch"]["outcome"], "success");
    assert!(api["expires_in_seconds"].as_u64().unwrap() > 3000);
    no_secrets(&status.text(), &s);

    // The endpoint stops accepting our secret and the API forgets our token.
    let rotated = Credentials::new(
        format!("id-{}", Api::NuvyNexus.name()),
        format!("{SECRET_MARK}-rotated"),
    );
    s.set_credentials(rotated.clone());
    s.revoke_all();
    let failed = http.get(&format!("{}/v1/x", ops.app)).await;
    assert_eq!(failed.status, 502);
    assert_eq!(failed.json()["token_error"], "invalid_client");
    let ready = http.get(&format!("{}/readyz", ops.admin)).await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json()["upstreams"]["api"]["state"],
        "credential_error"
    );
    assert_eq!(
        ready.json()["upstreams"]["api"]["token_error"],
        "invalid_client"
    );
    no_secrets(&ready.text(), &s);

    // The operator fixes the secret file: noticed without a signal, and ready again.
    write_credentials(&dir, &rotated);
    applied(&mut ops, 1).await;
    let ready = http.get(&format!("{}/readyz", ops.admin)).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(http.get(&format!("{}/v1/x", ops.app)).await.status, 200);
    let ready = http.get(&format!("{}/readyz", ops.admin)).await;
    assert_eq!(ready.json()["upstreams"]["api"]["state"], "live");
    no_secrets(&http.get(&format!("{}/status", ops.admin)).await.text(), &s);
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn metrics_move_with_requests_token_fetches_and_replays() {
    let s = standin(Api::NuvyNexus).await;
    let dir = temp_dir("metrics");
    write_credentials(&dir, &credentials(Api::NuvyNexus));
    let config = Config::from_toml(&file_config(&s, &dir, "")).unwrap();
    let ops = start(&config, None).await;
    let http = Http::default();
    let scrape = || async { http.get(&format!("{}/metrics", ops.admin)).await };

    let before = scrape().await;
    assert_eq!(before.status, 200);
    assert!(before.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let before = before.text();
    assert_eq!(
        sample(
            &before,
            r#"nexus_sidecar_requests_total{upstream="api",status="2xx"}"#
        ),
        0.0
    );
    assert_eq!(
        sample(
            &before,
            r#"nexus_sidecar_token_expiry_seconds{upstream="api"}"#
        ),
        0.0
    );

    for _ in 0..3 {
        assert_eq!(http.get(&format!("{}/v1/x", ops.app)).await.status, 200);
    }
    s.revoke_all();
    assert_eq!(http.get(&format!("{}/v1/x", ops.app)).await.status, 200);
    s.fail_token_requests(usize::MAX, nexus_sidecar::standin::Failure::Status(503));
    s.revoke_all();
    assert_eq!(http.get(&format!("{}/v1/x", ops.app)).await.status, 503);

    let after = scrape().await.text();
    let get = |series: &str| sample(&after, series);
    assert_eq!(
        get(r#"nexus_sidecar_requests_total{upstream="api",status="2xx"}"#),
        4.0
    );
    assert_eq!(
        get(r#"nexus_sidecar_requests_total{upstream="api",status="error"}"#),
        1.0
    );
    assert_eq!(
        get(r#"nexus_sidecar_request_duration_seconds_count{upstream="api"}"#),
        5.0
    );
    assert_eq!(
        get(r#"nexus_sidecar_token_fetches_total{upstream="api",outcome="success"}"#),
        2.0
    );
    assert_eq!(
        get(r#"nexus_sidecar_token_fetches_total{upstream="api",outcome="unavailable"}"#),
        1.0
    );
    assert_eq!(
        get(r#"nexus_sidecar_token_fetch_duration_seconds_count{upstream="api"}"#),
        3.0
    );
    assert_eq!(
        get(r#"nexus_sidecar_replays_total{upstream="api",outcome="recovered"}"#),
        1.0
    );
    assert_eq!(
        get(r#"nexus_sidecar_replays_total{upstream="api",outcome="token_unavailable"}"#),
        1.0
    );
    // The pooled keep-alive connection is still open.
    assert!(get(r#"nexus_sidecar_open_connections{upstream="api"}"#) >= 1.0);
    no_secrets(&after, &s);
}

#[tokio::test]
async fn token_expiry_gauge_reads_the_live_token() {
    let s = standin(Api::NuvyNexus).await;
    let dir = temp_dir("gauge");
    write_credentials(&dir, &credentials(Api::NuvyNexus));
    let config = Config::from_toml(&file_config(&s, &dir, "")).unwrap();
    let ops = start(&config, None).await;
    let http = Http::default();
    assert_eq!(http.get(&format!("{}/v1/x", ops.app)).await.status, 200);
    let text = http.get(&format!("{}/metrics", ops.admin)).await.text();
    let left = sample(
        &text,
        r#"nexus_sidecar_token_expiry_seconds{upstream="api"}"#,
    );
    // 3600 s tokens, retired 5 s early.
    assert!((3000.0..=3595.0).contains(&left), "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_reload_applies_the_file_and_fails_no_request() {
    let s = standin(Api::NuvyNexus).await;
    let dir = temp_dir("reload");
    write_credentials(&dir, &credentials(Api::NuvyNexus));
    let path = dir.join("config.toml");
    replace(&path, &file_config(&s, &dir, ""));
    let config = Config::load(&path).unwrap();
    let mut ops = start(&config, Some(path.clone())).await;
    let http = Http::default();

    // Requests keep flowing on several connections while the configuration changes under them.
    let load = Load::start(format!("{}/v1/load", ops.app));
    replace(
        &path,
        &file_config(&s, &dir, "headers = { x-config = \"v2\" }"),
    );
    ops.reload.send(()).await.unwrap();
    applied(&mut ops, 1).await;

    // A new upstream appears on its own listener, then goes again.
    let second = format!(
        "[[upstream]]\nname = \"second\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{}\"\n[upstream.auth]\nflow = \"none\"\n",
        s.base_url()
    );
    replace(
        &path,
        &format!(
            "{}\n{second}",
            file_config(&s, &dir, "headers = { x-config = \"v2\" }")
        ),
    );
    ops.reload.send(()).await.unwrap();
    applied(&mut ops, 2).await;
    // Port 0 was asked for: /status tells which one it got.
    let status = http.get(&format!("{}/status", ops.admin)).await.json();
    let listen = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "second")
        .map(|u| u["listen"].as_str().unwrap().to_owned())
        .unwrap();
    let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let kept_alive = Http::default();
    let via_second = kept_alive
        .get(&format!("http://127.0.0.1:{port}/v1/second"))
        .await;
    assert_eq!(via_second.status, 401, "flow none: the API sees no token");

    // An invalid configuration is refused; the running one stays.
    replace(&path, "[[upstream]]\nname = \"api\"\nlisten = 1\n");
    ops.reload.send(()).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        ops.reloads.wait_for(|c| c.refused >= 1),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        http.get(&format!("{}/v1/after-refusal", ops.app))
            .await
            .status,
        200
    );

    replace(
        &path,
        &file_config(&s, &dir, "headers = { x-config = \"v3\" }"),
    );
    ops.reload.send(()).await.unwrap();
    applied(&mut ops, 3).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the removed upstream's listener is closed"
    );
    // A connection opened before the removal is told so, and closed.
    let removed = kept_alive
        .get(&format!("http://127.0.0.1:{port}/v1/second"))
        .await;
    assert_eq!(removed.status, 503, "{}", removed.text());
    assert_eq!(removed.json()["error"], "upstream_removed");
    assert_eq!(removed.headers["connection"], "close");

    let statuses = load.finish().await;
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let reply = http.get(&format!("{}/v1/last", ops.app)).await;
    assert_eq!(reply.status, 200);
    let last = s
        .seen()
        .into_iter()
        .rev()
        .find(|r| r.path_and_query == "/v1/last")
        .unwrap();
    assert_eq!(last.headers["x-config"], "v3");
    // One token served everything: the credentials never changed.
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_symlink_swap_rotates_the_secret_for_the_next_token() {
    let s = standin(Api::NuvyNexus).await;
    // The layout kubelet gives a mounted Secret: files are symlinks into ..data, itself a
    // symlink to a timestamped directory that is swapped whole on update.
    let dir = temp_dir("k8s");
    let first = dir.join("..2026_11_22_10_00_00.1");
    std::fs::create_dir(&first).unwrap();
    write_credentials(&first, &credentials(Api::NuvyNexus));
    std::os::unix::fs::symlink(first.file_name().unwrap(), dir.join("..data")).unwrap();
    for key in ["client_id", "client_secret"] {
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
    let config = Config::from_toml(&file_config(&s, &dir, "")).unwrap();
    let mut ops = start(&config, None).await;
    let http = Http::default();
    assert_eq!(http.get(&format!("{}/v1/x", ops.app)).await.status, 200);

    let load = Load::start(format!("{}/v1/load", ops.app));
    let rotated = Credentials::new(
        format!("id-{}", Api::NuvyNexus.name()),
        format!("{SECRET_MARK}-k8s-rotated"),
    );
    let second = dir.join("..2026_11_22_11_00_00.2");
    std::fs::create_dir(&second).unwrap();
    write_credentials(&second, &rotated);
    std::os::unix::fs::symlink(second.file_name().unwrap(), dir.join("..data_tmp")).unwrap();
    s.set_credentials(rotated);
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    applied(&mut ops, 1).await;

    let reply = http.get(&format!("{}/v1/after", ops.app)).await;
    assert_eq!(reply.status, 200);
    let statuses = load.finish().await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // The rotated secret obtained a new token, and the old token was retired with it.
    assert_eq!(s.token_requests(), 2);
    let issued = s.issued_tokens();
    let after = s
        .seen()
        .into_iter()
        .rev()
        .find(|r| r.path_and_query == "/v1/after")
        .unwrap();
    assert_eq!(after.token.as_deref(), Some(issued[1].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_runs_out_reports_only_the_busy_connections() {
    let s = standin(Api::NuvyNexus).await;
    let toml = upstream_toml("api", &s, "", "")
        .replace("[[upstream]]", "shutdown_grace = \"300ms\"\n\n[[upstream]]");
    let config = Config::from_toml(&toml).unwrap();
    let sidecar = Sidecar::bind(&config).await.unwrap();
    let app = format!("http://{}", sidecar.local_addr("api").unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(sidecar.run(async {
        let _ = stopped.await;
    }));
    // Three idle keep-alive connections and one request the upstream never answers.
    let idle: Vec<Http> = (0..3).map(|_| Http::default()).collect();
    for http in &idle {
        assert_eq!(http.get(&format!("{app}/v1/x")).await.status, 200);
    }
    let slow = tokio::spawn({
        let url = format!("{app}/slow");
        async move { Http::default().try_get(&url).await }
    });
    s.wait_api_requests(4).await;
    let _ = stop.send(());
    let cut_off = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cut_off, 1,
        "the idle connections closed; only the slow request was cut"
    );
    assert!(slow.await.unwrap().is_err(), "the slow request was cut off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_file_waits_for_new_content_then_applies() {
    let s = standin(Api::NuvyNexus).await;
    let dir = temp_dir("refused");
    let token = dir.join("token");
    replace(&token, "tok-1\n");
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[upstream]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{}\"\n[upstream.auth]\nflow = \"static\"\ntoken = {{ file = \"{}\" }}\n",
        s.base_url(),
        token.display()
    );
    let config = Config::from_toml(&toml).unwrap();
    let mut ops = start(&config, None).await;
    let http = Http::default();

    // A token no header can carry: the reload is refused, once.
    replace(&token, "bad\ninside\n");
    tokio::time::timeout(
        Duration::from_secs(20),
        ops.reloads.wait_for(|c| c.refused >= 1),
    )
    .await
    .unwrap()
    .unwrap();
    http.get(&format!("{}/v1/still-old", ops.app)).await;
    let seen = s.seen();
    assert_eq!(
        seen.last().unwrap().token.as_deref(),
        Some("tok-1"),
        "the running token stays"
    );

    // New content is tried at once; the refused content was never retried meanwhile.
    replace(&token, "tok-2\n");
    applied(&mut ops, 1).await;
    assert_eq!(ops.reloads.borrow().refused, 1);
    http.get(&format!("{}/v1/new", ops.app)).await;
    assert_eq!(s.seen().last().unwrap().token.as_deref(), Some("tok-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_keeps_the_credentials_keeps_the_backoff() {
    let s = standin(Api::NuvyNexus).await;
    let dir = temp_dir("inherit");
    write_credentials(&dir, &credentials(Api::NuvyNexus));
    let path = dir.join("config.toml");
    replace(&path, &file_config(&s, &dir, ""));
    let config = Config::load(&path).unwrap();
    let mut ops = start(&config, Some(path.clone())).await;
    let http = Http::default();
    s.fail_token_requests(
        1,
        nexus_sidecar::standin::Failure::TooManyRequests {
            retry_after_secs: 30,
        },
    );
    assert_eq!(http.get(&format!("{}/v1/x", ops.app)).await.status, 503);
    assert_eq!(s.token_requests(), 1);

    // A new connect_timeout builds a new client, and so a new token source, for the same
    // credentials: it takes over the 30 s the endpoint asked for.
    replace(&path, &file_config(&s, &dir, "connect_timeout = \"3s\""));
    ops.reload.send(()).await.unwrap();
    applied(&mut ops, 1).await;
    let reply = http.get(&format!("{}/v1/x", ops.app)).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(
        s.token_requests(),
        1,
        "the endpoint is not asked before its Retry-After"
    );
    let status = http.get(&format!("{}/status", ops.admin)).await.json();
    assert!(
        status["upstreams"][0]["backing_off_seconds"]
            .as_u64()
            .unwrap()
            > 1
    );
}

const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `GET /metrics`, with `Accept: accept` when given.
async fn scrape_with(http: &Http, admin: &str, accept: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let url = format!("{admin}/metrics");
    http.send(http::Method::GET, &url, &headers, bytes::Bytes::new())
        .await
}

fn metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Checks `{k="v",…}` (escapes `\\`, `\"`, `\n` only) and returns it unchanged.
fn label_set(labels: &str) -> &str {
    let mut rest = labels
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("bad label set {labels}"));
    while !rest.is_empty() {
        let (key, value) = rest.split_once("=\"").expect(labels);
        assert!(
            metric_name(key) && !key.contains(':'),
            "bad label name in {labels}"
        );
        let mut chars = value.char_indices();
        let end = loop {
            match chars.next().expect(labels) {
                (_, '\\') => assert!(matches!(chars.next(), Some((_, '\\' | '"' | 'n')))),
                (i, '"') => break i,
                _ => {}
            }
        };
        rest = &value[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

/// Checks an exposition against the grammar of text format 0.0.4 or OpenMetrics 1.0.0 (as far
/// as the sidecar uses them: every family has HELP then TYPE, no timestamps, no exemplars) and
/// returns its samples, series → value.
fn exposition(text: &str, openmetrics: bool) -> std::collections::BTreeMap<String, f64> {
    let body = if openmetrics {
        text.strip_suffix("# EOF\n")
            .expect("OpenMetrics ends with # EOF")
    } else {
        text
    };
    assert!(body.ends_with('\n'), "{text}");
    let types: &[&str] = if openmetrics {
        &[
            "counter",
            "gauge",
            "histogram",
            "info",
            "unknown",
            "stateset",
            "gaugehistogram",
            "summary",
        ]
    } else {
        &["counter", "gauge", "histogram", "summary", "untyped"]
    };
    let mut samples = std::collections::BTreeMap::new();
    let mut typed = std::collections::HashSet::new();
    let mut help: Option<&str> = None;
    let mut family: Option<(&str, &str)> = None;
    for line in body.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name, rest) = (parts.next(), parts.next().expect(line), parts.next());
            assert!(metric_name(name), "{line}");
            match keyword {
                Some("HELP") => {
                    assert!(help.is_none(), "{line}");
                    assert!(!rest.unwrap_or_default().contains(['"', '\\']), "{line}");
                    help = Some(name);
                }
                Some("TYPE") => {
                    let kind = rest.expect(line);
                    assert!(types.contains(&kind), "{line}");
                    assert_eq!(help.take(), Some(name), "HELP names another family: {line}");
                    assert!(typed.insert(name), "{name} typed twice");
                    if kind == "counter" && !openmetrics {
                        assert!(name.ends_with("_total"), "{line}");
                    }
                    family = Some((name, kind));
                }
                Some("UNIT") if openmetrics => {
                    let unit = rest.expect(line);
                    assert_eq!(family.map(|f| f.0), Some(name), "{line}");
                    assert!(name.ends_with(&format!("_{unit}")), "{line}");
                }
                _ => panic!("unexpected line {line}"),
            }
            continue;
        }
        assert!(help.is_none(), "HELP without TYPE before {line}");
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = series.split('{').next().unwrap();
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            label_set(labels);
        }
        let (family, kind) = family.unwrap_or_else(|| panic!("{line} before any TYPE"));
        let suffixes: &[&str] = match (kind, openmetrics) {
            ("counter", true) => &["_total", "_created"],
            ("histogram", _) => &["_bucket", "_sum", "_count"],
            ("info", true) => &["_info"],
            _ => &[""],
        };
        assert!(
            suffixes
                .iter()
                .any(|s| name.strip_prefix(family) == Some(s)),
            "{line} is not a sample of {family} ({kind})"
        );
        if name.ends_with("_bucket") {
            assert!(labels.contains("le=\""), "{line}");
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

#[tokio::test]
async fn metrics_speak_text_004_by_default_and_openmetrics_when_asked() {
    let s = standin(Api::NuvyNexus).await;
    let dir = temp_dir("formats");
    write_credentials(&dir, &credentials(Api::NuvyNexus));
    let config = Config::from_toml(&file_config(&s, &dir, "")).unwrap();
    let ops = start(&config, None).await;
    let http = Http::default();
    assert_eq!(http.get(&format!("{}/v1/x", ops.app)).await.status, 200);

    let mut text = None;
    let mut openmetrics = None;
    for (accept, content_type) in [
        (None, TEXT_004),
        (Some("*/*"), TEXT_004),
        (Some("text/plain;version=0.0.4"), TEXT_004),
        (
            Some("application/openmetrics-text;q=0.3, text/plain"),
            TEXT_004,
        ),
        (Some(PROMETHEUS_ACCEPT), OPENMETRICS),
        (Some("application/openmetrics-text"), OPENMETRICS),
    ] {
        let reply = scrape_with(&http, &ops.admin, accept).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["content-type"], content_type, "{accept:?}");
        let is_openmetrics = content_type == OPENMETRICS;
        let samples = exposition(&reply.text(), is_openmetrics);
        if is_openmetrics {
            openmetrics = Some(samples);
        } else {
            text = Some(samples);
        }
    }
    let (text, openmetrics) = (text.unwrap(), openmetrics.unwrap());
    assert!(
        text.keys().eq(openmetrics.keys()),
        "different series:\n{text:?}\n{openmetrics:?}"
    );
    // Nothing counted moved between the scrapes.
    for (series, value) in text.iter().filter(|(s, _)| s.starts_with("nexus_sidecar_")) {
        if !series.starts_with("nexus_sidecar_token_expiry_seconds") {
            assert_eq!(openmetrics[series], *value, "{series}");
        }
    }
    assert_eq!(
        text[r#"nexus_sidecar_requests_total{upstream="api",status="2xx"}"#],
        1.0
    );
    let build = format!(
        "nexus_sidecar_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(text[&build], 1.0);
    for limit in [
        "max_connections",
        "header_read_timeout",
        "idle_timeout",
        "body_read_timeout",
        "max_buffered",
    ] {
        let series = format!("nexus_sidecar_limit_hits_total{{limit=\"{limit}\"}}");
        assert!(text.contains_key(&series), "no {series}");
    }
    no_secrets(&format!("{text:?}"), &s);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn process_metrics_are_plausible() {
    let s = standin(Api::NuvyNexus).await;
    let dir = temp_dir("process");
    write_credentials(&dir, &credentials(Api::NuvyNexus));
    let config = Config::from_toml(&file_config(&s, &dir, "")).unwrap();
    let ops = start(&config, None).await;
    let http = Http::default();
    let text = exposition(&scrape_with(&http, &ops.admin, None).await.text(), false);
    let openmetrics = exposition(
        &scrape_with(&http, &ops.admin, Some(PROMETHEUS_ACCEPT))
            .await
            .text(),
        true,
    );
    for samples in [&text, &openmetrics] {
        let get = |name: &str| *samples.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert!(get("process_cpu_seconds_total") >= 0.0);
        let resident = get("process_resident_memory_bytes");
        assert!(resident > 1e5, "{resident}");
        assert!(get("process_virtual_memory_bytes") >= resident);
        let (open, max) = (get("process_open_fds"), get("process_max_fds"));
        assert!(open > 0.0 && open <= max, "{open} of {max}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = get("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
    }
}
