#!/usr/bin/env bash
# mesh-pair-mtls with every HTTP/1.1 request carried in HTTP/2 between the sidecars
# (`--peer-http1 http2`, ALPN mesh/h2, multiplexed, as Linkerd does) instead of the default
# `auto` (HTTP/1.1 on mesh/h1 while a peer's few slots are free, on streams of one mesh/mux
# connection beyond; HTTP/2 beyond until 2026-12-05): the two measured side by side
# (benches/RESULTS.md).
# Only http: in tcp mode there is no HTTP to carry, and it would be mesh-pair-mtls.
[[ ${1:-} == caps ]] && { echo http; exit 0; }
export MESH_PROXY_ARGS="${MESH_PROXY_ARGS:-} --peer-http1 http2"
exec "$(dirname "$0")/mesh-pair-mtls.sh" "$@"
