#!/usr/bin/env bash
# One sidecar, plaintext: client -> sidecar (BENCH_LISTEN_PORT) -> backend, as the client side of
# the mesh sends to a pod without a sidecar (HTTP routed request by request over a pooled
# upstream; tcp mode: splice(2) relay). One thread.
source "$BENCH_HOME/contenders/_lib.sh"
source "$(dirname "$0")/_mesh.sh"
case "${1:-}" in
  caps) echo "http tcp" ;;
  start)
    : > "$W/pids"
    record_free_lists start
    meshd_start
    apply_service
    # The backend as a Workload without a sidecar.
    printf 'apiVersion: mesh.dev/v1\nkind: Workload\nmetadata: {name: backend, labels: {app: bench}}\nspec: {address: 127.0.0.1}\n' > "$W/workload.yaml"
    meshctl apply -f "$W/workload.yaml" >/dev/null
    sidecar client --xds-address "http://$MESHD_XDS" \
      --outbound-addr "127.0.0.1:$BENCH_LISTEN_PORT" --inbound-addr "$CLIENT_IN" \
      --admin-addr "$CLIENT_ADMIN" --peer-addr "127.0.0.2:$((I + 16))" --outbound-destination "$VIP:80"
    wait_http "http://$CLIENT_ADMIN/ready" "sidecar"
    ;;
  stop) record_free_lists stop; mesh_stop ;;
  check) exit 0 ;;
esac
