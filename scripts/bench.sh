#!/usr/bin/env bash
# The mesh against nginx and haproxy, side by side in one run of the shared harness
# (../shared/bench): builds the release binaries, installs the harness's tools when missing, and
# runs every contender, the mesh's from benches/contenders (mesh-pair-mtls-h2: HTTP/2 between
# the sidecars for every request, beside the default auto; relay-pair: the floor of any pair).
# Extra arguments go to the harness (e.g. --quick, --rounds 5, --modes http). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
require_root
bench_harness
step "building the release binaries"
cargo build --release --workspace --bins
# The sidecar's memory depends on its code layout (proxy/symbol-order.txt): say so when the file
# no longer matches the binary, rather than measure a stale layout silently.
scripts/symbol-order.sh --check
mkdir -p benches/results
step "running the harness (results under benches/results)"
BENCH_CONTENDERS_DIRS="$PWD/benches/contenders" exec "$BENCH_HOME/run.sh" \
  --contenders direct,nginx,haproxy,nginx-mtls,haproxy-mtls,mesh-hop,mesh-pair-mtls,mesh-pair-mtls-h2,relay-pair \
  --out "$PWD/benches/results/$(date +%Y%m%d-%H%M%S)" "$@"
