#!/usr/bin/env bash
# The whole test suite, as CI runs it: format, lints, unit tests and the end-to-end tests
# (pods as network namespaces, with the real binaries). Needs root; installs iptables,
# iproute2 and curl when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

require_root
ensure_tools

step "format check (cargo fmt)"
cargo fmt --all -- --check

step "lints (cargo clippy, warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building the binaries the end-to-end tests run"
cargo build --workspace --bins --locked

step "unit and end-to-end tests"
cargo test --workspace --locked

step "all tests passed"
