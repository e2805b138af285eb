#!/usr/bin/env bash
# What the receiving iperf3 server pays per GB, straight from the client against through one
# sidecar, in the harness's L4 one-hop shape (client on CPU 0; the sidecar and the server on
# CPU 1; benches/lib/l4-hop.sh). Each round streams 5 s `direct`, then once through the sidecar
# for each VARIANT, and over 3 s of each stream counts with `perf stat` the server's reads,
# selects, switches and CPU, and on the whole machine the pages allocated and how many of those
# missed the allocating CPU's own free lists (`kmem:mm_page_alloc_zone_locked`); the sidecar's
# CPU per GB is from its clock ticks over the stream. Each line ends with the per-CPU free
# lists' high marks, CPU 0/CPU 1, as the stream starts (benches/lib/free-lists.sh), and the
# megabytes waiting unread in the server's socket and in the sidecar's accepted one, and in the
# client's send queue (written, not yet acknowledged; `ss`, the mean of six samples 1.5-4 s into
# the stream).
# A VARIANT is MODE (splice or copy, the sidecar's --relay); `sendfile`, the client straight to
# the server again, but sending with sendfile (iperf3 -Z: the same few page-cache pages over
# and over, as 4 KiB fragments, the way a splicing sidecar hands pages on); or
# MODE:RCVBUF:PIPE, which sets MESH_EXP_RCVBUF and MESH_EXP_PIPE (bytes) for a build with
# benches/experiments/relay-rcvbuf.patch applied (the accepted socket's receive buffer, the
# splice pipes' size; empty keeps the default). Needs root, perf, iperf3, a release build.
#   [ROUNDS=N] benches/l4-server-cost.sh [VARIANT...]      (default: splice copy)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benches/lib/l4-hop.sh
source benches/lib/free-lists.sh
variants=("$@")
[[ ${#variants[@]} -gt 0 ]] || variants=(splice copy)
l4_hop_start l4-server-cost
for round in $(seq "${ROUNDS:-3}"); do
  for variant in direct "${variants[@]}"; do
    port=29002 proxy_ticks=0 client_flags=()
    [[ $variant == sendfile ]] && client_flags=(-Z)
    if [[ $variant != direct && $variant != sendfile ]]; then
      IFS=: read -r mode rcvbuf pipe <<<"$variant"
      MESH_PROXY_WRAPPER="env MESH_EXP_RCVBUF=${rcvbuf:-} MESH_EXP_PIPE=${pipe:-}" l4_hop_proxy "$mode"
      x0=$(ticks "$PROXY") port=29001
    fi
    high=$(free_list_marks)
    (sleep 1; perf stat -x, -o "$OUT/perf.$round" -p "$SERVER" \
      -e syscalls:sys_enter_read,syscalls:sys_enter_pselect6,syscalls:sys_enter_select,context-switches,task-clock \
      -- sleep 3) &
    PERF=$!
    (sleep 1; perf stat -x, -o "$OUT/pages.$round" -a \
      -e kmem:mm_page_alloc,kmem:mm_page_alloc_zone_locked -- sleep 3) &
    PAGES=$!
    # The bytes waiting unread in the server's socket and in the sidecar's accepted one, and in
    # the client's send queue, the mean of six samples 1.5-4 s into the stream (of each port's
    # sockets the fullest: iperf3's control connection holds none).
    (sleep 1; for _ in 1 2 3 4 5 6; do
       sleep 0.5
       ss -Htn state established \
         '( sport = :29001 or sport = :29002 or dport = :29001 or dport = :29002 )'; echo --
     done | awk '$1 == "--" { for (p in q) sum[p] += q[p]; delete q; n++; next }
       { split($3, l, ":"); split($4, r, ":") }
       l[2] == 29001 || l[2] == 29002 { if ($1 + 0 > q[l[2]] + 0) q[l[2]] = $1 }
       r[2] == 29001 || r[2] == 29002 { if ($2 + 0 > q["client"] + 0) q["client"] = $2 }
       END { printf "%.2f/%.2f; in the client'"'"'s send queue, MB %.2f",
         sum["29002"] / n / 1e6, sum["29001"] / n / 1e6, sum["client"] / n / 1e6 }' \
       > "$OUT/queues.$round") &
    QUEUES=$!
    gbit=$(taskset -c 0 iperf3 -c 127.0.0.1 -p "$port" -t 5 -f g "${client_flags[@]}" | awk '/receiver/ {print $7}')
    wait "$PERF" "$PAGES" "$QUEUES"
    queues=$(cat "$OUT/queues.$round")
    if [[ $variant != direct && $variant != sendfile ]]; then
      proxy_ticks=$(($(ticks "$PROXY") - x0))
      kill "$PROXY"; wait "$PROXY" 2>/dev/null || true
    fi
    awk -F, -v r="$round" -v v="$variant" -v g="$gbit" -v x="$proxy_ticks" -v h="$high" -v qs="$queues" '
      $3 ~ /sys_enter_read$/ { reads = $1 } $3 ~ /select/ { selects += $1 }
      $3 == "context-switches" { cs = $1 } $3 == "task-clock" { ms = $1 }
      $3 == "kmem:mm_page_alloc" { pages = $1 } $3 == "kmem:mm_page_alloc_zone_locked" { locked = $1 }
      END {
        gb3 = g / 8 * 3; gb5 = g / 8 * 5
        printf "round %s %-22s %5.1f Gbit/s; server over 3 s: %d reads (%.1f KiB a read), %d selects, %d switches, %.3f s of CPU per GB; sidecar %.3f s per GB; pages allocated per GB %.0f, from the zone, past the per-CPU lists, %.0f; per-CPU list high marks %s; unread, MB (server/sidecar) %s\n",
          r, v, g, reads, gb3 * 1e9 / reads / 1024, selects, cs, ms / 1000 / gb3, x / 100 / gb5, pages / gb3, locked / gb3, h, qs
      }' "$OUT/perf.$round" "$OUT/pages.$round"
  done
done
