#!/usr/bin/env bash
# What the mTLS pair's sidecars keep resident after turning clients away: the pair under wrk
# (-t1 -c10, 3 s), then a client with no certificate and one that does not speak TLS at the
# server sidecar's peer port (as the harness's self-check and any port scanner do), then its
# /metrics, then wrk again; each sidecar's peak and current RSS, anonymous and file-backed
# (the binary's code and read-only data), after each step. Needs root, wrk, openssl, curl and
# a release build.
#   benches/refused-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
for t in wrk openssl curl; do
  command -v "$t" >/dev/null || die "needs $t (apt-get install -y wrk openssl curl)"
done
source benches/lib/pair.sh
pair_start refused-memory
PEER=127.0.0.1:$BENCH_INTERNAL_PORT                 # the server sidecar's (benches/contenders/_mesh.sh)
ADMIN=127.0.0.1:$((BENCH_INTERNAL_PORT + 13))
kb() { # each sidecar (server, then client): peak, now, anonymous and file-backed kB
  local p
  for p in $(cat "$BENCH_WORKDIR/pids"); do
    awk '/^(VmHWM|VmRSS|RssAnon|RssFile):/ {printf "%s %s  ", $1, $2}' "/proc/$p/status"
    printf '| '
  done
  echo
}
echo "started:               $(kb)"
taskset -c 0 wrk -t1 -c10 -d3s http://127.0.0.1:19010/ >/dev/null
echo "after wrk:             $(kb)"
printf 'x' | timeout 5 openssl s_client -connect "$PEER" -tls1_3 -alpn mesh/h2 -quiet >/dev/null 2>&1 || true
echo "after no certificate:  $(kb)"
curl -s -o /dev/null --max-time 5 "http://$PEER/" || true
echo "after no TLS:          $(kb)"
curl -sf -o /dev/null "http://$ADMIN/metrics"
echo "after /metrics:        $(kb)"
taskset -c 0 wrk -t1 -c10 -d3s http://127.0.0.1:19010/ >/dev/null
echo "after wrk again:       $(kb)"
