#!/usr/bin/env bash
# One iperf3 stream of SECONDS through a freshly started mTLS pair in tcp mode (the
# mesh-pair-mtls contender, meshd included), as the harness's L4 test sees it: the stream is the
# sidecars' first connection. Prints iperf3's receiver line and the two sidecars' CPU ticks
# (1/100 s) over it, also per GB moved. With WARM=1, a 1 s stream goes
# first and the measured one is the second. MESH_BIN_DIR picks other binaries, so two builds
# can alternate:
#   for i in 1 2 3; do for d in /tmp/bin-a /tmp/bin-b; do MESH_BIN_DIR=$d benches/l4-pair.sh; done; done
# Needs root, iperf3 and a release build. Ports 19000-19029 on 127.0.0.1 (the harness's).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
require_root
command -v iperf3 >/dev/null || die "needs iperf3 (apt-get install -y iperf3)"
SECONDS_RUN=${1:-5}
OUT=$(mktemp -d /tmp/mesh-l4-pair.XXXXXX)
export BENCH_HOME=${BENCH_HOME:-$(cd ../shared/bench && pwd)} BENCH_WORKDIR=$OUT/work BENCH_MODE=tcp \
  BENCH_LISTEN_PORT=19010 BENCH_UPSTREAM_HOST=127.0.0.1 BENCH_UPSTREAM_PORT=19000 \
  BENCH_INTERNAL_PORT=19012 BENCH_THREADS=1
taskset -c 1 iperf3 -s -B 127.0.0.1 -p 19000 >"$OUT/iperf3-server.log" 2>&1 &
IPERF=$!
trap 'benches/contenders/mesh-pair-mtls.sh stop >/dev/null 2>&1 || true; kill $IPERF 2>/dev/null || true; wait $IPERF 2>/dev/null || true' EXIT
for _ in $(seq 100); do ss -Hltn 'sport = :19000' | grep -q . && break; sleep 0.05; done
taskset -c 1 benches/contenders/mesh-pair-mtls.sh start >/dev/null
[[ -n ${WARM:-} ]] && taskset -c 0 iperf3 -c 127.0.0.1 -p 19010 -t 1 >/dev/null
# The sidecars' CPU ticks (user + system, 1/100 s) over the measured stream.
sidecar_ticks() {
  local p sum=0
  for p in $(cat "$BENCH_WORKDIR/pids"); do
    [[ $(cat "/proc/$p/comm" 2>/dev/null) == mesh-proxy ]] || continue
    sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$sum"
}
before=$(sidecar_ticks)
line=$(taskset -c 0 iperf3 -c 127.0.0.1 -p 19010 -t "$SECONDS_RUN" | grep receiver)
ticks=$(($(sidecar_ticks) - before))
gbytes=$(awk '{for (i = 1; i <= NF; i++) if ($i == "GBytes") print $(i - 1)}' <<<"$line")
echo "$(basename "${MESH_BIN_DIR:-release}"): $line; sidecars $ticks ticks, $(awk -v t="$ticks" -v g="$gbytes" 'BEGIN { printf "%.1f", t / g }') ticks/GB"
