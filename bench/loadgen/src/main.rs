//! loadgen: the open-loop load generator of bench/compare.py. Two modes, each printing one JSON
//! object on stdout:
//!
//!   loadgen fixed --addr 127.0.0.1:8088 --path /v1/x --rate 2000 --conns 4 --duration 6
//!                 [--warmup 1] [--header 'Authorization: Bearer x']... [--samples FILE]
//!
//! N kept-alive connections, one OS thread each. Request i (over all connections) is scheduled
//! at t0 + i/rate and goes on connection i mod N; its latency is measured from its *scheduled*
//! time, not from when it was sent, so a stall delays the requests behind it and they are
//! charged for the wait (coordinated-omission correction, as wrk2 does). `lag` is how late the
//! generator itself sent (the floor of what it can resolve). --samples writes one line per
//! measured request: scheduled offset from the start of measurement (us), latency (us), status.
//!
//!   loadgen burst --addr 127.0.0.1:8090 --path /v1/x --conns 10000 [--connect-batch 256]
//!                 [--timeout 60]
//!
//! Opens N connections first (at most connect-batch connecting at once), then sends one GET on
//! each at the same moment and reads every response: a cold-start burst.
//!
//! Responses are parsed by Content-Length (or chunked encoding); anything else is an error.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Opts {
    mode: String,
    addr: String,
    path: String,
    host: String,
    headers: Vec<String>,
    rate: f64,
    conns: usize,
    duration: f64,
    warmup: f64,
    samples: Option<String>,
    connect_batch: usize,
    timeout: f64,
}

fn usage(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    eprintln!("usage: loadgen fixed --addr HOST:PORT --path P --rate R --conns N --duration S [--warmup S] [--header 'K: V']... [--samples FILE]");
    eprintln!("       loadgen burst --addr HOST:PORT --path P --conns N [--connect-batch B] [--timeout S] [--header 'K: V']...");
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage("no mode"));
    if mode != "fixed" && mode != "burst" {
        usage("mode is fixed or burst");
    }
    let mut o = Opts {
        mode,
        addr: String::new(),
        path: "/".into(),
        host: String::new(),
        headers: vec![],
        rate: 1000.0,
        conns: 4,
        duration: 5.0,
        warmup: 0.0,
        samples: None,
        connect_batch: 256,
        timeout: 60.0,
    };
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: &str| -> f64 { v.parse().unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}"))) };
        match flag.as_str() {
            "--addr" => o.addr = v,
            "--path" => o.path = v,
            "--host" => o.host = v,
            "--header" => o.headers.push(v),
            "--rate" => o.rate = num(&v),
            "--conns" => o.conns = num(&v) as usize,
            "--duration" => o.duration = num(&v),
            "--warmup" => o.warmup = num(&v),
            "--samples" => o.samples = Some(v),
            "--connect-batch" => o.connect_batch = num(&v) as usize,
            "--timeout" => o.timeout = num(&v),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if o.addr.is_empty() {
        usage("--addr is required");
    }
    if o.host.is_empty() {
        o.host = o.addr.clone();
    }
    if o.conns == 0 || o.rate <= 0.0 || o.duration <= 0.0 || o.connect_batch == 0 {
        usage("--conns, --rate, --duration and --connect-batch must be positive");
    }
    o
}

fn request_bytes(o: &Opts) -> Vec<u8> {
    let mut r = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", o.path, o.host);
    for h in &o.headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

// --- the response parser, shared by both modes ----------------------------------------------

/// A complete response at the start of `buf`: its status, its length in bytes, and whether the
/// server will close the connection after it.
struct Parsed {
    status: u16,
    len: usize,
    close: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Ok(None): need more bytes. Err: not a response this tool can frame.
fn parse(buf: &[u8]) -> Result<Option<Parsed>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 { Err("response head over 64 KiB".into()) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut chunked, mut close) = (None, false, status_line.starts_with("HTTP/1.0"));
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => length = Some(v.parse::<usize>().map_err(|_| "bad content-length")?),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" => close = v.contains("close"),
            _ => {}
        }
    }
    let body_start = head_end + 4;
    if status / 100 == 1 || status == 204 || status == 304 {
        return Ok(Some(Parsed { status, len: body_start, close }));
    }
    if chunked {
        let mut at = body_start;
        loop {
            let Some(eol) = find(&buf[at..], b"\r\n") else { return Ok(None) };
            let size_str = std::str::from_utf8(&buf[at..at + eol]).map_err(|_| "bad chunk size")?;
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "bad chunk size")?;
            at += eol + 2;
            if size == 0 {
                // trailers (none expected), then the final CRLF
                let Some(end) = find(&buf[at..], b"\r\n") else { return Ok(None) };
                if end == 0 {
                    return Ok(Some(Parsed { status, len: at + 2, close }));
                }
                let Some(end) = find(&buf[at..], b"\r\n\r\n") else { return Ok(None) };
                return Ok(Some(Parsed { status, len: at + end + 4, close }));
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            at += size + 2;
        }
    }
    match length {
        Some(n) if buf.len() >= body_start + n => Ok(Some(Parsed { status, len: body_start + n, close })),
        Some(_) => Ok(None),
        None => Err("response without Content-Length or chunked encoding".into()),
    }
}

// --- fixed rate ------------------------------------------------------------------------------

fn hist() -> Histogram<u64> {
    // 1 us .. 100 s, 3 significant digits
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

/// Sleep until `t` with a short spin at the end: the timer slack of this thread is set to 1 ns
/// (best effort), so the sleep is precise to the scheduler's wake-up latency.
fn wait_until(t: Instant) {
    const SPIN: Duration = Duration::from_micros(20);
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let left = t - now;
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::hint::spin_loop();
        }
    }
}

struct ConnResult {
    lat: Histogram<u64>,
    lag: Histogram<u64>,
    status: BTreeMap<u16, u64>,
    sent: u64,
    errors: u64,
    reconnects: u64,
    answered: u64,
    samples: Vec<(u64, u64, u16)>,
}

fn connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// One request/response on `stream`; Ok((status, close)).
fn exchange(stream: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<(u16, bool), String> {
    stream.write_all(req).map_err(|e| e.to_string())?;
    buf.clear();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if let Some(p) = parse(buf)? {
            if p.len != buf.len() {
                return Err("bytes after the response".into());
            }
            return Ok((p.status, p.close));
        }
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn fixed(o: Opts) {
    let req = Arc::new(request_bytes(&o));
    let rate = o.rate;
    let conns = o.conns;
    let timeout = Duration::from_secs_f64(o.timeout);
    let keep_samples = o.samples.is_some();
    // Connect everything first, then start the clock a little later.
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        match connect(&o.addr, timeout) {
            Ok(s) => streams.push(s),
            Err(e) => {
                eprintln!("loadgen: connect {}: {e}", o.addr);
                std::process::exit(1)
            }
        }
    }
    let start = Instant::now() + Duration::from_millis(20);
    let start_epoch = SystemTime::now() + Duration::from_millis(20);
    let measure_from = start + Duration::from_secs_f64(o.warmup);
    let end = measure_from + Duration::from_secs_f64(o.duration);
    let mut handles = vec![];
    for (k, mut stream) in streams.into_iter().enumerate() {
        let req = Arc::clone(&req);
        let addr = o.addr.clone();
        handles.push(std::thread::spawn(move || {
            let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1");
            let mut r = ConnResult {
                lat: hist(),
                lag: hist(),
                status: BTreeMap::new(),
                sent: 0,
                errors: 0,
                reconnects: 0,
                answered: 0,
                samples: vec![],
            };
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut alive = true;
            let mut i = k as u64;
            loop {
                let sched = start + Duration::from_secs_f64(i as f64 / rate);
                if sched >= end {
                    break;
                }
                i += conns as u64;
                wait_until(sched);
                if !alive {
                    match connect(&addr, timeout) {
                        Ok(s) => {
                            stream = s;
                            alive = true;
                            r.reconnects += 1;
                        }
                        Err(_) => {
                            if sched >= measure_from {
                                r.errors += 1;
                            }
                            continue;
                        }
                    }
                }
                let sent = Instant::now();
                let outcome = exchange(&mut stream, &req, &mut buf);
                let done = Instant::now();
                let measured = sched >= measure_from;
                match outcome {
                    Ok((status, close)) => {
                        r.answered += 1;
                        if close {
                            alive = false;
                        }
                        if measured {
                            let lat = (done - sched).as_micros().max(1) as u64;
                            r.lat.saturating_record(lat);
                            r.lag.saturating_record((sent - sched).as_micros().max(1) as u64);
                            *r.status.entry(status).or_insert(0) += 1;
                            r.sent += 1;
                            if keep_samples {
                                r.samples.push(((sched - measure_from).as_micros() as u64, lat, status));
                            }
                        }
                    }
                    Err(_) => {
                        alive = false;
                        if measured {
                            r.errors += 1;
                            r.sent += 1;
                        }
                    }
                }
            }
            r
        }));
    }
    let (mut lat, mut lag) = (hist(), hist());
    let mut status: BTreeMap<u16, u64> = BTreeMap::new();
    let (mut sent, mut errors, mut reconnects, mut answered) = (0, 0, 0, 0);
    let mut samples = vec![];
    for h in handles {
        let r = h.join().unwrap_or_else(|_| panic!("a connection thread panicked"));
        let _ = lat.add(&r.lat);
        let _ = lag.add(&r.lag);
        for (s, n) in r.status {
            *status.entry(s).or_insert(0) += n;
        }
        sent += r.sent;
        errors += r.errors;
        reconnects += r.reconnects;
        answered += r.answered;
        samples.extend(r.samples);
    }
    if let Some(path) = &o.samples {
        samples.sort_unstable();
        let mut out = String::with_capacity(samples.len() * 20);
        for (t, l, s) in samples {
            out.push_str(&format!("{t} {l} {s}\n"));
        }
        if let Err(e) = std::fs::write(path, out) {
            eprintln!("loadgen: {path}: {e}");
            std::process::exit(1)
        }
    }
    let measure_epoch = start_epoch + Duration::from_secs_f64(o.warmup);
    let epoch_ms = measure_epoch.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
    let non2xx: u64 = status.iter().filter(|(s, _)| **s / 100 != 2).map(|(_, n)| n).sum();
    println!(
        "{{\"mode\":\"fixed\",\"rate\":{},\"conns\":{},\"duration_s\":{},\"warmup_s\":{},\"measure_start_epoch_ms\":{:.3},\
\"requests\":{},\"completed\":{},\"answered_with_warmup\":{},\"errors\":{},\"reconnects\":{},\"non2xx\":{},\"status\":{},\
\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"mean_us\":{:.1},\"lag_p50_us\":{},\"lag_p99_us\":{},\"lag_max_us\":{}}}",
        rate,
        conns,
        o.duration,
        o.warmup,
        epoch_ms,
        sent,
        lat.len(),
        answered,
        errors,
        reconnects,
        non2xx,
        status_json(&status),
        lat.value_at_quantile(0.5),
        lat.value_at_quantile(0.9),
        lat.value_at_quantile(0.99),
        lat.value_at_quantile(0.999),
        lat.max(),
        lat.mean(),
        lag.value_at_quantile(0.5),
        lag.value_at_quantile(0.99),
        lag.max(),
    );
}

fn status_json(status: &BTreeMap<u16, u64>) -> String {
    let parts: Vec<String> = status.iter().map(|(s, n)| format!("\"{s}\":{n}")).collect();
    format!("{{{}}}", parts.join(","))
}

// --- burst -----------------------------------------------------------------------------------

async fn one_request(
    mut s: tokio::net::TcpStream,
    req: Arc<Vec<u8>>,
    mut go_rx: tokio::sync::watch::Receiver<bool>,
) -> Result<(u16, Duration), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while !*go_rx.borrow_and_update() {
        go_rx.changed().await.map_err(|e| e.to_string())?;
    }
    let t = Instant::now();
    s.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(p) = parse(&buf)? {
            return Ok((p.status, t.elapsed()));
        }
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn burst(o: Opts) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let req = Arc::new(request_bytes(&o));
    let timeout = Duration::from_secs_f64(o.timeout);
    rt.block_on(async move {
        let connect_start = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(o.connect_batch));
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..o.conns {
            let sem = Arc::clone(&sem);
            let addr = o.addr.clone();
            connecting.spawn(async move {
                let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
                let s = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(&addr))
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                Ok::<_, String>(s)
            });
        }
        let mut streams = vec![];
        let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(r) = connecting.join_next().await {
            match r {
                Ok(Ok(s)) => streams.push(s),
                Ok(Err(e)) => *connect_errors.entry(e).or_insert(0) += 1,
                Err(e) => *connect_errors.entry(e.to_string()).or_insert(0) += 1,
            }
        }
        let connect_ms = connect_start.elapsed().as_secs_f64() * 1000.0;
        let connected = streams.len();
        // Let the server accept the last ones before the burst.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (go_tx, go_rx) = tokio::sync::watch::channel(false);
        let mut running = tokio::task::JoinSet::new();
        for s in streams {
            running.spawn(one_request(s, Arc::clone(&req), go_rx.clone()));
        }
        tokio::task::yield_now().await;
        let t0 = Instant::now();
        let _ = go_tx.send(true);
        let mut lat = hist();
        let mut status: BTreeMap<u16, u64> = BTreeMap::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, running.join_next()).await {
                Ok(Some(Ok(Ok((s, d))))) => {
                    *status.entry(s).or_insert(0) += 1;
                    lat.saturating_record(d.as_micros().max(1) as u64);
                }
                Ok(Some(Ok(Err(e)))) => *errors.entry(e).or_insert(0) += 1,
                Ok(Some(Err(e))) => *errors.entry(e.to_string()).or_insert(0) += 1,
                Ok(None) => break,
                Err(_) => {
                    *errors.entry("timed out".into()).or_insert(0) += running.len() as u64;
                    running.abort_all();
                    break;
                }
            }
        }
        let burst_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let ok: u64 = status.iter().filter(|(s, _)| **s / 100 == 2).map(|(_, n)| n).sum();
        let err_json: Vec<String> =
            errors.iter().chain(connect_errors.iter()).map(|(e, n)| format!("{:?}:{n}", e)).collect();
        println!(
            "{{\"mode\":\"burst\",\"conns\":{},\"connected\":{},\"connect_ms\":{:.1},\"burst_ms\":{:.1},\"ok\":{},\"status\":{},\
\"errors\":{},\"error_kinds\":{{{}}},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
            o.conns,
            connected,
            connect_ms,
            burst_ms,
            ok,
            status_json(&status),
            errors.values().sum::<u64>() + connect_errors.values().sum::<u64>(),
            err_json.join(","),
            lat.value_at_quantile(0.5),
            lat.value_at_quantile(0.99),
            lat.max(),
        );
    });
}

fn main() {
    let o = parse_args();
    if o.mode == "fixed" {
        fixed(o)
    } else {
        burst(o)
    }
}
