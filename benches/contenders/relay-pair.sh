#!/usr/bin/env bash
# The floor of any sidecar pair on this machine: two mesh-proxy processes that only relay bytes
# (client -> relay A -> relay B -> backend), with no control plane, no TLS and no HTTP: each
# runs without --xds-address, so it passes every connection through to --outbound-destination.
# It has the pair's shape (two user-space hops on the proxies' core, one connection per client
# connection, keep-alive passed through) and none of its work: while requests come one at a
# time, no pair can wake up less or do less per request than this (under full load a pair that
# batches requests per system call, as HTTP/2 does, can). Not a contender for the targets; it
# says how far they can go.
# RELAY_PAIR_MODE picks the relay: by default copy (read and write) for HTTP, where requests
# are small and a splice relay makes three system calls a crossing where a copy makes two (at
# 1000 req/s the copy pair used 69-75 CPU µs a request against 85-96 for splice,
# `RELAY_PAIR_MODE=MODE benches/wakeups.sh 1000 10 relay-pair` alternating the two), and splice
# for tcp, the relay the sidecars themselves use for opaque streams.
source "$BENCH_HOME/contenders/_lib.sh"
source "$(dirname "$0")/_mesh.sh"
relay() { # name listen destination inbound admin peer
  local mode=splice
  [[ $BENCH_MODE == http ]] && mode=copy
  sidecar "$1" --relay "${RELAY_PAIR_MODE:-$mode}" --outbound-addr "$2" --outbound-destination "$3" \
    --inbound-addr "$4" --admin-addr "$5" --peer-addr "$6"
  wait_http "http://$5/ready" "relay $1"
}
case "${1:-}" in
  caps) echo "http tcp" ;;
  start)
    : > "$W/pids"
    relay relay-b "127.0.0.1:$I" "$BENCH_UPSTREAM_HOST:$BENCH_UPSTREAM_PORT" "$SERVER_IN" "$SERVER_ADMIN" "$SERVER_OUT"
    relay relay-a "127.0.0.1:$BENCH_LISTEN_PORT" "127.0.0.1:$I" "$CLIENT_IN" "$CLIENT_ADMIN" "127.0.0.1:$((I + 16))"
    ;;
  stop) mesh_stop ;;
  check) exit 0 ;;
esac
