#!/usr/bin/env bash
# Writes proxy/data-order.ld: a linker script that gathers the read-only data mesh-proxy reads
# when it does its job into one output section (.rodata.hot) before .rodata; proxy/build.rs
# passes it to the linker in release builds.
#
# Why: the companion of scripts/symbol-order.sh, for data. The kernel maps read-only data in
# 64 KiB windows around each page that is read (fault-around), so a few hundred KB read here
# and there over the 1.45 MB .rodata (vtables, tables, constants) made 1.3 MB of it resident
# in every sidecar. Gathered, the data read fills about 350 KB.
#
# How: the mesh-pair-mtls contender with both sidecars under valgrind's lackey tracing every
# load, driven through startup, certificate issuance, xDS and requests (HTTP, and opaque TCP
# in tcp mode); the loads that hit the binary's read-only segment are kept as 256-byte blocks
# and matched against the link map of the same build (lld -Map, MESH_LINK_MAP in build.rs): an
# input section that overlaps a block read is hot. Sections are named per crate and module, so
# like symbol-order.txt a stale file costs memory, never correctness: a name that matches
# nothing is ignored. Rerun after large changes. Needs root, valgrind, wrk and curl; lackey is
# slow: about 17 minutes per mode.
#   scripts/data-order.sh [MODES]      (default: "http tcp")
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
require_root
MODES=${1:-http tcp}
for t in valgrind wrk curl; do
  command -v "$t" >/dev/null || die "needs $t (apt-get install -y valgrind wrk curl)"
done
OUT=$(mktemp -d /tmp/mesh-data-order.XXXXXX)
step "building (release) with a link map in $OUT/mesh-proxy.map"
MESH_LINK_MAP=$OUT/mesh-proxy.map cargo build --release --workspace --bins
[[ -s $OUT/mesh-proxy.map ]] || die "no link map was written (is mesh-proxy up to date? touch proxy/build.rs)"
# The wrapper the contender runs each sidecar under: lackey's trace goes to a filter that keeps
# loads (L) and modifies (M) of addresses 0x200000-0x3fffff (the read-only segment of a
# static, position-dependent mesh-proxy) as address >> 8, in trace.PID.part until complete.
cat > "$OUT/wrap.sh" <<WRAP
#!/usr/bin/env bash
exec valgrind --tool=lackey --trace-mem=yes --log-fd=9 "\$@" 9> >(LC_ALL=C grep -E '^ [LM] 00[23][0-9a-f]{5},' | cut -c4-9 | LC_ALL=C sort -u > "$OUT/trace.\$\$.part" && mv "$OUT/trace.\$\$.part" "$OUT/trace.\$\$")
WRAP
chmod +x "$OUT/wrap.sh"
export BENCH_HOME=${BENCH_HOME:-$(cd ../shared/bench && pwd)} BENCH_LISTEN_PORT=19010 \
  BENCH_UPSTREAM_HOST=127.0.0.1 BENCH_UPSTREAM_PORT=19000 BENCH_INTERNAL_PORT=19012 BENCH_THREADS=1 \
  MESH_READY_TRIES=1200 MESH_PROXY_WRAPPER=$OUT/wrap.sh
"$RELEASE_DIR/mesh-test-app" http --listen 127.0.0.1:19000 --name ok >"$OUT/backend.log" 2>&1 &
BACKEND=$!
trap 'benches/contenders/mesh-pair-mtls.sh stop >/dev/null 2>&1 || true; kill $BACKEND 2>/dev/null || true' EXIT
for BENCH_MODE in $MODES; do
  export BENCH_MODE BENCH_WORKDIR=$OUT/work-$BENCH_MODE
  mkdir -p "$BENCH_WORKDIR"
  step "$BENCH_MODE: starting the pair under lackey (slow: minutes)"
  benches/contenders/mesh-pair-mtls.sh start
  step "$BENCH_MODE: driving"
  url=http://127.0.0.1:$BENCH_LISTEN_PORT/
  for _ in $(seq 1 20); do curl -sf -o /dev/null "$url"; done
  wrk -t1 -c10 -d5s "$url" | grep Requests
  # Stop the sidecars ourselves and wait for lackey to finish its trace.
  pids=$(cat "$BENCH_WORKDIR/pids")
  for p in $pids; do kill -TERM "$p"; done
  for p in $pids; do while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; done
  while compgen -G "$OUT/trace.*.part" >/dev/null; do sleep 0.2; done
  benches/contenders/mesh-pair-mtls.sh stop
done
step "writing proxy/data-order.ld"
python3 scripts/lib/data-order.py "$OUT/mesh-proxy.map" "$OUT"/trace.* > proxy/data-order.ld
sed -n 2p proxy/data-order.ld
step "done: rebuild (cargo build --release --workspace --bins) to link with it"
