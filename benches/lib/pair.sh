# Shared by the quick pair scripts (source it after scripts/lib/common.sh): runs the test app's
# HTTP server as the backend on 127.0.0.1:19000 and the mesh-pair-mtls contender in front of it
# (client port 19010, server sidecar's peer port 19012), both on CPU 1, stops both on exit, and
# checks that a request gets through. PAIR_MODE=tcp makes the Service opaque TCP (the sidecars
# relay the HTTP bytes through TLS without reading them), as in the harness's tcp mode.
# PAIR_CONTENDER=relay-pair runs the floor instead (two processes that only relay the bytes, no
# TLS and no HTTP; benches/contenders/relay-pair.sh). Not a script of its own.
#   pair_start NAME      (NAME names the temporary directory; $OUT is set to it)
pair_start() {
  OUT=$(mktemp -d "/tmp/mesh-$1.XXXXXX")
  export BENCH_HOME=${BENCH_HOME:-$(cd ../shared/bench && pwd)} BENCH_WORKDIR=$OUT/work BENCH_MODE=${PAIR_MODE:-http} \
    BENCH_LISTEN_PORT=19010 BENCH_UPSTREAM_HOST=127.0.0.1 BENCH_UPSTREAM_PORT=19000 \
    BENCH_INTERNAL_PORT=19012 BENCH_THREADS=1
  taskset -c 1 "$RELEASE_DIR/mesh-test-app" http --listen 127.0.0.1:19000 --name ok >"$OUT/backend.log" 2>&1 &
  PAIR_BACKEND=$!
  PAIR_SCRIPT=benches/contenders/${PAIR_CONTENDER:-mesh-pair-mtls}.sh
  [[ -x $PAIR_SCRIPT ]] || { echo "no contender $PAIR_SCRIPT" >&2; exit 1; }
  trap '"$PAIR_SCRIPT" stop >/dev/null 2>&1 || true; kill $PAIR_BACKEND 2>/dev/null || true; wait $PAIR_BACKEND 2>/dev/null || true' EXIT
  taskset -c 1 "$PAIR_SCRIPT" start >/dev/null
  curl -sf -o /dev/null --max-time 5 http://127.0.0.1:19010/ \
    || { echo "$1: no 2xx through the pair (logs in $BENCH_WORKDIR)" >&2; exit 1; }
}
