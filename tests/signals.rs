//! Signals and reload (the README's "Signals and reload"): the real binary, driven by `kill` and
//! watched through its log.
//!
//! Each test writes a configuration to a temporary file, starts `nexus-sidecar --config` with
//! stderr piped, and waits for log lines (a thread forwards them to the test) — the log is the
//! event every step waits on, never the clock. The API behind the sidecar is a small upstream
//! in this process that hands each request to the test and answers only when told, so "in
//! flight" means exactly that. `flow = "static"` keeps token endpoints out of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod wire;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::{replace, temp_dir, within, Http, Reply, PATIENCE, SECRET_MARK};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

// --- The upstream: every request is handed to the test, which answers when it likes. -------

/// A request that reached the upstream; it is answered by [`Arrival::answer`], and never if
/// the arrival is kept unanswered.
struct Arrival {
    path: String,
    headers: HeaderMap,
    reply: oneshot::Sender<&'static str>,
}

impl Arrival {
    fn answer(self, body: &'static str) {
        let _ = self.reply.send(body);
    }
}

/// A plain HTTP/1.1 upstream on 127.0.0.1:0; requests arrive on the returned channel.
async fn upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Arrival>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let tx: mpsc::UnboundedSender<Arrival> = tx.clone();
                async move {
                    let (reply, answered) = oneshot::channel();
                    let _ = tx.send(Arrival {
                        path: request.uri().path().to_owned(),
                        headers: request.headers().clone(),
                        reply,
                    });
                    let response = match answered.await {
                        Ok(body) => Response::new(Full::new(Bytes::from_static(body.as_bytes()))),
                        Err(_) => {
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            r
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, rx)
}

/// A GET through the sidecar that the upstream answers at once with `body`: what the upstream
/// saw, and what the app got.
async fn round_trip(
    url: &str,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
    body: &'static str,
) -> (HeaderMap, Reply) {
    let url = url.to_owned();
    let pending = tokio::spawn(async move { Http::default().get(&url).await });
    let arrival = within("the upstream to see the request", arrivals.recv())
        .await
        .unwrap();
    let headers = arrival.headers.clone();
    arrival.answer(body);
    let reply = within("the reply", pending).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), body);
    (headers, reply)
}

/// A GET on a connection of its own, in the background: a cut connection is an error here,
/// not a panic.
fn in_flight(addr: SocketAddr, path: &str) -> tokio::task::JoinHandle<Result<Reply, String>> {
    let request = Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    tokio::spawn(async move {
        let mut conn = wire::one_connection(addr).await;
        let response = conn
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        })
    })
}

// --- The binary. ----------------------------------------------------------------------------

/// The port in the `addr` of a `listening` line, text (`addr=127.0.0.1:P`) or JSON
/// (`"addr":"127.0.0.1:P"`).
fn bound_port(line: &str) -> u16 {
    let at = line
        .find("127.0.0.1:")
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    line[at + "127.0.0.1:".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no port in {line:?}"))
}

/// One upstream "api" on a port the OS picks, in front of `target`, with a static token.
/// `token` is a TOML value; `upstream_extra` goes into `[[upstream]]`.
fn config(
    target: SocketAddr,
    format: &str,
    grace: &str,
    upstream_extra: &str,
    token: &str,
) -> String {
    format!(
        r#"shutdown_grace = "{grace}"

[log]
format = "{format}"

[[upstream]]
name = "api"
listen = "127.0.0.1:0"
target = "http://{target}"
{upstream_extra}
  [upstream.auth]
  flow = "static"
  token = {token}
"#
    )
}

/// The running binary, its log as it arrives, and its configuration file.
struct Sidecar {
    child: Option<Child>,
    pid: u32,
    exited: bool,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
    lines: mpsc::UnboundedReceiver<String>,
    log: Arc<Mutex<String>>,
}

impl Sidecar {
    /// Writes `config` and starts the binary on it with `RUST_LOG=debug` (so every log scan
    /// covers debug output too); returns once it logs `listening`, with the port it bound
    /// (the config asks for port 0, so no other test can take it in between).
    async fn start(dir: PathBuf, config: &str) -> Sidecar {
        let path = dir.join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexus-sidecar"))
            .arg("--config")
            .arg(&path)
            .env_remove("NEXUS_SIDECAR_CONFIG")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(String::new()));
        let all = Arc::clone(&log);
        // Blocking reads on a thread of its own; the channel closes when the process exits.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let mut all = all.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
                drop(all);
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut sidecar = Sidecar {
            pid: child.id(),
            child: Some(child),
            exited: false,
            port: 0,
            dir,
            config: path,
            lines,
            log,
        };
        let line = sidecar
            .wait_for("listening", |l| {
                l.contains("listening") && !l.contains("admin")
            })
            .await;
        sidecar.port = bound_port(&line);
        sidecar
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// Everything logged so far.
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The next log line (after those already waited past) that satisfies `matches`.
    async fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.lines.recv().await {
                if matches(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the sidecar exited without logging {what}:\n{}", self.log()),
            Err(_) => panic!("no {what} in the log within {PATIENCE:?}:\n{}", self.log()),
        }
    }

    /// [`wait_for`](Sidecar::wait_for) a JSON line whose message is `message`.
    async fn wait_json(&mut self, message: &str) -> Value {
        let line = self
            .wait_for(message, |l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| v["message"] == message)
            })
            .await;
        serde_json::from_str(&line).unwrap()
    }

    /// `kill -NAME pid`.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// Waits (bounded) for the process to end.
    async fn exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("waited for twice");
        let status = within(
            "the process to exit",
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .unwrap()
        .unwrap();
        self.exited = true;
        status
    }

    /// Waits for the exit, which must be status 0, and returns the whole log (every line
    /// has arrived once the process is gone and the pipe is drained).
    async fn exit_0(&mut self) -> String {
        let status = self.exit().await;
        let log = within("the end of the log", async {
            while self.lines.recv().await.is_some() {}
            self.log()
        })
        .await;
        assert_eq!(status.code(), Some(0), "{status:?}\n{log}");
        log
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if !self.exited {
            // A failed test must not leave the process behind; this one only, by its id.
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            if let Some(mut child) = self.child.take() {
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The number after `key=` in a text log line.
fn text_field(line: &str, key: &str) -> u64 {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 2;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a number in {line}"))
}

/// Text logs go to a pipe here: no colour codes, and no secret.
fn assert_clean_text(log: &str) {
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log}"
    );
    assert!(!log.contains(SECRET_MARK), "a secret in the log:\n{log}");
}

// --- The tests. -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_and_finishes_the_request_in_flight() {
    let (target, mut arrivals) = upstream().await;
    let toml = config(
        target,
        "json",
        "20s",
        "",
        &format!("\"{SECRET_MARK}-literal-token\""),
    );
    let mut sc = Sidecar::start(temp_dir("term"), &toml).await;

    let request = in_flight(sc.addr(), "/v1/slow?wait=1");
    let arrival = within("the upstream to see the request", arrivals.recv())
        .await
        .unwrap();
    assert_eq!(arrival.path, "/v1/slow");

    sc.signal("TERM");
    let draining = sc.wait_json("shutting down; draining connections").await;
    assert_eq!(draining["open"], 1, "{draining}");
    let refused = TcpStream::connect(sc.addr())
        .await
        .expect_err("a new connection was accepted while draining");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );

    arrival.answer("the slow answer");
    let reply = within("the in-flight reply", request)
        .await
        .unwrap()
        .expect("the in-flight request was cut off");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "the slow answer");

    sc.wait_json("all connections finished; bye").await;
    let log = sc.exit_0().await;
    assert!(!log.contains("grace period over"), "{log}");
    assert!(!log.contains("still in flight"), "{log}");
    assert!(!log.contains(SECRET_MARK), "{log}");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&Value> = lines.iter().filter(|v| v["message"] == "request").collect();
    assert_eq!(requests.len(), 1, "{log}");
    assert_eq!(requests[0]["status"], 200);
    assert_eq!(requests[0]["path"], "/v1/slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_grace_period_runs_out_the_busy_connection_is_cut_and_the_exit_is_0() {
    let (target, mut arrivals) = upstream().await;
    let toml = config(
        target,
        "text",
        "300ms",
        "",
        &format!("\"{SECRET_MARK}-literal-token\""),
    );
    let mut sc = Sidecar::start(temp_dir("grace"), &toml).await;

    let request = in_flight(sc.addr(), "/v1/never");
    // Kept, never answered: the request stays in flight until the process is gone.
    let _arrival = within("the upstream to see the request", arrivals.recv())
        .await
        .unwrap();

    sc.signal("TERM");
    let draining = sc
        .wait_for("the drain", |l| {
            l.contains("shutting down; draining connections")
        })
        .await;
    assert_eq!(text_field(&draining, "open"), 1, "{draining}");
    let over = sc
        .wait_for("the cut-off", |l| {
            l.contains("grace period over; cutting off connections that are still busy")
        })
        .await;
    // Only the busy connection is counted as cut off.
    assert_eq!(text_field(&over, "cut_off"), 1, "{over}");
    let exited = sc
        .wait_for("main's report", |l| {
            l.contains("exited with requests still in flight")
        })
        .await;
    assert_eq!(text_field(&exited, "cut_off"), 1, "{exited}");

    let log = sc.exit_0().await;
    assert!(!log.contains("all connections finished"), "{log}");
    assert_clean_text(&log);
    let outcome = within("the cut request to end", request).await.unwrap();
    assert!(outcome.is_err(), "a cut-off request got {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_exits_0_like_sigterm() {
    let (target, mut arrivals) = upstream().await;
    let toml = config(
        target,
        "text",
        "20s",
        "",
        &format!("\"{SECRET_MARK}-literal-token\""),
    );
    let mut sc = Sidecar::start(temp_dir("int"), &toml).await;
    // Straight after `listening`: the handler is already in place.
    sc.signal("INT");
    let draining = sc
        .wait_for("the drain", |l| {
            l.contains("shutting down; draining connections")
        })
        .await;
    assert_eq!(text_field(&draining, "open"), 0, "{draining}");
    sc.wait_for("the end of the drain", |l| {
        l.contains("all connections finished; bye")
    })
    .await;
    let log = sc.exit_0().await;
    assert_clean_text(&log);
    assert!(arrivals.try_recv().is_err(), "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_changed_file_and_refuses_an_invalid_one() {
    let (target, mut arrivals) = upstream().await;
    let token = format!("\"{SECRET_MARK}-literal-token\"");
    let mut sc = Sidecar::start(temp_dir("hup"), &config(target, "json", "20s", "", &token)).await;
    let url = sc.url("/v1/reload");

    let (seen, _) = round_trip(&url, &mut arrivals, "before").await;
    assert!(seen.get("x-reloaded").is_none());

    replace(
        &sc.config,
        &config(
            target,
            "json",
            "20s",
            "headers = { x-reloaded = \"yes\" }",
            &token,
        ),
    );
    sc.signal("HUP");
    let reloaded = sc.wait_json("configuration reloaded").await;
    assert_eq!(reloaded["reason"], "reload requested", "{reloaded}");
    let (seen, _) = round_trip(&url, &mut arrivals, "after").await;
    assert_eq!(seen["x-reloaded"], "yes");

    // An unknown key: the whole file is refused, its new header with it.
    let invalid = config(
        target,
        "json",
        "20s",
        "headers = { x-reloaded = \"twice\" }\nno_such_key = true",
        &token,
    );
    replace(&sc.config, &invalid);
    sc.signal("HUP");
    let refused = sc
        .wait_json("reload refused; the running configuration stays")
        .await;
    assert!(
        refused["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{refused}"
    );
    let (seen, _) = round_trip(&url, &mut arrivals, "still").await;
    assert_eq!(seen["x-reloaded"], "yes");

    sc.signal("TERM");
    sc.wait_json("all connections finished; bye").await;
    let log = sc.exit_0().await;
    assert!(!log.contains(SECRET_MARK), "{log}");
    assert!(!log.contains("twice"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_reloaded_and_sent_next() {
    let (first, second) = (
        format!("{SECRET_MARK}-rotation-first"),
        format!("{SECRET_MARK}-rotation-second"),
    );
    let (target, mut arrivals) = upstream().await;
    let dir = temp_dir("rotate");
    let token_file = dir.join("token");
    replace(&token_file, &format!("{first}\n"));
    let toml = config(
        target,
        "text",
        "20s",
        "",
        &format!("{{ file = \"{}\" }}", token_file.display()),
    );
    let mut sc = Sidecar::start(dir, &toml).await;
    let url = sc.url("/v1/rotate");

    let (seen, _) = round_trip(&url, &mut arrivals, "one").await;
    assert_eq!(seen["authorization"], format!("Bearer {first}").as_str());

    replace(&token_file, &format!("{second}\n"));
    let reloaded = sc
        .wait_for("the reload", |l| l.contains("configuration reloaded"))
        .await;
    assert!(
        reloaded.contains("secret file") && reloaded.contains(&token_file.display().to_string()),
        "{reloaded}"
    );
    let (seen, _) = round_trip(&url, &mut arrivals, "two").await;
    assert_eq!(seen["authorization"], format!("Bearer {second}").as_str());

    sc.signal("TERM");
    sc.wait_for("the end of the drain", |l| {
        l.contains("all connections finished; bye")
    })
    .await;
    let log = sc.exit_0().await;
    assert_clean_text(&log);
    assert!(!log.contains(&first) && !log.contains(&second), "{log}");
}
