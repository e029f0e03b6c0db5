#!/usr/bin/env bash
# nexus-sidecar vs nginx vs HAProxy, from a fresh clone, in one command (see BENCHMARKS.md):
#
#   bench/compare.sh              # ~12 min of measuring (3 rounds), after installing and building
#   QUICK=1 bench/compare.sh      # 3-4 min (2 short rounds): checks that everything works
#   SKIP_BUILD=1 bench/compare.sh # reuse the binaries already built
#
# 1. installs what is missing from Debian's packages (wrk, nginx-light, haproxy, python3,
#    util-linux for taskset), with sudo unless root;
# 2. builds nexus-sidecar (cargo build --release --locked) and the load generator
#    (bench/loadgen, its own cargo project), into $CARGO_TARGET_DIR when that is set;
# 3. runs bench/compare.py, which measures on 127.0.0.1 only, stops every process it started,
#    and writes bench/results/<UTC timestamp>.md (and .json). Its knobs are environment
#    variables, listed at the top of compare.py (ROUNDS, DURATION, CONNS, PROXY_CPU, ...).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    echo "compare.sh: installing ${need[*]}"
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    # Debian starts the packaged nginx/haproxy services on install where it can; a
    # policy-rc.d (containers) prevents that. Either way the benchmark uses its own ports.
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

target_dir=${CARGO_TARGET_DIR:-$REPO/target}
loadgen_dir=${CARGO_TARGET_DIR:-$HERE/loadgen/target}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$REPO" && cargo build --release --locked)
    (cd "$HERE/loadgen" && cargo build --release --locked)
fi
export SIDECAR_BIN=$target_dir/release/nexus-sidecar
export LOADGEN_BIN=$loadgen_dir/release/loadgen
exec python3 "$HERE/compare.py"
