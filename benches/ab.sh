#!/usr/bin/env bash
# Two builds of the mesh side by side in one run of the shared harness, with a peer for scale:
#   benches/ab.sh BASE_BIN_DIR [harness args...]
# BASE_BIN_DIR holds the binaries to compare against (e.g. a copy of the release build made
# before a change: meshd, mesh-proxy, meshctl); the release build (target/<host>/release) is the
# other. The harness sees them as `mesh-pair-mtls-base` and `mesh-pair-mtls`, interleaved round
# by round with nginx-mtls. Default harness args: --modes tcp --rounds 3. The table is in the
# run's summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
require_root
[[ $# -ge 1 ]] || die "usage: benches/ab.sh BASE_BIN_DIR [harness args...]"
base=$(cd "$1" && pwd) || die "no directory $1"
shift
for b in meshd mesh-proxy meshctl; do
  [[ -x $base/$b ]] || die "missing $base/$b: copy $RELEASE_DIR/{meshd,mesh-proxy,meshctl} there from the build to compare against"
done
bench_harness
variants=$(mktemp -d)
trap 'rm -rf "$variants"' EXIT
# The variant is the same contender script with MESH_BIN_DIR pointing at the base build.
cat >"$variants/mesh-pair-mtls-base.sh" <<EOF
#!/usr/bin/env bash
MESH_BIN_DIR='$base' exec bash '$PWD/benches/contenders/mesh-pair-mtls.sh' "\$@"
EOF
chmod +x "$variants/mesh-pair-mtls-base.sh"
[[ $# -gt 0 ]] || set -- --modes tcp --rounds 3
mkdir -p benches/results
out="$PWD/benches/results/ab-$(date +%Y%m%d-%H%M%S)"
step "running the harness: base build ($base) against $RELEASE_DIR (results in $out)"
BENCH_CONTENDERS_DIRS="$PWD/benches/contenders:$variants" "$BENCH_HOME/run.sh" \
  --contenders direct,nginx-mtls,mesh-pair-mtls-base,mesh-pair-mtls --out "$out" "$@"
