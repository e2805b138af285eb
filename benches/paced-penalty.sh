#!/usr/bin/env bash
# What a request costs the pair when its core never idles against when it idles between
# requests: the user and system CPU a request of both sidecars (clock ticks from
# /proc/PID/stat), first closed loop with one connection (oha -c 1: the next request follows
# the answer at once, so the proxies' core stays busy), then paced as in the harness's latency
# test (oha -q RATE -c 50: the core idles between requests and every request wakes it), and
# paced on one connection (-q RATE -c 1), which tells idling from the number of connections.
# The same instructions run in both; the difference is what waking a cold core costs them.
# PAIR_CONTENDER=relay-pair measures the floor (two processes that only relay the bytes);
# MESH_BIN_DIR=DIR other binaries. Builds nothing.
#   [PAIR_CONTENDER=relay-pair] benches/paced-penalty.sh [ROUNDS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benches/lib/pair.sh
ROUNDS=${1:-2}
RATE=${2:-1000}
command -v oha >/dev/null || { echo "paced-penalty: needs oha (scripts/bench.sh installs it)" >&2; exit 1; }
pair_start paced-penalty
mapfile -t PIDS < <(grep -v '^$' "$BENCH_WORKDIR/pids" | tail -2)
TICK_HZ=$(getconf CLK_TCK)
ticks() { # user and system ticks of the two sidecars, summed
  local u=0 s=0 a b p
  for p in "${PIDS[@]}"; do
    read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat")
    u=$((u + a)) s=$((s + b))
  done
  echo "$u $s"
}
run() { # LABEL OHA-ARGS...: one load, its CPU a request
  local label=$1 u0 s0 u1 s1 n
  shift
  read -r u0 s0 < <(ticks)
  taskset -c 0 oha "$@" --no-tui --output-format json http://127.0.0.1:19010/ >"$OUT/oha.json"
  read -r u1 s1 < <(ticks)
  n=$(python3 -c 'import json, sys; print(sum(json.load(sys.stdin)["statusCodeDistribution"].values()))' \
    <"$OUT/oha.json")
  awk -v l="$label" -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$TICK_HZ" 'BEGIN {
    printf "%-28s %8d %12.1f %12.1f %12.1f\n", l, n, u * 1e6 / hz / n, s * 1e6 / hz / n,
      (u + s) * 1e6 / hz / n }'
}
echo "== ${PAIR_CONTENDER:-mesh-pair-mtls}: CPU µs a request of both sidecars (by clock tick)"
printf '%-28s %8s %12s %12s %12s\n' load requests user system total
taskset -c 0 oha -n 5000 -c 1 --no-tui http://127.0.0.1:19010/ >/dev/null   # warm up
for _ in $(seq "$ROUNDS"); do
  run "closed loop, 1 connection" -n 60000 -c 1
  run "paced, $RATE req/s, 1 conn" -z 20s -q "$RATE" -c 1
  run "paced, $RATE req/s, 50 conns" -z 20s -q "$RATE" -c 50
done
