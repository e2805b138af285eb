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
source benches/lib/pair.sh
pair_start pair-memory
taskset -c 0 wrk -t1 -c50 -d2s http://127.0.0.1:19010/ >/dev/null
taskset -c 0 wrk -t1 -c50 -d"${SECS}s" http://127.0.0.1:19010/ | grep -E 'Requests/sec'
for p in $(cat "$BENCH_WORKDIR/pids"); do
  echo "== sidecar pid $p: $(grep VmHWM /proc/$p/status | tr -s ' \t' ' ')"
  grep -E '^(Rss|Pss|Pss_Anon|Pss_File|Anonymous)' "/proc/$p/smaps_rollup" | tr -s ' ' | paste -sd' '
  awk -v all="${PAIR_MEMORY_ALL:-}" '/^[0-9a-f]+-/ {name=$6; perm=$2} /^Rss:/ {if ((all && $2 > 0) || name ~ /mesh-proxy$/) printf "   %s %s mapping: %s kB resident\n", (name == "" ? "[anon]" : name), perm, $2}' "/proc/$p/smaps"
  [[ -z ${PAIR_MEMORY_SECTIONS:-} ]] || python3 benches/resident-sections.py "$p" "$(readlink "/proc/$p/exe")"
done
