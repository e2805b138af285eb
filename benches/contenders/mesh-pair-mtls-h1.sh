#!/usr/bin/env bash
# mesh-pair-mtls with the clients' HTTP/1.1 requests carried as HTTP/1.1 between the sidecars
# (`--peer-http1 http1`: pooled mutual-TLS connections, ALPN mesh/h1, one request at a time, as
# Istio's sidecars do) instead of the default `auto` (the same while a peer's few slots are free,
# streams of one mesh/mux connection beyond them; HTTP/2 there until 2026-12-05): the two can be
# measured side by side (benches/RESULTS.md; scripts/bench.sh does not run this one by default).
# Only http: in tcp mode there is no HTTP to carry, and it would be mesh-pair-mtls.
[[ ${1:-} == caps ]] && { echo http; exit 0; }
export MESH_PROXY_ARGS="${MESH_PROXY_ARGS:-} --peer-http1 http1"
exec "$(dirname "$0")/mesh-pair-mtls.sh" "$@"
