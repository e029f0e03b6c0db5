//! Real `nexus-sidecar` processes, several at once (the replicas a shared token cache serves),
//! and the child-process plumbing they share with [`super::redis`].
//!
//! Synchronous on purpose: a reader thread per output stream appends lines to one log, and
//! every wait blocks on that log's condition variable until the line arrives, the process
//! exits, or the bound passes — the last two fail the test with the output so far. A test that
//! also runs in-process stand-ins owns a tokio runtime for them and `block_on`s its async
//! calls (tests/fleet_harness.rs shows how).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nexus_sidecar::standin::{Credentials, StandIn};
use nexus_sidecar::{standin::Api, Config};
use tokio::runtime::Runtime;

use super::redis::Redis;
use super::{pki, temp_dir, upstream_toml, Http, Reply, PATIENCE};

// --- What a fleet test stands on. -----------------------------------------------------------

/// A runtime for the in-process stand-ins and HTTP calls (`block_on`ed from the synchronous
/// test), a scratch directory, and a test CA written there as `ca.pem`, which replicas trust
/// through `ca_file` and stand-ins serve TLS under.
pub struct Ground {
    pub runtime: Runtime,
    pub dir: PathBuf,
    pub tls: Arc<rustls::ServerConfig>,
}

impl Ground {
    pub fn new(tag: &str) -> Ground {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let pki = pki();
        let dir = temp_dir(tag);
        std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
        let tls = pki.server_config(&[b"h2", b"http/1.1"]);
        Ground { runtime, dir, tls }
    }

    /// A token endpoint and API stand-in over TLS.
    pub fn standin(&self, api: Api, credentials: Credentials) -> StandIn {
        self.runtime
            .block_on(StandIn::start_tls(api, credentials, Arc::clone(&self.tls)))
            .unwrap()
    }

    /// The `ca_file` line that makes a replica trust the stand-ins.
    pub fn trust(&self) -> String {
        trust(&self.dir)
    }
}

/// The `ca_file` line for the `ca.pem` in `dir`.
pub fn trust(dir: &Path) -> String {
    format!("ca_file = \"{}\"", dir.join("ca.pem").display())
}

/// What a fleet test drives: one token endpoint (TLS, trusted through `ca_file`), one Redis,
/// the runtime they live on, and an HTTP client for the replicas.
pub struct World {
    pub runtime: Runtime,
    pub standin: StandIn,
    pub redis: Redis,
    pub dir: PathBuf,
    pub http: Http,
}

impl World {
    pub fn start(tag: &str, api: Api, credentials: Credentials, redis: Redis) -> World {
        let ground = Ground::new(tag);
        let standin = ground.standin(api, credentials);
        let Ground { runtime, dir, .. } = ground;
        World {
            runtime,
            standin,
            redis,
            dir,
            http: Http::default(),
        }
    }

    /// A replica's configuration: an admin port, `[shared_cache]` on `url` with `shared`
    /// lines added, and the stand-in as upstream "api" with `auth` lines added.
    pub fn config_on(&self, url: &str, shared: &str, auth: &str) -> String {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[shared_cache]\nurl = \"{url}\"\n{shared}\n\n{}",
            upstream_toml("api", &self.standin, &trust(&self.dir), auth)
        )
    }

    /// [`config_on`](World::config_on) this world's Redis.
    pub fn config(&self, shared: &str, auth: &str) -> String {
        self.config_on(&self.redis.url(), shared, auth)
    }

    /// `n` replicas on one configuration, with a generous Redis `timeout` (a busy machine
    /// must not turn a slow answer into a fallback, and a second token request).
    pub fn fleet(&self, n: usize, auth: &str) -> Fleet {
        let config = self.config("timeout = \"5s\"", auth);
        Fleet::start(n, |_| config.clone())
    }

    /// Writes `config` as `name` in the scratch directory.
    pub fn write(&self, name: &str, config: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, config).unwrap();
        path
    }

    pub fn get(&self, replica: &Replica, path: &str) -> Reply {
        self.runtime.block_on(self.http.get(&replica.app_url(path)))
    }

    pub fn get_admin(&self, replica: &Replica, path: &str) -> Reply {
        self.runtime
            .block_on(self.http.get(&replica.admin_url(path)))
    }

    /// `n` GETs through every replica at once; every reply.
    pub fn burst(&self, fleet: &Fleet, n: usize) -> Vec<Reply> {
        self.runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (r, replica) in fleet.replicas.iter().enumerate() {
                for i in 0..n {
                    let (http, url) = (
                        self.http.clone(),
                        replica.app_url(&format!("/v1/x?r={r}&i={i}")),
                    );
                    tasks.spawn(async move { http.get(&url).await });
                }
            }
            tasks.join_all().await
        })
    }

    /// A replica's counter `shared_cache_events_total{event}` for upstream "api".
    pub fn events(&self, replica: &Replica, event: &str) -> u64 {
        let text = self.get_admin(replica, "/metrics").text();
        let series = format!(
            "nexus_sidecar_shared_cache_events_total{{upstream=\"api\",event=\"{event}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

// --- A child process and its output. --------------------------------------------------------

/// Why a wait ended without the lines it wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Both output streams closed first: the process is gone.
    Exited,
    /// The bound passed first.
    TimedOut,
}

/// A child whose stdout and stderr are read, line by line, into one shared log.
#[derive(Debug)]
pub struct Process {
    what: String,
    child: Mutex<Child>,
    status: Option<ExitStatus>,
    output: Arc<Output>,
}

#[derive(Debug, Default)]
struct Output {
    log: Mutex<Log>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Log {
    lines: Vec<String>,
    /// Streams not yet at end of file; 0 means the process has exited (neither child here
    /// hands its stdout/stderr to a process of its own).
    open: usize,
}

impl Process {
    /// Starts `command` with stdin closed and both outputs captured; `what` names it in
    /// failure messages. The error is the spawn's (`NotFound`: no such program).
    pub fn spawn(what: impl Into<String>, mut command: Command) -> std::io::Result<Process> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let output = Arc::new(Output::default());
        output.log.lock().unwrap().open = 2;
        forward(child.stdout.take().unwrap(), &output);
        forward(child.stderr.take().unwrap(), &output);
        Ok(Process {
            what: what.into(),
            child: Mutex::new(child),
            status: None,
            output,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Every line written so far, stdout and stderr interleaved as they arrived.
    pub fn lines(&self) -> Vec<String> {
        self.output.log.lock().unwrap().lines.clone()
    }

    /// The first `n` lines of the whole log (not only those after an earlier wait, so a line
    /// that came early is never missed) that satisfy `pred`, once there are `n`.
    pub fn wait_until(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        bound: Duration,
    ) -> Result<Vec<String>, Missed> {
        let deadline = Instant::now() + bound;
        let mut log = self.output.log.lock().unwrap();
        loop {
            let found: Vec<String> = log
                .lines
                .iter()
                .filter(|l| pred(l))
                .take(n)
                .cloned()
                .collect();
            if found.len() == n {
                return Ok(found);
            }
            if log.open == 0 {
                return Err(Missed::Exited);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Missed::TimedOut);
            }
            log = self.output.changed.wait_timeout(log, left).unwrap().0;
        }
    }

    /// [`wait_until`](Process::wait_until), failing the test (at the caller's line) with the
    /// output if the lines do not come.
    #[track_caller]
    pub fn wait_for_lines(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        bound: Duration,
    ) -> Vec<String> {
        match self.wait_until(pred, n, bound) {
            Ok(lines) => lines,
            Err(missed) => panic!(
                "{}",
                self.explain(missed, &format!("{n} matching line(s)"), bound)
            ),
        }
    }

    /// What went wrong, for a panic message: what was awaited, how it ended, all the output.
    pub fn explain(&self, missed: Missed, wanted: &str, bound: Duration) -> String {
        let how = match missed {
            Missed::Exited => match self.child.lock().unwrap().try_wait() {
                Ok(Some(status)) => format!("exited ({status}) before writing"),
                _ => "closed its output before writing".to_owned(),
            },
            Missed::TimedOut => format!("did not write, within {bound:?},"),
        };
        format!(
            "{} {how} {wanted}; its output:\n{}",
            self.what,
            self.lines().join("\n")
        )
    }

    /// `kill -NAME pid` (TERM, HUP, …). The child is not reaped yet, so the pid is still its.
    pub fn signal(&self, name: &str) {
        assert!(self.status.is_none(), "{} has already exited", self.what);
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([format!("-{name}"), pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {} failed", self.what);
    }

    /// SIGKILL, then the exit (bounded). Does nothing if it has already been waited for.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            // An error here means it has already exited, which is what we want.
            let _ = self.child.get_mut().unwrap().kill();
            self.wait_exit();
        }
    }

    /// SIGTERM, then the exit (bounded): the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Waits (bounded) until both streams close, then reaps the child, which by then has
    /// exited: `Child` has no wait with a timeout, and this needs none.
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + PATIENCE;
        let mut log = self.output.log.lock().unwrap();
        while log.open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} did not exit within {PATIENCE:?}; its output:\n{}",
                self.what,
                log.lines.join("\n")
            );
            log = self.output.changed.wait_timeout(log, left).unwrap().0;
        }
        drop(log);
        let status = self.child.get_mut().unwrap().wait().unwrap();
        self.status = Some(status);
        status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            // A failed test must not leave the process behind: this one, by its handle.
            if let Ok(child) = self.child.get_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A thread that appends each line of `stream` to the log (lossily: a log line is text to
/// search, and a stray byte must not end the reading).
fn forward(stream: impl Read + Send + 'static, output: &Arc<Output>) {
    let output = Arc::clone(output);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']).to_owned();
            output.log.lock().unwrap().lines.push(line);
            output.changed.notify_all();
            buf.clear();
        }
        output.log.lock().unwrap().open -= 1;
        output.changed.notify_all();
    });
}

// --- One sidecar. ---------------------------------------------------------------------------

/// The real binary running on a configuration file, with the addresses it bound.
///
/// Its configuration should listen on `127.0.0.1:0` (no port can be taken in between) and log
/// at `info` or more (the default): the `listening` lines give the ports and mark readiness.
#[derive(Debug)]
pub struct Replica {
    process: Process,
    config: PathBuf,
    apps: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
}

impl Replica {
    /// Starts `nexus-sidecar --config CONFIG` and waits until every listener is up.
    #[track_caller]
    pub fn start(config: &Path) -> Replica {
        let mut replica = Replica::spawn(format!("nexus-sidecar {}", config.display()), config);
        replica.wait_ready();
        replica
    }

    fn spawn(what: String, config: &Path) -> Replica {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nexus-sidecar"));
        // The configuration alone decides: a developer's RUST_LOG=warn would hide the
        // `listening` lines, and a NEXUS_SIDECAR_CONFIG is not this test's.
        command
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("NEXUS_SIDECAR_CONFIG");
        Replica {
            process: Process::spawn(what, command).unwrap(),
            config: config.to_owned(),
            apps: Vec::new(),
            admin: None,
        }
    }

    /// Waits for a `listening` line per upstream (and `admin listening` with an `[admin]`),
    /// learning the addresses. The file is read here as the binary reads it, so a broken
    /// configuration fails with its own message.
    #[track_caller]
    fn wait_ready(&mut self) {
        let config =
            Config::load(&self.config).unwrap_or_else(|e| panic!("{}: {e}", self.config.display()));
        for upstream in &config.upstreams {
            let name = upstream.name.as_str();
            let line = self.wait_for_line(
                |l| matches!(listening(l), Some((Some(n), _)) if n == name),
                PATIENCE,
            );
            let (_, addr) = listening(&line).unwrap();
            self.apps.push((name.to_owned(), addr));
        }
        if config.admin.is_some() {
            let line = self.wait_for_line(|l| matches!(listening(l), Some((None, _))), PATIENCE);
            self.admin = Some(listening(&line).unwrap().1);
        }
    }

    /// The application listener of the first upstream in the file.
    pub fn app_addr(&self) -> SocketAddr {
        self.apps.first().expect("no upstream").1
    }

    /// The application listener of upstream `name`.
    pub fn app_addr_of(&self, name: &str) -> SocketAddr {
        let found = self.apps.iter().find(|(n, _)| n == name);
        found.unwrap_or_else(|| panic!("no upstream {name:?}")).1
    }

    /// `http://APP_ADDR{path}`.
    pub fn app_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app_addr())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("the configuration has no [admin]")
    }

    /// `http://ADMIN_ADDR{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// The configuration file (rewrite it and [`signal`](Replica::signal) `HUP` to reload).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The first line of the whole log that satisfies `pred`, once there is one.
    #[track_caller]
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool, bound: Duration) -> String {
        self.process.wait_for_lines(pred, 1, bound).remove(0)
    }

    /// The first `n` lines of the whole log that satisfy `pred`, once there are `n`.
    #[track_caller]
    pub fn wait_for_lines(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        bound: Duration,
    ) -> Vec<String> {
        self.process.wait_for_lines(pred, n, bound)
    }

    /// The log so far (stderr; stdout too, though the sidecar writes nothing there).
    pub fn lines(&self) -> Vec<String> {
        self.process.lines()
    }

    pub fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    /// SIGKILL and wait: a crash, with no drain.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM and wait for the drain to end: the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.terminate()
    }
}

/// `(Some(upstream), addr)` for a `listening` line, `(None, addr)` for `admin listening`;
/// text (`listening upstream="api" addr=127.0.0.1:P`) or JSON (`"message":"listening",…`).
fn listening(line: &str) -> Option<(Option<String>, SocketAddr)> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        let addr = v["addr"].as_str()?.parse().ok()?;
        return match v["message"].as_str()? {
            "listening" => Some((Some(v["upstream"].as_str()?.to_owned()), addr)),
            "admin listening" => Some((None, addr)),
            _ => None,
        };
    }
    let after = |key: &str| line.split_once(key).map(|(_, rest)| rest);
    let addr = after(" addr=")?.split_whitespace().next()?.parse().ok()?;
    if line.contains(": admin listening ") {
        Some((None, addr))
    } else if line.contains(": listening ") {
        let name = after(" upstream=\"")?.split('"').next()?;
        Some((Some(name.to_owned()), addr))
    } else {
        None
    }
}

// --- Several. -------------------------------------------------------------------------------

/// Replicas of one service, each on its own configuration file in a directory of its own.
#[derive(Debug)]
pub struct Fleet {
    pub replicas: Vec<Replica>,
    dir: PathBuf,
}

impl Fleet {
    /// Writes `config(i)` for each of `n` replicas, starts them all, then waits until each is
    /// ready (they come up in parallel).
    #[track_caller]
    pub fn start(n: usize, config: impl Fn(usize) -> String) -> Fleet {
        let dir = temp_dir("fleet");
        let mut replicas: Vec<Replica> = (0..n)
            .map(|i| {
                let path = dir.join(format!("replica-{i}.toml"));
                std::fs::write(&path, config(i)).unwrap();
                Replica::spawn(format!("replica {i}"), &path)
            })
            .collect();
        for replica in &mut replicas {
            replica.wait_ready();
        }
        Fleet { replicas, dir }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // The processes first: their configuration files go with the directory.
        self.replicas.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
