#!/usr/bin/env bash
# Opaque L4 between two pods as they are meshed: two network namespaces over a veth pair, each
# with the init step's iptables rules and a sidecar (uid 1337), one iperf3 stream from pod a's
# app to pod b's app through both sidecars, against the same stream straight between the pods
# (iperf3 as uid 1337, which the init step never redirects, to a port pod b's excludes). Unlike
# the shared harness, which runs everything on loopback, the app's hops to its sidecar are the
# init step's REDIRECTs: pod a's app reaches its sidecar at 127.0.0.1 from the pod's IP. Same
# pinning as the harness: the client on CPU 0; the sidecars and the server on CPU 1.
# REVERSE=yes sends the other way (iperf3 -R: pod b's app to pod a's), where pod a's sidecar
# sends to its app on the connection the REDIRECT brought it.
#   [REVERSE=yes] benches/l4-pod.sh [ROUNDS] [BASE_PROXY]     needs root, iperf3, curl, a release build
# With BASE_PROXY (another build's mesh-proxy), each round runs it too, in turn with this
# build's, for a side-by-side comparison. Prints Gbit/s per round and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
require_root
ROUNDS=${1:-3}
BASE=${2:-}
for t in iperf3 curl nsenter; do
  command -v "$t" >/dev/null || die "needs $t (apt-get install -y iperf3 curl util-linux)"
done
for b in mesh-proxy mesh-iptables-init; do
  [[ -x $RELEASE_DIR/$b ]] || die "build first: cargo build --release --workspace --bins"
done
[[ -z $BASE || -x $BASE ]] || die "no executable $BASE"
A=l4pa-$$ B=l4pb-$$
WORK=$(mktemp -d /tmp/mesh-l4-pod.XXXXXX)
chmod 755 "$WORK"
cleanup() {
  for ns in $A $B; do ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  for ns in $A $B; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
# The sidecar runs as uid 1337, which may not be able to read the checkout: run copies.
install -m 755 "$RELEASE_DIR/mesh-proxy" "$WORK/build"
install -m 755 "$RELEASE_DIR/mesh-iptables-init" "$WORK/mesh-iptables-init"
variants=(build)
if [[ -n $BASE ]]; then
  install -m 755 "$BASE" "$WORK/base"
  variants=(base build)
fi

ip netns add "$A"; ip netns add "$B"
ip link add eth0 netns "$A" type veth peer name eth0 netns "$B"
ip -n "$A" addr add 10.99.1.1/24 dev eth0; ip -n "$B" addr add 10.99.1.2/24 dev eth0
for ns in $A $B; do ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up; done
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }
in_ns "$A" "$WORK/mesh-iptables-init" >"$WORK/init-a.log"
in_ns "$B" "$WORK/mesh-iptables-init" --exclude-inbound-ports 5202 >"$WORK/init-b.log"
wait_for() { # what, command...: retries the command for up to 10 s
  local what=$1; shift
  for _ in $(seq 1 500); do "$@" >/dev/null 2>&1 && return 0; sleep 0.02; done
  die "$what did not become ready; logs are in $WORK"
}
# Pod b's app: one server behind its sidecar (5201), one the init step leaves alone (5202).
for port in 5201 5202; do
  in_ns "$B" taskset -c 1 iperf3 -s -p "$port" >"$WORK/server-$port.log" 2>&1 &
done
wait_for "iperf3 in pod b" in_ns "$B" bash -c '>/dev/tcp/127.0.0.1/5201 && >/dev/tcp/127.0.0.1/5202'

SIDECARS=()
sidecars() { # variant: starts both pods' sidecars from that binary, on CPU 1
  local ns
  SIDECARS=()
  for ns in $A $B; do
    # nsenter and taskset exec the proxy: $! is its PID.
    MESH_LOG=warn nsenter --net="/run/netns/$ns" --setuid=1337 --setgid=1337 -- \
      taskset -c 1 "$WORK/$1" --threads 1 >>"$WORK/$1-$ns.log" 2>&1 &
    SIDECARS+=($!)
  done
  for ns in $A $B; do wait_for "the $1 sidecar in $ns" in_ns "$ns" curl -sf http://127.0.0.1:15000/ready; done
}
stop_sidecars() {
  kill "${SIDECARS[@]}" 2>/dev/null || true
  wait "${SIDECARS[@]}" 2>/dev/null || true
}
gbits() { awk '/receiver/ {print $7}'; }
stream() { # [uid] port: one 4 s stream from pod a's app to pod b's, Gbit/s at the receiver
  local as=() reverse
  if [[ $1 == uid1337 ]]; then as=(--setuid=1337 --setgid=1337); shift; fi
  [[ ${REVERSE:-no} == yes ]] && reverse=(-R) || reverse=()
  nsenter --net="/run/netns/$A" "${as[@]}" -- taskset -c 0 iperf3 -c 10.99.1.2 -p "$1" -t 4 -f g "${reverse[@]}" | gbits
}

header="round | direct"
for v in "${variants[@]}"; do header="$header | $v"; done
echo "$header (Gbit/s, ${REVERSE:+reverse: }the sidecars' binaries: build = $RELEASE_DIR/mesh-proxy${BASE:+, base = $BASE})"
declare -A all
for r in $(seq "$ROUNDS"); do
  all[direct]+=" $(stream uid1337 5202)"
  line="$r | ${all[direct]##* }"
  # Alternate which variant goes first, so neither always follows the other.
  order=("${variants[@]}")
  if (( r % 2 == 0 && ${#variants[@]} == 2 )); then order=("${variants[1]}" "${variants[0]}"); fi
  declare -A this=()
  for v in "${order[@]}"; do
    sidecars "$v"
    this[$v]=$(stream 5201)
    stop_sidecars
  done
  for v in "${variants[@]}"; do
    all[$v]+=" ${this[$v]}"
    line="$line | ${this[$v]}"
  done
  echo "$line"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
d=$(median <<<"${all[direct]}")
line="median | $d"
for v in "${variants[@]}"; do
  m=$(median <<<"${all[$v]}")
  line="$line | $m ($(awk -v m="$m" -v d="$d" 'BEGIN {printf "%.2fx of direct", m / d}'))"
done
echo "$line"
