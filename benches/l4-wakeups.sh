#!/usr/bin/env bash
# How one sidecar relaying one bulk stream spends its wakeups: one iperf3 stream through one
# plaintext mesh-proxy on loopback, as in the harness's L4 one-hop test (client on CPU 0; the
# proxy and the iperf3 server on CPU 1), and over 3 s of it `perf stat` on the proxy: its
# splice(2) calls, those that failed (EAGAIN: the source empty or the destination full), its
# epoll_wait(2) calls, setsockopt(2) calls, context switches and CPU time; then the proxy's
# and the server's CPU ticks over the stream. More epoll_waits than splices means wakeups that
# moved nothing. MESH_PROXY_WRAPPER runs the proxy under a command (e.g. "env VAR=1" for an
# experiment's switch); ROUNDS repeats. Needs root, perf, iperf3, a release build. Ports
# 29001-29005 on 127.0.0.1 (benches/lib/l4-hop.sh).
#   [ROUNDS=N] [MESH_PROXY_WRAPPER=CMD] benches/l4-wakeups.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benches/lib/l4-hop.sh
l4_hop_start l4-wakeups
for round in $(seq "${ROUNDS:-1}"); do
  l4_hop_proxy splice
  s0=$(ticks "$SERVER") x0=$(ticks "$PROXY")
  (sleep 1; perf stat -x, -o "$OUT/perf.$round" \
    -e syscalls:sys_enter_splice -e syscalls:sys_exit_splice --filter 'ret < 0' \
    -e syscalls:sys_enter_epoll_wait,syscalls:sys_enter_setsockopt,context-switches,task-clock \
    -p "$PROXY" -- sleep 3) &
  PERF=$!
  gbit=$(l4_hop_stream)
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
