# Shared by the scripts in scripts/ and benches/. Source it; do not run it.

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" = 0 ] || die "this needs root (it makes network namespaces and iptables rules); run it with sudo"
}

# Installs the system tools the mesh's pods need when they are missing (Debian/Ubuntu).
# apt-get install without recommends, refreshing the package lists once per run.
APT_UPDATED=
apt_install() {
  command -v apt-get >/dev/null || die "missing $* and no apt-get: install it with your package manager"
  if [ -z "$APT_UPDATED" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_tools() {
  local missing=()
  command -v iptables >/dev/null || missing+=(iptables)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v curl >/dev/null || missing+=(curl)
  command -v nsenter >/dev/null || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
}

# The shared benchmark harness (../shared/bench, or BENCH_HOME), with its tools installed when
# missing. Sets BENCH_HOME.
bench_harness() {
  BENCH_HOME=${BENCH_HOME:-$(cd ../shared/bench 2>/dev/null && pwd)}
  [[ -n $BENCH_HOME && -x $BENCH_HOME/run.sh ]] || die "no benchmark harness at ${BENCH_HOME:-../shared/bench} (set BENCH_HOME)"
  local tool
  for tool in wrk oha h2load haproxy nginx iperf3; do
    command -v "$tool" >/dev/null || { step "installing the harness's tools"; bash "$BENCH_HOME/setup.sh"; break; }
  done
}

# Where `cargo build --release` puts the workspace's binaries: .cargo/config.toml builds for
# the host tuple by name, so they land in target/<host tuple>/release. (Without rustc this is
# left unresolved, so that ensure_tools can say what is missing.)
RELEASE_DIR=${RELEASE_DIR:-target/$({ rustc -vV 2>/dev/null || true; } | sed -n 's/^host: //p')/release}
