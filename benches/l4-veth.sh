#!/usr/bin/env bash
# Opaque L4 through one mesh-proxy over a veth pair between two network namespaces (the pods'
# real topology; the shared harness runs everything on loopback), splice against copy, with
# iperf3 and the same pinning as the harness (client CPU 0; proxy and server CPU 1). SIDE picks
# which leg is the veth:
#   - outbound (the default): the client and the proxy in one namespace, the client reaching
#     the proxy on loopback, the proxy the server over the veth (an app's sidecar sending out);
#   - inbound: the client in one namespace, reaching the proxy over the veth; the proxy and the
#     server in the other, the proxy reaching the server on loopback (a sidecar in front of
#     its app).
#   benches/l4-veth.sh [ROUNDS] [outbound|inbound]     needs root, iperf3, a release build
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
ROUNDS=${1:-3}
SIDE=${2:-outbound}
[[ $SIDE == outbound || $SIDE == inbound ]] || { echo "SIDE is outbound or inbound, not $SIDE" >&2; exit 1; }
P=$PWD/$RELEASE_DIR/mesh-proxy
[[ -x $P ]] || { echo "build first: cargo build --release -p mesh-proxy" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "needs iperf3 (apt-get install -y iperf3)" >&2; exit 1; }
A=l4a-$$ B=l4b-$$
cleanup() {
  for ns in $A $B; do ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  for ns in $A $B; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT
ip netns add "$A"; ip netns add "$B"
ip link add va netns "$A" type veth peer name vb netns "$B"
ip -n "$A" addr add 10.99.0.1/24 dev va; ip -n "$B" addr add 10.99.0.2/24 dev vb
for ns in $A $B; do ip -n "$ns" link set lo up; done
ip -n "$A" link set va up; ip -n "$B" link set vb up
wait_port() { # ns port
  for _ in $(seq 100); do ip netns exec "$1" bash -c ">/dev/tcp/$2" 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on $2 in $1" >&2; return 1
}
gbits() { awk '/receiver/ {print $7}'; }
echo "$SIDE: round | direct Gbit/s | splice Gbit/s | copy Gbit/s"
for r in $(seq "$ROUNDS"); do
  line="$r"
  for mode in direct splice copy; do
    ip netns exec "$B" taskset -c 1 iperf3 -s -p 5201 >/dev/null 2>&1 &
    SERVER=$!
    wait_port "$B" 10.99.0.2/5201
    target=(10.99.0.2 -p 5201)
    if [[ $mode != direct && $SIDE == outbound ]]; then
      ip netns exec "$A" taskset -c 1 "$P" --threads 1 --relay "$mode" --outbound-addr 127.0.0.1:15001 \
        --outbound-destination 10.99.0.2:5201 --log warn &
      PROXY=$!
      wait_port "$A" 127.0.0.1/15001
      target=(127.0.0.1 -p 15001)
    elif [[ $mode != direct ]]; then
      ip netns exec "$B" taskset -c 1 "$P" --threads 1 --relay "$mode" --outbound-addr 10.99.0.2:15101 \
        --outbound-destination 127.0.0.1:5201 --log warn &
      PROXY=$!
      wait_port "$B" 10.99.0.2/15101
      target=(10.99.0.2 -p 15101)
    fi
    line="$line | $(ip netns exec "$A" taskset -c 0 iperf3 -c "${target[@]}" -t 4 -f g | gbits)"
    if [[ $mode != direct ]]; then kill "$PROXY"; wait "$PROXY" 2>/dev/null || true; fi
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
  done
  echo "$line"
done
