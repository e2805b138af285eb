# Shared by benches/l4-server-cost.sh and the mesh-hop contender (source it). Not a script of
# its own.
#   free_list_marks   prints the `high` marks of the Normal zone's per-CPU free lists, CPU by
#                     CPU, joined by `/` (e.g. `152483/13637`; /proc/zoneinfo): how many freed
#                     pages each CPU keeps for reuse before they go back to the zone, which the
#                     kernel tunes as pages come and go. Only read, never set. Forced long, they
#                     slowed one spliced stream on this host (benches/RESULTS.md, the late night
#                     of 2026-12-07).
free_list_marks() {
  awk '/^Node/ { zone = $4 }
    $1 == "high:" && zone == "Normal" { printf "%s%s", sep, $2; sep = "/" }' /proc/zoneinfo
}
