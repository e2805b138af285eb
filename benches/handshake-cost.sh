#!/usr/bin/env bash
# What a new connection through the pair costs its sidecars: CPU (perf stat's task-clock of
# both) a request with a new connection for each (oha --disable-keepalive -c 1) against a
# request on a kept one (-c 1), in tcp mode (each app connection then opens a TLS connection
# between the sidecars: the difference is mostly that handshake) and in http mode (the
# sidecars' connections between them are pooled: the difference is the app's connection
# only). For reading benches/wakeups.sh's tcp mode, whose 50 connections each handshake.
# MESH_BIN_DIR=DIR runs other binaries. Builds nothing.
#   benches/handshake-cost.sh [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benches/lib/pair.sh
N=${1:-3000}
command -v perf >/dev/null && command -v oha >/dev/null \
  || { echo "handshake-cost: needs perf and oha (scripts/bench.sh installs them)" >&2; exit 1; }
for mode in tcp http; do
  (
    export PAIR_MODE=$mode
    pair_start handshake-cost
    P=$(grep -v '^$' "$BENCH_WORKDIR/pids" | tail -2 | paste -sd,)
    cpu() { # µs of the two sidecars' CPU a request under oha ARGS
      perf stat -x, -e task-clock -p "$P" -o "$OUT/perf" -- \
        taskset -c 0 oha -n "$N" -c 1 "$@" --no-tui http://127.0.0.1:19010/ >/dev/null
      awk -F, -v n="$N" '$3 == "task-clock" { printf "%.1f", $1 * 1000 / n }' "$OUT/perf"
    }
    taskset -c 0 oha -n "$N" -c 1 --disable-keepalive --no-tui http://127.0.0.1:19010/ >/dev/null
    new=$(cpu --disable-keepalive)
    kept=$(cpu)
    echo "$mode mode: a request on a new connection $new µs of the pair's CPU, on a kept one $kept"
  )
done
