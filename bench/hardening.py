#!/usr/bin/env python3
"""How nexus-sidecar's [limits] hold against slow and idle clients: silent connections, stalled
uploads, thousands of idle keep-alive connections, the idle close, and max_connections.

    bench/hardening.py             # the default [limits] (header 10s, idle 60s, body 30s): ~4 min
    bench/hardening.py --quick     # header 2s, idle 5s, body 5s: ~1 min
    bench/hardening.py --no-build --only silent,uploads --upload-rounds 5

Python 3 stdlib only, loopback only. Builds and runs the release binary ($CARGO_TARGET_DIR or
target/) with `flow = "static"` in front of a small HTTP/1.1 upstream that this script starts
(itself, with --upstream PORT). Each phase gets a fresh sidecar; the environment passes through
(MALLOC_* and the like). Every process started here is stopped on exit, and the run is cut off
after --time-limit seconds. The table also goes to bench/results/hardening-<UTC timestamp>.md.
"""
import argparse, json, os, re, resource, selectors, signal, socket, statistics, subprocess, sys
import tempfile, time, urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MIB = 1024 * 1024
R, W = selectors.EVENT_READ, selectors.EVENT_WRITE
PROCS = []  # every process started here; main's `finally` stops them

class Upstream(BaseHTTPRequestHandler):
    """The API behind the sidecar: reads the whole body, answers 200 with a little JSON."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms delayed-ACK stall

    def do_GET(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.dumps({"ok": True, "body_bytes": len(self.rfile.read(n)) if n else 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def stop(p):  # TERM, up to 5 s, then KILL
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    PROCS.remove(p)

def dur(seconds):
    return f"{round(seconds * 1000)}ms"

class Sidecar:
    """One nexus-sidecar process with the default [limits] but for `limits`, in front of `up`."""

    def __init__(self, args, tmp, up, **limits):
        self.limits = {"max_connections": 4096, "header_read_timeout": dur(args.header_timeout),
                       "idle_timeout": dur(args.idle_timeout), "body_read_timeout": dur(args.body_timeout),
                       "max_buffered": "64MiB", **limits}
        self.port, self.admin = free_port(), free_port()
        path = os.path.join(tmp, "sidecar.toml")
        with open(path, "w") as f:
            f.write(f'[log]\nlevel = "warn"\n[admin]\nlisten = "127.0.0.1:{self.admin}"\n[limits]\n'
                    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.limits.items())
                    + f'[[upstream]]\nname = "bench"\nlisten = "127.0.0.1:{self.port}"\n'
                    f'target = "http://127.0.0.1:{up}"\n[upstream.auth]\nflow = "static"\ntoken = "bench"\n')
        self.log = open(os.path.join(tmp, "sidecar.log"), "a+")
        self.proc = subprocess.Popen([args.bin, "--config", path], stdout=self.log, stderr=self.log)
        PROCS.append(self.proc)
        for _ in range(100):
            try:
                self.get("/healthz")
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.log.seek(0)
        raise SystemExit(f"the sidecar did not start:\n{self.log.read()}")

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as r:
            return r.read().decode()

    def hits(self, *names):  # from /metrics: limit_hits_total{limit=NAME}, open_connections
        pat = r'^nexus_sidecar_(limit_hits_total|open_connections)\{\w+="(\w+)"\} (\S+)'
        m = {(k if name[0] == "l" else name): v for name, k, v in re.findall(pat, self.get("/metrics"), re.M)}
        return ", ".join(f"{n} {m.get(n, 0)}" for n in names)

    def mem(self, key="VmRSS"):  # KiB
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(dict(line.split(":", 1) for line in f)[key].split()[0])

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def accept_queue(self):  # handshakes the kernel completed that the sidecar has not accepted
        with open("/proc/net/tcp") as f:
            return next((int(r[4].split(":")[1], 16) for r in map(str.split, f)
                         if r[1] == f"0100007F:{self.port:04X}" and r[3] == "0A"), None)

    def close(self):
        stop(self.proc)
        self.log.close()

class Conn:
    """A client connection, connected without blocking: what it has left to send, what it got,
    and when it connected, finished sending, got its first byte and was closed."""

    def __init__(self, port, out=b""):
        self.t0 = time.monotonic()
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))
        self.out, self.buf = memoryview(out), b""
        self.t_conn = self.t_sent = self.t_first = self.t_closed = self.how = None
        try:  # on loopback the handshake is done by now, unless the accept queue is full
            self.sock.getpeername()
            self.t_conn = time.monotonic()
            self.send(self.t_conn)  # at once: a request must not wait for later connections
        except OSError:
            pass

    def send(self, now):
        if self.out:
            self.out = self.out[self.sock.send(self.out[:256 * 1024]):]
        if not self.out and self.t_sent is None:
            self.t_sent = now

    def status(self):  # "408 request_timeout", "200", or None before a status line
        m, e = re.match(rb"HTTP/1\.1 (\d{3})", self.buf), re.search(rb'"error":"(\w+)"', self.buf)
        return m and (m.group(1) + (b" " + e.group(1) if e else b"")).decode()

    def complete(self):  # one whole response
        head, _, body = self.buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        return bool(m) and len(body) >= int(m.group(1))

class Loop:
    """Watches connections from the moment they are added."""

    def __init__(self):
        self.sel, self.conns = selectors.DefaultSelector(), []

    def add(self, c):
        self.conns.append(c)
        self.sel.register(c.sock, R | (W if c.out or not c.t_conn else 0), c)
        return c

    def run(self, seconds, done=lambda: False):
        """Until done(), every connection closed, or `seconds` passed."""
        deadline = time.monotonic() + seconds
        while self.sel.get_map() and not done() and time.monotonic() < deadline:
            for key, ev in self.sel.select(timeout=0.05):
                c, now, data = key.data, time.monotonic(), None
                try:
                    if ev & W:
                        if c.t_conn is None:
                            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                            if err:
                                raise OSError(err, os.strerror(err))
                            c.t_conn = now
                        c.send(now)
                        if not c.out:
                            self.sel.modify(c.sock, R, c)
                    if ev & R:
                        data = c.sock.recv(65536)
                except BlockingIOError:
                    pass
                except OSError as e:
                    reset = isinstance(e, (ConnectionResetError, BrokenPipeError))
                    data, c.how = b"", "RST" if reset else e.strerror
                if data:
                    c.buf, c.t_first = c.buf + data, c.t_first or now
                elif data == b"":
                    c.t_closed, c.how = now, c.how or "FIN"
                    self.sel.unregister(c.sock)

    def close(self):
        for c in self.conns:
            c.sock.close()
        self.sel.close()

def get(port):
    return f"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

def request(port, req=None):  # one request on a connection of its own: the status line
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req or get(port)[:-2] + b"Connection: close\r\n\r\n")
        return s.recv(65536).split(b"\r\n")[0].decode()

def spread(xs):  # min/median/max
    xs = sorted(xs)
    return "/".join(f"{v:.2f}" for v in (xs[0], statistics.median(xs), xs[-1])) if xs else "n/a"

def counts(xs):
    out = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(out.items(), key=str)) or "none"

def listen_overflows():  # system-wide: handshakes the kernel dropped for a full accept queue
    with open("/proc/net/netstat") as f:
        ext = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(ext[0], ext[1]))["ListenOverflows"])

def silent(args, tmp, up, rows, p="silent"):
    sc, loop = Sidecar(args, tmp, up), Loop()
    base = sc.mem()
    conns = [loop.add(Conn(sc.port)) for _ in range(args.silent)]
    part = loop.add(Conn(sc.port, b"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: hal"))
    loop.run(0.5)
    held = sc.mem()
    loop.run(args.header_timeout + 10)
    shut = [c for c in conns if c.t_closed]
    rows += [(p, f"{args.silent} connections that send nothing (header_read_timeout "
              f"{sc.limits['header_read_timeout']})", f"{len(shut)} closed by the sidecar, after s "
              f"(min/median/max) {spread([c.t_closed - c.t_conn for c in shut])}"),
             (p, "how closed; bytes received (bytes: connections)",
              f"{counts(c.how for c in shut)}; {counts(len(c.buf) for c in conns)}"),
             (p, "RSS before / while held, KiB", f"{base} / {held}"),
             (p, "one partial request head, then nothing", f"closed after {part.t_closed - part.t_conn:.2f}"
              f" s ({part.how}), {len(part.buf)} bytes received" if part.t_closed else "never closed"),
             (p, "limit_hits_total", sc.hits("header_read_timeout"))]
    loop.close()
    sc.close()

def uploads(args, tmp, up, rows):
    sc = Sidecar(args, tmp, up)
    ok = request(sc.port, b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    assert ok.startswith("HTTP/1.1 200"), f"a small POST through the sidecar got {ok!r}"
    head = f"POST /v1/up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {MIB}\r\n\r\n".encode()
    for r in range(1, args.upload_rounds + 1):
        before, loop, p = sc.mem(), Loop(), f"uploads #{r}"
        conns = [loop.add(Conn(sc.port, head + bytes(MIB // 2))) for _ in range(args.uploads)]
        loop.run(30, lambda: all(c.t_sent for c in conns))
        plateau, t_end = 0, time.monotonic() + min(3, args.body_timeout / 2)
        while time.monotonic() < t_end:  # stalled: sample RSS
            loop.run(0.25)
            plateau = max(plateau, sc.mem())
        loop.run(args.body_timeout + 15, lambda: all(c.t_closed or c.status() for c in conns))
        loop.run(1)
        time.sleep(1)
        rows += [(p, f"{args.uploads} POSTs declaring 1 MiB send 512 KiB, then stall (body_read_timeout "
                  f"{sc.limits['body_read_timeout']})", f"{sum(1 for c in conns if c.t_sent)} sent their half"),
                 (p, "RSS before / plateau while stalled / after, KiB (VmHWM)",
                  f"{before} / {plateau} / {sc.mem()} ({sc.mem('VmHWM')})"),
                 (p, "what the clients got", counts(c.status() or f"nothing ({c.how or 'open'})" for c in conns)),
                 (p, "answered after the stall began, s (min/median/max)",
                  spread([c.t_first - c.t_sent for c in conns if c.status() and c.t_sent])),
                 (p, "connections then closed by the sidecar",
                  f"{sum(1 for c in conns if c.t_closed)} of {len(conns)}"),
                 (p, "limit_hits_total (cumulative)", sc.hits("body_read_timeout", "max_buffered"))]
        loop.close()
    sc.close()

def idle(args, tmp, up, rows):
    # The default timeouts whatever --quick says: the connections must outlive their opening.
    sc, n = Sidecar(args, tmp, up, header_read_timeout="10s", idle_timeout="60s"), args.idle
    request(sc.port)  # the upstream pool has its connection
    for r in range(1, args.idle_rounds + 1):
        loop, p = Loop(), f"idle #{r}"
        time.sleep(0.5)
        before, fd0, t = sc.mem(), sc.fds(), time.monotonic()
        for _ in range(n):
            c = loop.add(Conn(sc.port, get(sc.port)))
            loop.run(5, c.complete)
        took = time.monotonic() - t
        loop.run(1)
        held, fd1, gauge, conns = sc.mem(), sc.fds(), sc.hits("open_connections"), loop.conns
        seen = {c: len(c.buf) for c in conns}
        loop.run(75, lambda: all(c.t_closed for c in conns))
        shut = [c for c in conns if c.t_closed]
        time.sleep(1)
        rows += [(p, f"{n} keep-alive connections, one GET each, then idle (header_read_timeout 10s, "
                  f"idle_timeout 60s)", f"{counts(c.status() for c in conns)} within {took:.1f} s; {gauge}"),
                 (p, "RSS before / all open / all closed, KiB", f"{before} / {held} / {sc.mem()} "
                  f"({(held - before) / n:.1f} KiB per connection)"),
                 (p, "sidecar fds before / all open / all closed", f"{fd0} / {fd1} / {sc.fds()}"),
                 (p, "closed by the sidecar after the response, s (min/median/max)", f"{len(shut)} of {n}: "
                  f"{spread([c.t_closed - c.t_first for c in shut])}; {counts(c.how for c in shut)}; "
                  f"bytes after the response {counts(len(c.buf) - seen[c] for c in conns)}"),
                 (p, "limit_hits_total (cumulative)", sc.hits("header_read_timeout", "idle_timeout"))]
        loop.close()
    sc.close()

def idle_close(args, tmp, up, rows):
    i = args.idle_timeout
    for h in sorted({args.header_timeout, max(args.header_timeout, 2 * i)}):  # then header > idle
        sc, loop, p = Sidecar(args, tmp, up, header_read_timeout=dur(h)), Loop(), f"keep-alive, header {dur(h)}"
        conns = [loop.add(Conn(sc.port, get(sc.port))) for _ in range(args.idle_probe)]
        loop.run(max(h, i) + 10, lambda: all(c.t_closed for c in conns))
        shut = [c for c in conns if c.t_closed and c.t_first]
        rows += [(p, f"{args.idle_probe} connections, one GET each, then idle (header_read_timeout {dur(h)}, "
                  f"idle_timeout {dur(i)})", f"{counts(c.status() for c in conns)}; {len(shut)} closed by the "
                  f"sidecar after s (min/median/max) {spread([c.t_closed - c.t_first for c in shut])}; "
                  f"{counts(c.how for c in shut)}; responses {counts(c.buf.count(b'HTTP/1.1 ') for c in conns)}"),
                 (p, "limit_hits_total", sc.hits("header_read_timeout", "idle_timeout"))]
        loop.close()
        sc.close()

def limited(args, tmp, up, rows):
    # header_read_timeout 5s at least: the first ones must all be answered before it closes them.
    lim, n, h, loop = args.max_connections, args.idle, max(args.header_timeout, 5), Loop()
    drops = listen_overflows()
    sc, p = Sidecar(args, tmp, up, max_connections=lim, header_read_timeout=dur(h)), f"max_connections {lim}"
    conns = [loop.add(Conn(sc.port, get(sc.port))) for _ in range(n)]
    loop.run(0.8 * h, lambda: sum(1 for c in conns if c.complete()) >= lim)
    loop.run(0.5)
    first, rest = [c for c in conns if c.status()], [c for c in conns if not c.status()]
    rows += [(p, f"{n} connections at once, each sends a GET (header_read_timeout {dur(h)})",
              f"{counts(c.status() for c in first)} answered within {spread([c.t_first - c.t0 for c in first])} s;"
              f" {sum(1 for c in rest if c.t_conn)} connected, unanswered (the sidecar's accept queue holds "
              f"{sc.accept_queue()}); {sum(1 for c in rest if not c.t_conn)} still in connect(); "
              f"{sum(1 for c in conns if c.t_closed)} closed"),
             (p, "limit_hits_total; open_connections; sidecar fds",
              f"{sc.hits('max_connections', 'open_connections')}; {sc.fds()}")]
    # The first ones hold their permits until the first of the two timeouts closes them; then the
    # rest are accepted, some only after TCP's retransmission backoff (1, 3, 7, 15, 31 s).
    loop.run(min(h, args.idle_timeout) + 45, lambda: all(c.status() or c.t_closed for c in conns))
    late = [c for c in rest if c.status()]
    rows += [(p, "the first ones, then", f"{sum(1 for c in first if c.t_closed)} of {len(first)} closed by the "
              f"sidecar after s (min/median/max) {spread([c.t_closed - c.t_first for c in first if c.t_closed])}"),
             (p, "the rest: connected / answered after s (min/median/max)", f"{len(late)} answered "
              f"({counts(c.status() for c in late)}): connected {spread([c.t_conn - c.t0 for c in late])}, "
              f"answered {spread([c.t_first - c.t0 for c in late])}; {len(rest) - len(late)} never answered "
              f"({counts(c.how or 'still open' for c in rest if not c.status())})"),
             (p, "limit_hits_total; kernel ListenOverflows (system-wide)",
              f"{sc.hits('max_connections', 'header_read_timeout', 'idle_timeout')}; "
              f"+{listen_overflows() - drops}")]
    loop.close()
    sc.close()

PHASES = {"silent": silent, "uploads": uploads, "idle": idle, "idle-close": idle_close, "limit": limited}

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="header 2s, idle 5s, body 5s unless given")
    for flag, what in (("header", "header_read_timeout (10)"), ("idle", "idle_timeout (60)"),
                       ("body", "body_read_timeout (30)")):
        ap.add_argument(f"--{flag}-timeout", type=float, metavar="S", help=f"{what}, s")
    for flag, default, what in (("silent", 200, "silent connections"), ("uploads", 100, "stalled uploads"),
                                ("upload-rounds", 3, "rounds of stalled uploads on one sidecar"),
                                ("idle", 2000, "idle keep-alive connections (and the limit phase's)"),
                                ("idle-rounds", 2, "rounds of idle connections on one sidecar"),
                                ("idle-probe", 20, "connections timed for the idle close"),
                                ("max-connections", 1000, "max_connections in the limit phase"),
                                ("time-limit", 900, "abort the run after this many seconds")):
        ap.add_argument(f"--{flag}", type=int, default=default, metavar="N", help=f"{what} ({default})")
    ap.add_argument("--only", default=",".join(PHASES), help="phases, comma-separated (all)")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binary")
    args = ap.parse_args()
    if args.upstream:
        ThreadingHTTPServer.request_queue_size = 4096  # the default 5 drops SYNs in a burst
        ThreadingHTTPServer.daemon_threads = True
        return ThreadingHTTPServer(("127.0.0.1", args.upstream), Upstream).serve_forever()
    for k, full, fast in (("header_timeout", 10, 2), ("idle_timeout", 60, 5), ("body_timeout", 30, 5)):
        if getattr(args, k) is None:
            setattr(args, k, fast if args.quick else full)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    args.bin = os.path.join(target, "release", "nexus-sidecar")
    git = ["git", "describe", "--always", "--dirty"]  # what is built, before it is built
    rev = subprocess.run(git, cwd=REPO, capture_output=True, text=True).stdout.strip()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=REPO, check=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the sidecar inherits it too
    if soft < 2 * args.idle + 512:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2 * args.idle + 512, hard), hard))
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"time limit of {args.time_limit} s reached"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    signal.alarm(args.time_limit)
    rows, started = [], datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="nexus-hardening.") as tmp:
        try:
            up = free_port()
            PROCS.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--upstream", str(up)],
                                          stderr=open(os.path.join(tmp, "upstream.log"), "w")))
            for _ in range(50):  # until the upstream listens
                try:
                    request(up)
                    break
                except OSError:
                    time.sleep(0.1)
            for name in args.only.split(","):
                print(f"-- {name}", file=sys.stderr, flush=True)
                PHASES[name](args, tmp, up, rows)
        finally:
            for p in list(PROCS):
                stop(p)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))]
    text = (f"# bench/hardening.py, {stamp}\n\nnexus-sidecar `{rev}` (release build"
            f"{'; -dirty: the working tree had uncommitted changes' if rev.endswith('-dirty') else ''}), "
            f"{os.cpu_count()} cores, `{' '.join(env + ['bench/hardening.py'] + sys.argv[1:])}`. [limits]: "
            f"header_read_timeout {dur(args.header_timeout)}, idle_timeout {dur(args.idle_timeout)}, "
            f"body_read_timeout {dur(args.body_timeout)}, max_buffered 64MiB, max_connections 4096, "
            "except where a row says otherwise.\n\n| phase | measure | result |\n|---|---|---|\n"
            + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows))
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"hardening-{stamp}.md"), "w") as f:
        f.write(text)

if __name__ == "__main__":
    main()
