# Shared by benches/l4-profile.sh and benches/l4-wakeups.sh (source it after
# scripts/lib/common.sh): one plaintext mesh-proxy between an iperf3 client and server on
# loopback, as in the harness's L4 one-hop test (client on CPU 0; proxy and server on CPU 1).
# Ports 29001-29005 on 127.0.0.1. Not a script of its own.
#   l4_hop_start NAME       checks the tools and the build, sets OUT (a temporary directory
#                           named after NAME), starts the iperf3 server (SERVER) and stops every
#                           process started here on exit
#   l4_hop_proxy MODE       starts the proxy with --relay MODE (under MESH_PROXY_WRAPPER, if
#                           set) once its port listens; sets PROXY
#   l4_hop_stream [PORT]    runs the client for 5 s to PORT (the proxy's, 29001, unless given;
#                           29002 is the server's own), prints the receiver's Gbit/s
#   ticks PID               the process's user + system CPU ticks
l4_hop_start() {
  require_root
  L4_HOP_PROXY_BIN=$PWD/$RELEASE_DIR/mesh-proxy
  [[ -x $L4_HOP_PROXY_BIN ]] || die "build first: cargo build --release --workspace --bins"
  for t in perf iperf3; do command -v $t >/dev/null || die "needs $t (apt-get install -y linux-perf iperf3)"; done
  OUT=$(mktemp -d "/tmp/$1.XXXXXX")
  L4_HOP_PIDS=()
  trap 'for p in "${L4_HOP_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
  taskset -c 1 iperf3 -s -B 127.0.0.1 -p 29002 >"$OUT/iperf3-server.log" 2>&1 &
  SERVER=$!
  L4_HOP_PIDS+=("$SERVER")
  l4_hop_listening 29002
}
l4_hop_listening() { # port
  for _ in $(seq 100); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.05; done
  die "nothing listens on port $1"
}
l4_hop_proxy() { # relay mode
  # shellcheck disable=SC2086 # the wrapper is words
  taskset -c 1 ${MESH_PROXY_WRAPPER:-} "$L4_HOP_PROXY_BIN" --threads 1 --relay "$1" \
    --outbound-addr 127.0.0.1:29001 --inbound-addr 127.0.0.1:29003 --admin-addr 127.0.0.1:29004 \
    --peer-addr 127.0.0.1:29005 --outbound-destination 127.0.0.1:29002 --log warn &
  PROXY=$!
  L4_HOP_PIDS+=("$PROXY")
  l4_hop_listening 29001
}
l4_hop_stream() {
  taskset -c 0 iperf3 -c 127.0.0.1 -p "${1:-29001}" -t 5 -f g | awk '/receiver/ {print $7}'
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
