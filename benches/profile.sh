#!/usr/bin/env bash
# Profiles the mesh-pair-mtls contender (PROFILE_CONTENDER, e.g. relay-pair, for another of
# benches/contenders) under HTTP/1.1 load: both sidecars under `perf record`
# while wrk runs (the same wrk the harness uses), or oha at a fixed RATE (as the harness's
# latency test), then prints the hottest symbols and the time by binary. With `strace` as the
# third argument it counts the sidecars' system calls instead. Needs root, perf (Debian's
# linux-perf), wrk or oha, strace for that mode; builds nothing (run scripts/bench.sh or
# `cargo build --release --workspace --bins` first).
# With `tcp` as the fourth argument the pair runs in opaque L4 mode and the load is one iperf3
# stream (as the harness's L4 test); RATE is then ignored.
#   benches/profile.sh [SECONDS] [RATE] [perf|strace] [http|tcp]
#   e.g. benches/profile.sh 10, benches/profile.sh 5 1000 strace, benches/profile.sh 5 '' perf tcp
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
SECS=${1:-10}
RATE=${2:-}
MODE=${3:-perf}
PROTO=${4:-http}
OUT=$(mktemp -d /tmp/mesh-profile.XXXXXX)
export BENCH_HOME=${BENCH_HOME:-$(cd ../shared/bench && pwd)} BENCH_WORKDIR=$OUT/work BENCH_MODE=$PROTO \
  BENCH_LISTEN_PORT=19010 BENCH_UPSTREAM_HOST=127.0.0.1 BENCH_UPSTREAM_PORT=19000 \
  BENCH_INTERNAL_PORT=19012 BENCH_THREADS=1
# The backend on CPU 1 with the sidecars (the test app's HTTP server, or iperf3 in tcp mode), the
# load on CPU 0.
if [[ $PROTO == tcp ]]; then
  taskset -c 1 iperf3 -s -B 127.0.0.1 -p 19000 >"$OUT/app.log" 2>&1 &
else
  taskset -c 1 $RELEASE_DIR/mesh-test-app http --listen 127.0.0.1:19000 --name ok >"$OUT/app.log" 2>&1 &
fi
APP=$!
CONTENDER=benches/contenders/${PROFILE_CONTENDER:-mesh-pair-mtls}.sh
[[ -x $CONTENDER ]] || die "no contender $CONTENDER"
trap '$CONTENDER stop || true; kill $APP 2>/dev/null || true' EXIT
# Wait for the backend: iperf3 says when it listens, the test app answers.
for _ in $(seq 100); do
  if [[ $PROTO == tcp ]]; then grep -q 'listening' "$OUT/app.log" && break
  else curl -fso /dev/null http://127.0.0.1:19000/ && break; fi
  sleep 0.1
done
taskset -c 1 "$CONTENDER" start
PIDS=$(paste -sd, "$BENCH_WORKDIR/pids")
if [[ $PROTO == http ]]; then
  taskset -c 0 wrk -t1 -c50 -d2s http://127.0.0.1:19010/ >/dev/null   # warm the pools
fi
load() { # the load of the measurement: closed loop, a fixed rate, or one iperf3 stream
  if [[ $PROTO == tcp ]]; then
    taskset -c 0 iperf3 -c 127.0.0.1 -p 19010 -t "$SECS" | grep -E 'sender|receiver'
  elif [[ -n $RATE ]]; then
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
  | grep -E '^ +[0-9]' | head -40 | cut -c1-160 || true # head closes the pipe early: not a failure
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -6 || true
# The sidecars' own time by crate (a Rust symbol's first path segment); the C parts are libc's
# memory functions (malloc, free, memmove, ...) and the rest (libc's system call wrappers,
# aws-lc). Shares are of all samples, kernel included.
echo "== mesh-proxy's samples by crate"
perf report -i "$OUT/perf.data" --no-children --dsos mesh-proxy --sort sym --stdio -g none 2>/dev/null \
  | python3 -c '
import collections, re, sys
by = collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s+([\d.]+)%\s+\[\.\]\s+(.*)", line)
    if not m:
        continue
    name = m.group(2).strip().lstrip("<")
    if "::" in name:
        part = name.split("::")[0]
    elif re.search(r"malloc|free|mem(move|cpy|set|cmp)|realloc|calloc|consolidate|unlink_chunk", name):
        part = "libc memory (malloc, free, memmove, ...)"
    else:
        part = "other C (libc calls, aws-lc)"
    by[part] += float(m.group(1))
print(f"{sum(by.values()):6.2f}% in mesh-proxy in all")
for part, pct in by.most_common(14):
    print(f"{pct:6.2f}% {part}")
'
echo "perf data: $OUT/perf.data"
