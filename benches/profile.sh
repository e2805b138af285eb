#!/usr/bin/env bash
# Profiles the mesh-pair-mtls contender under HTTP/1.1 load: both sidecars under `perf record`
# while wrk runs (the same wrk the harness uses), then prints the hottest symbols. Needs root,
# perf (Debian's linux-perf) and wrk; builds nothing (run scripts/bench.sh or
# `cargo build --release --workspace --bins` first).
#   benches/profile.sh [SECONDS]      e.g. benches/profile.sh 10
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
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
perf record -F 999 -g -o "$OUT/perf.data" -p "$PIDS" -- sleep "$SECS" 2>"$OUT/perf.log" &
PERF=$!
taskset -c 0 wrk -t1 -c50 -d"${SECS}s" http://127.0.0.1:19010/ | grep -E 'Requests/sec|Latency'
wait $PERF
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' | head -40
echo "perf data: $OUT/perf.data"
