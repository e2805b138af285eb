#!/usr/bin/env bash
# What one request costs each contender at a fixed rate, in the kernel's terms: context switches,
# CPU migrations and CPU time per request of all its processes (perf stat's software counters:
# this VM has no hardware ones), and that time split into user and system time (the kernel's
# accounting in /proc/PID/stat, by clock tick: a sample, not a count), under oha at
# RATE req/s as in the harness's latency test. For comparing the mesh pair's wakeups with the
# peers' (the CPU per request at 1000 req/s is the cost of waking up, see RESULTS.md). Needs
# root, perf (Debian's linux-perf), oha, and the harness's tools for its contenders (nginx,
# haproxy); builds nothing (run scripts/bench.sh or `cargo build --release --workspace --bins`).
# Then, in a second run of 2 s under perf's tracepoints (system calls and wakeups on both CPUs),
# the contender's system calls by whom they woke: a task on the other CPU (the load generator's,
# for the proxy that answers it), tasks on its own CPU, or none (benches/lib/wake-costs.py):
# calls per request, median µs and µs per request, slowed alike by the tracing.
# WAKEUPS_MODE=tcp runs the contenders in the harness's tcp mode under the same HTTP load: the
# mesh pair then relays the HTTP bytes through its TLS connection without reading them, which
# tells its HTTP layer's cost from its TLS relaying's (each of oha's 50 connections then has a
# TLS connection of its own between the sidecars: their handshakes are in the run's CPU).
# WAKEUPS_TRACE=no leaves out the run under tracepoints (the first table only).
# RATE=closed loads closed loop on one connection instead (oha -c 1, no pacing: the proxies'
# core never idles; benches/paced-penalty.sh), for the same work without waking a cold core.
#   [WAKEUPS_MODE=http|tcp] [WAKEUPS_TRACE=no] benches/wakeups.sh [RATE|closed] [SECONDS] [CONTENDER ...]
#   e.g. benches/wakeups.sh 1000 10 nginx-mtls haproxy-mtls mesh-pair-mtls
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
RATE=${1:-1000}
LOAD=(-c 50 -q "$RATE")
[[ $RATE == closed ]] && LOAD=(-c 1)
SECS=${2:-10}
shift $(( $# >= 2 ? 2 : $# ))
CONTENDERS=("$@")
[[ ${#CONTENDERS[@]} -gt 0 ]] || CONTENDERS=(nginx-mtls haproxy-mtls mesh-pair-mtls)
for tool in perf oha; do
  command -v "$tool" >/dev/null || { echo "wakeups: needs $tool" >&2; exit 1; }
done
BENCH_HOME=${BENCH_HOME:-$(cd ../shared/bench && pwd)}
OUT=$(mktemp -d /tmp/mesh-wakeups.XXXXXX)
bash "$BENCH_HOME/lib/gen-certs.sh" "$OUT/certs"
C=$OUT/certs
export BENCH_HOME BENCH_MODE=${WAKEUPS_MODE:-http} BENCH_LISTEN_PORT=19010 BENCH_LISTEN_PORT_H2=19011 \
  BENCH_UPSTREAM_HOST=127.0.0.1 BENCH_UPSTREAM_PORT=19000 BENCH_UPSTREAM_PORT_H2= \
  BENCH_INTERNAL_PORT=19012 BENCH_INTERNAL_PORTS=19012-19029 BENCH_THREADS=1 BENCH_PROXY_CPUS=1 \
  BENCH_CA=$C/ca.crt BENCH_SERVER_CERT=$C/server.crt BENCH_SERVER_KEY=$C/server.key \
  BENCH_SERVER_PEM=$C/server.pem BENCH_CLIENT_CERT=$C/client.crt BENCH_CLIENT_KEY=$C/client.key \
  BENCH_CLIENT_PEM=$C/client.pem BENCH_SERVER_NAME=server.mesh.local \
  BENCH_CLIENT_NAME=client.mesh.local BENCH_SERVER_ID=spiffe://bench.local/ns/default/sa/server \
  BENCH_CLIENT_ID=spiffe://bench.local/ns/default/sa/client
script_of() { # the contender's script: the harness's own first, then the mesh's
  for d in "$BENCH_HOME/contenders" benches/contenders; do
    [[ -x $d/$1.sh ]] && { echo "$d/$1.sh"; return; }
  done
  echo "wakeups: no contender $1" >&2
  exit 1
}
# The backend (the test app's HTTP server) on CPU 1 with the proxies; the load on CPU 0.
taskset -c 1 $RELEASE_DIR/mesh-test-app http --listen 127.0.0.1:19000 --name ok >"$OUT/app.log" 2>&1 &
APP=$!
CURRENT=
cleanup() {
  [[ -n $CURRENT ]] && "$CURRENT" stop >/dev/null 2>&1 || true
  kill "$APP" 2>/dev/null || true
}
trap cleanup EXIT
descendants() { # a process and all below it, comma-separated
  local all=$1 p
  for p in $(pgrep -P "$1" || true); do all="$all,$(descendants "$p")"; done
  echo "$all"
}
# User and system time of the contender's processes (clock ticks, from /proc/PID/stat), summed.
user_sys_ticks() {
  local pid u=0 k=0 a b
  for pid in ${1//,/ }; do
    read -r a b < <(awk '{print $14, $15}' "/proc/$pid/stat" 2>/dev/null || echo 0 0)
    u=$((u + a)) k=$((k + b))
  done
  echo "$u $k"
}
TICK_HZ=$(getconf CLK_TCK)
printf '%-16s %10s %12s %14s %12s %11s %11s\n' contender req/s "ctxsw/req" "migrations/req" "CPU µs/req" \
  "user µs/req" "sys µs/req"
for name in "${CONTENDERS[@]}"; do
  CURRENT=$(script_of "$name")
  export BENCH_WORKDIR=$OUT/work/$name
  mkdir -p "$BENCH_WORKDIR"
  taskset -c 1 "$CURRENT" start >"$OUT/$name.start.log" 2>&1
  for _ in $(seq 100); do
    curl -fso /dev/null "http://127.0.0.1:19010/" && break
    sleep 0.1
  done
  curl -fso /dev/null "http://127.0.0.1:19010/" || { echo "wakeups: $name does not answer" >&2; exit 1; }
  PIDS=$(for p in $(cat "$BENCH_WORKDIR/pids"); do descendants "$p"; done | paste -sd,)
  taskset -c 0 oha -z 2s "${LOAD[@]}" --no-tui http://127.0.0.1:19010/ >/dev/null   # warm up
  read -r user0 sys0 < <(user_sys_ticks "$PIDS")
  perf stat -x, -e context-switches,cpu-migrations,task-clock -p "$PIDS" -o "$OUT/$name.perf" \
    -- sleep "$SECS" &
  PERF=$!
  taskset -c 0 oha -z "${SECS}s" "${LOAD[@]}" --no-tui --latency-correction \
    http://127.0.0.1:19010/ >"$OUT/$name.oha"
  wait "$PERF"
  read -r user1 sys1 < <(user_sys_ticks "$PIDS")
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$name.oha")
  awk -F, -v n="$name" -v rps="$rps" -v secs="$SECS" -v hz="$TICK_HZ" \
    -v user=$((user1 - user0)) -v sys=$((sys1 - sys0)) '
    $3 == "context-switches" { cs = $1 } $3 == "cpu-migrations" { mig = $1 }
    $3 == "task-clock" { tc = $1 }
    END {
      req = rps * secs
      printf "%-16s %10.0f %12.2f %14.3f %12.1f %11.1f %11.1f\n", n, rps, cs / req, mig / req,
        tc * 1000 / req, user * 1e6 / hz / req, sys * 1e6 / hz / req
    }' "$OUT/$name.perf"
  if [[ ${WAKEUPS_TRACE:-yes} == no ]]; then
    "$CURRENT" stop >/dev/null 2>&1 || true
    CURRENT=
    continue
  fi
  perf record -q -a -o "$OUT/$name.trace" \
    -e raw_syscalls:sys_enter,raw_syscalls:sys_exit,sched:sched_waking -- \
    taskset -c 0 oha -z 2s "${LOAD[@]}" --no-tui --output-format json \
    http://127.0.0.1:19010/ >"$OUT/$name.trace.oha"
  traced=$(python3 -c 'import json, sys; print(sum(json.load(sys.stdin)["statusCodeDistribution"].values()))' \
    <"$OUT/$name.trace.oha")
  perf script -i "$OUT/$name.trace" -F pid,tid,cpu,time,event,trace 2>/dev/null \
    | python3 benches/lib/wake-costs.py "$name" "$PIDS" "$traced" >>"$OUT/calls.txt"
  "$CURRENT" stop >/dev/null 2>&1 || true
  CURRENT=
done
if [[ ${WAKEUPS_TRACE:-yes} != no ]]; then
  printf '\n%-16s %-9s %-28s %9s %10s %9s\n' contender call class "calls/req" "median µs" "µs/req"
  cat "$OUT/calls.txt"
fi
echo "raw: $OUT"
