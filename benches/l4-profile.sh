#!/usr/bin/env bash
# Where CPU 1's time goes while one iperf3 stream crosses one plaintext mesh-proxy on loopback,
# as in the harness's L4 one-hop test (client on CPU 0; proxy and iperf3 server on CPU 1), for
# each relay mode given: `perf record -C 1` for the stream's duration, then the throughput, each
# process's CPU ticks and the hottest symbols by process. Needs root, perf, iperf3, a release
# build. Ports 29001-29004 on 127.0.0.1.
#   benches/l4-profile.sh [MODE ...]     MODE: splice (default) or copy; e.g. `splice copy`
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
require_root
P=$PWD/$RELEASE_DIR/mesh-proxy
[[ -x $P ]] || die "build first: cargo build --release --workspace --bins"
for t in perf iperf3; do command -v $t >/dev/null || die "needs $t (apt-get install -y linux-perf iperf3)"; done
[[ $# -gt 0 ]] || set -- splice
OUT=$(mktemp -d /tmp/l4-profile.XXXXXX)
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
for mode in "$@"; do
  taskset -c 1 "$P" --threads 1 --relay "$mode" --outbound-addr 127.0.0.1:29001 \
    --inbound-addr 127.0.0.1:29003 --admin-addr 127.0.0.1:29004 --peer-addr 127.0.0.1:29005 \
    --outbound-destination 127.0.0.1:29002 --log warn &
  PROXY=$!; PIDS+=("$PROXY")
  listening 29001
  s0=$(ticks "$SERVER") x0=$(ticks "$PROXY")
  perf record -q -o "$OUT/$mode.data" -C 1 -g -- sleep 4 2>/dev/null &
  PERF=$!
  gbit=$(taskset -c 0 iperf3 -c 127.0.0.1 -p 29001 -t 5 -f g | awk '/receiver/ {print $7}')
  wait "$PERF"
  s1=$(ticks "$SERVER") x1=$(ticks "$PROXY")
  kill "$PROXY"; wait "$PROXY" 2>/dev/null || true
  step "relay $mode: $gbit Gbit/s; CPU ticks (1/100 s) proxy $((x1 - x0)), iperf3 server $((s1 - s0))"
  perf report -i "$OUT/$mode.data" --no-children --sort comm,sym --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9]' | head -12 || true
done
echo "perf data: $OUT"
