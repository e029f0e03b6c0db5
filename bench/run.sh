#!/usr/bin/env bash
# Reproduces the numbers in bench/README.md: nexus-sidecar's per-request overhead as ratios
# against nginx doing the same job in the same run, plus the direct upstream as a baseline.
#
#   bench/run.sh                      # everything: install wrk/nginx if missing, build, measure
#   SKIP_BUILD=1 bench/run.sh         # use an existing release binary
#   RUNS=3 DURATION=10 DEMO_DURATION=5 CONNS=32 CARGO_TARGET_DIR=../target-bench bench/run.sh
#
# Loopback only (127.0.0.1), bounded: every wrk run lasts DURATION seconds (default 10), and
# the whole script about 4 minutes after the build. Every process it starts is stopped on exit.
# Needs 2+ cores: the proxy under test is pinned to PROXY_CPU, wrk and the upstream to LOAD_CPU.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
RUNS=${RUNS:-3}              # rounds; every configuration is measured once per round
DURATION=${DURATION:-10}     # seconds per measured wrk run
WARMUP=${WARMUP:-2}          # seconds of discarded wrk traffic before each measured run
CONNS=${CONNS:-32}
PROXY_CPU=${PROXY_CPU:-0}    # the proxy under test (nginx worker, nexus-sidecar, demo process)
LOAD_CPU=${LOAD_CPU:-1}      # wrk and the upstream nginx
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/nexus-sidecar
RESULTS=${RESULTS:-$HERE/results}
PATH_UNDER_TEST=/v1/x
PORTS=(9000 8088 8090 8091)  # upstream, nginx proxy, sidecar static, sidecar client_credentials

die() { echo "run.sh: $*" >&2; exit 1; }

# --- processes: every one started here is recorded and stopped on exit -----------------------
PIDS=()
RUNDIR=$(mktemp -d -t nexus-bench.XXXXXX)   # under $TMPDIR, /tmp by default
stop() { # stop PID: TERM, up to 5 s, then KILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}
cleanup() {
    local p
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop "$p"; done
    rm -rf "$RUNDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() { # wait_http URL: until it answers (5 s at most)
    local i
    for i in $(seq 50); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.1
    done
    die "nothing answers at $1"
}
expect() { # expect URL WANT [curl args]: the body must be WANT exactly
    local url=$1 want=$2 got; shift 2
    got=$(curl -s --max-time 2 "$@" "$url") || die "$url: no answer"
    [[ $got == "$want" ]] || die "$url: expected '$want', got '$got'"
}

# --- setup -----------------------------------------------------------------------------------
(( $(nproc) >= 2 )) || die "needs 2 cores (one for the proxy, one for wrk and the upstream)"
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    [[ $(id -u) == 0 ]] || die "install wrk and nginx-light (apt-get install -y wrk nginx-light)"
    apt-get update -qq
    # policy-rc.d (if present) keeps the package from starting a system-wide nginx on :80
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
fi
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --locked)
fi
[[ -x $BIN ]] || die "no binary at $BIN (build it, or set CARGO_TARGET_DIR)"
for port in "${PORTS[@]}"; do
    [[ -z $(ss -ltnH "sport = :$port") ]] || die "port $port is already in use on this machine"
done

mkdir -p "$RESULTS" "$RUNDIR"/{upstream-tmp,proxy-tmp}
cp "$HERE"/nginx.conf "$HERE"/nginx-upstream.conf "$HERE"/sidecar.toml "$RUNDIR"/
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW=$RESULTS/raw-$STAMP.txt   # every wrk output, verbatim
TSV=$RESULTS/runs-$STAMP.tsv  # one line per measured run
CLK_TCK=$(getconf CLK_TCK)
{
    echo "# nexus-sidecar bench $STAMP"
    echo "# commit $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "# nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo)"
    echo "# $(uname -sr); $(nginx -v 2>&1); $(wrk -v 2>&1 | head -1)"
    echo "# RUNS=$RUNS DURATION=${DURATION}s WARMUP=${WARMUP}s CONNS=$CONNS PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU"
} | tee "$RAW"
printf 'config\tround\trps\tp50_us\tp99_us\tproxy_cpu_us_per_req\tproxy_cpu_pct\tcpu%s_busy_pct\tcpu%s_busy_pct\trss_kib\tnon2xx\tsocket_errors\tloadavg\tcpu%s_steal_pct\n' \
    "$PROXY_CPU" "$LOAD_CPU" "$PROXY_CPU" >"$TSV"

# --- measuring -------------------------------------------------------------------------------
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }       # utime + stime, all threads
# cpu_busy N: "busy total steal" jiffies of core N (steal: time the hypervisor ran something else)
cpu_busy() { awk -v c="cpu$1" '$1 == c {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat; }
to_us() { # wrk's "339.00us" / "1.05ms" / "1.20s" in microseconds
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "ms") n *= 1000; else if (u == "s") n *= 1000000; printf "%.0f", n }'
}
wrk_load() { taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" --latency "$@"; }

# measure CONFIG ROUND PROXY_PID URL [wrk args...]: one warm-up, one measured run, one TSV line
measure() {
    local config=$1 round=$2 pid=$3 url=$4; shift 4
    wrk_load -d"${WARMUP}s" "$@" "$url" >/dev/null
    local load t0=0 t1=0 b0 b1 l0 l1 out
    load=$(cut -d' ' -f1 /proc/loadavg)
    [[ -n $pid ]] && t0=$(proc_ticks "$pid")
    b0=$(cpu_busy "$PROXY_CPU"); l0=$(cpu_busy "$LOAD_CPU")
    out=$(wrk_load -d"${DURATION}s" "$@" "$url")
    [[ -n $pid ]] && t1=$(proc_ticks "$pid")
    b1=$(cpu_busy "$PROXY_CPU"); l1=$(cpu_busy "$LOAD_CPU")
    printf '\n## %s round %s (%s)\n%s\n' "$config" "$round" "$url" "$out" >>"$RAW"
    local rps p50 p99 reqs non2xx errs rss="-" cpu_us="-" cpu_pct="-"
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    reqs=$(awk '/ requests in / {print $1}' <<<"$out")
    non2xx=$(awk -F': ' '/Non-2xx or 3xx responses/ {print $2}' <<<"$out"); non2xx=${non2xx:-0}
    errs=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out"); errs=${errs:-0}
    if [[ -n $pid ]]; then
        cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
        cpu_pct=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$DURATION" 'BEGIN {printf "%.0f", d / hz / s * 100}')
        rss=$(ps -o rss= -p "$pid" | tr -d ' ')
    fi
    local busy0 busy1
    busy0=$(awk -v a="$b0" -v b="$b1" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", (y[1]-x[1]) / (y[2]-x[2]) * 100}')
    busy1=$(awk -v a="$l0" -v b="$l1" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", (y[1]-x[1]) / (y[2]-x[2]) * 100}')
    local steal0
    steal0=$(awk -v a="$b0" -v b="$b1" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", (y[3]-x[3]) / (y[2]-x[2]) * 100}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$config" "$round" "$rps" "$p50" "$p99" \
        "$cpu_us" "$cpu_pct" "$busy0" "$busy1" "$rss" "$non2xx" "$errs" "$load" "$steal0" >>"$TSV"
    printf '  %-22s round %s: %7s req/s  p50 %5s us  p99 %6s us  proxy CPU %4s us/req (%s%%)  rss %s KiB  core%s busy %s%% steal %s%%  non-2xx %s  errors %s\n' \
        "$config" "$round" "$rps" "$p50" "$p99" "$cpu_us" "$cpu_pct" "$rss" "$PROXY_CPU" "$busy0" "$steal0" "$non2xx" "$errs"
    [[ $non2xx == 0 && $errs == 0 ]] || echo "  WARNING: $config round $round had non-2xx responses or socket errors" >&2
}

start_sidecar() { # start_sidecar RUST_LOG: sets SIDECAR
    RUST_LOG=$1 taskset -c "$PROXY_CPU" "$BIN" --config "$RUNDIR/sidecar.toml" 2>/dev/null &
    SIDECAR=$!; PIDS+=("$SIDECAR")
    wait_http "http://127.0.0.1:8090/"
    wait_http "http://127.0.0.1:8091/"
    expect "http://127.0.0.1:8090$PATH_UNDER_TEST" '{"ok":true}'
    expect "http://127.0.0.1:8090/whoami" 'Bearer bench-token'
    expect "http://127.0.0.1:8091/whoami" 'Bearer bench-token'
}

# The upstream (core LOAD_CPU, beside wrk) and the nginx proxy (core PROXY_CPU) stay up throughout.
taskset -c "$LOAD_CPU" nginx -p "$RUNDIR/" -c nginx-upstream.conf &
UPSTREAM=$!; PIDS+=("$UPSTREAM")
wait_http "http://127.0.0.1:9000/"
UPSTREAM_WORKER=$(pgrep -P "$UPSTREAM")
taskset -c "$PROXY_CPU" nginx -p "$RUNDIR/" -c nginx.conf &
NGINX=$!; PIDS+=("$NGINX")
wait_http "http://127.0.0.1:8088/"
NGINX_WORKER=$(pgrep -P "$NGINX")
expect "http://127.0.0.1:9000$PATH_UNDER_TEST" '{"ok":true}'
expect "http://127.0.0.1:8088$PATH_UNDER_TEST" '{"ok":true}'
expect "http://127.0.0.1:8088/whoami" 'Bearer bench-token'

echo "== static upstream: direct, nginx, nexus-sidecar ($RUNS rounds x ${DURATION}s each)"
for round in $(seq "$RUNS"); do
    measure direct "$round" "" "http://127.0.0.1:9000$PATH_UNDER_TEST"
    measure nginx "$round" "$NGINX_WORKER" "http://127.0.0.1:8088$PATH_UNDER_TEST"
    start_sidecar warn
    measure sidecar-warn "$round" "$SIDECAR" "http://127.0.0.1:8090$PATH_UNDER_TEST"
    measure sidecar-warn-cc "$round" "$SIDECAR" "http://127.0.0.1:8091$PATH_UNDER_TEST"
    stop "$SIDECAR"
    start_sidecar info   # one log line per request, to /dev/null
    measure sidecar-info "$round" "$SIDECAR" "http://127.0.0.1:8090$PATH_UNDER_TEST"
    stop "$SIDECAR"
done
stop "$NGINX"
stop "$UPSTREAM"

# --- the demo: the real client_credentials path against an in-process stand-in ---------------
# The stand-in API and the sidecar share one process (and so core PROXY_CPU); compare the demo
# only with itself: the stand-in API direct (with a token fetched by curl) vs through the sidecar.
# The stand-in keeps every request it saw in memory (several KB each, never freed), which grows
# the process by GBs and slows it as it grows: so each demo run gets a fresh process, and runs
# are DEMO_DURATION (5 s) long.
echo "== demo: stand-in API direct vs through the sidecar on its nuvy-nexus upstream (fresh process per run)"
start_demo() { # sets DEMO, DEMO_SIDECAR, DEMO_STANDIN
    : >"$RUNDIR/demo.out"
    RUST_LOG=warn taskset -c "$PROXY_CPU" "$BIN" demo >"$RUNDIR/demo.out" 2>/dev/null &
    DEMO=$!; PIDS+=("$DEMO")
    local i
    for i in $(seq 50); do grep -q 'Ctrl-C stops' "$RUNDIR/demo.out" && break; sleep 0.1; done
    DEMO_SIDECAR=$(awk '$1 == "nuvy-nexus" {print $2; exit}' "$RUNDIR/demo.out")
    DEMO_STANDIN=$(awk '$1 == "nuvy-nexus" {print $6; exit}' "$RUNDIR/demo.out")
    [[ $DEMO_SIDECAR == http://127.0.0.1:* && $DEMO_STANDIN == http://127.0.0.1:* ]] \
        || die "could not read the demo's addresses: $(cat "$RUNDIR/demo.out")"
    wait_http "$DEMO_SIDECAR/"
}
demo_token() { # a live token from the stand-in (they live 60 s: fetched right before the run)
    curl -s --max-time 2 -u demo-nuvy-nexus:demo-secret -d grant_type=client_credentials \
        "$DEMO_STANDIN/nexus/oauth2/token" | sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p'
}
DEMO_DURATION=${DEMO_DURATION:-5}
for round in $(seq "$RUNS"); do
    start_demo
    token=$(demo_token); [[ -n $token ]] || die "no token from the stand-in"
    DURATION=$DEMO_DURATION WARMUP=1 measure demo-direct "$round" "$DEMO" \
        "$DEMO_STANDIN$PATH_UNDER_TEST" -H "Authorization: Bearer $token"
    stop "$DEMO"
    start_demo
    DURATION=$DEMO_DURATION WARMUP=1 measure demo-sidecar "$round" "$DEMO" "$DEMO_SIDECAR$PATH_UNDER_TEST"
    stop "$DEMO"
done

# --- the table: medians over the rounds, ratios against nginx (and the demo against itself) --
SUMMARY=$RESULTS/summary-$STAMP.md
awk -F'\t' -v runs="$RUNS" -v dur="$DURATION" -v ddur="$DEMO_DURATION" -v conns="$CONNS" '
function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    if (a[1] == "-") return "-"
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function r(x, y) { return (x == "-" || y == "-" || y + 0 == 0) ? "-" : sprintf("%.2f", x / y) }
NR > 1 {
    if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 }
    rps[$1] = rps[$1] " " $3; p50[$1] = p50[$1] " " $4; p99[$1] = p99[$1] " " $5
    cpu[$1] = cpu[$1] " " $6; pct[$1] = pct[$1] " " $7; rss[$1] = rss[$1] " " $10
    if ($7 != "-" && $7 + 0 < 95) short = short sprintf(" %s/%s (%s%%)", $1, $2, $7)
}
END {
    for (i = 1; i <= n; i++) { c = order[i]
        R[c] = median(rps[c]); P50[c] = median(p50[c]); P99[c] = median(p99[c])
        CPU[c] = median(cpu[c]); PCT[c] = median(pct[c]); RSS[c] = median(rss[c]) }
    printf "Medians of %d runs each (wrk -t1 -c%s --latency; %s s per run, demo rows %s s). Ratios: against nginx; demo rows against demo-direct.\n\n", runs, conns, dur, ddur
    print "| config | req/s | p50 (us) | p99 (us) | proxy CPU (us/req) | proxy CPU (% of its core) | RSS after run (KiB) | req/s ratio | p50 ratio | p99 ratio |"
    print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= n; i++) { c = order[i]
        ref = (c ~ /^demo/) ? "demo-direct" : "nginx"
        if (c ~ /^demo/) RSS[c] = "n/a (stand-in log)"
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c, R[c], P50[c], P99[c], CPU[c], PCT[c], RSS[c],
            r(R[c], R[ref]), r(P50[c], P50[ref]), r(P99[c], P99[ref]) }
    printf "\nsidecar-warn vs nginx: %s x the throughput, %s x the CPU per request.\n", r(R["sidecar-warn"], R["nginx"]), r(CPU["sidecar-warn"], CPU["nginx"])
    printf "logging cost (sidecar-info vs sidecar-warn): %s x the throughput, %s x the CPU per request.\n", r(R["sidecar-info"], R["sidecar-warn"]), r(CPU["sidecar-info"], CPU["sidecar-warn"])
    printf "cached client_credentials vs static token: %s x the throughput, %s x the CPU per request.\n", r(R["sidecar-warn-cc"], R["sidecar-warn"]), r(CPU["sidecar-warn-cc"], CPU["sidecar-warn"])
    if (short != "") printf "runs whose proxy used < 95%% of its core (something else held the machine; their req/s is low):%s\n", short
}' "$TSV" | tee "$SUMMARY"
echo
echo "raw wrk output: $RAW"
echo "per-run lines:  $TSV"
echo "summary:        $SUMMARY"
