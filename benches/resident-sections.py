#!/usr/bin/env python3
"""Which ELF sections of a running binary are resident in a process: reads /proc/PID/pagemap
for the binary's mappings and names the section each present page belongs to (a page holding
the end of one section and the start of the next counts for the first). Needs root.
    benches/resident-sections.py PID BINARY
Used by `PAIR_MEMORY_SECTIONS=1 benches/pair-memory.sh`."""
import sys, struct, subprocess, bisect
pid = int(sys.argv[1]); binary = sys.argv[2]
secs = []
out = subprocess.run(['readelf','-SW',binary],capture_output=True,text=True).stdout
for line in out.splitlines():
    if ']' in line and line.strip().startswith('['):
        parts = line.split(']')[1].split()
        if len(parts) >= 5 and parts[0].startswith(('.', '_')):
            try:
                secs.append((int(parts[2],16), int(parts[4],16), parts[0]))
            except ValueError: pass
secs = [s for s in secs if s[0]]
secs.sort()
counts = {}
with open(f'/proc/{pid}/maps') as m, open(f'/proc/{pid}/pagemap','rb') as pm:
    for line in m:
        f = line.split()
        if len(f) < 6 or not f[5].endswith('mesh-proxy'): continue
        lo, hi = (int(x,16) for x in f[0].split('-'))
        pm.seek(lo//4096*8)
        data = pm.read((hi-lo)//4096*8)
        for i in range((hi-lo)//4096):
            e, = struct.unpack_from('<Q', data, i*8)
            if e >> 63:
                a = lo + i*4096
                name = '?'
                for s, sz, n in secs:
                    if s <= a < s+sz or (a <= s < a+4096): name = n; break
                counts[name] = counts.get(name,0)+4
for n, kb in sorted(counts.items(), key=lambda x:-x[1]):
    print(f'{n:25s} {kb:6d} kB resident')
