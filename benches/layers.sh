#!/usr/bin/env bash
# User-space instructions a request in each sidecar of the pair, by layer (the AEAD, rustls,
# tokio's timer and clock reads, the rest of tokio, the mesh's own code, memcpy, malloc, other
# crates): benches/instructions.sh run twice, at REQUESTS_A and REQUESTS_B requests a load, and
# each layer's count taken as the difference over the difference in requests, so that what a
# load costs once (its 50 new connections; in tcp mode their TLS handshakes) drops out
# (benches/lib/layers.py). With PAIR_MODE=tcp it counts the sidecars relaying the same requests
# through TLS unread, with PAIR_CONTENDER=relay-pair two processes that only relay them: the
# three together say what TLS and HTTP each add to a relay. About 3 minutes for the defaults.
#   [PAIR_MODE=tcp] [PAIR_CONTENDER=relay-pair] [RATE=100] benches/layers.sh [REQUESTS_A REQUESTS_B]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
A=${1:-3000} B=${2:-5000}
(( B > A )) || die "REQUESTS_B ($B) must be more than REQUESTS_A ($A)"
run() { # requests -> the callgrind directory of the run
  local log
  log=$(mktemp /tmp/mesh-layers.XXXXXX)
  echo "== benches/instructions.sh $1 (${PAIR_CONTENDER:-mesh-pair-mtls}, ${PAIR_MODE:-http})" >&2
  benches/instructions.sh "$1" >"$log" 2>&1 || { cat "$log" >&2; die "benches/instructions.sh $1 failed"; }
  grep -E '^(paced|full) ' "$log" >&2
  sed -n 's/^callgrind files in \(\S*\) .*/\1/p' "$log"
}
DA=$(run "$A")
DB=$(run "$B")
[[ -d $DA && -d $DB ]] || die "no callgrind directories from the runs ($DA, $DB)"
python3 benches/lib/layers.py "$DA" "$A" "$DB" "$B"
