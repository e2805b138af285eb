#!/usr/bin/env bash
# Profiles the mesh-pair-mtls contender under HTTP/1.1 load: both sidecars under `perf record`
# while wrk runs (the same wrk the harness uses), or oha at a fixed RATE (as the harness's
# latency test), then prints the hottest symbols and the time by binary. With `strace` as the
# third argument it counts the sidecars' system calls instead. Needs root, perf (Debian's
# linux-perf), wrk or oha, strace for that mode; builds nothing (run scripts/bench.sh or
# `cargo build --release --workspace --bins` first).
#   benches/profile.sh [SECONDS] [RATE] [perf|strace]   e.g. benches/profile.sh 10, benches/profile.sh 5 1000 strace
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
RATE=${2:-}
MODE=${3:-perf}
OUT=$(mktemp -d /tmp/mesh-profile.XXXXXX)
export BENCH_HOME=${BENCH_HOME:-$(cd ../shared/bench && pwd)} BENCH_WORKDIR=$OUT/work BENCH_MODE=http \
  BENCH_LISTEN_PORT=19010 BENCH_UPSTREAM_HOST=127.0.0.1 BENCH_UPSTREAM_PORT=19000 \
  BENCH_INTERNAL_PORT=19012 BENCH_THREADS=1
# The backend: the test app's HTTP server on CPU 1 with the sidecars, the load on CPU 0.
taskset -c 1 target/release/mesh-test-app http --listen 127.0.0.1:19000 --name ok >"$OUT/app.log" 2>&1 &
APP=$!
trap 'benches/contenders/mesh-pair-mtls.sh stop || true; kill $APP 2>/dev/null || true' EXIT
taskset -c 1 benches/contenders/mesh-pair-mtls.sh start
PIDS=$(paste -sd, "$BENCH_WORKDIR/pids")
taskset -c 0 wrk -t1 -c50 -d2s http://127.0.0.1:19010/ >/dev/null   # warm the pools
load() { # the load of the measurement: closed loop, or a fixed rate
  if [[ -n $RATE ]]; then
    taskset -c 0 oha -z "${SECS}s" -c 50 -q "$RATE" --no-tui --latency-correction http://127.0.0.1:19010/ \
      | grep -E 'Requests/sec|Slowest|50.00%|99.00%'
  else
    taskset -c 0 wrk -t1 -c50 -d"${SECS}s" http://127.0.0.1:19010/ | grep -E 'Requests/sec|Latency'
  fi
}
if [[ $MODE == strace ]]; then
  TRACERS=()
  for p in ${PIDS//,/ }; do
    timeout $((SECS + 1)) strace -c -f -p "$p" -o "$OUT/strace.$p" 2>/dev/null &
    TRACERS+=($!)
  done
  load
  wait "${TRACERS[@]}" || true
  for f in "$OUT"/strace.*; do echo "== sidecar ${f##*.}"; head -8 "$f"; done
  exit 0
fi
perf record -F 999 -g -o "$OUT/perf.data" -p "$PIDS" -- sleep "$SECS" 2>"$OUT/perf.log" &
PERF=$!
load
wait $PERF
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' | head -40 | cut -c1-160
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -6
echo "perf data: $OUT/perf.data"
