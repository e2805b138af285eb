#!/usr/bin/env bash
# How the mTLS pair's requests split between the carriages under load: runs the pair (as
# benches/pair-memory.sh does) under wrk, then prints the bytes the server sidecar received on
# each peer connection (ss), smallest first: under --peer-http1 auto, the mesh/h1 connections
# and the one multiplexed (mesh/mux; mesh/h2 under --peer-http1 http2). A count, not a rate, so it holds on a noisy host. With CONNS=1 every
# request goes on one mesh/h1 connection, which gives the bytes per request on mesh/h1. With
# RATE=N the load is oha at N req/s (as the harness's fixed-rate test) instead of wrk's closed loop.
#   [MESH_BIN_DIR=DIR] [CONNS=50] [RATE=N] benches/carriage-share.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
SECS=${1:-8}
source benches/lib/pair.sh
pair_start carriage-share
if [[ -n ${RATE:-} ]]; then
  taskset -c 0 oha -z "${SECS}s" -c "${CONNS:-50}" -q "$RATE" --latency-correction --no-tui \
    --output-format json http://127.0.0.1:19010/ \
    | python3 -c 'import json, sys; s = json.load(sys.stdin)["summary"]; print("oha: %.0f req/s, success rate %s" % (s["requestsPerSec"], s["successRate"]))'
else
  taskset -c 0 wrk -t1 -c"${CONNS:-50}" -d"${SECS}s" http://127.0.0.1:19010/ | grep -E 'requests in|Requests/sec'
fi
echo "bytes received per peer connection (server sidecar, port $BENCH_INTERNAL_PORT):"
ss -tinH state established "( sport = :$BENCH_INTERNAL_PORT )" | grep -o 'bytes_received:[0-9]*' | cut -d: -f2 | sort -n | paste -sd' '
