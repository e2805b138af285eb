#!/usr/bin/env bash
# Where CPU 1's time goes while one iperf3 stream crosses one plaintext mesh-proxy on loopback,
# as in the harness's L4 one-hop test (client on CPU 0; proxy and iperf3 server on CPU 1), for
# each relay mode given: `perf record -C 1` for the stream's duration, then the throughput, each
# process's CPU ticks, the hottest symbols by process, and the core's share (callees included)
# of the server's copies out of its socket (`_copy_to_iter`), the loopback receive processing
# (`net_rx_action`) and the proxy's splice calls. `direct` streams straight to the server, with
# no proxy, for comparison. Needs root, perf, iperf3, a release build. Ports 29001-29005 on
# 127.0.0.1 (benches/lib/l4-hop.sh).
#   benches/l4-profile.sh [MODE ...]     MODE: splice (default), copy or direct; e.g. `direct splice`
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benches/lib/l4-hop.sh
[[ $# -gt 0 ]] || set -- splice
l4_hop_start l4-profile
for mode in "$@"; do
  port=29002 x0=0 x1=0
  if [[ $mode != direct ]]; then
    l4_hop_proxy "$mode"
    port=29001 x0=$(ticks "$PROXY")
  fi
  s0=$(ticks "$SERVER")
  perf record -q -o "$OUT/$mode.data" -C 1 -g -- sleep 4 2>/dev/null &
  PERF=$!
  gbit=$(l4_hop_stream "$port")
  wait "$PERF"
  s1=$(ticks "$SERVER")
  if [[ $mode != direct ]]; then
    x1=$(ticks "$PROXY")
    kill "$PROXY"; wait "$PROXY" 2>/dev/null || true
  fi
  step "$mode: $gbit Gbit/s; CPU ticks (1/100 s) proxy $((x1 - x0)), iperf3 server $((s1 - s0))"
  perf report -i "$OUT/$mode.data" --no-children --sort comm,sym --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9]' | head -12 || true
  perf report -i "$OUT/$mode.data" --children --sort sym --stdio -g none 2>/dev/null \
    | awk '$NF == "_copy_to_iter" || $NF == "net_rx_action" || $NF == "__x64_sys_splice" {
        printf "  %s of the core (callees included): %s\n", $NF, $1 }' || true
done
echo "perf data: $OUT"
