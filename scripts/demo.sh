#!/usr/bin/env bash
# The mesh demo. Pods are network namespaces on a bridge of their own:
#   cp      10.88.0.2  meshd (the control plane)
#   client  10.88.0.3  a client, with its sidecar
#   web-v1  10.88.0.4  app=web version=v1, with its sidecar
#   web-v2  10.88.0.5  app=web version=v2, with its sidecar
# Each meshed pod gets the init step's iptables rules and a sidecar (uid 1337) that gets its
# SPIFFE certificate from meshd's CA (with a token from `meshctl token create`) and follows meshd
# over xDS on TLS; sidecars talk to each other over mutual TLS. The demo applies Services with
# meshctl, curls the `web` VIP, applies an HTTPRoute (a header rule and a 90/10 split), shows who
# answers and the identity the app sees, then applies an AuthorizationPolicy. Needs root; installs
# iptables, iproute2 and curl when missing. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

require_root
ensure_tools

step "building mesh-proxy, mesh-iptables-init, meshd, meshctl and the demo app (release)"
cargo build --release --workspace --bins

NAME="mdemo$$"
BR="$NAME-br"
WORK=$(mktemp -d /tmp/mesh-demo.XXXXXX)
chmod 755 "$WORK"
declare -A IP=([cp]=10.88.0.2 [client]=10.88.0.3 [web-v1]=10.88.0.4 [web-v2]=10.88.0.5)
PODS=(cp client web-v1 web-v2)
ns() { echo "$NAME-$1"; }

cleanup() {
  for ns in $(for p in "${PODS[@]}"; do ns "$p"; done) "$BR"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# The sidecar runs as uid 1337, which may not be able to read the checkout: run copies.
for bin in mesh-proxy mesh-iptables-init mesh-test-app meshd meshctl; do
  install -m 755 "$RELEASE_DIR/$bin" "$WORK/$bin"
done

in_pod() { local pod=$1; shift; nsenter --net="/run/netns/$(ns "$pod")" -- "$@"; }
meshctl() { in_pod cp "$WORK/meshctl" "$@"; }
wait_for() { # what, command...: retries the command for up to 10 s
  local what=$1; shift
  for _ in $(seq 1 500); do "$@" >/dev/null 2>&1 && return 0; sleep 0.02; done
  die "$what did not become ready; logs are in $WORK"
}

step "making the pods on bridge namespace $BR"
ip netns add "$BR"
ip -n "$BR" link add br0 type bridge
ip -n "$BR" addr add 10.88.0.1/24 dev br0
ip -n "$BR" link set br0 up
i=0
for pod in "${PODS[@]}"; do
  i=$((i + 1))
  ip netns add "$(ns "$pod")"
  ip -n "$(ns "$pod")" link set lo up
  ip -n "$BR" link add "v$i" type veth peer name eth0 netns "$(ns "$pod")"
  ip -n "$BR" link set "v$i" master br0 up
  ip -n "$(ns "$pod")" addr add "${IP[$pod]}/24" dev eth0
  ip -n "$(ns "$pod")" link set eth0 up
  ip -n "$(ns "$pod")" route add default via 10.88.0.1
  echo "    $pod: ${IP[$pod]}"
done

step "starting meshd in pod cp (xDS + CA over TLS on :15012, plaintext xDS on :15010, API on 127.0.0.1:15080)"
nsenter --net="/run/netns/$(ns cp)" -- "$WORK/meshd" --data-dir "$WORK/meshd-data" >"$WORK/meshd.log" 2>&1 &
MESHD_PID=$!
wait_for meshd in_pod cp curl -sf http://127.0.0.1:15080/ready

step "init step and sidecars in client, web-v1 and web-v2 (each with a token for its own service account)"
meshctl ca bundle >"$WORK/trust-bundle.pem"
echo "    trust bundle: $(openssl x509 -noout -subject -in "$WORK/trust-bundle.pem" 2>/dev/null || head -1 "$WORK/trust-bundle.pem")"
declare -A LABELS=([client]=app=client [web-v1]=app=web,version=v1 [web-v2]=app=web,version=v2)
declare -A PROXY_PID
for pod in client web-v1 web-v2; do
  in_pod "$pod" "$WORK/mesh-iptables-init" | sed 's/^/    /'
  # The token proves namespace default and service account $pod to meshd's CA; only the
  # sidecar's user may read it.
  meshctl token create -n default --service-account "$pod" >"$WORK/$pod-token"
  chown 1337:1337 "$WORK/$pod-token" && chmod 600 "$WORK/$pod-token"
  MESH_LOG=info nsenter --net="/run/netns/$(ns "$pod")" --setuid=1337 --setgid=1337 -- \
    "$WORK/mesh-proxy" --threads 1 --xds-address "https://${IP[cp]}:15012" \
    --trust-bundle "$WORK/trust-bundle.pem" --ca-token-file "$WORK/$pod-token" \
    --service-account "$pod" \
    --pod-ip "${IP[$pod]}" --workload-name "$pod" --labels "${LABELS[$pod]}" >"$WORK/$pod-proxy.log" 2>&1 &
  PROXY_PID[$pod]=$!
done
for pod in web-v1 web-v2; do
  in_pod "$pod" "$WORK/mesh-test-app" http --listen 0.0.0.0:8080 --name "$pod" >"$WORK/$pod-app.log" 2>&1 &
done
disown -a  # the cleanup kills what is left; no job-control noise
for pod in client web-v1 web-v2; do
  wait_for "sidecar in $pod" in_pod "$pod" curl -sf http://127.0.0.1:15000/ready
done
for pod in web-v1 web-v2; do wait_for "app in $pod" grep -q '^ready' "$WORK/$pod-app.log"; done
echo "    all three sidecars report ready (certificate and config from meshd in hand)"
for pod in client web-v1 web-v2; do
  echo "    $pod: $(grep -o 'workload certificate in place.*' "$WORK/$pod-proxy.log" | sed -E 's/\x1b\[[0-9;]*m//g' | head -1)"
done

step "meshctl apply: Service web (VIP 10.96.0.10:80 -> 8080, round robin), one Service per version"
cat >"$WORK/services.yaml" <<'YAML'
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, targetPort: 8080, appProtocol: http}], selector: {app: web}, vip: 10.96.0.10}
---
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web-v1}
spec: {ports: [{port: 80, targetPort: 8080}], selector: {app: web, version: v1}}
---
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web-v2}
spec: {ports: [{port: 80, targetPort: 8080}], selector: {app: web, version: v2}}
---
apiVersion: mesh.dev/v1
kind: BackendPolicy
metadata: {name: web}
spec: {targetRef: {name: web}, loadBalancer: {algorithm: RoundRobin}}   # default: PeakEWMA
YAML
meshctl apply -f "$WORK/services.yaml" --wait | sed 's/^/    /'
meshctl get services | sed 's/^/    /'
meshctl get workloads | sed 's/^/    /'

step "client: 10 requests to http://10.96.0.10/ (round robin over both versions)"
in_pod client "$WORK/mesh-test-app" tally --connect 10.96.0.10:80 --count 10 | sed 's/^/    /'

step "meshctl apply: HTTPRoute web: header x-canary: 1 -> web-v2; everything else 90% web-v1, 10% web-v2"
cat >"$WORK/split.yaml" <<'YAML'
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-split}
spec:
  parentRefs: [{name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "1"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - backendRefs:
    - {name: web-v1, port: 80, weight: 90}
    - {name: web-v2, port: 80, weight: 10}
YAML
meshctl apply -f "$WORK/split.yaml" --wait | sed 's/^/    /'

step "client: 5 requests with x-canary: 1 (routed by header, one by one)"
for _ in 1 2 3 4 5; do in_pod client curl -sS -H 'x-canary: 1' http://10.96.0.10/; done | sort | uniq -c | sed 's/^/    /'

step "client: 1000 requests to http://10.96.0.10/ (no header: the weighted rule)"
in_pod client "$WORK/mesh-test-app" tally --connect 10.96.0.10:80 --count 1000 | sed 's/^/    /'

step "mutual TLS: the app in web-v1/web-v2 sees who called, as the mesh authenticated it"
in_pod client curl -sSi http://10.96.0.10/ | grep -i '^x-seen-client-cert' | tr -d '\r' | sed 's/^/    /'

step "meshctl apply: AuthorizationPolicy: web answers only the client's identity, and only GET"
cat >"$WORK/authz.yaml" <<'YAML'
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-clients}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
    to: [{operation: {methods: ["GET"]}}]
YAML
meshctl apply -f "$WORK/authz.yaml" --wait | sed 's/^/    /'
echo "    client GET:    $(in_pod client curl -s -o /dev/null -w '%{http_code}' http://10.96.0.10/)"
echo "    client POST:   $(in_pod client curl -s -o /dev/null -w '%{http_code}' -X POST http://10.96.0.10/)"
echo "    web-v1 GET:    $(in_pod web-v1 curl -s -o /dev/null -w '%{http_code}' http://10.96.0.10/)"
echo "    why (web-v1):  $(in_pod web-v1 curl -sSi http://10.96.0.10/ | grep -i '^x-mesh-error' | tr -d '\r')"

step "what meshd knows: connected proxies and the generation each has ACKed"
meshctl proxies | sed 's/^/    /'

step "graceful stop: POST /shutdown to the sidecars, SIGTERM to meshd"
for pod in client web-v1 web-v2; do
  in_pod "$pod" curl -sf -X POST http://127.0.0.1:15000/shutdown >/dev/null
done
for pod in client web-v1 web-v2; do
  pid=${PROXY_PID[$pod]}
  for _ in $(seq 1 500); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
  kill -0 "$pid" 2>/dev/null && die "sidecar in $pod did not exit after its drain"
  echo "    $pod: $(grep -E 'drained|drain timeout' "$WORK/$pod-proxy.log" | sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +//')"
done
kill -TERM "$MESHD_PID"
for _ in $(seq 1 500); do kill -0 "$MESHD_PID" 2>/dev/null || break; sleep 0.02; done
echo "    meshd: $(grep -E 'meshd stopped' "$WORK/meshd.log" | sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +//')"

step "done; removing the pods"
