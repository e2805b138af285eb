#!/usr/bin/env bash
# meshd's RSS through the control-plane scale benchmark, sampled every half second, to see where
# the peak falls (registrations, first syncs, changes): runs mesh-cp-scale (N clients, default
# 1000; variant sotw or delta, default sotw) and prints a line per sample (seconds, RSS, and of
# it the anonymous and the file-backed MiB), then the run's own summary line. Needs the release binaries (scripts/bench-control-plane.sh builds them).
#   benches/meshd-rss.sh [CLIENTS] [VARIANT]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
CLIENTS=${1:-1000}
VARIANT=${2:-sotw}
[[ -x $RELEASE_DIR/mesh-cp-scale ]] || { echo "meshd-rss: build first: scripts/bench-control-plane.sh --clients 1" >&2; exit 1; }
OUT=$(mktemp -d /tmp/meshd-rss.XXXXXX)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
taskset -c 0 $RELEASE_DIR/mesh-cp-scale --meshd $RELEASE_DIR/meshd --clients "$CLIENTS" \
  --variant "$VARIANT" --changes 2 > "$OUT/scale.log" 2>&1 &
SCALE=$!
START=$(date +%s.%N)
# A sampler, not a wait: one reading of meshd's VmRSS per half second while the run lasts.
while kill -0 "$SCALE" 2>/dev/null; do
  for pid in $(pgrep -x meshd || true); do
    # VmRSS, and of it the anonymous memory and the file-backed (the binary's code and data)
    read -r rss anon file < <(awk '/^VmRSS/ {r = $2} /^RssAnon/ {a = $2} /^RssFile/ {f = $2}
      END { print r, a, f }' "/proc/$pid/status" 2>/dev/null || true)
    [[ -n ${rss:-} ]] && awk -v s="$START" -v n="$(date +%s.%N)" -v r="$rss" -v a="$anon" -v f="$file" \
      'BEGIN { printf "%5.1f s %6.1f MiB (anonymous %6.1f, file %5.1f)\n", n - s, r / 1024, a / 1024, f / 1024 }'
  done
  sleep 0.5
done
wait "$SCALE" || { echo "meshd-rss: mesh-cp-scale failed:" >&2; tail -5 "$OUT/scale.log" >&2; exit 1; }
grep -E 'in sync after|RSS' "$OUT/scale.log"
tail -1 "$OUT/scale.log"
