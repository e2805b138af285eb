#!/usr/bin/env bash
# The mesh as a mesh runs: client -> client sidecar (plaintext in on BENCH_LISTEN_PORT) -> mutual
# TLS 1.3 with SPIFFE certificates from meshd's CA (HTTP/1.1 on ALPN mesh/h1 while fewer than 4 requests to the peer are in flight, on streams of one mesh/mux connection beyond and for 20 ms after; tcp mode: ALPN mesh/tcp)
# -> server sidecar (peer port BENCH_INTERNAL_PORT) -> backend. One thread per sidecar.
source "$BENCH_HOME/contenders/_lib.sh"
source "$(dirname "$0")/_mesh.sh"
case "${1:-}" in
  caps) echo "http tcp" ;;
  start)
    : > "$W/pids"
    meshd_start
    apply_service
    meshctl ca bundle > "$W/bundle.pem"
    meshctl token create -n default --service-account server > "$W/server.token"
    meshctl token create -n default --service-account client > "$W/client.token"
    id_args=(--xds-address "https://$MESHD_XDS_TLS" --trust-bundle "$W/bundle.pem" --namespace default)
    sidecar server "${id_args[@]}" --ca-token-file "$W/server.token" --service-account server \
      --pod-ip 127.0.0.1 --workload-name server --labels app=bench \
      --peer-addr "127.0.0.1:$I" --outbound-addr "$SERVER_OUT" --inbound-addr "$SERVER_IN" --admin-addr "$SERVER_ADMIN"
    wait_http "http://$SERVER_ADMIN/ready" "server sidecar"
    sidecar client "${id_args[@]}" --ca-token-file "$W/client.token" --service-account client \
      --pod-ip 127.0.0.2 --workload-name client --labels app=bench-client \
      --peer-addr "127.0.0.2:$I" --outbound-addr "127.0.0.1:$BENCH_LISTEN_PORT" \
      --inbound-addr "$CLIENT_IN" --admin-addr "$CLIENT_ADMIN" \
      --outbound-destination "$VIP:80"
    wait_http "http://$CLIENT_ADMIN/ready" "client sidecar"
    ;;
  stop) mesh_stop ;;
  check)
    [[ $BENCH_MODE == tcp ]] && exit 0
    # The peer port takes only mutual TLS: a client without a certificate gets no answer.
    out=$(printf 'x' | timeout 5 openssl s_client -connect "127.0.0.1:$I" -tls1_3 -alpn mesh/h2 -quiet 2>&1 || true)
    grep -qi 'certificate required\|alert' <<<"$out" || { echo "FAIL: peer port without client cert: $out"; exit 1; }
    echo "ok: no client certificate -> $(grep -io 'tlsv13 alert certificate required\|alert[^:]*' <<<"$out" | head -1)"
    body=$(curl -sf --max-time 3 "http://127.0.0.1:$BENCH_LISTEN_PORT/")
    [[ $body == ok* ]] || { echo "FAIL: no ok through the pair"; exit 1; }
    # Read whole, then searched: `curl | grep -q` under pipefail fails when grep's early exit
    # cuts curl off (SIGPIPE), which failed the check now and then once /metrics grew.
    metrics=$(curl -sf "http://$SERVER_ADMIN/metrics") || { echo "FAIL: no /metrics from the server sidecar"; exit 1; }
    grep -q '^mesh_tcp_connections_opened_total{direction="inbound"} [1-9]' <<<"$metrics" \
      || { echo "FAIL: the server sidecar saw no peer connection"; exit 1; }
    echo "ok: through the pair -> $body over mutual TLS 1.3 ($(grep -c 'BEGIN CERT' "$W/bundle.pem") root in the bundle)"
    ;;
esac
