#!/usr/bin/env bash
# How one sidecar relaying one bulk stream spends its wakeups: one iperf3 stream through one
# plaintext mesh-proxy on loopback, as in the harness's L4 one-hop test (client on CPU 0; the
# proxy and the iperf3 server on CPU 1), and over 3 s of it `perf stat` on the proxy: its
# splice(2) calls, those that failed (EAGAIN: the source empty or the destination full), its
# epoll_wait(2) calls, setsockopt(2) calls, context switches and CPU time; then the proxy's
# and the server's CPU ticks over the stream. More epoll_waits than splices means wakeups that
# moved nothing. MESH_PROXY_WRAPPER runs the proxy under a command (e.g. "env VAR=1" for an
# experiment's switch); ROUNDS repeats. Needs root, perf, iperf3, a release build. Ports
# 29001-29005 on 127.0.0.1.
#   [ROUNDS=N] [MESH_PROXY_WRAPPER=CMD] benches/l4-wakeups.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
require_root
P=$PWD/$RELEASE_DIR/mesh-proxy
[[ -x $P ]] || die "build first: cargo build --release --workspace --bins"
for t in perf iperf3; do command -v $t >/dev/null || die "needs $t (apt-get install -y linux-perf iperf3)"; done
OUT=$(mktemp -d /tmp/l4-wakeups.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
listening() { # port
  for _ in $(seq 100); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.05; done
  die "nothing listens on port $1"
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
taskset -c 1 iperf3 -s -B 127.0.0.1 -p 29002 >"$OUT/iperf3-server.log" 2>&1 &
SERVER=$!; PIDS+=("$SERVER")
listening 29002
for round in $(seq "${ROUNDS:-1}"); do
  # shellcheck disable=SC2086 # the wrapper is words
  taskset -c 1 ${MESH_PROXY_WRAPPER:-} "$P" --threads 1 --relay splice \
    --outbound-addr 127.0.0.1:29001 --inbound-addr 127.0.0.1:29003 --admin-addr 127.0.0.1:29004 \
    --peer-addr 127.0.0.1:29005 --outbound-destination 127.0.0.1:29002 --log warn &
  PROXY=$!; PIDS+=("$PROXY")
  listening 29001
  s0=$(ticks "$SERVER") x0=$(ticks "$PROXY")
  (sleep 1; perf stat -x, -o "$OUT/perf.$round" \
    -e syscalls:sys_enter_splice -e syscalls:sys_exit_splice --filter 'ret < 0' \
    -e syscalls:sys_enter_epoll_wait,syscalls:sys_enter_setsockopt,context-switches,task-clock \
    -p "$PROXY" -- sleep 3) &
  PERF=$!
  gbit=$(taskset -c 0 iperf3 -c 127.0.0.1 -p 29001 -t 5 -f g | awk '/receiver/ {print $7}')
  wait "$PERF"
  s1=$(ticks "$SERVER") x1=$(ticks "$PROXY")
  kill "$PROXY"; wait "$PROXY" 2>/dev/null || true
  awk -F, -v r="$round" -v g="$gbit" -v x=$((x1 - x0)) -v s=$((s1 - s0)) '
    $3 == "syscalls:sys_enter_splice" { sp = $1 } $3 == "syscalls:sys_exit_splice" { fail = $1 }
    $3 == "syscalls:sys_enter_epoll_wait" { ep = $1 } $3 == "syscalls:sys_enter_setsockopt" { so = $1 }
    $3 == "context-switches" { cs = $1 } $3 == "task-clock" { tc = $1 }
    END {
      printf "round %s: %s Gbit/s; over 3 s the proxy made %d splices (%d failed), %d epoll_waits, %d setsockopts, %d switches, %.0f ms of CPU; CPU ticks over the stream: proxy %d, iperf3 server %d\n",
        r, g, sp, fail, ep, so, cs, tc, x, s
    }' "$OUT/perf.$round"
done
