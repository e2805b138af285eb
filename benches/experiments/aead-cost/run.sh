#!/usr/bin/env bash
# Instructions per seal and open of one AES-128-GCM (or ChaCha20-Poly1305) record (a 5-byte
# header as AAD), for payloads of 150 bytes (a small HTTP request or response between the
# sidecars) and 1000 bytes: aws-lc-rs's LessSafeKey, its TLS record keys (what rustls's aws_lc_rs
# provider uses for AES-GCM in TLS 1.3) and ring's LessSafeKey; ChaCha20-Poly1305 in both
# (`awslc-chacha`, `ring-chacha`), the other TLS 1.3 suite; `clone` is the loop's own cost (a
# copy of the buffer and the tag), to subtract. AEADS and LENS choose others, e.g. LENS="150
# 16000". Each figure is the difference of two callgrind runs (1000 and 3000 iterations) over
# 2000, so start-up is left out.
#   benches/experiments/aead-cost/run.sh      needs valgrind
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet
# The checkout's .cargo/config.toml names the host's target, so the binary is under its name.
BIN=target/$(rustc -vV | sed -n 's/^host: //p')/release/aead-cost
[[ -x $BIN ]] || BIN=target/release/aead-cost
count() {
  local n
  n=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$@" 2>&1 | awk '/Collected/ {print $4}')
  [[ -n $n ]] || { echo "callgrind counted nothing for $BIN $*" >&2; exit 1; }
  echo "$n"
}
for which in ${AEADS:-awslc awslc-tls ring awslc-chacha ring-chacha clone}; do
  for len in ${LENS:-150 1000}; do
    a=$(count "$which" "$len" 1000) b=$(count "$which" "$len" 3000)
    printf '%-10s %5d bytes  %6d instructions a seal and open\n' "$which" "$len" $(((b - a) / 2000))
  done
done
