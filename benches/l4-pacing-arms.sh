#!/usr/bin/env bash
# Which sockets pace on the shared core during one iperf3 stream through one sidecar, as in
# the harness's L4 one-hop test (client on CPU 0; sidecar and iperf3 server on CPU 1), and
# where their pacing timers are armed. For each stream (MODE: `splice` or `copy`; repeat it to
# see streams differ) it records 3 s of CPU 1 with perf (`timer:hrtimer_start` and
# `timer:hrtimer_expire_entry`, with call chains), keeps the pacing timers (`tcp_pace_kick`,
# one a socket, told apart by address) and prints for each how often it fired on CPU 1 and
# under what it was armed: the iperf3 server's reads (`tcp_recvmsg`: its acknowledgement
# reached the socket it acknowledges, the sidecar's socket to the server), the sidecar's
# splice reads (its window updates reached the client), its splice writes, or elsewhere.
# Found the sidecar's own hop still paced on 2026-12-08 (benches/RESULTS.md). Needs root,
# perf, iperf3, a release build. Ports 29001-29005 (benches/lib/l4-hop.sh).
#   benches/l4-pacing-arms.sh [MODE ...]     default: `splice splice splice`
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benches/lib/l4-hop.sh
[[ $# -gt 0 ]] || set -- splice splice splice
l4_hop_start l4-pacing-arms
n=0
for mode in "$@"; do
  n=$((n + 1))
  l4_hop_proxy "$mode"
  perf record -q -o "$OUT/$n.data" -C 1 -g -e timer:hrtimer_start \
    -e timer:hrtimer_expire_entry -- sleep 3 2>/dev/null &
  PERF=$!
  gbit=$(l4_hop_stream 29001)
  wait "$PERF"
  kill "$PROXY"
  wait "$PROXY" 2>/dev/null || true
  step "stream $n ($mode): $gbit Gbit/s (traced)"
  perf script -i "$OUT/$n.data" -F event,trace,ip,sym 2>/dev/null | python3 -c '
import collections, re, sys
timers = collections.defaultdict(collections.Counter)
for block in sys.stdin.read().split("\n\n"):
    lines = [line.strip() for line in block.strip().splitlines()]
    if not lines or "function=tcp_pace_kick" not in lines[0]:
        continue
    timer = re.search(r"hrtimer=(\S+)", lines[0])
    counts = timers[timer.group(1) if timer else "?"]
    if "hrtimer_expire_entry" in lines[0]:
        counts["fired"] += 1
        continue
    frames = {line.split()[-1] for line in lines[1:] if line}
    if "tcp_recvmsg" in frames:
        counts["armed under the server reads"] += 1
    elif "tcp_splice_read" in frames:
        counts["armed under the sidecar splice reads"] += 1
    elif frames & {"splice_to_socket", "tcp_sendmsg", "tcp_sendmsg_locked"}:
        counts["armed under the sidecar splice writes"] += 1
    else:
        counts["armed elsewhere"] += 1
print(f"  pacing timers on CPU 1: {len(timers)}")
for name, counts in sorted(timers.items(), key=lambda kv: -kv[1]["fired"]):
    fired = counts.pop("fired", 0)
    armed = ", ".join(f"{k} {v}" for k, v in counts.most_common())
    print(f"  timer {name}: fired {fired}; {armed}")
'
done
echo "perf data: $OUT"
