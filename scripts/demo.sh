#!/usr/bin/env bash
# The mesh demo: two pods (network namespaces on a bridge of their own), each with the init
# step's iptables rules and a sidecar running as uid 1337. Pod a curls pod b's app and streams
# 50 MiB through an echo server; the demo then shows what crossed which proxy.
# Needs root; installs iptables, iproute2 and curl when missing. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

require_root
ensure_tools

step "building mesh-proxy, mesh-iptables-init and the demo app (release)"
cargo build --release --workspace --bins

NAME="mdemo$$"
BR="$NAME-br"; A="$NAME-a"; B="$NAME-b"
A_IP=10.88.0.2; B_IP=10.88.0.3
WORK=$(mktemp -d /tmp/mesh-demo.XXXXXX)
chmod 755 "$WORK"

cleanup() {
  for ns in "$A" "$B" "$BR"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# The proxy runs as uid 1337, which may not be able to read the checkout: run copies.
for bin in mesh-proxy mesh-iptables-init mesh-test-app; do
  install -m 755 "target/release/$bin" "$WORK/$bin"
done

in_pod() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }

step "making pods a ($A_IP) and b ($B_IP) on a bridge in namespace $BR"
ip netns add "$BR"
ip -n "$BR" link add br0 type bridge
ip -n "$BR" link set br0 up
i=0
for pair in "$A:$A_IP" "$B:$B_IP"; do
  ns=${pair%%:*}; addr=${pair#*:}; i=$((i + 1))
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$BR" link add "v$i" type veth peer name eth0 netns "$ns"
  ip -n "$BR" link set "v$i" master br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
done

step "init step in both pods (mesh-iptables-init)"
in_pod "$A" "$WORK/mesh-iptables-init"
in_pod "$B" "$WORK/mesh-iptables-init"
echo "pod a's nat rules:"
in_pod "$A" iptables-save -t nat | grep -E '^-A' | sed 's/^/    /'

step "starting the sidecars (uid 1337, one thread each) and pod b's apps"
declare -A PROXY_PID
for ns in "$A" "$B"; do
  MESH_LOG=info,mesh_proxy=debug nsenter --net="/run/netns/$ns" --setuid=1337 --setgid=1337 -- \
    "$WORK/mesh-proxy" --threads 1 >"$WORK/$ns-proxy.log" 2>&1 &
  PROXY_PID[$ns]=$!
done
in_pod "$B" "$WORK/mesh-test-app" http --listen 0.0.0.0:8080 --name pod-b >"$WORK/b-http.log" 2>&1 &
in_pod "$B" "$WORK/mesh-test-app" echo --listen 0.0.0.0:9000 >"$WORK/b-echo.log" 2>&1 &
disown -a  # the cleanup kills the apps; no job-control noise

wait_for() { # what, command...: retries the command for up to 10 s
  local what=$1; shift
  for _ in $(seq 1 500); do "$@" >/dev/null 2>&1 && return 0; sleep 0.02; done
  die "$what did not become ready; logs are in $WORK"
}
for ns in "$A" "$B"; do
  wait_for "sidecar in $ns" in_pod "$ns" curl -sf http://127.0.0.1:15000/ready
done
wait_for "pod b's http app" grep -q '^ready' "$WORK/b-http.log"
wait_for "pod b's echo app" grep -q '^ready' "$WORK/b-echo.log"
echo "both sidecars report ready on their admin port"

step "pod a: curl http://$B_IP:8080/"
in_pod "$A" curl -sS -i "http://$B_IP:8080/" | sed 's/^/    /'

step "pod a: 50 MiB to pod b's echo server and back, every byte checked"
in_pod "$A" "$WORK/mesh-test-app" send --connect "$B_IP:9000" --bytes 52428800 | sed 's/^/    /'

step "what crossed which proxy"
for pair in "a:$A" "b:$B"; do
  label=${pair%%:*}; ns=${pair#*:}
  echo "pod $label's sidecar metrics (non-zero series):"
  in_pod "$ns" curl -sf http://127.0.0.1:15000/metrics | grep -E '^mesh_' | grep -v ' 0$' | sed 's/^/    /'
  echo "pod $label's sidecar connection log:"
  grep -E 'closed' "$WORK/$ns-proxy.log" | sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +//' | sed 's/^/    /'
done

step "graceful stop: POST /shutdown to both sidecars"
for ns in "$A" "$B"; do
  in_pod "$ns" curl -sf -X POST http://127.0.0.1:15000/shutdown >/dev/null
  pid=${PROXY_PID[$ns]}
  for _ in $(seq 1 500); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
  kill -0 "$pid" 2>/dev/null && die "sidecar in $ns did not exit after its drain"
  echo "    $ns: $(grep -E 'drained|drain timeout' "$WORK/$ns-proxy.log" | sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +//')"
done

step "done; removing the pods"
