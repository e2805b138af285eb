#!/usr/bin/env bash
# meshd's heap under the control-plane scale benchmark, by heaptrack, which is fast enough for
# hundreds of clients (massif, in meshd-massif.sh, is not): runs mesh-cp-scale with meshd under
# heaptrack (N state-of-the-world clients, default 500), then prints the peak heap, what took it
# at the peak, and what is still allocated at the end (meshd is killed after the last change, so
# that is the live heap with every client in sync), with the first frames of each allocation
# site. A run whose clients do not all sync gives the peak only, and exits non-zero.
# meshd is built with glibc's malloc (--no-default-features: heaptrack cannot see jemalloc) in
# target/glibc. Needs heaptrack (apt-get install -y heaptrack) and the release mesh-cp-scale
# (scripts/bench-control-plane.sh builds it).
#   benches/meshd-heaptrack.sh [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
CLIENTS=${1:-500}
command -v heaptrack >/dev/null || { echo "meshd-heaptrack: needs heaptrack: apt-get install -y heaptrack" >&2; exit 1; }
[[ -x $RELEASE_DIR/mesh-cp-scale ]] || { echo "meshd-heaptrack: build first: scripts/bench-control-plane.sh --clients 1" >&2; exit 1; }
cargo build --release -p mesh-control-plane --bin meshd --no-default-features --target-dir target/glibc
OUT=$(mktemp -d /tmp/meshd-heaptrack.XXXXXX)
cat > "$OUT/meshd" <<WRAP
#!/usr/bin/env bash
exec heaptrack -o $OUT/meshd.ht $PWD/target/glibc/release/meshd "\$@" > $OUT/meshd.log 2>&1
WRAP
chmod +x "$OUT/meshd"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
taskset -c 0 $RELEASE_DIR/mesh-cp-scale --meshd "$OUT/meshd" --no-pin --clients "$CLIENTS" \
  --variant sotw --changes 1 --timeout 400 --hold 60 > "$OUT/scale.log" 2>&1 &
SCALE=$!
# Once every client is in sync and the change is ACKed, end meshd while the clients are still
# connected: what it has not freed is then its live heap. If the run ends early (under the
# profiler's slowdown a client can lose its stream), only the peak is reported.
IN_SYNC=1
until grep -q 'holding the' "$OUT/scale.log"; do
  if ! kill -0 "$SCALE" 2>/dev/null; then
    echo "meshd-heaptrack: mesh-cp-scale ended early (the peak below is still meshd's):" >&2
    grep -E '^Error' "$OUT/scale.log" >&2 || tail -3 "$OUT/scale.log" >&2
    IN_SYNC=
    break
  fi
  sleep 1
done
grep -E 'in sync after|change 1|RSS' "$OUT/scale.log" || true
pkill -KILL -f "$PWD/target/glibc/release/meshd --data-dir" || true
kill "$SCALE" 2>/dev/null || true
wait "$SCALE" 2>/dev/null || true
for _ in $(seq 100); do pgrep -f "heaptrack -o $OUT" >/dev/null || break; sleep 0.2; done
heaptrack_print -f "$OUT"/meshd.ht.* -p 0 -a 0 -T 0 -l 1 -n 12 2>/dev/null > "$OUT/live.txt"
heaptrack_print -f "$OUT"/meshd.ht.* -p 1 -a 0 -T 0 -l 0 -n 12 2>/dev/null > "$OUT/peak.txt"
python3 - "$OUT/live.txt" "$OUT/peak.txt" "$IN_SYNC" <<'EOF'
import re, sys
live = open(sys.argv[1]).read().split('\n')
peak = open(sys.argv[2]).read().split('\n')
in_sync = sys.argv[3]

def sites(lines, marker):
    """Each allocation site: its size, its calls, and the first frames of ours or of a crate."""
    for i, line in enumerate(lines):
        m = re.match(r'\s*(\S+) ' + marker + r' over (\d+) calls from:?$', line)
        if not m:
            continue
        frames = []
        for f in lines[i + 1:i + 80]:
            if ' calls from' in f:
                break
            s = re.search(r'at (control-plane/\S+|/root/.cargo/registry/src/[^/]+/([^/]+)/src/(\S+))', f)
            if s:
                frames.append(s.group(1) if s.group(1).startswith('control') else f'{s.group(2)}/{s.group(3)}')
        if frames:
            print(f'  {m.group(1):>9} in {m.group(2):>7} allocations: {" <- ".join(frames[:3])}')

print('\n'.join(l for l in live if l.startswith(('peak heap', 'total memory leaked'))))
print('at the peak, by site (first frames of ours or of a crate):')
sites(peak, 'consumed')
if in_sync:
    print('still allocated at the end, by site:')
    sites(live, 'leaked')
EOF
echo "profile: $(ls "$OUT"/meshd.ht.*) (heaptrack_print -f FILE for everything)"
[[ -n $IN_SYNC ]]
