#!/usr/bin/env bash
# Writes proxy/symbol-order.txt: every function of mesh-proxy that runs when it does its job,
# hottest first, for the linker to lay out together (proxy/build.rs passes it to lld with
# --symbol-ordering-file in release builds).
#
# Why: a sidecar's largest share of memory is its own code, and the kernel maps code in 64 KiB
# windows around each page that runs (fault-around). With the functions that run scattered over
# the 9 MB of text, nearly all of it ends up resident; laid out together, only what runs is.
#
# How: both contenders (mesh-pair-mtls, mesh-hop) in both modes (http, tcp) with every sidecar
# under callgrind, driven through startup, certificate issuance, xDS, HTTP/1.1 and HTTP/2
# requests, opaque TCP, the admin endpoints and a graceful shutdown. The functions callgrind saw
# are kept if the binary defines them, ordered by the instructions they ran. A function missing
# from the file still links, it is just placed after the listed ones; so a stale file costs memory,
# never correctness. Rerun after large changes. Needs root, valgrind, wrk and curl; takes
# about 5 minutes. With --check it only tells how much of the file the built binary still has
# (symbol names carry hashes that change with dependency versions and features).
#   scripts/symbol-order.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
ROOT=$PWD
if [[ ${1:-} == --check ]]; then
  [[ -x $RELEASE_DIR/mesh-proxy ]] || { echo "symbol-order: build first: cargo build --release --workspace --bins" >&2; exit 1; }
  nm --defined-only $RELEASE_DIR/mesh-proxy | awk '{print $NF}' | sort -u > /tmp/mesh-symbols.$$
  listed=$(wc -l < proxy/symbol-order.txt)
  found=$(sort -u proxy/symbol-order.txt | comm -12 - /tmp/mesh-symbols.$$ | wc -l)
  rm -f /tmp/mesh-symbols.$$
  echo "symbol-order: $found of $listed listed functions are in $RELEASE_DIR/mesh-proxy"
  (( found * 10 >= listed * 9 )) || echo "symbol-order: the file is stale: run scripts/symbol-order.sh"
  exit 0
fi
for t in valgrind wrk curl; do
  command -v "$t" >/dev/null || { echo "symbol-order: needs $t (apt-get install -y valgrind wrk curl)" >&2; exit 1; }
done
echo "== building (release, as the benchmarks do)"
cargo build --release --workspace --bins
OUT=$(mktemp -d /tmp/mesh-symbol-order.XXXXXX)
echo "== callgrind output in $OUT"
export BENCH_HOME=${BENCH_HOME:-$(cd ../shared/bench && pwd)} BENCH_LISTEN_PORT=19010 \
  BENCH_UPSTREAM_HOST=127.0.0.1 BENCH_UPSTREAM_PORT=19000 BENCH_INTERNAL_PORT=19012 BENCH_THREADS=1 \
  MESH_READY_TRIES=600 \
  MESH_PROXY_WRAPPER="valgrind --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no --callgrind-out-file=$OUT/callgrind.%p"
$RELEASE_DIR/mesh-test-app http --listen 127.0.0.1:19000 --name ok >"$OUT/backend.log" 2>&1 &
BACKEND=$!
CONTENDER=
cleanup() {
  [[ -n $CONTENDER ]] && "benches/contenders/$CONTENDER.sh" stop >/dev/null 2>&1 || true
  kill "$BACKEND" 2>/dev/null || true
  wait "$BACKEND" 2>/dev/null || true
}
trap cleanup EXIT

drive() { # mode
  local url=http://127.0.0.1:$BENCH_LISTEN_PORT/ i
  for i in $(seq 1 20); do curl -sf -o /dev/null "$url"; done
  curl -s -o /dev/null "${url}no/such/path?q=1" -H 'x-test: 1' -X POST -d 'body'
  if [[ $1 == http ]]; then
    for i in $(seq 1 5); do curl -s -o /dev/null --http2-prior-knowledge "$url" || true; done
  fi
  wrk -t1 -c10 -d3s "$url" >/dev/null
  for p in $(seq $((BENCH_INTERNAL_PORT + 13)) $((BENCH_INTERNAL_PORT + 15))); do
    for path in ready metrics; do curl -s -o /dev/null "http://127.0.0.1:$p/$path" || true; done
  done
}

for CONTENDER in mesh-pair-mtls mesh-hop; do
  for BENCH_MODE in http tcp; do
    export BENCH_MODE BENCH_WORKDIR=$OUT/work-$CONTENDER-$BENCH_MODE
    mkdir -p "$BENCH_WORKDIR"
    echo "== $CONTENDER, $BENCH_MODE: starting under callgrind"
    "benches/contenders/$CONTENDER.sh" start
    echo "== $CONTENDER, $BENCH_MODE: driving"
    drive "$BENCH_MODE"
    # Shut the sidecars down ourselves and wait: callgrind writes its counts at exit, and the
    # contender's stop would kill a slow exit.
    pids=$(cat "$BENCH_WORKDIR/pids")
    for p in $pids; do kill -TERM "$p"; done
    for p in $pids; do
      for _ in $(seq 1 600); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
    "benches/contenders/$CONTENDER.sh" stop
  done
done
CONTENDER=
echo "== ordering"
nm --defined-only $RELEASE_DIR/mesh-proxy | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u > "$OUT/defined"
python3 - "$OUT" "$ROOT/proxy/symbol-order.txt" <<'EOF'
import collections, glob, sys
out, dest = sys.argv[1], sys.argv[2]
defined = set(open(f'{out}/defined').read().split())
cost = collections.Counter()
for path in glob.glob(f'{out}/callgrind.*'):
    fn, skip = None, False
    for line in open(path, errors='replace'):
        if line.startswith('fn='):
            fn = line[3:].strip()
            cost[fn] += 0
        elif line.startswith('cfn='):
            cost[line[4:].strip()] += 0
        elif line.startswith('calls='):
            skip = True  # the next cost line is the call's inclusive cost, not fn's own
        elif line[:1].isdigit():
            if skip:
                skip = False
                continue
            parts = line.split()
            if fn and len(parts) >= 2 and parts[1].isdigit():
                cost[fn] += int(parts[1])
names = [n for n in cost if n in defined]
names.sort(key=lambda n: (-cost[n], n))
with open(dest, 'w') as f:
    f.write(''.join(n + '\n' for n in names))
print(f'{len(names)} functions ran ({len(cost)} seen, {len(defined)} defined) -> {dest}')
EOF
echo "== done: rebuild (cargo build --release) to link with the new order"
