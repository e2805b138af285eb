#!/usr/bin/env bash
# The whole test suite, as CI runs it: format, lints, unit tests and the end-to-end tests
# (pods as network namespaces, with the real binaries). Needs root; installs iptables,
# iproute2 and curl when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

require_root
ensure_tools
# The metrics test checks the sidecar's /metrics with promtool (Debian's prometheus package).
if ! command -v promtool >/dev/null; then
  step "installing promtool (for the metrics format test)"
  apt_install prometheus
fi
# The mTLS test captures the traffic between pods with tcpdump.
if ! command -v tcpdump >/dev/null; then
  step "installing tcpdump (to check that no plaintext crosses between meshed pods)"
  apt_install tcpdump
fi
# The interop test runs gRPC's own xDS client (grpcio) against meshd.
if ! python3 -c "import grpc" 2>/dev/null; then
  step "installing grpcio (gRPC's proxyless xDS client, for the interop test)"
  command -v python3 >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null; }
  python3 -m pip install -q grpcio 2>/dev/null || python3 -m pip install -q --break-system-packages grpcio
fi


step "format check (cargo fmt)"
cargo fmt --all -- --check

step "lints (cargo clippy, warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building the binaries the end-to-end tests run"
cargo build --workspace --bins --locked

step "unit and end-to-end tests"
cargo test --workspace --locked

step "all tests passed"
