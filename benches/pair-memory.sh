#!/usr/bin/env bash
# Quick look at the mTLS pair: throughput under wrk (-t1 -c50, as the harness) and where each
# sidecar's memory is: peak RSS (VmHWM), anonymous vs file-backed, and the binary's mappings.
# For trying a change in a minute rather than a full harness run (which is what RESULTS.md
# quotes). Needs root, wrk and a release build (the backend is the test app's HTTP server).
#   benches/pair-memory.sh [SECONDS]     (PAIR_MEMORY_ALL=1 lists every resident mapping,
#   PAIR_MEMORY_SECTIONS=1 the resident kB of each section of the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
SECS=${1:-6}
OUT=$(mktemp -d /tmp/mesh-pair-memory.XXXXXX)
export BENCH_HOME=${BENCH_HOME:-$(cd ../shared/bench && pwd)} BENCH_WORKDIR=$OUT/work BENCH_MODE=http \
  BENCH_LISTEN_PORT=19010 BENCH_UPSTREAM_HOST=127.0.0.1 BENCH_UPSTREAM_PORT=19000 \
  BENCH_INTERNAL_PORT=19012 BENCH_THREADS=1
taskset -c 1 $RELEASE_DIR/mesh-test-app http --listen 127.0.0.1:19000 --name ok >"$OUT/backend.log" 2>&1 &
BACKEND=$!
trap 'benches/contenders/mesh-pair-mtls.sh stop >/dev/null 2>&1 || true; kill $BACKEND 2>/dev/null || true; wait $BACKEND 2>/dev/null || true' EXIT
taskset -c 1 benches/contenders/mesh-pair-mtls.sh start
curl -sf -o /dev/null --max-time 5 http://127.0.0.1:19010/ \
  || { echo "pair-memory: no 2xx through the pair (logs in $BENCH_WORKDIR)" >&2; exit 1; }
taskset -c 0 wrk -t1 -c50 -d2s http://127.0.0.1:19010/ >/dev/null
taskset -c 0 wrk -t1 -c50 -d"${SECS}s" http://127.0.0.1:19010/ | grep -E 'Requests/sec'
for p in $(cat "$BENCH_WORKDIR/pids"); do
  echo "== sidecar pid $p: $(grep VmHWM /proc/$p/status | tr -s ' \t' ' ')"
  grep -E '^(Rss|Pss|Pss_Anon|Pss_File|Anonymous)' "/proc/$p/smaps_rollup" | tr -s ' ' | paste -sd' '
  awk -v all="${PAIR_MEMORY_ALL:-}" '/^[0-9a-f]+-/ {name=$6; perm=$2} /^Rss:/ {if ((all && $2 > 0) || name ~ /mesh-proxy$/) printf "   %s %s mapping: %s kB resident\n", (name == "" ? "[anon]" : name), perm, $2}' "/proc/$p/smaps"
  [[ -z ${PAIR_MEMORY_SECTIONS:-} ]] || python3 benches/resident-sections.py "$p" "$(readlink "/proc/$p/exe")"
done
