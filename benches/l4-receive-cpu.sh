#!/usr/bin/env bash
# On which CPU the segments of one iperf3 stream are received, and where the client's pacing
# timer fires, as in the harness's L4 one-hop test (client on CPU 0; sidecar and iperf3 server
# on CPU 1). On loopback a segment's receive processing runs on the CPU that sent it, or, when
# the receiving socket is busy in its owner's system call, later on the owner's CPU. The
# client's congestion control is the host's (BBR here), which paces with a timer per socket
# (`tcp_pace_kick`), fired on the CPU that armed it; a socket whose congestion control was
# changed after its handshake may pace too (benches/RESULTS.md, 2026-12-08). For each MODE (`direct`: the client straight to the server; `splice` or
# `copy`: through the sidecar) it traces 3 s of the stream with perf's `tcp:tcp_probe` (every
# data segment received) and `timer:hrtimer_expire_entry`, then prints per receiving port
# (29001 the sidecar's, 29002 the server's) and CPU the segments and MB, and the pacing timers
# that fired on each CPU, socket by socket (the client's, and any other that paces). The tracing costs throughput (a few hundred thousand events a
# second), so the Gbit/s printed are lower than the harness's; they compare with each other.
# Needs root, perf, iperf3, a release build. Ports 29001-29005 (benches/lib/l4-hop.sh).
#   benches/l4-receive-cpu.sh [MODE ...]     e.g. `direct splice` (the default); repeat a
#   mode to see its runs differ (`splice splice splice`)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benches/lib/l4-hop.sh
[[ $# -gt 0 ]] || set -- direct splice
l4_hop_start l4-receive-cpu
for mode in "$@"; do
  port=29002
  if [[ $mode != direct ]]; then
    l4_hop_proxy "$mode"
    port=29001
  fi
  perf record -q -o "$OUT/$mode.data" -a -e tcp:tcp_probe --filter 'data_len > 0' \
    -e timer:hrtimer_expire_entry -- sleep 3 2>/dev/null &
  PERF=$!
  gbit=$(l4_hop_stream "$port")
  wait "$PERF"
  if [[ $mode != direct ]]; then
    kill "$PROXY"
    wait "$PROXY" 2>/dev/null || true
  fi
  step "$mode: $gbit Gbit/s (traced)"
  perf script -i "$OUT/$mode.data" -F cpu,event,trace 2>/dev/null | python3 -c '
import collections, re, sys
segments, size = collections.Counter(), collections.Counter()
timers = collections.defaultdict(collections.Counter)  # by timer (one a socket), by CPU
for line in sys.stdin:
    m = re.match(r"\s*\[(\d+)\]\s+(\S+):\s*(.*)", line)
    if not m:
        continue
    cpu, event, fields = int(m.group(1)), m.group(2), m.group(3)
    if event.endswith("tcp_probe"):
        port = re.search(r"src=\S*:(\d+)", fields)  # src is the receiving socket
        length = re.search(r"data_len=(\d+)", fields)
        if port and length:
            segments[port.group(1), cpu] += 1
            size[port.group(1), cpu] += int(length.group(1))
    elif "function=tcp_pace_kick" in fields:
        timer = re.search(r"hrtimer=(\S+)", fields)
        timers[timer.group(1) if timer else "?"][cpu] += 1
for port in sorted({p for p, _ in segments}):
    total = sum(size[port, c] for c in (0, 1))
    cells = ", ".join(f"CPU {c}: {segments[port, c]} segments, {size[port, c] / 1e6:.0f} MB"
                      f" ({100 * size[port, c] / max(total, 1):.0f}%)" for c in (0, 1))
    print(f"  received at port {port}: {cells}")
busiest = sorted(timers.values(), key=lambda t: -sum(t.values()))
print(f"  pacing timers fired: {len(timers)} sockets; by socket, the busiest first: "
      + "; ".join(f"CPU 0: {t[0]}, CPU 1: {t[1]}" for t in busiest[:3]))
'
done
echo "perf data: $OUT"
