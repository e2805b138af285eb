#!/usr/bin/env bash
# What an open, idle connection through the mTLS pair costs each sidecar in memory: the pair
# (benches/lib/pair.sh, opaque TCP by default as a database pool's connections would be), N
# client connections opened through it, each carrying one HTTP/1.1 request and its answer and
# then left open, and each sidecar's resident memory (VmRSS) before and after: kB per
# connection. PAIR_MODE=http measures HTTP keep-alive connections instead (the app's to the
# client sidecar; the sidecars share their pooled connections between them). Needs root and
# a release build.
#   [PAIR_MODE=tcp|http] [MESH_BIN_DIR=DIR] benches/idle-connections.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
N=${1:-500}
export PAIR_MODE=${PAIR_MODE:-tcp}
source benches/lib/pair.sh
pair_start idle-connections
mapfile -t PIDS < <(grep -v '^$' "$BENCH_WORKDIR/pids" | tail -2)
SERVER=${PIDS[0]:-} CLIENT=${PIDS[1]:-}
[[ -n $SERVER && -n $CLIENT ]] || die "no sidecar pids in $BENCH_WORKDIR/pids"
echo "== $N idle connections through the pair ($PAIR_MODE mode)"
python3 - "$N" "$SERVER" "$CLIENT" <<'PY'
import resource, socket, sys
n, server, client = int(sys.argv[1]), sys.argv[2], sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 100)), hard))

def rss_kb(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise SystemExit(f'idle-connections: no VmRSS for {pid}')

def exchange(s):
    """One request on `s` and its whole answer (framed by its content-length)."""
    s.sendall(b'GET / HTTP/1.1\r\nhost: bench\r\n\r\n')
    got = b''
    def more():
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f'idle-connections: a connection closed early: {got!r}')
        return chunk
    while b'\r\n\r\n' not in got:
        got += more()
    head, _, body = got.partition(b'\r\n\r\n')
    if not head.startswith(b'HTTP/1.1 200'):
        raise SystemExit(f'idle-connections: not a 200: {head[:80]!r}')
    lengths = [l.split(b':', 1)[1] for l in head.split(b'\r\n') if l.lower().startswith(b'content-length:')]
    if not lengths:
        raise SystemExit(f'idle-connections: an answer without content-length: {head!r}')
    while len(body) < int(lengths[0]):
        body += more()

# One connection first, so what the first one costs alone (the pool's peer connection in http
# mode, buffers the allocator keeps) is in the baseline.
first = socket.create_connection(('127.0.0.1', 19010))
exchange(first)
before = {p: rss_kb(p) for p in (server, client)}
conns = []
for i in range(n):
    s = socket.create_connection(('127.0.0.1', 19010))
    exchange(s)
    conns.append(s)
    if (i + 1) % 100 == 0:
        print(f'   {i + 1} open', file=sys.stderr)
after = {p: rss_kb(p) for p in (server, client)}
for name, p in (('server side', server), ('client side', client)):
    grew = after[p] - before[p]
    print(f'{name:<12} VmRSS {before[p]:>8,} kB -> {after[p]:>8,} kB: {grew / n:8.1f} kB a connection')
for s in conns + [first]:
    s.close()
PY
