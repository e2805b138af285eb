#!/usr/bin/env bash
# Where the mTLS pair's CPU goes: user space against the kernel, and the system calls each
# sidecar makes per request. The pair (benches/lib/pair.sh) under `wrk -t1 -c50`, as in the
# harness's max-throughput test, or with RATE under `oha -q RATE -c 50`, as in its fixed-rate
# tests:
#   1. user and system ticks of each sidecar (/proc/PID/stat) over SECONDS of wrk, and its time
#      on a CPU to the nanosecond (/proc/PID/task/*/schedstat);
#   2. `strace -c` on both sidecars over a second run of SECONDS/2 (strace slows them, so
#      only the counts per request mean anything, not the rate).
# Needs root, wrk (oha with RATE), strace and a release build. MESH_BIN_DIR picks other binaries
# (see benches/contenders/_mesh.sh). At a fixed rate the ticks (10 ms each) are few: run it a
# few times, alternating builds, before reading a difference.
#   [MESH_PROXY_ARGS=...] [MESH_BIN_DIR=...] benches/cpu-split.sh [SECONDS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
SECONDS_RUN=${1:-10}
RATE=${2:-}
for t in wrk strace curl ${RATE:+oha}; do
  command -v "$t" >/dev/null || die "needs $t (apt-get install -y wrk strace curl)"
done
source benches/lib/pair.sh
pair_start cpu-split
# pids holds the sidecars in start order: the server side first, then the client side.
mapfile -t PIDS < <(grep -v '^$' "$BENCH_WORKDIR/pids" | tail -2)
SERVER=${PIDS[0]:-} CLIENT=${PIDS[1]:-}
URL=http://127.0.0.1:19010/
requests() { # wrk's output on stdin -> the number of requests it completed
  awk '/requests in/ {print $1}'
}
load() { # SECONDS -> the number of requests completed under the load, in that many seconds
  if [[ -n $RATE ]]; then
    # oha's count of successful requests (its JSON output).
    taskset -c 0 oha --no-tui --output-format json --latency-correction -q "$RATE" -c 50 -z "${1}s" "$URL" |
      python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["statusCodeDistribution"].values()))'
  else
    taskset -c 0 wrk -t1 -c50 -d"${1}s" "$URL" | requests
  fi
}
what="wrk -t1 -c50"
[[ -n $RATE ]] && what="oha -q $RATE -c 50"
ticks() { # utime and stime of the server side, then of the client side, then each side's time
  # on a CPU in ns (/proc/PID/task/*/schedstat, summed over its threads: exact, where the
  # ticks are 10 ms apart)
  for p in $SERVER $CLIENT; do awk '{printf "%s %s ", $14, $15}' "/proc/$p/stat"; done
  for p in $SERVER $CLIENT; do cat /proc/"$p"/task/*/schedstat | awk '{ns += $1} END {printf "%d ", ns}'; done
}
taskset -c 0 wrk -t1 -c50 -d2s "$URL" >/dev/null
before=$(ticks)
n=$(load "$SECONDS_RUN")
after=$(ticks)
echo "== $n requests in ${SECONDS_RUN}s ($what)"
python3 - "$before" "$after" "$n" "$(getconf CLK_TCK)" <<'EOF'
import sys
b, a = (list(map(int, x.split())) for x in sys.argv[1:3])
n, hz = int(sys.argv[3]), int(sys.argv[4])
d = [y - x for x, y in zip(b, a)]
user, kernel = d[0] + d[2], d[1] + d[3]
for side, (u, k), ns in (('server side', d[0:2], d[4]), ('client side', d[2:4], d[5])):
    print(f'{side}: user {u} ticks, kernel {k} ticks ({u / hz / n * 1e6:.1f} + {k / hz / n * 1e6:.1f} us a request); on a CPU {ns / n / 1e3:.1f} us a request')
print(f'pair: on a CPU {(d[4] + d[5]) / n / 1e3:.1f} us a request (schedstat)')
print(f'pair: user {100 * user / (user + kernel):.0f}%, kernel {100 * kernel / (user + kernel):.0f}% of its CPU')
EOF
half=$(( SECONDS_RUN / 2 > 0 ? SECONDS_RUN / 2 : 1 ))
for p in $SERVER $CLIENT; do
  strace -c -f -p "$p" -o "$OUT/strace.$p" 2>/dev/null &
done
# strace has attached once the process names a tracer.
for p in $SERVER $CLIENT; do
  for _ in $(seq 100); do
    [[ $(awk '/TracerPid/ {print $2}' "/proc/$p/status") != 0 ]] && break
    sleep 0.05
  done
done
n=$(load "$half")
for p in $SERVER $CLIENT; do pkill -INT -f "strace -c -f -p $p" || true; done
for p in $SERVER $CLIENT; do
  for _ in $(seq 100); do [[ -s $OUT/strace.$p ]] && break; sleep 0.05; done
done
echo "== system calls per request under strace ($n requests, $what ${half}s)"
for side in server client; do
  p=$SERVER; [[ $side == client ]] && p=$CLIENT
  awk -v n="$n" -v side="$side side" '
    $NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" { printf "%s: %-14s %6.2f a request\n", side, $NF, $4 / n }
  ' "$OUT/strace.$p" | head -6
done
