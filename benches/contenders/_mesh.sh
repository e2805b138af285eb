# Shared by the mesh contenders (source it after the harness's _lib.sh). Not a contender.
#
# Runs the real thing on loopback: meshd (its own CA, control plane only: not counted as proxy
# CPU or memory, it is idle during the tests), and mesh-proxy sidecars that follow it. Without the
# init step's redirect the client sidecar is given its destination with --outbound-destination.
#
# Ports, from I = $BENCH_INTERNAL_PORT (the harness leaves I..I+17 free), all on 127.0.0.1 unless
# said: meshd I+8 (plaintext xDS), I+9 (TLS xDS + CA), I+10 (API). Server sidecar: peer
# 127.0.0.1:I, outbound I+11, inbound I+12, admin I+13. Client sidecar: outbound
# $BENCH_LISTEN_PORT, peer 127.0.0.2:I (the same port on another loopback address: sidecars reach
# each other on one port number), inbound I+14, admin I+15.

# The release build: target/<host tuple>/release (.cargo/config.toml builds for the host by name).
MESH_BIN_DIR=${MESH_BIN_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/$(rustc -vV | sed -n 's/^host: //p')/release}
for b in meshd meshctl mesh-proxy; do
  [[ -x $MESH_BIN_DIR/$b ]] || { echo "missing $MESH_BIN_DIR/$b: run 'cargo build --release --workspace --bins' first" >&2; exit 1; }
done
I=$BENCH_INTERNAL_PORT
MESHD_XDS=127.0.0.1:$((I + 8))
MESHD_XDS_TLS=127.0.0.1:$((I + 9))
MESHD_API=127.0.0.1:$((I + 10))
SERVER_OUT=127.0.0.1:$((I + 11)) SERVER_IN=127.0.0.1:$((I + 12)) SERVER_ADMIN=127.0.0.1:$((I + 13))
CLIENT_IN=127.0.0.1:$((I + 14)) CLIENT_ADMIN=127.0.0.1:$((I + 15))
VIP=10.96.0.80

meshctl() { "$MESH_BIN_DIR/meshctl" --server "$MESHD_API" "$@"; }

source "$(dirname "${BASH_SOURCE[0]}")/../lib/free-lists.sh"

# Appends the per-CPU free lists' marks (benches/lib/free-lists.sh) to $W/free-lists under
# LABEL; benches/targets.py prints them beside the one-hop figure.
record_free_lists() { # label
  echo "$1 $(free_list_marks 2>/dev/null)" >> "$W/free-lists" || true
}

wait_http() { # url what
  local i
  for i in $(seq 1 "${MESH_READY_TRIES:-100}"); do curl -sf -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done
  echo "$2 not ready ($1)" >&2; return 1
}

meshd_start() {
  mkdir -p "$W/meshd-data"
  "$MESH_BIN_DIR/meshd" --data-dir "$W/meshd-data" --grpc-addr "$MESHD_XDS" \
    --grpc-tls-addr "$MESHD_XDS_TLS" --api-addr "$MESHD_API" --log warn >"$W/meshd.log" 2>&1 &
  echo $! > "$W/meshd.pid"
  wait_http "http://$MESHD_API/ready" meshd
}

# apply_service [--wait] [PORT ...]: the Service the client calls, HTTP or opaque TCP in tcp
# mode, selecting app=bench, on port 80 and any more PORTs (scripts/symbol-order.sh adds one to
# make a configuration change); --wait returns once every sidecar has ACKed it.
apply_service() {
  local proto=http wait=() port ports
  [[ $BENCH_MODE == tcp ]] && proto=tcp
  [[ ${1:-} == --wait ]] && { wait=(--wait); shift; }
  for port in 80 "$@"; do
    ports+="${ports:+, }{port: $port, targetPort: $BENCH_UPSTREAM_PORT, appProtocol: $proto}"
  done
  printf 'apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: bench}\nspec: {ports: [%s], selector: {app: bench}, vip: %s}\n' \
    "$ports" "$VIP" > "$W/service.yaml"
  meshctl apply "${wait[@]}" -f "$W/service.yaml" >/dev/null
}

# sidecar NAME ARGS...: one mesh-proxy on $BENCH_THREADS threads, logging warnings only.
# MESH_PROXY_ARGS adds flags to every sidecar, for experiments (e.g. "--relay copy");
# MESH_PROXY_WRAPPER runs each under a tool (e.g. "valgrind --tool=callgrind", with
# MESH_READY_TRIES raised for its slower start).
sidecar() {
  local name=$1; shift
  # shellcheck disable=SC2086 # word splitting of MESH_PROXY_WRAPPER and MESH_PROXY_ARGS is the point
  ${MESH_PROXY_WRAPPER:-} "$MESH_BIN_DIR/mesh-proxy" --threads "$BENCH_THREADS" --log warn ${MESH_PROXY_ARGS:-} "$@" >"$W/$name.log" 2>&1 &
  add_pid $!
}

# descendants PID: the processes under PID, deepest first (a MESH_PROXY_WRAPPER such as heaptrack
# runs the sidecar as its child, so stopping the wrapper's pid alone would leave it running).
descendants() {
  local c
  for c in $(pgrep -P "$1" 2>/dev/null); do descendants "$c"; echo "$c"; done
}

mesh_stop() {
  local p all=()
  for p in $(cat "$W/pids" 2>/dev/null); do
    mapfile -t -O "${#all[@]}" all < <(descendants "$p")
    all+=("$p")
  done
  for p in "${all[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${all[@]}"; do wait_gone "$p"; done
  if [[ -s $W/meshd.pid ]]; then
    p=$(cat "$W/meshd.pid"); kill -TERM "$p" 2>/dev/null || true; wait_gone "$p"; rm -f "$W/meshd.pid"
  fi
}
