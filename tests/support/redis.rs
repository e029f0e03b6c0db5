//! A real `redis-server` for the shared-token-cache tests, and a small RESP2 client to look
//! inside it.
//!
//! Debian's `redis-server` (.ci/run installs it), in the foreground on a free loopback port,
//! persistence off: a restart comes back empty, as a cache node without persistence does.
//! Ready means its "Ready to accept connections" line, never a delay. Missing, it fails the
//! test: a skipped Redis test would pass without testing anything.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::fleet::{Missed, Process};
use super::{temp_dir, PATIENCE};

/// How long one start (or restart) may take, retries for a taken port included.
const START_BOUND: Duration = Duration::from_secs(20);
/// Tries at a free port: another process can take it between our probe and Redis's bind.
const ATTEMPTS: usize = 20;
const READY: &str = "Ready to accept connections";
const IN_USE: &str = "Address already in use";

/// A running `redis-server`; killed when dropped.
#[derive(Debug)]
pub struct Redis {
    process: Option<Process>,
    port: u16,
    password: Option<String>,
    dir: PathBuf,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::launch(None)
    }

    /// With `--requirepass`: [`command`](Redis::command) authenticates, [`Resp`] alone does not.
    pub fn start_with_password(password: &str) -> Redis {
        Redis::launch(Some(password.to_owned()))
    }

    fn launch(password: Option<String>) -> Redis {
        let mut redis = Redis {
            process: None,
            port: 0,
            password,
            dir: temp_dir("redis"),
        };
        let deadline = Instant::now() + START_BOUND;
        for _ in 0..ATTEMPTS {
            redis.port = free_port();
            if redis.run(deadline) {
                return redis;
            }
        }
        panic!("redis-server found every one of {ATTEMPTS} free ports taken");
    }

    /// Starts again on the same port (the data is gone), after a kill if it still runs.
    /// Retries, bounded, while something else holds the port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_BOUND;
        for _ in 0..ATTEMPTS {
            if self.run(deadline) {
                return;
            }
        }
        panic!(
            "redis-server could not bind port {} again in {ATTEMPTS} tries",
            self.port
        );
    }

    /// One `redis-server` on `self.port`: true once it is ready, false if the port was taken;
    /// fails the test on anything else.
    fn run(&mut self, deadline: Instant) -> bool {
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        #[rustfmt::skip]
        command.args([
            "--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--protected-mode", "yes", "--dir",
        ]);
        command.arg(&self.dir);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let what = format!("redis-server on port {port}");
        let process = match Process::spawn(what, command) {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                panic!("redis-server not found: install Debian's redis-server (.ci/run does)")
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let bound = deadline.saturating_duration_since(Instant::now());
        match process.wait_until(|l| l.contains(READY), 1, bound) {
            Ok(_) => {
                self.process = Some(process);
                true
            }
            Err(Missed::Exited) if process.lines().iter().any(|l| l.contains(IN_USE)) => false,
            Err(missed) => panic!("{}", process.explain(missed, READY, bound)),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`, with `:PASSWORD@` if there is one (written as given: test
    /// passwords need no percent-encoding).
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The server's log so far (empty while killed).
    pub fn lines(&self) -> Vec<String> {
        self.process
            .as_ref()
            .map(Process::lines)
            .unwrap_or_default()
    }

    /// SIGKILL and wait: a crash. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// A connection, authenticated if the server has a password.
    pub fn connect(&self) -> std::io::Result<Resp> {
        let mut conn = Resp::connect(self.addr())?;
        if let Some(password) = &self.password {
            match conn.call(&["AUTH", password])? {
                RespValue::Simple(ok) if ok == "OK" => {}
                other => return Err(std::io::Error::other(format!("AUTH: {other:?}"))),
            }
        }
        Ok(conn)
    }

    /// One command on a connection of its own; an I/O failure is the error (a refused
    /// connection after [`kill`](Redis::kill), say), a Redis error reply is a value.
    pub fn try_command<A: AsRef<[u8]>>(&self, args: &[A]) -> std::io::Result<RespValue> {
        self.connect()?.call(args)
    }

    /// [`try_command`](Redis::try_command) that fails the test on an I/O error.
    #[track_caller]
    pub fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> RespValue {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis {}: {e}", show(args)))
    }

    /// Every key with every value stored under it, as bytes, sorted by key: a string's value,
    /// a hash's fields and values (lists, sets and sorted sets too), so a test can look for
    /// plaintext secrets in all that Redis holds. A type it cannot read fails the test rather
    /// than go unsearched.
    pub fn all_values(&self) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        let mut conn = self.connect().unwrap();
        let mut call = |args: &[&[u8]]| match conn.call(args) {
            Ok(RespValue::Error(e)) => panic!("redis {}: {e}", show(args)),
            Ok(value) => value,
            Err(e) => panic!("redis {}: {e}", show(args)),
        };
        let (mut keys, mut cursor) = (BTreeSet::new(), b"0".to_vec());
        loop {
            let reply = call(&[b"SCAN", &cursor, b"COUNT", b"1000"]);
            let [next, batch] = reply.array() else {
                panic!("SCAN answered {reply:?}")
            };
            keys.extend(batch.array().iter().map(|k| k.bytes().to_vec()));
            cursor = next.bytes().to_vec();
            if cursor == b"0" {
                break;
            }
        }
        let mut all = Vec::new();
        for key in keys {
            let read: &[&[u8]] = match call(&[b"TYPE", &key]).text().as_str() {
                "string" => &[b"GET"],
                "hash" => &[b"HGETALL"],
                "list" => &[b"LRANGE", b"0", b"-1"],
                "set" => &[b"SMEMBERS"],
                "zset" => &[b"ZRANGE", b"0", b"-1", b"WITHSCORES"],
                // Expired or deleted since the SCAN.
                "none" => continue,
                other => panic!("all_values cannot read {:?} of type {other}", show(&[&key])),
            };
            // The command, the key, then the rest: `LRANGE key 0 -1`.
            let mut args = vec![read[0], key.as_slice()];
            args.extend_from_slice(&read[1..]);
            let values = call(&args).flatten();
            all.push((key, values));
        }
        all
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on now (the OS's pick for port 0, released at once).
fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// Arguments as text, for messages.
fn show<A: AsRef<[u8]>>(args: &[A]) -> String {
    let words: Vec<_> = args
        .iter()
        .map(|a| String::from_utf8_lossy(a.as_ref()))
        .collect();
    words.join(" ")
}

// --- RESP2. ---------------------------------------------------------------------------------

/// One RESP2 reply.
#[derive(Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`: no value.
    Nil,
    /// `*2\r\n…`
    Array(Vec<RespValue>),
}

impl std::fmt::Debug for RespValue {
    /// Bulk strings as text, so a failed assertion is readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespValue::Simple(s) => write!(f, "Simple({s:?})"),
            RespValue::Error(e) => write!(f, "Error({e:?})"),
            RespValue::Integer(n) => write!(f, "Integer({n})"),
            RespValue::Bulk(b) => write!(f, "Bulk({:?})", String::from_utf8_lossy(b)),
            RespValue::Nil => write!(f, "Nil"),
            RespValue::Array(items) => f.debug_tuple("Array").field(items).finish(),
        }
    }
}

impl RespValue {
    /// A bulk or simple string's bytes; fails the test on anything else.
    #[track_caller]
    pub fn bytes(&self) -> &[u8] {
        match self {
            RespValue::Bulk(b) => b,
            RespValue::Simple(s) => s.as_bytes(),
            other => panic!("expected a string, got {other:?}"),
        }
    }

    /// [`bytes`](RespValue::bytes) as text (lossily).
    #[track_caller]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    #[track_caller]
    pub fn int(&self) -> i64 {
        match self {
            RespValue::Integer(n) => *n,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    #[track_caller]
    pub fn array(&self) -> &[RespValue] {
        match self {
            RespValue::Array(items) => items,
            other => panic!("expected an array, got {other:?}"),
        }
    }

    /// Every string inside, in order: one for a string, none for nil, each element's for an
    /// array.
    #[track_caller]
    pub fn flatten(&self) -> Vec<Vec<u8>> {
        match self {
            RespValue::Nil => Vec::new(),
            RespValue::Array(items) => items.iter().flat_map(RespValue::flatten).collect(),
            other => vec![other.bytes().to_vec()],
        }
    }
}

/// A synchronous RESP2 connection; every read and write is bounded by [`PATIENCE`].
#[derive(Debug)]
pub struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Resp {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Resp> {
        let stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.set_write_timeout(Some(PATIENCE))?;
        Ok(Resp {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one command (an array of bulk strings) and reads its reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<RespValue> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            let arg = arg.as_ref();
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out)?;
        read_value(&mut self.reader)
    }
}

/// Reads one RESP2 value.
pub fn read_value(r: &mut impl BufRead) -> std::io::Result<RespValue> {
    let line = read_line(r)?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(invalid("an empty line"));
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    Ok(match kind {
        b'+' => RespValue::Simple(text()),
        b'-' => RespValue::Error(text()),
        b':' => RespValue::Integer(number(rest)?),
        b'$' => match length(rest)? {
            None => RespValue::Nil,
            Some(n) => {
                let mut data = vec![0; n + 2];
                r.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(invalid("a bulk string without its CRLF"));
                }
                data.truncate(n);
                RespValue::Bulk(data)
            }
        },
        b'*' => match length(rest)? {
            None => RespValue::Nil,
            Some(n) => RespValue::Array((0..n).map(|_| read_value(r)).collect::<Result<_, _>>()?),
        },
        other => return Err(invalid(&format!("type byte {:?}", other as char))),
    })
}

/// A line without its CRLF.
fn read_line(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("a line without CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn number(digits: &[u8]) -> std::io::Result<i64> {
    let text = std::str::from_utf8(digits).map_err(|_| invalid("a number"))?;
    text.parse()
        .map_err(|_| invalid(&format!("number {text:?}")))
}

/// A bulk string's or array's length; `None` for -1 (nil).
fn length(digits: &[u8]) -> std::io::Result<Option<usize>> {
    match number(digits)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .map(Some)
            .map_err(|_| invalid("a negative length")),
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, format!("not RESP2: {what}"))
}
