#!/usr/bin/env bash
# meshd's heap under the control-plane scale benchmark, by valgrind's massif: runs mesh-cp-scale
# with meshd under massif (N clients, default 20: valgrind is slow), then prints the heap at its
# peak and at the end, and the top allocation sites at the peak. Needs valgrind. It builds meshd
# with glibc's malloc (--no-default-features: massif cannot see jemalloc) in target/glibc, and
# uses the release mesh-cp-scale (scripts/bench-control-plane.sh builds one).
#   benches/meshd-massif.sh [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
CLIENTS=${1:-20}
cargo build --release -p mesh-control-plane --bin meshd --no-default-features --target-dir target/glibc
OUT=$(mktemp -d /tmp/meshd-massif.XXXXXX)
cat > "$OUT/meshd" <<WRAP
#!/usr/bin/env bash
# mesh-cp-scale kills its meshd with SIGKILL, which massif cannot survive: run it as a child,
# and end it with SIGTERM below so that massif writes its profile.
valgrind --tool=massif --massif-out-file=$OUT/massif.out --depth=30 $PWD/target/glibc/release/meshd "\$@" &
echo \$! > $OUT/valgrind.pid
wait
WRAP
chmod +x "$OUT/meshd"
$RELEASE_DIR/mesh-cp-scale --meshd "$OUT/meshd" --no-pin --clients "$CLIENTS" --variant sotw \
  --changes 1 --timeout 300 | tail -1
VG=$(cat "$OUT/valgrind.pid")
kill -TERM "$VG" 2>/dev/null || true
for _ in $(seq 120); do kill -0 "$VG" 2>/dev/null || break; sleep 0.5; done
ms_print "$OUT/massif.out" > "$OUT/massif.txt" 2>/dev/null
echo "heap by snapshot (time, total, useful, extra), the peak first then the last:"
PEAK=$(grep -o '[0-9]* (peak)' "$OUT/massif.txt" | head -1 | cut -d' ' -f1)
awk -v p="$PEAK" '$1==p && NF==6' "$OUT/massif.txt"
awk 'NF==6 && $1 ~ /^[0-9]+$/' "$OUT/massif.txt" | tail -1
echo "at the peak: gRPC encode buffers of responses in flight, decode buffers, snapshot entries:"
awk -v p="$PEAK" '$1==p && NF==6 {f=1} f' "$OUT/massif.txt" \
  | grep -m4 -E 'append_to<tonic::codec::buffer::EncodeBuf>|StreamingInner::decode_chunk \(|Snapshot::insert' \
  | sed -E 's/^[| ]*->//' | cut -c1-150
echo "profile: $OUT/massif.out"
