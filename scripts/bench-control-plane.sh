#!/usr/bin/env bash
# The control-plane scale benchmark: a real meshd (on CPU 1) with 1000 Services, and N simulated
# sidecars (on CPU 0) that register their workloads and subscribe as mesh-proxy does; measures
# the time from one `apply` until every client has ACKed it, the bytes pushed, meshd's CPU and
# RSS. Builds the release binaries first. Extra arguments go to mesh-cp-scale (see --help), e.g.
#   scripts/bench-control-plane.sh --clients 100 --variant sotw
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
step "building the release binaries"
# The same build as scripts/bench.sh: building a subset of the workspace unifies its
# dependencies' features differently, and the two builds would rebuild each other.
cargo build --release --workspace --bins
# Each client holds a connection, and meshd one per client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
step "running mesh-cp-scale"
exec taskset -c 0 $RELEASE_DIR/mesh-cp-scale --meshd $RELEASE_DIR/meshd "$@"
