#!/usr/bin/env bash
# What the CPU target at 1000 req/s (half of the better mTLS peer's CPU a request) leaves for
# the mesh's HTTP work: side by side at a fixed rate (oha -q RATE -c 50, as in the harness's
# latency test), round after round,
#   - nginx-mtls, the better peer in every full run, in the harness's http mode;
#   - mesh-pair-mtls in http mode (the product as benchmarked);
#   - mesh-pair-mtls in tcp mode under the same HTTP load: the sidecars relay the requests'
#     bytes through their TLS connection without reading them (TLS relaying, no HTTP);
#   - relay-pair with copy in both modes (two processes that only relay the bytes: the floor).
# Each cell is all the contender's processes' CPU a request (perf stat's task-clock, by
# benches/wakeups.sh); the ratios are to nginx-mtls's of the same round. In tcp mode each of
# oha's 50 connections has a TLS connection of its own between the sidecars: their 50
# handshakes are in the run's CPU (with SECONDS=20, 50 handshakes to 20k requests).
# Needs what benches/wakeups.sh needs; builds nothing.
#   benches/cpu-budget.sh [ROUNDS] [SECONDS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-20}
RATE=${3:-1000}
OUT=$(mktemp -d /tmp/mesh-cpu-budget.XXXXXX)
cpu_of() { # the CPU µs a request of contender $1 in wakeups.sh's table $2
  awk -v n="$1" '$1 == n { print $5 }' "$2"
}
printf '%-6s %11s %11s %11s %11s %11s   %s\n' round nginx-mtls mesh-http mesh-tls floor-http \
  floor-tcp "ratios to nginx-mtls: mesh-http mesh-tls floor-http"
for round in $(seq "$ROUNDS"); do
  echo "cpu-budget: round $round of $ROUNDS: http mode (nginx-mtls, mesh-pair-mtls, relay-pair)" >&2
  WAKEUPS_TRACE=no RELAY_PAIR_MODE=copy benches/wakeups.sh "$RATE" "$SECS" nginx-mtls \
    mesh-pair-mtls relay-pair >"$OUT/http.$round" 2>"$OUT/http.$round.err" \
    || { cat "$OUT/http.$round.err" >&2; exit 1; }
  echo "cpu-budget: round $round of $ROUNDS: tcp mode (mesh-pair-mtls, relay-pair)" >&2
  WAKEUPS_TRACE=no WAKEUPS_MODE=tcp RELAY_PAIR_MODE=copy benches/wakeups.sh "$RATE" "$SECS" \
    mesh-pair-mtls relay-pair >"$OUT/tcp.$round" 2>"$OUT/tcp.$round.err" \
    || { cat "$OUT/tcp.$round.err" >&2; exit 1; }
  nginx=$(cpu_of nginx-mtls "$OUT/http.$round")
  mesh=$(cpu_of mesh-pair-mtls "$OUT/http.$round")
  tls=$(cpu_of mesh-pair-mtls "$OUT/tcp.$round")
  floor=$(cpu_of relay-pair "$OUT/http.$round")
  floor_tcp=$(cpu_of relay-pair "$OUT/tcp.$round")
  for v in "$nginx" "$mesh" "$tls" "$floor" "$floor_tcp"; do
    [[ $v =~ ^[0-9.]+$ ]] || { echo "cpu-budget: round $round: no figure in $OUT" >&2; exit 1; }
  done
  awk -v r="$round" -v n="$nginx" -v m="$mesh" -v t="$tls" -v f="$floor" -v g="$floor_tcp" \
    'BEGIN { printf "%-6s %11.1f %11.1f %11.1f %11.1f %11.1f   %.2fx %.2fx %.2fx\n",
      r, n, m, t, f, g, m / n, t / n, f / n }'
done | tee "$OUT/table"
# The medians over the rounds, and what half of nginx-mtls's CPU leaves above the floor.
python3 - "$OUT/table" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l[:1].isdigit()]
col = lambda i: statistics.median(float(r[i]) for r in rows)
nginx, mesh, tls, floor, floor_tcp = (col(i) for i in range(1, 6))
print(f"median  {nginx:11.1f} {mesh:11.1f} {tls:11.1f} {floor:11.1f} {floor_tcp:11.1f}   "
      f"{mesh / nginx:.2f}x {tls / nginx:.2f}x {floor / nginx:.2f}x")
print(f"µs a request (CPU of all the contender's processes). The target, half of nginx-mtls: "
      f"{nginx / 2:.1f}; above the copy floor it leaves {nginx / 2 - floor:.1f}. TLS relaying "
      f"costs {tls - floor_tcp:.1f} above the floor in tcp mode, the mesh's HTTP pair "
      f"{mesh - floor:.1f} above it in http mode.")
EOF
echo "raw: $OUT"
