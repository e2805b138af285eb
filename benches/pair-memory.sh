#!/usr/bin/env bash
# Quick look at the mTLS pair: throughput under wrk (-t1 -c50, as the harness) and where each
# sidecar's memory is: peak RSS (VmHWM), anonymous vs file-backed, and the binary's mappings.
# For trying a change in a minute rather than a full harness run (which is what RESULTS.md
# quotes). Needs root, wrk, nginx (the backend, as in the harness) and a release build.
#   benches/pair-memory.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-6}
OUT=$(mktemp -d /tmp/mesh-pair-memory.XXXXXX)
export BENCH_HOME=${BENCH_HOME:-$(cd ../shared/bench && pwd)} BENCH_WORKDIR=$OUT/work BENCH_MODE=http \
  BENCH_LISTEN_PORT=19010 BENCH_UPSTREAM_HOST=127.0.0.1 BENCH_UPSTREAM_PORT=19000 \
  BENCH_INTERNAL_PORT=19012 BENCH_THREADS=1
taskset -c 1 nginx -c /dev/null -g "daemon off; worker_processes 1; pid $OUT/nginx.pid; error_log stderr; events {} http { access_log off; server { listen 127.0.0.1:19000; keepalive_requests 10000000; location / { return 200 ok; } } }" >"$OUT/backend.log" 2>&1 &
BACKEND=$!
trap 'benches/contenders/mesh-pair-mtls.sh stop >/dev/null 2>&1 || true; kill $BACKEND 2>/dev/null || true; wait $BACKEND 2>/dev/null || true' EXIT
taskset -c 1 benches/contenders/mesh-pair-mtls.sh start
taskset -c 0 wrk -t1 -c50 -d2s http://127.0.0.1:19010/ >/dev/null
taskset -c 0 wrk -t1 -c50 -d"${SECS}s" http://127.0.0.1:19010/ | grep -E 'Requests/sec'
for p in $(cat "$BENCH_WORKDIR/pids"); do
  echo "== sidecar pid $p: $(grep VmHWM /proc/$p/status | tr -s ' \t' ' ')"
  grep -E '^(Rss|Pss|Pss_Anon|Pss_File|Anonymous)' "/proc/$p/smaps_rollup" | tr -s ' ' | paste -sd' '
  awk '/^[0-9a-f]+-/ {name=$6; perm=$2} /^Rss:/ {if (name ~ /mesh-proxy$/) printf "   mesh-proxy %s mapping: %s kB resident\n", perm, $2}' "/proc/$p/smaps"
done
