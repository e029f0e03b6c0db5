#!/usr/bin/env python3
"""nexus-sidecar against nginx and HAProxy doing the same job, on one pinned core each.

Run it through bench/compare.sh (which installs the tools and builds the binaries); see
BENCHMARKS.md. Python 3 standard library only, Linux only (/proc), loopback only.

Targets, all in front of the same backend (an nginx worker answering from memory, pinned to
the load core with the load generators):
  direct        the backend itself (the floor; the load generator sends the token)
  nginx         nginx, 1 worker, upstream keep-alive pool, proxy_set_header Authorization
  haproxy       HAProxy, 1 thread, http-request set-header Authorization, keep-alive
  sidecar-warn  nexus-sidecar, client_credentials against the backend's /token, log level warn
  sidecar-info  the same at log level info (one line per request, to /dev/null)
Per target and round: req/s at 1/16/64/256 kept-alive connections (wrk -t1), fixed-rate
latency (bench/loadgen, open loop, coordinated-omission corrected), CPU per 10k requests
(user/kernel, from /proc/PID/stat), idle RSS and peak RSS (VmHWM), new upstream connections
(the backend's stub_status "accepts"), non-2xx (the backend answers 401 without the token).
Then: a 1 MiB POST row, the 401-and-replay path, a cold-start burst, and latency while a
background token refresh is in flight. Targets are interleaved over ROUNDS rounds; ratios are
paired round by round; disturbed runs (steal, foreign CPU time, an unsaturated machine) are
measured again, a bounded number of times.

Settings come from the environment (see SETTINGS below); QUICK=1 gives a 3-4 minute run.
"""
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONF = os.path.join(HERE, "compare")

QUICK = os.environ.get("QUICK", "0") == "1"


def env(name, full, quick, kind=int):
    return kind(os.environ.get(name, quick if QUICK else full))


SETTINGS = {
    "ROUNDS": env("ROUNDS", 3, 2),                       # every target once per round
    "DURATION": env("DURATION", 4, 2),                   # s per closed-loop wrk run (whole seconds)
    "WARMUP": env("WARMUP", 1, 1),                       # s of wrk at the top concurrency after each start
    "CONNS": os.environ.get("CONNS", "1 16 64 256"),     # closed-loop concurrencies
    "FIXED_RATE": env("FIXED_RATE", 2000, 2000),         # req/s of the fixed-rate run
    "FIXED_CONNS": env("FIXED_CONNS", 4, 4),
    "FIXED_DURATION": env("FIXED_DURATION", 6, 2, float),
    "POST_CONNS": env("POST_CONNS", 16, 16),             # the 1 MiB POST row
    "COLD_CONNS": env("COLD_CONNS", 10000, 10000),       # the cold-start burst
    "COLD_ROUNDS": env("COLD_ROUNDS", 3, 1),
    "REFRESH_DURATION": env("REFRESH_DURATION", 12, 5, float),
    "REFRESH_ROUNDS": env("REFRESH_ROUNDS", 2, 1),
    "PROXY_CPU": env("PROXY_CPU", 0, 0),                 # the proxy under test
    "LOAD_CPU": env("LOAD_CPU", 1, 1),                   # load generators, backend, token stand-in
    "PORT_BASE": env("PORT_BASE", 19400, 19400),
    "MAX_RETRIES": env("MAX_RETRIES", 2, 1),             # extra attempts for a disturbed run
    "STEAL_MAX": env("STEAL_MAX", 5.0, 5.0, float),      # % of a core stolen by the hypervisor
    "FOREIGN_MAX": env("FOREIGN_MAX", 8.0, 8.0, float),  # % of a core used by processes not ours
    "SATURATION_MIN": env("SATURATION_MIN", 90.0, 90.0, float),  # % of the busier core, closed loop >= 16
    "TIME_LIMIT": env("TIME_LIMIT", 720, 210),           # s of measuring; retries stop before it
    "TARGETS": os.environ.get("TARGETS", "direct nginx haproxy sidecar-warn sidecar-info"),
    "NICE": env("NICE", 0, 0),                           # e.g. -10: the benchmark's scheduling groups at that niceness
}
S = SETTINGS
CONNS = [int(c) for c in S["CONNS"].split()]
TARGETS = S["TARGETS"].split()
TOP = max(CONNS)
RATIO_CONNS = [c for c in CONNS if c >= 16]          # the CPU-per-request geomean
POST_TARGETS = ["direct", "nginx", "sidecar-warn"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PORTS = {
    "BACKEND_PORT": S["PORT_BASE"],
    "BACKEND_STATUS_PORT": S["PORT_BASE"] + 1,
    "NGINX_PORT": S["PORT_BASE"] + 10,
    "HAPROXY_PORT": S["PORT_BASE"] + 20,
    "SIDECAR_PORT": S["PORT_BASE"] + 30,
    "SIDECAR_ADMIN_PORT": S["PORT_BASE"] + 31,
    "STANDIN_PORT": S["PORT_BASE"] + 40,
}
TOKEN = "bench-token"
PATH = "/v1/x"
BIN = os.environ.get("SIDECAR_BIN", "")
LOADGEN = os.environ.get("LOADGEN_BIN", "")
RESULTS = os.environ.get("RESULTS", os.path.join(HERE, "results"))


def log(*a):
    print(*a, flush=True)


def die(msg):
    print(f"compare.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# --- processes: every one started here is stopped on exit -----------------------------------

PROCS = []


def children_of(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                if int(s[s.rindex(")") + 2:].split()[1]) == pid:
                    kids.append(int(d))
            except (OSError, ValueError):
                pass
    return kids


def spawn(argv, cpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, extra_env=None, drop_env=()):
    e = dict(os.environ)
    for k in drop_env:
        e.pop(k, None)
    e.update(extra_env or {})
    p = subprocess.Popen(["taskset", "-c", str(cpu)] + argv, stdout=stdout, stderr=stderr, env=e,
                         start_new_session=True, cwd=RUNDIR)
    PROCS.append(p)
    prioritise(p.pid)
    return p


def prioritise(pid):
    """NICE for the process's autogroup: with kernel.sched_autogroup_enabled, each session is a
    scheduling group and a process's own nice value counts only inside it, so the group's is the
    one that weighs against other sessions' builds."""
    if S["NICE"]:
        try:
            with open(f"/proc/{pid}/autogroup", "w") as f:
                f.write(str(S["NICE"]))
        except OSError:
            pass


def stop(p):
    """TERM, up to 5 s, then KILL; also the children it leaves (nginx workers)."""
    if p not in PROCS:
        return
    kids = children_of(p.pid)
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    PROCS.remove(p)


def cleanup():
    for p in list(PROCS):
        try:
            stop(p)
        except Exception as e:  # keep stopping the others
            print(f"compare.py: stopping {p.args}: {e}", file=sys.stderr)
    if RUNDIR and os.environ.get("KEEP_RUNDIR") != "1":
        shutil.rmtree(RUNDIR, ignore_errors=True)


def nginx_workers(p):
    """the worker of an nginx master (forked after the master has bound its ports)"""
    for _ in range(100):
        kids = children_of(p.pid)
        if kids:
            return kids
        time.sleep(0.05)
    die(f"nginx {p.args} started no worker")


def wait_port(port, what, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    die(f"{what} does not listen on 127.0.0.1:{port}")


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def http(url, headers=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def expect(url, status, body, headers=None):
    got = http(url, headers)
    if got != (status, body):
        die(f"{url}: expected {status} {body!r}, got {got[0]} {got[1]!r}")


# --- /proc ------------------------------------------------------------------------------------

def cpu_stat():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *v = line.split()
                v = [int(x) for x in v[:8]]
                user, nice, system, idle, iowait, irq, softirq, steal = v
                out[int(name[3:])] = (user + nice + system + irq + softirq, sum(v), steal)
    return out


def pid_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    return int(rest[11]), int(rest[12])  # utime, stime (all threads)


def vm_kib(pids, key):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def accepts():
    _, body = http(f"http://127.0.0.1:{PORTS['BACKEND_STATUS_PORT']}/")
    return int(body.split("\n")[2].split()[0])


def count_lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


class Probe:
    """CPU of both cores, of our processes on each, and the backend's accepted connections,
    from before a run to after it."""

    def __init__(self, proxy_pids, load_pids):
        self.proxy_pids, self.load_pids = proxy_pids, load_pids

    def snap(self):
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "t": time.monotonic(),
            "cpu": cpu_stat(),
            "proxy": [pid_ticks(p) for p in self.proxy_pids],
            "load": [sum(pid_ticks(p)) for p in self.load_pids],
            "children": ch.ru_utime + ch.ru_stime + me.ru_utime + me.ru_stime,
            "accepts": accepts(),
        }

    def __enter__(self):
        self.a = self.snap()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.b = self.snap()

    def result(self):
        a, b = self.a, self.b
        pc, lc = S["PROXY_CPU"], S["LOAD_CPU"]
        d = {k: [y - x for x, y in zip(a["cpu"][k], b["cpu"][k])] for k in (pc, lc)}
        user = sum(y[0] - x[0] for x, y in zip(a["proxy"], b["proxy"]))
        system = sum(y[1] - x[1] for x, y in zip(a["proxy"], b["proxy"]))
        load = sum(y - x for x, y in zip(a["load"], b["load"])) + (b["children"] - a["children"]) * CLK_TCK
        pct = lambda x, k: 100.0 * x / max(d[k][1], 1)
        return {
            "seconds": round(b["t"] - a["t"], 3),
            "proxy_user_ticks": user,
            "proxy_sys_ticks": system,
            "proxy_core_pct": round(pct(user + system, pc), 1),
            "load_core_pct": round(pct(load, lc), 1),
            "foreign_proxy_core_pct": round(pct(max(0, d[pc][0] - user - system), pc), 1),
            "foreign_load_core_pct": round(pct(max(0, d[lc][0] - load), lc), 1),
            "steal_proxy_core_pct": round(pct(d[pc][2], pc), 1),
            "steal_load_core_pct": round(pct(d[lc][2], lc), 1),
            # the status request after the run is itself one accepted connection
            "new_upstream_conns": b["accepts"] - a["accepts"] - 1,
        }


def disturbance(m, saturating):
    why = []
    if max(m["steal_proxy_core_pct"], m["steal_load_core_pct"]) > S["STEAL_MAX"]:
        why.append(f"steal {m['steal_proxy_core_pct']:.0f}%/{m['steal_load_core_pct']:.0f}%")
    if max(m["foreign_proxy_core_pct"], m["foreign_load_core_pct"]) > S["FOREIGN_MAX"]:
        why.append(f"foreign CPU {m['foreign_proxy_core_pct']:.0f}%/{m['foreign_load_core_pct']:.0f}%")
    if saturating and max(m["proxy_core_pct"], m["load_core_pct"]) < S["SATURATION_MIN"]:
        why.append(f"no core saturated (proxy {m['proxy_core_pct']:.0f}%, load {m['load_core_pct']:.0f}%)")
    return why


# --- load -------------------------------------------------------------------------------------

def to_us(v):
    n = float(re.match(r"[0-9.]+", v).group())
    unit = v[len(re.match(r"[0-9.]+", v).group()):]
    return n * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}.get(unit, 1)


def wrk(url, conns, seconds, extra=()):
    cmd = ["taskset", "-c", str(S["LOAD_CPU"]), "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
           *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=RUNDIR).stdout
    r = {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
         "rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["errors"] = sum(int(x) for x in m.groups()) if m else 0
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        r[f"p{q}_us"] = round(to_us(m.group(1))) if m else None
    return r


def loadgen(*args):
    cmd = ["taskset", "-c", str(S["LOAD_CPU"]), LOADGEN, *[str(a) for a in args]]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=RUNDIR)
    if p.returncode != 0:
        die(f"loadgen failed: {p.stderr.strip()}")
    return json.loads(p.stdout)


# --- the schedule, the time budget and re-measuring ---------------------------------------

T0 = time.monotonic()
PLANNED = [0.0]  # seconds of measuring still planned
RECORDS = []     # every measured run, kept ones and retried ones
FLAGGED = []     # (label, reasons, attempts, kept) for every run that was disturbed at least once


def measured(label, cost, run, saturating=False, probe=None, meta=None):
    """run() -> dict; measure it with `probe`, again (up to MAX_RETRIES times, within the time
    budget) while disturbed. Keeps the first clean attempt, else the least disturbed one."""
    PLANNED[0] -= cost
    attempts = []
    while True:
        with probe as pr:
            r = run()
        m = pr.result()
        r.update(m)
        r["disturbed"] = disturbance(m, saturating)
        r["label"] = label
        r.update(meta or {})
        attempts.append(r)
        RECORDS.append(dict(r, attempt=len(attempts)))
        if not r["disturbed"]:
            break
        elapsed = time.monotonic() - T0
        if len(attempts) > S["MAX_RETRIES"] or elapsed + PLANNED[0] + cost > S["TIME_LIMIT"]:
            break
        log(f"    {label}: disturbed ({'; '.join(r['disturbed'])}), measuring again")
        time.sleep(1)
    kept = min(attempts, key=lambda a: (bool(a["disturbed"]), a["steal_proxy_core_pct"] + a["steal_load_core_pct"]
                                        + a["foreign_proxy_core_pct"] + a["foreign_load_core_pct"]))
    if len(attempts) > 1 or kept["disturbed"]:
        FLAGGED.append({"label": label, "attempts": [a["disturbed"] for a in attempts],
                        "kept": attempts.index(kept) + 1, "kept_disturbed": kept["disturbed"]})
    kept["attempts"] = len(attempts)
    return kept


# --- targets ----------------------------------------------------------------------------------

def render(name, **extra):
    with open(os.path.join(CONF, name)) as f:
        text = f.read()
    values = dict(PORTS, **extra)
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        die(f"{name}: unfilled {left}")
    out = os.path.join(RUNDIR, name if not extra.get("_as") else extra["_as"])
    with open(out, "w") as f:
        f.write(text)
    return out


SIDECAR_ENV = {"BENCH_CLIENT_ID": "bench", "BENCH_CLIENT_SECRET": "bench"}


def start_sidecar(conf, stderr_to=None):
    err = open(stderr_to, "ab") if stderr_to else subprocess.DEVNULL
    p = spawn([BIN, "--config", conf], S["PROXY_CPU"], stderr=err, extra_env=SIDECAR_ENV, drop_env=("RUST_LOG",))
    if stderr_to:
        err.close()
    wait_port(PORTS["SIDECAR_ADMIN_PORT"], "nexus-sidecar's admin listener")
    wait_port(PORTS["SIDECAR_PORT"], "nexus-sidecar")
    return p


def wait_ready(timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if http(f"http://127.0.0.1:{PORTS['SIDECAR_ADMIN_PORT']}/readyz")[0] == 200:
            return
        time.sleep(0.05)
    die("nexus-sidecar never became ready")


def metric(name, labels=""):
    _, body = http(f"http://127.0.0.1:{PORTS['SIDECAR_ADMIN_PORT']}/metrics")
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_target(name):
    """-> (process or None, url, pids to charge, extra wrk args, extra loadgen args)"""
    auth = f"Authorization: Bearer {TOKEN}"
    if name == "direct":
        return None, f"http://127.0.0.1:{PORTS['BACKEND_PORT']}", [], ["-H", auth], ["--header", auth]
    if name == "nginx":
        p = spawn(["nginx", "-p", RUNDIR + "/", "-c", "nginx-proxy.conf"], S["PROXY_CPU"])
        port = PORTS["NGINX_PORT"]
        wait_port(port, "nginx")
        pids = [p.pid] + nginx_workers(p)
    elif name == "haproxy":
        p = spawn(["haproxy", "-db", "-f", os.path.join(RUNDIR, "haproxy.cfg")], S["PROXY_CPU"])
        port = PORTS["HAPROXY_PORT"]
        wait_port(port, "haproxy")
        pids = [p.pid] + children_of(p.pid)
    else:
        level = name.split("-", 1)[1]
        p = start_sidecar(os.path.join(RUNDIR, f"sidecar-{level}.toml"),
                          stderr_to=None if level == "info" else os.path.join(RUNDIR, "sidecar-warn.log"))
        wait_ready()
        port = PORTS["SIDECAR_PORT"]
        pids = [p.pid]
    url = f"http://127.0.0.1:{port}"
    expect(url + "/whoami", 200, f"Bearer {TOKEN}")
    expect(url + PATH, 200, '{"ok":true}')
    return p, url, pids, [], []


# --- the rounds -------------------------------------------------------------------------------

def target_round(name, rnd):
    p, url, pids, wrk_extra, lg_extra = start_target(name)
    probe = Probe(pids, LOAD_PIDS)
    row = {"target": name, "round": rnd, "idle_rss_kib": vm_kib(pids, "VmRSS") if pids else None}
    wrk(url + PATH, TOP, S["WARMUP"], wrk_extra)  # warm-up: fills the upstream pools

    def fixed():
        r = loadgen("fixed", "--addr", url[len("http://"):], "--path", PATH, "--rate", S["FIXED_RATE"],
                    "--conns", S["FIXED_CONNS"], "--duration", S["FIXED_DURATION"], "--warmup", 0.5, *lg_extra)
        r["requests"] = r["answered_with_warmup"]  # the CPU probe covers the warm-up too
        return r
    row["fixed"] = measured(f"{name} r{rnd} fixed-rate", S["FIXED_DURATION"] + 1, fixed, probe=probe,
                            meta={"target": name, "round": rnd, "kind": "fixed"})
    row["closed"] = {}
    for c in CONNS:
        row["closed"][c] = measured(f"{name} r{rnd} c{c}", S["DURATION"] + 0.5,
                                    lambda: wrk(url + PATH, c, S["DURATION"], wrk_extra),
                                    saturating=c >= 16, probe=probe,
                                    meta={"target": name, "round": rnd, "kind": "closed", "conns": c})
    row["peak_rss_kib"] = vm_kib(pids, "VmHWM") if pids else None
    if name in POST_TARGETS:
        row["post"] = measured(f"{name} r{rnd} POST 1MiB", S["DURATION"] + 0.5,
                               lambda: wrk(url + "/v1/upload", S["POST_CONNS"], S["DURATION"],
                                           ["-s", os.path.join(CONF, "post-1mib.lua"), *wrk_extra]),
                               saturating=True, probe=probe,
                               meta={"target": name, "round": rnd, "kind": "post"})
        row["post_peak_rss_kib"] = vm_kib(pids, "VmHWM") if pids else None
    if p:
        stop(p)
    c = row["closed"]
    log(f"  {name:13} r{rnd}: " + "  ".join(f"c{k} {c[k]['rps']:7.0f}/s" for k in CONNS)
        + f"  fixed p50/p99 {row['fixed']['p50_us']}/{row['fixed']['p99_us']} us"
        + (f"  rss {row['idle_rss_kib']}->{row['peak_rss_kib']} KiB" if pids else ""))
    return row


def replay_round(rnd):
    """The 401 -> new token -> replay path, at 1 connection (sequential, so every request finds
    the token used by the one before)."""
    conf = os.path.join(RUNDIR, "sidecar-replay.toml")
    p = start_sidecar(conf, stderr_to=os.path.join(RUNDIR, "sidecar-replay.log"))
    wait_ready()
    url = f"http://127.0.0.1:{PORTS['SIDECAR_PORT']}"
    tokens = os.path.join(RUNDIR, "token-unique.log")
    expect(url + PATH, 200, '{"ok":true}')   # the prefetched token, first use
    expect(url + PATH, 200, '{"ok":true}')   # 401, new token, replay
    wrk(url + PATH, 1, S["WARMUP"])
    probe = Probe([p.pid], LOAD_PIDS)

    def run():
        t0, r0 = count_lines(tokens), metric("nexus_sidecar_replays_total", 'outcome="recovered"')
        r = wrk(url + PATH, 1, S["DURATION"])
        time.sleep(0.1)  # nginx writes its access log line after the response
        r["token_requests"] = count_lines(tokens) - t0
        r["replays_recovered"] = metric("nexus_sidecar_replays_total", 'outcome="recovered"') - r0
        return r
    r = measured(f"sidecar-replay r{rnd} c1", S["DURATION"] + 0.5, run, probe=probe,
                 meta={"target": "sidecar-replay", "round": rnd, "kind": "replay"})
    stop(p)
    log(f"  sidecar-replay r{rnd}: {r['rps']:.0f}/s, {r['token_requests']} token requests and "
        f"{r['replays_recovered']:.0f} replays for {r['requests']} requests, non-2xx {r['non2xx']}")
    return r


def standin_sidecar(token_path, prefetch, max_conns=4096):
    conf = render("sidecar-standin.toml", TOKEN_PATH=token_path, PREFETCH=str(prefetch).lower(),
                  MAX_CONNECTIONS=max_conns)
    return start_sidecar(conf, stderr_to=os.path.join(RUNDIR, "sidecar-standin.log"))


def standin_hits(path):
    try:
        with open(STANDIN_LOG) as f:
            return [tuple(map(float, l.split()[:2])) for l in f if l.split()[2] == path]
    except FileNotFoundError:
        return []


def cold_round(rnd):
    n = COLD_CONNS
    path = "/token/3600/1000"
    before = len(standin_hits(path))
    p = standin_sidecar(path, False, max_conns=n + 100)
    acc = accepts()
    r = loadgen("burst", "--addr", f"127.0.0.1:{PORTS['SIDECAR_PORT']}", "--path", PATH, "--conns", n,
                "--connect-batch", 256, "--timeout", 60)
    time.sleep(0.2)
    r["token_requests"] = len(standin_hits(path)) - before
    r["new_upstream_conns"] = accepts() - acc - 1
    r["token_fetches_metric"] = metric("nexus_sidecar_token_fetches_total")
    r["limit_hits"] = metric("nexus_sidecar_limit_hits_total")
    with open(os.path.join(RUNDIR, "sidecar-standin.log"), errors="replace") as f:
        r["sidecar_warnings"] = [l.strip() for l in f if "WARN" in l or "ERROR" in l][-5:]
    open(os.path.join(RUNDIR, "sidecar-standin.log"), "w").close()
    r["peak_rss_kib"] = vm_kib([p.pid], "VmHWM")
    r["round"] = rnd
    stop(p)
    ok = r["ok"] == n and r["token_requests"] == 1
    r["pass"] = ok
    log(f"  cold start r{rnd}: {r['ok']}/{n} answered 2xx, {r['token_requests']} token request(s), "
        f"{r['new_upstream_conns']} upstream connections, burst {r['burst_ms']:.0f} ms (token takes 1000 ms), p99 {r['p99_us'] / 1000:.0f} ms -> "
        f"{'PASS' if ok else 'FAIL'}")
    return r


def percentile(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def refresh_round(rnd):
    """Fixed-rate latency while the sidecar refreshes its token in the background (expires_in 5,
    the stand-in takes 200 ms) against the same with a token that lives an hour."""
    out = {"round": rnd}
    for kind, path in (("refreshing", "/token/5/200"), ("steady", "/token/3600/200")):
        p = standin_sidecar(path, True)
        wait_ready()
        url = f"127.0.0.1:{PORTS['SIDECAR_PORT']}"
        samples = os.path.join(RUNDIR, f"samples-{kind}.txt")
        probe = Probe([p.pid], LOAD_PIDS)

        def run():
            before = len(standin_hits(path))
            r = loadgen("fixed", "--addr", url, "--path", PATH, "--rate", S["FIXED_RATE"], "--conns",
                        S["FIXED_CONNS"], "--duration", S["REFRESH_DURATION"], "--warmup", 0.5,
                        "--samples", samples)
            r["requests"] = r["answered_with_warmup"]
            hits = standin_hits(path)[before:]
            m0 = r["measure_start_epoch_ms"] / 1000
            windows = [((a - m0) * 1e6, (b - m0) * 1e6) for a, b in hits]
            inside, outside = [], []
            with open(samples) as f:
                for line in f:
                    t, lat, _ = line.split()
                    t, lat = int(t), int(lat)
                    (inside if any(a <= t <= b for a, b in windows) else outside).append(lat)
            r["refreshes"] = len(hits)
            r["in_flight"] = {"n": len(inside), "p50_us": percentile(inside, 50),
                              "p99_us": percentile(inside, 99), "max_us": max(inside) if inside else None}
            r["outside"] = {"n": len(outside), "p50_us": percentile(outside, 50),
                            "p99_us": percentile(outside, 99), "max_us": max(outside) if outside else None}
            return r
        out[kind] = measured(f"refresh r{rnd} {kind}", S["REFRESH_DURATION"] + 1, run, probe=probe,
                             meta={"target": "sidecar-refresh", "round": rnd, "kind": kind})
        stop(p)
    rf, st = out["refreshing"], out["steady"]
    log(f"  refresh r{rnd}: {rf['refreshes']} refreshes; p99 {rf['in_flight']['p99_us']} us with one in flight "
        f"({rf['in_flight']['n']} requests), {rf['outside']['p99_us']} us otherwise, {st['p99_us']} us steady; "
        f"non-2xx {rf['non2xx'] + st['non2xx']}, errors {rf['errors'] + st['errors']}")
    return out


# --- the report -------------------------------------------------------------------------------

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def f0(x):
    return "-" if x is None else f"{x:,.0f}"


def f1(x):
    return "-" if x is None else f"{x:.1f}"


def f2(x):
    return "-" if x is None else f"{x:.2f}"


def cpu10k(r):
    """ms of proxy CPU per 10k requests: (user+sys, user, sys)"""
    if not r or not r.get("requests"):
        return None, None, None
    k = 1000.0 / CLK_TCK * 10000 / r["requests"]
    return (r["proxy_user_ticks"] + r["proxy_sys_ticks"]) * k, r["proxy_user_ticks"] * k, r["proxy_sys_ticks"] * k


def paired(rows, target, ref, get):
    """median over rounds of get(target's row) / get(ref's row), same round"""
    ratios = []
    for rnd in rows[ref]:
        a, b = get(rows[target].get(rnd)), get(rows[ref].get(rnd))
        if a is not None and b:
            ratios.append(a / b)
    return med(ratios)


def report(rows, replays, colds, refreshes, header):
    T = [t for t in TARGETS if t in rows]
    ref = "nginx" if "nginx" in rows else None
    L = [header, ""]
    R = lambda t, get: paired(rows, t, ref, get) if ref else None
    mrow = lambda t, get: med([get(r) for r in rows[t].values()])
    closed = lambda c, key: (lambda r: r["closed"][c][key] if r else None)
    cpu = lambda c, i=0: (lambda r: cpu10k(r["closed"][c])[i] if r else None)

    L.append(f"### Throughput: requests/s, closed loop (wrk -t1, {S['DURATION']} s per run), median of rounds")
    L.append("")
    L.append("| target | " + " | ".join(f"c={c}" for c in CONNS) + " | " + " | ".join(f"vs nginx c={c}" for c in CONNS) + " |")
    L.append("|---|" + "---:|" * (2 * len(CONNS)))
    for t in T:
        L.append(f"| {t} | " + " | ".join(f0(mrow(t, closed(c, 'rps'))) for c in CONNS) + " | "
                 + " | ".join(f2(R(t, closed(c, 'rps'))) for c in CONNS) + " |")
    L.append("")
    L.append("### CPU of the proxy per 10k requests (ms, user+kernel), median of rounds; ratio vs nginx, paired by round")
    L.append("")
    L.append("| target | " + " | ".join(f"c={c}" for c in CONNS) + f" | user/kernel at c={TOP} | "
             + " | ".join(f"vs nginx c={c}" for c in RATIO_CONNS) + " | geomean vs nginx |")
    L.append("|---|" + "---:|" * (len(CONNS) + 1 + len(RATIO_CONNS) + 1))
    for t in T:
        if t == "direct":
            continue
        ratios = [R(t, cpu(c)) for c in RATIO_CONNS]
        u, k = mrow(t, cpu(TOP, 1)), mrow(t, cpu(TOP, 2))
        L.append(f"| {t} | " + " | ".join(f0(mrow(t, cpu(c))) for c in CONNS)
                 + f" | {f0(u)} / {f0(k)} | " + " | ".join(f2(x) for x in ratios) + f" | **{f2(geomean(ratios))}** |")
    L.append("")
    L.append(f"### Fixed rate: {S['FIXED_RATE']} req/s over {S['FIXED_CONNS']} connections, {S['FIXED_DURATION']:g} s, "
             "open loop, latency from the scheduled send time (us), median of rounds")
    L.append("")
    L.append("| target | p50 | p90 | p99 | max | p50 vs nginx | p99 vs nginx | CPU ms/10k req | generator lag p99 |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    fx = lambda key: (lambda r: r["fixed"][key] if r else None)
    for t in T:
        L.append(f"| {t} | {f0(mrow(t, fx('p50_us')))} | {f0(mrow(t, fx('p90_us')))} | {f0(mrow(t, fx('p99_us')))} | "
                 f"{f0(mrow(t, fx('max_us')))} | {f2(R(t, fx('p50_us')))} | {f2(R(t, fx('p99_us')))} | "
                 f"{f0(mrow(t, lambda r: cpu10k(r['fixed'])[0] if t != 'direct' else None))} | {f0(mrow(t, fx('lag_p99_us')))} |")
    L.append("")
    L.append("Generator lag: how late the load generator sent (it shares the load core with the backend). When its p99 is close "
             "to the target's p99, the load core was the one held up, and the row says little about the target.")
    L.append("")
    L.append("### Memory, upstream connections, correctness (medians of rounds; non-2xx and errors summed over every kept run)")
    L.append("")
    L.append(f"| target | idle RSS (KiB) | peak RSS after c={TOP} (KiB) | new upstream conns per run " + "/".join(f"c={c}" for c in CONNS)
             + " | new upstream conns, fixed rate | non-2xx | socket errors | kept runs still disturbed |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in T:
        runs = [r["fixed"] for r in rows[t].values()] + [x for r in rows[t].values() for x in r["closed"].values()]
        conns = "/".join(f0(mrow(t, closed(c, "new_upstream_conns"))) for c in CONNS)
        L.append(f"| {t} | {f0(mrow(t, lambda r: r['idle_rss_kib']))} | {f0(mrow(t, lambda r: r['peak_rss_kib']))} | "
                 f"{conns} | {f0(mrow(t, fx('new_upstream_conns')))} | {sum(r['non2xx'] for r in runs)} | "
                 f"{sum(r['errors'] for r in runs)} | {sum(1 for r in runs if r['disturbed'])} of {len(runs)} |")
    L.append("")
    L.append("nginx's RSS is master + worker. direct's upstream connections are the load generator's own.")
    if "sidecar-info" in rows and "sidecar-warn" in rows:
        ratios = [paired(rows, "sidecar-info", "sidecar-warn", cpu(c)) for c in RATIO_CONNS]
        L.append("")
        L.append(f"Info-level logging (one line per request, to /dev/null) vs warn: CPU per request x "
                 + ", ".join(f"{f2(x)} at c={c}" for x, c in zip(ratios, RATIO_CONNS))
                 + f" (geomean {f2(geomean(ratios))}); req/s x "
                 + ", ".join(f"{f2(paired(rows, 'sidecar-info', 'sidecar-warn', closed(c, 'rps')))} at c={c}" for c in RATIO_CONNS) + ".")

    # POST
    post_t = [t for t in POST_TARGETS if t in rows and any("post" in r for r in rows[t].values())]
    if post_t:
        L.append("")
        L.append(f"### 1 MiB POST bodies, {S['POST_CONNS']} connections (wrk -s post-1mib.lua), median of rounds")
        L.append("")
        L.append("| target | req/s (= MiB/s) | CPU ms per 1k req (user/kernel) | req/s vs nginx | CPU vs nginx | peak RSS (KiB) | non-2xx | errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        pr = lambda key: (lambda r: r["post"][key] if r and "post" in r else None)
        pc = lambda i: (lambda r: (cpu10k(r["post"])[i] / 10 if cpu10k(r["post"])[i] is not None else None) if r and "post" in r else None)
        for t in post_t:
            rps = mrow(t, pr("rps"))
            runs = [r["post"] for r in rows[t].values() if "post" in r]
            L.append(f"| {t} | {f0(rps)} | "
                     + (f"{f1(mrow(t, pc(0)))} ({f1(mrow(t, pc(1)))} / {f1(mrow(t, pc(2)))})" if t != "direct" else "-")
                     + f" | {f2(R(t, pr('rps')))} | {f2(R(t, pc(0))) if t != 'direct' else '-'} | "
                     f"{f0(mrow(t, lambda r: r.get('post_peak_rss_kib')))} | {sum(r['non2xx'] for r in runs)} | {sum(r['errors'] for r in runs)} |")

    if replays:
        L.append("")
        L.append("### The 401-and-replay path (sidecar, 1 connection, closed loop), vs its normal path at c=1 in the same round")
        L.append("")
        L.append("Each request goes out with a token the backend has seen once, gets 401, the sidecar fetches a new token "
                 "(`/token-unique`) and replays; nginx and HAProxy have no equivalent.")
        L.append("")
        L.append("| path | req/s | p50 (us) | p99 (us) | CPU ms/10k req | token requests per request | replays per request | non-2xx |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        warn = rows.get("sidecar-warn", {})
        nrm = [warn[r["round"]]["closed"][1] for r in replays if r["round"] in warn and 1 in warn[r["round"]]["closed"]]
        if nrm:
            L.append(f"| normal (sidecar-warn c=1) | {f0(med([r['rps'] for r in nrm]))} | {f0(med([r['p50_us'] for r in nrm]))} | "
                     f"{f0(med([r['p99_us'] for r in nrm]))} | {f0(med([cpu10k(r)[0] for r in nrm]))} | 0 | 0 | {sum(r['non2xx'] for r in nrm)} |")
        L.append(f"| 401 → new token → replay | {f0(med([r['rps'] for r in replays]))} | {f0(med([r['p50_us'] for r in replays]))} | "
                 f"{f0(med([r['p99_us'] for r in replays]))} | {f0(med([cpu10k(r)[0] for r in replays]))} | "
                 f"{f2(med([r['token_requests'] / r['requests'] for r in replays]))} | "
                 f"{f2(med([r['replays_recovered'] / r['requests'] for r in replays]))} | {sum(r['non2xx'] for r in replays)} |")
        pairs = [(r, warn[r["round"]]["closed"][1]) for r in replays if r["round"] in warn and 1 in warn[r["round"]]["closed"]]
        if pairs:
            L.append("")
            L.append(f"Replay path vs normal path, paired by round: CPU per request x {f2(med([cpu10k(a)[0] / cpu10k(b)[0] for a, b in pairs]))}, "
                     f"req/s x {f2(med([a['rps'] / b['rps'] for a, b in pairs]))}, p50 x {f2(med([a['p50_us'] / b['p50_us'] for a, b in pairs]))}. "
                     "The CPU figure is the sidecar's alone; the backend answers three requests (401, token, 200) instead of one.")

    if colds:
        L.append("")
        L.append(f"### Cold start: {COLD_CONNS:,} concurrent requests on a sidecar with no token (prefetch = false; the token stand-in takes 1 s)")
        L.append("")
        L.append("| round | connected | 2xx | token requests | new upstream conns | burst (ms) | p50 (ms) | p99 (ms) | max (ms) | sidecar peak RSS (KiB) | result |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in colds:
            verdict = "**pass**" if r["pass"] else \
                f"**FAIL** {json.dumps(r['error_kinds'])}, limit hits {r['limit_hits']:.0f}"
            L.append(f"| {r['round']} | {r['connected']} | {r['ok']} | {r['token_requests']} | {r['new_upstream_conns']} | {f0(r['burst_ms'])} | "
                     f"{f0(r['p50_us'] / 1000)} | {f0(r['p99_us'] / 1000)} | {f0(r['max_us'] / 1000)} | {f0(r['peak_rss_kib'])} | "
                     f"{verdict} |")

    if refreshes:
        L.append("")
        L.append(f"### Latency while a background refresh is in flight ({S['FIXED_RATE']} req/s, {S['FIXED_CONNS']} connections, "
                 f"{S['REFRESH_DURATION']:g} s per run; us)")
        L.append("")
        L.append("`refreshing`: tokens with expires_in 5, so a refresh about every 4 s, each taking 200 ms at the stand-in; requests whose "
                 "scheduled time fell between a refresh's arrival at the stand-in and its answer are *in flight*. `steady`: the same "
                 "sidecar and stand-in with tokens that live an hour.")
        L.append("")
        L.append("| round | refreshes | requests in flight | p50 in flight | p99 in flight | max in flight | p99 otherwise | p99 steady | p99 in flight / steady | non-2xx | errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for o in refreshes:
            rf, st = o["refreshing"], o["steady"]
            L.append(f"| {o['round']} | {rf['refreshes']} | {rf['in_flight']['n']} | {f0(rf['in_flight']['p50_us'])} | "
                     f"{f0(rf['in_flight']['p99_us'])} | {f0(rf['in_flight']['max_us'])} | {f0(rf['outside']['p99_us'])} | "
                     f"{f0(st['p99_us'])} | {f2(rf['in_flight']['p99_us'] / st['p99_us'] if rf['in_flight']['p99_us'] else None)} | "
                     f"{rf['non2xx'] + st['non2xx']} | {rf['errors'] + st['errors']} |")

    L.append("")
    L.append("### Disturbance detection")
    L.append("")
    L.append(f"A run is disturbed when steal time exceeds {S['STEAL_MAX']:g}% of either core, when processes other than "
             f"the benchmark's use more than {S['FOREIGN_MAX']:g}% of either core, or (closed loop, >= 16 connections) when "
             f"neither core is {S['SATURATION_MIN']:g}% busy with the benchmark. A disturbed run is measured again, up to "
             f"{S['MAX_RETRIES']} more times while the {S['TIME_LIMIT']} s budget allows; the first clean attempt is kept, "
             "else the least disturbed one.")
    L.append("")
    kept = [r for r in RECORDS if r.get("kind") in ("closed", "fixed", "post", "replay", "refreshing", "steady")]
    L.append(f"- measured runs: {len(kept)} (including re-measurements); median steal "
             f"{f1(med([r['steal_proxy_core_pct'] for r in kept]))}% / {f1(med([r['steal_load_core_pct'] for r in kept]))}% "
             f"(proxy core / load core), max {f1(max([r['steal_proxy_core_pct'] for r in kept], default=None))}% / "
             f"{f1(max([r['steal_load_core_pct'] for r in kept], default=None))}%; median foreign CPU "
             f"{f1(med([r['foreign_proxy_core_pct'] for r in kept]))}% / {f1(med([r['foreign_load_core_pct'] for r in kept]))}%")
    remeasured = [f for f in FLAGGED if len(f["attempts"]) > 1]
    L.append(f"- re-measured: {len(remeasured)} run(s); still disturbed after the retries (kept anyway): "
             f"{sum(1 for f in FLAGGED if f['kept_disturbed'])}")
    for f in FLAGGED:
        tries = "; ".join(f"#{i + 1}: " + (", ".join(a) if a else "clean") for i, a in enumerate(f["attempts"]))
        L.append(f"  - {f['label']}: {tries} → kept #{f['kept']}{' (disturbed)' if f['kept_disturbed'] else ''}")
    return "\n".join(L) + "\n"


# --- main -------------------------------------------------------------------------------------

RUNDIR = None
LOAD_PIDS = []
STANDIN = None
STANDIN_LOG = None
COLD_CONNS = S["COLD_CONNS"]


def main():
    global RUNDIR, LOAD_PIDS, STANDIN, STANDIN_LOG, COLD_CONNS
    if not (os.path.isfile(BIN) and os.access(BIN, os.X_OK)):
        die(f"SIDECAR_BIN={BIN!r} is not an executable (run bench/compare.sh)")
    if not (os.path.isfile(LOADGEN) and os.access(LOADGEN, os.X_OK)):
        die(f"LOADGEN_BIN={LOADGEN!r} is not an executable (run bench/compare.sh)")
    for tool in ("nginx", "haproxy", "wrk", "taskset"):
        if not shutil.which(tool):
            die(f"{tool} is not installed (run bench/compare.sh)")
    if os.cpu_count() < 2 or len({S["PROXY_CPU"], S["LOAD_CPU"]}) < 2:
        die("needs 2 cores: PROXY_CPU and LOAD_CPU must differ")
    for name, port in PORTS.items():
        if not port_free(port):
            die(f"port {port} ({name}) is in use; set PORT_BASE")
    # file descriptors for the cold-start burst: the burst's connections, the sidecar's to the
    # backend, and as many again for the backend
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * COLD_CONNS + int(os.environ.get("COLD_FD_MARGIN", 0))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile < want:
        COLD_CONNS = max(100, (nofile - int(os.environ.get("COLD_FD_MARGIN", 0))) // 2)
        log(f"compare.py: RLIMIT_NOFILE is {nofile}: the cold-start burst is {COLD_CONNS} requests, not {S['COLD_CONNS']}")
    os.sched_setaffinity(0, {S["LOAD_CPU"]})
    if S["NICE"]:
        try:  # inherited by every process started from here
            os.setpriority(os.PRIO_PROCESS, 0, S["NICE"])
            prioritise(os.getpid())  # wrk and loadgen run in this session's group
        except OSError as e:
            log(f"compare.py: cannot set NICE={S['NICE']} ({e}); running at the default priority")
            S["NICE"] = 0

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RUNDIR = tempfile.mkdtemp(prefix="nexus-compare.")
    os.chmod(RUNDIR, 0o755)  # nginx workers run as nobody when started by root
    os.makedirs(os.path.join(RUNDIR, "www"))
    os.makedirs(os.path.join(RUNDIR, "tmp"))
    with open(os.path.join(RUNDIR, "www", "ok.json"), "w") as f:
        f.write('{"ok":true}')
    render("backend.conf", NOFILE=nofile, WORKER_CONNECTIONS=nofile - 100)
    render("nginx-proxy.conf")
    render("haproxy.cfg")
    render("sidecar.toml", LOG_LEVEL="warn", _as="sidecar-warn.toml")
    render("sidecar.toml", LOG_LEVEL="info", _as="sidecar-info.toml")
    render("sidecar-replay.toml")
    STANDIN_LOG = os.path.join(RUNDIR, "standin.log")

    def version(cmd):
        p = subprocess.run(cmd, capture_output=True, text=True)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    src_tree = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD:src"], capture_output=True,
                              text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    with open("/proc/cpuinfo") as f:
        model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    mode = "QUICK=1" if QUICK else "full"
    header = "\n".join([
        f"## nexus-sidecar vs nginx vs HAProxy: {stamp} ({mode})",
        "",
        f"- commit `{commit or 'unknown'}`, src tree `{src_tree or 'unknown'}`"
        + (" with uncommitted changes under src/ (or Cargo.*)" if dirty else ""),
        f"- machine: nproc {os.cpu_count()}, {model}, Linux {os.uname().release}; proxy on CPU {S['PROXY_CPU']}, "
        f"load generators + backend on CPU {S['LOAD_CPU']}",
        f"- {version(['nginx', '-v'])}; {version(['haproxy', '-v'])}; {version(['wrk', '-v'])}",
        "- settings: " + ", ".join(f"{k}={v}" for k, v in S.items() if k not in ("PORT_BASE",)),
    ])
    log(header)
    log(f"(run directory {RUNDIR})")

    backend = spawn(["nginx", "-p", RUNDIR + "/", "-c", "backend.conf"], S["LOAD_CPU"])
    wait_port(PORTS["BACKEND_PORT"], "the backend nginx")
    STANDIN = spawn([sys.executable, os.path.join(CONF, "token_standin.py"), str(PORTS["STANDIN_PORT"]), STANDIN_LOG],
                    S["LOAD_CPU"])
    wait_port(PORTS["STANDIN_PORT"], "the token stand-in")
    time.sleep(0.2)
    LOAD_PIDS = [backend.pid] + nginx_workers(backend) + [STANDIN.pid]
    b = f"http://127.0.0.1:{PORTS['BACKEND_PORT']}"
    expect(b + PATH, 401, '{"error":"no bench-token bearer"}')
    expect(b + PATH, 200, '{"ok":true}', {"Authorization": f"Bearer {TOKEN}"})

    # planned measuring time, for the retry budget
    per_round = len(TARGETS) * (S["FIXED_DURATION"] + 1 + len(CONNS) * (S["DURATION"] + 0.5)) \
        + len([t for t in POST_TARGETS if t in TARGETS]) * (S["DURATION"] + 0.5) + (S["DURATION"] + 0.5)
    per_round += (len(TARGETS) + 1) * (S["WARMUP"] + 2)   # start-up, checks and warm-up of each target
    PLANNED[0] = S["ROUNDS"] * per_round + S["REFRESH_ROUNDS"] * 2 * (S["REFRESH_DURATION"] + 3) \
        + S["COLD_ROUNDS"] * 15

    rows = {t: {} for t in TARGETS}
    replays, colds, refreshes = [], [], []
    for rnd in range(1, S["ROUNDS"] + 1):
        order = TARGETS[rnd - 1:] + TARGETS[:rnd - 1]   # rotate, so no target is always first
        log(f"== round {rnd}/{S['ROUNDS']}: {' '.join(order)}  ({time.monotonic() - T0:.0f} s)")
        for t in order:
            rows[t][rnd] = target_round(t, rnd)
        if "sidecar-warn" in TARGETS:
            replays.append(replay_round(rnd))
        if rnd <= S["COLD_ROUNDS"]:
            colds.append(cold_round(rnd))
        if rnd <= S["REFRESH_ROUNDS"]:
            refreshes.append(refresh_round(rnd))
    stop(STANDIN)
    stop(backend)
    took = time.monotonic() - T0
    text = report(rows, replays, colds, refreshes, header + f"\n- measuring took {took:.0f} s")
    os.makedirs(RESULTS, exist_ok=True)
    md = os.path.join(RESULTS, f"{stamp}.md")
    with open(md, "w") as f:
        f.write(text)
    with open(os.path.join(RESULTS, f"{stamp}.json"), "w") as f:
        json.dump({"settings": S, "rows": {t: {str(k): v for k, v in r.items()} for t, r in rows.items()},
                   "replay": replays, "cold_start": colds, "refresh": refreshes, "runs": RECORDS,
                   "flagged": FLAGGED}, f, indent=1, default=str)
    log("")
    log(text)
    log(f"written: {os.path.relpath(md, REPO)} (and .json beside it); measuring took {took:.0f} s")
    failed = [c for c in colds if not c["pass"]]
    if failed:
        die("the cold-start check failed")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        cleanup()
