#!/usr/bin/env bash
# Instructions per request in each sidecar of the mTLS pair, counted by callgrind: a count, not
# a rate, so it repeats on a noisy host (the same binary and load give the same figure within a
# fraction of a percent), where the harness's CPU-per-request rows move by half between runs.
# It counts user-space instructions only: not the kernel's share, nor cache misses, so it tells
# whether a change to the request path does less work, not by how much the CPU rows move.
#
# How: the pair (benches/lib/pair.sh) with both sidecars under callgrind; a warm-up, then the
# counters are zeroed and each load runs on its own, its counts dumped after it:
#   - paced: oha at RATE req/s (default 100) over 50 connections: requests arrive one by one, as
#     in the harness's 1000 req/s test (valgrind makes the sidecars ~50x slower, so the rate is
#     lower for the same shape);
#   - full: oha with no rate limit over 50 connections: requests overlap and batch, as under wrk.
# Prints, per load and sidecar, the instructions per request and, with PROFILE_TOP=N, the N
# functions that ran the most of them (their own, or with PROFILE_INCLUSIVE=yes with their callees).
# PAIR_MODE=tcp counts the sidecars relaying the same requests through TLS unread, and
# PAIR_CONTENDER=relay-pair two processes that only relay them (benches/lib/pair.sh); each load
# then opens its 50 connections anew, so take the difference of two REQUESTS over their difference.
#   [MESH_BIN_DIR=DIR] [MESH_PROXY_ARGS=...] [RATE=100] [PROFILE_TOP=N] [PROFILE_INCLUSIVE=yes]
#   [PAIR_MODE=tcp] [PAIR_CONTENDER=relay-pair] benches/instructions.sh [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
N=${1:-1000}
RATE=${RATE:-100}
for t in valgrind callgrind_control oha curl; do
  command -v "$t" >/dev/null || die "needs $t (bash ../shared/bench/setup.sh installs oha; apt-get install -y valgrind curl)"
done
CG=$(mktemp -d /tmp/mesh-instructions-cg.XXXXXX)
export MESH_READY_TRIES=600 \
  MESH_PROXY_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$CG/callgrind.%p"
source benches/lib/pair.sh
pair_start instructions
# pids holds the sidecars in start order: the server side first, then the client side.
mapfile -t PIDS < <(grep -v '^$' "$BENCH_WORKDIR/pids" | tail -2)
SERVER=${PIDS[0]:-} CLIENT=${PIDS[1]:-}
[[ -f $CG/callgrind.$SERVER && -f $CG/callgrind.$CLIENT ]] || die "the sidecars ($SERVER, $CLIENT) are not under callgrind (see $CG)"
URL=http://127.0.0.1:19010/
# Warm-up in both shapes, so that the peer connections each load opens (up to the mesh/h1
# slots and the mesh/h2 one) are open before counting: no handshake is counted.
for _ in $(seq 20); do curl -sf -o /dev/null "$URL"; done
taskset -c 0 oha -n 200 -c 50 -q "$RATE" --no-tui "$URL" >/dev/null
taskset -c 0 oha -n 200 -c 50 --no-tui "$URL" >/dev/null
for p in $SERVER $CLIENT; do callgrind_control --zero "$p" >/dev/null 2>&1; done

load() { # name, then oha's load flags
  local name=$1; shift
  echo "== $name: $N requests ($*)"
  taskset -c 0 oha -n "$N" -c 50 "$@" --no-tui --output-format json "$URL" \
    | python3 -c 'import json, sys; s = json.load(sys.stdin); print("   status codes:", s["statusCodeDistribution"])'
  for p in $SERVER $CLIENT; do callgrind_control --dump="$name" "$p" >/dev/null 2>&1; done
}
load paced -q "$RATE"
load full

python3 - "$CG" "$SERVER" "$CLIENT" "$N" "${PROFILE_TOP:-0}" "${PROFILE_INCLUSIVE:-no}" <<'EOF'
import re, subprocess, sys
sys.path.insert(0, 'benches/lib')
from callgrind import dumps
cg, server, client, n, top = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
inclusive = sys.argv[6]
sides = {'server side': dumps(cg, server), 'client side': dumps(cg, client)}
print(f'{"load":<6} {"sidecar":<12} {"instructions/request":>22}')
for load in ('paced', 'full'):
    for side, found in sides.items():
        if load not in found:
            sys.exit(f'instructions: no "{load}" dump for the {side} in {cg}')
        total, path = found[load]
        print(f'{load:<6} {side:<12} {total / n:>22,.0f}')
        if top:
            out = subprocess.run(['callgrind_annotate', '--auto=no', '--threshold=100',
                                  f'--inclusive={inclusive}', path],
                                 capture_output=True, text=True).stdout.splitlines()
            # Function rows, without the program's total and the frames every one is under.
            rows = [l for l in out
                    if (m := re.match(r'^\s*[\d,]+ \(\s*([\d.]+)%\)\s+\S', l)) and float(m[1]) < 99][:top]
            print('\n'.join('    ' + re.sub(r'/root/\.cargo/registry/src/[^/]+/', '', r) for r in rows))
EOF
echo "callgrind files in $CG (callgrind_annotate --inclusive=yes FILE)"
